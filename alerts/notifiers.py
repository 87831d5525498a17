"""Notifiers: deliver alert records without ever blocking the pipeline, and :func:`route` to pick them.

A notifier's :meth:`~Notifier.notify` only queues; a background worker delivers. What cannot be delivered is
appended to a dead-letter file (one JSON line per alert: payload, reason, attempts), never silently dropped.
The types: ``webhook`` (here), ``mqtt`` (:mod:`~energymon.alerts.notify_mqtt`, retained state, no dead letters),
``email`` (:mod:`~energymon.alerts.notify_email`) and ``alertmanager``
(:mod:`~energymon.alerts.notify_alertmanager`). Each may filter by ``severities`` and ``audiences``
(:class:`Filtering`); :func:`route` applies the rule's notifier list, the filters and the cycle's recipients.

:class:`WebhookNotifier` POSTs each firing/resolved record as JSON::

    {"id": "kiln-power-high:kiln-main", "rule_id": ..., "source": ..., "state": "firing", "severity": ...,
     "audience": [...], "summary": ..., "value": ..., "threshold": ..., "started_ms": ..., "fired_ms": ...,
     "resolved_ms": null, "last_notified_ms": ..., "version": 2, "notifiers": [...],
     "status": "firing", "enterprise": "91530100MA6K7XYZ3B", "sent_at": "2025-01-01T00:00:00.000+00:00"}

Headers: ``X-Energymon-Delivery: <uuid>`` (the same on every retry of one delivery, so a receiver can drop
duplicates) and, when a secret is configured, ``X-Energymon-Signature: sha256=<hex HMAC-SHA256 of the exact
body bytes>``; receivers check it with :func:`verify_signature`.

Retries: connection errors, timeouts, 5xx, 408 and 429 are retried up to ``max_retries`` times with capped
exponential backoff and full jitter (a ``Retry-After`` header, in seconds or as an HTTP date, is honoured
instead). Any other status is final: the alert is dead-lettered at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

from energymon.alerts.engine import Alert, AlertState
from energymon.alerts_config import WebhookNotifier as WebhookConfig
from energymon.errors import ConfigError, ConfigIssue, NotifyError
from energymon.metrics import PipelineMetrics, StageMetrics

__all__ = [
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
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


def accepts(severities: Sequence[str], audiences: Sequence[str], alert: Alert) -> bool:
    """The filter rule of every notifier: severity listed (or no list) and an audience in common (or no list)."""
    if severities and alert.severity not in severities:
        return False
    return not audiences or any(a in audiences for a in alert.audience)


def route(notifiers: Sequence[Notifier]) -> Callable[[Alert], list[str]]:
    """Build an engine ``notify`` callback; it returns the ids of the notifiers the record went to.

    Candidates are the notifiers the rule names (all if none). A firing, escalated or reminder record goes to a
    candidate whose filters accept it, and to every candidate that already got a record of this cycle
    (``alert.sent_to``), so a notifier that heard the firing also hears the escalation and the resolution. A
    resolved record goes only to those (or, if the cycle's recipients are unknown, by the filters).

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
        resolved_with_recipients = alert.state is AlertState.RESOLVED and bool(heard)
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


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str) -> bool:
    """Check an ``X-Energymon-Signature`` header against the exact body bytes, in constant time."""
    prefix, sep, digest = header.strip().partition("=")
    if not sep or prefix.lower() != "sha256":
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
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


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class _Delivery:
    delivery_id: str
    alert: Alert


class WebhookNotifier:
    """POST alerts to a webhook from a background thread, with retries and a dead-letter file.

    Args:
        config: the ``webhook`` notifier from the plant file.
        dead_letter_path: JSON-lines file for alerts that could not be delivered (created on first use).
        enterprise: the enterprise's USCC, sent as ``enterprise`` in each payload.
        metrics: ``sent`` per delivered alert, ``errors{error_type="NotifyError"}`` per failed attempt,
            ``dropped{reason="dead_letter"}`` per dead-lettered alert (stage ``notify``).
        transport: an httpx transport (tests, proxies); default: httpx's own.
        queue_max: alerts waiting for delivery beyond which new ones are dead-lettered at once.
        backoff_base_s, backoff_cap_s: retry ``n`` waits uniform(0, min(cap, base × 2^(n-1))) seconds.
        retry_after_max_s: upper bound on a server's ``Retry-After``.

    Raises:
        ConfigError: ``secret_env`` names an environment variable that is not set or empty.
    """

    def __init__(
        self,
        config: WebhookConfig,
        *,
        dead_letter_path: Path,
        enterprise: str | None = None,
        metrics: PipelineMetrics | None = None,
        transport: httpx.BaseTransport | None = None,
        queue_max: int = 10_000,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 60.0,
        retry_after_max_s: float = 300.0,
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
        self.dead_letter_path = Path(dead_letter_path)
        self._safe_url = str(httpx.URL(config.url).copy_with(username=None, password=None))
        self.enterprise = enterprise
        self._stage: StageMetrics | None = metrics.stage(STAGE) if metrics is not None else None
        self._queue_max = queue_max
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._retry_after_max_s = retry_after_max_s
        self._timeout_s = config.timeout_ms / 1000
        self._client = httpx.Client(timeout=self._timeout_s, transport=transport, follow_redirects=False)
        self._queue: deque[_Delivery] = deque()
        self._in_flight = 0
        self._cond = threading.Condition()
        self._closing = False
        self._closed_result: bool | None = None
        self._abort = threading.Event()
        self._dl_lock = threading.Lock()
        self._random = random.Random()
        self._thread = threading.Thread(target=self._run, name=f"webhook-{config.id}", daemon=True)
        self._thread.start()

    @property
    def id(self) -> str:
        """The notifier id."""
        return self.config.id

    @property
    def pending(self) -> int:
        """Alerts queued or being delivered."""
        with self._cond:
            return len(self._queue) + self._in_flight

    def accepts(self, alert: Alert) -> bool:
        """The ``severities`` and ``audiences`` filters of the configuration."""
        return accepts(self.config.severities, self.config.audiences, alert)

    def notify(self, alert: Alert) -> None:
        """Queue a firing or resolved alert; returns at once.

        Raises:
            ValueError: the alert is pending (only transitions to firing and resolved are notified).
        """
        if alert.state is AlertState.PENDING:
            raise ValueError(f"alert {alert.id} is pending; only firing and resolved alerts are notified")
        item = _Delivery(str(uuid.uuid4()), alert)
        with self._cond:
            if self._closing:
                reason = "notifier closed"
            elif len(self._queue) >= self._queue_max:
                reason = f"queue full ({self._queue_max} alerts waiting)"
            else:
                self._queue.append(item)
                self._cond.notify()
                return
        self._dead_letter(item, reason, attempts=0, status_code=None)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop taking alerts, deliver the queue for at most ``timeout`` seconds, dead-letter what is left.

        Returns True if every queued alert was delivered (or dead-lettered on its own merits) within the
        timeout, False if the timeout cut deliveries short (those alerts are in the dead-letter file).
        """
        with self._cond:
            if self._closed_result is not None:
                return self._closed_result
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        drained = not self._thread.is_alive()
        if not drained:
            self._abort.set()  # ends backoff waits; queued alerts are dead-lettered
            self._thread.join(4 * self._timeout_s + 1)  # at most one request is in flight
        self._client.close()
        with self._cond:
            self._closed_result = drained
        return drained

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                item = self._queue.popleft()
                self._in_flight = 1
            try:
                if self._abort.is_set():
                    self._dead_letter(item, "notifier closed before delivery", attempts=0, status_code=None)
                else:
                    self._deliver(item)
            except Exception as exc:  # never let one alert kill the worker
                log.exception("webhook %s: unexpected error delivering alert %s", self.id, item.alert.id)
                self._dead_letter(item, f"internal error: {exc!r}", attempts=0, status_code=None)
            finally:
                with self._cond:
                    self._in_flight = 0
                    self._cond.notify_all()

    def _payload(self, alert: Alert) -> dict[str, Any]:
        payload: dict[str, Any] = alert.to_dict()
        payload["status"] = alert.state.value
        payload["enterprise"] = self.enterprise
        return payload

    def _deliver(self, item: _Delivery) -> None:
        payload = self._payload(item.alert)
        max_attempts = 1 + self.config.max_retries
        attempts = 0
        while True:
            attempts += 1
            body = json.dumps({**payload, "sent_at": _iso_now()}, ensure_ascii=False,
                              separators=(",", ":")).encode()
            headers = {"Content-Type": "application/json; charset=utf-8", DELIVERY_HEADER: item.delivery_id}
            if self._secret is not None:
                headers[SIGNATURE_HEADER] = sign(self._secret, body)
            status: int | None = None
            retry_after: float | None = None
            try:
                response = self._client.post(self.config.url, content=body, headers=headers)
            except httpx.TransportError as exc:  # connect errors, timeouts, broken connections
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                retriable = True
            else:
                status = response.status_code
                if 200 <= status < 300:
                    if self._stage is not None:
                        self._stage.sent()
                    log.debug("webhook %s: delivered alert %s %s after %d attempt(s)", self.id, item.alert.id,
                              item.alert.state.value, attempts)
                    return
                snippet = response.text[:200].strip()
                reason = f"HTTP {status}" + (f": {snippet}" if snippet else "")
                retriable = status >= 500 or status in (408, 429)
                retry_after = _retry_after_secs(response.headers.get("Retry-After"), datetime.now(UTC))
            if self._stage is not None:
                self._stage.error(NotifyError(reason))
            if not retriable:
                self._dead_letter(item, f"not retriable: {reason}", attempts, status)
                return
            if attempts >= max_attempts:
                self._dead_letter(item, f"gave up after {attempts} attempts: {reason}", attempts, status)
                return
            if retry_after is not None:
                delay = min(retry_after, self._retry_after_max_s)
            else:
                ceiling = min(self._backoff_cap_s, self._backoff_base_s * 2 ** (attempts - 1))
                delay = self._random.uniform(0, ceiling)
            log_at = logging.WARNING if attempts == 1 else logging.DEBUG
            log.log(log_at, "webhook %s: alert %s attempt %d failed (%s); retrying in %.2f s", self.id,
                    item.alert.id, attempts, reason, delay)
            if self._abort.wait(delay):
                reason = f"notifier closed before delivery; last error: {reason}"
                self._dead_letter(item, reason, attempts, status)
                return

    def _dead_letter(self, item: _Delivery, reason: str, attempts: int, status_code: int | None) -> None:
        record = {
            "dead_lettered_at": _iso_now(),
            "notifier": self.id,
            "url": self._safe_url,
            "delivery_id": item.delivery_id,
            "reason": reason,
            "attempts": attempts,
            "status_code": status_code,
            "payload": self._payload(item.alert),
        }
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        log.error("webhook %s: alert %s %s not delivered (%s); written to %s", self.id, item.alert.id,
                  item.alert.state.value, reason, self.dead_letter_path)
        if self._stage is not None:
            self._stage.dropped("dead_letter")
        try:
            with self._dl_lock:
                self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
                with self.dead_letter_path.open("a", encoding="utf-8") as fh:
                    fh.write(line)
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError as exc:
            log.critical("webhook %s: cannot write dead-letter file %s: %s; lost alert: %s", self.id,
                         self.dead_letter_path, exc, line.strip())
            if self._stage is not None:
                self._stage.error(exc)
