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
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

from energymon.alerts.delivery import BackgroundNotifier, DeliveryError, _iso_now, accepts
from energymon.alerts.engine import Alert, AlertState
from energymon.alerts_config import WebhookNotifier as WebhookConfig
from energymon.errors import ConfigError, ConfigIssue
from energymon.metrics import PipelineMetrics

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


class WebhookNotifier(BackgroundNotifier):
    """POST alerts to a webhook from a background thread, with retries and a dead-letter file.

    Queueing, retries with backoff, ``Retry-After``, closing and dead letters are
    :class:`~energymon.alerts.delivery.BackgroundNotifier`'s; this class makes one signed POST per attempt. Every
    attempt of one delivery carries the same ``X-Energymon-Delivery`` id, and a dead-letter record adds the URL
    (without credentials), that id and the last HTTP status.

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

    kind = "webhook"

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
        super().__init__(
            config.id, severities=config.severities, audiences=config.audiences, dead_letter_path=dead_letter_path,
            max_retries=config.max_retries, metrics=metrics, queue_max=queue_max, backoff_base_s=backoff_base_s,
            backoff_cap_s=backoff_cap_s, retry_after_max_s=retry_after_max_s,
        )
        self._safe_url = str(httpx.URL(config.url).copy_with(username=None, password=None))
        self.enterprise = enterprise
        self._timeout_s = config.timeout_ms / 1000
        self._client = httpx.Client(timeout=self._timeout_s, transport=transport, follow_redirects=False)
        # the alert being delivered, its delivery id (the same on every retry) and its last HTTP status
        self._current: tuple[Alert, str] | None = None
        self._last_status: int | None = None
        self._start()

    def _payload(self, alert: Alert) -> dict[str, Any]:
        payload: dict[str, Any] = alert.to_dict()
        payload["status"] = alert.state.value
        payload["enterprise"] = self.enterprise
        return payload

    def _delivery_id(self, alert: Alert) -> str:
        current = self._current
        if current is not None and current[0] is alert:
            return current[1]
        return str(uuid.uuid4())

    def _deliver_once(self, alert: Alert) -> None:
        current = self._current
        if current is None or current[0] is not alert:
            self._current = (alert, str(uuid.uuid4()))
            self._last_status = None
        delivery_id = self._delivery_id(alert)
        body = json.dumps({**self._payload(alert), "sent_at": _iso_now()}, ensure_ascii=False,
                          separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json; charset=utf-8", DELIVERY_HEADER: delivery_id}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        try:
            response = self._client.post(self.config.url, content=body, headers=headers)
        except httpx.TransportError as exc:  # connect errors, timeouts, broken connections
            raise DeliveryError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                                retriable=True) from None
        status = self._last_status = response.status_code
        if 200 <= status < 300:
            return
        snippet = response.text[:200].strip()
        raise DeliveryError(
            f"HTTP {status}" + (f": {snippet}" if snippet else ""),
            retriable=status >= 500 or status in (408, 429),
            retry_after_s=_retry_after_secs(response.headers.get("Retry-After"), datetime.now(UTC)),
        )

    def _dead_letter_extra(self, alert: Alert) -> dict[str, Any]:
        current = self._current
        mine = current is not None and current[0] is alert
        return {
            "url": self._safe_url,
            "delivery_id": self._delivery_id(alert),
            "status_code": self._last_status if mine else None,
        }

    def _close_grace_s(self) -> float:
        return 4 * self._timeout_s  # at most one request is in flight

    def _closed(self) -> None:
        self._client.close()
