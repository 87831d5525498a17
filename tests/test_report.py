"""Reports: readings from a store or a CSV, late / replayed / corrected readings recomputed into the right
period, the ``energymon report`` entry point, the ``acct_*`` store rows, and the HTML page's self-containment."""

from __future__ import annotations

import argparse
import io
import json
import random
import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from services import VictoriaMetrics

from energymon.config import InfluxStoreConfig, PlantConfig, SqliteStoreConfig, load_plant
from energymon.demo import example_plant_path
from energymon.interfaces import Row, series_key
from energymon.processors.recompute import MeterReadings, readings_from_frame
from energymon.processors.report import (
    ReportPeriod,
    add_arguments,
    load_readings_csv,
    load_readings_store,
    main_report,
    render_html,
    report_rows,
    run_report,
)
from energymon.processors.store import InfluxStore, SqliteStore

SH = ZoneInfo("Asia/Shanghai")
USCC = "91530102MA6K7LQ8RH"
RATES = {"incoming": 3000.0, "raw_mill": 800.0, "kiln_drive": 900.0, "coal_mill": 300.0, "cement_mill": 900.0,
         "coal_feeder": 5.0, "clinker_scale": 40.0, "gas_main": 50.0}


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=SH).timestamp() * 1000)


@pytest.fixture(scope="module")
def plant() -> PlantConfig:
    return load_plant(example_plant_path())


def quantity(plant: PlantConfig, meter_id: str) -> tuple[str, str]:
    m = plant.meter(meter_id)
    assert m.counter is not None
    return m.counter, plant.quantities(m)[m.counter][0]


def synthetic(days: int = 3, start: tuple[int, int, int] = (2026, 3, 1)) -> dict[str, list[tuple[int, float]]]:
    """15-minute readings of the cement example, from the day before ``start`` for ``days`` + 2 days."""
    t0 = ms(*start) - 86_400_000
    n = (days + 2) * 96
    return {m: [(t0 + k * 900_000, 1000.0 + rate * k / 4) for k in range(n + 1)] for m, rate in RATES.items()}


def reading_rows(plant: PlantConfig, readings: dict[str, list[tuple[int, float]]]) -> list[Row]:
    rows: list[Row] = []
    for m, pairs in readings.items():
        q, unit = quantity(plant, m)
        key = series_key("reading", enterprise=USCC, gateway="gw", meter=m, quantity=q, unit=unit)
        rows += [(key, {"value": v}, t) for t, v in pairs]
    return rows


def as_readings(readings: dict[str, list[tuple[int, float]]]) -> dict[str, MeterReadings]:
    return {m: MeterReadings.of([t for t, _ in p], [v for _, v in p]) for m, p in readings.items()}


def test_store_with_late_replayed_and_uncertain_readings_matches_the_ordered_data(
    plant: PlantConfig, tmp_path: Path
) -> None:
    data = synthetic()
    rows = reading_rows(plant, data)
    random.Random(5).shuffle(rows)  # late data: arrival order has nothing to do with event time
    q, unit = quantity(plant, "kiln_drive")
    key = series_key("reading", enterprise=USCC, gateway="gw", meter="kiln_drive", quantity=q, unit=unit)
    bogus_ts = ms(2026, 3, 2, 10, 7)  # an uncertain reading between two good ones is left out
    rows.append((key, {"value": 1.0, "uncertain": 1.0}, bogus_ts))
    with SqliteStore(SqliteStoreConfig(type="sqlite", path=tmp_path / "s.sqlite")) as store:
        store.write(rows[: len(rows) // 2])
        store.write(rows)  # a replay of everything: upserts, nothing counted twice
        got = load_readings_store(store, plant, ms(2026, 2, 1), ms(2026, 3, 6))
    period = ReportPeriod.parse("day", "2026-03-02")
    _rc, from_store = run_report(plant, period, got)
    _rc, from_memory = run_report(plant, period, as_readings(data))
    assert from_store["totals"] == from_memory["totals"]
    assert from_store["products"] == from_memory["products"]
    assert from_store["totals"]["by_carrier"]["electricity"]["consumed"] == 3000.0 * 24


def test_a_corrected_reading_changes_only_the_periods_it_touches(plant: PlantConfig) -> None:
    data = synthetic()
    period = ReportPeriod.parse("range", "2026-03-01", "2026-03-04")
    rc0, _ = run_report(plant, period, as_readings(data))
    # the kiln meter's 2 March 12:00 reading was wrong by +900 kWh, then corrected: store the corrected series
    fixed = {m: list(p) for m, p in data.items()}
    fixed["kiln_drive"] = [(t, v + (900.0 if t >= ms(2026, 3, 2, 12) else 0.0)) for t, v in data["kiln_drive"]]
    rc1, _ = run_report(plant, period, as_readings(fixed))

    def days(rc: object) -> dict[int, float]:
        frame = rc.meters  # type: ignore[attr-defined]
        rows = frame[(frame["meter"] == "kiln_drive") & (frame["period"] == "day")]
        return dict(zip(rows["start"], rows["consumed"], strict=True))

    before, after = days(rc0), days(rc1)
    assert after[ms(2026, 3, 2)] == pytest.approx(before[ms(2026, 3, 2)] + 900.0)
    assert after[ms(2026, 3, 1)] == pytest.approx(before[ms(2026, 3, 1)])
    assert after[ms(2026, 3, 3)] == pytest.approx(before[ms(2026, 3, 3)])


def test_cli_report_from_the_store_writes_files_and_acct_rows(plant: PlantConfig, tmp_path: Path) -> None:
    db = tmp_path / "plant.sqlite"
    with SqliteStore(SqliteStoreConfig(type="sqlite", path=db)) as store:
        store.write(reading_rows(plant, synthetic(days=31)))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(["--config", str(example_plant_path()), "--store-file", str(db), "--month", "2026-03",
                              "--out", str(out), "--write-store"])
    printed = io.StringIO()
    assert main_report(args, printed) == 0
    assert {p.name for p in out.iterdir()} == {"report.json", "report.csv", "daily.csv", "report.xlsx", "report.html"}
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["period"]["label"] == "2026-03" and "wrote" in printed.getvalue()
    assert (out / "daily.csv").read_bytes().startswith(b"\xef\xbb\xbf")  # BOM: Excel reads it as UTF-8
    assert (out / "report.csv").read_bytes().startswith(b"\xef\xbb\xbfsection,item,field,value")
    daily = pd.read_csv(out / "daily.csv", encoding="utf-8-sig")
    assert len(daily) == 31 and daily["日期"].iloc[0] == "2026-03-01"
    assert set(daily["水泥熟料 等级"]) <= {"1级", "2级", "3级", "未达标"}  # labels, never 1.0
    assert daily["熟料产量计量 [clinker_scale] (t)"].sum() == pytest.approx(report["products"]["clinker"]["output"])
    with SqliteStore(SqliteStoreConfig(type="sqlite", path=db)) as store:
        month = store.query("acct_product", "value", tags={"product": "clinker", "period": "month"})
        value = report["products"]["clinker"]["indicators"]["cement_clinker"]["value"]
        assert len(month) == 1 and month[0][1] == ms(2026, 3, 1)
        assert month[0][2] == pytest.approx(value, abs=0.005)
        days = store.query("acct_enterprise", "kgce", tags={"period": "day"})
        assert len(days) == 31
        assert sum(v for _, _, v in days) == pytest.approx(report["totals"]["kgce"], abs=0.01)
        quality = store.query("acct_quality_day", "completeness_pct", tags={"meter": "incoming"})
        assert len(quality) == 31 and all(v == 100.0 for _, _, v in quality)
        count = store.count()
    assert main_report(args, io.StringIO()) == 0  # writing the same period again replaces it
    with SqliteStore(SqliteStoreConfig(type="sqlite", path=db)) as store:
        assert store.count() == count


def test_report_rows_are_finite_and_documented_measurements(plant: PlantConfig) -> None:
    rc, _ = run_report(plant, ReportPeriod.parse("day", "2026-03-02"), as_readings(synthetic()))
    rows = report_rows(rc)
    measurements = {k.measurement for k, _, _ in rows}
    assert measurements == {"acct_enterprise", "acct_enterprise_carrier", "acct_product", "acct_product_carrier",
                            "acct_meter", "acct_quality_day", "acct_quality_month", "acct_balance", "indicator"}
    doc = (Path(__file__).resolve().parent.parent / "docs" / "accounting.md").read_text(encoding="utf-8")
    for m in [*measurements, "acct_budget", "budget"]:
        assert f"`{m}`" in doc
    assert all(np.isfinite(v) for _, f, _ in rows for v in f.values())


def test_readings_csv_formats(plant: PlantConfig) -> None:
    text = (
        "ts,meter_id,value,quality,quantity\n"
        f"{ms(2026, 3, 2)},kiln_drive,100,good,energy_active_import\n"  # epoch ms (not mixed with text times)
        "2026-03-02 01:00:00,kiln_drive,110,good,energy_active_import\n"  # naive: plant local time
        "2026-03-02T02:00:00+08:00,kiln_drive,999,uncertain,energy_active_import\n"  # left out
        "2026-03-02T03:00:00Z,kiln_drive,130,good,energy_active_import\n"  # UTC = 11:00 local
        "2026-03-02T04:00:00+08:00,kiln_drive,5,good,power_active\n"  # not the counter: left out
        "2026-03-02T04:00:00+08:00,nope,5,good,energy_active_import\n"  # unknown meter: left out
    )
    with pytest.raises(ValueError, match="mix timestamps"):
        load_readings_csv(io.StringIO(text), plant)
    text = text.replace("2026-03-02 01:00:00", "2026-03-02T01:00:00+08:00").replace(
        f"{ms(2026, 3, 2)},", "2026-03-01T16:00:00Z,")
    got = load_readings_csv(io.StringIO(text), plant)
    assert list(got) == ["kiln_drive"]
    assert got["kiln_drive"].ts.tolist() == [ms(2026, 3, 2), ms(2026, 3, 2, 1), ms(2026, 3, 2, 11)]
    assert got["kiln_drive"].value.tolist() == [100.0, 110.0, 130.0]
    naive = load_readings_csv(io.StringIO("ts,meter_id,value\n2026-03-02 01:00:00,kiln_drive,1\n"), plant)
    assert naive["kiln_drive"].ts.tolist() == [ms(2026, 3, 2, 1)]
    epoch = load_readings_csv(io.StringIO(f"ts,meter_id,value\n{ms(2026, 3, 2)},kiln_drive,1\n"), plant)
    assert epoch["kiln_drive"].ts.tolist() == [ms(2026, 3, 2)]


def test_readings_frame_unsorted_with_duplicates_keeps_the_last_value() -> None:
    frame = pd.DataFrame({"ts": [3, 1, 2, 2, 1], "meter": pd.Categorical(["a", "b", "a", "a", "a"]),
                          "value": [3.0, 10.0, 2.0, 2.5, 1.0]})
    got = readings_from_frame(frame)
    assert got["a"].ts.tolist() == [1, 2, 3] and got["a"].value.tolist() == [1.0, 2.5, 3.0]
    assert got["b"].value.tolist() == [10.0]


def test_html_is_self_contained(plant: PlantConfig) -> None:
    _rc, report = run_report(plant, ReportPeriod.parse("range", "2026-03-01", "2026-03-04"), as_readings(synthetic()))
    page = render_html(report)
    assert page.count("<svg") >= 2 and "</html>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "no network assets"
    assert "<script" not in page


@pytest.mark.integration
def test_report_from_victoria_metrics(plant: PlantConfig, victoria_metrics: VictoriaMetrics) -> None:
    data = synthetic()
    cfg = InfluxStoreConfig(type="influxdb", url=victoria_metrics.url)
    with InfluxStore(cfg) as store:
        store.write(reading_rows(plant, data))
        got = load_readings_store(store, plant, ms(2026, 2, 1), ms(2026, 3, 6))
    period = ReportPeriod.parse("day", "2026-03-02")
    assert run_report(plant, period, got)[1]["totals"] == run_report(plant, period, as_readings(data))[1]["totals"]


def test_alert_rows_feed_the_alert_engine() -> None:
    """The recompute's ``indicator`` (month/ytd/year) and ``budget`` rows are in the alert engine's shape."""
    from datetime import UTC

    import yaml

    from energymon.alerts.engine import AlertEngine
    from energymon.alerts.rules import build_rules
    from energymon.clock import ManualClock
    from energymon.config import parse_plant
    from energymon.processors.report import alert_rows

    case = Path(__file__).resolve().parent / "cases" / "budget_yellow_red"
    data = yaml.safe_load((case / "plant.yaml").read_text(encoding="utf-8"))
    data["alerts"] = {"rules": [{"kind": "budget", "id": "budget"}]}
    plant = parse_plant(yaml.safe_dump(data, allow_unicode=True), "budget.yaml")
    rc, _ = run_report(plant, ReportPeriod.parse("month", "2026-01"), load_readings_csv(case / "readings.csv", plant))
    rows = alert_rows(rc)
    budget = [f for k, f, _ in rows if k.measurement == "budget"]
    assert len(budget) == 31 and budget[14]["ytd_share"] == pytest.approx(1.0195, abs=1e-4)  # 15 January
    fired: list[object] = []
    engine = AlertEngine(build_rules(plant), notify=fired.append, clock=ManualClock(datetime(2030, 1, 1, tzinfo=UTC)))
    engine.observe_rows(rows)
    assert fired, "the budget rule fires on the recomputed year-to-date share"
