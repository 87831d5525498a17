"""Modbus collector: one bus (Modbus TCP, RTU over TCP, RTU on a serial line) and the meters behind it.

One :class:`ModbusCollector` owns one pymodbus client and reads its meters one after another, each with the
reads its register map planned once (:mod:`energymon.collectors.planner`). pymodbus's own retries and
automatic reconnects are switched off: the policy below is the only one.

Failure handling, per meter:

* no answer within ``bus.timeout_ms``: the read is sent again up to ``bus.retries`` times;
* exception 5 or 6 (acknowledge, busy): retried in place after a short wait;
* any other exception code, a timeout after the retries, a short reply: the meter has failed this poll;
* a meter that failed ``fail_threshold`` polls in a row is skipped for a back-off window (60 s, doubling up
  to 15 min) and then probed with one request and no retries, so a dead meter delays the others on the bus
  by at most one timeout per window;
* a socket error closes the connection; the next read reconnects, and a failed connect waits a capped
  exponential back-off with jitter. While the bus waits, its meters fail at once, without a request.

A meter that failed yields one point per quantity with value None and quality bad (never 0). A value that
cannot be decoded (a NaN float) is a bad point of its own; the meter stays up. A meter's drop is logged once
at WARNING with the error, its recovery once at INFO; the bus connection likewise.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from energymon.clock import WallClock
from energymon.collectors.codec import decode
from energymon.collectors.planner import ReadRequest, plan
from energymon.config import Meter, ModbusRtuBus, ModbusRtuTcpBus, ModbusSource, ModbusTcpBus, RegisterMap
from energymon.errors import (
    ConnectionLostError,
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
class ModbusPolicy:
    """How a bus reacts to failures. The defaults suit a plant; tests shorten the windows.

    Attributes:
        fail_threshold: failed polls in a row after which a meter is skipped for a back-off window.
        device_backoff_secs: first window a failing meter is skipped; doubles while it keeps failing.
        device_backoff_max_secs: cap of that window.
        reconnect_min_secs: wait before the second connect attempt; doubles on each failure (with jitter).
        reconnect_max_secs: cap of the reconnect wait.
        busy_retries: times a read answered with exception 5/6 is sent again.
        busy_wait_secs: wait before the first busy retry (grows linearly).
        timeouts_before_reconnect: timeouts in a row on the whole bus, without any answer in between, after
            which a TCP connection is rebuilt (it may be half-open). Not applied to serial lines.
    """

    fail_threshold: int = 3
    device_backoff_secs: float = 60.0
    device_backoff_max_secs: float = 900.0
    reconnect_min_secs: float = 1.0
    reconnect_max_secs: float = 60.0
    busy_retries: int = 3
    busy_wait_secs: float = 0.1
    timeouts_before_reconnect: int = 5


@dataclass(slots=True, eq=False)
class _Device:
    """A meter on the bus and its failure state."""

    meter: Meter
    unit_id: int
    requests: list[ReadRequest]
    quantities: list[tuple[str, str]]
    backoff: float
    failures: int = 0
    skip_until: float = 0.0
    up: bool | None = None
    label: str = field(init=False)

    def __post_init__(self) -> None:
        self.label = f"meter {self.meter.id} (unit {self.unit_id})"


class ModbusCollector:
    """Collector for one Modbus bus.

    Lifecycle: :meth:`start` once (opens nothing; the first poll connects), :meth:`poll` once per tick of each
    poll group (calls never overlap; reads are serialised by a lock regardless), :meth:`stop` once at the end.

    Args:
        bus: the bus configuration.
        meters: the meters on this bus with their resolved register maps.
        metrics: self-metrics, optional: ``device_up`` per meter, ``poll_duration`` per group, and for stage
            ``collector`` the points read with a value (``received``) and each failed read by error class.
        max_hole: largest gap of unused registers read to merge two values into one request.
        clock: event-time source; a point's ``ts_ms`` is the time its reply arrived.
        policy: failure handling; see :class:`ModbusPolicy`.

    Raises:
        ValueError: a meter is not a Modbus meter of this bus, or its register map cannot be planned.
        RuntimeError: a serial bus, but pyserial (``pymodbus[serial]``) is not installed.
    """

    def __init__(
        self,
        bus: ModbusBus,
        meters: list[tuple[Meter, RegisterMap]],
        *,
        metrics: PipelineMetrics | None = None,
        max_hole: int = 10,
        clock: Clock | None = None,
        policy: ModbusPolicy | None = None,
    ) -> None:
        if isinstance(bus, ModbusRtuBus) and importlib.util.find_spec("serial") is None:
            raise RuntimeError(f"bus {bus.id}: Modbus RTU on a serial line needs pyserial (pymodbus[serial])")
        self.name = bus.id
        self._bus = bus
        self._policy = policy or ModbusPolicy()
        self._clock: Clock = clock or WallClock()
        self._metrics = metrics
        self._stage = metrics.stage("collector") if metrics else None
        self._groups: dict[str, list[_Device]] = {}
        for meter, regmap in meters:
            src = meter.source
            if not isinstance(src, ModbusSource) or src.bus != bus.id:
                raise ValueError(f"meter {meter.id}: not a Modbus meter of bus {bus.id}")
            try:
                requests = plan(regmap.registers, regmap.addressing, max_hole=max_hole)
            except ValueError as exc:
                raise ValueError(f"meter {meter.id}: {exc}") from None
            device = _Device(
                meter=meter,
                unit_id=src.unit_id,
                requests=requests,
                quantities=[(r.quantity, r.unit) for r in regmap.registers],
                backoff=self._policy.device_backoff_secs,
            )
            self._groups.setdefault(src.poll_group, []).append(device)
        self._lock = asyncio.Lock()
        self._client: ModbusBaseClient | None = None
        self._connect_failures = 0
        self._reconnect_at = 0.0
        self._bus_error: ConnectionLostError | None = None
        self._bus_up: bool | None = None
        self._timeouts_in_row = 0
        self._random = random.Random()

    @property
    def groups(self) -> list[str]:
        """Poll groups this collector has meters in."""
        return list(self._groups)

    async def start(self) -> None:
        """Nothing to open: the first poll connects, so a bus that is down does not stop the gateway."""

    async def poll(self, group: str, ts_ms: int) -> list[Point]:
        """Read every meter of ``group``, one after another.

        Args:
            group: the poll group that ticked.
            ts_ms: the tick's time; points carry the time their reply arrived instead (drift-free event time).

        Returns:
            Points of every quantity of every meter of the group; a failed meter's are quality bad.
        """
        devices = self._groups.get(group, [])
        started = time.perf_counter()
        points: list[Point] = []
        for device in devices:
            async with self._lock:
                points.extend(await self._read_device(device))
        if self._metrics is not None and self._stage is not None and devices:
            self._metrics.poll_duration.labels(group).observe(time.perf_counter() - started)
            self._stage.received(sum(1 for p in points if p.value is not None))
        return points

    async def stop(self) -> None:
        """Close the connection."""
        async with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # ----------------------------------------------------------------------------------- one meter

    async def _read_device(self, dev: _Device) -> list[Point]:
        now = time.monotonic()
        if now < dev.skip_until:
            return self._bad_points(dev)
        if self._client is None and now < self._reconnect_at and self._bus_error is not None:
            self._device_failed(dev, self._bus_error, counts=False)
            return self._bad_points(dev)
        try:
            points = await self._read_values(dev)
        except ConnectionLostError as exc:
            self._count_error(exc)
            self._device_failed(dev, exc, counts=False)
            return self._bad_points(dev)
        except SourceError as exc:
            self._count_error(exc)
            self._device_failed(dev, exc, counts=True)
            return self._bad_points(dev)
        self._device_ok(dev)
        return points

    async def _read_values(self, dev: _Device) -> list[Point]:
        client = await self._connected()
        retries = 0 if dev.failures >= self._policy.fail_threshold else self._bus.retries
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
                self._timeouts_in_row += 1
                timeouts += 1
                if (
                    self._timeouts_in_row >= self._policy.timeouts_before_reconnect
                    and not isinstance(self._bus, ModbusRtuBus)
                ):
                    self._drop_client()  # maybe half-open: rebuild it on the next read
                elif timeouts <= retries:
                    continue
                raise DeviceTimeoutError(
                    meter_id, f"no answer to {what} within {self._bus.timeout_ms} ms ({timeouts} attempt(s))"
                ) from exc
            except ModbusException as exc:
                raise DecodeError(meter_id, f"bad reply to {what}: {exc}") from None
            except OSError as exc:
                raise self._connection_broken(f"{what}: {exc}") from None
            self._timeouts_in_row = 0
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
        ts = self._clock.now_ms()
        return [
            Point(meter=dev.meter.id, quantity=q, value=None, unit=u, ts_ms=ts, quality=Quality.BAD)
            for q, u in dev.quantities
        ]

    def _device_failed(self, dev: _Device, exc: SourceError, *, counts: bool) -> None:
        if counts:
            dev.failures += 1
            if dev.failures >= self._policy.fail_threshold:
                dev.skip_until = time.monotonic() + dev.backoff
                dev.backoff = min(dev.backoff * 2, self._policy.device_backoff_max_secs)
        if dev.up is not False:
            log.warning("%s on bus %s unavailable: %s", dev.label, self._bus.id, exc)
            dev.up = False
            if self._metrics is not None:
                self._metrics.device_up.labels(dev.meter.id).set(0)

    def _device_ok(self, dev: _Device) -> None:
        dev.failures = 0
        dev.skip_until = 0.0
        dev.backoff = self._policy.device_backoff_secs
        if dev.up is not True:
            if dev.up is False:
                log.info("%s on bus %s recovered", dev.label, self._bus.id)
            dev.up = True
            if self._metrics is not None:
                self._metrics.device_up.labels(dev.meter.id).set(1)

    def _count_error(self, exc: SourceError) -> None:
        if self._stage is not None:
            self._stage.error(exc)

    # ----------------------------------------------------------------------------------- the connection

    async def _connected(self) -> ModbusBaseClient:
        """Return a connected client, connecting now if needed.

        Raises:
            ConnectionLostError: the bus cannot be reached; the next attempt waits a back-off.
        """
        if self._client is not None:
            if self._client.connected:
                return self._client
            self._drop_client()  # closed by the peer (e.g. an idle timeout): reconnect quietly
        client = self._make_client()
        if await client.connect():
            self._client = client
            self._connect_failures = 0
            self._timeouts_in_row = 0
            if self._bus_up is False:
                log.info("bus %s: connected to %s again", self._bus.id, self._where())
            self._bus_up = True
            self._bus_error = None
            return client
        client.close()
        self._connect_failures += 1
        delay = min(
            self._policy.reconnect_max_secs,
            self._policy.reconnect_min_secs * 2 ** (self._connect_failures - 1),
        )
        self._reconnect_at = time.monotonic() + delay * self._random.uniform(0.5, 1.0)
        raise self._lost(f"cannot connect to {self._where()}")

    def _connection_broken(self, message: str) -> ConnectionLostError:
        """A read hit a socket error: close the connection; the next read reconnects at once."""
        self._drop_client()
        self._reconnect_at = 0.0
        return self._lost(message)

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _lost(self, message: str) -> ConnectionLostError:
        err = ConnectionLostError(self._bus.id, message)
        self._bus_error = err
        if self._bus_up is not False:
            log.warning("bus %s: %s", self._bus.id, message)
            self._bus_up = False
        return err

    def _where(self) -> str:
        bus = self._bus
        return bus.device if isinstance(bus, ModbusRtuBus) else f"{bus.host}:{bus.port}"

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
