"""ModbusCollector against real pymodbus servers on 127.0.0.1 and over a real pseudo-terminal pair (socat).

Faults are injected with the pymodbus 3.16 simulator's ``action`` hook: it sees every read, counts it, and
can hang (a black-holed device), answer an exception code, or answer busy once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import pytest
from prometheus_client import CollectorRegistry
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusBaseServer, ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice
from services import free_port, require_binary

from energymon.clock import ManualClock
from energymon.collectors.codec import encode
from energymon.collectors.library import library_map
from energymon.collectors.modbus import ModbusCollector, ModbusPolicy
from energymon.config import (
    DataType,
    Meter,
    ModbusRtuBus,
    ModbusRtuTcpBus,
    ModbusSource,
    ModbusTcpBus,
    Register,
    RegisterMap,
    WordOrder,
)
from energymon.metrics import PipelineMetrics
from energymon.schema import Point, Quality

LOGGER = "energymon.collectors.modbus"
TIMEOUT_MS = 300
T = TypeVar("T")

POWER_MAP = RegisterMap(
    name="test power meter",
    registers=[
        Register(quantity="energy_active_import", address=0, type=DataType.UINT32, scale=0.1, unit="kWh",
                 kind="counter"),
        Register(quantity="power_active", address=2, type=DataType.FLOAT32, unit="kW"),
        Register(quantity="voltage_l1", address=4, type=DataType.FLOAT32, order=WordOrder.CDAB, unit="V"),
        Register(quantity="power_factor", address=8, type=DataType.INT16, scale=0.001, unit="pf"),
    ],
)
READINGS = {
    "energy_active_import": 123456.7, "power_active": 812.5, "voltage_l1": 230.25, "power_factor": 0.93
}

Fault = Literal["ok", "blackhole", "exception", "busy_once"]


class SimMeter:
    """A simulated meter: a register image, a log of the reads it saw, and a switchable fault."""

    def __init__(self, unit: int, regmap: RegisterMap, values: dict[str, float], size: int = 16) -> None:
        self.unit = unit
        self.reads: list[tuple[int, int, int]] = []
        self.fault: Fault = "ok"
        self.code = ExcCodes.DEVICE_FAILURE
        shift = 1 if regmap.addressing == "one_based" else 0
        image = [0] * size
        for reg in regmap.registers:
            words = encode(reg, values[reg.quantity])
            image[reg.address - shift : reg.address - shift + len(words)] = words
        self.image = image

    def device(self) -> SimDevice:
        return SimDevice(
            id=self.unit,
            simdata=[SimData(address=0, values=self.image, datatype=SimType.REGISTERS)],
            action=self._action,
        )

    async def _action(
        self, fc: int, start: int, address: int, count: int, regs: list[int], set_values: Any
    ) -> ExcCodes | None:
        if set_values is not None:
            return None
        self.reads.append((fc, address, count))
        if self.fault == "blackhole":
            await asyncio.Event().wait()  # never answers; cancelled when the test's event loop ends
        if self.fault == "exception":
            return self.code
        if self.fault == "busy_once":
            self.fault = "ok"
            return ExcCodes.DEVICE_BUSY if self.code is not ExcCodes.ACKNOWLEDGE else ExcCodes.ACKNOWLEDGE
        return None


def run(main: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
    """Run an async test body in a fresh event loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)

    return asyncio.run(bounded())


def meter(meter_id: str, unit: int, bus: str = "b1", group: str = "default") -> Meter:
    source = ModbusSource(type="modbus", bus=bus, unit_id=unit, model="x", poll_group=group)
    return Meter(id=meter_id, source=source)


def tcp_bus(port: int, **kw: Any) -> ModbusTcpBus:
    return ModbusTcpBus(type="modbus_tcp", id="b1", host="127.0.0.1", port=port, timeout_ms=TIMEOUT_MS, **kw)


async def tcp_server(
    sims: list[SimMeter], port: int, framer: FramerType = FramerType.SOCKET
) -> ModbusBaseServer:
    server = ModbusTcpServer([s.device() for s in sims], address=("127.0.0.1", port), framer=framer)
    await server.serve_forever(background=True)
    return server


async def stop_server(server: ModbusBaseServer) -> None:
    await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated


def by_meter(points: list[Point]) -> dict[str, dict[str, Point]]:
    out: dict[str, dict[str, Point]] = {}
    for p in points:
        out.setdefault(p.meter, {})[p.quantity] = p
    return out


def assert_good(points: dict[str, Point], values: dict[str, float] = READINGS) -> None:
    assert set(points) == set(values)
    for quantity, expected in values.items():
        assert points[quantity].quality is Quality.GOOD, points[quantity]
        assert points[quantity].value == pytest.approx(expected, rel=1e-6)


def assert_bad(points: dict[str, Point]) -> None:
    assert set(points) == set(READINGS)
    for p in points.values():
        assert p.quality is Quality.BAD
        assert p.value is None


def log_lines(caplog: pytest.LogCaptureFixture, text: str, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level
            and text in r.getMessage()]


# --------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("bus_type", ["modbus_tcp", "modbus_rtu_tcp"])
def test_two_meters_decode_with_one_request_each(bus_type: str) -> None:
    clock = ManualClock(datetime(2025, 3, 1, 8, 0, tzinfo=UTC))
    second = {**READINGS, "power_active": -12.25, "power_factor": -0.5}

    async def main() -> None:
        port = free_port()
        sims = [SimMeter(1, POWER_MAP, READINGS), SimMeter(7, POWER_MAP, second)]
        framer = FramerType.RTU if bus_type == "modbus_rtu_tcp" else FramerType.SOCKET
        server = await tcp_server(sims, port, framer)
        bus: ModbusTcpBus | ModbusRtuTcpBus
        if bus_type == "modbus_rtu_tcp":
            bus = ModbusRtuTcpBus(
                type="modbus_rtu_tcp", id="b1", host="127.0.0.1", port=port, timeout_ms=TIMEOUT_MS
            )
        else:
            bus = tcp_bus(port)
        meters = [(meter("m1", 1), POWER_MAP), (meter("m7", 7), POWER_MAP)]
        collector = ModbusCollector(bus, meters, clock=clock)
        await collector.start()
        try:
            points = by_meter(await collector.poll("default", clock.now_ms()))
            assert_good(points["m1"])
            assert_good(points["m7"], second)
            assert points["m1"]["energy_active_import"].unit == "kWh"
            assert all(p.ts_ms == clock.now_ms() for p in points["m1"].values())
            assert sims[0].reads == [(3, 0, 9)] and sims[1].reads == [(3, 0, 9)]
            clock.advance(5)
            again = await collector.poll("default", clock.now_ms())
            assert {p.ts_ms for p in again} == {clock.now_ms()}
            assert len(sims[0].reads) == 2
            assert await collector.poll("other_group", clock.now_ms()) == []
        finally:
            await collector.stop()
            await stop_server(server)

    run(main)


def test_library_map_over_input_registers_one_based() -> None:
    sdm = library_map("eastron_sdm630")
    one_based = sdm.model_copy(
        update={"addressing": "one_based",
                "registers": [r.model_copy(update={"address": r.address + 1}) for r in sdm.registers]}
    )
    values = {r.quantity: 10.0 + i for i, r in enumerate(sdm.registers)}

    async def main() -> None:
        port = free_port()
        sim = SimMeter(3, sdm, values, size=96)
        server = await tcp_server([sim], port)
        collector = ModbusCollector(tcp_bus(port), [(meter("sdm", 3), one_based)])
        try:
            points = by_meter(await collector.poll("default", 0))
            assert_good(points["sdm"], values)
            assert sim.reads == [(4, 0, 18), (4, 52, 28)]
        finally:
            await collector.stop()
            await stop_server(server)

    run(main)


# --------------------------------------------------------------------------------------------- failures


def test_dead_and_failing_devices_beside_healthy_ones(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    metrics = PipelineMetrics(CollectorRegistry())
    policy = ModbusPolicy(fail_threshold=3, probe_interval_secs=60)

    async def main() -> None:
        port = free_port()
        healthy = [SimMeter(1, POWER_MAP, READINGS), SimMeter(4, POWER_MAP, READINGS)]
        dead, failing = SimMeter(2, POWER_MAP, READINGS), SimMeter(3, POWER_MAP, READINGS)
        dead.fault, failing.fault = "blackhole", "exception"
        server = await tcp_server([*healthy, dead, failing], port)
        meters = [(meter(f"m{u}", u), POWER_MAP) for u in (1, 2, 3, 4)]
        collector = ModbusCollector(tcp_bus(port, retries=1), meters, metrics=metrics, policy=policy)
        try:
            for _ in range(3):
                points = by_meter(await collector.poll("default", 0))
                assert_good(points["m1"])
                assert_good(points["m4"])
                assert_bad(points["m2"])
                assert_bad(points["m3"])
            assert len(dead.reads) == 6  # 3 polls x (1 + bus.retries)
            assert len(failing.reads) == 3  # an exception code is not retried
            # both are now offline and probed only every 60 s: no request, no delay for the healthy meters
            for _ in range(2):
                started = time.monotonic()
                points = by_meter(await collector.poll("default", 0))
                assert time.monotonic() - started < TIMEOUT_MS / 1000
                assert_good(points["m1"])
                assert_good(points["m4"])
                assert_bad(points["m2"])
                assert_bad(points["m3"])
            assert len(dead.reads) == 6 and len(failing.reads) == 3
            assert len(healthy[0].reads) == 5
        finally:
            await collector.stop()
            await stop_server(server)

    run(main)
    sample = metrics.registry.get_sample_value
    up = {m: sample("energymon_device_up", {"meter": m}) for m in ("m1", "m2", "m3", "m4")}
    assert up == {"m1": 1.0, "m2": 0.0, "m3": 0.0, "m4": 1.0}
    errors = {
        kind: metrics.registry.get_sample_value(
            "energymon_errors_total", {"stage": "collector", "error_type": kind}
        )
        for kind in ("DeviceTimeoutError", "DeviceExceptionError")
    }
    assert errors == {"DeviceTimeoutError": 3.0, "DeviceExceptionError": 3.0}
    assert sample("energymon_received_total", {"stage": "collector"}) == 5 * 2 * 4
    assert sample("energymon_poll_duration_seconds_count", {"group": "default"}) == 5
    drops = log_lines(caplog, "unavailable", logging.WARNING)
    assert len(drops) == 2
    assert any("m2" in d and "no answer" in d for d in drops)
    assert any("m3" in d and "exception 4" in d for d in drops)


def test_dead_device_is_probed_once_per_probe_interval_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    policy = ModbusPolicy(fail_threshold=2, probe_interval_secs=0.2)

    async def main() -> None:
        port = free_port()
        sim = SimMeter(1, POWER_MAP, READINGS)
        sim.fault = "exception"
        server = await tcp_server([sim], port)
        collector = ModbusCollector(tcp_bus(port, retries=2), [(meter("m1", 1), POWER_MAP)], policy=policy)
        try:
            for _ in range(2):
                assert_bad(by_meter(await collector.poll("default", 0))["m1"])
            assert len(sim.reads) == 2
            assert_bad(by_meter(await collector.poll("default", 0))["m1"])  # in the window: no request
            assert len(sim.reads) == 2
            while len(sim.reads) == 2:  # the probe interval ends: one probe, which fails again
                await asyncio.sleep(0.02)
                assert_bad(by_meter(await collector.poll("default", 0))["m1"])
            assert len(sim.reads) == 3
            sim.fault = "ok"
            while True:  # the next probe succeeds
                await asyncio.sleep(0.02)
                points = by_meter(await collector.poll("default", 0))["m1"]
                if points["power_active"].quality is Quality.GOOD:
                    break
            assert_good(points)
            assert len(sim.reads) == 4
        finally:
            await collector.stop()
            await stop_server(server)

    run(main)
    assert len(log_lines(caplog, "m1 (unit 1) on bus b1 unavailable", logging.WARNING)) == 1
    assert len(log_lines(caplog, "m1 (unit 1) on bus b1 recovered", logging.INFO)) == 1


@pytest.mark.parametrize("code", [ExcCodes.DEVICE_BUSY, ExcCodes.ACKNOWLEDGE])
def test_busy_once_then_good_value(code: ExcCodes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    policy = ModbusPolicy(busy_wait_secs=0.01)

    async def main() -> None:
        port = free_port()
        sim = SimMeter(1, POWER_MAP, READINGS)
        sim.fault, sim.code = "busy_once", code
        server = await tcp_server([sim], port)
        collector = ModbusCollector(tcp_bus(port, retries=0), [(meter("m1", 1), POWER_MAP)], policy=policy)
        try:
            assert_good(by_meter(await collector.poll("default", 0))["m1"])
            assert len(sim.reads) == 2
        finally:
            await collector.stop()
            await stop_server(server)

    run(main)
    assert not [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def test_server_restart_gives_bad_points_then_recovery(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    metrics = PipelineMetrics(CollectorRegistry())
    policy = ModbusPolicy(reconnect_min_secs=0.05, reconnect_max_secs=0.2)

    async def main() -> None:
        port = free_port()
        sims = [SimMeter(1, POWER_MAP, READINGS), SimMeter(2, POWER_MAP, READINGS)]
        server = await tcp_server(sims, port)
        meters = [(meter("m1", 1), POWER_MAP), (meter("m2", 2), POWER_MAP)]
        collector = ModbusCollector(tcp_bus(port), meters, metrics=metrics, policy=policy)
        try:
            points = by_meter(await collector.poll("default", 0))
            assert_good(points["m1"])
            assert_good(points["m2"])
            await stop_server(server)
            for i in range(4):
                started = time.monotonic()
                points = by_meter(await collector.poll("default", 0))
                # a read sent before the client saw the close waits one timeout; then refused connects
                # and the reconnect back-off answer at once
                assert time.monotonic() - started < (2 if i == 0 else 1) * TIMEOUT_MS / 1000
                assert_bad(points["m1"])
                assert_bad(points["m2"])
            assert metrics.registry.get_sample_value("energymon_device_up", {"meter": "m2"}) == 0.0
            server = await tcp_server(sims, port)
            deadline = time.monotonic() + 10
            while True:
                points = by_meter(await collector.poll("default", 0))
                if all(p.quality is Quality.GOOD for p in points["m1"].values()):
                    break
                assert time.monotonic() < deadline, "the collector did not reconnect"
                await asyncio.sleep(0.02)
            assert_good(points["m1"])
            assert_good(points["m2"])
            assert metrics.registry.get_sample_value("energymon_device_up", {"meter": "m2"}) == 1.0
        finally:
            await collector.stop()
            await stop_server(server)

    run(main)
    for m in ("m1", "m2"):
        drops = log_lines(caplog, f"meter {m} (unit {m[1]}) on bus b1 unavailable", logging.WARNING)
        assert len(drops) == 1
        assert "b1: cannot connect to 127.0.0.1" in drops[0] or "b1: connection lost" in drops[0]
        assert len(log_lines(caplog, f"meter {m} (unit {m[1]}) on bus b1 recovered", logging.INFO)) == 1
    assert len(log_lines(caplog, "bus b1: ", logging.WARNING)) == 1  # connection lost, or cannot connect
    assert len(log_lines(caplog, "bus b1: connected to 127.0.0.1", logging.INFO)) == 1


def test_bus_down_at_start_does_not_block() -> None:
    async def main() -> None:
        port = free_port()  # nothing listens there
        collector = ModbusCollector(tcp_bus(port), [(meter("m1", 1), POWER_MAP), (meter("m2", 2), POWER_MAP)])
        await collector.start()
        started = time.monotonic()
        points = by_meter(await collector.poll("default", 0))
        assert time.monotonic() - started < TIMEOUT_MS / 1000
        assert_bad(points["m1"])
        assert_bad(points["m2"])
        await collector.stop()

    run(main)


def test_meter_of_another_bus_is_refused() -> None:
    with pytest.raises(ValueError, match="m9: not a Modbus meter of bus b1"):
        ModbusCollector(tcp_bus(502), [(meter("m9", 1, bus="other"), POWER_MAP)])


# ----------------------------------------------------------------------------------- RTU on a serial line


@pytest.fixture
def pty_pair() -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals made by socat (a null-modem cable)."""
    socat = require_binary("socat")
    proc = subprocess.Popen(
        [socat, "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        paths: list[str] = []
        deadline = time.monotonic() + 10
        while len(paths) < 2 and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            if found := re.search(r"PTY is (/dev/\S+)", line):
                paths.append(found.group(1))
        if len(paths) < 2:
            pytest.fail(f"socat did not report two pseudo-terminals (got {paths}, exit code {proc.poll()})")
        yield paths[0], paths[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_rtu_over_a_serial_line(pty_pair: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server_end, client_end = pty_pair

    async def main() -> None:
        sims = [SimMeter(unit, POWER_MAP, READINGS) for unit in (1, 2, 5)]
        sims[1].fault = "blackhole"
        sims[2].fault, sims[2].code = "exception", ExcCodes.ILLEGAL_ADDRESS
        server = ModbusSerialServer([s.device() for s in sims], port=server_end, baudrate=19200)
        await server.serve_forever(background=True)
        bus = ModbusRtuBus(
            type="modbus_rtu", id="rs485", device=client_end, baudrate=19200, timeout_ms=TIMEOUT_MS, retries=0
        )
        meters = [(meter(f"s{u}", u, bus="rs485"), POWER_MAP) for u in (1, 2, 5)]
        collector = ModbusCollector(bus, meters)
        try:
            for _ in range(2):
                points = by_meter(await collector.poll("default", 0))
                assert_good(points["s1"])
                assert_bad(points["s2"])
                assert_bad(points["s5"])
            assert sims[0].reads == [(3, 0, 9)] * 2
        finally:
            await collector.stop()
            await stop_server(server)

    run(main)
    drops = log_lines(caplog, "unavailable", logging.WARNING)
    assert len(drops) == 2
    assert any("s5" in d and "exception 2 (illegal data address)" in d for d in drops)


# --------------------------------------------------------------------------------------------- hole filling


FEEDER_A = Register(quantity="power_active", address=0, type=DataType.FLOAT32, unit="kW")
FEEDER_B = Register(quantity="power_active", address=8, type=DataType.FLOAT32, unit="kW")


async def gappy_server(port: int) -> ModbusBaseServer:
    """One device (unit 1) that defines registers 0-1 and 8-9 only and refuses any read across 2-7."""
    words_a = encode(FEEDER_A, 11.5)
    words_b = encode(FEEDER_B, 22.5)
    device = SimDevice(id=1, simdata=[SimData(address=0, values=words_a, datatype=SimType.REGISTERS),
                                      SimData(address=8, values=words_b, datatype=SimType.REGISTERS)])
    server = ModbusTcpServer([device], address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    return server


def feeder_meter(meter_id: str, registers: list[Register], hole: int | None = None) -> tuple[Meter, RegisterMap]:
    source = ModbusSource(type="modbus", bus="b1", unit_id=1, registers=registers, max_hole_registers=hole)
    return Meter(id=meter_id, source=source), RegisterMap(registers=registers)


def test_hole_filling_off_reads_a_device_that_refuses_reads_across_undefined_registers() -> None:
    both = [FEEDER_A, FEEDER_B.model_copy(update={"quantity": "power_reactive", "unit": "kvar"})]

    async def main() -> None:
        port = free_port()
        server = await gappy_server(port)
        try:
            # default: the 6-register hole is read in one request, which the device refuses
            filled = ModbusCollector(tcp_bus(port), [feeder_meter("m1", both)])
            bad = by_meter(await filled.poll("default", 0))["m1"]
            assert all(p.quality is Quality.BAD for p in bad.values())
            await filled.stop()
            # off on the bus: two requests, both answered
            for collector in (
                ModbusCollector(tcp_bus(port, max_hole_registers=0), [feeder_meter("m1", both)]),
                ModbusCollector(tcp_bus(port), [feeder_meter("m1", both, hole=0)]),  # off for the meter
            ):
                good = by_meter(await collector.poll("default", 0))["m1"]
                assert {q: p.value for q, p in good.items()} == {"power_active": 11.5, "power_reactive": 22.5}
                await collector.stop()
        finally:
            await stop_server(server)

    run(main)


def test_several_meters_on_one_unit_id_read_their_own_registers() -> None:
    """A multi-circuit meter: one device (unit 1), a meter per feeder, registers that do not overlap."""

    async def main() -> None:
        port = free_port()
        server = await gappy_server(port)
        collector = ModbusCollector(tcp_bus(port), [feeder_meter("feeder_a", [FEEDER_A]),
                                                    feeder_meter("feeder_b", [FEEDER_B])])
        try:
            for _ in range(2):
                points = by_meter(await collector.poll("default", 0))
                assert points["feeder_a"]["power_active"].value == 11.5
                assert points["feeder_b"]["power_active"].value == 22.5
        finally:
            await collector.stop()
            await stop_server(server)

    run(main)


def test_a_64_bit_counter_is_read_exactly() -> None:
    reg = Register(quantity="energy_active_import", address=0, type=DataType.UINT64, scale=0.001, unit="kWh",
                   kind="counter")
    raw = 123456789012345678

    async def main() -> None:
        port = free_port()
        words = encode(reg.model_copy(update={"scale": 1.0}), raw)
        device = SimDevice(id=1, simdata=[SimData(address=0, values=words, datatype=SimType.REGISTERS)])
        server = ModbusTcpServer([device], address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        collector = ModbusCollector(tcp_bus(port), [feeder_meter("m1", [reg])])
        try:
            (point,) = await collector.poll("default", 0)
            assert point.value == 123456789012345.67  # float(raw) * 0.001 would give 123456789012345.69
        finally:
            await collector.stop()
            await stop_server(server)

    run(main)
