"""The ``building:`` section of the plant file: a public building (公共建筑) or public institution (公共机构).

A unit whose ``enterprise.kind`` is ``public_building`` or ``public_institution`` (a hospital, university,
government office that is a 重点用能单位) describes its building here. Its energy is metered like any plant's;
instead of (or besides) products, it is judged per m² of floor area and per occupant (electricity in kWh and
综合能耗 in kgce, annual), against GB/T 51161 约束值/引导值 of its type and climate zone and against the
provincial 定额/限额 it was given. Example::

    enterprise: {kind: public_institution, province: jiangxi, ...}
    building:
      building_type: office_government
      operation_class: A
      climate_zone: hot_summer_cold_winter
      floor_area_m2: 24000
      occupants: 950
      quotas:
        - {indicator: kgce_per_m2, value_per_year: 9.5, source: 本单位 2026 年能耗定额（省机关事务管理局下达）}
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from energymon.refdata.buildings import CLIMATE_ZONES, PROVINCE_CLIMATE_ZONES, ClimateZone

if TYPE_CHECKING:
    from energymon.config import PlantConfig

__all__ = ["BUILDING_TYPES", "REFERENCE_SECTIONS", "BuildingConfig", "BuildingQuota", "Gbt51161Figure",
           "check_building"]

#: Building types (GB/T 51161 groups offices, hotels and shopping malls; 公共机构 adds hospitals and schools).
BUILDING_TYPES: dict[str, str] = {
    "office_government": "党政机关办公建筑",
    "office_commercial": "商业办公建筑",
    "hotel": "旅馆建筑",
    "shopping_mall": "商场建筑",
    "hospital": "医疗卫生建筑",
    "school": "教育建筑（中小学）",
    "university": "教育建筑（高等院校）",
    "culture_sports": "文化体育建筑",
    "other": "其他公共建筑",
}

Indicator = Literal["electricity_kwh_per_m2", "kgce_per_m2", "electricity_kwh_per_person", "kgce_per_person"]
Confidence = Literal["verified", "secondary", "unverified", "measured"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Gbt51161Figure(_Strict):
    """约束值 and 引导值 of GB/T 51161 for this building's type, class and zone, copied from the standard."""

    constraint_per_year: float = Field(gt=0)
    """约束值 (annual, in the indicator's unit per year)"""
    guide_per_year: float | None = Field(default=None, gt=0)
    """引导值 (annual); null = the standard gives none"""
    source: str = Field(min_length=1)
    """table and edition the figures were read from"""
    confidence: Confidence = "unverified"
    """how sure the figures are"""

    @model_validator(mode="after")
    def _order(self) -> Gbt51161Figure:
        if self.guide_per_year is not None and self.guide_per_year > self.constraint_per_year:
            raise ValueError(f"引导值 {self.guide_per_year:g} is above 约束值 {self.constraint_per_year:g}")
        return self


class BuildingQuota(_Strict):
    """A provincial or assigned 能耗定额 / 能耗限额 on one indicator (annual)."""

    indicator: Indicator
    """`electricity_kwh_per_m2`, `kgce_per_m2`, `electricity_kwh_per_person` or `kgce_per_person`"""
    value_per_year: float = Field(gt=0)
    """the 定额 per year, in the indicator's unit (kWh/(m²·a), kgce/(m²·a), kWh/(人·a), kgce/(人·a))"""
    source: str = Field(min_length=1)
    """the notice or assignment it comes from"""
    kind: Literal["quota", "limit"] = "quota"
    """`quota` = 能耗定额 (公共机构); `limit` = 公共建筑能耗限额"""
    confidence: Confidence = "verified"
    """how sure the figure is (an assignment in hand is `verified`)"""


class BuildingConfig(_Strict):
    """The building of a public building or public institution."""

    building_type: Literal[
        "office_government", "office_commercial", "hotel", "shopping_mall", "hospital", "school", "university",
        "culture_sports", "other",
    ]
    """type, as GB/T 51161 and the 定额 notices group buildings"""
    operation_class: Literal["A", "B"] = "A"
    """GB/T 51161 A类 (can be naturally ventilated) or B类 (sealed, full-time air conditioning)"""
    climate_zone: ClimateZone
    """climate zone (GB 50176): Jiangxi and 达州 are `hot_summer_cold_winter` (夏热冬冷)"""
    floor_area_m2: float = Field(gt=0)
    """建筑面积 in m² (the denominator of the per-m² indicators)"""
    occupants: int = Field(gt=0)
    """用能人数 (staff, plus beds or students as the 定额 notice counts them)"""
    gbt51161: dict[Indicator, Gbt51161Figure] = Field(default_factory=dict)
    """GB/T 51161 约束值/引导值 of this type, class and zone (the reference data has none), by indicator"""
    quotas: list[BuildingQuota] = Field(default_factory=list)
    """provincial 定额 / 限额 on the indicators"""


REFERENCE_SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("building", BuildingConfig),
    ("building.gbt51161.INDICATOR", Gbt51161Figure),
    ("building.quotas[]", BuildingQuota),
]


def check_building(plant: PlantConfig) -> Iterator[tuple[str, str]]:
    """Cross-object checks: a building kind needs a building, and the zone must fit the province."""
    kind = plant.enterprise.kind
    building = plant.building
    if kind in ("public_building", "public_institution") and building is None:
        yield "building", f"enterprise.kind {kind} needs a building section (floor_area_m2, occupants, type)"
    if building is None:
        return
    known = PROVINCE_CLIMATE_ZONES.get(plant.enterprise.province or "")
    if known is not None and known[0] != building.climate_zone:
        yield (
            "building.climate_zone",
            f"{plant.enterprise.province} lies in {CLIMATE_ZONES[known[0]]} ({known[0]}), not {building.climate_zone}",
        )
    seen: set[tuple[str, str]] = set()
    for i, q in enumerate(building.quotas):
        if (q.indicator, q.kind) in seen:
            yield f"building.quotas[{i}]", f"a second {q.kind} on {q.indicator}"
        seen.add((q.indicator, q.kind))
