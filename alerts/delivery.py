"""The delivery worker behind the e-mail and Alertmanager notifiers: a queue, one thread, retries, dead letters.

:meth:`BackgroundNotifier.notify` only queues. The worker delivers one record at a time through the subclass's
:meth:`~BackgroundNotifier._deliver_once`, which raises :class:`DeliveryError` saying whether the failure is
worth retrying. Retriable failures are retried up to ``max_retries`` times with capped exponential backoff
and full jitter; what cannot be delivered is appended to the dead-letter file (one JSON line: notifier,
reason, attempts, the alert), never silently dropped. While idle, the worker calls
:meth:`~BackgroundNotifier._idle` every ``idle_interval_s`` (Alertmanager's re-sends).
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from energymon.alerts.engine import Alert, AlertState
from energymon.errors import NotifyError
from energymon.metrics import PipelineMetrics, StageMetrics

__all__ = ["BackgroundNotifier", "DeliveryError", "accepts"]

log = logging.getLogger("energymon.alerts.notifiers")

STAGE = "notify"


class DeliveryError(Exception):
    """One failed delivery attempt.

    Args:
        reason: what went wrong (no secrets).
        retriable: whether another attempt may succeed (network errors, 4xx SMTP replies, HTTP 5xx/429).
        retry_after_s: the server's own back-off request, if any.
    """

    def __init__(self, reason: str, *, retriable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retriable = retriable
        self.retry_after_s = retry_after_s


def accepts(severities: Sequence[str], audiences: Sequence[str], alert: Alert) -> bool:
    """The filter rule of every notifier: severity listed (or no list) and an audience in common (or no list)."""
    if severities and alert.severity not in severities:
        return False
    return not audiences or any(a in audiences for a in alert.audience)


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class BackgroundNotifier:
    """Base of queued notifiers: subclasses implement :meth:`_deliver_once` (and optionally :meth:`_idle`).

    Args:
        notifier_id: the notifier id (rules route by it).
        severities, audiences: routing filters (empty = all).
        dead_letter_path: JSON-lines file for records that could not be delivered.
        max_retries: retries after the first attempt.
        metrics: stage ``notify``: ``received`` per record handed to :meth:`notify`, ``sent`` per delivered
            record, ``errors{error_type="NotifyError"}`` per failed attempt, ``dropped{reason="dead_letter"}``
            per dead-lettered record; and the queue (``queue`` = the notifier id): ``energymon_queue_depth``
            (waiting or being delivered), ``energymon_queue_capacity`` (``queue_max``) and
            ``energymon_queue_oldest_age_seconds`` (since the oldest of them was queued).
        queue_max: records waiting beyond which new ones are dead-lettered at once.
        backoff_base_s, backoff_cap_s: retry ``n`` waits uniform(0, min(cap, base × 2^(n-1))) seconds.
        retry_after_max_s: upper bound on a server's own back-off request.
        idle_interval_s: how often :meth:`_idle` runs while nothing is queued (None: never).
    """

    kind = "notifier"

    def __init__(
        self,
        notifier_id: str,
        *,
        severities: Sequence[str] = (),
        audiences: Sequence[str] = (),
        dead_letter_path: Path,
        max_retries: int,
        metrics: PipelineMetrics | None = None,
        queue_max: int = 10_000,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 60.0,
        retry_after_max_s: float = 300.0,
        idle_interval_s: float | None = None,
    ) -> None:
        self._id = notifier_id
        self._severities = tuple(severities)
        self._audiences = tuple(audiences)
        self.dead_letter_path = Path(dead_letter_path)
        self._max_retries = max_retries
        self._metrics = metrics
        self._stage: StageMetrics | None = metrics.stage(STAGE) if metrics is not None else None
        self._queue_max = queue_max
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._retry_after_max_s = retry_after_max_s
        self._idle_interval_s = idle_interval_s
        self._queue: deque[tuple[float, Alert]] = deque()  # (time.monotonic() when queued, record)
        self._in_flight = 0
        self._in_flight_since = 0.0
        self._cond = threading.Condition()
        self._closing = False
        self._closed_result: bool | None = None
        self._abort = threading.Event()
        self._dl_lock = threading.Lock()
        self._random = random.Random()
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-{notifier_id}", daemon=True)
        if metrics is not None:
            # weak references: the registry outlives a closed notifier and must not keep it alive
            ref = weakref.ref(self)
            metrics.track_queue(
                STAGE,
                notifier_id,
                depth=lambda: n.pending if (n := ref()) is not None else 0,
                oldest_age_s=lambda: n.oldest_age_s if (n := ref()) is not None else None,
                capacity=queue_max,
            )

    def _start(self) -> None:
        """Start the worker; subclasses call it at the end of their ``__init__``."""
        self._thread.start()

    @property
    def id(self) -> str:
        """The notifier id."""
        return self._id

    @property
    def pending(self) -> int:
        """Records queued or being delivered."""
        with self._cond:
            return len(self._queue) + self._in_flight

    @property
    def oldest_age_s(self) -> float | None:
        """Seconds since the oldest record queued or being delivered was queued; None when there is none."""
        with self._cond:
            if self._in_flight:
                since = self._in_flight_since
            elif self._queue:
                since = self._queue[0][0]
            else:
                return None
        return time.monotonic() - since

    def accepts(self, alert: Alert) -> bool:
        """The ``severities`` and ``audiences`` filters of the configuration."""
        return accepts(self._severities, self._audiences, alert)

    def notify(self, alert: Alert) -> None:
        """Queue a record; returns at once.

        Raises:
            ValueError: the alert is pending (only firing and resolved records are notified).
        """
        if alert.state is AlertState.PENDING:
            raise ValueError(f"alert {alert.id} is pending; only firing and resolved alerts are notified")
        if self._stage is not None:
            self._stage.received()
        with self._cond:
            if self._closing:
                reason = "notifier closed"
            elif len(self._queue) >= self._queue_max:
                reason = f"queue full ({self._queue_max} alerts waiting)"
            else:
                self._queue.append((time.monotonic(), alert))
                self._cond.notify()
                return
        self._dead_letter(alert, reason, attempts=0)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop taking records, deliver the queue for at most ``timeout`` seconds, dead-letter the rest.

        Returns True if everything queued was delivered (or dead-lettered on its own merits) in time.
        """
        with self._cond:
            if self._closed_result is not None:
                return self._closed_result
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        drained = not self._thread.is_alive()
        if not drained:
            self._abort.set()
            self._thread.join(self._close_grace_s() + 1)
        self._closed()
        if self._metrics is not None:
            self._metrics.untrack_queue(STAGE, self._id)
        with self._cond:
            self._closed_result = drained
        return drained

    # ------------------------------------------------------------------ subclass hooks

    def _deliver_once(self, alert: Alert) -> None:
        """Deliver one record, or raise :class:`DeliveryError`."""
        raise NotImplementedError

    def _idle(self) -> None:
        """Periodic work while the queue is empty (called on the worker thread)."""

    def _closed(self) -> None:
        """Release resources after the worker stopped."""

    def _close_grace_s(self) -> float:
        """How long one attempt can take at most (the worker is joined that long after an abort)."""
        return 10.0

    def _payload(self, alert: Alert) -> dict[str, Any]:
        """What the dead-letter file keeps of a record."""
        return alert.to_dict()

    def _dead_letter_extra(self, alert: Alert) -> dict[str, Any]:
        """Fields a notifier adds to its dead-letter records (e.g. the URL, a delivery id)."""
        return {}

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    if not self._cond.wait(self._idle_interval_s):
                        break  # idle timeout
                if not self._queue and not self._closing:
                    item: Alert | None = None
                elif not self._queue:
                    return
                else:
                    self._in_flight_since, item = self._queue.popleft()
                    self._in_flight = 1
            if item is None:
                try:
                    self._idle()
                except Exception:
                    log.exception("%s %s: periodic work failed", self.kind, self.id)
                continue
            try:
                if self._abort.is_set():
                    self._dead_letter(item, "notifier closed before delivery", attempts=0)
                else:
                    self._deliver(item)
            except Exception as exc:  # never let one record kill the worker
                log.exception("%s %s: unexpected error delivering alert %s", self.kind, self.id, item.id)
                self._dead_letter(item, f"internal error: {exc!r}", attempts=0)
            finally:
                with self._cond:
                    self._in_flight = 0
                    self._cond.notify_all()

    def _deliver(self, alert: Alert) -> None:
        attempts = 0
        while True:
            attempts += 1
            try:
                self._deliver_once(alert)
            except DeliveryError as exc:
                if self._stage is not None:
                    self._stage.error(NotifyError(exc.reason))
                if not exc.retriable:
                    self._dead_letter(alert, f"not retriable: {exc.reason}", attempts)
                    return
                if attempts > self._max_retries:
                    self._dead_letter(alert, f"gave up after {attempts} attempts: {exc.reason}", attempts)
                    return
                if exc.retry_after_s is not None:
                    delay = min(exc.retry_after_s, self._retry_after_max_s)
                else:
                    ceiling = min(self._backoff_cap_s, self._backoff_base_s * 2 ** (attempts - 1))
                    delay = self._random.uniform(0, ceiling)
                level = logging.WARNING if attempts == 1 else logging.DEBUG
                log.log(level, "%s %s: alert %s attempt %d failed (%s); retrying in %.2f s", self.kind, self.id,
                        alert.id, attempts, exc.reason, delay)
                if self._abort.wait(delay):
                    self._dead_letter(alert, f"notifier closed before delivery; last error: {exc.reason}",
                                      attempts)
                    return
            else:
                if self._stage is not None:
                    self._stage.sent()
                log.debug("%s %s: delivered alert %s %s after %d attempt(s)", self.kind, self.id, alert.id,
                          alert.event or alert.state.value, attempts)
                return

    def _dead_letter(self, alert: Alert, reason: str, attempts: int) -> None:
        record = {
            "dead_lettered_at": _iso_now(),
            "notifier": self.id,
            "type": self.kind,
            "reason": reason,
            "attempts": attempts,
            **self._dead_letter_extra(alert),
            "payload": self._payload(alert),
        }
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        log.error("%s %s: alert %s %s not delivered (%s); written to %s", self.kind, self.id, alert.id,
                  alert.state.value, reason, self.dead_letter_path)
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
            log.critical("%s %s: cannot write dead-letter file %s: %s; lost alert: %s", self.kind, self.id,
                         self.dead_letter_path, exc, line.strip())
            if self._stage is not None:
                self._stage.error(exc)
