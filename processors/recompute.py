"""Recompute periods from stored counter readings: the authoritative accounting behind reports.

The live path (:mod:`.accounting`) books each interval as it arrives and ignores readings older than a counter's
last one. This module starts again from the readings themselves, in event time, so late, replayed or corrected
readings land in the period they belong to and every period touching them is recomputed:

1. **Counters → intervals.** Per meter, readings sorted by time (one per timestamp, the last one written wins,
   as in the store). A meter whose readings only ever grow plausibly and which has no recorded replacement in
   the window takes a vectorised path (interval = difference of consecutive readings); any other meter goes
   through :class:`~.counters.CounterTracker`, the class the live path uses, so rollover, glitches, spikes,
   rebases and replacements follow exactly the same rules.
2. **Intervals → 15-minute slots.** Each interval's amount is spread over time: the cumulative booked amount
   is a piecewise-linear curve through the interval ends, and a slot's amount is the curve's rise across the
   slot (proportional-to-time splitting, done with one ``np.interp``). An interval longer than the gap policy's
   ``min_gap_secs`` (default twice the meter's expected interval) is spread the same way (``spread``) or booked
   whole in the slot where it ends (``flag``).
   Every zone's UTC offset is a multiple of 15 minutes, so UTC quarter hours are local quarter hours and every
   local hour, day, month and year is a run of whole slots.
3. **Slots → energy.** Slot amounts times the factors of their local day (:meth:`.rules.PlantRules.factors`):
   kgce 当量值, kgce 等价值, kg CO2; summed per product (contributions: counted, exported, 原料用能, recovered;
   shared meters by share or by the day's output) and for the enterprise.
4. **Periods.** 15 min, hour, day, month, year (local calendar) by summing slots; ``ytd`` from the local new
   year to the end of each month (or of the window); ``report`` = the whole requested window.
5. **Checks.** Data quality per meter and day (completeness of the expected readings, the reading nearest 00:00),
   per month (sum of daily values vs the counter's span between the month's ends, the reading nearest day 1
   00:00); energy balance (一级 vs Σ 二级); the energy budget (year to date vs the pro-rated annual budget).

Readings before ``start`` (``lookback``) and after ``end`` are used to split the intervals that straddle the
window's ends; they are not reported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from energymon import units
from energymon.accounting_config import MeterRole
from energymon.counters import LEARNED_BOUND_FACTOR, DeltaFlag
from energymon.processors.accounting import next_period_start, period_start, period_starts
from energymon.processors.grading import LEVEL_NAMES
from energymon.processors.rules import KGOE_PER_KGCE, KWH_PER_KGCE, Contribution, PlantRules

__all__ = [
    "FLAG_NAMES",
    "MeterReadings",
    "Recomputation",
    "meter_slots",
    "readings_from_frame",
    "recompute",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

QUARTER_MS = 900_000
DAY_MS = 86_400_000
#: Interval quality flags counted per meter and day (``n_<flag>`` fields).
FLAG_NAMES = ("rollover", "rebased", "replaced", "gap_spread", "gap_at_end")
_FLAG_CODE = {DeltaFlag.OK: 0, DeltaFlag.ROLLOVER: 1, DeltaFlag.REBASED: 2, DeltaFlag.REPLACED: 3}


@dataclass(frozen=True, slots=True)
class MeterReadings:
    """Good counter readings of one meter: strictly increasing ``ts`` (ms, UTC) and their values."""

    ts: I64
    value: F64

    @staticmethod
    def of(ts: Iterable[int], value: Iterable[float]) -> MeterReadings:
        """Sort, drop non-finite values and keep the last value per timestamp."""
        t = np.asarray(list(ts) if not isinstance(ts, np.ndarray) else ts, dtype=np.int64)
        v = np.asarray(list(value) if not isinstance(value, np.ndarray) else value, dtype=np.float64)
        return _clean(t, v)


def _clean(t: I64, v: F64) -> MeterReadings:
    finite = np.isfinite(v)
    if not finite.all():
        t, v = t[finite], v[finite]
    if t.size > 1 and not (np.diff(t) > 0).all():
        order = np.argsort(t, kind="stable")
        t, v = t[order], v[order]
        keep = np.ones(t.size, dtype=bool)
        keep[:-1] = t[1:] != t[:-1]  # the last of equal timestamps wins (store upsert semantics)
        t, v = t[keep], v[keep]
    return MeterReadings(t, v)


def readings_from_frame(frame: Any, *, tz: Any = None) -> dict[str, MeterReadings]:
    """Group a readings frame by meter.

    Args:
        frame: a pandas DataFrame with ``ts`` (epoch ms, or datetimes; naive ones are local time in ``tz``),
            ``meter_id`` (or ``meter``) and ``value``; an optional ``quality`` column keeps ``good`` rows only.
            A frame already sorted by meter then time is grouped without a sort.
        tz: the plant's time zone, for naive datetimes.
    """
    meter_col = "meter_id" if "meter_id" in frame.columns else "meter"
    if "quality" in frame.columns:
        frame = frame[frame["quality"].astype(str).str.lower().isin(["good", "", "nan"])]
    ts = _ts_ms(frame["ts"], tz)
    values = frame["value"].to_numpy(dtype=np.float64, copy=False)
    meters = frame[meter_col]
    if isinstance(meters.dtype, pd.CategoricalDtype):
        codes = meters.cat.codes.to_numpy()
        names = [str(c) for c in meters.cat.categories]
    else:
        codes, uniques = pd.factorize(meters, sort=False)
        names = [str(u) for u in uniques]
    codes = np.asarray(codes)
    if codes.size > 1 and not bool((codes[1:] >= codes[:-1]).all()):
        order = np.argsort(codes, kind="stable")  # group by meter; each group is time-sorted by _clean
        codes, ts, values = codes[order], ts[order], values[order]
    cuts = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    starts = np.concatenate(([0], cuts)).astype(np.int64)
    ends = np.concatenate((cuts, [codes.size])).astype(np.int64)
    out: dict[str, MeterReadings] = {}
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        if b > a:
            out[names[int(codes[a])]] = _clean(ts[a:b], values[a:b])
    return out


def _ts_ms(col: Any, tz: Any) -> I64:
    """Epoch ms from numbers (ms), datetimes, or ISO 8601 text (with an offset, or naive = local time in ``tz``)."""
    if pd.api.types.is_numeric_dtype(col.dtype):
        return np.asarray(col.to_numpy(), dtype=np.int64)
    if pd.api.types.is_datetime64_any_dtype(col.dtype):
        parsed = col
    else:
        text = col.astype(str)
        aware = text.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True)
        if bool(aware.all()):
            parsed = pd.to_datetime(text, format="ISO8601", utc=True)
        elif not bool(aware.any()):
            parsed = pd.to_datetime(text, format="ISO8601")
        else:
            raise ValueError("readings mix timestamps with and without a UTC offset")
    if getattr(parsed.dt, "tz", None) is None:
        if tz is None:
            raise ValueError("readings have naive timestamps and no time zone was given")
        parsed = parsed.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
    if parsed.isna().any():
        raise ValueError("a reading's timestamp does not exist in the plant's time zone (DST gap or fold)")
    ms = parsed.dt.tz_convert("UTC").dt.as_unit("ms").astype("int64").to_numpy()
    return np.asarray(ms, dtype=np.int64)


# --------------------------------------------------------------------------- the time grid


@dataclass(slots=True)
class Grid:
    """15-minute slots covering ``[start_ms, end_ms)`` and the local periods made of them."""

    start_ms: int
    end_ms: int
    n: int
    edges: F64  # slot edges (n + 1), ms as float for np.interp
    starts: dict[str, list[int]]  # period → starts (ms) of the periods inside the grid
    index: dict[str, I64]  # period → slot index of each start
    days: list[date]
    day_of_slot: I64  # slot → index into days
    day_len_ms: I64

    @staticmethod
    def build(start_ms: int, end_ms: int, tz: Any) -> Grid:
        n = (end_ms - start_ms) // QUARTER_MS
        edges = start_ms + QUARTER_MS * np.arange(n + 1, dtype=np.float64)
        starts: dict[str, list[int]] = {}
        index: dict[str, I64] = {}
        for period in ("hour", "day", "month", "year"):
            ps = [max(s, start_ms) for s in period_starts(start_ms, end_ms, period, tz)]
            starts[period] = ps
            index[period] = np.asarray([(s - start_ms) // QUARTER_MS for s in ps], dtype=np.int64)
        starts["15min"] = [start_ms + QUARTER_MS * i for i in range(n)]
        index["15min"] = np.arange(n, dtype=np.int64)
        day_idx = index["day"]
        days = [datetime.fromtimestamp(s / 1000, tz).date() for s in starts["day"]]
        counts = np.diff(np.append(day_idx, n))
        day_of_slot = np.repeat(np.arange(len(days), dtype=np.int64), counts)
        day_len = counts.astype(np.int64) * QUARTER_MS
        return Grid(start_ms, end_ms, int(n), edges, starts, index, days, day_of_slot, day_len)

    def sums(self, slots: F64, period: str) -> F64:
        """Per-period sums of a slot array."""
        if period == "15min":
            return slots
        idx = self.index[period]
        if self.n == 0 or idx.size == 0:
            return np.zeros(len(self.starts[period]))
        return np.add.reduceat(slots, idx)

    def slot(self, ts_ms: int) -> int:
        """Slot index of an instant on the grid's boundaries (clamped)."""
        return int(min(max((ts_ms - self.start_ms) // QUARTER_MS, 0), self.n))


# --------------------------------------------------------------------------- results


@dataclass(slots=True)
class _Acc:
    """Slot accumulators of one scope (a product or the enterprise) and one carrier."""

    kgce: F64
    kgce_equal: F64
    consumed: F64  # in the carrier's display unit
    kwh: F64  # electricity only
    feedstock: F64
    exported: F64
    recovered: F64
    co2: F64
    equal_missing: bool = False
    co2_missing: bool = False

    @staticmethod
    def zeros(n: int) -> _Acc:
        z = np.zeros
        return _Acc(z(n), z(n), z(n), z(n), z(n), z(n), z(n), z(n))


@dataclass(slots=True)
class Recomputation:
    """What :func:`recompute` returns: frames per scope, plus the grid and the rules used.

    Frames (pandas), all timestamps ms UTC of the period start:

    * ``meters``: meter, period (day, month, year, report), start, consumed, unit, kgce, kgce_equal, co2_kg,
      n_<flag> counts of intervals by quality flag, n_rejected readings;
    * ``products``: product, indicator, unit, period (15min, hour, day, month, year, ytd, report), start, end,
      output, kgce, kgce_equal, kgce_feedstock, kgce_exported, kgce_recovered, electricity_kwh, value and the
      grade (status, quota_grade, each level and the gap to it in units and percent, rule);
    * ``product_carriers``: product, carrier, unit, period (day, month, ytd, report), start, consumed, kgce;
    * ``enterprise``: period, start, end, kgce, kgce_equal, kgce_feedstock, kgce_dual_control,
      kgce_dual_control_equal, kgce_exported, kgce_recovered, co2_kg;
    * ``enterprise_carriers``: carrier, unit, period (day, month, ytd, report), start, consumed, kgce, co2_kg;
    * ``quality_days``: meter, start, readings, expected, completeness_pct, complete, start_offset_s, start_ok;
    * ``quality_months``: meter, start, daily_sum, monthly_span, diff_pct, consistent, start_offset_s, start_ok;
    * ``balance``: group, carrier, unit, period (day, month, report), start, parents, children, loss, loss_pct,
      flagged, max_loss_pct;
    * ``budget``: period (day, report), start, year, annual_tce, prorated_tce, ytd_tce, ratio_pct, status
      (green, yellow, red), projected_tce;
    * ``gaps``: meter, start, end, amount (counter units): the intervals longer than the meter's gap threshold
      that touch the window, whose amount was estimated (spread over the gap, or booked where it ends).
    """

    rules: PlantRules
    grid: Grid
    start_ms: int
    end_ms: int
    ytd_start_ms: int
    meters: pd.DataFrame
    products: pd.DataFrame
    product_carriers: pd.DataFrame
    enterprise: pd.DataFrame
    enterprise_carriers: pd.DataFrame
    quality_days: pd.DataFrame
    quality_months: pd.DataFrame
    balance: pd.DataFrame
    budget: pd.DataFrame
    carrier_units: dict[str, str]
    missing: list[str] = field(default_factory=list)  # meters without readings, factors not found...
    gaps: pd.DataFrame = field(default_factory=pd.DataFrame)


# --------------------------------------------------------------------------- column builder


class _Cols:
    """Builds a frame from column arrays appended block by block (missing columns are filled with NaN/None)."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {}
        self.n = 0

    def add(self, n: int, **columns: Any) -> None:
        if n == 0:
            return
        for name in columns:
            if name not in self.cols:
                self.cols[name] = [_filler(columns[name], self.n)] if self.n else []
        for name, parts in self.cols.items():
            if name in columns:
                value = columns[name]
                if isinstance(value, np.ndarray):
                    parts.append(value)
                else:
                    arr = np.empty(n, dtype=object if isinstance(value, str | dict | list) or value is None else
                                   type(np.asarray(value).dtype.type(0)))
                    arr[:] = value
                    parts.append(arr)
            else:
                parts.append(_filler(parts[0] if parts else None, n))
        self.n += n

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({name: np.concatenate(parts) if parts else [] for name, parts in self.cols.items()})


def _filler(like: Any, n: int) -> Any:
    if isinstance(like, np.ndarray) and like.dtype.kind in "fiub":
        return np.full(n, np.nan)
    if isinstance(like, int | float) and not isinstance(like, bool):
        return np.full(n, np.nan)
    arr = np.empty(n, dtype=object)
    arr[:] = None
    return arr


def _grade_columns(rules: PlantRules, pid: str, indicator: str, values: F64, ends: I64) -> dict[str, Any]:
    """Vectorised :func:`grading.grade_value` against the levels of each period's last local day."""
    n = values.size
    if n == 0:
        return {}
    local = pd.to_datetime(ends - 1, unit="ms", utc=True).tz_convert(rules.tz)
    day_codes = (local.year * 10000 + local.month * 100 + local.day).to_numpy()
    uniq, inverse = np.unique(day_codes, return_inverse=True)
    levels = [rules.levels(pid, indicator, date(int(c) // 10000, int(c) // 100 % 100, int(c) % 100)) for c in uniq]
    if all(lv is None for lv in levels):
        return {}
    table = {name: np.asarray([np.nan if lv is None or lv.level(name) is None else lv.level(name) for lv in levels],
                              dtype=np.float64) for name in LEVEL_NAMES}
    lv = {name: table[name][inverse] for name in LEVEL_NAMES}
    rules_by_day = np.empty(len(levels), dtype=object)
    for i, x in enumerate(levels):
        rules_by_day[i] = None if x is None else x.rule()
    out: dict[str, Any] = {name: lv[name] for name in LEVEL_NAMES}
    with np.errstate(invalid="ignore", divide="ignore"):
        for name in LEVEL_NAMES:
            gap = values - lv[name]
            out[f"gap_{name}"] = gap
            out[f"gap_{name}_pct"] = np.where(lv[name] == 0, np.nan, 100.0 * gap / np.abs(lv[name]))
        over = values - lv["grade_3"] > 0
        policy = ~np.isnan(lv["benchmark"]) | ~np.isnan(lv["baseline"])
        status = np.where(over, 4, np.where(
            values - lv["baseline"] > 0, 3, np.where(values - lv["benchmark"] <= 0, 1, 2)))
        quota = np.where(np.isnan(lv["grade_3"]), np.nan, 4.0)
        for k, name in ((3, "grade_3"), (2, "grade_2"), (1, "grade_1")):
            quota = np.where(~np.isnan(lv[name]) & (values <= lv[name]), float(k), quota)
    # 标杆/基准 status only where policy levels exist (or the value is over the mandatory limit)
    out["status"] = np.where(policy | over, status, np.nan)
    out["quota_grade"] = quota
    out["rule"] = rules_by_day[inverse]
    return out


def meter_slots(rc: Recomputation, readings: Mapping[str, MeterReadings], meter_id: str) -> np.ndarray:
    """A meter's consumption per 15-minute slot of ``rc``'s grid, booked exactly as :func:`recompute` books it
    (counter cleaning, gap policy, spreading in proportion to time); used by the provincial uplink's statType 0.
    """
    rules = rc.rules
    r = readings.get(meter_id)
    if r is None or r.ts.size < 2:
        return np.zeros(rc.grid.n)
    booked = _intervals(rules, meter_id, r)
    s, e, a = booked.starts, booked.ends, booked.amounts
    gap_at_end = rules.acc.gap_policy.mode == "flag"
    curve = _curve(s, e, a, rules.acc.gap_secs(meter_id) * 1000, gap_at_end, rc.grid.edges)
    return np.asarray(np.diff(curve), dtype=np.float64)



# --------------------------------------------------------------------------- per meter


@dataclass(slots=True)
class _Booked:
    """What the counter rules made of one meter's readings."""

    starts: I64
    ends: I64
    amounts: F64
    codes: npt.NDArray[np.int8]
    rejected: int  # readings set aside as glitches
    accepted_ts: I64  # the readings that count (completeness): all but the rejected ones


def _intervals(rules: PlantRules, meter_id: str, r: MeterReadings) -> _Booked:
    """The booked intervals of a meter's readings, by :class:`~energymon.counters.CounterTracker`'s rules."""
    ts, v = r.ts, r.value
    n = ts.size
    if n < 2:
        empty = np.zeros(0, dtype=np.int64)
        return _Booked(empty, empty, np.zeros(0), np.zeros(0, dtype=np.int8), 0, ts)
    counter = rules.counter_rules(meter_id)
    pending = [rep for rep in counter.replacements if int(ts[0]) < rep.at_ms <= int(ts[-1])]
    fast = None if pending else _monotone(ts, v, counter.max_rate_per_ms)
    if fast is not None:  # the tracker would book exactly these intervals
        s, e, a = fast
        return _Booked(s, e, a, np.zeros(a.size, dtype=np.int8), 0, ts)
    tracker = counter.tracker(track_rejected=True)
    starts: list[int] = []
    ends: list[int] = []
    amounts: list[float] = []
    codes: list[int] = []
    update = tracker.update
    for t, val in zip(ts.tolist(), v.tolist(), strict=True):
        delta = update(val, t)
        if delta is not None:
            starts.append(delta.start_ms)
            ends.append(delta.end_ms)
            amounts.append(delta.amount)
            codes.append(_FLAG_CODE[delta.flag])
    rejected_ts = np.asarray(tracker.rejected_ms or [], dtype=np.int64)
    accepted = ts[~np.isin(ts, rejected_ts)] if rejected_ts.size else ts
    return _Booked(
        np.asarray(starts, dtype=np.int64),
        np.asarray(ends, dtype=np.int64),
        np.asarray(amounts, dtype=np.float64),
        np.asarray(codes, dtype=np.int8),
        tracker.rejected,
        accepted,
    )


def _monotone(ts: I64, v: F64, rate: float | None) -> tuple[I64, I64, F64] | None:
    """The intervals of a counter that only grows plausibly, computed vectorised, exactly as the tracker books
    them; None when some reading needs the tracker (a fall, a rise beyond the bound)."""
    d = np.diff(v)
    dt = np.maximum(np.diff(ts), 1)
    if not bool((d >= 0).all()):
        return None
    if rate is not None:
        if bool((d <= rate * dt + 1e-9).all()):
            return ts[:-1], ts[1:], d
        return None
    # learned bound: the first rise is held and booked with the next reading as one interval
    rises = np.flatnonzero(d > 0)
    if rises.size == 0:
        return ts[:-1], ts[1:], d
    j = int(rises[0])
    if j + 1 >= d.size:  # the first rise is the last reading: still held
        return ts[:j], ts[1 : j + 1], d[:j]
    starts = np.concatenate((ts[:j], ts[j : j + 1], ts[j + 2 : -1]))
    ends = np.concatenate((ts[1 : j + 1], ts[j + 2 : j + 3], ts[j + 3 :]))
    amounts = np.concatenate((d[:j], v[j + 2 : j + 3] - v[j : j + 1], d[j + 2 :]))
    booked = amounts[j:]
    elapsed = ends[j:] - starts[j:]
    peak = np.maximum.accumulate(booked / elapsed)[:-1]  # the highest rate booked before each later interval
    if bool((booked[1:] <= LEARNED_BOUND_FACTOR * peak * elapsed[1:] + 1e-9).all()):
        return starts, ends, amounts
    return None


def _adjusted(rules: PlantRules, meter_id: str, r: MeterReadings, booked: _Booked) -> F64:
    """The counter as one continuous series: the rollovers the rules booked and recorded replacements added back."""
    v = r.value
    if v.size < 2:
        return v.copy()
    offset = np.zeros(v.size)
    cmax = rules.counter_rules(meter_id).counter_max
    if cmax is not None:
        wraps = booked.ends[booked.codes == _FLAG_CODE[DeltaFlag.ROLLOVER]]
        for end in wraps.tolist():
            offset[r.ts >= end] += cmax
    for rep in rules.replacements(meter_id):
        offset[r.ts >= rep.at_ms] += rep.old_final - rep.new_start
    return v + offset


def _curve(s: I64, e: I64, a: F64, gap_ms: float, gap_at_end: bool, at: F64) -> F64:
    """The cumulative booked amount at the instants ``at``.

    The curve rises linearly over each interval (proportional-to-time splitting) and is flat where nothing was
    booked (before the first reading, after the last, across a rejected jump). A gap under policy ``flag``
    rises only in its last 15-minute slot, so it lands whole in the period where it ends.
    """
    if a.size == 0:
        return np.zeros(at.size)
    s_eff = s
    if gap_at_end:
        gap = (e - s) > gap_ms
        if gap.any():
            s_eff = s.copy()
            s_eff[gap] = np.maximum(s[gap], (e[gap] - 1) - (e[gap] - 1) % QUARTER_MS)
    cum = np.cumsum(a)
    kt = np.empty(2 * a.size)
    kc = np.empty(2 * a.size)
    kt[0::2], kt[1::2] = s_eff, e
    kc[0::2], kc[1::2] = cum - a, cum
    return np.interp(at, kt, kc)


# --------------------------------------------------------------------------- the recompute


@dataclass(slots=True)
class _Parts:
    """One meter's slot arrays."""

    carrier: str
    consumed: F64  # in the carrier's display unit
    kgce: F64
    kgce_equal: F64 | None
    co2: F64 | None
    kwh: F64 | None


def recompute(
    rules: PlantRules,
    readings: Mapping[str, MeterReadings],
    start_ms: int,
    end_ms: int,
    *,
    with_ytd: bool = True,
    detail_periods: Sequence[str] = ("15min", "hour", "day", "month", "year"),
) -> Recomputation:
    """Recompute the window ``[start_ms, end_ms)`` from counter readings.

    Args:
        rules: the plant's rules.
        readings: meter id → good readings of its counter (include some before ``start_ms`` and after
            ``end_ms`` so the intervals across the window's ends are split correctly).
        start_ms: window start, a local day start.
        end_ms: window end (exclusive), a local day start.
        with_ytd: also compute from the local new year of the window's last day (year to date, budget).
        detail_periods: product and enterprise periods reported row by row (``ytd`` and ``report`` always are).
    """
    tz = rules.tz
    ytd_start = period_start(end_ms - 1, "year", tz)
    grid_start = min(start_ms, ytd_start) if with_ytd else start_ms
    grid = Grid.build(grid_start, end_ms, tz)
    gap_at_end = rules.acc.gap_policy.mode == "flag"
    n = grid.n
    missing: list[str] = []

    carrier_units: dict[str, str] = {}
    for info in rules.meters.values():
        if info.meter.carrier is not None:
            carrier_units.setdefault(info.meter.carrier, info.unit)

    pacc: dict[str, dict[str, _Acc]] = {p: {} for p in rules.products}
    eacc: dict[str, _Acc] = {}
    outputs: dict[str, F64] = {p: np.zeros(n) for p in rules.products}
    meter_cols = _Cols()
    qday_cols = _Cols()
    qmonth_cols = _Cols()
    gap_cols = _Cols()
    meter_day_consumed: dict[str, F64] = {}
    by_output: list[tuple[str, _Parts]] = []  # meters shared by output: split once outputs are known
    month_spans = _period_spans(grid, "month")
    month_marks = np.asarray([x for span in month_spans for x in span], dtype=np.float64)
    day_starts = np.asarray(grid.starts["day"], dtype=np.int64)
    window_days = (day_starts >= start_ms) & (day_starts < end_ms)
    for meter_id, info in rules.meters.items():
        r = readings.get(meter_id)
        if r is None or r.ts.size == 0:
            missing.append(f"meter {meter_id}: no readings")
            r = MeterReadings(np.zeros(0, dtype=np.int64), np.zeros(0))
        meter = info.meter
        gap_ms = rules.acc.gap_secs(meter_id) * 1000
        booked = _intervals(rules, meter_id, r)
        s, e, a, codes, rejected = booked.starts, booked.ends, booked.amounts, booked.codes, booked.rejected
        long = ((e - s) > gap_ms) & (e > start_ms) & (s < end_ms)
        if long.any():
            gap_cols.add(int(long.sum()), meter=meter_id, start=s[long], end=e[long], amount=a[long])
        slots = np.diff(_curve(s, e, a, gap_ms, gap_at_end, grid.edges))
        meter_day_consumed[meter_id] = grid.sums(slots, "day")
        flags_day = _flag_counts(grid, s, e, codes, gap_ms, gap_at_end)

        for pid in rules.output_meters.get(meter_id, []):
            outputs[pid] += slots * rules.output_factor.get(pid, 1.0)

        kgce = equal = co2 = None
        if meter.carrier is not None:
            kgce_day, equal_day, co2_day, notes = _day_factors(rules, meter_id, grid)
            missing += notes
            kgce = slots * _per_slot(kgce_day, grid)
            equal = None if equal_day is None else slots * _per_slot(equal_day, grid)
            co2 = None if co2_day is None else slots * _per_slot(co2_day, grid)
            parts = _Parts(meter.carrier, slots * units.convert(1.0, info.unit, carrier_units[meter.carrier]),
                           kgce, equal, co2, None if info.kwh_per_unit is None else slots * info.kwh_per_unit)
            ec = rules.enterprise_meters.get(meter_id)
            if ec is not None:
                _accumulate(eacc, parts, ec, None, n)
            if rules.output_allocated(meter_id):
                by_output.append((meter_id, parts))
            else:
                for pid, contributions in rules.product_meters.items():
                    c = contributions.get(meter_id)
                    if c is not None:
                        _accumulate(pacc[pid], parts, c, None, n)
        _meter_rows(meter_cols, meter_id, info.unit, grid, start_ms, end_ms, slots, kgce, equal, co2, flags_day,
                    rejected, window_days)

        # data quality
        _quality_days(qday_cols, rules, meter_id, grid, booked.accepted_ts)
        if month_spans:
            adjusted = _adjusted(rules, meter_id, r, booked)
            if r.ts.size >= 2:
                span = np.interp(month_marks, r.ts.astype(np.float64), adjusted)
                booked_curve = _curve(s, e, a, gap_ms, gap_at_end, month_marks)
            else:
                span = booked_curve = np.zeros(month_marks.size)
            _quality_months(qmonth_cols, rules, meter_id, month_spans, r, span, booked_curve)

    for meter_id, parts in by_output:  # each product's share of the local day's output; equal without output
        pids = rules.output_allocated(meter_id)
        day_out = np.vstack([grid.sums(outputs[p], "day") for p in pids])
        total = day_out.sum(axis=0)
        safe = np.where(total > 0, total, 1.0)
        for k, pid in enumerate(pids):
            share = np.where(total > 0, day_out[k] / safe, 1.0 / len(pids))
            _accumulate(pacc[pid], parts, rules.product_meters[pid][meter_id], share[grid.day_of_slot], n)

    periods = [*detail_periods, "ytd", "report"]
    enterprise, enterprise_carriers = _scope_frames(grid, {"": eacc}, None, rules, start_ms, end_ms, ytd_start,
                                                    carrier_units, periods)
    products, product_carriers = _scope_frames(grid, pacc, outputs, rules, start_ms, end_ms, ytd_start,
                                               carrier_units, periods)
    quality_days = qday_cols.frame()
    products = _mark_completeness(rules, products, quality_days, ytd_start)
    return Recomputation(
        rules=rules,
        grid=grid,
        start_ms=start_ms,
        end_ms=end_ms,
        ytd_start_ms=ytd_start,
        meters=meter_cols.frame(),
        products=products,
        product_carriers=product_carriers,
        enterprise=enterprise.drop(columns=["product"], errors="ignore"),
        enterprise_carriers=enterprise_carriers.drop(columns=["product"], errors="ignore"),
        quality_days=quality_days,
        quality_months=qmonth_cols.frame(),
        balance=_balance(rules, grid, meter_day_consumed, start_ms, end_ms),
        budget=_budget(rules, grid, eacc, start_ms, end_ms),
        carrier_units=carrier_units,
        missing=missing,
        gaps=gap_cols.frame(),
    )


def _accumulate(target: dict[str, _Acc], p: _Parts, c: Contribution, weight: F64 | None, n: int) -> None:
    acc = target.get(p.carrier)
    if acc is None:
        acc = target[p.carrier] = _Acc.zeros(n)

    def w(x: F64) -> F64:
        return x if weight is None else x * weight

    if c.total:
        acc.kgce += c.total * w(p.kgce)
        acc.consumed += c.total * w(p.consumed)
        if p.kgce_equal is None:
            acc.equal_missing = True
        else:
            acc.kgce_equal += c.total * w(p.kgce_equal)
        if p.co2 is None:
            acc.co2_missing = True
        else:
            acc.co2 += c.total * w(p.co2)
        if p.kwh is not None:
            acc.kwh += c.total * w(p.kwh)
    if c.feedstock:
        acc.feedstock += c.feedstock * w(p.kgce)
    if c.exported:
        acc.exported += c.exported * w(p.kgce)
    if c.recovered:
        acc.recovered += c.recovered * w(p.kgce)


def _day_factors(rules: PlantRules, meter_id: str, grid: Grid) -> tuple[F64, F64 | None, F64 | None, list[str]]:
    """Per local day: kgce, kgce 等价值 (None if a day lacks it) and kg CO2 (None if a day lacks it)."""
    from energymon.refdata import ReferenceDataError

    kg, eq, co2 = [], [], []
    notes: list[str] = []
    last: Any = None
    for day in grid.days:
        try:
            f = rules.factors(meter_id, day)
        except ReferenceDataError as exc:
            if str(exc) != last:
                notes.append(f"meter {meter_id} from {day}: {exc}")
                last = str(exc)
            kg.append(math.nan)
            eq.append(math.nan)
            co2.append(math.nan)
            continue
        kg.append(f.kgce)
        eq.append(math.nan if f.kgce_equal is None else f.kgce_equal)
        co2.append(math.nan if f.co2_kg is None else f.co2_kg)
    kga, eqa, co2a = np.asarray(kg), np.asarray(eq), np.asarray(co2)
    return (np.nan_to_num(kga, nan=0.0), None if np.isnan(eqa).any() else eqa,
            None if np.isnan(co2a).any() else co2a, notes)


def _per_slot(day_values: F64, grid: Grid) -> Any:
    if day_values.size and bool((day_values == day_values[0]).all()):
        return float(day_values[0])
    return day_values[grid.day_of_slot]


def _flag_counts(grid: Grid, s: I64, e: I64, codes: npt.NDArray[np.int8], gap_ms: float,
                 gap_at_end: bool) -> dict[str, I64]:
    """Per local day (of the interval's end): number of intervals by quality flag."""
    n_days = len(grid.days)
    if e.size == 0 or n_days == 0:
        return {name: np.zeros(n_days, dtype=np.int64) for name in FLAG_NAMES}
    gap = (e - s) > gap_ms
    day = np.searchsorted(np.asarray(grid.starts["day"], dtype=np.int64), e - 1, side="right") - 1
    inside = (e > grid.start_ms) & (e <= grid.end_ms) & (day >= 0)
    out: dict[str, I64] = {}
    for name, mask in (
        ("rollover", codes == 1),
        ("rebased", codes == 2),
        ("replaced", codes == 3),
        ("gap_spread", gap & (not gap_at_end)),
        ("gap_at_end", gap & gap_at_end),
    ):
        out[name] = np.bincount(day[mask & inside], minlength=n_days)[:n_days].astype(np.int64)
    return out


def _meter_rows(
    cols: _Cols, meter_id: str, unit: str, grid: Grid, start_ms: int, end_ms: int, slots: F64, kgce: F64 | None,
    equal: F64 | None, co2: F64 | None, flags_day: dict[str, I64], rejected: int, window_days: npt.NDArray[np.bool_],
) -> None:
    day_idx_of = np.asarray(grid.starts["day"], dtype=np.int64)
    lo, hi = grid.slot(start_ms), grid.slot(end_ms)
    for period in ("day", "month", "year", "report"):
        if period == "report":
            starts = np.asarray([start_ms], dtype=np.int64)
            flag_sums = {k: np.asarray([v[window_days].sum()]) for k, v in flags_day.items()}
        else:
            starts = np.asarray(grid.starts[period], dtype=np.int64)
            if period == "day":
                flag_sums = flags_day
            else:
                idx = np.searchsorted(day_idx_of, starts)
                flag_sums = {k: np.add.reduceat(v, idx) for k, v in flags_day.items()}

        def agg(x: F64, period: str = period) -> F64:
            return np.asarray([x[lo:hi].sum()]) if period == "report" else grid.sums(x, period)

        m = starts.size
        if m == 0:
            continue
        columns: dict[str, Any] = {"meter": meter_id, "period": period, "start": starts, "unit": unit,
                                   "consumed": agg(slots)}
        for name, arr in (("kgce", kgce), ("kgce_equal", equal), ("co2_kg", co2)):
            if arr is not None:
                columns[name] = agg(arr)
        for name in FLAG_NAMES:
            columns[f"n_{name}"] = flag_sums[name].astype(np.float64)
        columns["n_rejected"] = float(rejected) if period == "report" else np.nan
        cols.add(m, **columns)


# --------------------------------------------------------------------------- scopes → frames


def _period_spans(grid: Grid, period: str) -> list[tuple[int, int]]:
    starts = grid.starts[period]
    ends = [*starts[1:], grid.end_ms]
    return list(zip(starts, ends, strict=True))


def _spans(grid: Grid, period: str, start_ms: int, end_ms: int, ytd_start: int) -> tuple[I64, I64, I64, I64]:
    """(starts, ends, slot_lo, slot_hi) of a period's rows: calendar periods inside the window, ``ytd`` per
    month of the window's year (from the new year through that month), ``report`` = the window."""
    if period == "report":
        spans = [(start_ms, end_ms, start_ms)]
    elif period == "ytd":
        spans = [(a, min(b, end_ms), ytd_start) for a, b in _period_spans(grid, "month")
                 if a >= ytd_start and a < end_ms and b > start_ms]
    else:
        spans = [(a, b, a) for a, b in _period_spans(grid, period) if b > start_ms and a < end_ms]
    st = np.asarray([x[0] for x in spans], dtype=np.int64)
    en = np.asarray([x[1] for x in spans], dtype=np.int64)
    lo = np.asarray([grid.slot(x[2]) for x in spans], dtype=np.int64)
    hi = np.asarray([grid.slot(x[1]) for x in spans], dtype=np.int64)
    return st, en, lo, hi


def _range_sums(slots: F64, lo: I64, hi: I64) -> F64:
    cum = np.concatenate(([0.0], np.cumsum(slots)))
    return cum[hi] - cum[lo]


_FIELDS = ("kgce", "kgce_equal", "kwh", "feedstock", "exported", "recovered", "co2")


def _scope_frames(
    grid: Grid, scopes: dict[str, dict[str, _Acc]], outputs: dict[str, F64] | None, rules: PlantRules,
    start_ms: int, end_ms: int, ytd_start: int, carrier_units: dict[str, str], periods: Sequence[str],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows per scope (product or enterprise), indicator and period, and per carrier."""
    cols = _Cols()
    ccols = _Cols()
    spans = {p: _spans(grid, p, start_ms, end_ms, ytd_start) for p in periods}
    for scope, accs in scopes.items():
        indicators = rules.indicators(scope) if outputs is not None else [("", ())]
        for indicator, carriers in indicators:
            chosen = {c: a for c, a in accs.items() if not carriers or c in carriers}
            totals = {f: _total(chosen, f, grid.n) for f in _FIELDS}
            electric = chosen["electricity"].kgce if "electricity" in chosen else np.zeros(grid.n)
            equal_missing = any(a.equal_missing for a in chosen.values())
            co2_missing = any(a.co2_missing for a in chosen.values())
            unit = rules.indicator_unit(indicator) if indicator else ""
            for period in periods:
                st, en, lo, hi = spans[period]
                if st.size == 0:
                    continue
                kgce = _range_sums(totals["kgce"], lo, hi)
                feed = _range_sums(totals["feedstock"], lo, hi)
                columns: dict[str, Any] = {
                    "period": period, "start": st, "end": en, "kgce": kgce, "kgce_feedstock": feed,
                    "kgce_exported": _range_sums(totals["exported"], lo, hi),
                    "kgce_recovered": _range_sums(totals["recovered"], lo, hi),
                    "electricity_kwh": _range_sums(totals["kwh"], lo, hi),
                }
                if not equal_missing:
                    columns["kgce_equal"] = _range_sums(totals["kgce_equal"], lo, hi)
                if not co2_missing:
                    columns["co2_kg"] = _range_sums(totals["co2"], lo, hi)
                if outputs is None:
                    columns["kgce_dual_control"] = kgce - feed
                    if not equal_missing:
                        columns["kgce_dual_control_equal"] = columns["kgce_equal"] - feed
                else:
                    output = _range_sums(outputs[scope], lo, hi)
                    columns.update(product=scope, indicator=indicator, unit=unit, output=output)
                    kgoe = rules.kgoe(indicator, rules.local_date(end_ms - 1), kgce, {
                        c: (_range_sums(a.kgce, lo, hi), _range_sums(a.consumed, lo, hi), carrier_units[c])
                        for c, a in chosen.items()}) if unit.startswith("kgoe") else None
                    value = _values(unit, kgce, columns["electricity_kwh"], output,
                                    kgce - _range_sums(electric, lo, hi), rules.acc.product(scope).energy_factor, kgoe)
                    columns["value"] = value
                    if period != "15min":
                        columns.update(_grade_columns(rules, scope, indicator, value, en))
                cols.add(st.size, **columns)
        for carrier, acc in sorted(accs.items()):
            for period in ("day", "month", "ytd", "report"):
                if period not in spans:
                    spans[period] = _spans(grid, period, start_ms, end_ms, ytd_start)
                st, _en, lo, hi = spans[period]
                if st.size == 0:
                    continue
                columns = {"carrier": carrier, "unit": carrier_units.get(carrier, ""), "period": period, "start": st,
                           "consumed": _range_sums(acc.consumed, lo, hi), "kgce": _range_sums(acc.kgce, lo, hi)}
                if not acc.co2_missing:
                    columns["co2_kg"] = _range_sums(acc.co2, lo, hi)
                if outputs is not None:
                    columns["product"] = scope
                ccols.add(st.size, **columns)
    return cols.frame(), ccols.frame()


def _total(accs: dict[str, _Acc], name: str, n: int) -> F64:
    out = np.zeros(n)
    for acc in accs.values():
        out += getattr(acc, "co2" if name == "co2" else name)
    return out


def _values(unit: str, kgce: F64, kwh: F64, output: F64, kgce_other: F64, energy_factor: float | None,
            kgoe: F64 | None = None) -> F64:
    """Vectorised :func:`rules.indicator_value` (NaN without output); ``kgoe`` from :meth:`PlantRules.kgoe`."""
    oil = kgce * KGOE_PER_KGCE if kgoe is None else kgoe
    if unit == "kWh/t":
        num = kwh
    elif unit == "ratio":
        num = kwh + kgce_other * KWH_PER_KGCE
    elif unit == "kgoe/t":
        num = oil
    elif unit == "kgoe/(t*energy_factor)":
        if not energy_factor:
            return np.full(kgce.size, np.nan)
        num = oil / energy_factor
    elif unit == "kgce/100m":  # output in metres of fabric
        num = kgce * 100.0
    else:
        num = kgce
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((output != 0) & np.isfinite(output), num / np.where(output != 0, output, 1.0), np.nan)


# --------------------------------------------------------------------------- checks


def _quality_days(cols: _Cols, rules: PlantRules, meter_id: str, grid: Grid, ts: I64) -> None:
    """Completeness of the expected readings per local day (``ts``: the accepted readings; a reading the counter
    rules set aside is a missing one), and the reading nearest 00:00."""
    dq = rules.acc.data_quality
    interval_ms = max(int(rules.acc.interval_secs(meter_id) * 1000), 1)
    day_starts = np.asarray(grid.starts["day"], dtype=np.int64)
    n_days = day_starts.size
    if n_days == 0:
        return
    inside = ts[(ts >= grid.start_ms) & (ts < grid.end_ms)]
    day = np.searchsorted(day_starts, inside, side="right") - 1
    slot = (inside - day_starts[day]) // interval_ms
    first = np.ones(inside.size, dtype=bool)
    if inside.size > 1:
        first[1:] = (slot[1:] != slot[:-1]) | (day[1:] != day[:-1])
    got = np.bincount(day[first], minlength=n_days)[:n_days]
    expected = np.maximum(np.round(grid.day_len_ms / interval_ms), 1)
    pct = np.minimum(100.0, 100.0 * got / expected)
    offset = _nearest_offset_s(ts, day_starts)
    cols.add(n_days, meter=meter_id, start=day_starts, readings=got.astype(np.float64),
             expected=expected.astype(np.float64), completeness_pct=pct,
             complete=pct >= dq.completeness_min_pct, start_offset_s=offset,
             start_ok=offset <= dq.day_start_tolerance_secs)


def _nearest_offset_s(ts: I64, marks: I64) -> F64:
    """Seconds from each mark to the nearest reading (inf without readings)."""
    if ts.size == 0:
        return np.full(marks.size, np.inf)
    idx = np.searchsorted(ts, marks)
    after = np.where(idx < ts.size, (ts[np.minimum(idx, ts.size - 1)] - marks).astype(np.float64), np.inf)
    before = np.where(idx > 0, (marks - ts[np.maximum(idx - 1, 0)]).astype(np.float64), np.inf)
    return np.asarray(np.minimum(after, before) / 1000.0, dtype=np.float64)


def _quality_months(cols: _Cols, rules: PlantRules, meter_id: str, spans: list[tuple[int, int]],
                    r: MeterReadings, span_curve: F64, booked_curve: F64) -> None:
    """Σ daily values vs the counter's span over the month; the reading nearest day 1 00:00."""
    dq = rules.acc.data_quality
    starts = np.asarray([sp[0] for sp in spans], dtype=np.int64)
    span = span_curve[1::2] - span_curve[0::2]
    booked = booked_curve[1::2] - booked_curve[0::2]
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.where(span == 0, np.where(booked == 0, 0.0, np.inf), 100.0 * np.abs(booked - span) / np.abs(span))
    offset = _nearest_offset_s(r.ts, starts)
    cols.add(starts.size, meter=meter_id, start=starts, daily_sum=booked, monthly_span=span, diff_pct=diff,
             consistent=diff <= dq.daily_vs_monthly_max_pct, start_offset_s=offset,
             start_ok=offset <= dq.month_start_tolerance_secs)


def _balance_groups(rules: PlantRules) -> list[tuple[str, list[str], list[str], float]]:
    cfg = rules.acc.balance
    groups = [(g.id, list(g.parents), list(g.children),
               g.max_loss_pct if g.max_loss_pct is not None else cfg.max_loss_pct) for g in cfg.groups]
    if cfg.auto:
        by_carrier: dict[str, tuple[list[str], list[str]]] = {}
        for info in rules.meters.values():
            m = info.meter
            if m.carrier is None or m.level is None:
                continue
            parents, children = by_carrier.setdefault(m.carrier, ([], []))
            if int(m.level) == 1 and info.role is not MeterRole.EXPORT:
                parents.append(m.id)
            elif int(m.level) == 2:
                children.append(m.id)
        for carrier, (parents, children) in sorted(by_carrier.items()):
            if parents and children:
                groups.append((f"auto_{carrier}", parents, children, cfg.max_loss_pct))
    return groups


def _balance(rules: PlantRules, grid: Grid, day_consumed: dict[str, F64], start_ms: int, end_ms: int) -> pd.DataFrame:
    """一级 (parents) vs Σ 二级 (children) per day, month and the window; loss above the share is flagged."""
    cols = _Cols()
    day_starts = np.asarray(grid.starts["day"], dtype=np.int64)
    if day_starts.size == 0:
        return cols.frame()
    for gid, parents, children, max_loss in _balance_groups(rules):
        unit = rules.meters[parents[0]].unit
        carrier = rules.meters[parents[0]].meter.carrier or ""

        def total(ids: list[str], unit: str = unit) -> F64:
            out = np.zeros(day_starts.size)
            for mid in ids:
                if mid in day_consumed:
                    out = out + day_consumed[mid] * units.convert(1.0, rules.meters[mid].unit, unit)
            return out

        p_day, c_day = total(parents), total(children)
        for period in ("day", "month", "report"):
            st, _en, _lo, _hi = _spans(grid, period, start_ms, end_ms, start_ms)
            if st.size == 0:
                continue
            # day sums → any span of whole days
            d_lo = np.searchsorted(day_starts, st)
            d_hi = np.searchsorted(day_starts, _en)
            pv = _range_sums(p_day, d_lo, d_hi)
            cv = _range_sums(c_day, d_lo, d_hi)
            loss = pv - cv
            with np.errstate(invalid="ignore", divide="ignore"):
                pct = np.where(pv != 0, 100.0 * loss / np.where(pv != 0, pv, 1.0),
                               np.where(cv == 0, 0.0, -np.inf))
            cols.add(st.size, group=gid, carrier=carrier, unit=unit, period=period, start=st, parents=pv,
                     children=cv, loss=loss, loss_pct=pct, flagged=np.abs(pct) > max_loss, max_loss_pct=max_loss)
    return cols.frame()


def _budget(rules: PlantRules, grid: Grid, eacc: dict[str, _Acc], start_ms: int, end_ms: int) -> pd.DataFrame:
    """Year-to-date use vs the pro-rated annual budget at the end of each day and of the window."""
    cfg = rules.acc.budget
    if cfg is None:
        return pd.DataFrame()
    tz = rules.tz
    total = np.zeros(grid.n)
    for acc in eacc.values():
        if cfg.basis == "equal" and acc.equal_missing:
            return pd.DataFrame([{"period": "report", "start": start_ms, "at": end_ms, "status": "unknown",
                                  "note": "等价值 missing for electricity: set accounting.equal_value_kgce_per_kwh"}])
        total += acc.kgce_equal if cfg.basis == "equal" else acc.kgce
        if cfg.scope == "dual_control":
            total -= acc.feedstock
    cum = np.concatenate(([0.0], np.cumsum(total)))
    rows: list[dict[str, Any]] = []
    marks = [("day", a, b) for a, b in _period_spans(grid, "day") if start_ms < b <= end_ms]
    marks.append(("report", start_ms, end_ms))
    for period, start, at in marks:
        year_start = period_start(at - 1, "year", tz)
        year = datetime.fromtimestamp((at - 1) / 1000, tz).year
        annual = cfg.annual_tce.get(year)
        ytd = float(cum[grid.slot(at)] - cum[grid.slot(year_start)]) / 1000.0
        frac = _year_fraction(at, year_start, tz, cfg.monthly_weights)
        row: dict[str, Any] = {"period": period, "start": start, "at": at, "year": year, "ytd_tce": ytd,
                               "fraction": frac}
        if annual is None:
            row.update(status="unknown", note=f"no budget for {year}")
        else:
            prorated = annual * frac
            ratio = 100.0 * ytd / prorated if prorated > 0 else math.inf
            status = "green" if ratio <= cfg.yellow_above_pct else "yellow" if ratio <= cfg.red_above_pct else "red"
            row.update(annual_tce=annual, prorated_tce=prorated, ratio_pct=ratio, status=status,
                       projected_tce=ytd / frac if frac > 0 else math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def _year_fraction(at: int, year_start: int, tz: Any, weights: list[float] | None) -> float:
    """Share of the year's budget due by ``at``: by elapsed time, or by monthly weights (pro rata in a month)."""
    year_end = next_period_start(year_start, "year", tz)
    if weights is None:
        return (at - year_start) / (year_end - year_start)
    done = 0.0
    m = year_start
    for w in weights:
        m_end = next_period_start(m, "month", tz)
        if at >= m_end:
            done += w
        elif at > m:
            done += w * (at - m) / (m_end - m)
        m = m_end
    return done / sum(weights)


def _mark_completeness(rules: PlantRules, products: pd.DataFrame, qdays: pd.DataFrame, ytd_start: int) -> pd.DataFrame:
    """``complete``: every meter of the product (energy and output) met the completeness rule on every day of
    the period (15-minute and hourly rows are not judged)."""
    if products.empty or qdays.empty:
        return products
    incomplete = qdays.loc[~qdays["complete"].astype(bool), ["meter", "start"]]
    bad_days: dict[str, I64] = {
        str(m): np.sort(g["start"].to_numpy(dtype=np.int64)) for m, g in incomplete.groupby("meter")
    }
    members = {pid: [*rules.product_meters[pid], rules.products[pid].output.meter] for pid in rules.products}
    complete = np.ones(len(products), dtype=bool)
    pids = products["product"].to_numpy()
    starts = products["start"].to_numpy(dtype=np.int64)
    ends = products["end"].to_numpy(dtype=np.int64)
    periods = products["period"].to_numpy()
    for i in np.flatnonzero(~np.isin(periods, ["15min", "hour"])).tolist():
        a = ytd_start if periods[i] == "ytd" else int(starts[i])
        b = int(ends[i])
        for mid in members[str(pids[i])]:
            days = bad_days.get(mid)
            if days is not None and days.size:
                k = int(np.searchsorted(days, a))
                if k < days.size and days[k] < b:
                    complete[i] = False
                    break
    out = products.copy()
    out["complete"] = complete
    return out
