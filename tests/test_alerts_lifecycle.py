"""Alert lifecycle beyond pending/firing/resolved: keep_firing_for, reminders, acknowledgements, silences,
escalation, routing filters, and the persisted state (restart while firing, history, the CLI)."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from energymon.alerts.cli import add_alerts_parser, alerts_main
from energymon.alerts.engine import (
    Alert,
    AlertEngine,
    AlertState,
    Condition,
    EscalationPolicy,
    Observation,
)
from energymon.alerts.notifiers import route
from energymon.alerts.state import AlertStore
from energymon.alerts_config import ThresholdRule
from energymon.clock import ManualClock
from energymon.schema import Point, Quality, datetime_to_ms

T0 = datetime_to_ms(datetime(2025, 3, 3, 8, 0, tzinfo=UTC))  # a Monday
S = 1000
WALL0 = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)


def rule(**kw: Any) -> ThresholdRule:
    base: dict[str, Any] = {"kind": "threshold", "id": "kiln-power-high", "meter": "kiln", "quantity": "power_kw",
                            "above": 100}
    base.update(kw)
    return ThresholdRule.model_validate(base)


def pt(value: float | None, t_secs: float, meter: str = "kiln") -> Point:
    return Point(meter=meter, quantity="power_kw", value=value, unit="kW", ts_ms=T0 + round(t_secs * S),
                 quality=Quality.BAD if value is None else Quality.GOOD)


class Recorder:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def __call__(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def events(self) -> list[tuple[str, str]]:
        return [(a.id, a.event) for a in self.alerts]


def make(rules: Sequence[Any], *, store: AlertStore | None = None,
         clock: ManualClock | None = None) -> tuple[AlertEngine, Recorder, ManualClock]:
    rec = Recorder()
    clock = clock or ManualClock(WALL0)
    return AlertEngine(rules, notify=rec, clock=clock, store=store), rec, clock


def feed(engine: AlertEngine, values: Sequence[tuple[float | None, float]]) -> None:
    for value, t in values:
        engine.observe([pt(value, t)])


# --------------------------------------------------------------------------- flapping and keep_firing_for


def test_keep_firing_for_stops_a_flapping_value_from_flooding() -> None:
    # Without hysteresis, a value bouncing around the threshold every 10 s would fire and resolve 100 times.
    engine, rec, _ = make([rule(keep_firing_for_secs=60)])
    for i in range(100):
        feed(engine, [(105, 20 * i), (95, 20 * i + 10)])
    assert rec.events() == [("kiln-power-high:kiln", "firing")]
    t = 20 * 99 + 10  # the last dip: clear since then
    feed(engine, [(95, t + 30), (95, t + 59)])
    assert len(rec.alerts) == 1  # clear has held 59 s only
    feed(engine, [(95, t + 60)])
    assert rec.events()[-1] == ("kiln-power-high:kiln", "resolved")
    assert rec.alerts[-1].resolved_ms == T0 + (t + 60) * S


def test_keep_firing_for_runs_out_on_the_tick_without_new_points() -> None:
    engine, rec, _ = make([rule(keep_firing_for_secs=60)])
    feed(engine, [(105, 0), (95, 10)])
    engine.tick(T0 + 69 * S)
    assert len(rec.alerts) == 1
    engine.tick(T0 + 70 * S)
    assert rec.alerts[-1].state is AlertState.RESOLVED and rec.alerts[-1].resolved_ms == T0 + 70 * S


# --------------------------------------------------------------------------- reminders and acks


def test_reminders_repeat_until_acknowledged() -> None:
    engine, rec, clock = make([rule(repeat_interval_secs=600)])
    feed(engine, [(150, 0)])
    for _ in range(3):
        clock.advance(300)
        engine.tick(T0)
    assert rec.events() == [("kiln-power-high:kiln", "firing"), ("kiln-power-high:kiln", "reminder")]
    reminder = rec.alerts[1]
    assert reminder.version == rec.alerts[0].version and reminder.state is AlertState.FIRING
    acked = engine.ack("kiln-power-high:kiln", by="张工", comment="cooling fan replaced")
    assert acked.acked_by == "张工" and acked.acked_ms == clock.now_ms()
    for _ in range(10):
        clock.advance(600)
        engine.tick(T0)
    # the acknowledgement is notified (who, the comment), then no reminders
    assert rec.events()[2:] == [("kiln-power-high:kiln", "acknowledged")]
    ack = rec.alerts[2]
    assert ack.acked_by == "张工" and ack.ack_comment == "cooling fan replaced" and ack.version > reminder.version
    feed(engine, [(50, 10)])
    assert rec.alerts[-1].event == "resolved" and rec.alerts[-1].acked_by == "张工"
    feed(engine, [(150, 20)])  # a new cycle is not acknowledged
    clock.advance(600)
    engine.tick(T0)
    assert [a.event for a in rec.alerts[-2:]] == ["firing", "reminder"]


def test_ack_of_an_inactive_alert_is_refused() -> None:
    engine, _, _ = make([rule(for_secs=60)])
    with pytest.raises(KeyError):
        engine.ack("kiln-power-high:kiln")
    feed(engine, [(150, 0)])  # pending
    with pytest.raises(KeyError):
        engine.ack("kiln-power-high:kiln")


# --------------------------------------------------------------------------- silences


def test_silenced_alert_changes_state_but_is_not_notified() -> None:
    engine, rec, clock = make([rule()])
    engine.silence("kiln-power-high", "kiln", for_secs=3600, comment="planned kiln stop")
    feed(engine, [(150, 0), (50, 10)])
    assert rec.alerts == []
    assert engine.active() == []
    feed(engine, [(150, 20)])
    assert engine.active()[0].state is AlertState.FIRING
    clock.advance(3600)
    engine.tick(T0 + 30 * S)  # the silence ended: the notifiers learn the alert is firing
    assert rec.events() == [("kiln-power-high:kiln", "firing")]
    engine.tick(T0 + 40 * S)
    assert len(rec.alerts) == 1


def test_resolution_under_a_silence_reaches_the_notifiers_when_it_ends() -> None:
    engine, rec, _clock = make([rule()])
    feed(engine, [(150, 0)])
    silence = engine.silence("kiln-power-high", None, for_secs=600, comment="known")
    feed(engine, [(50, 10)])
    assert len(rec.alerts) == 1
    assert engine.expire_silence(silence.id)
    engine.tick(T0 + 20 * S)
    assert [a.event for a in rec.alerts] == ["firing", "resolved"]
    assert rec.alerts[1].resolved_ms == T0 + 10 * S
    assert not engine.expire_silence(silence.id)


def test_silence_matches_rule_and_source_only() -> None:
    engine, rec, _ = make([rule(), rule(id="other")])
    engine.silence("kiln-power-high", "mill", for_secs=600, comment="mill only")
    feed(engine, [(150, 0)])
    assert sorted(rec.events()) == [("kiln-power-high:kiln", "firing"), ("other:kiln", "firing")]


# --------------------------------------------------------------------------- escalation


class Escalating:
    """A tick-driven rule with a repair clock of 1 hour."""

    id = "feed-offline"
    severity = "warning"
    audience = ("energy_manager",)
    summary = "feed offline"
    notifiers: tuple[str, ...] = ()
    for_ms = 0
    escalation = EscalationPolicy(due=lambda started: started + 3600 * S, severity="critical",
                                  audience=("energy_manager", "regulator"))

    def __init__(self) -> None:
        self.offline = False

    def watches(self) -> tuple[tuple[str, str], ...]:
        return ()

    def evaluate(self, point: Point) -> Observation | None:
        return None

    def tick(self, now_ms: int) -> Sequence[Observation]:
        cond = Condition.BREACH if self.offline else Condition.CLEAR
        return [Observation("feed", now_ms, cond, None, None)]


def test_escalation_after_the_deadline_raises_severity_and_audience_once() -> None:
    rule_ = Escalating()
    engine, rec, _ = make([rule_])
    rule_.offline = True
    engine.tick(T0)
    engine.tick(T0 + 3599 * S)
    assert [(a.event, a.severity) for a in rec.alerts] == [("firing", "warning")]
    engine.tick(T0 + 3600 * S)
    engine.tick(T0 + 7200 * S)
    assert [(a.event, a.severity, a.audience) for a in rec.alerts] == [
        ("firing", "warning", ("energy_manager",)),
        ("escalated", "critical", ("energy_manager", "regulator")),
    ]
    assert rec.alerts[1].version > rec.alerts[0].version and rec.alerts[1].escalated_ms == T0 + 3600 * S
    rule_.offline = False
    engine.tick(T0 + 7300 * S)
    assert rec.alerts[-1].state is AlertState.RESOLVED and rec.alerts[-1].severity == "critical"


# --------------------------------------------------------------------------- routing


class Sink:
    def __init__(self, notifier_id: str, severities: tuple[str, ...] = (), audiences: tuple[str, ...] = ()) -> None:
        self._id = notifier_id
        self.severities, self.audiences = severities, audiences
        self.alerts: list[Alert] = []

    @property
    def id(self) -> str:
        return self._id

    def accepts(self, alert: Alert) -> bool:
        if self.severities and alert.severity not in self.severities:
            return False
        return not self.audiences or any(a in self.audiences for a in alert.audience)

    def notify(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def close(self, timeout: float | None = 10.0) -> bool:
        return True


def test_routing_by_severity_and_audience_follows_the_cycle() -> None:
    plant_hook = Sink("plant")
    regulator = Sink("regulator", audiences=("regulator",))
    critical = Sink("pager", severities=("critical",))
    rule_ = Escalating()
    engine = AlertEngine([rule_], notify=route([plant_hook, regulator, critical]), clock=ManualClock(WALL0))
    rule_.offline = True
    engine.tick(T0)
    assert [len(s.alerts) for s in (plant_hook, regulator, critical)] == [1, 0, 0]
    engine.tick(T0 + 3600 * S)  # escalated: critical, for the regulator too
    assert [len(s.alerts) for s in (plant_hook, regulator, critical)] == [2, 1, 1]
    rule_.offline = False
    engine.tick(T0 + 4000 * S)
    for sink in (plant_hook, regulator, critical):
        assert sink.alerts[-1].state is AlertState.RESOLVED, sink.id


def test_resolution_goes_only_to_notifiers_that_heard_the_cycle() -> None:
    warn_only = Sink("warn", severities=("warning",))
    crit_only = Sink("crit", severities=("critical",))
    rule_ = Escalating()
    engine = AlertEngine([rule_], notify=route([warn_only, crit_only]), clock=ManualClock(WALL0))
    rule_.offline = True
    engine.tick(T0)
    engine.tick(T0 + 3600 * S)
    rule_.offline = False
    engine.tick(T0 + 4000 * S)
    # the warning-only notifier heard the firing, so it also hears the escalation and the resolution
    assert [a.event for a in warn_only.alerts] == ["firing", "escalated", "resolved"]
    assert [a.event for a in crit_only.alerts] == ["escalated", "resolved"]


# --------------------------------------------------------------------------- persistence


def test_restart_while_firing_does_not_notify_again_and_resolution_is_notified_once(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite"
    engine, rec, clock = make([rule(for_secs=30)], store=AlertStore(path))
    feed(engine, [(150, 0), (150, 30)])
    assert rec.events() == [("kiln-power-high:kiln", "firing")]
    fired = rec.alerts[0]
    engine.close()  # the process stops (a crash loses at most the rule snapshots: state is written per change)

    engine2, rec2, _ = make([rule(for_secs=30)], store=AlertStore(path), clock=clock)
    assert rec2.alerts == []
    restored = engine2.get("kiln-power-high:kiln")
    assert restored is not None and restored.state is AlertState.FIRING
    assert (restored.started_ms, restored.fired_ms, restored.version) == (fired.started_ms, fired.fired_ms,
                                                                          fired.version)
    feed(engine2, [(150, 40), (150, 50)])
    engine2.tick(T0 + 60 * S)
    assert rec2.alerts == []  # still firing: nothing new to say
    feed(engine2, [(50, 60)])
    assert rec2.events() == [("kiln-power-high:kiln", "resolved")]
    assert rec2.alerts[0].version > fired.version
    feed(engine2, [(40, 70)])
    assert len(rec2.alerts) == 1
    engine2.close()

    store = AlertStore(path)
    assert store.active() == []
    history = store.history()
    assert [(h.event, h.notified) for h in history] == [("firing", True), ("resolved", True)]
    store.close()


def test_crash_without_close_keeps_the_active_alert(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite"
    engine, _rec, clock = make([rule()], store=AlertStore(path))
    feed(engine, [(150, 0)])
    del engine  # no close(): state was written when the alert fired
    engine2, rec2, _ = make([rule()], store=AlertStore(path), clock=clock)
    assert engine2.get("kiln-power-high:kiln") is not None
    feed(engine2, [(150, 5)])
    assert rec2.alerts == []
    engine2.close()


def test_restart_keeps_acks_silences_and_pending_runs(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite"
    engine, _rec, clock = make([rule(repeat_interval_secs=60), rule(id="slow", for_secs=120)],
                              store=AlertStore(path))
    feed(engine, [(150, 0)])
    engine.ack("kiln-power-high:kiln", by="ops")
    engine.silence("slow", None, for_secs=3600, comment="tuning")
    engine.close()
    engine2, rec2, _ = make([rule(repeat_interval_secs=60), rule(id="slow", for_secs=120)], store=AlertStore(path),
                            clock=clock)
    clock.advance(600)
    engine2.tick(T0)
    assert rec2.alerts == []  # acknowledged: no reminder after the restart either
    pending = engine2.get("slow:kiln")
    assert pending is not None and pending.state is AlertState.PENDING and pending.started_ms == T0
    feed(engine2, [(150, 130)])
    assert rec2.alerts == []  # fired, but silenced
    assert engine2.get("slow:kiln") is not None
    engine2.close()


def test_alerts_of_a_removed_rule_are_resolved_at_start(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite"
    engine, _, clock = make([rule(), rule(id="gone")], store=AlertStore(path))
    feed(engine, [(150, 0)])
    engine.close()
    engine2, rec2, _ = make([rule()], store=AlertStore(path), clock=clock)
    assert rec2.events() == [("gone:kiln", "rule_removed")]
    assert rec2.alerts[0].state is AlertState.RESOLVED
    assert [a.id for a in engine2.active()] == ["kiln-power-high:kiln"]
    engine2.close()


def test_cli_ack_reaches_the_running_engine(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite"
    engine, rec, clock = make([rule(repeat_interval_secs=60)], store=AlertStore(path))
    feed(engine, [(150, 0)])
    assert cli(tmp_path, "ack", "kiln-power-high:kiln", "--by", "张工", "--comment", "checking")[0] == 0
    clock.advance(120)
    engine.tick(T0)
    # the ack from the other connection is notified and stops the reminder
    assert [a.event for a in rec.alerts] == ["firing", "acknowledged"]
    alert = engine.get("kiln-power-high:kiln")
    assert alert is not None and alert.acked_by == "张工" and alert.ack_comment == "checking"
    engine.close()


def test_cli_silence_reaches_the_running_engine(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite"
    # the CLI stamps silences with the wall clock, as the processor's engine clock is in production
    engine, rec, clock = make([rule()], store=AlertStore(path), clock=ManualClock(datetime.now(UTC)))
    engine.tick(T0)
    rc, out = cli(tmp_path, "silence", "--rule", "kiln-power-high", "--for-secs", "600", "--comment", "test")
    assert rc == 0 and out.startswith("silence 1: kiln-power-high (every source) until ")
    clock.advance(1)
    engine.tick(T0)
    feed(engine, [(150, 0)])
    assert rec.alerts == []
    assert cli(tmp_path, "unsilence", "1")[0] == 0
    engine.tick(T0 + S)
    assert [a.event for a in rec.alerts] == ["firing"]
    engine.close()


def cli(data_dir: Path, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="energymon")
    add_alerts_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["alerts", *argv, "--data-dir", str(data_dir)])
    out = io.StringIO()
    rc = alerts_main(args, out=out)
    return rc, out.getvalue()


def test_cli_lists_active_alerts_and_history(tmp_path: Path) -> None:
    engine, _, _ = make([rule(), rule(id="mill-high", meter="mill", severity="critical")],
                        store=AlertStore(tmp_path / "alerts.sqlite"))
    feed(engine, [(150, 0), (50, 10), (150, 20)])
    engine.observe([pt(500, 0, meter="mill")])
    engine.close()
    rc, out = cli(tmp_path, "list")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["state", "severity", "alert", "since", "acked", "summary"]
    assert {line.split()[2] for line in lines[1:]} == {"kiln-power-high:kiln", "mill-high:mill"}
    rc, out = cli(tmp_path, "list", "--history", "--rule", "kiln-power-high", "--json")
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event"] for e in events] == ["firing", "resolved", "firing"]
    assert all(e["alert_id"] == "kiln-power-high:kiln" for e in events)
    rc, out = cli(tmp_path, "list", "--active", "--source", "mill", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["mill-high:mill"]
    future = datetime(2100, 1, 1, tzinfo=UTC).isoformat()
    assert cli(tmp_path, "list", "--history", "--since", future)[1].splitlines() == [
        "at  event  alert  severity  v  notified  summary"]
    assert cli(tmp_path, "ack", "nope:x")[0] == 1


def test_cli_without_state_file_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(tmp_path, "list")[0] == 2
    assert "has no alert state file" in capsys.readouterr().err
    assert not (tmp_path / "alerts.sqlite").exists()


def test_cli_refuses_a_naive_since(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        cli(tmp_path, "list", "--history", "--since", "2025-03-01T00:00:00")
