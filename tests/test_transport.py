"""Transports: topic-filter rules, the in-process bus, and MqttTransport against a real Mosquitto."""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from services import Mosquitto, free_port, require_binary

from energymon.config import TlsConfig
from energymon.errors import TransportError
from energymon.interfaces import Message, Transport
from energymon.transport import (
    InProcTransport,
    MqttTransport,
    open_transport,
    split_shared,
    topic_matches,
    validate_filter,
)

TIMEOUT = 15.0  # bound on every wait for the network; generous for a loaded 2-core machine
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine with an overall bound, so a hung await fails the test instead of blocking it."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, 120)

    return asyncio.run(bounded())


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Inbox:
    """A handler that records messages (from any thread) for the test to await."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Message] = queue.Queue()
        self.threads: set[int] = set()

    def __call__(self, message: Message) -> None:
        self.threads.add(threading.get_ident())
        self._queue.put(message)

    async def get(self, timeout: float = TIMEOUT) -> Message:
        try:
            return await asyncio.to_thread(self._queue.get, True, timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout} s") from None

    async def payloads(self, n: int, timeout: float = TIMEOUT) -> list[bytes]:
        return [(await self.get(timeout)).payload for _ in range(n)]

    def empty(self) -> bool:
        return self._queue.empty()


async def wait_until(
    predicate: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.02)


# =========================================================================== topic filters


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b/c", "a/b/c", True),
        ("a/b/c", "a/b", False),
        ("a/b", "a/b/c", False),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/+", "a/", True),  # + matches an empty level
        ("a/+", "a", False),
        ("+/+", "a/b", True),
        ("+", "a/b", False),
        ("a/#", "a", True),  # # matches the parent level too
        ("a/#", "a/b/c/d", True),
        ("a/#", "ab/c", False),
        ("#", "a/b", True),
        ("#", "$SYS/broker/version", False),  # wildcards at the start do not match $ topics
        ("+/broker/version", "$SYS/broker/version", False),
        ("$SYS/#", "$SYS/broker/version", True),
        ("energymon/v1/+/+/readings", "energymon/v1/ent/gw-1/readings", True),
        ("energymon/v1/+/+/readings", "energymon/v1/ent/alerts/r1/src", False),
        ("$share/g/energymon/v1/+/+/readings", "energymon/v1/ent/gw-1/readings", True),
        ("$share/g/a/#", "b/c", False),
        ("$share/g/#", "x", True),
        ("A/b", "a/b", False),  # case-sensitive
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    "bad", ["", "a/#/b", "a/b#", "a+/b", "$share/g", "$share//a", "$share/g+/a", "a\x00b"]
)
def test_invalid_filters_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_filter(bad)


def test_split_shared() -> None:
    assert split_shared("$share/workers/a/+/b") == ("workers", "a/+/b")
    assert split_shared("a/+/b") == (None, "a/+/b")


# =========================================================================== factory and configuration


def test_open_transport_picks_by_scheme() -> None:
    plain = open_transport("mqtt://127.0.0.1:18830", client_id="c1")
    assert isinstance(plain, MqttTransport)
    assert (plain.host, plain.port, plain.use_tls) == ("127.0.0.1", 18830, False)
    assert isinstance(open_transport("mqtt://127.0.0.1", client_id="c"), MqttTransport)
    default = open_transport("mqtt://127.0.0.1", client_id="c")
    assert isinstance(default, MqttTransport) and default.port == 1883
    secure = open_transport("mqtts://127.0.0.1", client_id="c", tls=TlsConfig(insecure_disable_verification=True))
    assert isinstance(secure, MqttTransport) and (secure.port, secure.use_tls) == (8883, True)
    inproc = open_transport("inproc://demo-bus", client_id="c")
    assert isinstance(inproc, InProcTransport) and inproc.name == "demo-bus"
    with pytest.raises(ValueError, match="scheme"):
        open_transport("http://127.0.0.1", client_id="c")
    with pytest.raises(ValueError, match="host"):
        open_transport("mqtt://", client_id="c")


def test_unset_password_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENERGYMON_TEST_MQTT_PW", raising=False)
    transport = MqttTransport(
        "127.0.0.1", 1, client_id="c", username="gw", password_env="ENERGYMON_TEST_MQTT_PW"
    )
    with pytest.raises(TransportError, match="ENERGYMON_TEST_MQTT_PW"):
        run(transport.connect())


def test_missing_tls_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    transport = MqttTransport("127.0.0.1", 1, client_id="c", tls=TlsConfig(ca_file=missing))
    with pytest.raises(TransportError, match=r"ca\.pem"):
        run(transport.connect())


# =========================================================================== in-process bus


def test_inproc_transports_with_one_name_share_a_bus() -> None:
    name = unique("shared")

    async def scenario() -> None:
        inbox, other_inbox = Inbox(), Inbox()
        sub = open_transport(f"inproc://{name}", client_id="sub")
        sub.subscribe("t/#", inbox)
        other = open_transport(f"inproc://{name}-other", client_id="other")
        other.subscribe("t/#", other_inbox)
        pub = open_transport(f"inproc://{name}", client_id="pub")
        for t in (sub, other, pub):
            await t.connect()
        await pub.publish("t/1", b"hello")
        msg = await inbox.get()
        assert (msg.topic, msg.payload) == ("t/1", b"hello")
        msg.ack()  # nothing to acknowledge in-process, but it must be callable
        assert isinstance(pub, InProcTransport)
        await pub.drain()
        assert other_inbox.empty()
        for t in (sub, other, pub):
            await t.close()

    run(scenario())


def test_inproc_filter_matching_and_shared_round_robin() -> None:
    name = unique("share")

    async def scenario() -> None:
        members = [InProcTransport(name, client_id=f"w{i}") for i in range(3)]
        inboxes = [Inbox() for _ in members]
        for member, inbox in zip(members, inboxes, strict=True):
            member.subscribe("$share/workers/m/+/power", inbox)
        watcher = InProcTransport(name, client_id="all")
        seen = Inbox()
        watcher.subscribe("m/+/power", seen)
        other_group = InProcTransport(name, client_id="other-group")
        other_seen = Inbox()
        other_group.subscribe("$share/audit/m/#", other_seen)
        pub = InProcTransport(name, client_id="pub")
        for t in [*members, watcher, other_group, pub]:
            await t.connect()
        for i in range(30):
            await pub.publish(f"m/{i}/power", str(i).encode())
        await pub.publish("m/1/energy", b"not power")  # matches only the audit group's filter
        await pub.drain()

        per_member = [[m.payload for m in await _drain_inbox(inbox)] for inbox in inboxes]
        assert [len(p) for p in per_member] == [10, 10, 10]  # round robin
        delivered = [p for member in per_member for p in member]
        assert sorted(delivered) == sorted(str(i).encode() for i in range(30))  # no duplicates, none lost
        assert len(await _drain_inbox(seen)) == 30  # a plain subscriber gets every message
        assert len(await _drain_inbox(other_seen)) == 31  # a second group gets its own copy
        for t in [*members, watcher, other_group, pub]:
            await t.close()

    run(scenario())


async def _drain_inbox(inbox: Inbox) -> list[Message]:
    out: list[Message] = []
    while not inbox.empty():
        out.append(await inbox.get())
    return out


def test_inproc_retained_messages() -> None:
    name = unique("retained")

    async def scenario() -> None:
        pub = InProcTransport(name, client_id="pub")
        await pub.connect()
        await pub.publish("gw/a/status", b"online", retain=True)
        await pub.publish("gw/b/status", b"online", retain=True)
        await pub.publish("gw/b/status", b"offline", retain=True)  # replaces
        await pub.publish("gw/c/status", b"online", retain=True)
        await pub.publish("gw/c/status", b"", retain=True)  # empty payload deletes
        await pub.publish("gw/d/status", b"live only")  # not retained

        late = InProcTransport(name, client_id="late")
        inbox = Inbox()
        late.subscribe("gw/+/status", inbox)
        shared = InProcTransport(name, client_id="shared")
        shared_inbox = Inbox()
        shared.subscribe("$share/g/gw/+/status", shared_inbox)
        await late.connect()
        await shared.connect()
        await late.drain()
        got = {(m.topic, m.payload) for m in await _drain_inbox(inbox)}
        assert got == {("gw/a/status", b"online"), ("gw/b/status", b"offline")}
        assert shared_inbox.empty()  # retained messages are not sent to shared subscriptions

        # A subscription added after connect also gets the retained messages.
        again = Inbox()
        late.subscribe("gw/a/#", again)
        await late.drain()
        assert [(m.topic, m.payload) for m in await _drain_inbox(again)] == [("gw/a/status", b"online")]
        for t in (pub, late, shared):
            await t.close()

    run(scenario())


def test_inproc_delivers_in_publish_order_on_one_thread() -> None:
    name = unique("order")

    async def scenario() -> None:
        sub = InProcTransport(name)
        received: list[tuple[str, bytes]] = []
        threads: set[int] = set()

        def handler(msg: Message) -> None:
            threads.add(threading.get_ident())
            received.append((msg.topic, msg.payload))

        sub.subscribe("#", handler)
        pub_a, pub_b = InProcTransport(name), InProcTransport(name)
        for t in (sub, pub_a, pub_b):
            await t.connect()
        expected: list[tuple[str, bytes]] = []
        for i in range(1000):
            pub, topic = (pub_a, "a") if i % 3 else (pub_b, "b")
            await pub.publish(topic, i.to_bytes(2, "big"))
            expected.append((topic, i.to_bytes(2, "big")))
        await sub.drain()
        assert received == expected
        assert len(threads) == 1 and threading.get_ident() not in threads
        for t in (sub, pub_a, pub_b):
            await t.close()

    run(scenario())


def test_inproc_handler_error_does_not_stop_delivery(caplog: pytest.LogCaptureFixture) -> None:
    name = unique("boom")

    async def scenario() -> None:
        sub = InProcTransport(name)
        inbox = Inbox()

        def broken(msg: Message) -> None:
            raise RuntimeError("handler bug")

        sub.subscribe("x", broken)
        sub.subscribe("x", inbox)
        await sub.connect()
        await sub.publish("x", b"1")
        await sub.publish("x", b"2")
        assert await inbox.payloads(2) == [b"1", b"2"]
        await sub.close()

    with caplog.at_level(logging.ERROR, logger="energymon.transport"):
        run(scenario())
    assert sum("handler" in r.getMessage() for r in caplog.records) == 2


def test_inproc_lifecycle_errors_and_last_will() -> None:
    name = unique("life")

    async def scenario() -> None:
        gw = InProcTransport(name, client_id="gw", will=("gw/status", b"offline"))
        with pytest.raises(TransportError, match="not connected"):
            await gw.publish("gw/status", b"online")
        await gw.connect()
        await gw.publish("gw/status", b"online", retain=True)
        with pytest.raises(ValueError):
            await gw.publish("gw/+", b"wildcards are for filters")

        watcher = InProcTransport(name, client_id="watcher")
        inbox = Inbox()
        watcher.subscribe("gw/status", inbox)
        await watcher.connect()
        assert (await inbox.get()).payload == b"online"  # retained
        await gw.abort()  # a crash: the will goes out, retained
        assert (await inbox.get()).payload == b"offline"
        with pytest.raises(TransportError, match="not connected"):
            await gw.publish("gw/status", b"x")
        with pytest.raises(TransportError, match="closed"):
            await gw.connect()

        # A birth message is published retained on connect.
        gw2 = InProcTransport(name, client_id="gw2", birth=("gw/status", b"online again"))
        await gw2.connect()
        assert (await inbox.get()).payload == b"online again"
        await gw2.close()

        # After close, a subscriber's handler is not called any more.
        await watcher.close()
        pub = InProcTransport(name)
        await pub.connect()
        await pub.publish("gw/status", b"after close")
        await pub.drain()
        assert inbox.empty()
        await pub.close()

        # A clean close sends no will.
        clean = InProcTransport(name, client_id="clean", will=("clean/status", b"offline"))
        await clean.connect()
        await clean.close()
        late = InProcTransport(name)
        late_inbox = Inbox()
        late.subscribe("clean/status", late_inbox)
        await late.connect()
        await late.drain()
        assert late_inbox.empty()
        await late.close()

    run(scenario())


# =========================================================================== MQTT against Mosquitto


def mqtt(broker: Mosquitto, client_id: str, **kwargs: Any) -> MqttTransport:
    kwargs.setdefault("connect_timeout_secs", TIMEOUT)
    kwargs.setdefault("publish_timeout_secs", TIMEOUT)
    return MqttTransport(broker.host, broker.port, client_id=client_id, **kwargs)


async def close_all(*transports: Transport) -> None:
    for t in transports:
        await t.close()


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["v5", "v3.1.1"])
def test_mqtt_round_trip(mosquitto_session: Mosquitto, protocol: Any) -> None:
    prefix = unique("rt")

    async def scenario() -> None:
        inbox = Inbox()
        sub = mqtt(mosquitto_session, unique("sub"), protocol=protocol)
        sub.subscribe(f"{prefix}/+/data", inbox)
        pub = mqtt(mosquitto_session, unique("pub"), protocol=protocol)
        await sub.connect()
        await pub.connect()
        assert sub.connected and pub.connected
        await pub.publish(f"{prefix}/m1/data", b'{"p": 1}')
        await pub.publish(f"{prefix}/m1/other", b"not subscribed")
        await pub.publish(f"{prefix}/m2/data", bytes(range(256)))  # binary-safe
        first, second = await inbox.get(), await inbox.get()
        assert (first.topic, first.payload) == (f"{prefix}/m1/data", b'{"p": 1}')
        assert (second.topic, second.payload) == (f"{prefix}/m2/data", bytes(range(256)))
        await close_all(sub, pub)
        with pytest.raises(TransportError, match="closed"):
            await pub.publish(f"{prefix}/m1/data", b"after close")

    run(scenario())


@pytest.mark.integration
def test_mqtt_subscriptions_are_active_when_connect_returns(mosquitto_session: Mosquitto) -> None:
    prefix = unique("ready")

    async def scenario() -> None:
        pub = mqtt(mosquitto_session, unique("pub"))
        await pub.connect()
        inbox = Inbox()
        sub = mqtt(mosquitto_session, unique("sub"))
        for i in range(50):  # 50 SUBSCRIBE packets: connect() returns only after the 50th SUBACK
            sub.subscribe(f"{prefix}/{i}", inbox)
        await sub.connect()
        await pub.publish(f"{prefix}/49", b"right away")  # not retained: lost if the subscription were late
        assert (await inbox.get()).payload == b"right away"
        await close_all(pub, sub)

    run(scenario())


@pytest.mark.integration
def test_mqtt_publish_returns_after_puback(mosquitto_session: Mosquitto) -> None:
    """Many concurrent publishes each complete with their own PUBACK, and the broker has every one."""
    prefix = unique("ack")

    async def scenario() -> None:
        pub = mqtt(mosquitto_session, unique("pub"))
        await pub.connect()
        topics = [f"{prefix}/{i}" for i in range(200)]
        await asyncio.gather(*(pub.publish(t, t.encode(), retain=True) for t in topics))
        # Every message was acknowledged, so the broker holds every retained message now.
        inbox = Inbox()
        sub = mqtt(mosquitto_session, unique("sub"))
        sub.subscribe(f"{prefix}/#", inbox)
        await sub.connect()
        got = sorted(await inbox.payloads(200))
        assert got == sorted(t.encode() for t in topics)
        for t in topics:  # clear the retained messages
            await pub.publish(t, b"", retain=True)
        await close_all(pub, sub)

    run(scenario())


class SilentBroker:
    """A TCP server that accepts an MQTT v5 CONNECT with a CONNACK and then never acknowledges anything."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.received = bytearray()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        self._conns.append(conn)
        conn.recv(1)  # CONNECT's fixed header
        length, shift = 0, 0
        while True:
            byte = conn.recv(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        while length:
            length -= len(conn.recv(length))
        conn.sendall(bytes([0x20, 0x03, 0x00, 0x00, 0x00]))  # CONNACK: no session, success, no properties
        while chunk := conn.recv(65536):
            self.received += chunk

    def close(self) -> None:
        self.server.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def silent_broker() -> Iterator[SilentBroker]:
    broker = SilentBroker()
    yield broker
    broker.close()


def test_mqtt_publish_without_puback_times_out(silent_broker: SilentBroker) -> None:
    async def scenario() -> None:
        pub = MqttTransport("127.0.0.1", silent_broker.port, client_id="no-ack", publish_timeout_secs=0.5)
        await pub.connect()
        assert pub.connected
        started = time.monotonic()
        with pytest.raises(TransportError, match="did not acknowledge"):
            await pub.publish("t/x", b"payload-never-acked")
        elapsed = time.monotonic() - started
        assert 0.4 <= elapsed < 3.0
        await wait_until(lambda: b"payload-never-acked" in silent_broker.received, what="PUBLISH sent")
        await pub.close()

    run(scenario())


_WILL_CLIENT = """
import asyncio, sys
from energymon.transport import MqttTransport

async def main() -> None:
    port, topic = int(sys.argv[1]), sys.argv[2]
    t = MqttTransport("127.0.0.1", port, client_id="will-victim", will=(topic, b"offline"))
    await t.connect()
    await t.publish(topic, b"online", retain=True)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.integration
def test_mqtt_last_will_on_crash(mosquitto: Mosquitto) -> None:
    topic = "energymon/v1/ent/gw-will/status"

    async def scenario() -> None:
        inbox = Inbox()
        watcher = mqtt(mosquitto, "watcher")
        watcher.subscribe(topic, inbox)
        await watcher.connect()
        proc = subprocess.Popen(
            [sys.executable, "-c", _WILL_CLIENT, str(mosquitto.port), topic],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), TIMEOUT)
            assert line.strip() == b"ready", proc.stderr.read() if proc.stderr else b""
            assert (await inbox.get()).payload == b"online"
            proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the socket just closes
            assert (await inbox.get()).payload == b"offline"
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(TIMEOUT)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        # The will was retained: a newcomer sees the gateway offline.
        late_inbox = Inbox()
        late = mqtt(mosquitto, "late")
        late.subscribe(topic, late_inbox)
        await late.connect()
        assert (await late_inbox.get()).payload == b"offline"

        # A clean close sends no will.
        clean_topic = "energymon/v1/ent/gw-clean/status"
        clean_inbox = Inbox()
        watcher2 = mqtt(mosquitto, "watcher2")
        watcher2.subscribe(clean_topic, clean_inbox)
        await watcher2.connect()
        clean = mqtt(mosquitto, "clean", will=(clean_topic, b"offline"))
        await clean.connect()
        await clean.publish(clean_topic, b"online", retain=True)
        assert (await clean_inbox.get()).payload == b"online"
        await clean.close()
        await late.publish(clean_topic, b"marker")
        assert (await clean_inbox.get()).payload == b"marker"  # nothing between online and the marker
        await close_all(watcher, late, watcher2)

    run(scenario())


@pytest.mark.integration
def test_mqtt_network_blip_sends_will_then_birth_again(mosquitto: Mosquitto) -> None:
    """The socket dies without DISCONNECT: the broker sends the will; the client reconnects, re-announces."""
    topic = "energymon/v1/ent/gw-blip/status"

    async def scenario() -> None:
        inbox = Inbox()
        watcher = mqtt(mosquitto, "blip-watcher")
        watcher.subscribe(topic, inbox)
        await watcher.connect()
        gw = mqtt(mosquitto, "blip-gw", will=(topic, b"offline"), birth=(topic, b"online"))
        await gw.connect()
        assert (await inbox.get()).payload == b"online"
        sock = gw._client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)  # the network drops; paho never sends DISCONNECT
        assert (await inbox.get()).payload == b"offline"
        assert (await inbox.get()).payload == b"online"  # after the automatic reconnect
        await gw.publish("blip/after", b"works")  # and the transport is usable again
        await close_all(gw, watcher)

    run(scenario())


@pytest.mark.integration
def test_mqtt_broker_down_publish_fails_then_reconnects(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        inbox = Inbox()
        sub = mqtt(mosquitto, "down-sub")
        sub.subscribe("down/#", inbox)
        pub = mqtt(mosquitto, "down-pub", publish_timeout_secs=1.5)
        await sub.connect()
        await pub.connect()
        await pub.publish("down/1", b"before")
        assert (await inbox.get()).payload == b"before"

        mosquitto.kill()
        started = time.monotonic()
        with pytest.raises(TransportError):
            await pub.publish("down/2", b"while down")
        assert time.monotonic() - started < 1.5 + 1.0
        assert not pub.connected
        # Several reconnect attempts fail while the broker is down ...
        await wait_until(lambda: pub.connect_failures >= 2, what="two failed reconnects")
        mosquitto.start()
        # ... and the transport comes back by itself, subscriptions included.
        await wait_until(lambda: pub.connected and sub.connected, what="reconnect")
        await pub.publish("down/3", b"after")
        payloads = [m.payload for m in [await inbox.get()]]
        while payloads[-1] != b"after":  # the timed-out message may arrive too: at least once
            payloads.append((await inbox.get()).payload)
        assert set(payloads) <= {b"while down", b"after"}
        await close_all(sub, pub)

    with caplog.at_level(logging.INFO, logger="energymon.transport"):
        run(scenario())
    messages = [r.getMessage() for r in caplog.records if "'down-pub'" in r.getMessage()]
    assert sum("lost" in m for m in messages) == 1, messages
    assert sum("reconnected" in m for m in messages) == 1, messages


@pytest.mark.integration
def test_mqtt_connect_while_broker_down_keeps_trying(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    mosquitto.kill()

    async def scenario() -> None:
        pub = mqtt(mosquitto, "early-bird", connect_timeout_secs=0.5, publish_timeout_secs=0.5)
        started = time.monotonic()
        await pub.connect()  # does not raise: the broker may come later
        assert time.monotonic() - started < 3.0
        assert not pub.connected
        with pytest.raises(TransportError):
            await pub.publish("early/1", b"x")
        mosquitto.start()
        await wait_until(lambda: pub.connected, what="background connect")
        await pub.publish("early/2", b"y")
        await pub.close()

    with caplog.at_level(logging.INFO, logger="energymon.transport"):
        run(scenario())
    text = caplog.text
    assert "not reachable" in text and "MQTT connected" in text


@pytest.mark.integration
def test_mqtt_persistent_session_survives_restart_and_redelivers_unacked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = Mosquitto(persistence=True)
    broker.start()
    topic = "plant/kiln/readings"

    def subscriber(inbox: Inbox) -> MqttTransport:
        sub = mqtt(broker, "persistent-sub", clean_start=False, manual_ack=True)
        sub.subscribe("plant/#", inbox)
        return sub

    async def scenario() -> None:
        pub = mqtt(broker, "persistent-pub")
        inbox = Inbox()
        sub = subscriber(inbox)
        await sub.connect()
        await pub.connect()

        await pub.publish(topic, b"m1")
        assert (await inbox.get()).payload == b"m1"  # received, deliberately not acknowledged

        broker.restart()  # both clients lose the connection and reconnect by themselves
        again = await inbox.get()
        assert again.payload == b"m1"  # the unacknowledged message is delivered again
        again.ack()
        await pub.publish(topic, b"m2")  # waits for the publisher's reconnect
        assert (await inbox.get()).payload == b"m2"  # not acknowledged before the subscriber leaves
        await sub.close()

        await pub.publish(topic, b"m3")  # published while the subscriber is away
        await pub.publish(topic, b"m4")
        inbox2 = Inbox()
        sub2 = subscriber(inbox2)
        await sub2.connect()
        messages = [await inbox2.get() for _ in range(3)]
        assert [m.payload for m in messages] == [b"m2", b"m3", b"m4"]
        for m in messages:
            m.ack()
        await pub.publish(topic, b"m5")
        m5 = await inbox2.get()
        assert m5.payload == b"m5"
        m5.ack()
        await sub2.close()

        # Every acknowledgement reached the broker: a new connection gets only what is new.
        inbox3 = Inbox()
        sub3 = subscriber(inbox3)
        await sub3.connect()
        await pub.publish(topic, b"m6")
        m6 = await inbox3.get()
        assert m6.payload == b"m6"
        m6.ack()
        await close_all(sub3, pub)

    try:
        with caplog.at_level(logging.INFO, logger="energymon.transport"):
            run(scenario())
    finally:
        broker.stop()
    pub_logs = [r.getMessage() for r in caplog.records if "'persistent-pub'" in r.getMessage()]
    assert sum("lost" in m for m in pub_logs) == 1, pub_logs
    assert sum("reconnected" in m for m in pub_logs) == 1, pub_logs


@pytest.mark.integration
def test_mqtt_overlapping_subscriptions_are_routed_and_acked_separately(mosquitto: Mosquitto) -> None:
    """Two overlapping filters: each handler gets each message once (v5 subscription identifiers), and a
    message one handler did not acknowledge comes back to that handler only."""

    async def scenario() -> None:
        first, second = Inbox(), Inbox()

        def make_sub() -> MqttTransport:
            sub = mqtt(mosquitto, "two-handlers", clean_start=False, manual_ack=True)
            sub.subscribe("store/#", first)
            sub.subscribe("store/+", second)
            return sub

        pub = mqtt(mosquitto, "two-handlers-pub")
        sub = make_sub()
        await sub.connect()
        await pub.connect()
        await pub.publish("store/a", b"x1")
        await pub.publish("store/a", b"marker")
        got_first = [await first.get(), await first.get()]
        got_second = [await second.get(), await second.get()]
        assert [m.payload for m in got_first] == [b"x1", b"marker"]  # once each, no copies of copies
        assert [m.payload for m in got_second] == [b"x1", b"marker"]
        for m in (*got_first, got_second[1]):
            m.ack()  # the second handler does not acknowledge x1
        await sub.close()

        sub = make_sub()
        await sub.connect()
        redelivered = await second.get()
        assert redelivered.payload == b"x1"
        redelivered.ack()
        await pub.publish("store/a", b"x2")
        assert (await first.get()).payload == b"x2"  # the first handler's copy of x1 was acknowledged
        assert (await second.get()).payload == b"x2"
        await close_all(sub, pub)

    run(scenario())


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["v5", "v3.1.1"])
def test_mqtt_shared_subscription_splits_without_duplicates(
    mosquitto_session: Mosquitto, protocol: Any
) -> None:
    prefix = unique("shared")
    n = 300

    async def scenario() -> None:
        inboxes = [Inbox() for _ in range(3)]
        members = []
        for i, inbox in enumerate(inboxes):
            member = mqtt(mosquitto_session, unique(f"worker{i}"), protocol=protocol)
            member.subscribe(f"$share/workers/{prefix}/+/readings", inbox)
            members.append(member)
        plain_inbox = Inbox()
        plain = mqtt(mosquitto_session, unique("plain"), protocol=protocol)
        plain.subscribe(f"{prefix}/+/readings", plain_inbox)
        pub = mqtt(mosquitto_session, unique("pub"), protocol=protocol)
        for t in [*members, plain, pub]:
            await t.connect()
        await asyncio.gather(
            *(pub.publish(f"{prefix}/gw{i % 7}/readings", str(i).encode()) for i in range(n))
        )
        assert sorted(int(p) for p in await plain_inbox.payloads(n)) == list(range(n))

        counts: Counter[bytes] = Counter()
        per_member = [0, 0, 0]
        while sum(per_member) < n:
            await wait_until(lambda: any(not b.empty() for b in inboxes), what=f"{n} shared messages")
            for i, inbox in enumerate(inboxes):
                while not inbox.empty():
                    counts[(await inbox.get()).payload] += 1
                    per_member[i] += 1
        assert sum(per_member) == n
        assert all(c == 1 for c in counts.values()) and len(counts) == n  # each message exactly once
        assert all(count > 0 for count in per_member), per_member  # the work is split
        await close_all(*members, plain, pub)

    run(scenario())


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    passwd = tmp_path / "passwd"
    subprocess.run(
        [require_binary("mosquitto_passwd"), "-c", "-b", str(passwd), "gateway", "s3cret"],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    os.chmod(passwd, 0o600)
    broker = Mosquitto(extra_conf=f"password_file {passwd}")
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.mark.integration
def test_mqtt_password_from_environment(password_broker: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        monkeypatch.setenv("ENERGYMON_TEST_MQTT_PW", "wrong")
        refused = mqtt(password_broker, "auth-bad", username="gateway", password_env="ENERGYMON_TEST_MQTT_PW")
        with pytest.raises(TransportError, match="refused"):
            await refused.connect()
        await refused.close()

        monkeypatch.setenv("ENERGYMON_TEST_MQTT_PW", "s3cret")
        inbox = Inbox()
        ok = mqtt(password_broker, "auth-ok", username="gateway", password_env="ENERGYMON_TEST_MQTT_PW")
        ok.subscribe("auth/#", inbox)
        await ok.connect()
        await ok.publish("auth/x", b"in")
        assert (await inbox.get()).payload == b"in"
        await ok.close()

    run(scenario())


def _openssl(args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args.split()], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, int, Path]]:
    """A Mosquitto with a second, TLS listener whose certificate (for IP 127.0.0.1) a test CA signed."""
    require_binary("openssl")
    _openssl(
        "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca", tmp_path
    )
    _openssl("req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1", tmp_path)
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n", encoding="utf-8")
    _openssl(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 "
        "-extfile ext.cnf",
        tmp_path,
    )
    tls_port = free_port()
    broker = Mosquitto(
        extra_conf=(
            f"listener {tls_port} 127.0.0.1\n"
            f"certfile {tmp_path / 'server.pem'}\nkeyfile {tmp_path / 'server.key'}\n"
        )
    )
    try:
        broker.start()
        yield broker, tls_port, tmp_path / "ca.pem"
    finally:
        broker.stop()


@pytest.mark.integration
def test_mqtt_over_tls(tls_broker: tuple[Mosquitto, int, Path]) -> None:
    _broker, tls_port, ca_file = tls_broker
    url = f"mqtts://127.0.0.1:{tls_port}"

    async def scenario() -> None:
        inbox = Inbox()
        verified = open_transport(url, client_id="tls-verified", tls=TlsConfig(ca_file=ca_file))
        verified.subscribe("tls/#", inbox)
        await verified.connect()
        await verified.publish("tls/a", b"encrypted")
        assert (await inbox.get()).payload == b"encrypted"

        skip = open_transport(url, client_id="tls-skip", tls=TlsConfig(insecure_disable_verification=True))
        await skip.connect()
        await skip.publish("tls/b", b"unverified but encrypted")
        assert (await inbox.get()).payload == b"unverified but encrypted"

        # The system CA store does not know the test CA: the handshake fails and nothing gets through.
        untrusted = MqttTransport(
            "127.0.0.1",
            tls_port,
            client_id="tls-untrusted",
            use_tls=True,
            connect_timeout_secs=1.0,
            publish_timeout_secs=0.5,
        )
        await untrusted.connect()
        assert not untrusted.connected
        with pytest.raises(TransportError):
            await untrusted.publish("tls/c", b"never")
        await close_all(verified, skip, untrusted)

    run(scenario())
