"""Public buildings and public institutions: the plant file's building section, per-m² and per-person
indicators and their judgements (GB/T 51161 约束值/引导值, provincial 定额)."""

from __future__ import annotations

from pathlib import Path

import pytest

from energymon.building_config import BuildingConfig
from energymon.config import parse_plant
from energymon.errors import ConfigError
from energymon.processors.building import building_block, judge_gbt51161, judge_quota

CASE = Path(__file__).resolve().parent / "cases" / "building_office_jiangxi" / "plant.yaml"


def building(**extra: object) -> BuildingConfig:
    base: dict[str, object] = {"building_type": "hospital", "climate_zone": "hot_summer_cold_winter",
                               "floor_area_m2": 10000, "occupants": 500}
    return BuildingConfig.model_validate({**base, **extra})


def test_judgements_at_the_boundaries_are_inclusive() -> None:
    assert judge_gbt51161(60.0, 90.0, 60.0) == "优于引导值"
    assert judge_gbt51161(60.0001, 90.0, 60.0) == "达到约束值"
    assert judge_gbt51161(90.0, 90.0, 60.0) == "达到约束值"
    assert judge_gbt51161(90.0001, 90.0, None) == "超过约束值"
    assert judge_quota(12.0, 12.0) == "定额内" and judge_quota(12.0001, 12.0) == "超出定额"


def test_a_full_year_is_judged_on_its_own_figures() -> None:
    b = building(gbt51161={"electricity_kwh_per_m2": {"constraint_per_year": 100, "guide_per_year": 80,
                                                       "source": "example"}},
                 quotas=[{"indicator": "electricity_kwh_per_person", "value_per_year": 1500, "source": "x"}])
    out = building_block(b, kgce=123_000.0, electricity_kwh=700_000.0, days=365, year_days=365)
    assert out["full_year"] is True
    per_m2 = out["indicators"]["electricity_kwh_per_m2"]
    assert per_m2["period_value"] == per_m2["annual_value"] == 70.0
    assert per_m2["gbt51161"]["judgement"] == "优于引导值"
    person = out["indicators"]["electricity_kwh_per_person"]
    assert person["annual_value"] == 1400.0
    quota = person["quotas"][0]
    assert quota["judgement"] == "定额内" and quota["use_pct"] == pytest.approx(93.333, 1e-4)
    # no figure for 综合能耗 per m²: 无数值 with the reason, never a grade; per-person has no GB/T 51161 row at all
    assert out["indicators"]["kgce_per_m2"]["gbt51161"]["judgement"] == "无数值"
    assert "reason" in out["indicators"]["kgce_per_m2"]["gbt51161"]
    assert "gbt51161" not in person
    assert out["indicators"]["kgce_per_m2"]["annual_value"] == pytest.approx(12.3)


def test_building_section_is_strict_and_checked_against_the_unit() -> None:
    text = CASE.read_text(encoding="utf-8")
    assert parse_plant(text, "b.yaml").building is not None
    with pytest.raises(ConfigError, match="floor_area_m2"):
        parse_plant(text.replace("floor_area_m2: 24000", "floor_area_m2: 0"), "b.yaml")
    with pytest.raises(ConfigError, match="area_m3"):
        parse_plant(text.replace("floor_area_m2: 24000", "floor_area_m2: 24000\n  area_m3: 1"), "b.yaml")
    with pytest.raises(ConfigError, match="夏热冬冷"):  # Jiangxi lies wholly in 夏热冬冷
        parse_plant(text.replace("climate_zone: hot_summer_cold_winter", "climate_zone: cold"), "b.yaml")
    head, _, _ = text.partition("building:\n")
    _, _, tail = text.partition("accounting:\n")
    with pytest.raises(ConfigError, match="needs a building section"):
        parse_plant(head + "accounting:\n" + tail, "b.yaml")
    with pytest.raises(ConfigError, match="引导值"):
        parse_plant(text.replace("guide_per_year: 60", "guide_per_year: 95"), "b.yaml")


def test_live_page_shows_the_building_from_the_store(tmp_path: Path) -> None:
    """The overview's ``building`` block: this year's energy from the store (the real processor wrote it)."""
    from datetime import datetime
    from importlib import resources

    from energymon.clock import ManualClock
    from energymon.config import SqliteStoreConfig, load_plant
    from energymon.interfaces import Message
    from energymon.processors.processor import Processor
    from energymon.processors.store import SqliteStore
    from energymon.schema import Batch, Point, encode_batch
    from energymon.simulators.plant import PlantModel
    from energymon.topics import readings_topic
    from energymon.web import Overview, SqliteReader

    plant = load_plant(Path(str(resources.files("energymon.examples").joinpath("jiangxi_public_building.yaml"))))
    tz = plant.enterprise.tz
    start = int(datetime(2026, 1, 2, 8, tzinfo=tz).timestamp() * 1000)
    end = start + 2 * 3_600_000
    store = SqliteStore(SqliteStoreConfig(type="sqlite", path=tmp_path / "store.sqlite"))
    try:
        model = PlantModel(plant, ManualClock(datetime.fromtimestamp(start / 1000, tz)))
        proc = Processor(plant, store, max_pending_rows=10**9)
        topic = readings_topic(plant.enterprise.uscc, plant.gateway.id)
        for seq, ts in enumerate(range(start, end + 1, 60_000), 1):
            points = [Point(meter=m.id, quantity=q, value=model.value(m.id, q, ts), unit=u, ts_ms=ts)
                      for m in plant.meters for q, (u, _, _) in plant.quantities(m).items()]
            batch = Batch(enterprise=plant.enterprise.uscc, gateway=plant.gateway.id, seq=seq, sent_ms=ts,
                          points=points)
            proc.handle(Message(topic, encode_batch(batch), lambda: None))
        assert proc.flush() > 0
        now = end
        clock = ManualClock(datetime.fromtimestamp(now / 1000, tz))
        snap = Overview(plant, SqliteReader(store), clock=clock).snapshot()
        assert snap["error"] is None
        b = snap["building"]
        year_start = int(datetime(2026, 1, 1, tzinfo=tz).timestamp() * 1000)
        kgce = sum(v for tags, ts, v in store.query("energy", "kgce")
                   if tags["meter"] in ("incoming", "gas_main", "water_main") and year_start < ts <= now)
        kwh = sum(v for tags, ts, v in store.query("energy", "consumed")
                  if tags["meter"] == "incoming" and year_start < ts <= now)
        assert kgce > 0 and kwh > 0
        assert b["kgce"] == pytest.approx(kgce, rel=1e-9) and b["electricity_kwh"] == pytest.approx(kwh, rel=1e-9)
        assert b["days"] == pytest.approx((now - year_start) / 86_400_000)
        per_m2 = b["indicators"]["kgce_per_m2"]
        assert per_m2["period_value"] == pytest.approx(kgce / 150000)
        assert per_m2["quotas"][0]["judgement"] in ("定额内", "超出定额")
        assert b["indicators"]["electricity_kwh_per_m2"]["gbt51161"]["judgement"] == "无数值"
        assert snap["indicators"] == []  # no products
    finally:
        store.close()


def test_report_csv_and_html_carry_the_building() -> None:
    from energymon.config import load_plant
    from energymon.processors.report import ReportPeriod, load_readings_csv, render_csv, render_html, run_report

    plant = load_plant(CASE)
    _rc, report = run_report(plant, ReportPeriod.parse("month", "2026-01", None),
                             load_readings_csv(CASE.parent / "readings.csv", plant))
    csv_text = render_csv(report)
    assert "building,,indicators.kgce_per_m2.annual_value,14.4272" in csv_text
    page = render_html(report)
    assert "建筑能耗" in page and "超出定额" in page and "无数值" in page
