"""The shipped broker hardening (deploy/mosquitto/acl and tls.conf) against a real Mosquitto.

A test CA issues a server certificate for 127.0.0.1/localhost and client certificates whose CN is the MQTT user
name (``use_identity_as_username``): two gateways and a processor. The broker runs the repository's
``tls.conf`` (port, certificate paths and ACL path rewritten to the test's) and ``acl`` (only the enterprise id
substituted), so what is shipped is what is tested.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from services import Mosquitto, free_port, require_binary

from energymon.config import TlsConfig
from energymon.errors import TransportError
from energymon.interfaces import Message, Transport
from energymon.topics import alert_topic, readings_filter, readings_topic, status_topic
from energymon.transport import MqttTransport, open_transport

pytestmark = pytest.mark.integration

T = TypeVar("T")

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"
ENTERPRISE = "91320500MA1TEST01X"
#: Bound on waiting for an expected delivery.
TIMEOUT = 10.0
#: How long a message that must NOT arrive is waited for (it would arrive within milliseconds on loopback).
QUIET = 1.5


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 120)

    return asyncio.run(bounded())


def _openssl(args: list[str], cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(cwd: Path, name: str, cn: str, ext: str | None = None) -> None:
    """Key ``name.key`` and certificate ``name.pem`` with subject CN=``cn``, signed by ``ca``."""
    _openssl(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
              "-subj", f"/CN={cn}"], cwd)  # fmt: skip
    args = ["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2"]  # fmt: skip
    if ext is not None:
        (cwd / f"{name}.ext").write_text(ext, encoding="utf-8")
        args += ["-extfile", f"{name}.ext"]
    _openssl(args, cwd)


def _broker_conf(tls_port: int, certs: Path, acl_file: Path) -> str:
    """deploy/mosquitto/tls.conf with the port and the file paths pointed at the test's."""
    text = (DEPLOY / "tls.conf").read_text(encoding="utf-8")
    replacements = {
        r"^listener 8883$": f"listener {tls_port} 127.0.0.1",
        r"^cafile .*$": f"cafile {certs / 'ca.pem'}",
        r"^certfile .*$": f"certfile {certs / 'server.pem'}",
        r"^keyfile .*$": f"keyfile {certs / 'server.key'}",
        r"^acl_file .*$": f"acl_file {acl_file}",
    }
    for pattern, value in replacements.items():
        text, count = re.subn(pattern, value, text, flags=re.MULTILINE)
        assert count == 1, f"deploy/mosquitto/tls.conf: expected one line matching {pattern!r}"
    for required in ("require_certificate true", "use_identity_as_username true", "tls_version tlsv1.2"):
        assert re.search(rf"^{required}$", text, flags=re.MULTILINE), required
    return text


@dataclass
class SecureBroker:
    broker: Mosquitto
    url: str
    port: int
    certs: Path

    def tls(self, name: str | None) -> TlsConfig:
        """TLS settings of a client holding certificate ``name`` (None: no client certificate)."""
        if name is None:
            return TlsConfig(ca_file=self.certs / "ca.pem")
        return TlsConfig(
            ca_file=self.certs / "ca.pem",
            cert_file=self.certs / f"{name}.pem",
            key_file=self.certs / f"{name}.key",
        )


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[SecureBroker]:
    require_binary("openssl")
    certs = tmp_path / "certs"
    certs.mkdir()
    _openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
              "-days", "2", "-subj", "/CN=energymon-test-ca"], certs)  # fmt: skip
    _issue(certs, "server", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _issue(certs, "gw-a", "gw-a")
    _issue(certs, "gw-b", "gw-b")
    _issue(certs, "processor", "processor")

    acl_text = (DEPLOY / "acl").read_text(encoding="utf-8")
    assert "ENTERPRISE" in acl_text
    acl_file = tmp_path / "energymon.acl"
    acl_file.write_text(acl_text.replace("ENTERPRISE", ENTERPRISE), encoding="utf-8")

    tls_port = free_port()
    broker = Mosquitto(extra_conf=_broker_conf(tls_port, certs, acl_file))
    try:
        broker.start()
        yield SecureBroker(broker, f"mqtts://127.0.0.1:{tls_port}", tls_port, certs)
    finally:
        broker.stop()


class Inbox:
    """Thread-safe collector of received messages (handlers run on paho's network thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages: list[tuple[str, bytes]] = []

    def __call__(self, message: Message) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def payloads(self) -> list[bytes]:
        with self._lock:
            return [payload for _, payload in self.messages]

    async def wait_for(self, payload: bytes, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while payload not in self.payloads():
            if time.monotonic() > deadline:
                raise AssertionError(f"{payload!r} not received within {timeout} s; got {self.messages}")
            await asyncio.sleep(0.02)


async def _close(*transports: Transport) -> None:
    for transport in transports:
        await transport.close()


def test_gateway_publishes_only_below_its_own_prefix(secure_broker: SecureBroker) -> None:
    url = secure_broker.url

    async def scenario() -> None:
        inbox = Inbox()
        processor = open_transport(url, client_id="proc-1", tls=secure_broker.tls("processor"))
        processor.subscribe(readings_filter(ENTERPRISE), inbox)
        processor.subscribe(status_topic(ENTERPRISE, "+"), inbox)
        processor.subscribe(f"energymon/v1/{ENTERPRISE}/alerts/#", inbox)
        await processor.connect()

        status_a = status_topic(ENTERPRISE, "gw-a")
        gw_a = open_transport(
            url,
            client_id="energymon-gw-gw-a",
            tls=secure_broker.tls("gw-a"),
            will=(status_a, b"offline"),
            birth=(status_a, b"online"),
        )
        await gw_a.connect()

        # Own prefix: readings and the birth message on the status topic are delivered.
        await gw_a.publish(readings_topic(ENTERPRISE, "gw-a"), b"a-own", qos=1)
        await inbox.wait_for(b"a-own")
        await inbox.wait_for(b"online")

        # Gateway B's topic: QoS 1 is refused with a v5 PUBACK reason code (0x87, not authorised) ...
        with pytest.raises(TransportError, match=r"(?i)not authori[sz]ed"):
            await gw_a.publish(readings_topic(ENTERPRISE, "gw-b"), b"a-as-b-qos1", qos=1)
        # ... QoS 0 is dropped silently; neither ever reaches the processor.
        await gw_a.publish(readings_topic(ENTERPRISE, "gw-b"), b"a-as-b-qos0", qos=0)
        # Nor may a gateway forge alert state or write to another enterprise.
        await gw_a.publish(alert_topic(ENTERPRISE, "rule", "gw-b"), b"a-forged-alert", qos=0)
        await gw_a.publish(readings_topic("OTHER", "gw-a"), b"a-other-enterprise", qos=0)
        # A later, authorised message arrives; the forbidden ones never do.
        await gw_a.publish(readings_topic(ENTERPRISE, "gw-a"), b"a-marker", qos=1)
        await inbox.wait_for(b"a-marker")
        await asyncio.sleep(QUIET)
        forbidden = {b"a-as-b-qos1", b"a-as-b-qos0", b"a-forged-alert", b"a-other-enterprise"}
        assert forbidden.isdisjoint(inbox.payloads()), inbox.messages

        # Gateway B may publish on its own topic; the processor may write alert state.
        gw_b = open_transport(url, client_id="energymon-gw-gw-b", tls=secure_broker.tls("gw-b"))
        await gw_b.connect()
        await gw_b.publish(readings_topic(ENTERPRISE, "gw-b"), b"b-own", qos=1)
        await inbox.wait_for(b"b-own")
        await processor.publish(alert_topic(ENTERPRISE, "rule", "gw-b"), b"alert", qos=1, retain=True)
        await inbox.wait_for(b"alert")
        # The retained alert is cleared again so the broker holds no state beyond the test.
        await processor.publish(alert_topic(ENTERPRISE, "rule", "gw-b"), b"", qos=1, retain=True)
        await _close(gw_a, gw_b, processor)

    run(scenario())


def test_processor_shared_subscription_receives_readings(secure_broker: SecureBroker) -> None:
    url = secure_broker.url

    async def scenario() -> None:
        inbox = Inbox()
        processor = open_transport(url, client_id="proc-shared", tls=secure_broker.tls("processor"))
        processor.subscribe(readings_filter(ENTERPRISE, share_group="processors"), inbox)
        await processor.connect()
        gw_a = open_transport(url, client_id="gw-a", tls=secure_broker.tls("gw-a"))
        await gw_a.connect()
        await gw_a.publish(readings_topic(ENTERPRISE, "gw-a"), b"shared", qos=1)
        await inbox.wait_for(b"shared")
        await _close(gw_a, processor)

    run(scenario())


def test_gateway_cannot_read_other_gateways(secure_broker: SecureBroker) -> None:
    url = secure_broker.url

    async def scenario() -> None:
        snoop = Inbox()
        gw_b = open_transport(url, client_id="gw-b-snoop", tls=secure_broker.tls("gw-b"))
        gw_b.subscribe(readings_filter(ENTERPRISE), snoop)
        await gw_b.connect()
        gw_a = open_transport(url, client_id="gw-a", tls=secure_broker.tls("gw-a"))
        await gw_a.connect()
        await gw_a.publish(readings_topic(ENTERPRISE, "gw-a"), b"private", qos=1)
        await asyncio.sleep(QUIET)
        assert snoop.payloads() == []
        await _close(gw_a, gw_b)

    run(scenario())


def test_client_without_certificate_cannot_connect(
    secure_broker: SecureBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="energymon.transport")

    async def scenario() -> None:
        anonymous = MqttTransport(
            "127.0.0.1",
            secure_broker.port,
            client_id="no-cert",
            tls=secure_broker.tls(None),
            connect_timeout_secs=2.0,
            publish_timeout_secs=1.0,
        )
        try:
            with pytest.raises(TransportError):
                await anonymous.connect()
                # connect() may also return unconnected (handshake failures are retried in the background).
                assert not anonymous.connected
                await anonymous.publish(readings_topic(ENTERPRISE, "gw-a"), b"never", qos=1)
            assert not anonymous.connected
        finally:
            await anonymous.close()

    run(scenario())
    # the broker's refusal of the missing certificate is logged with its cause, once
    causes = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "'no-cert'" in r.getMessage()]
    assert len(causes) == 1 and "certificate" in causes[0].lower(), causes


def test_every_forbidden_publish_is_refused(secure_broker: SecureBroker) -> None:
    """Gateways write only their own readings and status; the processor writes no readings and no status (the
    ACL's ``pattern`` lines apply to its user name too, its ``deny`` takes that back)."""
    url = secure_broker.url

    async def scenario() -> None:
        inbox = Inbox()
        watcher = open_transport(url, client_id="watcher", tls=secure_broker.tls("processor"))
        watcher.subscribe(readings_filter(ENTERPRISE), inbox)
        watcher.subscribe(status_topic(ENTERPRISE, "+"), inbox)
        watcher.subscribe(f"energymon/v1/{ENTERPRISE}/alerts/#", inbox)
        await watcher.connect()
        gw_a = open_transport(url, client_id="energymon-gw-gw-a", tls=secure_broker.tls("gw-a"))
        processor = open_transport(url, client_id="proc-forger", tls=secure_broker.tls("processor"))
        await gw_a.connect()
        await processor.connect()
        forbidden = [
            (gw_a, f"energymon/v1/{ENTERPRISE}/gw-a/other", b"gw-a-other-topic"),
            (gw_a, f"energymon/v1/{ENTERPRISE}/gw-a/x/readings", b"gw-a-deeper"),
            (gw_a, status_topic(ENTERPRISE, "gw-b"), b"gw-a-as-b-status"),
            (gw_a, readings_topic(ENTERPRISE, "gw-b"), b"gw-a-as-b"),
            (gw_a, alert_topic(ENTERPRISE, "rule", "gw-a"), b"gw-a-alert"),
            (processor, readings_topic(ENTERPRISE, "processor"), b"proc-own-readings"),
            (processor, status_topic(ENTERPRISE, "processor"), b"proc-own-status"),
            (processor, readings_topic(ENTERPRISE, "gw-a"), b"proc-as-gw-a"),
            (processor, status_topic(ENTERPRISE, "gw-a"), b"proc-as-gw-a-status"),
        ]
        for client, topic, payload in forbidden:
            with pytest.raises(TransportError, match=r"(?i)not authori[sz]ed"):
                await client.publish(topic, payload, qos=1)
            await client.publish(topic, payload + b"-qos0", qos=0)
        # what is allowed still gets through, after all the refusals
        await gw_a.publish(readings_topic(ENTERPRISE, "gw-a"), b"gw-a-marker", qos=1)
        await gw_a.publish(status_topic(ENTERPRISE, "gw-a"), b"online", qos=1)
        await processor.publish(alert_topic(ENTERPRISE, "rule", "gw-a"), b"proc-alert", qos=1)
        for marker in (b"gw-a-marker", b"online", b"proc-alert"):
            await inbox.wait_for(marker)
        await asyncio.sleep(QUIET)
        got = set(inbox.payloads())
        leaked = {p for _, _, p in forbidden} | {p + b"-qos0" for _, _, p in forbidden}
        assert leaked.isdisjoint(got), got & leaked
        await _close(gw_a, processor, watcher)

    run(scenario())


def test_broker_refuses_a_message_beyond_its_size_limit(secure_broker: SecureBroker) -> None:
    """The shipped ``max_packet_size``: a publish beyond it is not delivered and not acknowledged (the client is
    disconnected), so a gateway keeps it in its outbox instead of losing it; one below it is delivered."""
    conf = (DEPLOY / "tls.conf").read_text(encoding="utf-8")
    limit = int(re.search(r"^max_packet_size (\d+)$", conf, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert limit >= 8 * 1024 * 1024  # room for processor.limits.max_payload_bytes' default
    url = secure_broker.url

    async def scenario() -> None:
        inbox = Inbox()
        watcher = open_transport(url, client_id="watcher-size", tls=secure_broker.tls("processor"))
        watcher.subscribe(readings_filter(ENTERPRISE), inbox)
        await watcher.connect()
        gw_a = MqttTransport("127.0.0.1", secure_broker.port, client_id="gw-a-big", tls=secure_broker.tls("gw-a"),
                             publish_timeout_secs=5.0)
        await gw_a.connect()
        fits = b"f" * (limit - 4096)
        await gw_a.publish(readings_topic(ENTERPRISE, "gw-a"), fits, qos=1)
        await inbox.wait_for(fits, timeout=30)
        too_big = b"x" * (limit + 1)
        with pytest.raises(TransportError):
            await gw_a.publish(readings_topic(ENTERPRISE, "gw-a"), too_big, qos=1)
        await asyncio.sleep(QUIET)
        assert too_big not in inbox.payloads()
        await _close(gw_a, watcher)

    run(scenario())
