"""``energymon probe``: read one meter (or every meter of a bus) once and show what came back.

    energymon probe --config plant.yaml --meter kiln_drive
    energymon probe --config plant.yaml --bus plant_tcp --json

For commissioning: the engineer wiring a meter sees the request plan (which function codes and register ranges,
or which DL/T 645 data identifiers, are asked for, and which quantities each answers), the raw registers or
frame that came back, and each value with its unit and quality, exactly as the gateway would decode it (the
same register planner and codec). Each failure is named with what to check: an unknown meter or bus, a bus
that cannot be reached, a request not answered in time, a Modbus exception code or a DL/T 645 error word, a
reply that does not decode. Every request is sent once (no retries), so a probe shows the line as it is.

Nothing is written anywhere: no outbox, no store, no MQTT. Exit code 0 when every value was read, 1 when a
read failed, 2 for an unknown meter or bus.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from energymon.config import (
    Dlt645SerialBus,
    Dlt645Source,
    Dlt645TcpBus,
    Meter,
    ModbusRtuBus,
    ModbusRtuTcpBus,
    ModbusSource,
    ModbusTcpBus,
    MqttJsonSource,
    PlantConfig,
)

__all__ = ["MeterProbe", "ProbeRead", "ProbeValue", "add_parser", "main", "probe_meter"]

_MODBUS_EXCEPTIONS = {
    1: ("illegal function", "the meter does not support this function code: check the register map's function"),
    2: ("illegal data address", "the register address is not in this meter: check the map, one_based/zero_based"),
    3: ("illegal data value", "the count is not accepted: the meter may limit registers per read"),
    4: ("server device failure", "the meter failed internally"),
    5: ("acknowledge", "the meter is busy with a long operation; probe again"),
    6: ("server device busy", "the meter is busy; probe again"),
    10: ("gateway path unavailable", "the Modbus gateway has no route to this unit: check its serial side"),
    11: ("gateway target device failed to respond",
         "the gateway got no answer from this unit id: check the unit id, wiring, baud rate and parity"),
}


@dataclass(slots=True)
class ProbeValue:
    """One quantity as read: value (None when not read), unit, quality and where it came from."""

    quantity: str
    value: float | None
    unit: str
    quality: str
    source: str
    raw: str = ""
    error: str = ""


@dataclass(slots=True)
class ProbeRead:
    """One request on the line and its outcome."""

    request: str
    quantities: list[str]
    sent: str = ""
    ok: bool = False
    raw: str = ""
    ms: float | None = None
    error: str = ""


@dataclass(slots=True)
class MeterProbe:
    """What probing one meter showed."""

    meter: str
    name: str
    protocol: str
    bus: str
    endpoint: str
    target: str
    plan: list[ProbeRead] = field(default_factory=list)
    values: list[ProbeValue] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        """Every value read."""
        return not self.error and all(v.quality == "good" for v in self.values)


def _words(data: Sequence[int] | Sequence[bool]) -> str:
    return " ".join(("1" if bool(x) else "0") if isinstance(x, bool) else f"{int(x):04X}" for x in data)


# --------------------------------------------------------------------------- Modbus


async def _probe_modbus(plant: PlantConfig, meter: Meter, src: ModbusSource,
                        bus: ModbusTcpBus | ModbusRtuTcpBus | ModbusRtuBus) -> MeterProbe:
    from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
    from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
    from pymodbus.framer import FramerType

    from energymon.collectors.codec import decode
    from energymon.collectors.planner import plan
    from energymon.errors import DecodeError

    regmap = plant.register_map(src)
    where = bus.device if isinstance(bus, ModbusRtuBus) else f"{bus.host}:{bus.port}"
    result = MeterProbe(meter.id, meter.name, bus.type, bus.id, where, f"unit {src.unit_id}")
    try:
        requests = plan(regmap.registers, regmap.addressing)
    except ValueError as exc:
        result.error = f"the register map cannot be planned: {exc}"
        return result
    for req in requests:
        result.plan.append(ProbeRead(f"FC{req.function_code:02d} {req.start}+{req.count}",
                                     [reg.quantity for reg, _ in req.values]))
    timeout = bus.timeout_ms / 1000
    client: ModbusBaseClient
    if isinstance(bus, ModbusRtuBus):
        client = AsyncModbusSerialClient(bus.device, framer=FramerType.RTU, baudrate=bus.baudrate,
                                         bytesize=bus.bytesize, parity=bus.parity, stopbits=bus.stopbits,
                                         name=bus.id, reconnect_delay=0, reconnect_delay_max=0, timeout=timeout,
                                         retries=0)
    else:
        client = AsyncModbusTcpClient(bus.host, port=bus.port,
                                      framer=FramerType.RTU if isinstance(bus, ModbusRtuTcpBus) else
                                      FramerType.SOCKET, name=bus.id, reconnect_delay=0, reconnect_delay_max=0,
                                      timeout=timeout, retries=0)
    try:
        try:
            connected = await asyncio.wait_for(client.connect(), timeout=timeout + 5)
        except (OSError, TimeoutError) as exc:
            connected, reason = False, str(exc) or type(exc).__name__
        else:
            reason = "connection refused or no route"
        if not connected:
            result.error = (f"bus {bus.id}: cannot connect to {where} ({reason}): check the address, port, "
                            "cabling and that the device or Modbus gateway is powered")
            result.values = [ProbeValue(r.quantity, None, r.unit, "bad", "not read", error="bus unreachable")
                             for r in regmap.registers]
            return result
        for req, step in zip(requests, result.plan, strict=True):
            fc, start, count = req.function_code, req.start, req.count
            t0 = time.perf_counter()
            try:
                if fc == 3:
                    rsp = await client.read_holding_registers(start, count=count, device_id=src.unit_id)
                elif fc == 4:
                    rsp = await client.read_input_registers(start, count=count, device_id=src.unit_id)
                elif fc == 1:
                    rsp = await client.read_coils(start, count=count, device_id=src.unit_id)
                else:
                    rsp = await client.read_discrete_inputs(start, count=count, device_id=src.unit_id)
            except ModbusIOException:
                step.error = (f"no answer within {bus.timeout_ms} ms: check the unit id ({src.unit_id}), wiring, "
                              "baud rate and parity" if client.connected else "the connection was closed")
            except (ConnectionException, OSError) as exc:
                step.error = f"connection lost: {exc}"
            except ModbusException as exc:
                step.error = f"bad reply: {exc}"
            else:
                step.ms = round((time.perf_counter() - t0) * 1000, 1)
                if rsp.isError():
                    code = int(rsp.exception_code)
                    name, hint = _MODBUS_EXCEPTIONS.get(code, ("unknown exception", "see the meter's manual"))
                    step.error = f"exception {code} ({name}): {hint}"
                else:
                    data = rsp.bits[:count] if fc in (1, 2) else rsp.registers
                    if len(data) < count:
                        step.error = f"short reply: {len(data)} of {count} values"
                    else:
                        step.ok = True
                        step.raw = _words(data)
            for reg, offset in req.values:
                if not step.ok:
                    result.values.append(ProbeValue(reg.quantity, None, reg.unit, "bad", step.request,
                                                    error=step.error))
                    continue
                data = rsp.bits[:count] if fc in (1, 2) else rsp.registers
                words = data[offset:offset + reg.width]
                try:
                    value: float | None = decode(reg, words, device=meter.id)
                    quality, error = "good", ""
                except DecodeError as exc:
                    value, quality, error = None, "bad", str(exc)
                result.values.append(ProbeValue(reg.quantity, value, reg.unit, quality,
                                                f"{step.request} @{start + offset}", _words(words), error))
    finally:
        client.close()
    return result


# --------------------------------------------------------------------------- DL/T 645


class _Line:
    """A DL/T 645 link for one probe: TCP through asyncio, serial through pyserial (blocking, in a thread)."""

    def __init__(self, bus: Dlt645TcpBus | Dlt645SerialBus) -> None:
        self.bus = bus
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._serial: Any = None

    async def open(self) -> None:
        bus = self.bus
        if isinstance(bus, Dlt645TcpBus):
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(bus.host, bus.port), timeout=bus.timeout_ms / 1000 + 5)
        else:
            import serial  # pyserial, installed with pymodbus[serial]

            self._serial = serial.Serial(bus.device, baudrate=bus.baudrate, bytesize=bus.bytesize,
                                         parity=bus.parity, stopbits=bus.stopbits, timeout=0.05)

    async def exchange(self, request: bytes, done: Any, timeout_s: float) -> bytes:
        """Send ``request``; collect bytes until ``done(received)`` or the timeout (raises TimeoutError)."""
        got = b""
        if self._writer is not None and self._reader is not None:
            self._writer.write(request)
            await self._writer.drain()
            async with asyncio.timeout(timeout_s):
                while not done(got):
                    chunk = await self._reader.read(256)
                    if not chunk:
                        raise ConnectionError("the device server closed the connection")
                    got += chunk
            return got
        port = self._serial
        port.reset_input_buffer()
        port.write(request)
        deadline = time.monotonic() + timeout_s
        while not done(got):
            if time.monotonic() > deadline:
                raise TimeoutError
            got += await asyncio.to_thread(port.read, 256)
        return got

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._serial is not None:
            self._serial.close()


async def _probe_dlt645(meter: Meter, src: Dlt645Source, bus: Dlt645TcpBus | Dlt645SerialBus) -> MeterProbe:
    from energymon.collectors.dlt645 import (
        CONTROL_READ,
        ITEM_FORMATS,
        FrameBuffer,
        FrameError,
        build_read_request,
        check_source,
        di_bytes,
        parse_read_reply,
    )
    from energymon.errors import DecodeError, DeviceExceptionError

    where = bus.device if isinstance(bus, Dlt645SerialBus) else f"{bus.host}:{bus.port}"
    result = MeterProbe(meter.id, meter.name, bus.type, bus.id, where, f"address {src.address}")
    issues = check_source(src)
    if issues:
        result.error = "; ".join(f"source.{path}: {msg}" for path, msg in issues)
        return result
    for item in src.items:
        fmt = ITEM_FORMATS[item.di.upper()]
        result.plan.append(ProbeRead(f"read DI {item.di.upper()} ({fmt.name})", [item.quantity]))
    line = _Line(bus)
    try:
        try:
            await line.open()
        except (OSError, TimeoutError, ValueError) as exc:
            result.error = (f"bus {bus.id}: cannot open {where} ({str(exc) or type(exc).__name__}): check the "
                            "address, port or device, and that the serial device server is powered")
            result.values = [ProbeValue(i.quantity, None, i.unit, "bad", "not read", error="bus unreachable")
                             for i in src.items]
            return result
        for item, step in zip(src.items, result.plan, strict=True):
            di = item.di.upper()
            request = build_read_request(src.address, di)
            step.sent = request.hex(" ").upper()

            def done(received: bytes, di: str = di) -> bool:
                frames = FrameBuffer()
                frames.feed(received)
                while True:
                    try:
                        frame = frames.next_frame()
                    except FrameError:
                        return True  # garbled: show what came
                    if frame is None:
                        return False
                    if frame.is_reply and frame.function == CONTROL_READ and frame.address == src.address and (
                            frame.abnormal or frame.data[:4] == di_bytes(di)):
                        return True

            t0 = time.perf_counter()
            value: float | None = None
            try:
                raw = await line.exchange(request, done, bus.timeout_ms / 1000)
            except TimeoutError:
                step.error = (f"no answer within {bus.timeout_ms} ms: check the meter address ({src.address}), "
                              "wiring (A/B), baud rate and parity (DL/T 645: usually 2400 8E1)")
            except (ConnectionError, OSError) as exc:
                step.error = f"link lost: {exc}"
            else:
                step.ms = round((time.perf_counter() - t0) * 1000, 1)
                step.raw = raw.hex(" ").upper()
                frames = FrameBuffer()
                frames.feed(raw)
                try:
                    frame = None
                    while True:
                        f = frames.next_frame()
                        if f is None:
                            break
                        if f.is_reply and f.address == src.address:
                            frame = f
                    if frame is None:
                        step.error = "no reply from this address in what came back"
                    else:
                        value = parse_read_reply(frame, address=src.address, di=di, device=meter.id) * item.scale
                        step.ok = True
                except FrameError as exc:
                    step.error = f"corrupt reply: {exc}"
                except DeviceExceptionError as exc:
                    step.error = f"{exc}: the meter does not provide this item (check the DI)"
                except DecodeError as exc:
                    step.error = str(exc)
            result.values.append(ProbeValue(item.quantity, value, item.unit, "good" if step.ok else "bad",
                                            f"DI {di}", step.raw, step.error))
    finally:
        line.close()
    return result


# --------------------------------------------------------------------------- entry points


class ProbeTargetError(LookupError):
    """An unknown meter or bus, or one a probe cannot read."""


async def probe_meter(plant: PlantConfig, meter_id: str) -> MeterProbe:
    """Read one meter once.

    Raises:
        ProbeTargetError: no such meter, or it is not polled (an MQTT meter publishes by itself).
    """
    try:
        meter = plant.meter(meter_id)
    except KeyError:
        known = ", ".join(m.id for m in plant.meters) or "none"
        raise ProbeTargetError(f"no meter {meter_id!r} in the plant file (meters: {known})") from None
    src = meter.source
    bus = next((b for b in plant.buses if b.id == src.bus), None)
    if isinstance(src, MqttJsonSource):
        topic = getattr(src, "topic", "")
        raise ProbeTargetError(f"meter {meter_id} is an MQTT meter: it publishes by itself, nothing to poll; watch "
                               f"it with: mosquitto_sub -v -t '{topic}' (broker of bus {src.bus})")
    if isinstance(src, ModbusSource) and isinstance(bus, ModbusTcpBus | ModbusRtuTcpBus | ModbusRtuBus):
        return await _probe_modbus(plant, meter, src, bus)
    if isinstance(src, Dlt645Source) and isinstance(bus, Dlt645TcpBus | Dlt645SerialBus):
        return await _probe_dlt645(meter, src, bus)
    raise ProbeTargetError(f"meter {meter_id}: bus {src.bus!r} is not a Modbus or DL/T 645 bus")


async def probe_bus(plant: PlantConfig, bus_id: str) -> list[MeterProbe]:
    """Read every meter of a bus once, one after another.

    Raises:
        ProbeTargetError: no such bus, an MQTT bus, or no meter on it.
    """
    bus = next((b for b in plant.buses if b.id == bus_id), None)
    if bus is None:
        known = ", ".join(b.id for b in plant.buses) or "none"
        raise ProbeTargetError(f"no bus {bus_id!r} in the plant file (buses: {known})")
    if bus.type == "mqtt":
        raise ProbeTargetError(f"bus {bus_id} is an MQTT broker: its meters publish by themselves, nothing to poll")
    meters = [m for m in plant.meters if m.source.bus == bus_id]
    if not meters:
        raise ProbeTargetError(f"bus {bus_id} has no meters in the plant file")
    return [await probe_meter(plant, m.id) for m in meters]


def _num(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.6f}".rstrip("0").rstrip(".")


def render(probes: Sequence[MeterProbe], out: TextIO) -> None:
    """Human-readable probe results."""
    for p in probes:
        title = f"meter {p.meter}" + (f" ({p.name})" if p.name else "")
        out.write(f"{title} · bus {p.bus} ({p.protocol}, {p.endpoint}) · {p.target}\n")
        out.write(f"  request plan ({len(p.plan)} request{'s' if len(p.plan) != 1 else ''}):\n")
        for r in p.plan:
            out.write(f"    {r.request}  → {', '.join(r.quantities)}\n")
        if p.error:
            out.write(f"  error: {p.error}\n")
        for r in p.plan:
            if r.sent and (r.ok or r.error) and not p.error:
                out.write(f"  {r.request}: sent {r.sent}\n")
            if r.ok:
                out.write(f"  {r.request}: answered in {r.ms} ms: {r.raw}\n")
            elif r.error and not p.error:
                out.write(f"  {r.request}: FAILED: {r.error}" + (f" (got {r.raw})" if r.raw else "") + "\n")
        if p.values:
            rows = [["quantity", "value", "unit", "quality", "raw", "from"]]
            rows += [[v.quantity, _num(v.value), v.unit, v.quality, v.raw if v.quality == "good" else v.error,
                      v.source] for v in p.values]
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
            for row in rows:
                cells = [c.rjust(w) if i == 1 else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row[:-1], widths, strict=True))]
                out.write("  " + "  ".join([*cells, row[-1]]).rstrip() + "\n")
        out.write(f"  {'OK' if p.ok else 'FAILED'}\n\n")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``probe`` to ``energymon``'s subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "probe", help="读一次表计（或一条总线上的所有表计）：数值、单位、质量、原始寄存器或报文、请求计划 "
        "(read one meter or every meter of a bus once)")
    p.add_argument("--config", type=Path, required=True, help="厂区配置文件 (plant file)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--meter", help="计量点（表计）编号 (meter id)")
    which.add_argument("--bus", help="总线编号：依次读取其上每块表计 (bus id: every meter on it)")
    p.add_argument("--json", action="store_true", help="以 JSON 输出结果 (print the result as JSON)")
    return p


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``energymon probe``; returns the exit code (0 all read, 1 a read failed, 2 unknown target)."""
    from energymon.config import load_plant

    out = out or sys.stdout
    plant = load_plant(args.config)
    try:
        probes = asyncio.run(probe_bus(plant, args.bus) if args.bus else _one(plant, args.meter))
    except ProbeTargetError as exc:
        print(f"energymon probe: 错误 (error): {exc}", file=sys.stderr)
        return 2
    if args.json:
        out.write(json.dumps([{**asdict(p), "ok": p.ok} for p in probes], ensure_ascii=False, indent=1) + "\n")
    else:
        render(probes, out)
    return 0 if all(p.ok for p in probes) else 1


async def _one(plant: PlantConfig, meter_id: str) -> list[MeterProbe]:
    return [await probe_meter(plant, meter_id)]
