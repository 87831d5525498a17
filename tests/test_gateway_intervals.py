"""Counter intervals computed at the edge: the gateway attaches to each counter reading the interval it closes,
saves its baselines in the outbox in the same transaction as the batch, undoes a batch that was not stored, and
processors book the intervals without state, so any split of the batches over processors books the same energy."""

from __future__ import annotations

import itertools
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry
from test_gateway import RecordingTransport

from energymon.clock import ManualClock
from energymon.config import PlantConfig, SqliteStoreConfig, parse_plant
from energymon.demo import example_plant_path
from energymon.gateway.gateway import Gateway
from energymon.interfaces import Message
from energymon.metrics import PipelineMetrics
from energymon.processors.processor import Processor
from energymon.processors.store import SqliteStore
from energymon.schema import Interval, Point, decode_batch
from energymon.topics import readings_topic

START = datetime(2025, 3, 3, tzinfo=UTC)
T0 = int(START.timestamp() * 1000)
STEP = 15_000


def plant() -> PlantConfig:
    data = yaml.safe_load(example_plant_path().read_text(encoding="utf-8"))
    data["gateway"]["history_retention_days"] = 0
    return parse_plant(yaml.safe_dump(data, allow_unicode=True), "test-plant.yaml")


def gateway(tmp_path: Path, clock: ManualClock, plant_config: PlantConfig | None = None) -> Gateway:
    return Gateway(plant_config or plant(), RecordingTransport(), [], queue_path=tmp_path / "outbox.sqlite",
                   clock=clock, metrics=PipelineMetrics(CollectorRegistry()))


def reading(meter: str, value: float, ts_ms: int) -> list[Point]:
    return [Point(meter=meter, quantity="energy_active_import", value=value, unit="kWh", ts_ms=ts_ms),
            Point(meter=meter, quantity="power_active", value=2400.0, unit="kW", ts_ms=ts_ms)]


def stored(gw: Gateway) -> list[Point]:
    return [p for _, _, payload in gw.queue.peek(10**9) for p in decode_batch(payload).points]


def counter_intervals(gw: Gateway) -> list[Interval | None]:
    return [p.interval for p in stored(gw) if p.quantity == "energy_active_import"]


def test_counter_readings_carry_their_interval_and_baselines_survive_a_restart(tmp_path: Path) -> None:
    clock = ManualClock(START)
    gw = gateway(tmp_path, clock)
    values = [1000.0, 1010.0, 9e6, 1030.0]  # the third is a spike the plausibility bound rejects
    for i, v in enumerate(values):
        gw.enqueue(reading("incoming", v, T0 + i * STEP))
        clock.advance(STEP / 1000)
    assert counter_intervals(gw) == [
        None,  # the first reading: no baseline at the edge
        Interval(start_ms=T0, amount=10.0),
        Interval(start_ms=T0 + 2 * STEP, amount=0.0),  # checked, closes no interval
        Interval(start_ms=T0 + STEP, amount=20.0),  # across the rejected spike
    ]
    assert all(p.interval is None for p in stored(gw) if p.quantity == "power_active")
    assert gw.queue.counter_baselines() == {"incoming": (1030.0, T0 + 3 * STEP)}
    gw.queue.close()

    restarted = gateway(tmp_path, clock)
    restarted.enqueue(reading("incoming", 1045.0, T0 + 4 * STEP))
    assert counter_intervals(restarted)[-1] == Interval(start_ms=T0 + 3 * STEP, amount=15.0)
    restarted.queue.close()


def test_baselines_are_committed_with_the_batch_and_undone_when_it_is_lost(tmp_path: Path) -> None:
    clock = ManualClock(START)
    gw = gateway(tmp_path, clock)
    gw.enqueue(reading("raw_mill", 500.0, T0))
    gw.enqueue(reading("raw_mill", 505.0, T0 + STEP))
    pages = int(gw.queue.execute_pragma("PRAGMA page_count")[0][0])
    gw.queue.execute_pragma(f"PRAGMA max_page_count = {pages}")  # the disk fills up
    last_stored = (505.0, T0 + STEP)
    lost = 0
    i = 2
    while lost < 3 and i < 2000:
        value, ts = 500.0 + 5 * i, T0 + i * STEP
        if gw.enqueue(reading("raw_mill", value, ts)):
            assert lost == 0  # the disk stays full once it is
            last_stored = (value, ts)
        else:
            lost += 1
        i += 1
    assert lost == 3
    # the file holds the baseline of the last stored batch, never one of a batch that was not written
    db = sqlite3.connect(tmp_path / "outbox.sqlite")
    assert db.execute("SELECT meter, value, ts_ms FROM counters").fetchall() == [("raw_mill", *last_stored)]
    db.close()
    gw.queue.execute_pragma("PRAGMA max_page_count = 1000000")
    gw.enqueue(reading("raw_mill", 500.0 + 5 * i, T0 + i * STEP))
    # the next stored reading books everything since the last stored one: nothing lost with the lost batches
    assert counter_intervals(gw)[-1] == Interval(start_ms=last_stored[1], amount=500.0 + 5 * i - last_stored[0])
    gw.queue.close()


class _Capture:
    """The store writes of several processors on one SQLite store."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.store = SqliteStore(SqliteStoreConfig(type="sqlite", path=tmp_path / f"{name}.sqlite"))

    def energy(self, meter: str) -> dict[int, float]:
        return {ts: v for _, ts, v in self.store.query("energy", "consumed", tags={"meter": meter})}

    def indicators(self) -> list[Any]:
        return self.store.query("indicator", "energy_kgce")


def test_any_split_of_the_batches_over_processors_books_the_same_energy(tmp_path: Path) -> None:
    clock = ManualClock(START)
    config = plant()
    gw = gateway(tmp_path, clock, config)
    counters = {"incoming": 20_000.0, "kiln_drive": 7_000.0}
    for i in range(40):
        points: list[Point] = []
        for meter in counters:
            counters[meter] += 9.0 + (i % 7)
            if i == 20 and meter == "kiln_drive":
                points += reading(meter, 0.0, T0 + i * STEP)  # a glitch to 0: rejected at the edge
                continue
            points += reading(meter, counters[meter], T0 + i * STEP)
        gw.enqueue(points)
        clock.advance(STEP / 1000)
    payloads = [payload for _, _, payload in gw.queue.peek(10**9)]
    gw.queue.close()
    topic = readings_topic(config.enterprise.uscc, config.gateway.id)

    one = _Capture(tmp_path, "one")
    single = Processor(config, one.store)
    shared = _Capture(tmp_path, "shared")
    group = [Processor(config, shared.store, live_indicators=False) for _ in range(3)]
    for payload in payloads:
        single.handle(Message(topic, payload))
    # round robin, and every fifth batch delivered a second time to another processor (a redelivery)
    for k, (payload, proc) in enumerate(zip(payloads, itertools.cycle(group), strict=False)):
        proc.handle(Message(topic, payload))
        if k % 5 == 0:
            group[(k + 1) % 3].handle(Message(topic, payload))
    for proc in (single, *group):
        proc.flush()

    for meter in counters:
        readings = sorted((p.ts_ms, p.value) for payload in payloads for p in decode_batch(payload).points
                          if p.meter == meter and p.quantity == "energy_active_import" and p.value)
        expected = readings[-1][1] - readings[0][1]
        assert shared.energy(meter) == one.energy(meter)
        assert abs(sum(shared.energy(meter).values()) - expected) < 1e-6
    assert sum(p.edge_intervals for p in group) > 0
    assert one.indicators()  # one processor sees everything: its live hour/day indicator rows are whole
    assert shared.indicators() == []  # a share of the readings: no partial indicator rows
    one.store.close()
    shared.store.close()


def _edge(meter: str, value: float, ts_ms: int, start_ms: int, amount: float, flag: str = "ok") -> Point:
    return Point(meter=meter, quantity="energy_active_import", value=value, unit="kWh", ts_ms=ts_ms,
                 interval=Interval(start_ms=start_ms, amount=amount, flag=flag))  # type: ignore[arg-type]


def test_the_centre_re_checks_edge_intervals_and_sets_implausible_ones_aside(tmp_path: Path) -> None:
    from energymon.schema import Batch

    config = plant()  # incoming: max_rate_per_hour 40,000 kWh
    capture = _Capture(tmp_path, "checked")
    registry = CollectorRegistry()
    proc = Processor(config, capture.store, metrics=PipelineMetrics(registry))
    hour = 3_600_000
    batches = [
        # five batches that claim 5,000,000 kWh an hour each on a 40,000 kWh/h meter: 614,500 tce in all
        [_edge("incoming", 20_000.0 + k, T0 + (k + 1) * hour, T0 + k * hour, 5_000_000.0)] for k in range(5)
    ]
    batches.append([_edge("incoming", 50_000.0, T0 + 6 * hour, T0 + 5 * hour, 39_000.0, "replaced")])  # within
    batches.append([_edge("incoming", 50_010.0, T0 + 6 * hour + STEP, T0 + 6 * hour, 99.0)])  # disagrees: 10
    batches.append([_edge("incoming", 50_020.0, T0 + 6 * hour + 2 * STEP, T0 + 6 * hour + STEP, 10.0)])
    batches.append([_edge("incoming", 50_030.0, T0 + 7 * hour, T0 + 6 * hour + 2 * STEP, 10.0, "rollover")])
    for seq, points in enumerate(batches):
        proc.handle_batch(Batch(enterprise=config.enterprise.uscc, gateway=config.gateway.id, seq=seq,
                                sent_ms=T0, points=points))
    booked = capture.energy("incoming")
    assert sorted(booked.values()) == [10.0, 39_000.0]
    assert proc.intervals_set_aside == 7
    reasons = [s.reason for s in proc.set_aside_intervals]
    assert all("max_rate_per_hour 40000" in r for r in reasons[:5])
    assert "disagrees with the readings" in reasons[5]
    assert "disagrees with the readings" in reasons[6]  # no wrap between 50,020 and 50,030
    dropped = registry.get_sample_value("energymon_dropped_total",
                                        {"stage": "processor", "reason": "implausible_interval"})
    assert dropped == 7
    # the readings themselves are kept: a report recomputes the period from them
    assert len(capture.store.query("reading", "value", tags={"meter": "incoming",
                                                              "quantity": "energy_active_import"})) == 9
    capture.store.close()
