"""The ``email`` notifier against a local aiosmtpd server: plain SMTP, STARTTLS with login (password from the
environment), a server down and then back (delivered exactly once), 4xx retried, 5xx dead-lettered."""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from prometheus_client import CollectorRegistry
from services import free_port

from energymon.alerts.engine import Alert, AlertState
from energymon.alerts.notify_email import EmailNotifier
from energymon.alerts_config import EmailNotifier as EmailConfig
from energymon.errors import ConfigError
from energymon.metrics import PipelineMetrics

PASSWORD_ENV = "ENERGYMON_TEST_SMTP_PASSWORD"


class Inbox:
    """aiosmtpd handler: keeps every message; answers from a script of SMTP codes first (then 250)."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.script: list[str] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            if self.script:
                return self.script.pop(0)
            raw = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            self.messages.append(msg)
            self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 OK"


def authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login == b"alerts" and data.password == b"s3cret-pw"
    return AuthResult(success=ok, handled=False)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def alert(state: AlertState = AlertState.FIRING, version: int = 2) -> Alert:
    return Alert(
        rule_id="meter_offline", source="kiln_drive", state=state, severity="critical",
        audience=("energy_manager", "regulator"), summary="窑主电机电表离线", value=3600.0, threshold=45.0,
        started_ms=1_740_816_000_000, fired_ms=1_740_816_000_000,
        resolved_ms=1_740_819_600_000 if state is AlertState.RESOLVED else None, version=version,
        event=state.value,
    )


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.inbox = Inbox()
        self.registry = CollectorRegistry()
        self.metrics = PipelineMetrics(self.registry)
        self.controllers: list[Controller] = []
        self.notifiers: list[EmailNotifier] = []
        self.dead_letters = tmp_path / "dead-letter-ops_mail.jsonl"

    def server(self, port: int | None = None, **kw: Any) -> Controller:
        controller = Controller(self.inbox, hostname="127.0.0.1", port=port or free_port(), **kw)
        controller.start()
        self.controllers.append(controller)
        return controller

    def notifier(self, port: int, **kw: Any) -> EmailNotifier:
        data: dict[str, Any] = {"type": "email", "id": "ops_mail", "host": "127.0.0.1", "port": port,
                                "security": "none", "from_addr": "energymon@plant.example",
                                "to": ["energy-manager@plant.example", "ops@plant.example"], "timeout_ms": 2000}
        data.update(kw)
        if data["security"] == "none" and "username" in data:
            data.setdefault("allow_plaintext_password", True)
        n = EmailNotifier(EmailConfig.model_validate(data), dead_letter_path=self.dead_letters,
                          enterprise="91530102MA6K7LQ8RH", metrics=self.metrics,
                          backoff_base_s=0.05, backoff_cap_s=0.2)
        self.notifiers.append(n)
        return n

    def dead(self) -> list[dict[str, Any]]:
        if not self.dead_letters.exists():
            return []
        return [json.loads(line) for line in self.dead_letters.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    for n in harness.notifiers:
        n.close(5)
    for c in harness.controllers:
        c.stop()


def test_plain_smtp_mail_content(h: Harness) -> None:
    srv = h.server()
    n = h.notifier(srv.port)
    n.notify(alert())
    n.notify(alert(AlertState.RESOLVED, 3))
    wait_until(lambda: len(h.inbox.messages) == 2, "two mails")
    firing, resolved = h.inbox.messages
    assert firing["Subject"] == "[energymon] 【告警】FIRING critical: 窑主电机电表离线 (kiln_drive)"
    assert resolved["Subject"].startswith("[energymon] 【恢复】RESOLVED critical:")
    assert firing["X-Energymon-Alert"] == "meter_offline:kiln_drive" and resolved["X-Energymon-Version"] == "3"
    assert firing["X-Energymon-Delivery"] != resolved["X-Energymon-Delivery"]
    body = firing.get_content()
    assert "告警 alert:       meter_offline:kiln_drive" in body and "91530102MA6K7LQ8RH" in body
    assert "受众 audience:    energy_manager, regulator" in body
    assert h.inbox.envelopes[0] == ("energymon@plant.example",
                                    ["energy-manager@plant.example", "ops@plant.example"])
    # The SMTP server holds the mail before the notifier thread counts it as sent.
    wait_until(lambda: h.registry.get_sample_value("energymon_sent_total", {"stage": "notify"}) == 2, "sent count")


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    key, crt = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return crt, key


def test_starttls_and_login_with_the_password_from_the_environment(
    h: Harness, cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssl

    crt, key = cert
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(crt, key)
    srv = h.server(tls_context=context, require_starttls=True, auth_required=True, authenticator=authenticator)
    monkeypatch.setenv(PASSWORD_ENV, "s3cret-pw")
    n = h.notifier(srv.port, security="starttls", ca_file=str(crt), username="alerts", password_env=PASSWORD_ENV)
    n.notify(alert())
    wait_until(lambda: len(h.inbox.messages) == 1, "the mail over STARTTLS")
    assert h.dead() == []


def test_wrong_password_is_not_retried(h: Harness, cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    crt, key = cert
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(crt, key)
    srv = h.server(tls_context=context, require_starttls=True, auth_required=True, authenticator=authenticator)
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    n = h.notifier(srv.port, security="starttls", ca_file=str(crt), username="alerts", password_env=PASSWORD_ENV)
    n.notify(alert())
    wait_until(lambda: len(h.dead()) == 1, "dead letter")
    assert h.dead()[0]["reason"].startswith("not retriable: SMTP 535") and h.dead()[0]["attempts"] == 1
    assert h.inbox.messages == []


def test_untrusted_certificate_is_refused(h: Harness, cert: tuple[Path, Path]) -> None:
    import ssl

    crt, key = cert
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(crt, key)
    srv = h.server(tls_context=context, require_starttls=True)
    n = h.notifier(srv.port, security="starttls")  # system CAs only: the self-signed certificate fails
    n.notify(alert())
    wait_until(lambda: len(h.dead()) == 1, "dead letter")
    assert "certificate" in h.dead()[0]["reason"] and h.inbox.messages == []


def test_missing_or_non_ascii_password_fails_at_construction(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(ConfigError, match=PASSWORD_ENV):
        h.notifier(25, username="alerts", password_env=PASSWORD_ENV)
    monkeypatch.setenv(PASSWORD_ENV, "密码")
    with pytest.raises(ConfigError, match="non-ASCII"):
        h.notifier(25, username="alerts", password_env=PASSWORD_ENV)


def test_server_down_then_up_delivers_exactly_once(h: Harness) -> None:
    port = free_port()
    n = h.notifier(port, max_retries=100)
    n.notify(alert())
    time.sleep(0.4)  # several refused connections
    assert h.inbox.messages == []
    h.server(port)
    wait_until(lambda: n.pending == 0, "delivery")
    time.sleep(0.3)
    assert len(h.inbox.messages) == 1
    assert h.dead() == []
    errors = h.registry.get_sample_value("energymon_errors_total", {"stage": "notify", "error_type": "NotifyError"})
    assert errors is not None and errors >= 1


def test_4xx_is_retried_and_5xx_is_dead_lettered(h: Harness) -> None:
    srv = h.server()
    n = h.notifier(srv.port)
    h.inbox.script = ["451 4.3.0 try again later"]
    n.notify(alert())
    wait_until(lambda: len(h.inbox.messages) == 1, "the retried mail")
    h.inbox.script = ["554 5.7.1 rejected"]
    n.notify(alert(AlertState.RESOLVED, 3))
    wait_until(lambda: len(h.dead()) == 1, "dead letter")
    assert h.dead()[0]["reason"].startswith("not retriable: SMTP 554")
    assert h.dead()[0]["payload"]["state"] == "resolved"


def test_a_clear_text_password_is_refused_unless_the_plant_file_allows_it() -> None:
    base = {"type": "email", "id": "m", "host": "smtp.example", "port": 25, "security": "none",
            "username": "alerts", "password_env": PASSWORD_ENV, "from_addr": "a@b.c", "to": ["x@y.z"]}
    with pytest.raises(ValueError, match="clear text"):
        EmailConfig.model_validate(base)
    assert EmailConfig.model_validate({**base, "allow_plaintext_password": True}).allow_plaintext_password
    assert EmailConfig.model_validate({**base, "security": "starttls"}).username == "alerts"
    no_login = {k: v for k, v in base.items() if k not in ("username", "password_env")}
    assert EmailConfig.model_validate(no_login).security == "none"  # no password to leak
