"""Reference data for public buildings (公共建筑) and public institutions (公共机构).

GB/T 51161-2016 《民用建筑能耗标准》 gives, per building type, operation class (A类: can be naturally
ventilated; B类: sealed, full-time air conditioning) and climate zone, an annual 约束值 (limit) and 引导值
(guide) per m² of floor area. Its tables were not read and no transcription was found in the reference
sources (shared/docs/domain.md, domain-verify.md), so **no figure is stored here**: :data:`GBT51161_FIGURES` is
empty and grading says "no figure" with :data:`GBT51161_MISSING` unless the plant file gives the figures of its
type and zone, with their source (``building.gbt51161``). Provincial 能耗定额 (public institutions) and
公共建筑能耗限额 are issued per province and per unit, so they are always configured
(``building.quotas``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BUILDING_INDICATORS",
    "CLIMATE_ZONES",
    "GBT51161",
    "GBT51161_FIGURES",
    "GBT51161_MISSING",
    "PROVINCE_CLIMATE_ZONES",
    "BuildingIndicator",
    "BuildingStandard",
    "ClimateZone",
]

ClimateZone = Literal["severe_cold", "cold", "hot_summer_cold_winter", "hot_summer_warm_winter", "mild"]

#: Climate zones of GB 50176 (建筑热工设计分区), as GB/T 51161 uses them.
CLIMATE_ZONES: dict[str, str] = {
    "severe_cold": "严寒地区",
    "cold": "寒冷地区",
    "hot_summer_cold_winter": "夏热冬冷地区",
    "hot_summer_warm_winter": "夏热冬暖地区",
    "mild": "温和地区",
}

#: Provinces that lie wholly in one zone: province key -> (zone, source, confidence). Sichuan is not listed: its
#: east (达州, 成都 basin) is 夏热冬冷 but its west is 寒冷/严寒, so the plant file states the zone.
PROVINCE_CLIMATE_ZONES: dict[str, tuple[ClimateZone, str, str]] = {
    "jiangxi": ("hot_summer_cold_winter", "GB 50176-2016 建筑热工设计分区 (江西全省属夏热冬冷地区) [M]", "unverified"),
}


@dataclass(frozen=True, slots=True)
class BuildingStandard:
    """A building energy standard the grades refer to."""

    id: str
    title: str
    source: str
    confidence: str


GBT51161 = BuildingStandard(
    id="GB/T 51161-2016",
    title="民用建筑能耗标准",
    source="GB/T 51161-2016 (title and 约束值/引导值 structure [M]); tables not read",
    confidence="unverified",
)

#: (building_type, operation_class, climate_zone, indicator) -> (约束值, 引导值). Empty: see the module docstring.
GBT51161_FIGURES: dict[tuple[str, str, str, str], tuple[float, float]] = {}

GBT51161_MISSING = (
    "GB/T 51161-2016 约束值/引导值 are not in the reference data (its tables were not read and no transcription "
    "was found); enter the figures of this building type and climate zone in building.gbt51161 with their source"
)


@dataclass(frozen=True, slots=True)
class BuildingIndicator:
    """A per-area or per-person indicator of a building: annual energy over floor area or occupants."""

    id: str
    name_zh: str
    unit: str  # of the annual value
    energy: Literal["electricity_kwh", "kgce"]
    per: Literal["m2", "person"]


BUILDING_INDICATORS: dict[str, BuildingIndicator] = {
    i.id: i
    for i in (
        BuildingIndicator("electricity_kwh_per_m2", "单位建筑面积电耗", "kWh/(m²·a)", "electricity_kwh", "m2"),
        BuildingIndicator("kgce_per_m2", "单位建筑面积综合能耗", "kgce/(m²·a)", "kgce", "m2"),
        BuildingIndicator("electricity_kwh_per_person", "人均电耗", "kWh/(人·a)", "electricity_kwh", "person"),
        BuildingIndicator("kgce_per_person", "人均综合能耗", "kgce/(人·a)", "kgce", "person"),
    )
}
