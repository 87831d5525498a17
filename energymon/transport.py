"""Transports: the message bus between stages, over MQTT (paho-mqtt 2.x) or in-process.

Both classes implement :class:`energymon.interfaces.Transport`; :func:`open_transport` picks one by URL
scheme:

=====================  =====================================================================================
URL                    transport
=====================  =====================================================================================
``mqtt://host:port``   :class:`MqttTransport` over TCP (port 1883 when omitted)
``mqtts://host:port``  :class:`MqttTransport` over TLS (port 8883 when omitted)
``inproc://name``      :class:`InProcTransport` on the in-process bus ``name`` (shared by every transport
                       opened with the same name in this process)
=====================  =====================================================================================

Delivery guarantees of :class:`MqttTransport`:

* :meth:`~MqttTransport.publish` returns once the broker acknowledged the message (PUBACK for QoS 1) and
  raises :class:`~energymon.errors.TransportError` when that does not happen within ``publish_timeout_secs``
  (broker down, connection lost, out-queue full, broker refused). A message whose PUBACK timed out may still
  reach the broker later (paho re-sends in-flight messages after a reconnect): delivery is *at least once*,
  and receivers de-duplicate (batches carry a sequence number).
* When the broker is down, :meth:`~MqttTransport.connect` returns after ``connect_timeout_secs`` without
  raising and the client keeps reconnecting in the background with capped exponential backoff. Only a broker
  that answers and refuses us for good (bad credentials, not authorised...) makes ``connect`` raise.
* Subscriptions are re-sent on every reconnect. With ``clean_start=False`` the broker keeps the session
  (``session_expiry_secs``, MQTT v5) and queues QoS 1 messages while the client is away; with
  ``manual_ack=True`` a message is acknowledged only when :meth:`Message.ack` is called, so a message
  received but not acknowledged before a crash or disconnect is delivered again.
* :meth:`~MqttTransport.connect` returns (connected) only after the broker confirmed the subscriptions, so
  nothing published after it returns is missed.
* Overlapping subscriptions of one client get one copy per subscription from the broker; over MQTT v5 each
  copy carries a subscription identifier and reaches only its own handler. Over v3.1.1 there are no
  identifiers, so each copy goes to every matching handler: avoid overlapping filters there.
* ``will`` is the broker's "offline" on an unclean drop; ``birth`` is re-published after every (re)connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import ssl
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from energymon.config import TlsConfig
from energymon.errors import TransportError
from energymon.interfaces import Message, Transport

__all__ = [
    "InProcTransport",
    "MqttTransport",
    "open_transport",
    "split_shared",
    "topic_matches",
    "validate_filter",
    "validate_topic",
]

log = logging.getLogger(__name__)

Handler = Callable[[Message], None]

#: CONNACK reason codes after which retrying makes sense (the broker is busy or unavailable for now).
_TRANSIENT_CONNACK = frozenset({0x80, 0x88, 0x89, 0x97, 0x9F})


# --------------------------------------------------------------------------- topic filters


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """Split ``$share/{group}/{filter}`` into ``(group, filter)``; a plain filter gives ``(None, filter)``."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) < 3 or not parts[1] or not parts[2]:
            raise ValueError(
                f"invalid shared subscription {topic_filter!r}: expected $share/<group>/<filter>"
            )
        return parts[1], parts[2]
    return None, topic_filter


def validate_filter(topic_filter: str) -> None:
    """Check an MQTT topic filter (``+``, ``#`` and ``$share/group/...`` allowed).

    Raises:
        ValueError: the filter is empty, contains NUL, or uses a wildcard other than as a whole level
            (``#`` only last).
    """
    group, flt = split_shared(topic_filter)
    if group is not None and any(c in group for c in "+#"):
        raise ValueError(
            f"invalid shared subscription {topic_filter!r}: the group name must not contain + or #"
        )
    if not flt or "\x00" in flt:
        raise ValueError(f"invalid topic filter {topic_filter!r}")
    levels = flt.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"invalid topic filter {topic_filter!r}: '#' must be the whole last level")
        if "+" in level and level != "+":
            raise ValueError(f"invalid topic filter {topic_filter!r}: '+' must be a whole level")


def validate_topic(topic: str) -> None:
    """Check a topic name to publish on.

    Raises:
        ValueError: the topic is empty or contains a wildcard or NUL.
    """
    if not topic or any(c in topic for c in "+#\x00"):
        raise ValueError(f"invalid topic {topic!r}: a topic name is non-empty and has no wildcards")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Tell whether ``topic`` matches ``topic_filter`` under MQTT rules.

    ``+`` matches one level (possibly empty), a final ``#`` matches the parent level and everything below, a
    ``$share/group/`` prefix is ignored, and filters starting with a wildcard do not match topics starting
    with ``$`` (``$SYS/...``).
    """
    _, flt = split_shared(topic_filter)
    if topic.startswith("$") and flt[:1] in ("+", "#"):
        return False
    f_levels = flt.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels):
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


# --------------------------------------------------------------------------- helpers for both transports


def _failure_cause(exc: BaseException) -> str:
    """Why a connection attempt failed, in words: the certificate check's own reason for TLS failures."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate rejected: {exc.verify_message or exc.reason or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, ssl.CertificateError):
        return f"certificate rejected: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _resolve(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    """Complete ``fut`` unless it is already done (runs on the future's loop)."""
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)


def _resolve_threadsafe(fut: asyncio.Future[None], exc: BaseException | None = None) -> None:
    """Complete ``fut`` from any thread; a closed loop is ignored (nobody waits any more)."""
    with contextlib.suppress(RuntimeError):
        fut.get_loop().call_soon_threadsafe(_resolve, fut, exc)


def _call_handler(handler: Handler, message: Message) -> bool:
    """Run a subscriber's handler; an exception is logged, never propagated into the network thread."""
    try:
        handler(message)
    except Exception:
        log.exception("handler %r failed on a message on %r", handler, message.topic)
        return False
    return True


# --------------------------------------------------------------------------- MQTT (paho)


@dataclass(slots=True)
class _Subscription:
    topic_filter: str
    handler: Handler
    qos: int
    ident: int  # MQTT v5 subscription identifier: routes overlapping subscriptions' copies exactly


class _AckGate:
    """Acknowledge one received message once every handler it was given to has called ``ack``."""

    __slots__ = ("_lock", "_remaining", "_send")

    def __init__(self, count: int, send: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._remaining = count
        self._send = send

    def ack_callable(self) -> Callable[[], None]:
        """A per-handler ``ack``: calling it twice counts once."""
        called = False

        def ack() -> None:
            nonlocal called
            with self._lock:
                if called:
                    return
                called = True
                self._remaining -= 1
                fire = self._remaining == 0
            if fire:
                self._send()

        return ack


class MqttTransport:
    """:class:`~energymon.interfaces.Transport` over an MQTT broker, with paho-mqtt's network thread.

    Args:
        host: Broker address.
        port: Broker port.
        client_id: MQTT client id; keep it stable for a persistent session (``clean_start=False``).
        username: User name, if the broker requires one.
        password_env: Name of the environment variable holding the password (read in :meth:`connect`).
        tls: TLS settings; ``use_tls=True`` with ``tls=None`` uses the system's CA store.
        use_tls: Connect over TLS (``mqtts://``); implied when ``tls`` is given.
        keepalive_secs: MQTT keep-alive.
        will: Last will ``(topic, payload)``, sent by the broker, retained at QoS 1, when the connection
            drops without a DISCONNECT.
        birth: ``(topic, payload)`` published retained at QoS 1 after every successful connect, so a status
            topic the will set to "offline" during a network blip reads "online" again after the reconnect.
        clean_start: False keeps the session (subscriptions and queued QoS 1 messages) for
            ``session_expiry_secs`` while the client is away.
        manual_ack: Acknowledge received messages only when the receiver calls :attr:`Message.ack`.
        protocol: ``"v5"`` (default) or ``"v3.1.1"`` for older brokers.
        connect_timeout_secs: How long :meth:`connect` waits for the first CONNACK.
        publish_timeout_secs: How long :meth:`publish` waits for the connection and the acknowledgement.
        reconnect_min_secs: First reconnect delay; doubled after each failed attempt ...
        reconnect_max_secs: ... up to this cap.
        session_expiry_secs: Session expiry sent with ``clean_start=False`` (MQTT v5).
        max_inflight: QoS 1 messages sent but not yet acknowledged, at most.
        max_queued: Messages held by paho (in flight or waiting), at most; beyond it publish fails at once.
    """

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        client_id: str,
        username: str | None = None,
        password_env: str | None = None,
        tls: TlsConfig | None = None,
        use_tls: bool = False,
        keepalive_secs: int = 30,
        will: tuple[str, bytes] | None = None,
        birth: tuple[str, bytes] | None = None,
        clean_start: bool = True,
        manual_ack: bool = False,
        protocol: Literal["v5", "v3.1.1"] = "v5",
        connect_timeout_secs: float = 10.0,
        publish_timeout_secs: float = 10.0,
        reconnect_min_secs: int = 1,
        reconnect_max_secs: int = 30,
        session_expiry_secs: int = 86400,
        max_inflight: int = 1000,
        max_queued: int = 10000,
    ) -> None:
        if protocol not in ("v5", "v3.1.1"):
            raise ValueError(f"protocol must be 'v5' or 'v3.1.1', not {protocol!r}")
        if password_env is not None and username is None:
            raise ValueError("password_env is set without username: MQTT sends a password only with a user")
        for message in (will, birth):
            if message is not None:
                validate_topic(message[0])
        self.host = host
        self.port = port
        self.client_id = client_id
        self.username = username
        self.password_env = password_env
        self.tls = tls
        self.use_tls = use_tls or tls is not None
        self.keepalive_secs = keepalive_secs
        self.will = will
        self.birth = birth
        self.clean_start = clean_start
        self.manual_ack = manual_ack
        self.protocol = protocol
        self.connect_timeout_secs = connect_timeout_secs
        self.publish_timeout_secs = publish_timeout_secs
        self.reconnect_min_secs = reconnect_min_secs
        self.reconnect_max_secs = reconnect_max_secs
        self.session_expiry_secs = session_expiry_secs
        self.max_inflight = max_inflight
        self.max_queued = max_queued

        self._lock = threading.Lock()
        self._subs: list[_Subscription] = []
        self._pending: dict[int, asyncio.Future[None] | None] = {}  # mid -> waiter (None: abandoned)
        self._early: dict[int, BaseException | None] = {}  # acks that arrived before their waiter
        self._conn_waiters: list[asyncio.Future[None]] = []
        self._suback_pending: set[int] = set()
        self._unsub_waiters: dict[int, asyncio.Future[None]] = {}
        self._unsub_early: set[int] = set()
        self._connected = False
        self._ever_connected = False
        self._lost_logged = False
        self._last_cause: str | None = None  # why the latest connection attempt failed
        self._socket_error: str | None = None  # paho's latest socket error message
        self._refused: TransportError | None = None
        self._generation = 0
        self._session_present = False
        self._connect_failures = 0
        self._started = False
        self._closed = False
        self._tls_configured = False
        self._sub_ids = self.protocol == "v5"  # the broker may say otherwise in its CONNACK
        self._client = self._make_client()

    # ----------------------------------------------------------------- public state

    @property
    def connected(self) -> bool:
        """True while the broker connection is up (CONNACK received, not lost since)."""
        return self._connected

    @property
    def connect_failures(self) -> int:
        """Failed connection attempts (TCP or CONNACK) since the transport was created."""
        return self._connect_failures

    def __repr__(self) -> str:
        scheme = "mqtts" if self.use_tls else "mqtt"
        return f"<MqttTransport {scheme}://{self.host}:{self.port} client_id={self.client_id!r}>"

    # ----------------------------------------------------------------- set-up

    def _make_client(self) -> mqtt.Client:
        v5 = self.protocol == "v5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else self.clean_start,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=self.manual_ack,
        )
        client.max_inflight_messages_set(self.max_inflight)
        client.max_queued_messages_set(self.max_queued)
        client.reconnect_delay_set(self.reconnect_min_secs, self.reconnect_max_secs)
        if self.will is not None:
            client.will_set(self.will[0], self.will[1], qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_log = self._on_log
        return client

    def _configure_credentials(self) -> None:
        """Apply user/password and TLS; files and environment are read here, at connection time."""
        if self.username is not None:
            password: str | None = None
            if self.password_env is not None:
                password = os.environ.get(self.password_env)
                if password is None:
                    raise TransportError(
                        f"MQTT password for user {self.username!r} on {self.host}:{self.port}: environment "
                        f"variable {self.password_env} is not set"
                    )
            self._client.username_pw_set(self.username, password)
        if not self.use_tls or self._tls_configured:  # paho's tls_set may run only once per client
            return
        tls = self.tls or TlsConfig()
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, name)
            if path is not None and not path.is_file():
                raise TransportError(f"MQTT TLS {name} {str(path)!r} does not exist or is not a file")
        if (tls.cert_file is None) != (tls.key_file is None):
            raise TransportError("MQTT TLS needs both cert_file and key_file for a client certificate")
        off = tls.insecure_disable_verification
        try:
            self._client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_NONE if off else ssl.CERT_REQUIRED,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise TransportError(f"MQTT TLS set-up failed: {exc}") from exc
        if off:
            log.warning(
                "MQTT TLS to %s:%d for %r: insecure_disable_verification is set, the broker's certificate is "
                "NOT verified (neither chain nor host name); anyone on the network path can pose as the broker",
                self.host, self.port, self.client_id,
            )
            self._client.tls_insecure_set(True)
        elif not tls.check_hostname:
            log.info("MQTT TLS to %s:%d for %r: the certificate chain is verified, the host name is not",
                     self.host, self.port, self.client_id)
            self._client.tls_insecure_set(True)  # paho: no host-name check; verify_mode stays CERT_REQUIRED
        self._tls_configured = True

    def _connect_properties(self) -> Properties | None:
        if self.protocol != "v5":
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0 if self.clean_start else self.session_expiry_secs
        return props

    # ----------------------------------------------------------------- Transport API

    def subscribe(self, topic_filter: str, handler: Callable[[Message], None], *, qos: int = 1) -> None:
        """Deliver messages matching ``topic_filter`` to ``handler`` (on paho's network thread).

        Call it before :meth:`connect`; a subscription added later is sent at once if connected. It is
        re-sent on every reconnect.

        Raises:
            ValueError: invalid filter or QoS.
        """
        validate_filter(topic_filter)
        if qos not in (0, 1, 2):
            raise ValueError(f"invalid QoS {qos}")
        with self._lock:
            sub = _Subscription(topic_filter, handler, qos, len(self._subs) + 1)
            self._subs.append(sub)
            connected = self._connected
        if connected:
            self._send_subscriptions([sub])

    async def connect(self) -> None:
        """Start the network thread; wait up to ``connect_timeout_secs`` for the CONNACK and the SUBACKs.

        Once this returns connected, the subscriptions made before are active at the broker.

        If the broker is down, this returns after the timeout (logging a warning) and the client keeps
        reconnecting in the background.

        Raises:
            TransportError: the password variable is unset, TLS files are missing, or the broker answered
                and refused the connection for a reason that retrying will not fix.
        """
        if self._closed:
            raise TransportError(f"{self!r} is closed")
        if self._started:
            return
        self._configure_credentials()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._refused = None
            self._conn_waiters.append(waiter)
        self._client.connect_async(
            self.host,
            self.port,
            keepalive=self.keepalive_secs,
            clean_start=self.clean_start if self.protocol == "v5" else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=self._connect_properties(),
        )
        self._client.loop_start()
        self._started = True
        try:
            done, _ = await asyncio.wait({waiter}, timeout=self.connect_timeout_secs)
        finally:
            with self._lock:
                if waiter in self._conn_waiters:
                    self._conn_waiters.remove(waiter)
        if not done:
            with self._lock:
                cause = self._last_cause
            log.warning(
                "MQTT broker %s:%d not reachable within %.1f s for %r (%s); retrying in the background",
                self.host,
                self.port,
                self.connect_timeout_secs,
                self.client_id,
                cause or "no answer",
            )
            with self._lock:
                self._lost_logged = True  # the next successful connect logs "connected"; no repeat warning
            return
        exc = waiter.exception()
        if exc is not None:
            await self._stop_network()
            raise exc

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish and wait until the broker acknowledged it (QoS 1/2) or paho wrote it (QoS 0).

        Waits for a lost connection to come back, all within ``publish_timeout_secs``.

        Raises:
            TransportError: not connected or not acknowledged within the timeout, paho's out-queue is full,
                the broker refused the message (v5 reason code), or the transport is closed.
            ValueError: invalid topic or QoS.
        """
        validate_topic(topic)
        if self._closed:
            raise TransportError(f"{self!r} is closed")
        if not self._started:
            raise TransportError(f"{self!r}: publish before connect()")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout_secs
        if not self._connected:
            await self._wait_connected(self.publish_timeout_secs)
        fut: asyncio.Future[None] = loop.create_future()
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise TransportError(f"MQTT out-queue full ({self.max_queued} messages) publishing on {topic!r}")
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:  # paho queues only QoS > 0
            raise TransportError(f"MQTT broker {self.host}:{self.port} not connected (QoS 0 message dropped)")
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise TransportError(f"MQTT publish on {topic!r} failed: {mqtt.error_string(info.rc)}")
        with self._lock:
            if info.mid in self._early:
                _resolve(fut, self._early.pop(info.mid))
            else:
                self._pending[info.mid] = fut
        remaining = max(0.0, deadline - loop.time())
        done, _ = await asyncio.wait({fut}, timeout=remaining)
        if not done:
            with self._lock:
                if self._pending.get(info.mid) is fut:
                    self._pending[info.mid] = None  # a late PUBACK lands here and is dropped
            raise TransportError(
                f"MQTT broker {self.host}:{self.port} did not acknowledge a message on {topic!r} within "
                f"{self.publish_timeout_secs:.1f} s"
            )
        fut.result()

    async def close(self) -> None:
        """Disconnect cleanly (no last will), stop the network thread and fail waiting publishes.

        Before the DISCONNECT, one round trip to the broker makes sure it has processed every acknowledgement
        sent so far: a broker may drop what it has not read yet from a connection that a reconnect with the
        same client id replaces, and a dropped PUBACK means a redelivery.
        """
        if self._closed:
            return
        self._closed = True
        await self._sync_with_broker(min(self.publish_timeout_secs, 5.0))
        await self._stop_network()
        closed = TransportError(f"{self!r} closed")
        with self._lock:
            waiters = [f for f in self._pending.values() if f is not None] + self._conn_waiters
            self._pending.clear()
            self._early.clear()
            self._conn_waiters = []
        for fut in waiters:
            _resolve_threadsafe(fut, closed)

    # ----------------------------------------------------------------- internals

    async def _sync_with_broker(self, timeout: float) -> None:
        """Wait until the broker processed all we sent (UNSUBSCRIBE of a filter we never held → UNSUBACK)."""
        if not self._connected:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        rc, mid = self._client.unsubscribe(f"energymon/_sync/{uuid.uuid4().hex}")
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return
        with self._lock:
            if mid in self._unsub_early:
                self._unsub_early.discard(mid)
                return
            self._unsub_waiters[mid] = fut
        await asyncio.wait({fut}, timeout=timeout)
        with self._lock:
            self._unsub_waiters.pop(mid, None)

    async def _stop_network(self) -> None:
        if not self._started:
            return
        self._started = False
        with self._lock:
            self._connected = False
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    async def _wait_connected(self, timeout: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._connected:
                return
            self._conn_waiters.append(waiter)
        try:
            done, _ = await asyncio.wait({waiter}, timeout=timeout)
        finally:
            with self._lock:
                if waiter in self._conn_waiters:
                    self._conn_waiters.remove(waiter)
        if not done:
            raise TransportError(f"MQTT broker {self.host}:{self.port} not connected within {timeout:.1f} s")
        waiter.result()

    def _options(self, sub: _Subscription) -> SubscribeOptions:
        # Re-subscribing on reconnect must not replay retained messages into a resumed session.
        return SubscribeOptions(qos=sub.qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)

    def _send_subscriptions(self, subs: list[_Subscription]) -> list[int]:
        """Send SUBSCRIBE packets; return their packet ids (to await the SUBACKs)."""
        if not subs:
            return []
        sent: list[tuple[MQTTErrorCode, int | None]] = []
        if self.protocol == "v5" and self._sub_ids:
            # One SUBSCRIBE per filter: the identifier is a property of the whole packet.
            for sub in subs:
                props = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
                props.SubscriptionIdentifier = sub.ident
                sent.append(
                    self._client.subscribe(sub.topic_filter, options=self._options(sub), properties=props)
                )
        elif self.protocol == "v5":
            sent.append(self._client.subscribe([(s.topic_filter, self._options(s)) for s in subs]))
        else:
            sent.append(self._client.subscribe([(s.topic_filter, s.qos) for s in subs]))
        mids = []
        for rc, mid in sent:
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.debug("MQTT subscribe not sent (%s); it is re-sent on reconnect", mqtt.error_string(rc))
            elif mid is not None:
                mids.append(mid)
        return mids

    # ----------------------------------------------------------------- paho callbacks (network thread)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._connect_failures += 1
            err = TransportError(
                f"MQTT broker {self.host}:{self.port} refused client {self.client_id!r}: {reason_code}"
            )
            permanent = reason_code.value not in _TRANSIENT_CONNACK
            with self._lock:
                refused_waiters = self._conn_waiters if permanent else []
                if permanent:
                    self._conn_waiters = []
                first_refusal = self._refused is None
                self._refused = err
            if first_refusal:
                log.error("%s", err)
            for fut in refused_waiters:
                _resolve_threadsafe(fut, err)
            return
        with self._lock:
            self._connected = True
            self._generation += 1
            self._session_present = bool(flags.session_present)
            available = getattr(properties, "SubscriptionIdentifierAvailable", 1)
            self._sub_ids = self.protocol == "v5" and available != 0
            self._refused = None
            self._last_cause = None
            subs = list(self._subs)
            was_lost, self._lost_logged = self._lost_logged, False
            first = not self._ever_connected
            self._ever_connected = True
        if first:
            log.info("MQTT connected to %s:%d as %r", self.host, self.port, self.client_id)
        elif was_lost:
            log.info("MQTT reconnected to %s:%d as %r", self.host, self.port, self.client_id)
        mids = self._send_subscriptions(subs)
        if self.birth is not None:
            info = client.publish(self.birth[0], self.birth[1], qos=1, retain=True)
            with self._lock:
                self._pending[info.mid] = None  # nobody awaits it; its PUBACK is dropped
        # Waiters (connect(), publishes waiting for the connection) are released once the broker confirmed
        # the subscriptions, so that after connect() returns, messages matching them are delivered.
        waiters: list[asyncio.Future[None]] = []
        with self._lock:
            self._suback_pending = set(mids)
            if not self._suback_pending:
                waiters, self._conn_waiters = self._conn_waiters, []
        for fut in waiters:
            _resolve_threadsafe(fut)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its ``except OSError`` around the connect: the failure is the active exception
        self._connect_failures += 1
        exc = sys.exc_info()[1]
        if exc is None:
            return
        cause = _failure_cause(exc)
        with self._lock:
            repeated = cause == self._last_cause
            self._last_cause = cause
        if isinstance(exc, ssl.SSLError | ssl.CertificateError) and not repeated:
            log.error("MQTT TLS handshake with %s:%d failed for %r: %s; retrying in the background",
                      self.host, self.port, self.client_id, cause)

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        # paho reports socket and TLS read/write failures (e.g. the broker refusing our certificate after the
        # handshake) only here; keep the latest as the cause of what follows
        if level == mqtt.MQTT_LOG_ERR:
            with self._lock:
                self._socket_error = buf

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            was_connected = self._connected
            self._connected = False
            self._suback_pending = set()
            log_it = was_connected and not self._closed and not self._lost_logged
            if log_it:
                self._lost_logged = True
            cause, self._socket_error = self._socket_error, None
            tls_cause = (not was_connected and not self._closed and self.use_tls and cause is not None
                         and ("ssl" in cause.lower() or "tls" in cause.lower() or "certificate" in cause.lower()))
            if tls_cause:
                repeated = cause == self._last_cause
                self._last_cause = cause
        if tls_cause and not repeated:
            log.error("MQTT TLS connection to %s:%d failed for %r before the broker accepted it: %s; retrying in "
                      "the background", self.host, self.port, self.client_id, cause)
        if log_it:
            log.warning(
                "MQTT connection of %r to %s:%d lost (%s); reconnecting in the background",
                self.client_id,
                self.host,
                self.port,
                reason_code,
            )

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        exc: TransportError | None = None
        if reason_code.is_failure:
            exc = TransportError(f"MQTT broker {self.host}:{self.port} refused a message: {reason_code}")
        with self._lock:
            if mid in self._pending:
                fut = self._pending.pop(mid)
            else:
                self._early[mid] = exc
                return
        if fut is not None:
            _resolve_threadsafe(fut, exc)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        for rc in reason_codes:
            if rc.is_failure:
                log.error("MQTT broker %s:%d refused a subscription: %s", self.host, self.port, rc)
        waiters: list[asyncio.Future[None]] = []
        with self._lock:
            if mid in self._suback_pending:
                self._suback_pending.discard(mid)
                if not self._suback_pending and self._connected:
                    waiters, self._conn_waiters = self._conn_waiters, []
        for fut in waiters:
            _resolve_threadsafe(fut)

    def _on_unsubscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._lock:
            fut = self._unsub_waiters.pop(mid, None)
            if fut is None:
                self._unsub_early.add(mid)
                return
        _resolve_threadsafe(fut)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            log.warning("MQTT message with a topic that is not UTF-8 dropped: %r", msg._topic)
            if self.manual_ack and msg.qos:
                client.ack(msg.mid, msg.qos)
            return
        ids: list[int] = []
        if msg.properties is not None:
            ids = getattr(msg.properties, "SubscriptionIdentifier", [])
        with self._lock:
            matching = [s for s in self._subs if topic_matches(s.topic_filter, topic)]
            generation = self._generation
        # A v5 broker tags each copy with the subscriptions it is for; without tags (v3.1.1, or ids from an
        # earlier run that no longer fit) every matching subscription gets the message.
        handlers = [s.handler for s in matching if s.ident in ids] or [s.handler for s in matching]
        payload = bytes(msg.payload)
        if not self.manual_ack or msg.qos == 0:
            for handler in handlers:
                _call_handler(handler, Message(topic, payload))
            return
        mid, qos = msg.mid, msg.qos

        def send_ack() -> None:
            with self._lock:
                # After a reconnect, the broker re-sends unacknowledged messages with their original packet
                # id only when the session was resumed; otherwise the old id may now name another message.
                stale = generation != self._generation and not self._session_present
            if stale:
                log.debug("not acknowledging mid %d from an earlier connection", mid)
                return
            self._client.ack(mid, qos)

        if not handlers:
            send_ack()
            return
        gate = _AckGate(len(handlers), send_ack)
        for handler in handlers:
            _call_handler(handler, Message(topic, payload, gate.ack_callable()))


# --------------------------------------------------------------------------- in-process


@dataclass(eq=False, slots=True)
class _InProcSub:
    owner: InProcTransport
    topic_filter: str
    handler: Handler
    group: str | None
    active: bool = False


@dataclass(slots=True)
class _Delivery:
    subs: list[_InProcSub]
    message: Message


@dataclass(slots=True)
class _Marker:
    event: threading.Event = field(default_factory=threading.Event)


class _InProcBus:
    """An in-process broker: retained messages, subscriptions and one delivery thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.retained: dict[str, bytes] = {}
        self.subs: list[_InProcSub] = []
        self.round_robin: dict[str, int] = {}
        self.connected = 0
        self._queue: queue.SimpleQueue[_Delivery | _Marker | None] | None = None

    # Called with self.lock held.
    def _enqueue(self, item: _Delivery | _Marker) -> None:
        if self._queue is None:
            self._queue = queue.SimpleQueue()
            threading.Thread(
                target=self._run, args=(self._queue,), name=f"inproc-{self.name}", daemon=True
            ).start()
        self._queue.put(item)

    @staticmethod
    def _run(q: queue.SimpleQueue[_Delivery | _Marker | None]) -> None:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, _Marker):
                item.event.set()
                continue
            for sub in item.subs:
                if sub.active:
                    _call_handler(sub.handler, item.message)

    def attach(self, subs: list[_InProcSub]) -> None:
        """Activate a connecting transport's subscriptions and queue the retained messages they match."""
        with self.lock:
            self.connected += 1
            self.activate_locked(subs)

    def activate_locked(self, subs: list[_InProcSub]) -> None:
        for sub in subs:
            sub.active = True
            self.subs.append(sub)
            if sub.group is None:  # retained messages are not sent to shared subscriptions
                for topic in sorted(self.retained):
                    if topic_matches(sub.topic_filter, topic):
                        self._enqueue(_Delivery([sub], Message(topic, self.retained[topic])))

    def detach(self, owner: InProcTransport) -> None:
        """Deactivate a transport's subscriptions; stop the delivery thread when nobody is connected."""
        with self.lock:
            for sub in self.subs:
                if sub.owner is owner:
                    sub.active = False
            self.subs = [s for s in self.subs if s.owner is not owner]
            self.connected -= 1
            if self.connected == 0 and self._queue is not None:
                self._queue.put(None)
                self._queue = None

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        """Route a message: every plain subscriber, and one member of each matching shared group."""
        with self.lock:
            if retain:
                if payload:
                    self.retained[topic] = payload
                else:
                    self.retained.pop(topic, None)
            targets: list[_InProcSub] = []
            groups: dict[str, list[_InProcSub]] = {}
            for sub in self.subs:
                if not topic_matches(sub.topic_filter, topic):
                    continue
                if sub.group is None:
                    targets.append(sub)
                else:
                    groups.setdefault(sub.topic_filter, []).append(sub)
            for key, members in groups.items():
                turn = self.round_robin.get(key, 0)
                targets.append(members[turn % len(members)])
                self.round_robin[key] = turn + 1
            if targets:
                self._enqueue(_Delivery(targets, Message(topic, payload)))

    def marker(self) -> threading.Event | None:
        """Queue a marker behind every queued message; None when no delivery thread runs."""
        with self.lock:
            if self._queue is None:
                return None
            mark = _Marker()
            self._enqueue(mark)
            return mark.event


_BUSES: dict[str, _InProcBus] = {}
_BUSES_LOCK = threading.Lock()


def _bus(name: str) -> _InProcBus:
    with _BUSES_LOCK:
        bus = _BUSES.get(name)
        if bus is None:
            bus = _BUSES[name] = _InProcBus(name)
        return bus


class InProcTransport:
    """:class:`~energymon.interfaces.Transport` on an in-process bus, for the demo and unit tests.

    Every transport opened with the same ``name`` in this process shares one bus. The bus matches MQTT topic
    filters (``+``, ``#``), gives each message of a ``$share/{group}/...`` subscription to one member of the
    group (round robin), keeps retained messages (an empty retained payload deletes one), and calls handlers
    on one delivery thread per bus, in publish order. :meth:`publish` returns once the message is queued;
    there is nothing to acknowledge, so :attr:`Message.ack` does nothing.

    Args:
        name: Bus name (``inproc://name``).
        client_id: For messages and logs only.
        will: Last will ``(topic, payload)``, published retained by :meth:`abort`.
        birth: ``(topic, payload)`` published retained by :meth:`connect`.
    """

    def __init__(
        self,
        name: str,
        *,
        client_id: str = "",
        will: tuple[str, bytes] | None = None,
        birth: tuple[str, bytes] | None = None,
    ) -> None:
        if not name:
            raise ValueError("an in-process bus needs a name (inproc://name)")
        for message in (will, birth):
            if message is not None:
                validate_topic(message[0])
        self.name = name
        self.client_id = client_id
        self.will = will
        self.birth = birth
        self._bus = _bus(name)
        self._subs: list[_InProcSub] = []
        self._connected = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<InProcTransport inproc://{self.name} client_id={self.client_id!r}>"

    @property
    def connected(self) -> bool:
        """True between :meth:`connect` and :meth:`close`."""
        return self._connected

    def subscribe(self, topic_filter: str, handler: Callable[[Message], None], *, qos: int = 1) -> None:
        """Deliver matching messages to ``handler`` on the bus's delivery thread.

        Raises:
            ValueError: invalid filter or QoS.
        """
        validate_filter(topic_filter)
        if qos not in (0, 1, 2):
            raise ValueError(f"invalid QoS {qos}")
        group, _ = split_shared(topic_filter)
        sub = _InProcSub(self, topic_filter, handler, group)
        self._subs.append(sub)
        if self._connected:
            with self._bus.lock:
                self._bus.activate_locked([sub])

    async def connect(self) -> None:
        """Join the bus: subscriptions become active and receive the retained messages they match."""
        if self._closed:
            raise TransportError(f"{self!r} is closed")
        if self._connected:
            return
        self._connected = True
        self._bus.attach(self._subs)
        if self.birth is not None:
            self._bus.publish(self.birth[0], self.birth[1], True)

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Queue a message for delivery.

        Raises:
            TransportError: not connected, or closed.
            ValueError: invalid topic or QoS.
        """
        validate_topic(topic)
        if qos not in (0, 1, 2):
            raise ValueError(f"invalid QoS {qos}")
        if not self._connected:
            raise TransportError(f"{self!r} is not connected")
        self._bus.publish(topic, bytes(payload), retain)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until every message queued on the bus so far has been handed to its handlers.

        Raises:
            TimeoutError: handlers did not get through the queue within ``timeout`` seconds.
        """
        event = self._bus.marker()
        if event is not None and not await asyncio.to_thread(event.wait, timeout):
            raise TimeoutError(f"inproc://{self.name}: delivery queue not drained within {timeout} s")

    async def close(self) -> None:
        """Leave the bus cleanly (no last will); handlers are not called for messages queued after this."""
        self._closed = True
        if self._connected:
            self._connected = False
            self._bus.detach(self)

    async def abort(self) -> None:
        """Leave the bus as a crashed client would: the last will, if any, is published retained."""
        if self._connected and self.will is not None:
            self._bus.publish(self.will[0], self.will[1], True)
        await self.close()


# --------------------------------------------------------------------------- factory


def open_transport(
    url: str,
    *,
    client_id: str,
    username: str | None = None,
    password_env: str | None = None,
    tls: TlsConfig | None = None,
    keepalive_secs: int = 30,
    will: tuple[str, bytes] | None = None,
    clean_start: bool = True,
    manual_ack: bool = False,
    birth: tuple[str, bytes] | None = None,
) -> Transport:
    """Create the transport for ``url`` (``mqtt://``, ``mqtts://`` or ``inproc://``); nothing connects yet.

    Raises:
        ValueError: unknown scheme, or a broker URL without a host.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "inproc":
        name = (parts.netloc + parts.path).strip("/")
        return InProcTransport(name, client_id=client_id, will=will, birth=birth)
    if scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"transport url {url!r}: scheme must be mqtt://, mqtts:// or inproc://")
    if not parts.hostname:
        raise ValueError(f"transport url {url!r} has no host")
    secure = scheme == "mqtts"
    return MqttTransport(
        parts.hostname,
        parts.port or (8883 if secure else 1883),
        client_id=client_id,
        username=username,
        password_env=password_env,
        tls=tls,
        use_tls=secure,
        keepalive_secs=keepalive_secs,
        will=will,
        birth=birth,
        clean_start=clean_start,
        manual_ack=manual_ack,
    )
