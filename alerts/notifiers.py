"""Notifiers: deliver alert records without ever blocking the pipeline, and :func:`route` to pick them.

A notifier's :meth:`~Notifier.notify` writes the record to its outbox (the alert state file) and returns; a
background worker delivers it, at least once, and removes it only when the receiver accepted it. What cannot
be delivered is dead-lettered (kept in the outbox for ``energymon alerts replay`` and appended to a dead-letter
file), never silently dropped. The types: ``webhook`` (here), ``mqtt`` (:mod:`~energymon.alerts.notify_mqtt`,
retained state), ``email`` (:mod:`~energymon.alerts.notify_email`) and ``alertmanager``
(:mod:`~energymon.alerts.notify_alertmanager`). Each may filter by ``severities`` and ``audiences``
(:class:`Filtering`); :func:`route` applies the rule's notifier list, the filters and the cycle's recipients.

:class:`WebhookNotifier` POSTs each record as JSON (:func:`energymon.alerts.payload.alert_payload`, schema in
``alerts/README.md``) with the headers

* ``X-Energymon-Delivery: <uuid>``: the same on every attempt, retry and replay of one record (also
  ``delivery_id`` in the body), so a receiver drops duplicates;
* ``X-Energymon-Timestamp: <unix seconds>``: when this attempt was signed;
* ``X-Energymon-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` when a secret is configured;
  receivers check it with :func:`verify_signature`, which refuses a timestamp more than 5 minutes off.

Retries: connection errors, timeouts, 5xx, 408 and 429 are retried with capped exponential backoff and full
jitter (a ``Retry-After`` header, in seconds or as an HTTP date, is honoured instead) for ``retry_for_secs``.
Any other status is final: the record is dead-lettered at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

from energymon.alerts.delivery import BackgroundNotifier, DeliveryError, accepts
from energymon.alerts.engine import Alert, AlertState
from energymon.alerts.payload import PayloadContext, alert_payload
from energymon.alerts_config import WebhookNotifier as WebhookConfig
from energymon.errors import ConfigError, ConfigIssue
from energymon.metrics import PipelineMetrics

__all__ = [
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "SIGNATURE_TOLERANCE_S",
    "TIMESTAMP_HEADER",
    "Filtering",
    "Notifier",
    "Resumable",
    "WebhookNotifier",
    "accepts",
    "route",
    "sign",
    "verify_signature",
]

log = logging.getLogger("energymon.alerts.notifiers")

SIGNATURE_HEADER = "X-Energymon-Signature"
DELIVERY_HEADER = "X-Energymon-Delivery"
TIMESTAMP_HEADER = "X-Energymon-Timestamp"
#: How far a signed timestamp may be from the receiver's clock (either way) by default.
SIGNATURE_TOLERANCE_S = 300.0
STAGE = "notify"


@runtime_checkable
class Notifier(Protocol):
    """Something that delivers alerts. :meth:`notify` never blocks and never raises for delivery problems."""

    @property
    def id(self) -> str:
        """Notifier id from the plant file; rules route to it by this id."""
        ...

    def notify(self, alert: Alert) -> None:
        """Queue a firing or resolved alert for delivery."""
        ...

    def close(self, timeout: float | None = 10.0) -> bool:
        """Deliver what is queued (at most ``timeout`` s), dead-letter the rest; True if all drained."""
        ...


@runtime_checkable
class Filtering(Protocol):
    """A notifier with routing filters (``severities``, ``audiences`` in its configuration)."""

    def accepts(self, alert: Alert) -> bool:
        """True if the alert's severity and audience pass the notifier's filters."""
        ...


@runtime_checkable
class Resumable(Protocol):
    """A notifier that keeps alert state on the far side and must hear about alerts restored after a restart
    (Alertmanager forgets alerts it stops hearing about). ``resume`` is not a notification."""

    def resume(self, alerts: Sequence[Alert]) -> None:
        """Take over the firing alerts the engine restored from its state file."""
        ...


def route(notifiers: Sequence[Notifier]) -> Callable[[Alert], list[str]]:
    """Build an engine ``notify`` callback; it returns the ids of the notifiers the record went to.

    Candidates are the notifiers the rule names (all if none). A firing, escalated or reminder record goes to a
    candidate whose filters accept it, and to every candidate that already got a record of this cycle
    (``alert.sent_to``), so a notifier that heard the firing also hears the escalation and the resolution. A
    resolved or acknowledged record goes only to those (or, if the cycle's recipients are unknown, by the
    filters).

    Every target is tried even if one raises; the first exception is re-raised afterwards, so the engine
    counts it.
    """
    by_id = {n.id: n for n in notifiers}

    def notify(alert: Alert) -> list[str]:
        if alert.notifiers:
            candidates = [by_id[i] for i in alert.notifiers if i in by_id]
        else:
            candidates = list(by_id.values())
        missing = [i for i in alert.notifiers if i not in by_id]
        if missing:
            log.warning("alert %s names unknown notifier(s) %s", alert.id, ", ".join(missing))
        heard = set(alert.sent_to)
        to_heard = alert.state is AlertState.RESOLVED or alert.event == "acknowledged"
        resolved_with_recipients = to_heard and bool(heard)
        targets = [
            n for n in candidates
            if n.id in heard
            or (not resolved_with_recipients and (not isinstance(n, Filtering) or n.accepts(alert)))
        ]
        first: Exception | None = None
        went: list[str] = []
        for target in targets:
            try:
                target.notify(alert)
            except Exception as exc:
                first = first or exc
            else:
                went.append(target.id)
        if first is not None:
            raise first
        return went

    return notify


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The signature header value of ``body`` sent at ``timestamp`` (unix seconds):
    ``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``."""
    return "sha256=" + hmac.new(secret, str(int(timestamp)).encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str, timestamp: str, *, now_s: float | None = None,
                     tolerance_s: float = SIGNATURE_TOLERANCE_S) -> bool:
    """Check the ``X-Energymon-Signature`` header against the ``X-Energymon-Timestamp`` header and the exact body
    bytes, in constant time; False too when the timestamp is more than ``tolerance_s`` from ``now_s`` (default:
    the clock). A receiver also drops a ``X-Energymon-Delivery`` id it has already processed (replays within
    the tolerance)."""
    ts = timestamp.strip()
    if not ts.isdigit() or len(ts) > 12:
        return False
    now = time.time() if now_s is None else now_s
    if abs(now - int(ts)) > tolerance_s:
        return False
    prefix, sep, digest = header.strip().partition("=")
    if not sep or prefix.lower() != "sha256":
        return False
    expected = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(expected, digest.strip().lower().encode("utf-8", "replace"))


def _retry_after_secs(value: str | None, now: datetime) -> float | None:
    """Parse a Retry-After header (delta seconds or an HTTP date) into seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


class WebhookNotifier(BackgroundNotifier):
    """POST alerts to a webhook from a background thread, with an outbox, retries and dead letters.

    The outbox, retries with backoff, ``Retry-After``, closing and dead letters are
    :class:`~energymon.alerts.delivery.BackgroundNotifier`'s; this class makes one signed POST per attempt. Every
    attempt of one record carries the same ``X-Energymon-Delivery`` id, and a dead-letter record adds the URL
    (without credentials) and the last HTTP status.

    Args:
        config: the ``webhook`` notifier from the plant file.
        dead_letter_path: JSON-lines file for alerts that could not be delivered (created on first use).
        enterprise: the enterprise's USCC, sent as ``enterprise`` in each payload.
        metrics: ``sent`` per delivered alert, ``errors{error_type="NotifyError"}`` per failed attempt,
            ``dropped{reason="dead_letter"}`` per dead-lettered alert (stage ``notify``).
        transport: an httpx transport (tests, proxies); default: httpx's own.
        context: what the payload says about the plant (names, units, codes); None: the record only.
        **kw: outbox, queue and back-off settings of :class:`~energymon.alerts.delivery.BackgroundNotifier`
            (``retry_for_s``, ``backoff_cap_s`` default to the configuration's).

    Raises:
        ConfigError: ``secret_env`` names an environment variable that is not set or empty.
    """

    kind = "webhook"

    def __init__(
        self,
        config: WebhookConfig,
        *,
        dead_letter_path: Path,
        enterprise: str | None = None,
        metrics: PipelineMetrics | None = None,
        transport: httpx.BaseTransport | None = None,
        context: PayloadContext | None = None,
        **kw: Any,
    ) -> None:
        self.config = config
        self._secret: bytes | None = None
        if config.secret_env is not None:
            secret = os.environ.get(config.secret_env)
            if not secret:
                raise ConfigError("<environment>", [ConfigIssue(
                    f"alerts.notifiers[{config.id}].secret_env",
                    f"environment variable {config.secret_env} is not set or empty; it must hold the HMAC "
                    f"secret of webhook notifier {config.id!r}",
                )])
            self._secret = secret.encode()
        kw.setdefault("retry_for_s", config.retry_for_secs)
        kw.setdefault("backoff_cap_s", config.backoff_max_secs)
        kw.setdefault("max_in_flight", config.max_in_flight)
        super().__init__(
            config.id, severities=config.severities, audiences=config.audiences, dead_letter_path=dead_letter_path,
            max_retries=config.max_retries, metrics=metrics, **kw,
        )
        self._safe_url = str(httpx.URL(config.url).copy_with(username=None, password=None))
        self.enterprise = enterprise
        self.context = context if context is not None else PayloadContext(enterprise_code=enterprise)
        self._timeout_s = config.timeout_ms / 1000
        self._client = httpx.Client(timeout=self._timeout_s, transport=transport, follow_redirects=False)
        self._last_status: dict[str, int] = {}  # delivery id → its last HTTP status (attempts run in parallel)
        self._status_lock = threading.Lock()
        self._start()

    def _payload(self, alert: Alert, delivery_id: str) -> dict[str, Any]:
        return alert_payload(alert, delivery_id=delivery_id, context=self.context)

    def _deliver_once(self, alert: Alert, delivery_id: str) -> None:
        sent_at = datetime.now(UTC)
        body = json.dumps({**self._payload(alert, delivery_id),
                           "sent_at": sent_at.isoformat(timespec="milliseconds")},
                          ensure_ascii=False, separators=(",", ":")).encode()
        timestamp = int(sent_at.timestamp())
        headers = {"Content-Type": "application/json; charset=utf-8", DELIVERY_HEADER: delivery_id,
                   TIMESTAMP_HEADER: str(timestamp)}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, body, timestamp)
        with self._status_lock:
            self._last_status.pop(delivery_id, None)
        try:
            response = self._client.post(self.config.url, content=body, headers=headers)
        except httpx.TransportError as exc:  # connect errors, timeouts, broken connections
            raise DeliveryError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                                retriable=True) from None
        status = response.status_code
        if 200 <= status < 300:
            return
        with self._status_lock:
            self._last_status[delivery_id] = status
        snippet = response.text[:200].strip()
        raise DeliveryError(
            f"HTTP {status}" + (f": {snippet}" if snippet else ""),
            retriable=status >= 500 or status in (408, 429),
            retry_after_s=_retry_after_secs(response.headers.get("Retry-After"), datetime.now(UTC)),
        )

    def _dead_letter_extra(self, alert: Alert, delivery_id: str) -> dict[str, Any]:
        with self._status_lock:
            status = self._last_status.pop(delivery_id, None)
        return {"url": self._safe_url, "status_code": status}

    def _close_grace_s(self) -> float:
        return 4 * self._timeout_s  # the requests in flight run in parallel, each within its timeout

    def _closed(self) -> None:
        self._client.close()
