"""The configured rule kinds as engine :class:`~energymon.alerts.engine.Rule` objects.

:func:`build_rules` turns ``alerts.rules`` of a plant file into rules, resolving what each kind needs from the
rest of the plant (poll intervals, quantities, counters, calibration dates, the time zone, recorded meter
replacements):

==================  ==========================  ======================  ==========================================
kind                fed by                      source (alert id part)  breach
==================  ==========================  ======================  ==========================================
threshold           points                      meter                   value above / below a threshold
indicator           ``indicator`` rows          product                 period value over 限额 / worse than 基准
offline             ticks, points, gw status    meter or gateway        no good value (or gateway offline) N intervals
completeness        points, ticks               ``meter.quantity``      a local day's good points < min_pct %
range               points                      ``meter.quantity``      value outside the registered min / max
counter_backwards   points, ticks               meter                   counter decreased, no replacement recorded
counter_reset       points, ticks               meter                   counter reset or swapped, stayed at the new
                                                                        level (counter rules), no replacement
budget              ``budget`` rows             scope                   year-to-date share ≥ 80 / 90 / 100 %
calibration_due     ticks                       meter                   calibration date within N days (or past)
==================  ==========================  ======================  ==========================================
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from energymon.alerts.engine import (
    Condition,
    EscalationPolicy,
    Observation,
    Rule,
    ThresholdCondition,
)
from energymon.alerts.workdays import add_working_days
from energymon.alerts_config import (
    BudgetRule,
    CalibrationDueRule,
    CompletenessRule,
    CounterBackwardsRule,
    CounterResetRule,
    Escalation,
    IndicatorRule,
    OfflineRule,
    RangeRule,
    RuleBase,
    ThresholdRule,
)
from energymon.config import Meter, PlantConfig
from energymon.counters import CONFIRM_READINGS, CounterTracker, DeltaFlag, counter_rules, wrap_position
from energymon.interfaces import SeriesKey
from energymon.schema import Point, Quality, datetime_to_ms

__all__ = [
    "BudgetCondition",
    "CalibrationDueCondition",
    "CompletenessCondition",
    "CounterBackwardsCondition",
    "CounterResetCondition",
    "IndicatorCondition",
    "OfflineCondition",
    "RangeCondition",
    "ReplacementLog",
    "ReplacementRecord",
    "Replacements",
    "build_rules",
]

DEFAULT_PUSH_INTERVAL_SECS = 60.0
_DAY_MS = 86_400_000

#: ``replaced(meter, from_ms, to_ms)``: was a meter replacement recorded for ``meter`` in that window?
Replacements = Callable[[str, int, int], bool]


@dataclass(frozen=True, slots=True)
class ReplacementRecord:
    """A recorded meter replacement: from ``ts_ms`` on, the meter's counter restarted."""

    meter: str
    ts_ms: int


class ReplacementLog:
    """A thread-safe, growing list of replacement records; call it as a :data:`Replacements`.

    The accounting (or an operator tool) adds records while the engine runs; the ``counter_backwards`` rule asks
    it whether a decrease is explained.
    """

    def __init__(self, records: Iterable[ReplacementRecord] = ()) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, list[int]] = {}
        for r in records:
            self.add(r.meter, r.ts_ms)

    def add(self, meter: str, ts_ms: int) -> None:
        """Record a replacement of ``meter`` at event time ``ts_ms``."""
        with self._lock:
            self._records.setdefault(meter, []).append(ts_ms)

    def __call__(self, meter: str, from_ms: int, to_ms: int) -> bool:
        """True if a replacement of ``meter`` was recorded with ``from_ms <= ts <= to_ms``."""
        with self._lock:
            return any(from_ms <= t <= to_ms for t in self._records.get(meter, ()))


# --------------------------------------------------------------------------- helpers


def _poll_interval_secs(plant: PlantConfig, meter: Meter) -> float | None:
    group = getattr(meter.source, "poll_group", None)
    if group is None:
        return None
    for g in plant.gateway.poll_groups:
        if g.id == group:
            return g.interval_secs
    return None


def _quantities(plant: PlantConfig, meter: Meter) -> dict[str, tuple[str, str, float | None]]:
    try:
        return plant.quantities(meter)
    except (KeyError, ImportError, ValueError):
        return {}


def _local_midnight_ms(day: date, tz: ZoneInfo) -> int:
    return datetime_to_ms(datetime.combine(day, time(0), tzinfo=tz))


def _escalation(cfg: Escalation | None, tz: ZoneInfo) -> EscalationPolicy | None:
    if cfg is None:
        return None
    days = cfg.after_working_days
    holidays, workdays = frozenset(cfg.holidays), frozenset(cfg.workdays)

    def due(started_ms: int) -> int:
        return add_working_days(started_ms, days, tz, holidays, workdays)

    return EscalationPolicy(due=due, severity=cfg.severity, audience=tuple(cfg.audience))


class _Configured:
    """What every configured rule takes from :class:`~energymon.alerts_config.RuleBase`."""

    def __init__(self, cfg: RuleBase, default_summary: str) -> None:
        self.config = cfg
        self.id = cfg.id
        self.severity: str = cfg.severity
        self.audience: tuple[str, ...] = tuple(cfg.audience)
        self.notifiers = tuple(cfg.notifiers)
        self.summary = cfg.summary or default_summary
        self.for_ms = round(cfg.for_secs * 1000)
        self.keep_firing_for_ms = round(cfg.keep_firing_for_secs * 1000)
        self.repeat_interval_ms = round(cfg.repeat_interval_secs * 1000)
        self.escalation: EscalationPolicy | None = None

    def watches(self) -> Collection[tuple[str, str]] | None:
        """No points by default."""
        return ()

    def evaluate(self, point: Point) -> Observation | None:
        """Points say nothing by default."""
        return None

    def tick(self, now_ms: int) -> Sequence[Observation]:
        """Time says nothing by default."""
        return ()

    def _text(self, generated: str) -> str | None:
        """A per-alert summary, unless the rule has a summary of its own."""
        return None if self.config.summary else generated


# --------------------------------------------------------------------------- indicator


class IndicatorCondition(_Configured):
    """:class:`~energymon.alerts_config.IndicatorRule`: the accounting's graded ``indicator`` rows, per product.

    ``status`` is 1 标杆, 2 between, 3 worse than 基准, 4 over the 限额; ``quota_grade`` 4 fails 3级. The event
    time is the row's (the period start), or the row's ``as_of_ms`` field when present.
    """

    def __init__(self, cfg: IndicatorRule) -> None:
        what = "over the 限额" if cfg.condition == "over_limit" else "worse than 基准"
        scope = cfg.product or "a product"
        super().__init__(cfg, f"{cfg.period} 单位产品综合能耗 of {scope} {what}")
        self.cfg = cfg

    def measurements(self) -> Collection[str]:
        """Reads the ``indicator`` measurement."""
        return ("indicator",)

    def evaluate_row(self, key: SeriesKey, fields: Mapping[str, float], ts_ms: int) -> Observation | None:
        """Judge one row of the rule's period (and product)."""
        tags = dict(key.tags)
        cfg = self.cfg
        if tags.get("period") != cfg.period:
            return None
        product = tags.get("product")
        if product is None or (cfg.product is not None and product != cfg.product):
            return None
        value = fields.get("value")
        if value is None or fields.get("provisional"):  # a live period not yet covered end to end is no result
            return None
        if cfg.min_output > 0 and fields.get("output", 0.0) < cfg.min_output:
            return None
        status, quota = fields.get("status"), fields.get("quota_grade")
        if cfg.condition == "over_limit":
            if status is None and quota is None:
                return None
            breach = (status is not None and status >= 4) or (quota is not None and quota >= 4)
            threshold = fields.get("limit")
            what = "over the 限额"
        else:
            if status is None:
                return None
            breach = status >= 3
            threshold = fields.get("baseline")
            what = "worse than 基准"
        ts = int(fields["as_of_ms"]) if "as_of_ms" in fields else ts_ms
        level = f" {threshold:g}" if threshold is not None else ""
        text = f"{cfg.period} 单位产品综合能耗 of {product}: {value:.4g} {what}{level}"
        return Observation(product, ts, Condition.BREACH if breach else Condition.CLEAR, value, threshold,
                           summary=self._text(text))


# --------------------------------------------------------------------------- budget


class BudgetCondition(_Configured):
    """:class:`~energymon.alerts_config.BudgetRule`: the accounting's ``budget`` rows (``ytd_share``), per scope.

    The observation carries the reached level's severity (and audience); the engine only ever raises them
    within a cycle, so the alert climbs 80 → 90 → 100 % and resolves below the lowest level minus the margin.
    """

    def __init__(self, cfg: BudgetRule) -> None:
        super().__init__(cfg, "year-to-date energy use near or over the pro-rated 用能预算")
        self.cfg = cfg
        self.severity = cfg.levels[0].severity

    def measurements(self) -> Collection[str]:
        """Reads the ``budget`` measurement."""
        return ("budget",)

    def evaluate_row(self, key: SeriesKey, fields: Mapping[str, float], ts_ms: int) -> Observation | None:
        """Classify the share against the levels."""
        share = fields.get("ytd_share")
        if share is None:
            return None
        scope = dict(key.tags).get("scope", "enterprise")
        if self.cfg.scope is not None and scope != self.cfg.scope:
            return None
        pct = share * 100.0
        ts = int(fields["as_of_ms"]) if "as_of_ms" in fields else ts_ms
        levels = self.cfg.levels
        reached = [lv for lv in levels if pct >= lv.at_pct]
        if reached:
            lv = reached[-1]
            text = f"用能预算 {scope}: year to date {pct:.1f} % of the pro-rated budget (level {lv.at_pct:g} %)"
            return Observation(scope, ts, Condition.BREACH, pct, lv.at_pct, severity=lv.severity,
                               audience=tuple(lv.audience) if lv.audience is not None else None,
                               summary=self._text(text))
        lowest = levels[0].at_pct
        condition = Condition.BETWEEN if pct >= lowest - self.cfg.clear_margin_pct else Condition.CLEAR
        return Observation(scope, ts, condition, pct, lowest)


# --------------------------------------------------------------------------- offline


class OfflineCondition(_Configured):
    """:class:`~energymon.alerts_config.OfflineRule` for meters or gateways.

    Meters: a meter whose last good point is older than ``intervals × interval`` at tick time breaches, with
    the event time at which it became overdue (so the alert's start is when data stopped plus the timeout). A
    meter never heard from counts from the first tick (a restart does not raise alerts for data it did not
    wait for). The first good point afterwards clears.

    Gateways: ``offline`` on the status topic starts the clock; ``online`` clears.
    """

    def __init__(self, cfg: OfflineRule, plant: PlantConfig) -> None:
        self.cfg = cfg
        self.target = cfg.target
        self._timeouts: dict[str, int] = {}
        if cfg.target == "meter":
            ids = cfg.ids or [m.id for m in plant.meters]
            meters = {m.id: m for m in plant.meters}
            for mid in ids:
                interval = cfg.interval_secs
                if interval is None and mid in meters:
                    interval = _poll_interval_secs(plant, meters[mid])
                self._timeouts[mid] = round(cfg.intervals * (interval or DEFAULT_PUSH_INTERVAL_SECS) * 1000)
            what = "meter"
        else:
            ids = cfg.ids or [plant.gateway.id]
            interval = cfg.interval_secs or min(
                (g.interval_secs for g in plant.gateway.poll_groups), default=DEFAULT_PUSH_INTERVAL_SECS
            )
            for gid in ids:
                self._timeouts[gid] = round(cfg.intervals * interval * 1000)
            what = "gateway"
        super().__init__(cfg, f"{what} offline for {cfg.intervals} intervals or more")
        self.escalation = _escalation(cfg.escalate, plant.enterprise.tz)
        self._last_seen: dict[str, int] = {}
        self._offline_since: dict[str, int] = {}  # gateways
        self._flagged: set[str] = set()
        self._started: int | None = None

    def watches(self) -> Collection[tuple[str, str]] | None:
        """Meter rules read every point (and pick their meters); gateway rules read none."""
        return None if self.target == "meter" else ()

    def evaluate(self, point: Point) -> Observation | None:
        """A good or uncertain point of a watched meter: it is alive."""
        if point.quality is Quality.BAD or point.meter not in self._timeouts:
            return None
        mid = point.meter
        prev = self._last_seen.get(mid)
        if prev is not None and point.ts_ms <= prev:
            return None
        self._last_seen[mid] = point.ts_ms
        if prev is None or mid in self._flagged:  # first point since start, or back from offline
            self._flagged.discard(mid)
            return Observation(mid, point.ts_ms, Condition.CLEAR, None, None)
        return None

    def evaluate_status(self, gateway: str, online: bool, ts_ms: int) -> Observation | None:
        """The gateway's status topic: ``offline`` starts the clock, ``online`` clears."""
        if self.target != "gateway" or gateway not in self._timeouts:
            return None
        if online:
            self._offline_since.pop(gateway, None)
            self._flagged.discard(gateway)
            return Observation(gateway, ts_ms, Condition.CLEAR, None, None)
        self._offline_since.setdefault(gateway, ts_ms)
        return None

    def tick(self, now_ms: int) -> Sequence[Observation]:
        """Sources silent (or offline) for their timeout breach once."""
        if self._started is None:
            self._started = now_ms
        out: list[Observation] = []
        for sid, timeout in self._timeouts.items():
            if sid in self._flagged:
                continue
            if self.target == "meter":
                base = self._last_seen.get(sid, self._started)
            else:
                since = self._offline_since.get(sid)
                if since is None:
                    continue
                base = since
            if now_ms - base >= timeout:
                self._flagged.add(sid)
                text = (f"{self.target} {sid}: no good value for {timeout / 1000:g} s" if self.target == "meter"
                        else f"gateway {sid} offline for {timeout / 1000:g} s")
                out.append(Observation(sid, base + timeout, Condition.BREACH, (now_ms - base) / 1000,
                                       timeout / 1000, summary=self._text(text)))
        return out


# --------------------------------------------------------------------------- completeness


class CompletenessCondition(_Configured):
    """:class:`~energymon.alerts_config.CompletenessRule`: good points per item per local day vs expected.

    Points are counted once per event time (a redelivered batch does not count twice). Of a meter's accounted
    counter only the readings the counter rules accept count (:mod:`energymon.counters`: a rejected 0.0 or spike
    is a missing reading). A day is judged ``grace_secs`` after its local midnight, on the tick; the expected
    count is the part of the day since the rule started watching, divided by the item's interval. A judged day's
    late points are not counted.
    """

    def __init__(self, cfg: CompletenessRule, plant: PlantConfig) -> None:
        super().__init__(cfg, f"daily data completeness under {cfg.min_pct:g} %")
        self.cfg = cfg
        self.tz = plant.enterprise.tz
        self._interval_ms: dict[tuple[str, str], int] = {}
        self._trackers: dict[str, CounterTracker] = {}  # source → the counter rules of an accounted counter
        meters = [m for m in plant.meters if not cfg.meters or m.id in cfg.meters]
        for meter in meters:
            quantities = _quantities(plant, meter)
            if cfg.quantities:
                chosen = [q for q in cfg.quantities if not quantities or q in quantities]
            elif meter.counter is not None:
                chosen = [meter.counter]
            else:
                chosen = list(quantities)
            interval = cfg.interval_secs or _poll_interval_secs(plant, meter) or DEFAULT_PUSH_INTERVAL_SECS
            for q in chosen:
                self._interval_ms[(meter.id, q)] = round(interval * 1000)
                if q == meter.counter:
                    self._trackers[f"{meter.id}.{q}"] = counter_rules(plant, meter).tracker(track_rejected=True)
        self.escalation = _escalation(cfg.escalate, self.tz)
        self._grace_ms = round(cfg.grace_secs * 1000)
        self._counts: dict[int, dict[str, int]] = {}
        self._last_ts: dict[str, int] = {}
        self._start: int | None = None
        self._judged_until: int | None = None
        self._day: tuple[int, int] = (0, 0)

    def watches(self) -> Collection[tuple[str, str]]:
        """The items judged."""
        return tuple(self._interval_ms)

    def _day_of(self, ts_ms: int) -> tuple[int, int]:
        lo, hi = self._day
        if lo <= ts_ms < hi:
            return self._day
        day = datetime.fromtimestamp(ts_ms / 1000, self.tz).date()
        span = (_local_midnight_ms(day, self.tz), _local_midnight_ms(day + timedelta(days=1), self.tz))
        self._day = span
        return span

    def evaluate(self, point: Point) -> Observation | None:
        """Count a good point of an item (never an observation by itself)."""
        if point.quality is not Quality.GOOD:
            return None
        src = f"{point.meter}.{point.quantity}"
        last = self._last_ts.get(src)
        if last is not None and point.ts_ms <= last:
            return None
        self._last_ts[src] = point.ts_ms
        day_start, _ = self._day_of(point.ts_ms)
        if self._start is None:
            self._start = point.ts_ms
            self._judged_until = day_start
        if self._judged_until is not None and day_start < self._judged_until:
            return None
        per_day = self._counts.setdefault(day_start, {})
        per_day[src] = per_day.get(src, 0) + 1
        tracker = self._trackers.get(src)
        if tracker is not None and point.value is not None:
            tracker.update(point.value, point.ts_ms)  # its rejected readings are taken off when the day is judged
        return None

    def _rejected(self, src: str, day_start: int, day_end: int) -> int:
        """Readings of ``src`` in the day the counter rules rejected; forgets those older than the day's end."""
        tracker = self._trackers.get(src)
        if tracker is None or not tracker.rejected_ms:
            return 0
        times = tracker.rejected_ms
        n = sum(1 for t in times if day_start <= t < day_end)
        # keep the last few: they may be a level still being confirmed, which the tracker takes back by position
        older = sum(1 for t in times if t < day_end)
        del times[: max(0, older - CONFIRM_READINGS)]
        return n

    def tick(self, now_ms: int) -> Sequence[Observation]:
        """Judge every day that ended more than ``grace_secs`` ago."""
        if self._start is None:
            self._start = now_ms
        if self._judged_until is None:
            self._judged_until = self._day_of(self._start)[0]
        out: list[Observation] = []
        for _ in range(62):  # after a long stop, judge at most two months at once
            day_start, day_end = self._day_of(self._judged_until)
            if now_ms < day_end + self._grace_ms:
                break
            window = day_end - max(day_start, self._start)
            counts = self._counts.pop(day_start, {})
            label = datetime.fromtimestamp(day_start / 1000, self.tz).date().isoformat()
            for (meter, quantity), interval in self._interval_ms.items():
                expected = window / interval
                if expected < 1:
                    continue
                src = f"{meter}.{quantity}"
                got = max(0, counts.get(src, 0) - self._rejected(src, day_start, day_end))
                pct = min(100.0, 100.0 * got / expected)
                condition = Condition.BREACH if pct < self.cfg.min_pct else Condition.CLEAR
                text = f"{src} on {label}: {pct:.1f} % of {expected:.0f} expected points"
                out.append(Observation(src, day_end, condition, round(pct, 3), self.cfg.min_pct,
                                       summary=self._text(text)))
            self._judged_until = day_end
        return out

    def snapshot(self) -> dict[str, Any]:
        """Counts, last event time per item, watch start and the next day to judge."""
        return {"start": self._start, "judged_until": self._judged_until, "last_ts": dict(self._last_ts),
                "counts": {str(day): dict(c) for day, c in self._counts.items()}}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back a snapshot."""
        self._start = state.get("start")
        self._judged_until = state.get("judged_until")
        self._last_ts = {str(k): int(v) for k, v in (state.get("last_ts") or {}).items()}
        self._counts = {int(day): {str(k): int(v) for k, v in c.items()}
                        for day, c in (state.get("counts") or {}).items()}


# --------------------------------------------------------------------------- range


class RangeCondition(_Configured):
    """:class:`~energymon.alerts_config.RangeRule`: a value outside its item's registered min/max."""

    def __init__(self, cfg: RangeRule) -> None:
        super().__init__(cfg, "value outside its registered range")
        self._items = {(i.meter, i.quantity): (i.min, i.max) for i in cfg.items}

    def watches(self) -> Collection[tuple[str, str]]:
        """The registered items."""
        return tuple(self._items)

    def evaluate(self, point: Point) -> Observation | None:
        """Breach outside [min, max], clear inside; bad points say nothing."""
        bounds = self._items.get((point.meter, point.quantity))
        if bounds is None or point.value is None or point.quality is Quality.BAD:
            return None
        lo, hi = bounds
        v = point.value
        src = f"{point.meter}.{point.quantity}"
        if lo is not None and v < lo:
            return Observation(src, point.ts_ms, Condition.BREACH, v, lo,
                               summary=self._text(f"{src} = {v:g}, under its registered minimum {lo:g}"))
        if hi is not None and v > hi:
            return Observation(src, point.ts_ms, Condition.BREACH, v, hi,
                               summary=self._text(f"{src} = {v:g}, over its registered maximum {hi:g}"))
        return Observation(src, point.ts_ms, Condition.CLEAR, v, hi if hi is not None else lo)


# --------------------------------------------------------------------------- counter backwards


class CounterBackwardsCondition(_Configured):
    """:class:`~energymon.alerts_config.CounterBackwardsRule`: a counter that decreased, with no replacement.

    A decrease larger than ``tolerance`` breaches unless it is where a wrap can be (the old value near the top of
    ``counter_max``, the new one near the bottom: :func:`energymon.counters.wrap_position`) or a replacement was
    recorded within ``replacement_window_secs`` of the interval. The alert clears when the
    counter is back at the value before the drop, or (on tick) when a replacement covering the drop turns up;
    either way the counter's new value is the baseline afterwards.
    """

    def __init__(self, cfg: CounterBackwardsRule, plant: PlantConfig, replaced: Replacements) -> None:
        super().__init__(cfg, "counter went backwards without a meter replacement record")
        self.cfg = cfg
        self._replaced = replaced
        self._window_ms = round(cfg.replacement_window_secs * 1000)
        self._keys: dict[tuple[str, str], float | None] = {}
        for meter in plant.meters:
            if meter.counter is None or (cfg.meters and meter.id not in cfg.meters):
                continue
            info = _quantities(plant, meter).get(meter.counter)
            self._keys[(meter.id, meter.counter)] = info[2] if info is not None else None
        self._last: dict[str, tuple[int, float]] = {}
        self._drops: dict[str, tuple[int, float, int]] = {}  # meter → (ts before, value before, ts of drop)

    def watches(self) -> Collection[tuple[str, str]]:
        """Each watched meter's counter quantity."""
        return tuple(self._keys)

    def _explained(self, meter: str, from_ms: int, to_ms: int) -> bool:
        return self._replaced(meter, from_ms - self._window_ms, to_ms + self._window_ms)

    def evaluate(self, point: Point) -> Observation | None:
        """Compare with the last value of the counter."""
        key = (point.meter, point.quantity)
        if key not in self._keys or point.value is None or point.quality is Quality.BAD:
            return None
        mid, v, ts = point.meter, point.value, point.ts_ms
        prev = self._last.get(mid)
        if prev is not None and ts <= prev[0]:
            return None
        drop = self._drops.get(mid)
        if drop is None and prev is not None and prev[1] - self.cfg.tolerance <= v < prev[1]:
            self._last[mid] = (ts, prev[1])  # jitter: keep the high-water mark, so a slow creep down is caught
            return None
        self._last[mid] = (ts, v)
        if drop is not None:
            if v >= drop[1] - self.cfg.tolerance:
                del self._drops[mid]
                return Observation(mid, ts, Condition.CLEAR, v, drop[1])
            return Observation(mid, ts, Condition.BETWEEN, v, drop[1])
        if prev is None:
            return None
        decrease = prev[1] - v
        if decrease <= self.cfg.tolerance:
            return None
        counter_max = self._keys[key]
        if counter_max is not None and wrap_position(prev[1], v, counter_max):
            return None  # rolled over
        if self._explained(mid, prev[0], ts):
            return None
        self._drops[mid] = (prev[0], prev[1], ts)
        text = f"counter {point.quantity} of {mid} went back from {prev[1]:g} to {v:g}; no replacement recorded"
        return Observation(mid, ts, Condition.BREACH, v, prev[1], summary=self._text(text))

    def tick(self, now_ms: int) -> Sequence[Observation]:
        """A replacement recorded after the fact explains an open drop: clear it."""
        out: list[Observation] = []
        for mid, (before_ts, before_value, drop_ts) in list(self._drops.items()):
            if self._explained(mid, before_ts, drop_ts):
                del self._drops[mid]
                last = self._last.get(mid, (drop_ts, before_value))
                out.append(Observation(mid, max(drop_ts, last[0]), Condition.CLEAR, last[1], before_value))
        return out

    def snapshot(self) -> dict[str, Any]:
        """Last value per meter and the open drops."""
        return {"last": {m: list(v) for m, v in self._last.items()},
                "drops": {m: list(v) for m, v in self._drops.items()}}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back a snapshot."""
        self._last = {str(m): (int(v[0]), float(v[1])) for m, v in (state.get("last") or {}).items()}
        self._drops = {str(m): (int(v[0]), float(v[1]), int(v[2])) for m, v in (state.get("drops") or {}).items()}


# --------------------------------------------------------------------------- counter reset


class CounterResetCondition(_Configured):
    """:class:`~energymon.alerts_config.CounterResetRule`: the counter rules took a new level as an unrecorded
    reset or swap (an interval flagged ``rebased``), and no replacement explains it.

    The verdict is the gateway's where the point carries an edge interval (the interval the accounting books),
    else this rule's own :class:`~energymon.counters.CounterTracker`, built by the same counter rules. The
    alert resolves when a replacement covering the jump is recorded (on tick), or on the first point
    ``resolve_after_secs`` of event time after the jump.
    """

    def __init__(self, cfg: CounterResetRule, plant: PlantConfig, replaced: Replacements) -> None:
        super().__init__(cfg, "计数器复位或更换未登记，跨越处未计能耗 (counter reset or swapped without a "
                              "recorded replacement; nothing booked across it)")
        self.cfg = cfg
        self._replaced = replaced
        self._window_ms = round(cfg.replacement_window_secs * 1000)
        self._resolve_ms = round(cfg.resolve_after_secs * 1000)
        self._trackers: dict[tuple[str, str], CounterTracker] = {}
        for meter in plant.meters:
            if meter.counter is None or (cfg.meters and meter.id not in cfg.meters):
                continue
            self._trackers[(meter.id, meter.counter)] = counter_rules(plant, meter).tracker()
        # meter → (last good reading before the jump, jump time, time of the latest point)
        self._open: dict[str, tuple[int, int, int]] = {}
        self._tz = plant.enterprise.tz

    def watches(self) -> Collection[tuple[str, str]]:
        """Each watched meter's counter quantity."""
        return tuple(self._trackers)

    def _explained(self, meter: str, from_ms: int, to_ms: int) -> bool:
        return self._replaced(meter, from_ms - self._window_ms, to_ms + self._window_ms)

    def evaluate(self, point: Point) -> Observation | None:
        """Feed the counter rules; breach on a reset they find."""
        tracker = self._trackers.get((point.meter, point.quantity))
        if tracker is None or point.value is None or point.quality is not Quality.GOOD:
            return None
        mid, v, ts = point.meter, point.value, point.ts_ms
        before = tracker.last_ms
        iv = point.interval
        if iv is not None:
            if iv.start_ms >= ts:
                return None  # checked at the edge, closes nothing
            reset = iv.flag == DeltaFlag.REBASED.value
            jump_ms = iv.start_ms
            if ts > tracker.last_ms:
                tracker.restore(v, ts)
        else:
            delta = tracker.update(v, ts)
            if delta is None:
                return None
            reset = delta.flag is DeltaFlag.REBASED
            jump_ms = delta.start_ms
        opened = self._open.get(mid)
        if reset and not self._explained(mid, min(before, jump_ms), jump_ms):
            self._open[mid] = (before, jump_ms, ts)
            text = (f"{mid} 的计数器 {point.quantity} 于 {_local(jump_ms, self._tz)} 复位或更换，"
                    "未登记更换记录，跨越处未计能耗；"
                    f"请在 accounting.replacements 中登记并重算报表 (counter {point.quantity} of {mid} was reset "
                    "or swapped without a recorded replacement; nothing is booked across the jump)")
            return Observation(mid, ts, Condition.BREACH, v, None, summary=self._text(text))
        if opened is not None:
            if ts - opened[1] >= self._resolve_ms:
                del self._open[mid]
                return Observation(mid, ts, Condition.CLEAR, v, None)
            self._open[mid] = (opened[0], opened[1], max(opened[2], ts))
        return None

    def tick(self, now_ms: int) -> Sequence[Observation]:
        """A replacement recorded after the fact explains an open reset: resolve it."""
        out: list[Observation] = []
        for mid, (before_ms, jump_ms, last_ms) in list(self._open.items()):
            if self._explained(mid, min(before_ms, jump_ms), jump_ms):
                del self._open[mid]
                out.append(Observation(mid, last_ms, Condition.CLEAR, None, None))
        return out

    def snapshot(self) -> dict[str, Any]:
        """Each counter's baseline and the open resets."""
        return {"last": {f"{m}|{q}": [t.last_value, t.last_ms] for (m, q), t in self._trackers.items()
                         if t.last_value is not None},
                "open": {m: list(v) for m, v in self._open.items()}}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back a snapshot."""
        for key, (value, ts) in (state.get("last") or {}).items():
            meter, _, quantity = str(key).partition("|")
            tracker = self._trackers.get((meter, quantity))
            if tracker is not None and value is not None:
                tracker.restore(float(value), int(ts))
        self._open = {str(m): (int(v[0]), int(v[1]), int(v[-1])) for m, v in (state.get("open") or {}).items()}


def _local(ts_ms: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz).strftime("%Y-%m-%d %H:%M")


# --------------------------------------------------------------------------- calibration


class CalibrationDueCondition(_Configured):
    """:class:`~energymon.alerts_config.CalibrationDueRule`: from ``Meter.calibration_due``, on the tick.

    Breaches from local midnight ``days_before`` days before the due date; from the due date on the
    observation carries ``overdue_severity``. Clears when the plant file moves the date (after a restart).
    """

    def __init__(self, cfg: CalibrationDueRule, plant: PlantConfig) -> None:
        super().__init__(cfg, f"meter calibration due within {cfg.days_before} days")
        self.cfg = cfg
        tz = plant.enterprise.tz
        self._due: dict[str, tuple[date, int, int]] = {}
        for meter in plant.meters:
            if meter.calibration_due is None or (cfg.meters and meter.id not in cfg.meters):
                continue
            due = meter.calibration_due
            self._due[meter.id] = (due, _local_midnight_ms(due - timedelta(days=cfg.days_before), tz),
                                   _local_midnight_ms(due, tz))
        self._last: dict[str, str] = {}

    def tick(self, now_ms: int) -> Sequence[Observation]:
        """Observe each meter when its state (ok, due soon, overdue) changes."""
        out: list[Observation] = []
        for mid, (due, warn_ms, due_ms) in self._due.items():
            state = "overdue" if now_ms >= due_ms else "due" if now_ms >= warn_ms else "ok"
            if self._last.get(mid) == state:
                continue
            self._last[mid] = state
            days_left = (due_ms - now_ms) / _DAY_MS
            if state == "ok":
                out.append(Observation(mid, now_ms, Condition.CLEAR, days_left, self.cfg.days_before))
            elif state == "due":
                text = f"meter {mid}: calibration due on {due.isoformat()}"
                out.append(Observation(mid, now_ms, Condition.BREACH, days_left, self.cfg.days_before,
                                       summary=self._text(text)))
            else:
                text = f"meter {mid}: calibration overdue since {due.isoformat()}"
                out.append(Observation(mid, now_ms, Condition.BREACH, days_left, self.cfg.days_before,
                                       severity=self.cfg.overdue_severity, summary=self._text(text)))
        return out


# --------------------------------------------------------------------------- building


def _replacements(plant: PlantConfig, extra: Replacements | Iterable[ReplacementRecord] | None) -> Replacements:
    log = ReplacementLog(
        ReplacementRecord(r.meter, datetime_to_ms(r.at)) for r in plant.accounting.replacements
    )
    if extra is None:
        return log
    if callable(extra):
        fn: Replacements = extra

        def either(meter: str, from_ms: int, to_ms: int) -> bool:
            return log(meter, from_ms, to_ms) or fn(meter, from_ms, to_ms)

        return either
    for r in extra:
        log.add(r.meter, r.ts_ms)
    return log


def build_rules(
    plant: PlantConfig,
    *,
    replacements: Replacements | Iterable[ReplacementRecord] | None = None,
) -> list[Rule]:
    """Engine rules for every rule in ``plant.alerts.rules``, in order.

    Args:
        plant: the plant file (rules, meters, poll groups, time zone, ``accounting.replacements``).
        replacements: more meter replacement records for ``counter_backwards`` (a list, a
            :class:`ReplacementLog` the accounting fills later, or any ``replaced(meter, from_ms, to_ms)``).
    """
    replaced = _replacements(plant, replacements)
    out: list[Rule] = []
    for cfg in plant.alerts.rules:
        if isinstance(cfg, ThresholdRule):
            out.append(ThresholdCondition(cfg))
        elif isinstance(cfg, IndicatorRule):
            out.append(IndicatorCondition(cfg))
        elif isinstance(cfg, OfflineRule):
            out.append(OfflineCondition(cfg, plant))
        elif isinstance(cfg, CompletenessRule):
            out.append(CompletenessCondition(cfg, plant))
        elif isinstance(cfg, RangeRule):
            out.append(RangeCondition(cfg))
        elif isinstance(cfg, CounterBackwardsRule):
            out.append(CounterBackwardsCondition(cfg, plant, replaced))
        elif isinstance(cfg, CounterResetRule):
            out.append(CounterResetCondition(cfg, plant, replaced))
        elif isinstance(cfg, BudgetRule):
            out.append(BudgetCondition(cfg))
        elif isinstance(cfg, CalibrationDueRule):
            out.append(CalibrationDueCondition(cfg, plant))
        else:  # pragma: no cover - the config union is exhaustive
            raise TypeError(f"unknown rule kind {cfg.kind!r}")
    return out
