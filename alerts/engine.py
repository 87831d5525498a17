"""The alert engine: rules over live points, evaluated by event time, one alert per (rule, source).

Lifecycle of one alert (ThingsBoard-style separate raise and clear conditions, Prometheus-style ``for``)::

    inactive ──breach──▶ pending ──breach held for for_secs──▶ firing ──clear──▶ resolved (→ inactive)
                           │                                    ▲  │
                           └── no longer breaching ─▶ inactive  └──┘ breach or between: stays firing

* Time is the points' event time (``ts_ms``), never the wall clock, so a replayed or back-filled stream raises
  the same alerts as the live one. Per (rule, source) a point older than the last one seen is late: it is
  counted (``dropped{reason="late_point"}``) and does not change state.
* A rule turns each point into an :class:`Observation` with a :class:`Condition`: ``breach`` (the raise
  condition holds), ``clear`` (the clear condition holds) or ``between`` (inside the hysteresis band).
  A pending alert needs an unbroken run of ``breach``; a firing alert resolves only on ``clear``, so a value
  oscillating between the clear and the raise threshold does not flap.
* A ``bad`` point carries no value: it neither raises nor clears (it is not 0). Staleness is the business of a
  separate time-based rule, which :meth:`AlertEngine.tick` drives.
* ``notify`` is called on firing and on resolved, never on pending, exactly once per transition, with an
  immutable :class:`Alert` whose ``version`` grows with every change of that alert id (across cycles too),
  so a receiver can drop an out-of-order update. An exception from ``notify`` is logged and counted
  (``errors{stage="alerts"}``); evaluation goes on.

New rule kinds (grades, offline, budgets) implement the :class:`Rule` protocol; the lifecycle stays here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from energymon.config import ThresholdRule
from energymon.interfaces import Clock
from energymon.metrics import PipelineMetrics, StageMetrics
from energymon.schema import Point, Quality

__all__ = [
    "Alert",
    "AlertEngine",
    "AlertState",
    "Condition",
    "Observation",
    "Rule",
    "ThresholdCondition",
]

log = logging.getLogger("energymon.alerts")

STAGE = "alerts"


class AlertState(StrEnum):
    """State of an alert. ``resolved`` is the final record of a cycle; the next breach starts a new cycle."""

    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class Condition(StrEnum):
    """What one observation says about a rule's condition."""

    BREACH = "breach"  # the raise condition holds
    BETWEEN = "between"  # neither: inside the hysteresis band between clear and raise thresholds
    CLEAR = "clear"  # the clear condition holds


@dataclass(frozen=True, slots=True)
class Observation:
    """One evaluation of a rule for one source at one event time."""

    source: str
    ts_ms: int
    condition: Condition
    value: float | None
    threshold: float | None


@dataclass(frozen=True, slots=True)
class Alert:
    """One state of one alert. Immutable: every change is a new record with a higher ``version``.

    Times are event times in ms since the epoch, except ``last_notified_ms``, which is the engine clock's time
    when the record was handed to ``notify`` (None for records never notified, e.g. pending).
    """

    rule_id: str
    source: str
    state: AlertState
    severity: str
    audience: tuple[str, ...]
    summary: str
    value: float | None
    threshold: float | None
    started_ms: int
    fired_ms: int | None = None
    resolved_ms: int | None = None
    last_notified_ms: int | None = None
    version: int = 1
    notifiers: tuple[str, ...] = ()
    id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", f"{self.rule_id}:{self.source}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (enums as strings, tuples as lists)."""
        return {
            "id": self.id,
            "rule_id": self.rule_id,
            "source": self.source,
            "state": self.state.value,
            "severity": self.severity,
            "audience": list(self.audience),
            "summary": self.summary,
            "value": self.value,
            "threshold": self.threshold,
            "started_ms": self.started_ms,
            "fired_ms": self.fired_ms,
            "resolved_ms": self.resolved_ms,
            "last_notified_ms": self.last_notified_ms,
            "version": self.version,
            "notifiers": list(self.notifiers),
        }


@runtime_checkable
class Rule(Protocol):
    """An alert rule: turns points (and the passage of time) into observations per source.

    The engine calls :meth:`evaluate` for every point whose (meter, quantity) is in :meth:`watches` (every
    point if it returns None) and :meth:`tick` on each engine tick, under the engine's lock (never
    concurrently).
    """

    @property
    def id(self) -> str:
        """Rule id, unique in the engine; alert ids are ``{rule id}:{source}``."""
        ...

    @property
    def severity(self) -> str:
        """``info``, ``warning`` or ``critical``."""
        ...

    @property
    def audience(self) -> tuple[str, ...]:
        """Who the alert is for (``energy_manager``, ``regulator``)."""
        ...

    @property
    def summary(self) -> str:
        """One-line human description."""
        ...

    @property
    def notifiers(self) -> tuple[str, ...]:
        """Notifier ids to route to (empty = all)."""
        ...

    @property
    def for_ms(self) -> int:
        """How long (event time) the breach must hold before the alert fires."""
        ...

    def watches(self) -> Collection[tuple[str, str]] | None:
        """The (meter, quantity) pairs this rule reads, or None for every point."""
        ...

    def evaluate(self, point: Point) -> Observation | None:
        """Observe one point; None if the point says nothing to this rule (other series, bad quality)."""
        ...

    def tick(self, now_ms: int) -> Sequence[Observation]:
        """Observations due to the passage of time (e.g. a meter gone silent); empty for value rules."""
        ...


class ThresholdCondition:
    """:class:`~energymon.config.ThresholdRule` as a :class:`Rule`: the source is the meter id.

    An ``above`` rule breaches when value > above and clears when value <= clear_above (default: above);
    a ``below`` rule breaches when value < below and clears when value >= clear_below (default: below).
    Good and uncertain points count; bad points are ignored.
    """

    def __init__(self, rule: ThresholdRule) -> None:
        self.rule = rule
        self.id = rule.id
        self.severity = rule.severity
        self.audience = tuple(rule.audience)
        self.notifiers = tuple(rule.notifiers)
        self.for_ms = round(rule.for_secs * 1000)
        self._key = (rule.meter, rule.quantity)
        if rule.above is not None:
            self._above = True
            self.threshold = rule.above
            self.clear = rule.clear_above if rule.clear_above is not None else rule.above
            default = f"{rule.quantity} of {rule.meter} above {rule.above:g}"
        else:
            assert rule.below is not None  # the model guarantees exactly one of above / below
            self._above = False
            self.threshold = rule.below
            self.clear = rule.clear_below if rule.clear_below is not None else rule.below
            default = f"{rule.quantity} of {rule.meter} below {rule.below:g}"
        if rule.for_secs:
            default += f" for {rule.for_secs:g} s"
        self.summary = rule.summary or default

    def watches(self) -> Collection[tuple[str, str]]:
        """The one series the rule reads."""
        return (self._key,)

    def condition(self, value: float) -> Condition:
        """Classify a value against the raise and clear thresholds."""
        if self._above:
            if value > self.threshold:
                return Condition.BREACH
            return Condition.CLEAR if value <= self.clear else Condition.BETWEEN
        if value < self.threshold:
            return Condition.BREACH
        return Condition.CLEAR if value >= self.clear else Condition.BETWEEN

    def evaluate(self, point: Point) -> Observation | None:
        """Observe a point of the rule's series; bad points (no value) say nothing."""
        if (point.meter, point.quantity) != self._key or point.quality is Quality.BAD or point.value is None:
            return None
        return Observation(point.meter, point.ts_ms, self.condition(point.value), point.value, self.threshold)

    def tick(self, now_ms: int) -> Sequence[Observation]:
        """Threshold rules are driven by points only."""
        return ()


@dataclass(slots=True)
class _Track:
    """State of one (rule, source)."""

    last_ts: int | None = None
    alert: Alert | None = None  # the pending or firing alert; None while inactive
    version: int = 0


class AlertEngine:
    """Evaluates rules over points and calls ``notify`` on firing and resolved transitions.

    Thread-safe: :meth:`observe`, :meth:`tick` and :meth:`active` may be called from any thread; calls are
    serialised, and ``notify`` runs on the caller's thread under the engine lock, in transition order, so it
    must not block (notifiers queue and deliver in the background).

    Args:
        rules: threshold rules from the plant file, or any :class:`Rule`.
        notify: receives every firing and resolved :class:`Alert`.
        clock: stamps ``last_notified_ms``; state is driven by event time only.
        metrics: counts points (``received``), notifications (``sent``), late points and notify errors.

    Raises:
        ValueError: two rules share an id.
    """

    def __init__(
        self,
        rules: Sequence[ThresholdRule | Rule],
        *,
        notify: Callable[[Alert], None],
        clock: Clock,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self._rules: list[Rule] = [
            ThresholdCondition(r) if isinstance(r, ThresholdRule) else r for r in rules
        ]
        seen: set[str] = set()
        for rule in self._rules:
            if rule.id in seen:
                raise ValueError(f"duplicate alert rule id {rule.id!r}")
            seen.add(rule.id)
        self._notify = notify
        self._clock = clock
        self._stage: StageMetrics | None = metrics.stage(STAGE) if metrics is not None else None
        self._index: dict[tuple[str, str], list[Rule]] = {}
        self._every: list[Rule] = []
        for rule in self._rules:
            keys = rule.watches()
            if keys is None:
                self._every.append(rule)
            else:
                for key in keys:
                    self._index.setdefault(key, []).append(rule)
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._lock = threading.RLock()

    @property
    def rules(self) -> list[Rule]:
        """The rules, in configuration order."""
        return list(self._rules)

    def observe(self, points: Iterable[Point]) -> None:
        """Evaluate every rule that reads each point, in order, by the points' event time."""
        with self._lock:
            n = 0
            for point in points:
                n += 1
                rules = self._index.get((point.meter, point.quantity))
                for rule in rules or ():
                    self._observe_one(rule, point)
                for rule in self._every:
                    self._observe_one(rule, point)
            if self._stage is not None and n:
                self._stage.received(n)

    def tick(self, now_ms: int) -> None:
        """Let time-based rules (offline, schedules) observe the passage of event time ``now_ms``."""
        with self._lock:
            for rule in self._rules:
                for obs in rule.tick(now_ms):
                    self._apply(rule, obs)

    def active(self) -> list[Alert]:
        """Pending and firing alerts, firing first, then by severity (critical first) and id."""
        rank = {"critical": 0, "warning": 1, "info": 2}
        with self._lock:
            alerts = [t.alert for t in self._tracks.values() if t.alert is not None]
        return sorted(alerts, key=lambda a: (a.state is not AlertState.FIRING, rank.get(a.severity, 3), a.id))

    def get(self, alert_id: str) -> Alert | None:
        """The pending or firing alert with this id, if any."""
        rule_id, _, source = alert_id.partition(":")
        with self._lock:
            track = self._tracks.get((rule_id, source))
            return track.alert if track is not None else None

    # ------------------------------------------------------------------ internals

    def _observe_one(self, rule: Rule, point: Point) -> None:
        obs = rule.evaluate(point)
        if obs is not None:
            self._apply(rule, obs)

    def _apply(self, rule: Rule, obs: Observation) -> None:
        track = self._tracks.get((rule.id, obs.source))
        if track is None:
            track = self._tracks[(rule.id, obs.source)] = _Track()
        if track.last_ts is not None and obs.ts_ms < track.last_ts:
            if self._stage is not None:
                self._stage.dropped("late_point")
            return
        track.last_ts = obs.ts_ms
        current = track.alert
        if current is None:
            if obs.condition is Condition.BREACH:
                track.version += 1
                pending = Alert(
                    rule_id=rule.id, source=obs.source, state=AlertState.PENDING, severity=rule.severity,
                    audience=rule.audience, summary=rule.summary, value=obs.value, threshold=obs.threshold,
                    started_ms=obs.ts_ms, version=track.version, notifiers=rule.notifiers,
                )
                if rule.for_ms <= 0:
                    self._fire(track, pending, obs)
                else:
                    track.alert = pending
            return
        if current.state is AlertState.PENDING:
            if obs.condition is not Condition.BREACH:
                track.alert = None  # the breach did not hold for for_secs: silently back to inactive
            elif obs.ts_ms - current.started_ms >= rule.for_ms:
                track.version += 1
                self._fire(track, current, obs)
            return
        if obs.condition is Condition.CLEAR:  # firing: only the clear condition resolves
            track.version += 1
            track.alert = None
            self._emit(replace(
                current, state=AlertState.RESOLVED, value=obs.value, resolved_ms=obs.ts_ms,
                version=track.version,
            ))

    def _fire(self, track: _Track, alert: Alert, obs: Observation) -> None:
        firing = replace(
            alert, state=AlertState.FIRING, value=obs.value, threshold=obs.threshold, fired_ms=obs.ts_ms,
            version=track.version,
        )
        track.alert = self._emit(firing)

    def _emit(self, alert: Alert) -> Alert:
        """Stamp and hand a record to ``notify``; return the stamped record."""
        alert = replace(alert, last_notified_ms=self._clock.now_ms())
        log.info("alert %s %s (v%d): %s value=%s", alert.id, alert.state.value, alert.version, alert.summary,
                 alert.value)
        try:
            self._notify(alert)
        except Exception as exc:
            log.exception("notify failed for alert %s %s", alert.id, alert.state.value)
            if self._stage is not None:
                self._stage.error(exc)
        else:
            if self._stage is not None:
                self._stage.sent()
        return alert
