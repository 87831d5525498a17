"""The processor's scheduled recompute: thinned readings give the raw readings' totals, runs are incremental,
late data is recomputed, and the processor service feeds the indicator and budget alert rules by itself."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry
from test_webhook import HookServer

from energymon.clock import ManualClock
from energymon.config import PlantConfig, SqliteStoreConfig, load_plant, parse_plant
from energymon.demo import example_plant_path
from energymon.interfaces import Row, series_key
from energymon.metrics import PipelineMetrics
from energymon.processors.recompute import MeterReadings
from energymon.processors.report import ReportPeriod, report_rows, run_report
from energymon.processors.schedule import SLOT_MS, CurrentPeriods, thin
from energymon.processors.store import SqliteStore
from energymon.runtime import ProcessorService
from energymon.transport import InProcTransport

SH = ZoneInfo("Asia/Shanghai")
USCC = "91530102MA6K7LQ8RH"
#: consumption per hour of each counter of the cement example
RATES = {"incoming": 3000.0, "raw_mill": 800.0, "kiln_drive": 900.0, "coal_mill": 300.0, "cement_mill": 900.0,
         "coal_feeder": 5.0, "clinker_scale": 40.0, "gas_main": 50.0}


def ms(month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(2026, month, day, hour, minute, tzinfo=SH).timestamp() * 1000)


@pytest.fixture(scope="module")
def plant() -> PlantConfig:
    return load_plant(example_plant_path())


def minute_readings(start_ms: int, end_ms: int, seed: int = 1, scale: float = 1.0) -> dict[str, MeterReadings]:
    """Counter readings every minute with uneven rates (so thinning has something to lose if it were wrong)."""
    rng = np.random.default_rng(seed)
    ts = np.arange(start_ms, end_ms, 60_000, dtype=np.int64) + 7_000  # not on slot boundaries
    out = {}
    for meter, rate in RATES.items():
        steps = rate * scale / 60 * rng.uniform(0.2, 1.8, ts.size)
        out[meter] = MeterReadings(ts, 1000.0 + np.cumsum(steps))
    return out


def rows_of(plant: PlantConfig, readings: dict[str, MeterReadings]) -> list[Row]:
    rows: list[Row] = []
    for meter_id, r in readings.items():
        meter = plant.meter(meter_id)
        assert meter.counter is not None
        unit = plant.quantities(meter)[meter.counter][0]
        key = series_key("reading", enterprise=USCC, gateway="gw", meter=meter_id, quantity=meter.counter, unit=unit)
        rows += [(key, {"value": float(v)}, int(t)) for t, v in zip(r.ts, r.value, strict=True)]
    return rows


def product_values(rows: list[Row], period: str) -> dict[str, dict[str, float]]:
    return {dict(k.tags)["product"]: f for k, f, _ in rows
            if k.measurement == "indicator" and dict(k.tags)["period"] == period}


def test_thin_keeps_the_first_and_last_reading_of_each_slot() -> None:
    ts = np.array([0, 10, 899_999, 900_000, 900_500, 2_700_001], dtype=np.int64)
    r = thin(MeterReadings(ts, np.arange(6, dtype=np.float64)), SLOT_MS)
    assert r.ts.tolist() == [0, 899_999, 900_000, 900_500, 2_700_001]
    assert r.value.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0]


def test_thinned_readings_give_the_raw_readings_totals(plant: PlantConfig) -> None:
    raw = minute_readings(ms(3, 1) - 86_400_000, ms(3, 4))
    thinned = {m: thin(r) for m, r in raw.items()}
    assert sum(r.ts.size for r in thinned.values()) < sum(r.ts.size for r in raw.values()) / 6
    period = ReportPeriod.parse("range", "2026-03-01", "2026-03-03")
    rc_raw, _ = run_report(plant, period, raw)
    rc_thin, _ = run_report(plant, period, thinned)
    for frame in ("products", "enterprise"):
        a, b = getattr(rc_raw, frame), getattr(rc_thin, frame)
        for period_kind in ("15min", "hour", "day", "month"):
            sa, sb = a[a["period"] == period_kind], b[b["period"] == period_kind]
            assert len(sa) == len(sb) > 0
            np.testing.assert_allclose(sb["kgce"].to_numpy(), sa["kgce"].to_numpy(), rtol=1e-9, atol=1e-6)
    pa, pb = rc_raw.products, rc_thin.products
    day_a = pa[(pa["period"] == "day") & pa["value"].notna()]["value"].to_numpy()
    day_b = pb[(pb["period"] == "day") & pb["value"].notna()]["value"].to_numpy()
    np.testing.assert_allclose(day_b, day_a, rtol=1e-9)


def test_runs_are_incremental_and_match_a_report(plant: PlantConfig, tmp_path: Path) -> None:
    store = SqliteStore(SqliteStoreConfig(type="sqlite", path=tmp_path / "store.sqlite"))
    readings = minute_readings(ms(3, 1) - 86_400_000, ms(3, 3, 12))
    store.write(rows_of(plant, readings))
    clock = ManualClock(datetime(2026, 3, 3, 12, 0, tzinfo=SH))
    registry = CollectorRegistry()
    seen: list[list[Row]] = []
    sched = CurrentPeriods(plant, store, clock=clock, metrics=PipelineMetrics(registry),
                           cache_path=tmp_path / "recompute.sqlite", on_rows=[lambda rows: seen.append(list(rows))])

    def read_so_far() -> float:
        return registry.get_sample_value("energymon_received_total", {"stage": "recompute"}) or 0.0

    rows = sched.run_once()
    assert seen == [rows]
    first_read = read_so_far()
    assert first_read == sum(r.ts.size for r in readings.values())
    # the same figures as `energymon report` over the month, from the raw readings
    rc, _ = run_report(plant, ReportPeriod.parse("month", "2026-03"), readings)
    want = product_values([r for r in report_rows(rc)], "month")
    got = product_values(rows, "month")
    assert got.keys() == want.keys() and got
    for product, fields in want.items():
        assert got[product]["value"] == pytest.approx(fields["value"], rel=1e-9)
        assert got[product]["energy_kgce"] == pytest.approx(fields["energy_kgce"], rel=1e-9)
    assert {k.measurement for k, _, _ in rows} >= {"indicator", "acct_product", "acct_enterprise"}
    # reading counts only for the closed day (from the raw readings), never from the thinned ones
    assert {ts for k, _, ts in rows if k.measurement == "acct_quality_day"} == {ms(3, 2)}
    # stored, and stored again in place: the store holds one month row per product
    stored = store.query("indicator", "value", tags={"period": "month"})
    assert len(stored) == len(want)

    # 30 minutes later only the new readings and the re-read hour are read
    more = minute_readings(ms(3, 3, 12), ms(3, 3, 12, 30), seed=2)
    more = {m: MeterReadings(r.ts, r.value - r.value[0] + readings[m].value[-1] + 1.0) for m, r in more.items()}
    store.write(rows_of(plant, more))
    clock.advance(30 * 60)
    sched.run_once()
    assert read_so_far() - first_read == pytest.approx(len(RATES) * (60 + 30), abs=len(RATES) * 2)
    store.close()
    sched.close()


def test_late_readings_are_recomputed(plant: PlantConfig, tmp_path: Path) -> None:
    store = SqliteStore(SqliteStoreConfig(type="sqlite", path=tmp_path / "store.sqlite"))
    early = minute_readings(ms(3, 1) - 86_400_000, ms(3, 2))
    store.write(rows_of(plant, early))
    clock = ManualClock(datetime(2026, 3, 3, 12, 0, tzinfo=SH))
    sched = CurrentPeriods(plant, store, clock=clock, metrics=PipelineMetrics(CollectorRegistry()),
                           cache_path=tmp_path / "recompute.sqlite")
    before = product_values(sched.run_once(), "month")
    # a gateway drains a backlog: 2 March arrives a day late
    late = minute_readings(ms(3, 2), ms(3, 3, 12), seed=3, scale=1.5)
    late = {m: MeterReadings(r.ts, r.value - r.value[0] + early[m].value[-1] + 0.5) for m, r in late.items()}
    store.write(rows_of(plant, late))
    clock.advance(60)
    sched.note_points([{"meter": m, "quantity": plant.meter(m).counter, "ts_ms": int(r.ts[0])}
                       for m, r in late.items()])
    after = product_values(sched.run_once(), "month")
    full = {m: MeterReadings(np.concatenate([early[m].ts, late[m].ts]), np.concatenate([early[m].value,
                                                                                         late[m].value]))
            for m in early}
    rc, _ = run_report(plant, ReportPeriod.parse("month", "2026-03"), full)
    want = product_values(report_rows(rc), "month")
    for product, fields in want.items():
        assert after[product]["energy_kgce"] == pytest.approx(fields["energy_kgce"], rel=1e-9)
        assert after[product]["energy_kgce"] > before[product]["energy_kgce"] * 1.5
    store.close()
    sched.close()


def plant_with_rules(hook_url: str, store: Path, bus: str) -> PlantConfig:
    data: dict[str, Any] = yaml.safe_load(example_plant_path().read_text(encoding="utf-8"))
    data["uplink"] = {"url": f"inproc://{bus}"}
    data["processor"] = {"store": {"type": "sqlite", "path": str(store)}, "recompute_interval_s": 1}
    data["alerts"] = {
        "rules": [{"kind": "indicator", "id": "clinker_month", "condition": "below_baseline", "period": "month",
                   "product": "clinker"}],
        "notifiers": [{"type": "webhook", "id": "hook", "url": hook_url, "max_retries": 3}],
    }
    return parse_plant(yaml.safe_dump(data, allow_unicode=True), "plant.yaml")


def test_the_processor_service_feeds_the_indicator_rule_on_its_own(tmp_path: Path) -> None:
    """Readings worse than 基准 in the store: the service's schedule recomputes the month and the rule fires."""
    hook = HookServer().start()
    bus = f"sched-{uuid.uuid4().hex}"
    plant = plant_with_rules(hook.url, tmp_path / "store.sqlite", bus)
    store = SqliteStore(SqliteStoreConfig(type="sqlite", path=tmp_path / "store.sqlite"))
    readings = minute_readings(ms(3, 1) - 86_400_000, ms(3, 3, 12))
    readings["coal_feeder"] = MeterReadings(readings["coal_feeder"].ts, 1000 + 4 * (readings["coal_feeder"].value
                                                                                    - 1000))
    store.write(rows_of(plant, readings))
    store.close()
    rc, _ = run_report(plant, ReportPeriod.parse("month", "2026-03"), readings)
    month = product_values(report_rows(rc), "month")["clinker"]
    assert month["value"] > month["baseline"]  # the data is worse than 基准

    async def main() -> None:
        svc = ProcessorService(plant, clock=ManualClock(datetime(2026, 3, 3, 12, 0, tzinfo=SH)),
                               metrics=PipelineMetrics(CollectorRegistry()), data_dir=tmp_path / "proc",
                               transport=InProcTransport(bus, client_id="proc"))
        await svc.start()
        try:
            await asyncio.to_thread(hook.wait_for, 1, 60.0)
        finally:
            await svc.stop()

    try:
        asyncio.run(main())
        body = json.loads(hook.received[0].body)
        assert body["id"] == "clinker_month:clinker" and body["state"] == "firing"
    finally:
        hook.stop()


def test_without_a_live_path_the_schedule_writes_hour_and_day_indicators(plant: PlantConfig, tmp_path: Path) -> None:
    """Processors sharing a subscription write no live indicator rows; the schedule writes them for the window."""
    store = SqliteStore(SqliteStoreConfig(type="sqlite", path=tmp_path / "store.sqlite"))
    readings = minute_readings(ms(3, 1) - 86_400_000, ms(3, 3, 12))
    store.write(rows_of(plant, readings))
    clock = ManualClock(datetime(2026, 3, 3, 12, 0, tzinfo=SH))
    sched = CurrentPeriods(plant, store, clock=clock, metrics=PipelineMetrics(CollectorRegistry()),
                           cache_path=tmp_path / "recompute.sqlite", live_indicators=False)
    rows = sched.run_once()
    days = sorted(ts for k, f, ts in rows if k.measurement == "indicator" and dict(k.tags)["period"] == "day"
                  and dict(k.tags)["product"] == "clinker")
    hours = [ts for k, f, ts in rows if k.measurement == "indicator" and dict(k.tags)["period"] == "hour"
             and dict(k.tags)["product"] == "clinker"]
    assert days == [ms(3, 1), ms(3, 2), ms(3, 3)]  # this month's days so far, none before the month
    assert min(hours) == ms(3, 1) and max(hours) == ms(3, 3, 11)  # up to the hour of the last reading
    rc, _ = run_report(plant, ReportPeriod.parse("day", "2026-03-02"), readings)
    want = rc.products[(rc.products["period"] == "day") & (rc.products["product"] == "clinker")
                       & (rc.products["start"] == ms(3, 2))]["value"].iloc[0]
    got = next(f["value"] for k, f, ts in rows if k.measurement == "indicator" and ts == ms(3, 2)
               and dict(k.tags)["period"] == "day" and dict(k.tags)["product"] == "clinker")
    assert got == pytest.approx(want, rel=1e-9)
    store.close()
    sched.close()


def test_a_closed_day_gets_its_reading_counts_from_the_raw_readings(plant: PlantConfig, tmp_path: Path) -> None:
    store = SqliteStore(SqliteStoreConfig(type="sqlite", path=tmp_path / "store.sqlite"))
    readings = minute_readings(ms(3, 1) - 86_400_000, ms(3, 3, 12))
    store.write(rows_of(plant, readings))
    clock = ManualClock(datetime(2026, 3, 3, 12, 0, tzinfo=SH))
    sched = CurrentPeriods(plant, store, clock=clock, metrics=PipelineMetrics(CollectorRegistry()),
                           cache_path=tmp_path / "recompute.sqlite")
    rows = sched.run_once()
    quality = [(dict(k.tags)["meter"], ts, f) for k, f, ts in rows if k.measurement == "acct_quality_day"]
    assert {ts for _, ts, _ in quality} == {ms(3, 2)}  # yesterday only, once
    assert {m for m, _, _ in quality} == set(RATES)
    rc, _ = run_report(plant, ReportPeriod.parse("day", "2026-03-02"), readings)
    want = {dict(k.tags)["meter"]: f for k, f, _ in report_rows(rc) if k.measurement == "acct_quality_day"}
    assert {m: f for m, _, f in quality} == want  # every raw minute reading, not the thinned ones
    assert not [k for k, _, _ in sched.run_once() if k.measurement == "acct_quality_day"]  # not again
    clock.advance(86_400)  # the next day closes
    later = [ts for k, _, ts in sched.run_once() if k.measurement == "acct_quality_day"]
    assert set(later) == {ms(3, 3)}
    store.close()
    sched.close()


class CountingStore:
    """An SQLite store that counts the reads (``query`` calls) made of it."""

    def __init__(self, store: SqliteStore) -> None:
        self.inner = store
        self.queries = 0

    def query(self, *args: Any, **kwargs: Any) -> Any:
        self.queries += 1
        return self.inner.query(*args, **kwargs)

    def write(self, rows: Any) -> None:
        self.inner.write(rows)


def test_the_first_run_skips_an_empty_past_in_growing_chunks(plant: PlantConfig, tmp_path: Path) -> None:
    """A plant started in November: the first run reads January to November in a few long chunks, not per day."""
    inner = SqliteStore(SqliteStoreConfig(type="sqlite", path=tmp_path / "store.sqlite"))
    start = int(datetime(2026, 11, 17, tzinfo=SH).timestamp() * 1000)
    readings = minute_readings(start, start + 3 * 86_400_000)
    inner.write(rows_of(plant, readings))
    store = CountingStore(inner)
    clock = ManualClock(datetime(2026, 11, 20, 0, 0, tzinfo=SH))
    sched = CurrentPeriods(plant, store, clock=clock, metrics=PipelineMetrics(CollectorRegistry()),
                           cache_path=tmp_path / "recompute.sqlite")
    rows = sched.run_once()
    per_meter_reads = store.queries / len(RATES) / 2  # a value and an `uncertain` query per meter and chunk
    assert per_meter_reads < 25, per_meter_reads  # 327 days one by one would be 327
    assert [f for k, f, _ in rows if k.measurement == "indicator" and dict(k.tags)["period"] == "month"]
    sched.close()
    inner.close()


def test_a_stopped_schedule_keeps_nothing_of_the_run(plant: PlantConfig, tmp_path: Path) -> None:
    store = SqliteStore(SqliteStoreConfig(type="sqlite", path=tmp_path / "store.sqlite"))
    store.write(rows_of(plant, minute_readings(ms(3, 1), ms(3, 2))))
    sched = CurrentPeriods(plant, store, clock=ManualClock(datetime(2026, 3, 2, tzinfo=SH)),
                           metrics=PipelineMetrics(CollectorRegistry()), cache_path=tmp_path / "recompute.sqlite")
    sched.stop()
    assert sched.run_once() == []
    assert sched.cache.read_to_ms is None and store.query("indicator", "value") == []
    sched.close()
    store.close()
