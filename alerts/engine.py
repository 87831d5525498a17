"""The alert engine: rules over live points and accounting rows, evaluated by event time, one alert per
(rule, source), with acknowledgements, silences, reminders, escalation and a persisted state.

Lifecycle of one alert (ThingsBoard-style separate raise and clear conditions, Prometheus-style ``for`` and
``keep_firing_for``)::

    inactive ──breach──▶ pending ──breach held for_secs──▶ firing ──clear held keep_firing_for──▶ resolved
                           │                                 ▲  │                                   (→ inactive)
                           └── no longer breaching ─▶ inactive  └──┘ breach, between, or clear not held yet

* Time is the observations' event time (``ts_ms``), never the wall clock, so a replayed or back-filled stream
  raises the same alerts as the live one. Per (rule, source) an observation older than the last one seen is
  late: it is counted (``dropped{reason="late_point"}``) and does not change state.
* A rule turns each point (or accounting row, or gateway status, or engine tick) into an :class:`Observation`
  with a :class:`Condition`: ``breach`` (the raise condition holds), ``clear`` (the clear condition holds) or
  ``between`` (inside the hysteresis band). A pending alert needs an unbroken run of ``breach``; a firing alert
  resolves only on ``clear`` (held for ``keep_firing_for``), so a value oscillating between the clear and the
  raise threshold, or dipping under it briefly, does not flap.
* A ``bad`` point carries no value: it neither raises nor clears (it is not 0). Staleness is the business of
  time-based rules, which :meth:`AlertEngine.tick` drives.
* Severity and audience come from the rule, or from the observation (budget levels, overdue calibration), or
  from the rule's escalation policy once the alert is older than its deadline (the 3-working-day repair
  clock). Within one cycle they only ever go up; each rise is notified as ``escalated``.
* ``notify`` is called on firing, escalation, reminders and resolution, never on pending, with an immutable
  :class:`Alert` whose ``version`` grows with every change of that alert id (across cycles and restarts), so a
  receiver can drop an out-of-order update; ``event`` says why it was sent. Reminders (every
  ``repeat_interval``, engine clock) stop once the alert is acknowledged. A silenced alert still changes
  state but is not notified; when the silence ends the notifiers get the current state if it differs from
  what they last heard. An exception from ``notify`` is logged and counted (``errors{stage="alerts"}``);
  evaluation goes on. ``notify`` may return the ids of the notifiers it delivered to: records of the same cycle
  then keep going to them (a resolution reaches whoever heard the firing).
* With an :class:`~energymon.alerts.state.AlertStore`, every change is written to SQLite after ``notify`` and
  read back on start: a restart neither loses an active alert nor notifies it again.

Rule kinds implement :class:`Rule` (points and ticks) and optionally :class:`RowRule` (accounting rows),
:class:`StatusRule` (gateway status) and :class:`StatefulRule` (state kept across restarts); the lifecycle
stays here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from energymon.alerts.state import AlertStore, Silence
from energymon.alerts_config import ThresholdRule
from energymon.interfaces import Clock, Row, SeriesKey
from energymon.metrics import PipelineMetrics, StageMetrics
from energymon.schema import Point, Quality, WirePoint, wire_to_point

__all__ = [
    "Alert",
    "AlertEngine",
    "AlertState",
    "Condition",
    "EscalationPolicy",
    "Observation",
    "RowRule",
    "Rule",
    "StatefulRule",
    "StatusRule",
    "ThresholdCondition",
    "severity_rank",
]

log = logging.getLogger("energymon.alerts")

STAGE = "alerts"

_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


def severity_rank(severity: str) -> int:
    """Order of severities: info < warning < critical (unknown names rank lowest)."""
    return _SEVERITY_RANK.get(severity, -1)


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
    """One evaluation of a rule for one source at one event time.

    ``severity``, ``audience`` and ``summary`` override the rule's for this alert (None: the rule's).
    """

    source: str
    ts_ms: int
    condition: Condition
    value: float | None
    threshold: float | None
    severity: str | None = None
    audience: tuple[str, ...] | None = None
    summary: str | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    """One state of one alert. Immutable: every change is a new record with a higher ``version``.

    Times are event times in ms since the epoch, except ``last_notified_ms`` and ``acked_ms``, which are the
    engine clock's (None for records never notified, e.g. pending). ``event`` says why the record exists:
    ``pending``, ``firing``, ``escalated`` (severity or audience rose), ``reminder`` (same version, sent again),
    ``acknowledged`` (an operator acknowledged it; ``acked_by``, ``ack_comment``), ``resolved`` or
    ``rule_removed`` (resolved because its rule left the configuration).
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
    event: str = ""
    escalated_ms: int | None = None
    acked_by: str | None = None
    acked_ms: int | None = None
    ack_comment: str = ""
    sent_to: tuple[str, ...] = ()
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
            "event": self.event or self.state.value,
            "severity": self.severity,
            "audience": list(self.audience),
            "summary": self.summary,
            "value": self.value,
            "threshold": self.threshold,
            "started_ms": self.started_ms,
            "fired_ms": self.fired_ms,
            "resolved_ms": self.resolved_ms,
            "escalated_ms": self.escalated_ms,
            "last_notified_ms": self.last_notified_ms,
            "acked_by": self.acked_by,
            "acked_ms": self.acked_ms,
            "ack_comment": self.ack_comment,
            "version": self.version,
            "notifiers": list(self.notifiers),
        }

    def to_record(self) -> dict[str, Any]:
        """:meth:`to_dict` plus the routing bookkeeping, for the state file."""
        out = self.to_dict()
        out["event"] = self.event
        out["sent_to"] = list(self.sent_to)
        return out

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> Alert:
        """Inverse of :meth:`to_record`."""
        return cls(
            rule_id=data["rule_id"], source=data["source"], state=AlertState(data["state"]),
            severity=data["severity"], audience=tuple(data.get("audience") or ()), summary=data.get("summary", ""),
            value=data.get("value"), threshold=data.get("threshold"), started_ms=int(data["started_ms"]),
            fired_ms=data.get("fired_ms"), resolved_ms=data.get("resolved_ms"),
            last_notified_ms=data.get("last_notified_ms"), version=int(data.get("version", 1)),
            notifiers=tuple(data.get("notifiers") or ()), event=data.get("event", ""),
            escalated_ms=data.get("escalated_ms"), acked_by=data.get("acked_by"), acked_ms=data.get("acked_ms"),
            ack_comment=data.get("ack_comment", ""), sent_to=tuple(data.get("sent_to") or ()),
        )


@dataclass(frozen=True, slots=True)
class EscalationPolicy:
    """Escalate a firing alert once event time reaches ``due(started_ms)``."""

    due: Callable[[int], int]
    severity: str
    audience: tuple[str, ...]


@runtime_checkable
class Rule(Protocol):
    """An alert rule: turns points (and the passage of time) into observations per source.

    The engine calls :meth:`evaluate` for every point whose (meter, quantity) is in :meth:`watches` (every
    point if it returns None) and :meth:`tick` on each engine tick, under the engine's lock (never
    concurrently).

    Optional attributes read by the engine: ``keep_firing_for_ms`` and ``repeat_interval_ms`` (int, default
    0) and ``escalation`` (:class:`EscalationPolicy` or None).
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


@runtime_checkable
class RowRule(Protocol):
    """A rule over store rows of the accounting (``indicator``, ``budget``), fed by :meth:`AlertEngine.observe_rows`."""

    def measurements(self) -> Collection[str]:
        """The measurements whose rows the rule reads."""
        ...

    def evaluate_row(self, key: SeriesKey, fields: Mapping[str, float], ts_ms: int) -> Observation | None:
        """Observe one row; None if it says nothing to this rule."""
        ...


@runtime_checkable
class StatusRule(Protocol):
    """A rule over gateway status (``online``/``offline``), fed by :meth:`AlertEngine.observe_status`."""

    def evaluate_status(self, gateway: str, online: bool, ts_ms: int) -> Observation | None:
        """Observe one status change; None if it says nothing to this rule."""
        ...


@runtime_checkable
class StatefulRule(Protocol):
    """A rule whose own state (counts, last values) the engine persists and restores across restarts."""

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state."""
        ...

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back a :meth:`snapshot` (from an earlier process)."""
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
        self.keep_firing_for_ms = round(rule.keep_firing_for_secs * 1000)
        self.repeat_interval_ms = round(rule.repeat_interval_secs * 1000)
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


@dataclass(frozen=True, slots=True)
class _Lifecycle:
    for_ms: int
    keep_firing_for_ms: int
    repeat_interval_ms: int
    escalation: EscalationPolicy | None


def _lifecycle(rule: Rule) -> _Lifecycle:
    escalation = getattr(rule, "escalation", None)
    return _Lifecycle(
        for_ms=int(rule.for_ms),
        keep_firing_for_ms=int(getattr(rule, "keep_firing_for_ms", 0) or 0),
        repeat_interval_ms=int(getattr(rule, "repeat_interval_ms", 0) or 0),
        escalation=escalation if isinstance(escalation, EscalationPolicy) else None,
    )


@dataclass(slots=True)
class _Track:
    """State of one (rule, source)."""

    last_ts: int | None = None
    alert: Alert | None = None  # the pending or firing alert; None while inactive
    version: int = 0
    clear_since: int | None = None  # firing, clear condition seen since (keep_firing_for)
    notified_version: int | None = None  # version of the last record the notifiers got
    notified_state: AlertState | None = None
    unsent_resolved: Alert | None = None  # resolved under a silence while the notifiers still think firing
    sent_to: frozenset[str] = frozenset()  # notifiers that got a record of this cycle

    def to_data(self) -> dict[str, Any]:
        return {
            "alert": self.alert.to_record() if self.alert is not None else None,
            "last_ts": self.last_ts,
            "clear_since": self.clear_since,
            "notified_version": self.notified_version,
            "notified_state": self.notified_state.value if self.notified_state is not None else None,
            "unsent_resolved": self.unsent_resolved.to_record() if self.unsent_resolved is not None else None,
            "sent_to": sorted(self.sent_to),
        }

    @classmethod
    def from_data(cls, version: int, data: Mapping[str, Any]) -> _Track:
        alert, unsent = data.get("alert"), data.get("unsent_resolved")
        state = data.get("notified_state")
        return cls(
            last_ts=data.get("last_ts"),
            alert=Alert.from_record(alert) if alert else None,
            version=version,
            clear_since=data.get("clear_since"),
            notified_version=data.get("notified_version"),
            notified_state=AlertState(state) if state else None,
            unsent_resolved=Alert.from_record(unsent) if unsent else None,
            sent_to=frozenset(data.get("sent_to") or ()),
        )


def _merge_audience(current: tuple[str, ...], more: Iterable[str]) -> tuple[str, ...]:
    out = list(current)
    for a in more:
        if a not in out:
            out.append(a)
    return tuple(out)


NotifyFn = Callable[[Alert], Iterable[str] | None]


class AlertEngine:
    """Evaluates rules and calls ``notify`` on firing, escalated, reminder and resolved records.

    Thread-safe: every public method may be called from any thread; calls are serialised, and ``notify`` runs
    on the caller's thread under the engine lock, in transition order, so it must not block (notifiers queue
    and deliver in the background).

    Args:
        rules: threshold rules from the plant file, or any :class:`Rule` (see
            :func:`energymon.alerts.rules.build_rules` for every configured kind).
        notify: receives every record to deliver; may return the ids of the notifiers it went to.
        clock: the engine clock: stamps ``last_notified_ms`` and ``acked_ms`` and times reminders and
            silences (the wall clock in production); alert state is driven by event time only.
        metrics: counts points (``received``), notifications (``sent``), late observations and notify errors.
        store: the state file; None keeps everything in memory.
        snapshot_interval_secs: how often (engine clock) stateful rules are written to the store on tick.

    Raises:
        ValueError: two rules share an id.
        TypeError: a configured rule kind other than ``threshold`` was passed without its plant context.
    """

    def __init__(
        self,
        rules: Sequence[ThresholdRule | Rule],
        *,
        notify: NotifyFn,
        clock: Clock,
        metrics: PipelineMetrics | None = None,
        store: AlertStore | None = None,
        snapshot_interval_secs: float = 60.0,
    ) -> None:
        self._rules: list[Rule] = []
        for r in rules:
            if isinstance(r, ThresholdRule):
                self._rules.append(ThresholdCondition(r))
            elif isinstance(r, Rule):
                self._rules.append(r)
            else:
                raise TypeError(
                    f"rule {getattr(r, 'id', r)!r}: build configured rules with energymon.alerts.rules.build_rules"
                )
        seen: set[str] = set()
        for rule in self._rules:
            if rule.id in seen:
                raise ValueError(f"duplicate alert rule id {rule.id!r}")
            seen.add(rule.id)
        self._by_id = {r.id: r for r in self._rules}
        self._life = {r.id: _lifecycle(r) for r in self._rules}
        self._notify = notify
        self._clock = clock
        self._stage: StageMetrics | None = metrics.stage(STAGE) if metrics is not None else None
        self._index: dict[tuple[str, str], list[Rule]] = {}
        self._every: list[Rule] = []
        self._row_rules: dict[str, list[tuple[Rule, RowRule]]] = {}
        self._status_rules: list[tuple[Rule, StatusRule]] = []
        self._stateful: list[tuple[Rule, StatefulRule]] = []
        for rule in self._rules:
            keys = rule.watches()
            if keys is None:
                self._every.append(rule)
            else:
                for key in keys:
                    self._index.setdefault(key, []).append(rule)
            if isinstance(rule, RowRule):
                for measurement in rule.measurements():
                    self._row_rules.setdefault(measurement, []).append((rule, rule))
            if isinstance(rule, StatusRule):
                self._status_rules.append((rule, rule))
            if isinstance(rule, StatefulRule):
                self._stateful.append((rule, rule))
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._lock = threading.RLock()
        self._store = store
        self._silences: list[Silence] = []
        self._next_silence_id = 1
        self._snapshot_ms = round(snapshot_interval_secs * 1000)
        self._last_snapshot = clock.now_ms()
        if store is not None:
            self._load()

    # ------------------------------------------------------------------ inputs

    @property
    def rules(self) -> list[Rule]:
        """The rules, in configuration order."""
        return list(self._rules)

    def observe(self, points: Iterable[Point]) -> None:
        """Evaluate every rule that reads each point, in order, by the points' event time."""
        with self._lock:
            n = 0
            index, every, apply = self._index, self._every, self._apply
            for point in points:
                n += 1
                for rule in index.get((point.meter, point.quantity), ()):
                    obs = rule.evaluate(point)
                    if obs is not None:
                        apply(rule, obs)
                for rule in every:
                    obs = rule.evaluate(point)
                    if obs is not None:
                        apply(rule, obs)
            if self._stage is not None and n:
                self._stage.received(n)

    def observe_wire(self, points: Iterable[WirePoint]) -> None:
        """Like :meth:`observe` for decoded wire dicts (the processor's form): only the points some rule reads
        are turned into :class:`Point` objects."""
        index, every = self._index, self._every
        if every:
            self.observe([wire_to_point(p) for p in points])
            return
        seen = list(points)
        watched = [wire_to_point(p) for p in seen if (p["meter"], p["quantity"]) in index]
        if watched:
            self.observe(watched)
        if self._stage is not None and len(seen) > len(watched):
            self._stage.received(len(seen) - len(watched))

    def observe_rows(self, rows: Iterable[Row]) -> None:
        """Evaluate the row rules (``indicator``, ``budget``) on store rows; other measurements are skipped.

        The processor calls this with the rows of each flush after the store accepted them.
        """
        if not self._row_rules:
            return
        with self._lock:
            for key, fields, ts_ms in rows:
                for rule, row_rule in self._row_rules.get(key.measurement, ()):
                    obs = row_rule.evaluate_row(key, fields, ts_ms)
                    if obs is not None:
                        self._apply(rule, obs)

    def observe_status(self, gateway: str, online: bool, ts_ms: int) -> None:
        """A gateway's status topic changed (``online`` / ``offline``) at ``ts_ms``."""
        with self._lock:
            for rule, status_rule in self._status_rules:
                obs = status_rule.evaluate_status(gateway, online, ts_ms)
                if obs is not None:
                    self._apply(rule, obs)

    def tick(self, now_ms: int) -> None:
        """Let time pass: time-based rules observe event time ``now_ms``; keep-firing clocks run out;
        escalations fall due; reminders go out and silences end (engine clock); acknowledgements and silences
        written by other processes are picked up; stateful rules are snapshotted now and then.
        """
        with self._lock:
            if self._store is not None and self._store.changed_elsewhere():
                self._reload_external()
            for rule in self._rules:
                for obs in rule.tick(now_ms):
                    self._apply(rule, obs)
            wall = self._clock.now_ms()
            for (rule_id, _source), track in list(self._tracks.items()):
                owner = self._by_id.get(rule_id)
                if owner is not None:
                    self._tick_track(owner, track, now_ms, wall)
            if self._store is not None and self._stateful and wall - self._last_snapshot >= self._snapshot_ms:
                self._save_snapshots(wall)

    # ------------------------------------------------------------------ operator actions

    def ack(self, alert_id: str, *, by: str = "", comment: str = "") -> Alert:
        """Acknowledge a firing alert: no more reminders until it resolves. Recorded in history and notified
        (event ``acknowledged``, with who and the comment) to the notifiers that heard the cycle.

        Raises:
            KeyError: no firing alert has this id.
        """
        rule_id, _, source = alert_id.partition(":")
        with self._lock:
            track = self._tracks.get((rule_id, source))
            if track is None or track.alert is None or track.alert.state is not AlertState.FIRING:
                raise KeyError(alert_id)
            now = self._clock.now_ms()
            if self._store is not None:
                self._store.ack(alert_id, by=by, comment=comment, at_ms=now)
                self._store.changed_elsewhere()  # our own write
            track.alert = replace(track.alert, acked_by=by, acked_ms=now, ack_comment=comment)
            self._announce_ack(track)
            assert track.alert is not None
            return track.alert

    def silence(self, rule_id: str, source: str | None = None, *, for_secs: float, comment: str,
                by: str = "") -> Silence:
        """Silence alerts of a rule (and source) from now for ``for_secs`` (engine clock)."""
        with self._lock:
            now = self._clock.now_ms()
            ends = now + round(for_secs * 1000)
            if self._store is not None:
                silence = self._store.add_silence(rule_id, source, starts_ms=now, ends_ms=ends, comment=comment,
                                                  by=by, created_ms=now)
                self._store.changed_elsewhere()
            else:
                silence = Silence(self._next_silence_id, rule_id, source, now, ends, comment, by, now)
                self._next_silence_id += 1
            self._silences.append(silence)
            return silence

    def expire_silence(self, silence_id: int) -> bool:
        """End a silence now; the next tick tells the notifiers what they missed."""
        with self._lock:
            now = self._clock.now_ms()
            found = False
            for i, s in enumerate(self._silences):
                if s.id == silence_id and s.ends_ms > now:
                    self._silences[i] = replace(s, ends_ms=now)
                    found = True
            if self._store is not None:
                found = self._store.expire_silence(silence_id, now) or found
                self._store.changed_elsewhere()
            return found

    def silences(self) -> list[Silence]:
        """Silences not yet ended."""
        now = self._clock.now_ms()
        with self._lock:
            return [s for s in self._silences if s.ends_ms > now]

    # ------------------------------------------------------------------ queries

    def active(self) -> list[Alert]:
        """Pending and firing alerts, firing first, then by severity (critical first) and id."""
        with self._lock:
            alerts = [t.alert for t in self._tracks.values() if t.alert is not None]
        return sorted(alerts, key=lambda a: (a.state is not AlertState.FIRING, -severity_rank(a.severity), a.id))

    def get(self, alert_id: str) -> Alert | None:
        """The pending or firing alert with this id, if any."""
        rule_id, _, source = alert_id.partition(":")
        with self._lock:
            track = self._tracks.get((rule_id, source))
            return track.alert if track is not None else None

    def close(self) -> None:
        """Write the stateful rules' snapshots and close the state file."""
        with self._lock:
            if self._store is not None:
                self._save_snapshots(self._clock.now_ms())
                self._store.close()
                self._store = None

    # ------------------------------------------------------------------ internals

    def _apply(self, rule: Rule, obs: Observation) -> None:
        key = (rule.id, obs.source)
        track = self._tracks.get(key)
        if track is None:
            track = self._tracks[key] = _Track()
        if track.last_ts is not None and obs.ts_ms < track.last_ts:
            if self._stage is not None:
                self._stage.dropped("late_point")
            return
        track.last_ts = obs.ts_ms
        current = track.alert
        life = self._life[rule.id]
        if current is None:
            if obs.condition is Condition.BREACH:
                track.version += 1
                pending = Alert(
                    rule_id=rule.id, source=obs.source, state=AlertState.PENDING,
                    severity=obs.severity or rule.severity, audience=obs.audience or rule.audience,
                    summary=obs.summary or rule.summary, value=obs.value, threshold=obs.threshold,
                    started_ms=obs.ts_ms, version=track.version, notifiers=rule.notifiers, event="pending",
                )
                if life.for_ms <= 0:
                    self._fire(track, pending, obs)
                else:
                    track.alert = pending
                    self._persist(rule.id, obs.source, track, [])
            return
        if current.state is AlertState.PENDING:
            if obs.condition is not Condition.BREACH:
                track.alert = None  # the breach did not hold for for_secs: silently back to inactive
                self._persist(rule.id, obs.source, track, [])
            elif obs.ts_ms - current.started_ms >= life.for_ms:
                track.version += 1
                self._fire(track, current, obs)
            return
        # firing
        if obs.condition is Condition.CLEAR:
            if life.keep_firing_for_ms > 0:
                if track.clear_since is None:
                    track.clear_since = obs.ts_ms
                if obs.ts_ms - track.clear_since < life.keep_firing_for_ms:
                    return
            self._resolve(track, current, obs.value, obs.ts_ms, "resolved")
            return
        track.clear_since = None
        if obs.condition is Condition.BREACH:
            severity, audience = current.severity, current.audience
            new_sev = obs.severity or rule.severity
            if severity_rank(new_sev) > severity_rank(severity):
                severity = new_sev
            audience = _merge_audience(audience, obs.audience or rule.audience)
            if severity != current.severity or audience != current.audience:
                track.version += 1
                self._emit(track, replace(
                    current, severity=severity, audience=audience, value=obs.value, threshold=obs.threshold,
                    version=track.version, event="escalated", summary=obs.summary or current.summary,
                ))

    def _fire(self, track: _Track, alert: Alert, obs: Observation) -> None:
        severity = alert.severity
        if obs.severity is not None and severity_rank(obs.severity) > severity_rank(severity):
            severity = obs.severity
        audience = _merge_audience(alert.audience, obs.audience or ())
        firing = replace(
            alert, state=AlertState.FIRING, value=obs.value, threshold=obs.threshold, fired_ms=obs.ts_ms,
            version=track.version, event="firing", severity=severity, audience=audience,
        )
        track.clear_since = None
        self._emit(track, firing)

    def _resolve(self, track: _Track, current: Alert, value: float | None, ts_ms: int, event: str) -> None:
        track.version += 1
        track.clear_since = None
        self._emit(track, replace(
            current, state=AlertState.RESOLVED, value=value, resolved_ms=ts_ms, version=track.version, event=event,
        ))

    def _silenced(self, alert: Alert, now_ms: int) -> bool:
        return any(s.matches(alert.rule_id, alert.source, now_ms) for s in self._silences)

    def _emit(self, track: _Track, alert: Alert, *, history: bool = True) -> Alert:
        """Hand a record to ``notify`` (unless silenced), update the track, persist; return the record."""
        now = self._clock.now_ms()
        track.sent_to = track.sent_to | frozenset(alert.sent_to)
        alert = replace(alert, sent_to=tuple(sorted(track.sent_to)))
        resolved = alert.state is AlertState.RESOLVED
        silenced = self._silenced(alert, now)
        if silenced:
            log.info("alert %s %s (v%d) silenced: %s", alert.id, alert.event, alert.version, alert.summary)
            if resolved and track.notified_state is AlertState.FIRING:
                track.unsent_resolved = alert
        else:
            alert = replace(alert, last_notified_ms=now)
            log.info("alert %s %s (v%d): %s value=%s", alert.id, alert.event, alert.version, alert.summary,
                     alert.value)
            try:
                went_to = self._notify(alert)
            except Exception as exc:
                log.exception("notify failed for alert %s %s", alert.id, alert.event)
                if self._stage is not None:
                    self._stage.error(exc)
            else:
                if went_to is not None:
                    track.sent_to = track.sent_to | frozenset(went_to)
                if self._stage is not None:
                    self._stage.sent()
            track.notified_version = alert.version
            track.notified_state = alert.state
            track.unsent_resolved = None
        if resolved:
            track.alert = None
            if not silenced:
                track.sent_to = frozenset()
        else:
            track.alert = alert
        entry = {"at_ms": now, "ts_ms": self._event_ts(alert), "event": alert.event or alert.state.value,
                 "record": alert.to_record(), "notified": not silenced}
        self._persist(alert.rule_id, alert.source, track, [entry] if history else [])
        return alert

    @staticmethod
    def _event_ts(alert: Alert) -> int | None:
        if alert.state is AlertState.RESOLVED:
            return alert.resolved_ms
        if alert.event == "escalated" and alert.escalated_ms is not None:
            return alert.escalated_ms
        return alert.fired_ms

    def _tick_track(self, rule: Rule, track: _Track, now_ms: int, wall: int) -> None:
        life = self._life[rule.id]
        alert = track.alert
        if alert is not None and alert.state is AlertState.FIRING:
            # keep_firing_for ran out without a new observation
            if (track.clear_since is not None and life.keep_firing_for_ms > 0
                    and now_ms - track.clear_since >= life.keep_firing_for_ms):
                self._resolve(track, alert, alert.value, track.clear_since + life.keep_firing_for_ms, "resolved")
                return
            esc = life.escalation
            if esc is not None and alert.escalated_ms is None and now_ms >= esc.due(alert.started_ms):
                severity = esc.severity if severity_rank(esc.severity) > severity_rank(alert.severity) \
                    else alert.severity
                track.version += 1
                alert = self._emit(track, replace(
                    alert, severity=severity, audience=_merge_audience(alert.audience, esc.audience),
                    escalated_ms=now_ms, version=track.version, event="escalated",
                ))
            if self._silenced(alert, wall):
                return
            if track.notified_version != alert.version:  # a silence held it back and has ended
                self._emit(track, alert)
                return
            if (life.repeat_interval_ms > 0 and alert.acked_ms is None and alert.last_notified_ms is not None
                    and wall - alert.last_notified_ms >= life.repeat_interval_ms):
                self._emit(track, replace(alert, event="reminder"))
            return
        unsent = track.unsent_resolved
        if alert is None and unsent is not None and not self._silenced(unsent, wall):
            self._emit(track, unsent)

    def _persist(self, rule_id: str, source: str, track: _Track, history: list[dict[str, Any]]) -> None:
        if self._store is None:
            return
        state = track.alert.state.value if track.alert is not None else None
        try:
            self._store.save_track(rule_id, source, track.version, state, track.to_data(), self._clock.now_ms(),
                                   history)
        except Exception as exc:  # a full disk must not stop alerting; the state lives on in memory
            log.exception("cannot write alert state for %s:%s", rule_id, source)
            if self._stage is not None:
                self._stage.error(exc)

    def _save_snapshots(self, wall: int) -> None:
        assert self._store is not None
        self._last_snapshot = wall
        try:
            self._store.save_rule_states({rule.id: st.snapshot() for rule, st in self._stateful}, wall)
        except Exception as exc:
            log.exception("cannot write rule snapshots")
            if self._stage is not None:
                self._stage.error(exc)

    def _load(self) -> None:
        """Restore tracks, acknowledgements, silences and rule snapshots from the store."""
        assert self._store is not None
        store = self._store
        for rec in store.tracks():
            track = _Track.from_data(rec.version, rec.data)
            if rec.rule_id not in self._by_id:
                if track.alert is not None:
                    self._retire(rec.rule_id, rec.source, track)
                store.delete_track(rec.rule_id, rec.source)
                continue
            self._tracks[(rec.rule_id, rec.source)] = track
        self._silences = store.silences(active_at_ms=self._clock.now_ms())
        self._apply_acks(store.acks())
        states = store.rule_states()
        for rule, st in self._stateful:
            if rule.id in states:
                try:
                    st.restore(states[rule.id])
                except Exception:  # a snapshot of an older format must not stop the engine
                    log.exception("cannot restore the state of rule %s; starting it fresh", rule.id)
        store.changed_elsewhere()
        restored = sum(1 for t in self._tracks.values() if t.alert is not None)
        if restored:
            log.info("restored %d active alert(s) from %s", restored, store.path)

    def _retire(self, rule_id: str, source: str, track: _Track) -> None:
        """An alert whose rule left the configuration: resolve it, notifying whoever heard it firing."""
        alert = track.alert
        assert alert is not None
        if alert.state is AlertState.PENDING:
            return
        now = self._clock.now_ms()
        track.version += 1
        resolved = replace(alert, state=AlertState.RESOLVED, resolved_ms=now, version=track.version,
                           event="rule_removed", sent_to=tuple(sorted(track.sent_to)), last_notified_ms=now)
        if track.notified_state is AlertState.FIRING:
            try:
                self._notify(resolved)
            except Exception as exc:
                log.exception("notify failed for alert %s", alert.id)
                if self._stage is not None:
                    self._stage.error(exc)
        if self._store is not None:
            self._store.save_track(rule_id, source, track.version, None, {}, now, [{
                "at_ms": now, "ts_ms": now, "event": "rule_removed", "record": resolved.to_record(),
                "notified": track.notified_state is AlertState.FIRING,
            }])

    def _reload_external(self) -> None:
        """Apply acknowledgements and silences another process (the CLI) wrote."""
        assert self._store is not None
        self._silences = self._store.silences(active_at_ms=self._clock.now_ms())
        self._apply_acks(self._store.acks())

    def _apply_acks(self, acks: Mapping[tuple[str, int], tuple[str, str, int]]) -> None:
        for (rule_id, source), track in self._tracks.items():
            alert = track.alert
            if alert is None or alert.acked_ms is not None:
                continue
            found = acks.get((alert.id, alert.started_ms))
            if found is not None:
                by, comment, at_ms = found
                track.alert = replace(alert, acked_by=by, acked_ms=at_ms, ack_comment=comment)
                if alert.state is AlertState.FIRING:
                    self._announce_ack(track)
                else:
                    self._persist(rule_id, source, track, [])

    def _announce_ack(self, track: _Track) -> None:
        """Tell whoever heard the cycle that it was acknowledged (a new version; the ack's history row exists)."""
        alert = track.alert
        assert alert is not None
        track.version += 1
        self._emit(track, replace(alert, version=track.version, event="acknowledged"), history=False)
