"""statType 0/1/2 values of the data items, computed from the store by the accounting's recompute.

Values come from :func:`energymon.processors.recompute.recompute` over stored counter readings, the same
computation ``energymon report`` uses, in the plant's local calendar: one recompute per local month covers the
month's 15-minute, day and month values. A meter's 15-minute consumption is the recompute's own slot series
(readings → booked intervals → proportional 15-minute slots); enterprise, carrier and product values are its frames.

A period is only given a value when the readings cover it (a reading at or before its start and one at or after
its end), so a period whose readings have not arrived yet is missing, never a zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from energymon.gateway.provincial.items import ResolvedItem, item_meters
from energymon.gateway.provincial.protocol import STAT_DAY, STAT_MONTH, STAT_REALTIME
from energymon.periods import next_period_start, period_start
from energymon.processors.recompute import MeterReadings, Recomputation, meter_slots, recompute
from energymon.processors.rules import PlantRules
from energymon.provincial_config import (
    CarrierItemSource,
    EnterpriseItemSource,
    MeterItemSource,
    ProductItemSource,
)

__all__ = ["MonthValues", "compute_month", "meter_slots"]

QUARTER_MS = 900_000


@dataclass(slots=True)
class MonthValues:
    """Values of one local month window: (item, statType, statDate ms) → uploaded value (scaled, rounded)."""

    start_ms: int
    end_ms: int
    values: dict[tuple[str, int, int], float] = field(default_factory=dict)
    #: unrounded values, for the quality gate's sums
    exact: dict[tuple[str, int, int], float] = field(default_factory=dict)
    #: (meter, local day start ms) → completeness % of that day's readings
    completeness: dict[tuple[str, int], float] = field(default_factory=dict)
    #: (meter, month start ms) → (consistent, diff %) of Σ day values vs the counter's span over the month
    month_consistency: dict[tuple[str, int], tuple[bool, float]] = field(default_factory=dict)
    recomputation: Recomputation | None = None


def _covered(readings: Mapping[str, MeterReadings], meters: list[str], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Periods [lo, hi) with a reading at or before lo and one at or after hi, for every meter."""
    ok = np.ones(lo.size, dtype=bool)
    for m in meters:
        r = readings.get(m)
        if r is None or r.ts.size == 0:
            return np.zeros(lo.size, dtype=bool)
        ok &= (lo >= r.ts[0]) & (hi <= r.ts[-1])
    return ok


def _frame_values(frame: pd.DataFrame, period: str, column: str, **match: str) -> dict[int, float]:
    if frame.empty or column not in frame.columns:
        return {}
    mask = frame["period"] == period
    for k, v in match.items():
        mask &= frame[k] == v
    rows = frame[mask]
    return {int(s): float(v) for s, v in zip(rows["start"], rows[column], strict=True)}


def compute_month(
    rules: PlantRules, readings: Mapping[str, MeterReadings], items: list[ResolvedItem], month_start_ms: int,
    until_ms: int,
) -> MonthValues:
    """Values of every item for the local month starting at ``month_start_ms``, for periods ending by ``until_ms``.

    ``readings`` must include some readings before the month and after ``until_ms`` (the lookback), so intervals
    across the window's ends are split as the report splits them.
    """
    tz = rules.tz
    month_end = next_period_start(month_start_ms, "month", tz)
    end = min(month_end, period_start(until_ms, "15min", tz))  # whole 15-minute slots
    out = MonthValues(month_start_ms, end)
    if end <= month_start_ms:
        return out
    rc = recompute(rules, readings, month_start_ms, end, with_ytd=False, detail_periods=("15min", "day", "month"))
    out.recomputation = rc
    grid = rc.grid
    q = rc.quality_days
    if not q.empty:
        for m, s, pct in zip(q["meter"], q["start"], q["completeness_pct"], strict=True):
            out.completeness[(str(m), int(s))] = float(pct)
    qm = rc.quality_months
    if not qm.empty:
        for m, s, ok, diff in zip(qm["meter"], qm["start"], qm["consistent"], qm["diff_pct"], strict=True):
            out.month_consistency[(str(m), int(s))] = (bool(ok), float(diff) if diff == diff else 0.0)

    quarter_lo = np.asarray(grid.starts["15min"], dtype=np.int64)
    quarter_hi = quarter_lo + QUARTER_MS
    day_lo = np.asarray(grid.starts["day"], dtype=np.int64)
    day_hi = np.asarray([*day_lo[1:].tolist(), end], dtype=np.int64)
    full_month = end == month_end
    slot_cache: dict[str, np.ndarray] = {}

    for ri in items:
        item = ri.item
        src = item.source
        meters = item_meters(item, rules)
        per: dict[int, dict[int, float]] = {}
        if isinstance(src, MeterItemSource):
            if src.meter not in slot_cache:
                slot_cache[src.meter] = meter_slots(rc, readings, src.meter)
            slots = slot_cache[src.meter]
            per[STAT_REALTIME] = dict(zip(quarter_lo.tolist(), slots.tolist(), strict=True))
            per[STAT_DAY] = dict(zip(day_lo.tolist(), grid.sums(slots, "day").tolist(), strict=True))
            per[STAT_MONTH] = {month_start_ms: float(slots.sum())}
        elif isinstance(src, EnterpriseItemSource):
            for st, period in ((STAT_REALTIME, "15min"), (STAT_DAY, "day"), (STAT_MONTH, "month")):
                per[st] = _frame_values(rc.enterprise, period, src.field)
        elif isinstance(src, CarrierItemSource):
            for st, period in ((STAT_DAY, "day"), (STAT_MONTH, "month")):
                per[st] = _frame_values(rc.enterprise_carriers, period, src.field, carrier=src.carrier)
        else:
            assert isinstance(src, ProductItemSource)
            indicator = rules.indicators(src.product)[0][0]
            for st, period in ((STAT_REALTIME, "15min"), (STAT_DAY, "day"), (STAT_MONTH, "month")):
                per[st] = _frame_values(rc.products, period, src.field, product=src.product, indicator=indicator)
        cover = {
            STAT_REALTIME: dict(zip(quarter_lo.tolist(), _covered(readings, meters, quarter_lo, quarter_hi).tolist(),
                                    strict=True)),
            STAT_DAY: dict(zip(day_lo.tolist(), _covered(readings, meters, day_lo, day_hi).tolist(), strict=True)),
            STAT_MONTH: {month_start_ms: full_month and bool(_covered(
                readings, meters, np.asarray([month_start_ms]), np.asarray([month_end]))[0])},
        }
        for st in item.stat_types:
            for stat_ms, value in per.get(st, {}).items():
                if not cover[st].get(stat_ms, False) or not math.isfinite(value):
                    continue
                if st == STAT_MONTH and stat_ms != month_start_ms:
                    continue
                scaled = value * item.scale
                out.exact[(item.id, st, stat_ms)] = scaled
                out.values[(item.id, st, stat_ms)] = round(scaled, item.decimals)
    return out
