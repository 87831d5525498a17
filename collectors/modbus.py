"""Modbus collector: one bus (Modbus TCP, RTU over TCP, RTU on a serial line) and the meters behind it.

One :class:`ModbusCollector` owns one pymodbus client and reads its meters one after another, each with the
reads its register map planned once (:mod:`energymon.collectors.planner`). pymodbus's own retries and
automatic reconnects are switched off: the policy below is the only one.

Failure handling, per meter:

* no answer within ``bus.timeout_ms``: the read is sent again up to ``bus.retries`` times;
* exception 5 or 6 (acknowledge, busy): retried in place after a short wait;
* any other exception code, a timeout after the retries, a short reply: the meter has failed this poll;
* a meter whose last poll failed is read after the meters that answer, only in the time left before the
  bus's next tick; after ``fail_threshold`` failed polls in a row it is probed with one request and no retries
  every ``polling.probe_interval_secs`` (between ticks too), so a dead meter never delays a healthy one;
* a socket error closes the connection; the next read reconnects, and a failed connect waits a capped
  exponential back-off with jitter. While the bus waits, its meters fail at once, without a request.

A meter that failed yields one point per quantity with value None and quality bad (never 0). A value that
cannot be decoded (a NaN float) is a bad point of its own; the meter stays up. A meter's drop is logged once
at WARNING with the error, its recovery once at INFO; the bus connection likewise.

The per-meter and per-bus parts of this (spare-time reads, probes, reconnects, logging, metrics) are shared with the
DL/T 645 collector in :mod:`energymon.collectors.polling`; this module keeps the Modbus side.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from energymon.collectors.codec import decode
from energymon.collectors.planner import ReadRequest, plan
from energymon.collectors.polling import DeviceHealth, OpenFailedError, PollingCollector, PollPolicy, bad_points
from energymon.config import Meter, ModbusRtuBus, ModbusRtuTcpBus, ModbusSource, ModbusTcpBus, RegisterMap
from energymon.errors import (
    DecodeError,
    DeviceExceptionError,
    DeviceTimeoutError,
    SourceError,
)
from energymon.interfaces import Clock
from energymon.metrics import PipelineMetrics
from energymon.schema import Point, Quality

__all__ = ["ModbusBus", "ModbusCollector", "ModbusPolicy"]

log = logging.getLogger(__name__)

ModbusBus = ModbusTcpBus | ModbusRtuTcpBus | ModbusRtuBus

_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


@dataclass(frozen=True, slots=True)
class ModbusPolicy(PollPolicy):
    """How a Modbus bus reacts to failures: :class:`~energymon.collectors.polling.PollPolicy` and busy replies.

    The collector builds it from the bus's ``polling`` block; tests shorten the windows. The attributes are those
    of ``PollPolicy`` (``fail_threshold``, the probe interval, the reconnect back-off,
    ``timeouts_before_reconnect``) and:

    Attributes:
        busy_retries: times a read answered with exception 5/6 is sent again.
        busy_wait_secs: wait before the first busy retry (grows linearly).
    """

    busy_retries: int = 3
    busy_wait_secs: float = 0.1


@dataclass(slots=True, eq=False)
class _Device:
    """A meter on the bus: its unit id, planned requests, quantities and failure state."""

    meter: Meter
    unit_id: int
    requests: list[ReadRequest]
    quantities: list[tuple[str, str]]
    health: DeviceHealth


class ModbusCollector(PollingCollector[_Device, ModbusBaseClient]):
    """Collector for one Modbus bus.

    Lifecycle: :meth:`start` once (opens nothing; the first poll connects), :meth:`poll` once per tick of each
    poll group (calls never overlap; reads are serialised by a lock regardless), :meth:`stop` once at the end.
    Failure handling per meter and per bus is :class:`~energymon.collectors.polling.PollingCollector`'s; this
    class owns the Modbus side: the pymodbus client, the planned reads, exception codes and decoding.

    Args:
        bus: the bus configuration.
        meters: the meters on this bus with their resolved register maps.
        metrics: self-metrics, optional: ``device_up`` per meter, ``poll_duration`` per group, and for stage
            ``collector`` the points read with a value (``received``) and each failed read by error class.
        max_hole: largest gap of unused registers read to merge two values into one request; by default the
            meter's ``max_hole_registers``, else the bus's (0: only registers in the map are read).
        clock: event-time source; a point's ``ts_ms`` is the time its reply arrived.
        policy: failure handling (default: from the bus's ``polling`` block); see :class:`ModbusPolicy`.

    Raises:
        ValueError: a meter is not a Modbus meter of this bus, or its register map cannot be planned.
        RuntimeError: a serial bus, but pyserial (``pymodbus[serial]``) is not installed.
    """

    _policy: ModbusPolicy

    def __init__(
        self,
        bus: ModbusBus,
        meters: list[tuple[Meter, RegisterMap]],
        *,
        metrics: PipelineMetrics | None = None,
        max_hole: int | None = None,
        clock: Clock | None = None,
        policy: ModbusPolicy | None = None,
    ) -> None:
        if isinstance(bus, ModbusRtuBus) and importlib.util.find_spec("serial") is None:
            raise RuntimeError(f"bus {bus.id}: Modbus RTU on a serial line needs pyserial (pymodbus[serial])")
        where = bus.device if isinstance(bus, ModbusRtuBus) else f"{bus.host}:{bus.port}"
        super().__init__(
            bus.id, where, policy=policy or ModbusPolicy.for_bus(bus.polling), log=log, metrics=metrics,
            clock=clock, rebuild_on_timeouts=not isinstance(bus, ModbusRtuBus), timeout_ms=bus.timeout_ms,
            retries=bus.retries,
        )
        self._bus = bus
        for meter, regmap in meters:
            src = meter.source
            if not isinstance(src, ModbusSource) or src.bus != bus.id:
                raise ValueError(f"meter {meter.id}: not a Modbus meter of bus {bus.id}")
            hole = max_hole if max_hole is not None else (
                src.max_hole_registers if src.max_hole_registers is not None else bus.max_hole_registers
            )
            try:
                requests = plan(regmap.registers, regmap.addressing, max_hole=hole)
            except ValueError as exc:
                raise ValueError(f"meter {meter.id}: {exc}") from None
            device = _Device(
                meter=meter,
                unit_id=src.unit_id,
                requests=requests,
                quantities=[(r.quantity, r.unit) for r in regmap.registers],
                health=self._new_health(meter.id, f"meter {meter.id} (unit {src.unit_id})"),
            )
            self._add_device(src.poll_group, device)

    # ----------------------------------------------------------------------------------- one meter

    async def _query_device(self, dev: _Device) -> list[Point]:
        try:
            points = await self._read_values(dev)
        except SourceError as exc:
            self._device_error(dev, exc)
            return self._bad_points(dev)
        dev.health.ok()
        return points

    async def _read_values(self, dev: _Device) -> list[Point]:
        client = await self._connected()
        retries = dev.health.retries(self._bus.retries)
        meter_id = dev.meter.id
        points: list[Point] = []
        for req in dev.requests:
            data = await self._request(client, dev, req, retries)
            ts = self._clock.now_ms()
            for reg, offset in req.values:
                value: float | None
                try:
                    value = decode(reg, data[offset : offset + reg.width], device=meter_id)
                except DecodeError as exc:
                    log.debug("%s", exc)
                    self._count_error(exc)
                    value, quality = None, Quality.BAD
                else:
                    quality = Quality.GOOD
                point = Point(meter=meter_id, quantity=reg.quantity, value=value, unit=reg.unit, ts_ms=ts,
                              quality=quality)
                points.append(point)
        return points

    async def _request(
        self, client: ModbusBaseClient, dev: _Device, req: ReadRequest, retries: int
    ) -> Sequence[int] | Sequence[bool]:
        """Send one read with the retry policy; return its registers (or bits)."""
        meter_id = dev.meter.id
        what = f"FC{req.function_code} {req.start}+{req.count} to unit {dev.unit_id}"
        timeouts = busy = 0
        while True:
            try:
                rsp = await self._call(client, req, dev.unit_id)
            except ConnectionException as exc:
                raise self._connection_broken(f"{what}: {exc}") from None
            except ModbusIOException as exc:
                if not client.connected:
                    raise self._connection_broken(f"connection lost during {what}") from None
                timeouts += 1
                if not self._timed_out() and timeouts <= retries:  # past the bus's limit it was dropped
                    continue
                raise DeviceTimeoutError(
                    meter_id, f"no answer to {what} within {self._bus.timeout_ms} ms ({timeouts} attempt(s))"
                ) from exc
            except ModbusException as exc:
                raise DecodeError(meter_id, f"bad reply to {what}: {exc}") from None
            except OSError as exc:
                raise self._connection_broken(f"{what}: {exc}") from None
            self._bus_health.answered()
            if rsp.isError():
                code = rsp.exception_code
                err = DeviceExceptionError(
                    meter_id, code, f"exception {code} ({_EXCEPTION_NAMES.get(code, 'unknown')}) to {what}"
                )
                if err.busy and busy < self._policy.busy_retries:
                    busy += 1
                    await asyncio.sleep(self._policy.busy_wait_secs * busy)
                    continue
                raise err
            data = rsp.bits if req.function_code in (1, 2) else rsp.registers
            if len(data) < req.count:
                raise DecodeError(meter_id, f"short reply to {what}: {len(data)} of {req.count} values")
            return data

    @staticmethod
    async def _call(client: ModbusBaseClient, req: ReadRequest, unit_id: int) -> ModbusPDU:
        fc, start, count = req.function_code, req.start, req.count
        if fc == 3:
            return await client.read_holding_registers(start, count=count, device_id=unit_id)
        if fc == 4:
            return await client.read_input_registers(start, count=count, device_id=unit_id)
        if fc == 1:
            return await client.read_coils(start, count=count, device_id=unit_id)
        return await client.read_discrete_inputs(start, count=count, device_id=unit_id)

    def _bad_points(self, dev: _Device) -> list[Point]:
        return bad_points(dev.meter.id, dev.quantities, self._clock.now_ms())

    # ----------------------------------------------------------------------------------- the connection

    async def _open(self) -> ModbusBaseClient:
        client = self._make_client()
        if await client.connect():
            return client
        client.close()
        raise OpenFailedError(f"cannot connect to {self._bus_health.where}")

    def _alive(self, conn: ModbusBaseClient) -> bool:
        return conn.connected

    def _close(self, conn: ModbusBaseClient) -> None:
        conn.close()

    def _make_client(self) -> ModbusBaseClient:
        bus = self._bus
        timeout = bus.timeout_ms / 1000
        client: ModbusBaseClient
        # retries=0 and reconnect_delay=0 (no automatic reconnect): this module owns both policies.
        if isinstance(bus, ModbusRtuBus):
            client = AsyncModbusSerialClient(
                bus.device,
                framer=FramerType.RTU,
                baudrate=bus.baudrate,
                bytesize=bus.bytesize,
                parity=bus.parity,
                stopbits=bus.stopbits,
                name=bus.id,
                reconnect_delay=0,
                reconnect_delay_max=0,
                timeout=timeout,
                retries=0,
            )
        else:
            client = AsyncModbusTcpClient(
                bus.host,
                framer=FramerType.RTU if isinstance(bus, ModbusRtuTcpBus) else FramerType.SOCKET,
                port=bus.port,
                name=bus.id,
                reconnect_delay=0,
                reconnect_delay_max=0,
                timeout=timeout,
                retries=0,
            )
        client.set_max_no_responses(1 << 30)  # pymodbus would close the socket after a few timeouts
        return client
