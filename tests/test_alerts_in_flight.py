"""Several delivery attempts in flight per notifier: a receiver that hangs on the records of some alerts holds up
only those alerts. The others are delivered (and accepted) while the hanging requests are still open, which the
receiver itself observes; per alert the records still go one at a time and in order, with one delivery id per
record whatever the retries.

Everything is judged by conditions the receiver sees (requests open, records accepted), never by seconds.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from prometheus_client import CollectorRegistry
from services import free_port

from energymon.alerts.engine import Alert, AlertState
from energymon.alerts.notifiers import WebhookNotifier
from energymon.alerts.notify_email import EmailNotifier
from energymon.alerts.outbox import DeliveryOutbox
from energymon.alerts.state import STATE_FILE
from energymon.alerts_config import EmailNotifier as EmailConfig
from energymon.alerts_config import WebhookNotifier as WebhookConfig
from energymon.metrics import PipelineMetrics

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)
FAST = {"backoff_base_s": 0.005, "backoff_cap_s": 0.02}
SOURCES = [f"meter_{i:02d}" for i in range(12)]


def alert(source: str, state: AlertState = AlertState.FIRING) -> Alert:
    firing = state is AlertState.FIRING
    return Alert(
        rule_id="meter_offline", source=source, state=state, severity="warning", audience=("energy_manager",),
        summary=f"{source} 离线", value=60.0, threshold=45.0, started_ms=NOW_MS - 60_000, fired_ms=NOW_MS - 60_000,
        resolved_ms=None if firing else NOW_MS, version=2 if firing else 3, event=state.value,
    )


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@dataclass(frozen=True)
class Event:
    what: str  # "open" (the request arrived), "accepted" (answered 200; the sender may have timed out before)
    source: str
    state: str
    delivery_id: str


class SlowReceiver:
    """A webhook receiver that holds the requests of the alerts in ``hang`` open until :meth:`release` (or
    forever), and answers every other request 200 at once. It logs each request's arrival and answer in order."""

    def __init__(self, hang: set[str]) -> None:
        self.hang = set(hang)
        self.released = threading.Event()
        self.events: list[Event] = []
        self.open: dict[int, Event] = {}  # request number → the request, while it is not answered
        self._cond = threading.Condition()
        self._n = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                ev = Event("open", body["source"], body["state"], self.headers["X-Energymon-Delivery"])
                with outer._cond:
                    outer._n += 1
                    n = outer._n
                    outer.events.append(ev)
                    outer.open[n] = ev
                    outer._cond.notify_all()
                if ev.source in outer.hang:
                    outer.released.wait(120)
                with outer._cond:  # logged before the answer leaves, so it precedes whatever the answer causes
                    del outer.open[n]
                    outer.events.append(Event("accepted", ev.source, ev.state, ev.delivery_id))
                    outer._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a sender that timed out and hung up is part of the tests

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)
        self._thread.start()

    def snapshot(self) -> tuple[list[Event], list[Event]]:
        """(every event so far, the requests open now)."""
        with self._cond:
            return list(self.events), list(self.open.values())

    def accepted(self, source: str | None = None) -> list[Event]:
        with self._cond:
            return [e for e in self.events if e.what == "accepted" and source in (None, e.source)]

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self._thread.join(5)
        self.httpd.server_close()


@pytest.fixture
def receivers() -> Iterator[list[SlowReceiver]]:
    made: list[SlowReceiver] = []
    yield made
    for r in made:
        r.stop()


class Counters:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = PipelineMetrics(self.registry)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, {"stage": "notify", **labels}) or 0.0


def webhook(tmp_path: Path, url: str, counters: Counters, *, timeout_ms: int, **kw: Any) -> WebhookNotifier:
    config = WebhookConfig(type="webhook", id="plant_hook", url=url, timeout_ms=timeout_ms, **kw)
    return WebhookNotifier(config, dead_letter_path=tmp_path / "dead-letter-plant_hook.jsonl",
                           metrics=counters.metrics, outbox_path=tmp_path / STATE_FILE, **FAST)


def notify_all(n: WebhookNotifier, sources: list[str]) -> None:
    for source in sources:
        n.notify(alert(source))
        n.notify(alert(source, AlertState.RESOLVED))


def assert_in_order(events: list[Event], source: str) -> None:
    """The resolution of ``source`` arrived only after its firing was accepted."""
    mine = [e for e in events if e.source == source]
    firing_accepted = next(i for i, e in enumerate(mine) if e.what == "accepted" and e.state == "firing")
    resolved_open = [i for i, e in enumerate(mine) if e.what == "open" and e.state == "resolved"]
    assert resolved_open and min(resolved_open) > firing_accepted, mine


def test_alerts_behind_requests_that_hang_are_delivered_while_those_are_still_open(
        tmp_path: Path, receivers: list[SlowReceiver]) -> None:
    stuck = {"meter_00", "meter_05"}  # two of the default four slots hang; the others carry the rest
    rx = SlowReceiver(stuck)
    receivers.append(rx)
    counters = Counters()
    n = webhook(tmp_path, rx.url, counters, timeout_ms=60_000)
    assert n.max_in_flight == 4
    try:
        notify_all(n, SOURCES)
        others = [s for s in SOURCES if s not in stuck]
        wait_until(lambda: len(rx.accepted()) == 2 * len(others), "every other alert's firing and resolution")
        events, still_open = rx.snapshot()
        # the receiver still holds both stuck firings open: the others went past them
        assert sorted((e.source, e.state) for e in still_open) == [("meter_00", "firing"), ("meter_05", "firing")]
        assert {e.source for e in events} == set(SOURCES)
        assert not [e for e in events if e.source in stuck and e.state == "resolved"]  # behind their firing
        # the two stuck firings are the only attempts under way; their resolutions wait behind them
        wait_until(lambda: sorted(n.in_flight) == ["meter_offline:meter_00", "meter_offline:meter_05"]
                   and n.pending == 4, "the other deliveries to finish on the sender's side")
        for source in others:
            assert_in_order(events, source)
        rx.release()
        wait_until(lambda: n.pending == 0, "the stuck alerts once the receiver answers")
    finally:
        assert n.close(10) is True
    events, still_open = rx.snapshot()
    assert not still_open
    accepted = rx.accepted()
    assert len(accepted) == 2 * len(SOURCES) == counters.value("energymon_sent_total")
    assert len({e.delivery_id for e in accepted}) == len(accepted)  # each record once
    for source in SOURCES:
        assert_in_order(events, source)
        assert [e.state for e in rx.accepted(source)] == ["firing", "resolved"]
    assert DeliveryOutbox(tmp_path / STATE_FILE).rows() == []


def test_a_receiver_that_never_answers_one_alert_times_out_and_retries_it_with_its_delivery_id_alone(
        tmp_path: Path, receivers: list[SlowReceiver]) -> None:
    rx = SlowReceiver({"meter_03"})
    receivers.append(rx)
    counters = Counters()
    n = webhook(tmp_path, rx.url, counters, timeout_ms=300, max_in_flight=2)
    try:
        notify_all(n, SOURCES)
        others = [s for s in SOURCES if s != "meter_03"]
        # meter_03's attempts time out again and again; each failed attempt is counted, and the rest go on
        wait_until(lambda: len(rx.accepted()) == 2 * len(others) and
                   counters.value("energymon_errors_total", error_type="NotifyError") >= 3,
                   "the other alerts while meter_03 times out at least three times")
        events, _ = rx.snapshot()
        stuck = [e for e in events if e.source == "meter_03" and e.what == "open"]
        assert len(stuck) >= 3 and {e.state for e in stuck} == {"firing"}  # its resolution waits
        assert len({e.delivery_id for e in stuck}) == 1  # every attempt of the firing: the same delivery id
        assert not rx.accepted("meter_03")
        rx.release()
        wait_until(lambda: n.pending == 0, "meter_03 once the receiver answers in time")
    finally:
        assert n.close(10) is True
    events, _ = rx.snapshot()
    assert_in_order(events, "meter_03")
    firings = {e.delivery_id for e in events if e.source == "meter_03" and e.state == "firing"}
    assert len(firings) == 1  # a receiver that de-duplicates on the id acts on it once
    assert {e.state for e in rx.accepted("meter_03")} == {"firing", "resolved"}
    for source in others:
        assert [e.state for e in rx.accepted(source)] == ["firing", "resolved"]


def test_with_one_attempt_in_flight_the_other_alerts_wait_for_the_hanging_one(
        tmp_path: Path, receivers: list[SlowReceiver]) -> None:
    rx = SlowReceiver({"meter_00"})
    receivers.append(rx)
    counters = Counters()
    n = webhook(tmp_path, rx.url, counters, timeout_ms=60_000, max_in_flight=1)
    try:
        n.notify(alert("meter_00"))
        wait_until(lambda: bool(rx.snapshot()[1]), "the hanging request")
        notify_all(n, SOURCES[1:4])
        rx.release()
        wait_until(lambda: n.pending == 0, "everything")
    finally:
        assert n.close(10) is True
    events, _ = rx.snapshot()
    done = events.index(Event("accepted", "meter_00", "firing", events[0].delivery_id))
    assert all(e.source == "meter_00" for e in events[:done])  # nobody else got through while it hung
    assert len(rx.accepted()) == 1 + 2 * 3


def test_max_in_flight_is_validated() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        WebhookConfig(type="webhook", id="h", url="http://127.0.0.1:9/hook", max_in_flight=0)


def test_due_leaves_out_the_alerts_being_delivered() -> None:
    outbox = DeliveryOutbox()
    for source in ("a", "b", "c"):
        outbox.add("hook", alert(source).to_record(), NOW_MS)
        outbox.add("hook", alert(source, AlertState.RESOLVED).to_record(), NOW_MS)
    busy = {"meter_offline:a"}
    due = outbox.due("hook", NOW_MS, exclude=busy)
    assert [(r.alert_id, r.event) for r in due] == [("meter_offline:b", "firing"), ("meter_offline:c", "firing")]
    assert outbox.next_due_ms("hook", exclude={"meter_offline:a", "meter_offline:b", "meter_offline:c"}) is None
    assert outbox.next_due_ms("hook", exclude=busy) == NOW_MS


class SlowInbox:
    """aiosmtpd handler: holds the DATA of one alert's mails until released; takes every other mail at once."""

    def __init__(self, hang_alert: str) -> None:
        self.hang_alert = hang_alert
        self.released = threading.Event()
        self.taken: list[tuple[str, str, str]] = []  # (alert id, version, delivery id) in the order accepted
        self.holding = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        alert_id = str(msg["X-Energymon-Alert"])
        if alert_id == self.hang_alert:
            with self.lock:
                self.holding += 1
            while not self.released.is_set():
                await asyncio.sleep(0.01)
            with self.lock:
                self.holding -= 1
        with self.lock:
            self.taken.append((alert_id, str(msg["X-Energymon-Version"]), str(msg["X-Energymon-Delivery"])))
        return "250 OK"


def test_email_alerts_behind_a_mail_the_server_holds_are_accepted_meanwhile(tmp_path: Path) -> None:
    inbox = SlowInbox("meter_offline:meter_00")
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    counters = Counters()
    config = EmailConfig.model_validate({"type": "email", "id": "ops_mail", "host": "127.0.0.1",
                                         "port": controller.port, "security": "none",
                                         "from_addr": "energymon@plant.example", "to": ["ops@plant.example"],
                                         "timeout_ms": 60_000})
    n = EmailNotifier(config, dead_letter_path=tmp_path / "dead.jsonl", metrics=counters.metrics,
                      outbox_path=tmp_path / STATE_FILE, **FAST)
    try:
        notify_all(n, SOURCES[:6])
        wait_until(lambda: len(inbox.taken) == 2 * 5, "the other alerts' mails")
        with inbox.lock:
            assert inbox.holding == 1  # meter_00's firing is still in the server's hands
            assert "meter_offline:meter_00" not in {a for a, _, _ in inbox.taken}
        inbox.released.set()
        wait_until(lambda: n.pending == 0, "meter_00's mails once the server takes them")
    finally:
        inbox.released.set()
        assert n.close(10) is True
        controller.stop()
    assert len(inbox.taken) == 12 and len({d for _, _, d in inbox.taken}) == 12
    for source in SOURCES[:6]:  # firing (v2), then resolution (v3): sent only after the firing's 250
        assert [v for a, v, _ in inbox.taken if a == f"meter_offline:{source}"] == ["2", "3"]
