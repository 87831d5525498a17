"""Modbus servers for a simulated plant: each meter answers with its register map, computed at read time.

:class:`ModbusPlantServer` starts one pymodbus server per Modbus bus of a plant:

* ``modbus_tcp``: a Modbus TCP server (MBAP framing) on ``host:port``;
* ``modbus_rtu_tcp``: RTU frames over a TCP socket (a serial device server);
* ``modbus_rtu``: RTU on a serial device, when the caller names the device the simulator answers on (the
  far end of the gateway's line, e.g. one side of a ``socat`` pty pair).

Every meter of the bus is a pymodbus :class:`~pymodbus.simulator.SimDevice` under its unit id, with the
holding, input, coil and discrete-input tables of its register map (``PlantConfig.register_map``;
``one_based`` maps register N to protocol address N-1). The device's ``action`` hook runs on each request and
writes the model's values at the clock's current event time into the registers read, encoded by
:func:`energymon.collectors.codec.encode` (integers that do not fit their type are clamped, as a meter's
display saturates). Gaps inside a table read as 0; addresses outside it answer exception 2. Meters are
read-only: writes answer exception 1.

Faults injected into the model act on the wire:

* :class:`~energymon.simulators.profiles.NoAnswer`: the request is swallowed, the client times out;
* :class:`~energymon.simulators.profiles.ExceptionReply`: the exception code is returned;
* :class:`~energymon.simulators.profiles.DroppedConnection`: the server closes the TCP connection the request
  came on (on a serial line there is no connection: the request goes unanswered).

A unit id nobody owns answers exception 11 (gateway target failed to respond) on Modbus TCP, and nothing on
RTU, as on a real line.

Example::

    >>> import asyncio
    >>> from datetime import UTC, datetime
    >>> from importlib import resources
    >>> from pymodbus.client import AsyncModbusTcpClient
    >>> from energymon.clock import ManualClock
    >>> from energymon.collectors.codec import decode
    >>> from energymon.config import load_plant
    >>> from energymon.simulators.plant import PlantModel
    >>> plant = load_plant(str(resources.files("energymon.examples") / "cement_plant.yaml"))
    >>> model = PlantModel.from_config(plant, ManualClock(datetime(2025, 1, 6, 18, tzinfo=UTC)))
    >>> async def read_power() -> float:
    ...     server = ModbusPlantServer(model, plant)              # every TCP bus on a free loopback port
    ...     host, port = (await server.start())["plant_tcp"]
    ...     client = AsyncModbusTcpClient(host, port=port)
    ...     try:
    ...         await client.connect()
    ...         reply = await client.read_holding_registers(2, count=2, device_id=1)
    ...     finally:
    ...         client.close()
    ...         await server.stop()
    ...     register = plant.register_map(plant.meter("incoming").source).registers[1]
    ...     return decode(register, reply.registers, device="incoming")
    >>> 18_000 < asyncio.run(read_power()) < 21_000
    True
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from energymon.collectors.codec import encode
from energymon.config import (
    DataType,
    Meter,
    ModbusRtuBus,
    ModbusRtuTcpBus,
    ModbusSource,
    ModbusTcpBus,
    PlantConfig,
    Register,
    RegisterFunction,
)
from energymon.simulators.profiles import DroppedConnection, ExceptionReply, NoAnswer

if TYPE_CHECKING:
    from energymon.simulators.plant import PlantModel

__all__ = ["ModbusPlantServer"]

log = logging.getLogger(__name__)

_TABLE_OF_FC = {
    1: RegisterFunction.COIL,
    2: RegisterFunction.DISCRETE_INPUT,
    3: RegisterFunction.HOLDING,
    4: RegisterFunction.INPUT,
}
_TABLE_ORDER = (
    RegisterFunction.COIL,
    RegisterFunction.DISCRETE_INPUT,
    RegisterFunction.HOLDING,
    RegisterFunction.INPUT,
)
_BIT_TABLES = (RegisterFunction.COIL, RegisterFunction.DISCRETE_INPUT)
_INT_RANGE = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38


def _fit(register: Register, value: float) -> float:
    """Clamp ``value`` to what the register can hold (a saturated display), so it always encodes."""
    if register.type is DataType.BIT:
        raw = 1.0 if (value - register.offset) / register.scale >= 0.5 else 0.0
        return raw * register.scale + register.offset
    if not math.isfinite(value):
        value = math.copysign(1e300, value) if math.isinf(value) else 0.0
    raw = (value - register.offset) / register.scale
    if register.type in _INT_RANGE:
        lo, hi = _INT_RANGE[register.type]
        raw = float(min(max(round(raw), lo), hi))
    elif register.type is DataType.FLOAT32:
        raw = min(max(raw, -_FLOAT32_MAX), _FLOAT32_MAX)
    return raw * register.scale + register.offset


def _encode(register: Register, value: float) -> list[int]:
    try:
        words: list[int] = encode(register, _fit(register, value))
        return words
    except ValueError:
        # the clamped value can still round past the type's edge through scale and offset: step back inward
        lo, hi = _INT_RANGE.get(register.type, (0, 0))
        raw = (value - register.offset) / register.scale
        edge = hi - 1 if raw > 0 else lo + 1
        words = encode(register, edge * register.scale + register.offset)
        return words


@dataclass(slots=True, eq=False)
class _Unit:
    """One meter on a bus: its unit id, register tables (protocol addresses) and pymodbus device."""

    meter: Meter
    unit_id: int
    tables: dict[RegisterFunction, list[tuple[int, Register]]] = field(default_factory=dict)

    def simdata(self) -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
        """pymodbus blocks for (coils, discrete inputs, holding, input): each table's span, readable.

        An unused table still needs one entry (pymodbus requires four non-empty blocks); the action hook
        answers exception 2 for it.
        """
        blocks: list[list[SimData]] = []
        for table in _TABLE_ORDER:
            regs = self.tables.get(table, [])
            bits = table in _BIT_TABLES
            if not regs:
                blocks.append([SimData(0, values=False, datatype=SimType.BITS) if bits
                               else SimData(0, datatype=SimType.INVALID)])
                continue
            lo = min(a for a, _ in regs)
            hi = max(a + (1 if bits else r.width) for a, r in regs)
            if bits:
                blocks.append([SimData(lo, count=hi - lo, values=False, datatype=SimType.BITS)])
            else:
                blocks.append([SimData(lo, count=hi - lo, values=0, datatype=SimType.REGISTERS)])
        return blocks[0], blocks[1], blocks[2], blocks[3]


class _BusSim:
    """The simulated side of one bus: its units, and what to do with each request."""

    def __init__(
        self, model: PlantModel, bus_id: str, units: dict[int, _Unit], *, serial: bool, rtu: bool
    ) -> None:
        self.model = model
        self.bus_id = bus_id
        self.units = units
        self.serial = serial
        self.rtu = rtu
        self.server: ModbusTcpServer | ModbusSerialServer | None = None
        self.requests = 0

    def devices(self) -> list[SimDevice]:
        return [
            SimDevice(unit.unit_id, simdata=unit.simdata(), action=partial(self.action, unit))
            for unit in self.units.values()
        ]

    def route(self, unit_id: int) -> str:
        """``serve``, ``silent`` (no answer), ``drop`` (close the connection) or ``unknown``."""
        self.requests += 1
        unit = self.units.get(unit_id)
        if unit is None:
            return "silent" if self.rtu else "unknown"
        fault = self.model.protocol_fault(unit.meter.id)
        if isinstance(fault, NoAnswer):
            return "silent"
        if isinstance(fault, DroppedConnection):
            return "silent" if self.serial else "drop"
        return "serve"

    async def action(
        self,
        unit: _Unit,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus hook: fill the registers about to be read with the model's values."""
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION
        ts = self.model.clock.now_ms()
        fault = self.model.protocol_fault(unit.meter.id, ts)
        if isinstance(fault, ExceptionReply):
            return ExcCodes(fault.code)
        table = _TABLE_OF_FC.get(function_code)
        regs = unit.tables.get(table) if table is not None else None
        if not regs:
            return ExcCodes.ILLEGAL_ADDRESS
        meter_id = unit.meter.id
        if table in _BIT_TABLES:
            first_word = address // 16
            lo, hi = first_word * 16, (first_word + count) * 16
            for wire, reg in regs:
                if lo <= wire < hi:
                    bit = encode(reg, _fit(reg, self.model.value(meter_id, reg.quantity, ts)))[0]
                    i = wire // 16 - start_address
                    mask = 1 << (wire % 16)
                    registers[i] = (registers[i] | mask) if bit else (registers[i] & ~mask)
            return None
        end = address + count
        for wire, reg in regs:
            if wire >= end or wire + reg.width <= address:
                continue
            words = _encode(reg, self.model.value(meter_id, reg.quantity, ts))
            i = wire - start_address
            if reg.type is DataType.BIT:
                mask = 1 << (reg.bit or 0)
                registers[i] = (registers[i] & ~mask) | (words[0] & mask)
            else:
                registers[i : i + len(words)] = words
        return None


class _Handler(ServerRequestHandler):
    """Per-connection request handler that applies protocol faults before pymodbus answers."""

    async def handle_request(self) -> None:
        pdu = self.last_pdu
        if pdu is None:
            return
        sim: _BusSim = self.server.bus_sim
        decision = sim.route(pdu.dev_id)
        if decision == "silent":
            return
        if decision == "drop":
            log.debug("bus %s: dropping the connection on a request to unit %d", sim.bus_id, pdu.dev_id)
            self.close()
            return
        if decision == "unknown":
            reply = ExceptionResponse(pdu.function_code, ExcCodes.GATEWAY_NO_RESPONSE, device_id=pdu.dev_id,
                                      transaction=pdu.transaction_id)
            self.server_send(reply, self.last_addr)  # type: ignore[no-untyped-call]
            return
        await super().handle_request()  # type: ignore[no-untyped-call]


class _TcpServer(ModbusTcpServer):
    def __init__(self, bus_sim: _BusSim, address: tuple[str, int], framer: FramerType) -> None:
        super().__init__(bus_sim.devices(), framer=framer, address=address)
        self.bus_sim = bus_sim

    def callback_new_connection(self) -> _Handler:
        return _Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)  # type: ignore[no-untyped-call]


class _SerialServer(ModbusSerialServer):
    def __init__(self, bus_sim: _BusSim, bus: ModbusRtuBus, device: str) -> None:
        super().__init__(
            bus_sim.devices(), framer=FramerType.RTU, port=device, baudrate=bus.baudrate, parity=bus.parity,
            stopbits=bus.stopbits, bytesize=bus.bytesize, reconnect_delay=0.5,
        )
        self.bus_sim = bus_sim

    def callback_new_connection(self) -> _Handler:
        return _Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)  # type: ignore[no-untyped-call]


class ModbusPlantServer:
    """Modbus servers for every Modbus bus of a plant, answering from a :class:`PlantModel`.

    Args:
        model: the plant model (values, faults, clock).
        plant: the plant file (buses, meters, register maps).
        host: address the TCP servers listen on.
        port: ``0`` (default): a free port for every TCP bus; another int: that port (one TCP bus only);
            a mapping: per bus id (a bus missing from it listens on its configured port); None: the
            configured ports.
        serial_devices: per ``modbus_rtu`` bus id, the serial device to answer on. RTU buses not named here
            are not served (their configured device is the gateway's end of the line).

    Raises:
        ValueError: two meters share a unit id on a bus, or a one-based register has address 0.
    """

    def __init__(
        self,
        model: PlantModel,
        plant: PlantConfig,
        host: str = "127.0.0.1",
        port: int | Mapping[str, int] | None = 0,
        *,
        serial_devices: Mapping[str, str] | None = None,
    ) -> None:
        self.model = model
        self.plant = plant
        self.host = host
        self._port = port
        self._serial_devices = dict(serial_devices or {})
        self._buses: dict[str, _BusSim] = {}
        self.endpoints: dict[str, tuple[str, int]] = {}
        #: serial device each served ``modbus_rtu`` bus answers on
        self.serial_endpoints: dict[str, str] = {}
        units_by_bus: dict[str, dict[int, _Unit]] = {}
        for meter in plant.meters:
            src = meter.source
            if not isinstance(src, ModbusSource):
                continue
            regmap = plant.register_map(src)
            shift = 1 if regmap.addressing == "one_based" else 0
            unit = _Unit(meter, src.unit_id)
            for reg in regmap.registers:
                if reg.address < shift:
                    raise ValueError(f"meter {meter.id}: {reg.quantity}: address 0 does not exist one_based")
                unit.tables.setdefault(reg.function, []).append((reg.address - shift, reg))
            units = units_by_bus.setdefault(src.bus, {})
            if src.unit_id in units:
                other = units[src.unit_id].meter.id
                raise ValueError(f"bus {src.bus}: meters {other} and {meter.id} share unit id {src.unit_id}")
            units[src.unit_id] = unit
        for bus in plant.buses:
            if isinstance(bus, ModbusTcpBus | ModbusRtuTcpBus | ModbusRtuBus):
                self._buses[bus.id] = _BusSim(
                    model, bus.id, units_by_bus.get(bus.id, {}),
                    serial=isinstance(bus, ModbusRtuBus), rtu=not isinstance(bus, ModbusTcpBus),
                )

    def _port_for(self, bus: ModbusTcpBus | ModbusRtuTcpBus) -> int:
        if self._port is None:
            return bus.port
        if isinstance(self._port, int):
            return self._port
        return self._port.get(bus.id, bus.port)

    def requests(self, bus_id: str) -> int:
        """Requests received so far on a bus (answered or not)."""
        return self._buses[bus_id].requests

    async def start(self) -> dict[str, tuple[str, int]]:
        """Start listening; returns ``{bus id: (host, port)}`` of the TCP buses, with the ports bound.

        Raises:
            OSError: a server could not listen (port in use, serial device missing).
        """
        tcp = [b for b in self.plant.buses if isinstance(b, ModbusTcpBus | ModbusRtuTcpBus)]
        if isinstance(self._port, int) and self._port != 0 and len(tcp) > 1:
            raise ValueError("one fixed port for several TCP buses: give a mapping of ports per bus")
        try:
            for bus in tcp:
                framer = FramerType.SOCKET if isinstance(bus, ModbusTcpBus) else FramerType.RTU
                sim = self._buses[bus.id]
                server = _TcpServer(sim, (self.host, self._port_for(bus)), framer)
                sim.server = server
                await self._listen(server, f"{bus.id} on {self.host}:{self._port_for(bus)}")
                sockets = getattr(server.transport, "sockets", None) or []
                port = sockets[0].getsockname()[1] if sockets else self._port_for(bus)
                self.endpoints[bus.id] = (self.host, port)
            for line in self.plant.buses:
                if isinstance(line, ModbusRtuBus) and line.id in self._serial_devices:
                    device = self._serial_devices[line.id]
                    sim = self._buses[line.id]
                    serial = _SerialServer(sim, line, device)
                    sim.server = serial
                    await self._listen(serial, f"{line.id} on {device}")
                    self.serial_endpoints[line.id] = device
        except BaseException:
            await self.stop()
            raise
        for bus_id, (host, port) in self.endpoints.items():
            count = len(self._buses[bus_id].units)
            log.info("Modbus bus %s: %d meter(s) on %s:%d", bus_id, count, host, port)
        return dict(self.endpoints)

    @staticmethod
    async def _listen(server: ModbusTcpServer | ModbusSerialServer, what: str) -> None:
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            raise OSError(f"Modbus server {what} could not listen: {exc}") from None

    async def stop(self) -> None:
        """Close every server and its connections."""
        for sim in self._buses.values():
            server, sim.server = sim.server, None
            if server is not None:
                await server.shutdown()  # type: ignore[no-untyped-call]
        self.endpoints.clear()
        self.serial_endpoints.clear()
        await asyncio.sleep(0)  # let the transports' close callbacks run

