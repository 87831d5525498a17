"""The quality gate: the platform's data-quality rules checked locally before a value is uploaded.

Checks, per value (domain.md §3, data-quality rules):

* ``completeness``: every meter the item is computed from has ≥ ``completeness_min_pct`` of its expected readings
  on the value's local day (for a month value: on average over the month);
* ``consistency``: Σ 15-minute values of a day within ``consistency_max_pct`` of the day value, Σ day values of a
  month within it of the month value, and each meter's Σ daily consumption within it of its counter's span over
  the month (the recompute's monthly check);
* ``range``: the value inside the item's plausibility band (scaled to the period's length);
* ``timestamp``: the statDate is the start of its local period.

In ``block`` mode a value with a problem is held back (the ledger marks it ``blocked``) and sent once it passes,
e.g. after late readings arrived; in ``report`` mode it is sent and the problem is only reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from energymon.gateway.provincial.items import ResolvedItem, band, intensive, item_meters
from energymon.gateway.provincial.profile import ProvinceProfile
from energymon.gateway.provincial.protocol import STAT_DAY, STAT_MONTH, STAT_REALTIME, stat_date_aligned
from energymon.gateway.provincial.values import MonthValues
from energymon.periods import next_period_start, period_start
from energymon.processors.rules import PlantRules
from energymon.provincial_config import QualityGate

__all__ = ["Problem", "check"]

QUARTER_MS = 900_000


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding of the gate."""

    item: str
    stat_type: int
    stat_ms: int
    check: str
    detail: str
    blocking: bool


def _diff_pct(a: float, b: float) -> float:
    if b == 0:
        return 0.0 if abs(a) < 1e-9 else 100.0
    return abs(a - b) / abs(b) * 100.0


def check(
    gate: QualityGate, rules: PlantRules, profile: ProvinceProfile, items: list[ResolvedItem], mv: MonthValues,
) -> list[Problem]:
    """Problems of every value in ``mv``."""
    tz: ZoneInfo = rules.tz
    block = gate.mode == "block"
    problems: list[Problem] = []
    by_id = {ri.id: ri for ri in items}
    day_sums: dict[tuple[str, int], tuple[float, int]] = {}  # (item, day) → (Σ 15-min, count)
    month_sums: dict[tuple[str, int], tuple[float, int]] = {}  # (item, month) → (Σ day, count)
    for (item_id, st, ms), value in mv.exact.items():
        if st == STAT_REALTIME:
            d = period_start(ms, "day", tz)
            s, n = day_sums.get((item_id, d), (0.0, 0))
            day_sums[(item_id, d)] = (s + value, n + 1)
        elif st == STAT_DAY:
            month = period_start(ms, "month", tz)
            s, n = month_sums.get((item_id, month), (0.0, 0))
            month_sums[(item_id, month)] = (s + value, n + 1)

    for (item_id, st, ms), value in sorted(mv.exact.items()):
        ri = by_id[item_id]
        item = ri.item
        meters = item_meters(item, rules)
        if not stat_date_aligned(ms, st, tz, profile):
            problems.append(Problem(item_id, st, ms, "timestamp", "statDate is not the start of its period", True))
        # completeness of the readings behind the value
        if st in (STAT_REALTIME, STAT_DAY):
            day = period_start(ms, "day", tz)
            for m in meters:
                pct = mv.completeness.get((m, day))
                if pct is not None and pct < gate.completeness_min_pct:
                    problems.append(Problem(item_id, st, ms, "completeness",
                                            f"meter {m}: {pct:.1f}% of the day's readings < "
                                            f"{gate.completeness_min_pct:g}%", block))
                    break
        else:
            end = next_period_start(ms, "month", tz)
            for m in meters:
                pcts = [p for (mm, d), p in mv.completeness.items() if mm == m and ms <= d < end]
                if pcts and sum(pcts) / len(pcts) < gate.completeness_min_pct:
                    problems.append(Problem(item_id, st, ms, "completeness",
                                            f"meter {m}: {sum(pcts) / len(pcts):.1f}% of the month's readings < "
                                            f"{gate.completeness_min_pct:g}%", block))
                    break
        # consistency between statTypes and with the counter's span
        if st == STAT_DAY and STAT_REALTIME in item.stat_types and not intensive(item):
            total, n = day_sums.get((item_id, ms), (0.0, 0))
            expected_n = (next_period_start(ms, "day", tz) - ms) // QUARTER_MS
            if n == expected_n and _diff_pct(total, value) > gate.consistency_max_pct:
                problems.append(Problem(item_id, st, ms, "consistency",
                                        f"Σ 15-minute values {total:.4f} vs day value {value:.4f}: "
                                        f"{_diff_pct(total, value):.2f}% > {gate.consistency_max_pct:g}%", block))
        if st == STAT_MONTH:
            if STAT_DAY in item.stat_types and not intensive(item):
                total, n = month_sums.get((item_id, ms), (0.0, 0))
                n_days = len(_days(ms, tz))
                if n == n_days and _diff_pct(total, value) > gate.consistency_max_pct:
                    problems.append(Problem(item_id, st, ms, "consistency",
                                            f"Σ day values {total:.4f} vs month value {value:.4f}: "
                                            f"{_diff_pct(total, value):.2f}% > {gate.consistency_max_pct:g}%", block))
            for m in meters:
                found = mv.month_consistency.get((m, ms))
                if found is not None and abs(found[1]) > gate.consistency_max_pct:
                    problems.append(Problem(item_id, st, ms, "consistency",
                                            f"meter {m}: Σ daily consumption differs from the counter's span over "
                                            f"the month by {found[1]:.2f}% > {gate.consistency_max_pct:g}%", block))
                    break
        # plausibility band
        if gate.check_range:
            slots = (next_period_start(ms, {0: "15min", 1: "day", 2: "month"}[st], tz) - ms) // QUARTER_MS
            lo, hi = band(item, int(slots))
            if not lo <= value <= hi:
                problems.append(Problem(item_id, st, ms, "range",
                                        f"value {value:.4f} outside [{lo:g}, {hi:g}]", block))
    return problems


def _days(month_start_ms: int, tz: ZoneInfo) -> list[int]:
    end = next_period_start(month_start_ms, "month", tz)
    out = []
    cur = month_start_ms
    while cur < end:
        out.append(cur)
        cur = next_period_start(cur, "day", tz)
    return out
