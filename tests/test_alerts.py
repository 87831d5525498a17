"""The alert engine: event-time lifecycle, hysteresis, bad and late points, notify contract."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from energymon.alerts.engine import Alert, AlertEngine, AlertState, Condition, Observation, Rule
from energymon.clock import ManualClock
from energymon.config import ThresholdRule
from energymon.metrics import PipelineMetrics
from energymon.schema import Point, Quality, datetime_to_ms

T0 = datetime_to_ms(datetime(2025, 3, 1, 8, 0, tzinfo=UTC))
S = 1000  # ms per second
# The engine's clock never moves in these tests: state must follow the points' event time only.
CLOCK_AT = datetime(2030, 1, 1, tzinfo=UTC)


def rule(**kw: Any) -> ThresholdRule:
    base: dict[str, Any] = {
        "kind": "threshold", "id": "kiln-power-high", "meter": "kiln", "quantity": "power_kw",
    }
    base.update(kw)
    return ThresholdRule.model_validate(base)


def pt(value: float | None, t_secs: float, *, meter: str = "kiln", quantity: str = "power_kw",
       quality: Quality | None = None) -> Point:
    q = quality if quality is not None else (Quality.BAD if value is None else Quality.GOOD)
    ts_ms = T0 + round(t_secs * S)
    return Point(meter=meter, quantity=quantity, value=value, unit="kW", ts_ms=ts_ms, quality=q)


class Recorder:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def __call__(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def states(self) -> list[tuple[str, str]]:
        return [(a.id, a.state.value) for a in self.alerts]


def make(
    rules: Sequence[ThresholdRule | Rule], metrics: PipelineMetrics | None = None
) -> tuple[AlertEngine, Recorder]:
    rec = Recorder()
    return AlertEngine(rules, notify=rec, clock=ManualClock(CLOCK_AT), metrics=metrics), rec


def feed(engine: AlertEngine, values: Sequence[tuple[float | None, float]]) -> None:
    for value, t in values:
        engine.observe([pt(value, t)])


# --------------------------------------------------------------------------- for_secs


def test_breach_held_for_for_secs_fires_once_with_event_times() -> None:
    engine, rec = make([rule(above=100, for_secs=60)])
    feed(engine, [(120, 0), (125, 30)])
    assert rec.alerts == []
    pending = engine.get("kiln-power-high:kiln")
    assert pending is not None and pending.state is AlertState.PENDING and pending.started_ms == T0
    feed(engine, [(130, 59.999)])
    assert rec.alerts == []  # 59.999 s < 60 s
    feed(engine, [(131, 60), (140, 90)])
    assert rec.states() == [("kiln-power-high:kiln", "firing")]
    fired = rec.alerts[0]
    assert (fired.started_ms, fired.fired_ms, fired.resolved_ms) == (T0, T0 + 60 * S, None)
    assert fired.value == 131 and fired.threshold == 100
    assert fired.last_notified_ms == datetime_to_ms(CLOCK_AT)  # the engine clock, not event time
    assert engine.active() == [fired]


def test_breach_not_held_returns_to_inactive_silently_and_restarts_the_timer() -> None:
    engine, rec = make([rule(above=100, for_secs=60)])
    feed(engine, [(120, 0), (95, 30)])  # broke before 60 s
    assert engine.active() == []
    feed(engine, [(120, 50), (120, 100)])  # new run started at 50: only 50 s held
    assert rec.alerts == []
    assert engine.active()[0].started_ms == T0 + 50 * S
    feed(engine, [(120, 110)])
    assert rec.states() == [("kiln-power-high:kiln", "firing")]
    assert rec.alerts[0].started_ms == T0 + 50 * S


def test_pending_breaks_on_a_value_inside_the_hysteresis_band() -> None:
    # The breach must hold without a break; the band only keeps an already firing alert up.
    engine, rec = make([rule(above=100, clear_above=90, for_secs=60)])
    feed(engine, [(120, 0), (95, 30), (120, 40), (120, 80)])
    assert rec.alerts == []
    feed(engine, [(120, 100)])
    assert [a.started_ms for a in rec.alerts] == [T0 + 40 * S]


def test_for_secs_zero_fires_at_the_first_breach_without_pending() -> None:
    engine, rec = make([rule(above=100)])
    feed(engine, [(100, 0)])  # at the threshold is not above it
    assert engine.active() == []
    feed(engine, [(100.5, 1)])
    assert rec.states() == [("kiln-power-high:kiln", "firing")]
    assert rec.alerts[0].started_ms == rec.alerts[0].fired_ms == T0 + 1 * S


def test_state_follows_event_time_not_arrival_rate() -> None:
    # A back-fill of two hours arrives in one call while the engine clock stands still.
    engine, rec = make([rule(above=100, for_secs=600)])
    engine.observe([pt(150, t) for t in range(0, 7200, 60)])
    assert len(rec.alerts) == 1
    assert rec.alerts[0].fired_ms == T0 + 600 * S


# --------------------------------------------------------------------------- hysteresis


def test_flapping_between_clear_and_raise_thresholds_fires_once() -> None:
    engine, rec = make([rule(above=100, clear_above=90, for_secs=10)])
    feed(engine, [(105, 0), (106, 10)])
    assert rec.states() == [("kiln-power-high:kiln", "firing")]
    t = 10
    for _ in range(100):
        t += 5
        feed(engine, [(95, t)])
        t += 5
        feed(engine, [(105, t)])
    assert rec.states() == [("kiln-power-high:kiln", "firing")]
    feed(engine, [(90, t + 5)])  # reaching the clear threshold resolves
    assert rec.states() == [("kiln-power-high:kiln", "firing"), ("kiln-power-high:kiln", "resolved")]
    assert rec.alerts[1].resolved_ms == T0 + (t + 5) * S
    assert rec.alerts[1].value == 90


def test_without_clear_threshold_the_same_oscillation_flaps() -> None:
    # Contrast: the default clear threshold is the raise threshold itself.
    engine, rec = make([rule(above=100)])
    for i in range(100):
        feed(engine, [(105, 10 * i), (95, 10 * i + 5)])
    assert len(rec.alerts) == 200
    assert [a.state for a in rec.alerts[:2]] == [AlertState.FIRING, AlertState.RESOLVED]


def test_default_clear_is_at_the_threshold() -> None:
    engine, rec = make([rule(above=100)])
    feed(engine, [(101, 0), (100, 1)])
    assert rec.states() == [("kiln-power-high:kiln", "firing"), ("kiln-power-high:kiln", "resolved")]


def test_below_rule_with_hysteresis() -> None:
    low = rule(id="boiler-pressure-low", meter="boiler", quantity="pressure_mpa", below=0.8, clear_below=1.0,
               for_secs=30, severity="critical")
    engine, rec = make([low])

    def p(v: float, t: float) -> Point:
        return pt(v, t, meter="boiler", quantity="pressure_mpa")

    engine.observe([p(0.9, 0), p(0.7, 10), p(0.75, 40)])
    assert rec.states() == [("boiler-pressure-low:boiler", "firing")]
    assert rec.alerts[0].severity == "critical" and rec.alerts[0].threshold == 0.8
    engine.observe([p(0.95, 50), p(0.85, 60), p(0.99, 70)])  # inside the band: still firing
    assert len(rec.alerts) == 1
    engine.observe([p(1.0, 80)])
    assert rec.states()[-1] == ("boiler-pressure-low:boiler", "resolved")


# --------------------------------------------------------------------------- bad and late points


def test_bad_quality_points_neither_raise_nor_clear() -> None:
    engine, rec = make([rule(above=100, clear_above=90, for_secs=60)])
    feed(engine, [(None, 0), (None, 100)])  # a dead meter is not a value of 0 (or of anything)
    assert engine.active() == [] and rec.alerts == []
    feed(engine, [(120, 200), (None, 230), (120, 260)])  # a bad point inside the run does not break it
    assert rec.states() == [("kiln-power-high:kiln", "firing")]
    assert rec.alerts[0].started_ms == T0 + 200 * S
    feed(engine, [(None, 300), (None, 400)])
    assert len(rec.alerts) == 1
    assert engine.active()[0].state is AlertState.FIRING


def test_uncertain_points_count() -> None:
    engine, rec = make([rule(above=100)])
    engine.observe([pt(150, 0, quality=Quality.UNCERTAIN)])
    assert rec.states() == [("kiln-power-high:kiln", "firing")]


def test_late_points_do_not_change_state() -> None:
    registry = CollectorRegistry()
    engine, rec = make([rule(above=100, for_secs=60)], PipelineMetrics(registry))
    feed(engine, [(120, 100)])
    feed(engine, [(50, 90)])  # older than the last point: must not break the pending run
    feed(engine, [(120, 160)])
    assert rec.states() == [("kiln-power-high:kiln", "firing")]
    feed(engine, [(0, 150), (0, 10)])  # late clear values: ignored
    assert len(rec.alerts) == 1
    feed(engine, [(120, 160)])  # same event time as the last one is not late
    feed(engine, [(80, 170)])
    assert rec.states()[-1] == ("kiln-power-high:kiln", "resolved")
    late = registry.get_sample_value("energymon_dropped_total", {"stage": "alerts", "reason": "late_point"})
    assert late == 3


def test_points_of_other_series_are_ignored() -> None:
    engine, rec = make([rule(above=100)])
    engine.observe([
        pt(500, 0, meter="mill"), pt(500, 1, quantity="energy_kwh"), pt(50, 2),
    ])
    assert rec.alerts == [] and engine.active() == []


# --------------------------------------------------------------------------- cycles and sources


def test_resolved_then_breaching_again_is_a_new_cycle_with_higher_versions() -> None:
    engine, rec = make([rule(above=100, for_secs=10)])
    feed(engine, [(120, 0), (120, 10), (80, 20), (120, 30), (120, 35), (120, 40), (80, 50)])
    assert [a.state.value for a in rec.alerts] == ["firing", "resolved", "firing", "resolved"]
    assert {a.id for a in rec.alerts} == {"kiln-power-high:kiln"}
    assert [a.started_ms for a in rec.alerts] == [T0, T0, T0 + 30 * S, T0 + 30 * S]
    assert [a.fired_ms for a in rec.alerts] == [T0 + 10 * S, T0 + 10 * S, T0 + 40 * S, T0 + 40 * S]
    assert rec.alerts[1].resolved_ms == T0 + 20 * S and rec.alerts[2].resolved_ms is None
    versions = [a.version for a in rec.alerts]
    assert versions == sorted(versions) and len(set(versions)) == 4
    assert engine.active() == []


def test_sources_and_rules_are_independent() -> None:
    rules = [
        rule(id="kiln-high", above=100, for_secs=30),
        rule(id="kiln-very-high", above=150, severity="critical"),
        rule(id="mill-high", meter="mill", above=100, for_secs=30),
    ]
    engine, rec = make(rules)
    engine.observe([pt(120, 0), pt(120, 0, meter="mill")])
    engine.observe([pt(160, 30), pt(90, 30, meter="mill")])  # mill broke its run; kiln held and spiked
    assert sorted(rec.states()) == [("kiln-high:kiln", "firing"), ("kiln-very-high:kiln", "firing")]
    engine.observe([pt(120, 40)])  # clears only the 150 rule
    assert rec.states()[-1] == ("kiln-very-high:kiln", "resolved")
    assert [a.id for a in engine.active()] == ["kiln-high:kiln"]
    engine.observe([pt(120, 60, meter="mill"), pt(120, 90, meter="mill")])
    assert rec.states()[-1] == ("mill-high:mill", "firing")
    assert [(a.id, a.state.value) for a in engine.active()] == [
        ("kiln-high:kiln", "firing"), ("mill-high:mill", "firing"),
    ]


def test_active_lists_pending_after_firing_and_critical_first() -> None:
    rules = [
        rule(id="a-warn", above=100),
        rule(id="b-crit", above=100, severity="critical"),
        rule(id="c-pending", above=100, for_secs=600),
    ]
    engine, _ = make(rules)
    engine.observe([pt(120, 0)])
    assert [(a.id, a.state.value) for a in engine.active()] == [
        ("b-crit:kiln", "firing"), ("a-warn:kiln", "firing"), ("c-pending:kiln", "pending"),
    ]


# --------------------------------------------------------------------------- notify contract


def test_notify_errors_are_counted_and_do_not_stop_evaluation() -> None:
    registry = CollectorRegistry()
    calls: list[Alert] = []

    def flaky(alert: Alert) -> None:
        calls.append(alert)
        if len(calls) == 1:
            raise RuntimeError("receiver exploded")

    engine = AlertEngine([rule(above=100), rule(id="mill-high", meter="mill", above=100)], notify=flaky,
                         clock=ManualClock(CLOCK_AT), metrics=PipelineMetrics(registry))
    engine.observe([pt(120, 0), pt(120, 0, meter="mill"), pt(50, 1)])
    assert [(a.id, a.state.value) for a in calls] == [
        ("kiln-power-high:kiln", "firing"),
        ("mill-high:mill", "firing"),
        ("kiln-power-high:kiln", "resolved"),
    ]
    assert registry.get_sample_value(
        "energymon_errors_total", {"stage": "alerts", "error_type": "RuntimeError"}) == 1
    assert registry.get_sample_value("energymon_sent_total", {"stage": "alerts"}) == 2
    assert registry.get_sample_value("energymon_received_total", {"stage": "alerts"}) == 3


def test_notified_records_are_immutable_and_json_ready() -> None:
    engine, rec = make([rule(above=100, summary="窑主电机功率过高", audience=["energy_manager", "regulator"],
                             notifiers=["ops-webhook"])])
    feed(engine, [(120, 0)])
    alert = rec.alerts[0]
    name = "state"
    with pytest.raises(AttributeError):
        setattr(alert, name, AlertState.RESOLVED)
    data = json.loads(json.dumps(alert.to_dict(), ensure_ascii=False))
    assert data["id"] == "kiln-power-high:kiln" and data["state"] == "firing"
    assert data["summary"] == "窑主电机功率过高" and data["audience"] == ["energy_manager", "regulator"]
    assert data["notifiers"] == ["ops-webhook"] and data["rule_id"] == "kiln-power-high"


def test_default_summary_names_the_series_and_threshold() -> None:
    engine, rec = make([rule(above=100, for_secs=30)])
    feed(engine, [(120, 0), (120, 30)])
    assert rec.alerts[0].summary == "power_kw of kiln above 100 for 30 s"


def test_duplicate_rule_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate alert rule id 'x'"):
        make([rule(id="x", above=1), rule(id="x", above=2)])


class SilenceRule:
    """A time-driven rule: the meter is 'offline' once no good point arrived for 5 minutes."""

    id = "kiln-offline"
    severity = "warning"
    audience = ("energy_manager",)
    summary = "kiln silent"
    notifiers: tuple[str, ...] = ()
    for_ms = 0

    def __init__(self) -> None:
        self.last_good: int | None = None

    def watches(self) -> tuple[tuple[str, str], ...]:
        return (("kiln", "power_kw"),)

    def evaluate(self, point: Point) -> Observation | None:
        if point.quality is Quality.BAD:
            return None
        self.last_good = point.ts_ms
        return Observation("kiln", point.ts_ms, Condition.CLEAR, None, None)

    def tick(self, now_ms: int) -> Sequence[Observation]:
        if self.last_good is not None and now_ms - self.last_good >= 300 * S:
            return [Observation("kiln", now_ms, Condition.BREACH, None, 300.0)]
        return []


def test_tick_drives_time_based_rules_and_is_a_no_op_for_thresholds() -> None:
    silence = SilenceRule()
    assert isinstance(silence, Rule)
    engine, rec = make([rule(above=100), silence])
    feed(engine, [(50, 0)])
    engine.tick(T0 + 299 * S)
    assert rec.alerts == []
    engine.tick(T0 + 300 * S)
    assert rec.states() == [("kiln-offline:kiln", "firing")]
    feed(engine, [(60, 310)])
    assert rec.states()[-1] == ("kiln-offline:kiln", "resolved")
    assert all(a.rule_id == "kiln-offline" for a in rec.alerts)  # the threshold rule ignored the ticks
