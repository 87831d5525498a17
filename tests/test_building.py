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
