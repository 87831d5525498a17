"""Durable alert delivery against real receivers: the outbox survives a restart, each record has its own retry
schedule (one stuck record holds no other, a resolution never overtakes its firing), the retry window ends in a
dead letter that ``energymon alerts replay`` sends again, and every notifier kind (HTTP webhook, aiosmtpd,
Mosquitto, Alertmanager) rides out a receiver outage far longer than five retries.

Back-off is shortened (a few ms) so that an outage of many attempts passes quickly; outages are measured in
failed attempts (the ``errors`` counter), never in seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from prometheus_client import CollectorRegistry
from services import Alertmanager, Mosquitto, free_port
from test_notifiers_alertmanager import CONFIG as AM_CONFIG
from test_notifiers_alertmanager import am_alerts
from test_notifiers_email import Inbox
from test_notifiers_mqtt import retained
from test_webhook import SECRET, SECRET_ENV, HookServer, Reply

from energymon.alerts.cli import add_alerts_parser, alerts_main
from energymon.alerts.engine import Alert, AlertState
from energymon.alerts.notifiers import DELIVERY_HEADER, WebhookNotifier
from energymon.alerts.notify_alertmanager import AlertmanagerNotifier
from energymon.alerts.notify_email import EmailNotifier
from energymon.alerts.notify_mqtt import MqttNotifier
from energymon.alerts.outbox import DeliveryOutbox
from energymon.alerts.state import STATE_FILE
from energymon.alerts_config import AlertmanagerNotifier as AlertmanagerConfig
from energymon.alerts_config import EmailNotifier as EmailConfig
from energymon.alerts_config import MqttNotifier as MqttConfig
from energymon.alerts_config import WebhookNotifier as WebhookConfig
from energymon.metrics import PipelineMetrics
from energymon.topics import alert_topic
from energymon.transport import MqttTransport

pytestmark = pytest.mark.integration

USCC = "91530102MA6K7LQ8RH"
OLD_MAX_RETRIES = 5  # the former default: 6 attempts in all
NOW_MS = int(time.time() * 1000)
FAST = {"backoff_base_s": 0.005, "backoff_cap_s": 0.02}


def alert(state: AlertState = AlertState.FIRING, *, source: str = "kiln_drive", version: int = 2) -> Alert:
    now = NOW_MS
    return Alert(
        rule_id="meter_offline", source=source, state=state, severity="warning", audience=("energy_manager",),
        summary="窑主电机电表离线", value=60.0, threshold=45.0, started_ms=now - 60_000, fired_ms=now - 60_000,
        resolved_ms=now if state is AlertState.RESOLVED else None, version=version, event=state.value,
    )


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Counters:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = PipelineMetrics(self.registry)

    def failed(self) -> float:
        return self.registry.get_sample_value("energymon_errors_total",
                                              {"stage": "notify", "error_type": "NotifyError"}) or 0.0

    def sent(self) -> float:
        return self.registry.get_sample_value("energymon_sent_total", {"stage": "notify"}) or 0.0


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


@pytest.fixture
def servers() -> Iterator[list[HookServer]]:
    made: list[HookServer] = []
    yield made
    for srv in made:
        srv.stop()


def webhook(tmp_path: Path, url: str, counters: Counters, **kw: Any) -> WebhookNotifier:
    config = WebhookConfig(type="webhook", id="plant_hook", url=url, secret_env=SECRET_ENV, timeout_ms=2000)
    kw = {**FAST, **kw}
    return WebhookNotifier(config, dead_letter_path=tmp_path / "dead-letter-plant_hook.jsonl", enterprise=USCC,
                           metrics=counters.metrics, **kw)


def cli(data_dir: Path, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_alerts_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["alerts", *argv, "--data-dir", str(data_dir)])
    out = io.StringIO()
    return alerts_main(args, out=out), out.getvalue()


# --------------------------------------------------------------------------- the outbox


def test_a_record_not_yet_accepted_survives_a_restart_with_the_same_delivery_id(
        tmp_path: Path, secret: None, servers: list[HookServer]) -> None:
    outbox = tmp_path / STATE_FILE
    srv = HookServer().script(*[Reply(503)] * 1000).start()
    servers.append(srv)
    counters = Counters()
    first = webhook(tmp_path, srv.url, counters, outbox_path=outbox)
    first.notify(alert())
    wait_until(lambda: counters.failed() >= 3, "three refused attempts")
    assert first.close(1) is False  # not delivered: kept on disk, not dead-lettered
    assert not (tmp_path / "dead-letter-plant_hook.jsonl").exists()
    (kept,) = DeliveryOutbox(outbox).rows()
    with srv._cond:
        srv.replies.clear()  # the receiver is well again
    again = webhook(tmp_path, srv.url, Counters(), outbox_path=outbox)
    try:
        wait_until(lambda: again.pending == 0, "delivery after the restart")
    finally:
        assert again.close(5) is True
    ids = {r.headers[DELIVERY_HEADER.lower()] for r in srv.received}
    assert ids == {kept.delivery_id} and srv.received[-1].json()["delivery_id"] == kept.delivery_id
    assert DeliveryOutbox(outbox).rows() == []


def test_one_record_in_back_off_holds_no_other_and_a_resolution_waits_for_its_firing(
        tmp_path: Path, secret: None, servers: list[HookServer]) -> None:
    srv = HookServer().script(Reply(503, headers={"Retry-After": "3600"})).start()
    servers.append(srv)
    counters = Counters()
    n = webhook(tmp_path, srv.url, counters)
    try:
        n.notify(alert(source="kiln_drive"))
        srv.wait_for(1)  # kiln's firing: 503, next attempt in an hour (capped at 5 min)
        n.notify(alert(AlertState.RESOLVED, source="kiln_drive", version=3))
        for source in ("mill_drive", "fan_drive", "raw_mill"):
            n.notify(alert(source=source))
            n.notify(alert(AlertState.RESOLVED, source=source, version=3))
        wait_until(lambda: counters.sent() == 6, "the other alerts")
        got = [(r.json()["source"], r.json()["state"]) for r in srv.received[1:]]
        assert sorted(got) == sorted((s, st) for s in ("mill_drive", "fan_drive", "raw_mill")
                                     for st in ("firing", "resolved"))
        for source in ("mill_drive", "fan_drive", "raw_mill"):
            assert got.index((source, "firing")) < got.index((source, "resolved"))
        assert ("kiln_drive", "resolved") not in got and n.pending == 2  # behind its firing
    finally:
        n.close(0.2)


def test_the_retry_window_ends_in_dead_letters_that_replay_sends_again_in_order(
        tmp_path: Path, secret: None, servers: list[HookServer]) -> None:
    data_dir = tmp_path
    outbox = data_dir / STATE_FILE
    srv = HookServer().script(*[Reply(500)] * 1000).start()
    servers.append(srv)
    counters = Counters()
    n = webhook(tmp_path, srv.url, counters, outbox_path=outbox, retry_for_s=0.3)
    try:
        n.notify(alert())
        n.notify(alert(AlertState.RESOLVED, version=3))
        wait_until(lambda: n.pending == 0, "the retry window to end")
        dead = [json.loads(line) for line in (tmp_path / "dead-letter-plant_hook.jsonl").read_text().splitlines()]
        assert [d["payload"]["state"] for d in dead] == ["firing", "resolved"]
        assert dead[0]["reason"].startswith("gave up after ") and " s: HTTP 500" in dead[0]["reason"]
        assert dead[1]["reason"] == f"follows delivery {dead[0]['delivery_id']}, not delivered"
        assert all(r.json()["state"] == "firing" for r in srv.received)  # the resolution never went alone
        rc, listing = cli(data_dir, "deliveries", "--dead")
        assert rc == 0 and dead[0]["delivery_id"] in listing and dead[1]["delivery_id"] in listing
        with srv._cond:
            srv.replies.clear()
        rc, out = cli(data_dir, "replay", "--notifier", "plant_hook")
        assert rc == 0 and out.count("replaying") == 2
        wait_until(lambda: counters.sent() == 2, "the replayed records")
        accepted = srv.received[-2:]
        assert [r.json()["state"] for r in accepted] == ["firing", "resolved"]
        assert [r.headers[DELIVERY_HEADER.lower()] for r in accepted] == [d["delivery_id"] for d in dead]
        assert cli(data_dir, "replay")[0] == 1  # nothing left to replay
        with srv._cond:
            srv.replies.append(Reply(400))
        n.notify(alert(source="mill_drive"))
        wait_until(lambda: n.pending == 0, "a final answer")
        (left,) = DeliveryOutbox(outbox).rows(dead=True)
        rc, out = cli(data_dir, "drop", left.delivery_id)
        assert rc == 0 and out.startswith(f"dropped {left.delivery_id}") and DeliveryOutbox(outbox).rows() == []
    finally:
        n.close(5)


# --------------------------------------------------------------------------- outages longer than 5 retries


def test_webhook_down_for_many_more_attempts_than_the_old_budget_delivers_once(
        tmp_path: Path, secret: None, servers: list[HookServer]) -> None:
    srv = HookServer()
    servers.append(srv)
    counters = Counters()
    n = webhook(tmp_path, srv.url, counters)
    try:
        n.notify(alert())
        wait_until(lambda: counters.failed() >= 4 * (OLD_MAX_RETRIES + 1), "an outage of 24 attempts")
        srv.start()
        wait_until(lambda: counters.sent() == 1, "delivery once the receiver is back")
        assert len(srv.received) == 1 and not (tmp_path / "dead-letter-plant_hook.jsonl").exists()
    finally:
        n.close(5)


def test_email_server_down_for_many_more_attempts_than_the_old_budget_delivers_once(tmp_path: Path) -> None:
    port = free_port()
    counters = Counters()
    config = EmailConfig.model_validate({"type": "email", "id": "ops_mail", "host": "127.0.0.1", "port": port,
                                         "security": "none", "from_addr": "energymon@plant.example",
                                         "to": ["ops@plant.example"], "timeout_ms": 2000})
    n = EmailNotifier(config, dead_letter_path=tmp_path / "dead.jsonl", enterprise=USCC, metrics=counters.metrics,
                      **FAST)
    inbox = Inbox()
    controller: Controller | None = None
    try:
        n.notify(alert())
        wait_until(lambda: counters.failed() >= 4 * (OLD_MAX_RETRIES + 1), "an outage of 24 attempts")
        controller = Controller(inbox, hostname="127.0.0.1", port=port)
        controller.start()
        wait_until(lambda: counters.sent() == 1, "the mail once the server is back")
        assert len(inbox.messages) == 1 and not (tmp_path / "dead.jsonl").exists()
        assert inbox.messages[0]["X-Energymon-Delivery"]
    finally:
        n.close(5)
        if controller is not None:
            controller.stop()


def test_alertmanager_down_for_many_more_attempts_than_the_old_budget_delivers_once(tmp_path: Path) -> None:
    port = free_port()
    counters = Counters()
    config = AlertmanagerConfig.model_validate({"type": "alertmanager", "id": "am", "url": f"http://127.0.0.1:{port}",
                                                "timeout_ms": 2000})
    n = AlertmanagerNotifier(config, dead_letter_path=tmp_path / "dead.jsonl", enterprise=USCC,
                             metrics=counters.metrics, **FAST)
    am = Alertmanager(AM_CONFIG, port=port)
    try:
        n.notify(alert())
        wait_until(lambda: counters.failed() >= 4 * (OLD_MAX_RETRIES + 1), "an outage of 24 attempts")
        am.start()
        wait_until(lambda: counters.sent() == 1, "delivery once Alertmanager is up")
        (got,) = am_alerts(am)
        assert got["labels"]["source"] == "kiln_drive" and got["annotations"]["delivery_id"]
        assert not (tmp_path / "dead.jsonl").exists()
    finally:
        n.close(5)
        am.stop()


def test_mqtt_broker_down_for_many_more_attempts_than_the_old_budget_publishes_the_state(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    counters = Counters()

    def factory() -> MqttTransport:
        return MqttTransport(mosquitto.host, mosquitto.port, client_id=f"alerts-{time.monotonic_ns()}",
                             connect_timeout_secs=0.5, publish_timeout_secs=0.3, reconnect_max_secs=0.2)

    mosquitto.kill()
    n = MqttNotifier(MqttConfig(type="mqtt", id="alert_topics"), enterprise=USCC, transport_factory=factory,
                     metrics=counters.metrics, dead_letter_path=tmp_path / "dead.jsonl", **FAST)
    try:
        n.notify(alert())
        wait_until(lambda: counters.failed() >= 4 * (OLD_MAX_RETRIES + 1), "an outage of 24 attempts")
        mosquitto.start()
        wait_until(lambda: counters.sent() == 1, "the publish once the broker is back")
        topic = alert_topic(USCC, "meter_offline", "kiln_drive")
        state = retained(mosquitto, topic)
        assert state[topic]["state"] == "firing" and state[topic]["delivery_id"]
        assert not (tmp_path / "dead.jsonl").exists()
    finally:
        n.close(5)


def test_a_record_waiting_behind_its_alert_s_firing_is_not_due_before_it() -> None:
    outbox = DeliveryOutbox(None)
    firing, resolved = alert().to_record(), alert(AlertState.RESOLVED, version=3).to_record()
    outbox.add("n", firing, 1_000)
    outbox.add("n", resolved, 1_000)
    (head,) = outbox.due("n", 1_000)
    outbox.retry_at(head.seq, attempts=1, next_ms=60_000, error="HTTP 503")
    # the resolution's own time has come, but it waits for its firing: the worker sleeps until 60 s
    assert outbox.due("n", 2_000) == [] and outbox.next_due_ms("n") == 60_000
    assert [r.event for r in outbox.due("n", 60_000)] == ["firing"]
    outbox.delivered(head.seq)
    assert [r.event for r in outbox.due("n", 60_000)] == ["resolved"]
    outbox.close()
