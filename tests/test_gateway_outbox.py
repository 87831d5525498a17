"""Gateway outbox: bounds by bytes and age, the three overflow policies, quarantine of clock-skewed readings,
fill gauges and warnings, a corrupt file and a full disk — all on real SQLite files."""

from __future__ import annotations

import logging
import random
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from energymon.clock import ManualClock
from energymon.config import PlantConfig, parse_plant
from energymon.demo import example_plant_path
from energymon.gateway.gateway import Gateway
from energymon.gateway.outbox import Outbox
from energymon.gateway.queue import OutboundQueue, OutboxCorruptError, OutboxDiskFullError
from energymon.metrics import PipelineMetrics
from energymon.schema import Point, Quality, decode_batch

T0 = int(datetime(2025, 3, 3, tzinfo=UTC).timestamp() * 1000)
METERS = ("incoming", "raw_mill", "kiln_drive", "coal_mill")
GAUGES = (("power_active", "kW"), ("voltage_l1", "V"), ("current_l1", "A"), ("power_factor", "pf"))


def plant_with(**gateway: Any) -> PlantConfig:
    """The example cement plant with gateway settings replaced."""
    data = yaml.safe_load(example_plant_path().read_text(encoding="utf-8"))
    data["gateway"].update(gateway)
    return parse_plant(yaml.safe_dump(data, allow_unicode=True), "test-plant.yaml")


def poll(ts_ms: int, rnd: random.Random, meters: tuple[str, ...] = METERS) -> list[Point]:
    """One poll of the demo power meters: a counter and four gauges each (noisy values, like real ones)."""
    points: list[Point] = []
    for i, meter in enumerate(meters):
        energy = 1_000_000 + i * 10_000 + (ts_ms - T0) / 3_600_000 * 5000
        points.append(Point(meter=meter, quantity="energy_active_import", value=round(energy, 1), unit="kWh",
                            ts_ms=ts_ms))
        for quantity, unit in GAUGES:
            points.append(Point(meter=meter, quantity=quantity, value=round(rnd.uniform(0, 1000), 3), unit=unit,
                                ts_ms=ts_ms))
    return points


def value(metrics: PipelineMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def dropped(metrics: PipelineMetrics, reason: str) -> float:
    return value(metrics, "energymon_dropped_total", stage="gateway", reason=reason)


def make_outbox(tmp_path: Path, **gateway: Any) -> tuple[Outbox, PipelineMetrics]:
    metrics = PipelineMetrics(CollectorRegistry())
    plant = plant_with(**gateway)
    queue = OutboundQueue(tmp_path / "outbox.sqlite")
    return Outbox(queue, plant, metrics=metrics, stage=metrics.stage("gateway")), metrics


def stored_points(queue: OutboundQueue) -> list[Point]:
    return [p for _, _, payload in queue.peek(10**9) for p in decode_batch(payload).points]


# ---------------------------------------------------------------------------------------------- sizing


def test_default_bound_holds_six_months_of_15_minute_data_for_1000_items(tmp_path: Path) -> None:
    """Measure bytes per point stored with 1,000-item batches (one 15-minute poll each) and check the default."""
    plant = plant_with()
    metrics = PipelineMetrics(CollectorRegistry())
    queue = OutboundQueue(tmp_path / "outbox.sqlite")
    outbox = Outbox(queue, plant, metrics=metrics, stage=metrics.stage("gateway"))
    rnd = random.Random(7)
    meters = tuple(f"feeder_{i:03d}" for i in range(200))  # 200 meters × 5 quantities = 1,000 items
    batches = 120
    for n in range(batches):
        outbox.store(poll(T0 + n * 900_000, rnd, meters), T0 + n * 900_000)
    per_point = queue.stored_bytes() / (batches * 1000)
    assert queue.file_bytes() < 1.1 * queue.stored_bytes()  # SQLite's page slack is small at this batch size
    six_months = 1000 * 96 * 183  # 17.6 M points
    assert 6 < per_point < 12, per_point  # measured 9.4 bytes a point (docs/ARCHITECTURE.md, section Gateway)
    assert six_months * per_point < plant.gateway.outbox_max_bytes
    assert plant.gateway.outbox_max_bytes < 2 * six_months * per_point  # headroom for smaller batches only


# ---------------------------------------------------------------------------------------------- overflow


def test_drop_oldest_keeps_the_newest_batches_within_the_bound(tmp_path: Path) -> None:
    outbox, metrics = make_outbox(tmp_path, outbox_max_bytes=65_536, overflow_policy="drop_oldest")
    rnd = random.Random(1)
    written = 0
    seqs: list[int] = []
    for n in range(400):
        pts = poll(T0 + n * 15_000, rnd)
        written += len(pts)
        seqs += outbox.store(pts, T0 + n * 15_000)
    queue = outbox.queue
    assert queue.stored_bytes() <= 65_536
    left = [s for s, _, _ in queue.peek(10**6)]
    assert left == seqs[-len(left) :]  # a contiguous tail: the oldest went first
    assert 10 < len(left) < 400
    batches, points = queue.depth()
    assert batches == len(left) and points == len(stored_points(queue))
    assert dropped(metrics, "overflow") == written - points  # every evicted point is counted
    assert dropped(metrics, "reduced_fidelity") == 0


def test_reduce_fidelity_thins_gauges_of_every_second_oldest_batch_and_keeps_counters(tmp_path: Path) -> None:
    outbox, metrics = make_outbox(tmp_path, outbox_max_bytes=131_072, overflow_policy="reduce_fidelity")
    rnd = random.Random(2)
    written = 0
    n = 0
    while dropped(metrics, "reduced_fidelity") == 0:
        pts = poll(T0 + n * 15_000, rnd)
        written += len(pts)
        outbox.store(pts, T0 + n * 15_000)
        n += 1
    queue = outbox.queue
    batches = [decode_batch(p) for _, _, p in queue.peek(10**6)]
    assert batches[0].seq == 1  # nothing dropped yet: thinning came first
    kinds = ["counters" if all(p.quantity == "energy_active_import" for p in b.points) else "full" for b in batches]
    last = max(i for i, k in enumerate(kinds) if k == "counters")
    assert kinds[: last + 1] == ["full", "counters"] * ((last + 1) // 2)  # every second batch, oldest first
    assert all(k == "full" for k in kinds[last + 1 :])  # the newer ones keep full fidelity
    for b in batches:  # every counter reading of every batch is still there
        assert sum(p.quantity == "energy_active_import" for p in b.points) == len(METERS)
    assert dropped(metrics, "reduced_fidelity") == written - queue.depth()[1]
    assert queue.stored_bytes() <= 131_072

    # keep writing: once every batch is thinned, the oldest are dropped
    while dropped(metrics, "overflow") == 0:
        pts = poll(T0 + n * 15_000, rnd)
        written += len(pts)
        outbox.store(pts, T0 + n * 15_000)
        n += 1
    assert queue.peek(1)[0][0] > 1
    lost = dropped(metrics, "overflow") + dropped(metrics, "reduced_fidelity")
    assert lost == written - queue.depth()[1]
    assert queue.stored_bytes() <= 131_072


def test_refuse_new_keeps_the_backlog_and_counts_refused_points(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox, metrics = make_outbox(tmp_path, outbox_max_bytes=65_536, overflow_policy="refuse_new")
    rnd = random.Random(3)
    refused_from = None
    with caplog.at_level(logging.INFO, logger="energymon.gateway.outbox"):
        for n in range(300):
            if not outbox.store(poll(T0 + n * 15_000, rnd), T0 + n * 15_000) and refused_from is None:
                refused_from = n
        assert refused_from is not None
        queue = outbox.queue
        assert queue.peek(1)[0][0] == 1  # the backlog is untouched
        assert dropped(metrics, "refused") == (300 - refused_from) * 20
        assert dropped(metrics, "overflow") == 0
        assert sum("not stored until" in r.message for r in caplog.records) == 1  # once per episode
        # the uplink drains: new points are stored again
        queue.remove([s for s, _, _ in queue.peek(refused_from // 2)])
        assert outbox.store(poll(T0 + 10**7, rnd), T0 + 10**7)
        assert any("has room again" in r.message for r in caplog.records)


def test_batches_older_than_max_age_are_dropped(tmp_path: Path) -> None:
    outbox, metrics = make_outbox(tmp_path, outbox_max_age_days=1)
    rnd = random.Random(4)
    for n in range(10):
        outbox.store(poll(T0 + n * 3_600_000, rnd), T0 + n * 3_600_000)  # hourly, for 10 h
    day = 86_400_000
    outbox.enforce(T0 + day + 4 * 3_600_000 + 1)  # batches of hours 0..4 are now older than a day
    assert [s for s, _, _ in outbox.queue.peek(100)] == [6, 7, 8, 9, 10]
    assert dropped(metrics, "max_age") == 5 * 20


def test_fill_gauges_and_one_warning_at_90_and_one_notice_under_80_percent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox, metrics = make_outbox(tmp_path, outbox_max_bytes=262_144, overflow_policy="drop_oldest")
    rnd = random.Random(5)
    queue = outbox.queue
    with caplog.at_level(logging.INFO, logger="energymon.gateway.outbox"):
        n = 0
        while queue.stored_bytes() < 0.97 * 262_144:
            outbox.store(poll(T0 + n * 15_000, rnd), T0 + n * 15_000)
            n += 1
        for _ in range(5):  # stays high: no second warning
            outbox.store(poll(T0 + n * 15_000, rnd), T0 + n * 15_000)
            n += 1
        now = T0 + n * 15_000
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "% full" in r.message]
        assert len(warnings) == 1
        gw = {"gateway": "gw-line1"}
        assert value(metrics, "energymon_outbox_fill_ratio", **gw) >= 0.9
        assert value(metrics, "energymon_outbox_batches", **gw) == queue.depth()[0]
        assert value(metrics, "energymon_outbox_bytes", **gw) == queue.stored_bytes()
        assert queue.peek(1)[0][0] == 1  # nothing evicted yet: the oldest batch is the first one
        assert value(metrics, "energymon_outbox_oldest_age_seconds", **gw) == (now - 15_000 - T0) / 1000
        # drain to under 80 %: one notice
        while queue.stored_bytes() >= 0.75 * 262_144:
            queue.remove([s for s, _, _ in queue.peek(5)])
        outbox.refresh(now)
        outbox.refresh(now)
        back = [r for r in caplog.records if "back under 80" in r.message]
        assert len(back) == 1 and back[0].levelno == logging.INFO
        assert value(metrics, "energymon_outbox_fill_ratio", **gw) < 0.8


# ---------------------------------------------------------------------------------------------- clock skew


def test_readings_far_from_the_gateway_clock_are_quarantined_and_reported_once_per_meter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox, metrics = make_outbox(tmp_path, time_tolerance_secs=300)
    now = T0 + 10 * 86_400_000
    rnd = random.Random(6)
    with caplog.at_level(logging.INFO, logger="energymon.gateway.outbox"):
        for k in range(3):
            good = poll(now + k * 15_000, rnd, ("incoming",))
            skewed = poll(now + k * 15_000 - 3 * 3_600_000, rnd, ("raw_mill",))  # raw_mill's clock is 3 h behind
            ahead = poll(now + k * 15_000 + 301_000, rnd, ("kiln_drive",))  # just past the tolerance
            edge = poll(now + k * 15_000 + 299_000, rnd, ("coal_mill",))  # just within it
            outbox.append(good + skewed + ahead + edge, now + k * 15_000)
        sent = stored_points(outbox.queue)
        assert {p.meter for p in sent} == {"incoming", "coal_mill"}  # skewed readings are never sent as if good
        rows = outbox.queue.quarantined(1000)
        assert len(rows) == 3 * 2 * 5 and {r[1] for r in rows} == {"raw_mill", "kiln_drive"}
        assert all(abs(r[4]) > 300_000 for r in rows)
        assert Point.model_validate_json(rows[0][5]).meter in {"raw_mill", "kiln_drive"}
        assert dropped(metrics, "clock_skew") == 30
        warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 2 and any("raw_mill" in m and "-10800 s" in m for m in warned)
        # raw_mill's clock is fixed: one notice, and its readings flow again
        outbox.append(poll(now + 60_000, rnd, ("raw_mill",)), now + 60_000)
        assert sum("raw_mill" in r.message and "back within" in r.message for r in caplog.records) == 1
        assert "raw_mill" in {p.meter for p in stored_points(outbox.queue)}


# ---------------------------------------------------------------------------------------------- corruption


def corrupt_middle(path: Path) -> None:
    """Overwrite three pages in the middle of a closed database with random bytes."""
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.seek(size // 2 - (size // 2) % 4096)
        fh.write(random.Random(11).randbytes(3 * 4096))


def filled_outbox(path: Path) -> int:
    queue = OutboundQueue(path)
    rnd = random.Random(8)

    def payload(seq: int) -> bytes:
        return rnd.randbytes(1500)

    for n in range(300):
        queue.put(payload, T0 + n, 1)
    last = queue.next_seq() - 1
    queue.close()  # checkpoints the WAL into the file
    return last


def test_corrupt_outbox_stops_with_an_error_naming_the_file_and_the_recovery(tmp_path: Path) -> None:
    path = tmp_path / "outbox-gw-line1.sqlite"
    filled_outbox(path)
    corrupt_middle(path)
    before = path.read_bytes()
    with pytest.raises(OutboxCorruptError) as err:
        OutboundQueue(path)
    message = str(err.value)
    assert str(path) in message and "outbox_on_corrupt: move_aside" in message and ".recover" in message
    assert path.read_bytes() == before  # nothing touched
    assert not list(tmp_path.glob("*.corrupt-*"))
    # the gateway refuses to start the same way (default policy: stop)
    from test_gateway import RecordingTransport

    with pytest.raises(OutboxCorruptError):
        Gateway(plant_with(), RecordingTransport(), [], queue_path=path)


def test_corrupt_outbox_is_moved_aside_when_the_operator_says_so(tmp_path: Path) -> None:
    path = tmp_path / "outbox-gw-line1.sqlite"
    last = filled_outbox(path)
    corrupt_middle(path)
    before = path.read_bytes()
    from test_gateway import RecordingTransport

    gw = Gateway(plant_with(outbox_on_corrupt="move_aside"), RecordingTransport(), [], queue_path=path,
                 clock=ManualClock(datetime.now(UTC)))
    moved = list(tmp_path.glob("outbox-gw-line1.sqlite.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == before  # kept, byte for byte
    assert gw.queue.moved_aside == moved[0]
    assert gw.queue.depth() == (0, 0)
    seqs = gw.enqueue(poll(gw.clock.now_ms(), random.Random(1)))
    assert seqs[0] > last  # the new file's numbers cannot collide with the old file's
    gw.queue.close()


# ---------------------------------------------------------------------------------------------- disk full


def test_put_on_a_full_disk_raises_a_clear_error_and_the_queue_stays_usable(tmp_path: Path) -> None:
    queue = OutboundQueue(tmp_path / "outbox.sqlite")
    pages = int(queue.execute_pragma("PRAGMA page_count")[0][0])
    queue.execute_pragma(f"PRAGMA max_page_count = {pages + 8}")  # SQLite now returns SQLITE_FULL for real
    rnd = random.Random(9)
    with pytest.raises(OutboxDiskFullError) as err:
        for _ in range(100):
            queue.put(lambda seq: rnd.randbytes(3000), T0, 1)
    assert "outbox.sqlite" in str(err.value) and "SQLITE_FULL" in str(err.value)
    batches = queue.depth()[0]
    assert [s for s, _, _ in queue.peek(100)] == list(range(1, batches + 1))  # the failed put left nothing
    queue.execute_pragma("PRAGMA max_page_count = 1000000")
    assert queue.put(lambda seq: b"x", T0, 1) == batches + 1
    queue.close()


class _Collector:
    name = "test"


def test_gateway_counts_points_lost_to_a_full_disk_and_goes_on_when_space_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from test_gateway import RecordingTransport

    metrics = PipelineMetrics(CollectorRegistry())
    clock = ManualClock(datetime(2025, 3, 3, tzinfo=UTC))
    gw = Gateway(plant_with(), RecordingTransport(), [], queue_path=tmp_path / "outbox.sqlite", clock=clock,
                 metrics=metrics)
    rnd = random.Random(10)
    pages = int(gw.queue.execute_pragma("PRAGMA page_count")[0][0])
    gw.queue.execute_pragma(f"PRAGMA max_page_count = {pages + 2}")
    with caplog.at_level(logging.INFO, logger="energymon.gateway"):
        lost = 0
        for _ in range(20):
            clock.advance(15)
            pts = poll(clock.now_ms(), rnd)
            if not gw.enqueue(pts):
                lost += len(pts)
        assert lost > 0 and dropped(metrics, "disk_full") == lost
        errors = [r for r in caplog.records if r.levelno == logging.ERROR and "SQLITE_FULL" in r.message]
        assert len(errors) == 1  # once per episode; the counter has every point
        assert value(metrics, "energymon_errors_total", stage="gateway", error_type="OutboxDiskFullError") > 0
        gw.queue.execute_pragma("PRAGMA max_page_count = 1000000")
        clock.advance(15)
        assert gw.enqueue(poll(clock.now_ms(), rnd))
        assert any("writable again" in r.message for r in caplog.records)
    gw.queue.close()
    # what was stored is intact
    queue = OutboundQueue(tmp_path / "outbox.sqlite")
    assert all(p.quality is Quality.GOOD for p in stored_points(queue))
    queue.close()


def test_an_outbox_from_before_the_bounds_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, created_ms INTEGER NOT NULL,"
               " points INTEGER NOT NULL, payload BLOB NOT NULL)")
    db.execute("INSERT INTO outbox (created_ms, points, payload) VALUES (1, 3, x'7b7d')")
    db.commit()
    db.close()
    queue = OutboundQueue(path)
    assert queue.peek(10) == [(1, 3, b"{}")] and queue.depth() == (1, 3)
    assert queue.put(lambda s: b"{}", 2, 1, 0) == 2
    queue.close()
