"""The webhook notifier against a real HTTP server on 127.0.0.1: signing, retries, dead letters."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from energymon.alerts.engine import Alert, AlertState
from energymon.alerts.notifiers import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Notifier,
    WebhookNotifier,
    route,
    sign,
    verify_signature,
)
from energymon.config import WebhookNotifier as WebhookConfig
from energymon.errors import ConfigError
from energymon.metrics import PipelineMetrics

SECRET = "kiln-hook-secret-✓"
SECRET_ENV = "ENERGYMON_TEST_WEBHOOK_SECRET"
USCC = "91530100MA6K7XYZ3B"


# --------------------------------------------------------------------------- a scripted local HTTP server


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: threading.Event | None = None  # the handler waits for this (at most 10 s) before replying


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.monotonic() on arrival

    def json(self) -> dict[str, Any]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is part of the tests


class HookServer:
    """Records every POST; replies from a script (then 200). Created bound but not listening."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.replies: deque[Reply] = deque()
        self.hangs: list[threading.Event] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer._cond:
                    outer.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body,
                                                   time.monotonic()))
                    reply = outer.replies.popleft() if outer.replies else Reply()
                    outer._cond.notify_all()
                if reply.hang is not None:
                    reply.hang.wait(10)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.httpd.server_bind()  # the port is ours; connections are refused until start()
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def script(self, *replies: Reply) -> HookServer:
        with self._cond:
            self.replies.extend(replies)
            self.hangs.extend(r.hang for r in replies if r.hang is not None)
        return self

    def start(self) -> HookServer:
        self.httpd.server_activate()
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)
        self._thread.start()
        return self

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Received]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.received) >= n, timeout):
                raise AssertionError(f"server got {len(self.received)} request(s), expected {n}")
            return list(self.received)

    def stop(self) -> None:
        for hang in self.hangs:
            hang.set()
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
        self.httpd.server_close()


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.registry = CollectorRegistry()
        self.metrics = PipelineMetrics(self.registry)
        self.servers: list[HookServer] = []
        self.notifiers: list[WebhookNotifier] = []
        self.dead_letters = tmp_path / "dead" / "webhook.jsonl"

    def server(self, *replies: Reply, listen: bool = True) -> HookServer:
        srv = HookServer().script(*replies)
        self.servers.append(srv)
        return srv.start() if listen else srv

    def notifier(self, url: str, *, max_retries: int = 5, timeout_ms: int = 2000, secret: bool = True,
                 **kw: Any) -> WebhookNotifier:
        config = WebhookConfig(type="webhook", id="ops-webhook", url=url, timeout_ms=timeout_ms,
                               max_retries=max_retries, secret_env=SECRET_ENV if secret else None)
        kw.setdefault("backoff_base_s", 0.02)
        kw.setdefault("backoff_cap_s", 0.1)
        notifier = WebhookNotifier(config, dead_letter_path=self.dead_letters, enterprise=USCC,
                                   metrics=self.metrics, **kw)
        self.notifiers.append(notifier)
        return notifier

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def failed_attempts(self) -> float:
        return self.sample("energymon_errors_total", stage="notify", error_type="NotifyError")

    def delivered(self) -> float:
        return self.sample("energymon_sent_total", stage="notify")

    def dead(self) -> list[dict[str, Any]]:
        if not self.dead_letters.exists():
            return []
        return [json.loads(line) for line in self.dead_letters.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def h(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    harness = Harness(tmp_path)
    yield harness
    for srv in harness.servers:
        for hang in srv.hangs:
            hang.set()
    for notifier in harness.notifiers:
        notifier.close(timeout=5)
    for srv in harness.servers:
        srv.stop()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def alert(state: AlertState = AlertState.FIRING, *, source: str = "kiln", version: int = 2,
          notifiers: tuple[str, ...] = ()) -> Alert:
    return Alert(
        rule_id="kiln-power-high", source=source, state=state, severity="critical",
        audience=("energy_manager", "regulator"), summary="窑主电机功率过高", value=131.5, threshold=100.0,
        started_ms=1_740_816_000_000, fired_ms=1_740_816_060_000,
        resolved_ms=1_740_816_600_000 if state is AlertState.RESOLVED else None,
        last_notified_ms=1_740_816_060_010, version=version, notifiers=notifiers,
    )


def verified(req: Received, secret: bytes = SECRET.encode(), body: bytes | None = None) -> bool:
    return verify_signature(secret, req.body if body is None else body, req.headers[SIGNATURE_HEADER.lower()],
                            req.headers[TIMESTAMP_HEADER.lower()])


def without_sent_at(req: Received) -> dict[str, Any]:
    data = req.json()
    del data["sent_at"]
    return data


# --------------------------------------------------------------------------- tests


def test_payload_and_signature_verify(h: Harness) -> None:
    srv = h.server()
    notifier = h.notifier(srv.url)
    notifier.notify(alert())
    notifier.notify(alert(AlertState.RESOLVED, version=3))
    first, second = srv.wait_for(2)
    assert verified(first) and verified(second)
    assert not verified(first, body=first.body + b" ")
    assert not verified(first, secret=b"other")
    ts = first.headers[TIMESTAMP_HEADER.lower()]
    header = first.headers[SIGNATURE_HEADER.lower()]
    assert abs(int(ts) - time.time()) < 120
    # the timestamp is signed: another one does not verify, and a stale one is refused even though it verifies
    assert not verify_signature(SECRET.encode(), first.body, header, str(int(ts) - 1))
    assert not verify_signature(SECRET.encode(), first.body, header, ts, now_s=int(ts) + 301)
    assert verify_signature(SECRET.encode(), first.body, header, ts, now_s=int(ts) + 299)
    assert first.headers["content-type"].startswith("application/json")
    data = first.json()
    assert data["status"] == "firing" and data["state"] == "firing" and data["enterprise"] == USCC
    assert data["id"] == "kiln-power-high:kiln" and data["version"] == 2 and data["value"] == 131.5
    assert data["summary"] == "窑主电机功率过高" and data["audience"] == ["energy_manager", "regulator"]
    sent_at = datetime.fromisoformat(data["sent_at"])
    assert sent_at.utcoffset() is not None
    assert second.json()["status"] == "resolved" and second.json()["resolved_ms"] == 1_740_816_600_000
    ids = {first.headers[DELIVERY_HEADER.lower()], second.headers[DELIVERY_HEADER.lower()]}
    assert len(ids) == 2 and all(uuid.UUID(i) for i in ids)
    assert data["delivery_id"] == first.headers[DELIVERY_HEADER.lower()] and data["schema_version"] == 2
    assert notifier.close(5) is True
    assert h.delivered() == 2 and h.dead() == []


def test_without_secret_env_nothing_is_signed(h: Harness) -> None:
    srv = h.server()
    notifier = h.notifier(srv.url, secret=False)
    notifier.notify(alert())
    (req,) = srv.wait_for(1)
    assert SIGNATURE_HEADER.lower() not in req.headers


def test_missing_secret_variable_fails_at_construction(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(ConfigError, match=f"{SECRET_ENV} is not set"):
        h.notifier("http://127.0.0.1:9/hook")


def test_server_down_then_up_delivers_exactly_once(h: Harness) -> None:
    srv = h.server(listen=False)
    notifier = h.notifier(srv.url, max_retries=100)
    notifier.notify(alert())
    wait_until(lambda: h.failed_attempts() >= 2, "two refused connections")
    assert srv.received == []
    srv.start()
    (req,) = srv.wait_for(1)
    assert notifier.close(5) is True
    assert len(srv.received) == 1 and h.delivered() == 1 and h.dead() == []
    assert verified(req)


def test_500_twice_then_200_is_retried_with_the_same_delivery_id(h: Harness) -> None:
    srv = h.server(Reply(500), Reply(503))
    notifier = h.notifier(srv.url, max_retries=5)
    notifier.notify(alert())
    requests = srv.wait_for(3)
    assert notifier.close(5) is True
    assert len(srv.received) == 3
    assert len({r.headers[DELIVERY_HEADER.lower()] for r in requests}) == 1
    for r in requests:
        assert verified(r)
    assert without_sent_at(requests[0]) == without_sent_at(requests[2])
    assert h.delivered() == 1 and h.failed_attempts() == 2 and h.dead() == []


def test_timeout_is_retried_and_the_delivery_id_lets_the_receiver_deduplicate(h: Harness) -> None:
    srv = h.server(Reply(200, hang=threading.Event()))  # answers only after the client gave up
    notifier = h.notifier(srv.url, timeout_ms=200)
    notifier.notify(alert())
    first, second = srv.wait_for(2)
    assert first.headers[DELIVERY_HEADER.lower()] == second.headers[DELIVERY_HEADER.lower()]
    assert notifier.close(5) is True
    assert h.delivered() == 1 and h.dead() == []


def test_400_is_dead_lettered_without_retry(h: Harness) -> None:
    srv = h.server(Reply(400))
    notifier = h.notifier(srv.url, max_retries=5)
    notifier.notify(alert())
    assert notifier.close(5) is True
    assert len(srv.received) == 1
    (dead,) = h.dead()
    assert dead["reason"].startswith("not retriable: HTTP 400")
    assert dead["attempts"] == 1 and dead["status_code"] == 400
    assert dead["delivery_id"] == srv.received[0].headers[DELIVERY_HEADER.lower()]
    assert dead["payload"]["id"] == "kiln-power-high:kiln" and dead["payload"]["status"] == "firing"
    assert h.delivered() == 0
    assert h.sample("energymon_dropped_total", stage="notify", reason="dead_letter") == 1


def test_always_500_is_dead_lettered_after_max_retries(h: Harness) -> None:
    srv = h.server(*[Reply(500)] * 10)
    notifier = h.notifier(srv.url, max_retries=3)
    notifier.notify(alert(AlertState.RESOLVED, version=3))
    assert notifier.close(5) is True
    assert len(srv.received) == 4
    (dead,) = h.dead()
    assert dead["reason"] == "gave up after 4 attempts: HTTP 500: ok"
    assert dead["attempts"] == 4 and dead["notifier"] == "ops-webhook" and dead["url"] == srv.url
    assert dead["payload"]["status"] == "resolved" and dead["payload"]["version"] == 3
    assert datetime.fromisoformat(dead["dead_lettered_at"]).utcoffset() is not None


def test_retry_after_is_honoured(h: Harness) -> None:
    srv = h.server(Reply(429, headers={"Retry-After": "1"}))
    notifier = h.notifier(srv.url, backoff_cap_s=0.01)
    notifier.notify(alert())
    first, second = srv.wait_for(2, timeout=5)
    assert second.at - first.at >= 0.95
    assert notifier.close(5) is True and h.delivered() == 1


def test_notify_returns_at_once_while_the_server_hangs(h: Harness) -> None:
    hang = threading.Event()
    srv = h.server(Reply(200, hang=hang))
    notifier = h.notifier(srv.url, timeout_ms=60_000)
    notifier.notify(alert(version=1))
    srv.wait_for(1)  # the worker is now stuck in a request
    started = time.monotonic()
    for version in range(2, 202):
        notifier.notify(alert(version=version))
    elapsed = time.monotonic() - started
    # none of the calls waited for the hung request (it times out only after 60 s): a bound on what is waited
    # for, not on the machine's speed
    assert elapsed < 30, f"200 notify() calls took {elapsed:.3f} s"
    assert not hang.is_set() and len(srv.received) == 1
    assert notifier.pending == 201
    hang.set()
    assert notifier.close(10) is True
    assert [r.json()["version"] for r in srv.received] == list(range(1, 202))
    assert h.delivered() == 201


def test_close_timeout_dead_letters_what_is_left(h: Harness) -> None:
    srv = h.server(*[Reply(500)] * 10)
    notifier = h.notifier(srv.url, max_retries=100, backoff_base_s=30, backoff_cap_s=30)
    notifier.notify(alert(source="kiln"))
    notifier.notify(alert(source="mill"))
    wait_until(lambda: h.failed_attempts() >= 2, "the first failed attempts")
    started = time.monotonic()
    assert notifier.close(timeout=0.2) is False
    assert time.monotonic() - started < 3
    notifier.notify(alert(source="raw-mill"))  # after close: straight to the dead-letter file
    reasons = {d["payload"]["source"]: (d["reason"], d["attempts"]) for d in h.dead()}
    assert reasons == {  # each record has its own schedule: both were tried once
        "kiln": ("notifier closed before delivery; last error: HTTP 500: ok", 1),
        "mill": ("notifier closed before delivery; last error: HTTP 500: ok", 1),
        "raw-mill": ("notifier closed", 0),
    }


def test_full_queue_dead_letters_instead_of_blocking(h: Harness) -> None:
    hang = threading.Event()
    srv = h.server(Reply(200, hang=hang))
    notifier = h.notifier(srv.url, queue_max=2)
    notifier.notify(alert(version=1))
    srv.wait_for(1)
    for version in (2, 3, 4):
        notifier.notify(alert(version=version))
    (dead,) = h.dead()
    assert dead["payload"]["version"] == 4 and dead["reason"] == "queue full (2 alerts waiting)"
    hang.set()
    assert notifier.close(5) is True
    assert [r.json()["version"] for r in srv.received] == [1, 2, 3]


def test_pending_alerts_are_refused(h: Harness) -> None:
    notifier = h.notifier("http://127.0.0.1:9/hook")
    with pytest.raises(ValueError, match="pending"):
        notifier.notify(alert(AlertState.PENDING))


def test_verify_signature_rejects_malformed_headers() -> None:
    body = b'{"a":1}'
    now = int(time.time())
    good = sign(b"k", body, now)
    assert verify_signature(b"k", body, good, str(now))
    assert verify_signature(b"k", body, good.upper().replace("SHA256=", "sha256="), str(now))
    digest = good[len("sha256="):]
    for header in ("", digest, "sha1=" + digest, "sha256=", "sha256=zz", "sha256=é", good + "0"):
        assert not verify_signature(b"k", body, header, str(now)), header
    for ts in ("", "abc", "-1", f"{now}.5", "1" * 13, str(now - 3600)):
        assert not verify_signature(b"k", body, good, ts), ts


class Collecting:
    def __init__(self, notifier_id: str) -> None:
        self._id = notifier_id
        self.alerts: list[Alert] = []

    @property
    def id(self) -> str:
        return self._id

    def notify(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def close(self, timeout: float | None = 10.0) -> bool:
        return True


def test_route_sends_to_the_rules_notifiers_or_to_all() -> None:
    a, b = Collecting("a"), Collecting("b")
    assert isinstance(a, Notifier)
    notify = route([a, b])
    notify(alert(notifiers=("b",)))
    notify(alert(notifiers=()))
    notify(alert(notifiers=("nope",)))
    assert (len(a.alerts), len(b.alerts)) == (1, 2)


def test_an_acknowledgement_goes_only_to_the_notifiers_that_heard_the_cycle() -> None:
    heard, other = Collecting("heard"), Collecting("other")
    notify = route([heard, other])
    firing = alert()
    ack = Alert(**{**{f: getattr(firing, f) for f in ("rule_id", "source", "state", "severity", "audience",
                                                      "summary", "value", "threshold", "started_ms", "fired_ms")},
                   "version": 3, "event": "acknowledged", "acked_by": "张工", "acked_ms": 1_740_816_100_000,
                   "ack_comment": "风机已更换", "sent_to": ("heard",)})
    assert notify(ack) == ["heard"]
    assert heard.alerts[0].ack_comment == "风机已更换" and other.alerts == []
