"""The ``alertmanager`` notifier: alerts to a Prometheus Alertmanager through its v2 API (``POST /api/v2/alerts``).

Each record becomes one Alertmanager alert::

    {"labels": {"alertname": "<rule id>", "rule": "<rule id>", "source": "<source>", "severity": "critical",
                "audience": "energy_manager,regulator", "enterprise": "<USCC>", ...static labels},
     "annotations": {"summary": ..., "value": ..., "threshold": ..., "alert_id": ..., "version": ...,
                     "started": ..., "fired": ...},
     "startsAt": "<start, never after now>", "endsAt": "<see below>", "generatorURL": ""}

Alertmanager de-duplicates, groups, inhibits, silences and routes them to its receivers.

* Firing: ``endsAt`` is now + 4 × ``resend_interval_secs``, and the notifier posts every firing alert again each
  ``resend_interval_secs`` (as Prometheus does), so Alertmanager keeps it active and resolves it by itself only
  if energymon goes away. A restart hands the restored firing alerts back through :meth:`resume`.
* Resolved: ``endsAt`` is now, so Alertmanager marks it resolved and tells its receivers.
* An escalation changes the ``severity``/``audience`` labels, which is a new alert to Alertmanager: the old label
  set is resolved in the same request.

``startsAt`` and ``endsAt`` are wall-clock times (the Alertmanager's clock), the event times travel as
annotations. Connection errors, timeouts, 5xx and 429 are retried; 4xx are final (dead-lettered).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from energymon.alerts.delivery import BackgroundNotifier, DeliveryError
from energymon.alerts.engine import Alert, AlertState
from energymon.alerts.payload import PayloadContext, alert_payload
from energymon.alerts_config import AlertmanagerNotifier as AlertmanagerConfig
from energymon.errors import NotifyError
from energymon.metrics import PipelineMetrics

__all__ = ["AlertmanagerNotifier", "am_alert"]


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ms_iso(ms: int | None) -> str:
    return "" if ms is None else _iso(datetime.fromtimestamp(ms / 1000, UTC))


def _labels(alert: Alert, enterprise: str | None, static: dict[str, str]) -> dict[str, str]:
    labels = dict(static)
    labels.update({
        "alertname": alert.rule_id,
        "rule": alert.rule_id,
        "source": alert.source,
        "severity": alert.severity,
        "audience": ",".join(alert.audience),
    })
    if enterprise:
        labels["enterprise"] = enterprise
    return labels


def am_alert(alert: Alert, *, enterprise: str | None, static_labels: dict[str, str], now: datetime,
             resend_interval_s: float, labels: dict[str, str] | None = None, context: PayloadContext | None = None,
             delivery_id: str | None = None) -> dict[str, Any]:
    """The Alertmanager v2 alert object for one record (``labels`` overrides the computed label set)."""
    p = alert_payload(alert, delivery_id=delivery_id,
                      context=context if context is not None else PayloadContext(enterprise_code=enterprise))
    started = datetime.fromtimestamp(alert.started_ms / 1000, UTC)
    if alert.state is AlertState.RESOLVED:
        ends = now
    else:
        ends = now + timedelta(seconds=4 * resend_interval_s)
    annotations = {
        "summary": alert.summary,
        "alert_id": alert.id,
        "version": str(alert.version),
        "value": "" if alert.value is None else f"{alert.value:g}",
        "threshold": "" if alert.threshold is None else f"{alert.threshold:g}",
        "started": _ms_iso(alert.started_ms),
        "fired": _ms_iso(alert.fired_ms),
    }
    if alert.resolved_ms is not None:
        annotations["resolved"] = _ms_iso(alert.resolved_ms)
    for key in ("category", "category_name", "unit", "threshold_unit", "enterprise_name", "source_name",
                "meter_name", "started_local", "fired_local", "resolved_local", "outage_began_at", "handling",
                "delivery_id"):
        if p.get(key) not in (None, ""):
            annotations[key] = str(p[key])
    if p["for_secs"]:
        annotations["for_secs"] = f"{p['for_secs']:g}"
    if alert.acked_by is not None:
        annotations["acked_by"] = alert.acked_by
        annotations["ack_comment"] = alert.ack_comment
    return {
        "labels": labels if labels is not None else _labels(alert, enterprise, static_labels),
        "annotations": {k: v for k, v in annotations.items() if v != ""},
        "startsAt": _iso(min(started, now)),
        "endsAt": _iso(ends),
        "generatorURL": "",
    }


class AlertmanagerNotifier(BackgroundNotifier):
    """Post alert records to Alertmanager from a background thread; re-send firing alerts periodically.

    Args:
        config: the ``alertmanager`` notifier from the plant file.
        dead_letter_path: JSON-lines file for records that could not be delivered.
        enterprise: the enterprise's USCC (label ``enterprise``).
        metrics: stage ``notify`` counters (see :class:`~energymon.alerts.delivery.BackgroundNotifier`).
        transport: an httpx transport (tests, proxies); default: httpx's own.
        context: what the annotations say about the plant (category, units, names, local time).
        **kw: queue and back-off settings of :class:`~energymon.alerts.delivery.BackgroundNotifier`.
    """

    kind = "alertmanager"

    def __init__(
        self,
        config: AlertmanagerConfig,
        *,
        dead_letter_path: Path,
        enterprise: str | None = None,
        metrics: PipelineMetrics | None = None,
        transport: httpx.BaseTransport | None = None,
        context: PayloadContext | None = None,
        **kw: Any,
    ) -> None:
        self._resend_s = config.resend_interval_secs
        kw.setdefault("retry_for_s", config.retry_for_secs)
        kw.setdefault("backoff_cap_s", config.backoff_max_secs)
        kw.setdefault("max_in_flight", config.max_in_flight)
        self.context = context if context is not None else PayloadContext(enterprise_code=enterprise)
        super().__init__(
            config.id, severities=config.severities, audiences=config.audiences,
            dead_letter_path=dead_letter_path, max_retries=config.max_retries, metrics=metrics,
            idle_interval_s=min(self._resend_s, 5.0), **kw,
        )
        self.config = config
        self.enterprise = enterprise
        self._url = config.url.rstrip("/") + "/api/v2/alerts"
        self._timeout_s = config.timeout_ms / 1000
        self._client = httpx.Client(timeout=self._timeout_s, transport=transport, follow_redirects=False)
        self._active: dict[str, tuple[Alert, dict[str, str]]] = {}  # alert id → (record, labels last posted)
        self._active_lock = threading.Lock()
        self._last_resend = time.monotonic()
        self._start()

    def resume(self, alerts: Sequence[Alert]) -> None:
        """Keep re-sending the firing alerts the engine restored (and post them once now); not a notification."""
        with self._active_lock:
            for alert in alerts:
                if alert.state is AlertState.FIRING and self.accepts(alert):
                    self._active[alert.id] = (alert, _labels(alert, self.enterprise, self.config.labels))
        self._last_resend = 0.0

    def _close_grace_s(self) -> float:
        return 4 * self._timeout_s

    def _closed(self) -> None:
        self._client.close()

    def _post(self, body: list[dict[str, Any]]) -> None:
        try:
            response = self._client.post(self._url, content=json.dumps(body, ensure_ascii=False).encode(),
                                         headers={"Content-Type": "application/json"})
        except httpx.TransportError as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise DeliveryError(reason, retriable=True) from None
        status = response.status_code
        if 200 <= status < 300:
            return
        snippet = response.text[:200].strip()
        raise DeliveryError(f"HTTP {status}" + (f": {snippet}" if snippet else ""),
                            retriable=status >= 500 or status in (408, 429))

    def _payload(self, alert: Alert, delivery_id: str) -> dict[str, Any]:
        return alert_payload(alert, delivery_id=delivery_id, context=self.context)

    def _deliver_once(self, alert: Alert, delivery_id: str) -> None:
        now = datetime.now(UTC)
        labels = _labels(alert, self.enterprise, self.config.labels)
        body = [am_alert(alert, enterprise=self.enterprise, static_labels=self.config.labels, now=now,
                         resend_interval_s=self._resend_s, labels=labels, context=self.context,
                         delivery_id=delivery_id)]
        with self._active_lock:
            before = self._active.get(alert.id)
        if before is not None and before[1] != labels:  # escalated: the old label set is another alert
            old = before[0]
            body.append(am_alert(replace(old, state=AlertState.RESOLVED), enterprise=self.enterprise,
                                 static_labels=self.config.labels, now=now, resend_interval_s=self._resend_s,
                                 labels=before[1]))
        self._post(body)
        with self._active_lock:
            if alert.state is AlertState.RESOLVED:
                self._active.pop(alert.id, None)
            else:
                self._active[alert.id] = (alert, labels)

    def _idle(self) -> None:
        if time.monotonic() - self._last_resend < self._resend_s:
            return
        self._last_resend = time.monotonic()
        # An alert whose record is being posted now is left out: that post refreshes it, and a re-send of the
        # state before it (a firing) must not land after its resolution. The dispatcher runs this, so no other
        # alert's delivery starts meanwhile.
        busy = set(self.in_flight)
        with self._active_lock:
            active = [v for k, v in self._active.items() if k not in busy]
        if not active:
            return
        now = datetime.now(UTC)
        body = [am_alert(a, enterprise=self.enterprise, static_labels=self.config.labels, now=now,
                         resend_interval_s=self._resend_s, labels=labels) for a, labels in active]
        try:
            self._post(body)
        except DeliveryError as exc:  # the next re-send tries again; Alertmanager keeps them for 4 intervals
            if self._stage is not None:
                self._stage.error(NotifyError(exc.reason))
