"""Indicators of a public building or public institution: energy per m² of floor area and per occupant.

From a period's 综合能耗 (kgce, 当量值) and electricity (kWh) of the whole unit, and the ``building`` section of
the plant file:

* ``period_value`` = energy ÷ floor area (or ÷ occupants) over the period;
* ``annual_value`` = ``period_value`` ÷ (period days ÷ days of the year): the annual rate the period runs at.
  For a calendar year it is the annual figure itself; for a shorter period it is an early warning, and
  ``full_year`` says which it is.

The annual value is judged against GB/T 51161 约束值/引导值 (优于引导值 / 达到约束值 / 超过约束值) and against each
configured 定额 or 限额 (定额内 / 超出定额). A comparison without a figure says 无数值 and why, never a grade.
Values are compared at full precision.
"""

from __future__ import annotations

from typing import Any

from energymon.building_config import BUILDING_TYPES, BuildingConfig
from energymon.refdata.buildings import BUILDING_INDICATORS, CLIMATE_ZONES, GBT51161, GBT51161_FIGURES, GBT51161_MISSING

__all__ = ["building_block", "judge_gbt51161", "judge_quota"]


def judge_gbt51161(annual: float, constraint: float, guide: float | None) -> str:
    """优于引导值 (at or below 引导值), 达到约束值 (at or below 约束值) or 超过约束值."""
    if guide is not None and annual <= guide:
        return "优于引导值"
    return "达到约束值" if annual <= constraint else "超过约束值"


def judge_quota(annual: float, quota: float) -> str:
    """定额内 (at or below the 定额) or 超出定额."""
    return "定额内" if annual <= quota else "超出定额"


def _pct(gap: float, level: float) -> float:
    return 100.0 * gap / level


def building_block(
    building: BuildingConfig, *, kgce: float, electricity_kwh: float, days: float, year_days: int
) -> dict[str, Any]:
    """The building's indicators and their judgements for one period (JSON-ready, full precision).

    Args:
        building: the plant file's ``building`` section.
        kgce: 综合能耗 of the unit over the period (当量值, export deducted).
        electricity_kwh: electricity of the unit over the period.
        days: length of the period in days.
        year_days: days of the year the period lies in (365 or 366).
    """
    fraction = days / year_days
    energy = {"kgce": kgce, "electricity_kwh": electricity_kwh}
    denominators = {"m2": building.floor_area_m2, "person": float(building.occupants)}
    indicators: dict[str, Any] = {}
    for ind in BUILDING_INDICATORS.values():
        period_value = energy[ind.energy] / denominators[ind.per]
        annual = period_value / fraction if fraction > 0 else None
        item: dict[str, Any] = {
            "name_zh": ind.name_zh, "unit": ind.unit, "period_value": period_value, "annual_value": annual,
        }
        figure = building.gbt51161.get(ind.id)  # type: ignore[call-overload]
        stored = GBT51161_FIGURES.get((building.building_type, building.operation_class, building.climate_zone, ind.id))
        if annual is not None and figure is not None:
            item["gbt51161"] = {
                "standard": GBT51161.id, "constraint": figure.constraint_per_year, "guide": figure.guide_per_year,
                "judgement": judge_gbt51161(annual, figure.constraint_per_year, figure.guide_per_year),
                "gap_to_constraint": annual - figure.constraint_per_year,
                "gap_to_constraint_pct": _pct(annual - figure.constraint_per_year, figure.constraint_per_year),
                "source": f"plant file: {figure.source}", "confidence": figure.confidence,
            }
        elif annual is not None and stored is not None:
            constraint, guide = stored
            item["gbt51161"] = {
                "standard": GBT51161.id, "constraint": constraint, "guide": guide,
                "judgement": judge_gbt51161(annual, constraint, guide),
                "gap_to_constraint": annual - constraint,
                "gap_to_constraint_pct": _pct(annual - constraint, constraint),
                "source": GBT51161.source, "confidence": GBT51161.confidence,
            }
        elif ind.per == "m2":
            item["gbt51161"] = {"standard": GBT51161.id, "judgement": "无数值", "reason": GBT51161_MISSING}
        quotas = []
        for q in building.quotas:
            if q.indicator != ind.id or annual is None:
                continue
            quotas.append({
                "kind": q.kind, "kind_zh": "能耗定额" if q.kind == "quota" else "能耗限额",
                "value_per_year": q.value_per_year, "prorated": q.value_per_year * fraction,
                "judgement": judge_quota(annual, q.value_per_year),
                "gap": annual - q.value_per_year, "gap_pct": _pct(annual - q.value_per_year, q.value_per_year),
                "use_pct": 100.0 * period_value / (q.value_per_year * fraction),
                "source": q.source, "confidence": q.confidence,
            })
        if quotas:
            item["quotas"] = quotas
        indicators[ind.id] = item
    return {
        "building_type": building.building_type,
        "building_type_zh": BUILDING_TYPES[building.building_type],
        "operation_class": building.operation_class,
        "climate_zone": building.climate_zone,
        "climate_zone_zh": CLIMATE_ZONES[building.climate_zone],
        "floor_area_m2": building.floor_area_m2,
        "occupants": building.occupants,
        "kgce": kgce,
        "electricity_kwh": electricity_kwh,
        "days": days,
        "full_year": abs(days - year_days) < 1e-9,
        "indicators": indicators,
    }
