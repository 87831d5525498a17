"""Dead meters, dead buses and hosts that never answer cost healthy meters nothing.

Each test runs the real gateway (one schedule per bus) over real pymodbus TCP servers and measures lateness in
event terms: the poll group ticks every second, so a healthy meter read on time has one good reading in every
one-second slot of the measured window. The window opens once every dead meter has failed at least once (the
tick in which a meter first fails pays its timeouts; from then on it is read only in the bus's spare time) and
spans a fixed number of ticks; a slot without a reading is a missed tick. With the old schedule (every bus of a
group gathered, the next tick computed after the slowest) two dead meters cost every healthy meter every second
tick; the bound allows two missed slots in the window for a loaded machine, far from that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry
from pymodbus.server import ModbusTcpServer
from services import free_port
from test_modbus_collector import POWER_MAP, READINGS, SimMeter

from energymon.clock import WallClock
from energymon.config import PlantConfig, parse_plant
from energymon.gateway.gateway import Gateway
from energymon.interfaces import Message
from energymon.metrics import PipelineMetrics
from energymon.runtime import build_collectors
from energymon.schema import Point, Quality

T = TypeVar("T")
INTERVAL_MS = 1000
WINDOW_TICKS = 12
SLACK_TICKS = 2

MAP = """\
register_maps:
  power:
    registers:
      - {quantity: energy_active_import, address: 0, type: uint32, scale: 0.1, unit: kWh}
      - {quantity: power_active, address: 2, type: float32, unit: kW}
      - {quantity: voltage_l1, address: 4, type: float32, order: CDAB, unit: V}
      - {quantity: power_factor, address: 8, type: int16, scale: 0.001, unit: pf}
"""


def plant_text(buses: list[tuple[str, int, list[tuple[str, int]]]], *, probe_secs: float = 2.0) -> str:
    """A plant: per bus (id, port, [(meter id, unit id)]) a modbus_tcp bus (300 ms, one retry) and its meters."""
    lines = [
        "version: 1",
        "enterprise: {uscc: 91530102MA6K7LQ8RH, name: 测试厂, industry_code: C3011}",
        MAP.rstrip("\n"),
        "buses:",
    ]
    for bus_id, port, _ in buses:
        lines.append(f"  - {{type: modbus_tcp, id: {bus_id}, host: 127.0.0.1, port: {port}, timeout_ms: 300,"
                     f" retries: 1, polling: {{probe_interval_secs: {probe_secs:g}}}}}")
    lines.append("meters:")
    for bus_id, _, meters in buses:
        for meter_id, unit in meters:
            lines.append(f"  - {{id: {meter_id}, source: {{type: modbus, bus: {bus_id}, unit_id: {unit},"
                         " model: power, poll_group: fast}}")
    lines.append("gateway: {id: gw1, history_retention_days: 0, poll_groups: [{id: fast, interval_secs: 1}]}")
    return "\n".join(lines) + "\n"


class NullTransport:
    """An uplink that accepts everything."""

    async def connect(self) -> None:
        pass

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        pass

    def subscribe(self, topic_filter: str, handler: Callable[[Message], None], *, qos: int = 1) -> None:
        pass

    async def close(self) -> None:
        pass


class RecordingGateway(Gateway):
    """The gateway, keeping every point it takes in."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.points: list[Point] = []

    def enqueue(self, points: list[Point]) -> list[int]:
        self.points.extend(points)
        return super().enqueue(points)

    def good(self, meter: str) -> list[int]:
        """Event times of the meter's good readings of active power (one per read)."""
        return [p.ts_ms for p in self.points
                if p.meter == meter and p.quantity == "power_active" and p.quality is Quality.GOOD]

    def bad(self, meter: str) -> list[int]:
        return [p.ts_ms for p in self.points
                if p.meter == meter and p.quantity == "power_active" and p.quality is Quality.BAD]


def run(main: Callable[[], Awaitable[T]], timeout: float = 180.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)

    return asyncio.run(bounded())


async def modbus_server(sims: list[SimMeter], port: int) -> ModbusTcpServer:
    server = ModbusTcpServer([s.device() for s in sims], address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    return server


async def black_hole(port: int) -> asyncio.Server:
    """A host that accepts TCP connections and never answers a byte."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(4096):
                pass
        finally:
            writer.close()

    return await asyncio.start_server(swallow, "127.0.0.1", port)


@asynccontextmanager
async def running(plant: PlantConfig) -> Any:
    clock = WallClock()
    metrics = PipelineMetrics(CollectorRegistry())
    polled, _ = build_collectors(plant, clock=clock, metrics=metrics)
    gw = RecordingGateway(plant, NullTransport(), polled, queue_path=":memory:", clock=clock, metrics=metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:
        yield gw
    finally:
        stop.set()
        await task


async def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 90.0) -> None:
    """Wait on a condition with a generous bound (the bound only catches a hang, it measures nothing)."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.05)
    assert condition(), what


def slots(ts: list[int]) -> set[int]:
    return {t // INTERVAL_MS for t in ts}


def missed_ticks(gw: RecordingGateway, meter: str, first_slot: int) -> list[int]:
    """Slots of the window without a good reading of ``meter``."""
    got = slots(gw.good(meter))
    return [s for s in range(first_slot, first_slot + WINDOW_TICKS) if s not in got]


def window_complete(gw: RecordingGateway, meters: list[str], first_slot: int) -> Callable[[], bool]:
    """The window has passed: some reading of every meter lies after it (so its slots are final)."""
    end = (first_slot + WINDOW_TICKS + 1) * INTERVAL_MS
    return lambda: all(any(t >= end for t in gw.good(m) + gw.bad(m)) for m in meters)


def ids(prefix: str, units: range) -> Iterator[tuple[str, int]]:
    return ((f"{prefix}{u}", u) for u in units)


@pytest.mark.parametrize("dead", [2, 5, 7], ids=["2-dead", "5-dead", "all-but-one-of-8-dead"])
def test_dead_meters_on_a_bus_never_delay_its_healthy_meters(tmp_path: Path, dead: int) -> None:
    total = 8
    dead_units = range(1, dead + 1)  # listed first: the healthy meters are read after them
    healthy_units = range(dead + 1, total + 1)

    async def main() -> None:
        port = free_port()
        sims = [SimMeter(u, POWER_MAP, READINGS) for u in range(1, total + 1)]
        for sim in sims[:dead]:
            sim.fault = "blackhole"
        server = await modbus_server(sims, port)
        meters = [*ids("dead", dead_units), *ids("ok", healthy_units)]
        plant = parse_plant(plant_text([("b1", port, meters)]))
        try:
            async with running(plant) as gw:
                dead_ids = [f"dead{u}" for u in dead_units]
                ok_ids = [f"ok{u}" for u in healthy_units]
                await wait_for(lambda: all(gw.bad(m) for m in dead_ids), "every dead meter failed once")
                first = max(t for m in dead_ids for t in gw.bad(m)) // INTERVAL_MS + 1
                await wait_for(window_complete(gw, ok_ids, first), "the window passed")
                for m in ok_ids:
                    missed = missed_ticks(gw, m, first)
                    assert len(missed) <= SLACK_TICKS, (m, missed)
                # the dead meters are still tried, in the spare time (about one read a tick after the first
                # round), and every tick reports them unavailable
                assert sum(len(s.reads) for s in sims[:dead]) >= 2 * dead + WINDOW_TICKS // 2
                for m in dead_ids:
                    assert not gw.good(m)
                    assert len(slots(gw.bad(m)) & set(range(first, first + WINDOW_TICKS))) >= \
                        WINDOW_TICKS - SLACK_TICKS
        finally:
            await server.shutdown()  # type: ignore[no-untyped-call]

    run(main)


def test_a_black_hole_host_and_a_dead_bus_cost_other_buses_no_tick(tmp_path: Path) -> None:
    async def main() -> None:
        good_port, hole_port, dead_port = free_port(), free_port(), free_port()
        sims = [SimMeter(u, POWER_MAP, READINGS) for u in (1, 2)]
        server = await modbus_server(sims, good_port)
        hole = await black_hole(hole_port)
        plant = parse_plant(plant_text([
            ("hole", hole_port, list(ids("hole", range(1, 4)))),  # accepts, never answers: 3 × 600 ms a tick
            ("down", dead_port, list(ids("down", range(1, 3)))),  # nothing listens: connects are refused
            ("good", good_port, list(ids("ok", range(1, 3)))),
        ]))
        try:
            async with running(plant) as gw:
                start = None
                await wait_for(lambda: bool(gw.good("ok1")), "the healthy bus is read")
                start = min(gw.good("ok1")) // INTERVAL_MS + 1
                await wait_for(window_complete(gw, ["ok1", "ok2"], start), "the window passed")
                for m in ("ok1", "ok2"):
                    missed = missed_ticks(gw, m, start)
                    assert len(missed) <= SLACK_TICKS, (m, missed)
                for m in ("hole1", "hole2", "hole3", "down1", "down2"):
                    assert gw.bad(m) and not gw.good(m)
        finally:
            hole.close()
            await server.shutdown()  # type: ignore[no-untyped-call]

    run(main)


def test_a_dead_meter_that_answers_again_is_read_within_its_probe_interval(tmp_path: Path) -> None:
    probe_secs = 3.0

    async def main() -> None:
        port = free_port()
        sims = [SimMeter(u, POWER_MAP, READINGS) for u in (1, 2)]
        sims[0].fault = "blackhole"
        server = await modbus_server(sims, port)
        plant = parse_plant(plant_text([("b1", port, [("m1", 1), ("m2", 2)])], probe_secs=probe_secs))
        try:
            async with running(plant) as gw:
                # offline after fail_threshold (3) failed polls; then only probed
                await wait_for(lambda: len(sims[0].reads) >= 2 * 3 + 1, "m1 is offline and probed")
                sims[0].fault = "ok"
                restored = gw.clock.now_ms()
                await wait_for(lambda: any(t > restored for t in gw.good("m1")), "m1 is read again")
                back = min(t for t in gw.good("m1") if t > restored)
                # within one probe interval, plus the probe itself and one tick if the probe had to wait for
                # the spare time after it
                assert back - restored <= probe_secs * 1000 + 2 * INTERVAL_MS, back - restored
        finally:
            await server.shutdown()  # type: ignore[no-untyped-call]

    run(main)
