"""The delivery worker behind the webhook, e-mail, Alertmanager and MQTT notifiers: an outbox on disk, a
dispatcher thread and a few delivery threads, retries scheduled per record, dead letters.

:meth:`BackgroundNotifier.notify` writes the record to the :class:`~energymon.alerts.outbox.DeliveryOutbox`
(the alert state file) and returns; the record stays there until the receiver accepted it, so a crash at any
moment repeats a delivery rather than losing one (at least once; every attempt of one record carries the same
delivery id). The dispatcher hands the rows that are due to the delivery threads, which send them through
the subclass's :meth:`~BackgroundNotifier._deliver_once`; it raises :class:`DeliveryError` saying whether the
failure is worth retrying. Each row has its own schedule: retry ``n`` of a row waits uniform(0, min(``backoff_cap_s``,
``backoff_base_s`` × 2^(n-1))) seconds (a server's ``Retry-After`` instead, up to ``retry_after_max_s``), so one
record's back-off holds no other; per alert id the rows go in order (a resolution never overtakes its firing).
Up to ``max_in_flight`` attempts run at once, each on its own thread and bounded by the notifier's timeout, never
two of the same alert: a receiver that hangs on one alert's record holds up only that alert, the others go on.
A row is given up on (dead-lettered) when the failure is final, when it has waited ``retry_for_s`` (6 hours by
default), or after ``max_retries`` retries if that is set. A dead letter stays in the outbox (``energymon alerts
replay`` sends it again) and is appended to the dead-letter file (one JSON line: notifier, reason, attempts,
delivery id, the payload). The dispatcher calls :meth:`~BackgroundNotifier._idle` every ``idle_interval_s``
(Alertmanager's re-sends) and purges the notifier's dead letters older than ``dead_letter_keep_s`` hourly;
:func:`retire_removed_notifiers` and :func:`purge_dead_letters` tidy the whole outbox at start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import random
import threading
import time
import weakref
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from energymon.alerts.engine import Alert, AlertState
from energymon.alerts.outbox import DeliveryOutbox, OutboxRow, delivery_id
from energymon.errors import NotifyError
from energymon.metrics import PipelineMetrics, StageMetrics

__all__ = ["DEFAULT_BACKOFF_MAX_S", "DEFAULT_DEAD_LETTER_KEEP_S", "DEFAULT_MAX_IN_FLIGHT", "DEFAULT_RETRY_FOR_S",
           "BackgroundNotifier", "DeliveryError", "accepts", "purge_dead_letters", "retire_removed_notifiers"]

log = logging.getLogger("energymon.alerts.notifiers")

STAGE = "notify"

#: How long a record is retried by default before it is dead-lettered: 6 hours.
DEFAULT_RETRY_FOR_S = 6 * 3600.0
#: The default cap of one wait between two attempts of a record: 5 minutes.
DEFAULT_BACKOFF_MAX_S = 300.0
#: Delivery attempts of one notifier that may be under way at once, by default (each of another alert).
DEFAULT_MAX_IN_FLIGHT = 4
#: How long a dead letter stays in the outbox (for ``energymon alerts replay``) before it is purged: 90 days.
DEFAULT_DEAD_LETTER_KEEP_S = 90 * 86400.0
#: How often a notifier purges its own dead letters that aged out.
PURGE_INTERVAL_S = 3600.0

_POLL_S = 1.0  # how often an idle worker looks for rows another process (``alerts replay``) put back


class DeliveryError(NotifyError):
    """One failed delivery attempt.

    Args:
        reason: what went wrong (no secrets).
        retriable: whether another attempt may succeed (network errors, 4xx SMTP replies, HTTP 5xx/408/429).
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


def _duration(ms: int) -> str:
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    if ms < 3_600_000:
        return f"{ms / 60_000:.1f} min"
    return f"{ms / 3_600_000:.1f} h"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class BackgroundNotifier:
    """Base of outbox notifiers: subclasses implement :meth:`_deliver_once` (and optionally :meth:`_idle`).

    Args:
        notifier_id: the notifier id (rules route by it).
        severities, audiences: routing filters (empty = all).
        dead_letter_path: JSON-lines file for records that could not be delivered (None: they are logged only,
            and kept in a durable outbox).
        max_retries: retries after the first attempt (None: no count limit, ``retry_for_s`` decides).
        metrics: stage ``notify``: ``received`` per record handed to :meth:`notify`, ``sent`` per delivered
            record, ``errors{error_type="NotifyError"}`` per failed attempt, ``dropped{reason="dead_letter"}``
            per dead-lettered record; and the queue (``queue`` = the notifier id): ``energymon_queue_depth``
            (records in the outbox), ``energymon_queue_capacity`` (``queue_max``) and
            ``energymon_queue_oldest_age_seconds`` (since the oldest of them was handed over).
        queue_max: records waiting beyond which new ones are dead-lettered at once.
        backoff_base_s, backoff_cap_s: retry ``n`` of a record waits uniform(0, min(cap, base × 2^(n-1))) s.
        retry_for_s: how long a record is retried before it is dead-lettered (from when it was handed over).
        retry_after_max_s: upper bound on a server's own back-off request.
        idle_interval_s: how often :meth:`_idle` runs (None: never).
        outbox_path: where records wait (the alert state file; the notifier opens its own connection); None: in
            memory, and :meth:`close` dead-letters what is left.
        max_in_flight: delivery attempts under way at once, each of a different alert (records of one alert
            always go one after the other, in order); a subclass may allow fewer (``max_in_flight_limit``).
        dead_letter_keep_s: the notifier's dead letters older than this are purged from a durable outbox (checked
            every ``PURGE_INTERVAL_S``; None: kept until dropped).
    """

    kind = "notifier"
    #: Drop the older waiting records of an alert when a newer one comes (retained state: only the newest counts).
    supersede = False
    #: At most this many attempts at once whatever the configuration (None: no limit of its own).
    max_in_flight_limit: int | None = None

    def __init__(
        self,
        notifier_id: str,
        *,
        severities: Sequence[str] = (),
        audiences: Sequence[str] = (),
        dead_letter_path: Path | None,
        max_retries: int | None = None,
        metrics: PipelineMetrics | None = None,
        queue_max: int = 10_000,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = DEFAULT_BACKOFF_MAX_S,
        retry_for_s: float = DEFAULT_RETRY_FOR_S,
        retry_after_max_s: float = 300.0,
        idle_interval_s: float | None = None,
        outbox_path: Path | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        dead_letter_keep_s: float | None = DEFAULT_DEAD_LETTER_KEEP_S,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._id = notifier_id
        self._severities = tuple(severities)
        self._audiences = tuple(audiences)
        self.dead_letter_path = None if dead_letter_path is None else Path(dead_letter_path)
        self._max_retries = max_retries
        self._metrics = metrics
        self._stage: StageMetrics | None = metrics.stage(STAGE) if metrics is not None else None
        self._queue_max = queue_max
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._retry_for_ms = round(retry_for_s * 1000)
        self._retry_after_max_s = retry_after_max_s
        self._idle_interval_s = idle_interval_s
        self.outbox = DeliveryOutbox(outbox_path)
        self._waiting, _ = self.outbox.pending(notifier_id)
        limit = self.max_in_flight_limit
        self._max_in_flight = max_in_flight if limit is None else min(max_in_flight, limit)
        self._busy: dict[str, int] = {}  # alert id → seq of its row being delivered now
        self._jobs: queue.SimpleQueue[OutboxRow | None] = queue.SimpleQueue()
        self._kicked = False
        self._cond = threading.Condition()
        self._closing = False
        self._closed_result: bool | None = None
        self._abort = threading.Event()
        self._dl_lock = threading.Lock()
        self._random = random.Random()
        self._failing = 0  # consecutive failed attempts (the receiver is logged once when down, once when back)
        self._last_idle = time.monotonic()
        self._dead_letter_keep_s = dead_letter_keep_s
        self._last_purge = time.monotonic()  # the start purges every notifier's (build_alerting); then hourly
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-{notifier_id}", daemon=True)
        self._workers = [threading.Thread(target=self._work, name=f"{self.kind}-{notifier_id}-{i}", daemon=True)
                         for i in range(self._max_in_flight)]
        if self._waiting:
            log.info("%s %s: %d record(s) from before the last stop are waiting for delivery", self.kind,
                     notifier_id, self._waiting)
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
        """Start the dispatcher and the delivery threads; subclasses call it at the end of their ``__init__``."""
        for worker in self._workers:
            worker.start()
        self._thread.start()

    @property
    def id(self) -> str:
        """The notifier id."""
        return self._id

    @property
    def max_in_flight(self) -> int:
        """Delivery attempts that may be under way at once."""
        return self._max_in_flight

    @property
    def in_flight(self) -> list[str]:
        """The alert ids whose record is being delivered now."""
        with self._cond:
            return list(self._busy)

    @property
    def pending(self) -> int:
        """Records in the outbox, waiting or being delivered."""
        with self._cond:
            return self._waiting

    @property
    def oldest_age_s(self) -> float | None:
        """Seconds since the oldest record in the outbox was handed over; None when there is none."""
        try:
            count, oldest = self.outbox.pending(self._id)
        except Exception:  # a closed outbox: nothing to report
            return None
        if not count or oldest is None:
            return None
        return max(0.0, (_now_ms() - oldest) / 1000)

    def accepts(self, alert: Alert) -> bool:
        """The ``severities`` and ``audiences`` filters of the configuration."""
        return accepts(self._severities, self._audiences, alert)

    def notify(self, alert: Alert) -> None:
        """Write a record to the outbox; returns once it is there (on disk with a durable outbox).

        Raises:
            ValueError: the alert is pending (only firing and resolved records are notified).
        """
        if alert.state is AlertState.PENDING:
            raise ValueError(f"alert {alert.id} is pending; only firing and resolved alerts are notified")
        if self._stage is not None:
            self._stage.received()
        with self._cond:
            reason = None
            if self._closing:
                reason = "notifier closed"
            elif self._waiting - len(self._busy) >= self._queue_max:
                reason = f"queue full ({self._queue_max} alerts waiting)"
            record = alert.to_record()
            if reason is None:
                try:
                    _, new = self.outbox.add(self._id, record, _now_ms(), supersede=self.supersede)
                except Exception as exc:  # a full disk, a broken file: the dead-letter file is the last resort
                    log.exception("%s %s: cannot write alert %s to the outbox %s", self.kind, self._id, alert.id,
                                  self.outbox.path)
                    if self._stage is not None:
                        self._stage.error(exc)
                    self.dead_letter_record(alert, delivery_id(self._id, record), f"outbox write failed: {exc}", 0)
                    return
                if new:
                    self._waiting = self.outbox.pending(self._id)[0] if self.supersede else self._waiting + 1
                    self._kicked = True
                    self._cond.notify()
                return  # (not new: the same record again, repeated after a crash; it is kept once)
        row = None
        if self.outbox.durable and self._closed_result is None:  # kept as a dead letter: ``alerts replay`` can send it
            try:
                self.outbox.add(self._id, record, _now_ms())
                did = delivery_id(self._id, record)
                row = next((r for r in self.outbox.rows(notifier=self._id, dead=False) if r.delivery_id == did),
                           None)
            except Exception:
                row = None
        if row is not None:
            self._give_up(row, reason, attempts=0)
        else:
            self.dead_letter_record(alert, delivery_id(self._id, record), reason, 0)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop taking records and send what is due for at most ``timeout`` seconds.

        With a durable outbox, records still waiting (a receiver down, back-off) stay there for the next start;
        an in-memory outbox keeps trying them until ``timeout`` and dead-letters the rest. Returns True if
        everything was delivered (or dead-lettered on its own merits) in time.
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
            with self._cond:
                self._cond.notify_all()
        deadline = time.monotonic() + self._close_grace_s() + 1
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:  # attempts under way end within their timeout
            if worker.is_alive():
                worker.join(max(0.0, deadline - time.monotonic()))
        self._closed()
        left = 0
        if not self.outbox.durable:
            for row in self.outbox.take_all(self._id):
                reason = "notifier closed before delivery"
                if row.last_error:
                    reason += f"; last error: {row.last_error}"
                self._write_dead_letter(row, reason, row.attempts)
        else:
            left, _ = self.outbox.pending(self._id)
            if left:
                log.warning("%s %s: %d record(s) not yet delivered stay in %s for the next start", self.kind,
                            self._id, left, self.outbox.path)
        if self._metrics is not None:
            self._metrics.untrack_queue(STAGE, self._id)
        with self._cond:
            self._closed_result = drained and left == 0
        self.outbox.close()
        return self._closed_result

    # ------------------------------------------------------------------ subclass hooks

    def _deliver_once(self, alert: Alert, delivery_id: str) -> None:
        """Deliver one record, or raise :class:`DeliveryError`; every attempt of a record has the same id."""
        raise NotImplementedError

    def _idle(self) -> None:
        """Periodic work, every ``idle_interval_s`` (called on the worker thread)."""

    def _closed(self) -> None:
        """Release resources after the worker stopped."""

    def _close_grace_s(self) -> float:
        """How long one attempt can take at most (the delivery threads are joined that long after an abort)."""
        return 10.0

    def _payload(self, alert: Alert, delivery_id: str) -> dict[str, Any]:
        """What the dead-letter file keeps of a record."""
        payload = alert.to_dict()
        payload["delivery_id"] = delivery_id
        return payload

    def _dead_letter_extra(self, alert: Alert, delivery_id: str) -> dict[str, Any]:
        """Fields a notifier adds to its dead-letter records (e.g. the URL, the last status)."""
        return {}

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        """The dispatcher: hands due rows to the delivery threads, at most ``max_in_flight`` and one per alert."""
        while not self._abort.is_set():
            with self._cond:
                closing = self._closing
                busy = set(self._busy)
            if self._idle_interval_s is not None and time.monotonic() - self._last_idle >= self._idle_interval_s:
                self._last_idle = time.monotonic()  # periodic work runs on time even under a steady stream
                try:
                    self._idle()
                except Exception:
                    log.exception("%s %s: periodic work failed", self.kind, self._id)
            if (self._dead_letter_keep_s is not None and self.outbox.durable
                    and time.monotonic() - self._last_purge >= PURGE_INTERVAL_S):
                self._last_purge = time.monotonic()
                try:
                    purge_dead_letters(self.outbox, self._dead_letter_keep_s, _now_ms(), notifier=self._id)
                except Exception:
                    log.exception("%s %s: cannot purge old dead letters", self.kind, self._id)
            free = self._max_in_flight - len(busy)
            rows: list[OutboxRow] = []
            if free > 0:
                try:
                    rows = self.outbox.due(self._id, _now_ms(), limit=free, exclude=busy)
                except Exception:
                    log.exception("%s %s: cannot read the outbox", self.kind, self._id)
            if rows:
                with self._cond:
                    for row in rows:
                        self._busy[row.alert_id] = row.seq
                for row in rows:
                    self._jobs.put(row)
                continue
            if closing and not busy and (self.outbox.durable or self.pending == 0):
                return
            wait = _POLL_S
            if free > 0:  # else a delivery thread wakes us when it is done
                try:
                    next_ms = self.outbox.next_due_ms(self._id, exclude=busy)
                except Exception:
                    next_ms = None
                if next_ms is not None:
                    wait = min(wait, max(0.0, (next_ms - _now_ms()) / 1000))
            if self._idle_interval_s is not None:
                wait = min(wait, max(0.0, self._idle_interval_s - (time.monotonic() - self._last_idle)))
            with self._cond:
                if not self._kicked and not self._closing:
                    self._cond.wait(wait)
                elif self._closing and not self._kicked:
                    self._cond.wait(min(wait, 0.05))
                self._kicked = False
                with contextlib.suppress(Exception):  # rows another process put back (replay) count too
                    self._waiting = self.outbox.pending(self._id)[0]

    def _work(self) -> None:
        """A delivery thread: one attempt at a time, of the rows the dispatcher hands over."""
        while True:
            row = self._jobs.get()
            if row is None:
                return
            try:
                if not self._abort.is_set():
                    self._attempt(row)
            finally:
                with self._cond:
                    self._busy.pop(row.alert_id, None)
                    self._kicked = True
                    self._cond.notify_all()

    def _attempt(self, row: OutboxRow) -> None:
        attempts = row.attempts + 1
        failure: DeliveryError | None = None
        internal: str | None = None
        try:
            alert = Alert.from_record(row.record)
            self._deliver_once(alert, row.delivery_id)
        except DeliveryError as exc:
            failure = exc
        except Exception as exc:  # never let one record kill the worker
            log.exception("%s %s: unexpected error delivering alert %s", self.kind, self._id, row.alert_id)
            internal = f"internal error: {exc!r}"
        try:
            if failure is not None:
                self._failed(row, attempts, failure)
            elif internal is not None:
                self._give_up(row, internal, attempts)
            else:
                self._succeeded(row, attempts)
        except Exception:  # the outbox closed under an attempt that outlived close(): it is sent again next start
            if self._abort.is_set():
                log.debug("%s %s: outcome of delivery %s not recorded (closing)", self.kind, self._id,
                          row.delivery_id)
            else:
                log.exception("%s %s: cannot record the outcome of delivery %s", self.kind, self._id,
                              row.delivery_id)

    def _succeeded(self, row: OutboxRow, attempts: int) -> None:
        with self._cond:  # the count and the table change together (the dispatcher recounts under this lock)
            self.outbox.delivered(row.seq)
            self._waiting = max(0, self._waiting - 1)
            recovered, self._failing = self._failing, 0
        if self._stage is not None:
            self._stage.sent()
        if recovered:
            log.info("%s %s: delivering again after %d failed attempt(s)", self.kind, self._id, recovered)
        log.debug("%s %s: delivered alert %s %s v%d (%s) after %d attempt(s)", self.kind, self._id,
                  row.alert_id, row.event, row.version, row.delivery_id, attempts)

    def _failed(self, row: OutboxRow, attempts: int, exc: DeliveryError) -> None:
        if self._stage is not None:
            self._stage.error(NotifyError(exc.reason))
        now = _now_ms()
        if not exc.retriable:
            self._give_up(row, f"not retriable: {exc.reason}", attempts)
            return
        if self._max_retries is not None and attempts > self._max_retries:
            self._give_up(row, f"gave up after {attempts} attempts: {exc.reason}", attempts)
            return
        if now - row.created_ms >= self._retry_for_ms:
            self._give_up(row, f"gave up after {attempts} attempts in {_duration(now - row.created_ms)}: {exc.reason}",
                          attempts)
            return
        if exc.retry_after_s is not None:
            delay = min(exc.retry_after_s, self._retry_after_max_s)
        else:
            ceiling = min(self._backoff_cap_s, self._backoff_base_s * 2 ** (attempts - 1))
            delay = self._random.uniform(0, ceiling)
        with self._cond:
            self._failing += 1
            first = self._failing == 1
        if first:
            log.warning("%s %s: delivery failing (%s); records are kept and retried", self.kind, self._id,
                        exc.reason)
        log.debug("%s %s: alert %s attempt %d failed (%s); retrying in %.2f s", self.kind, self._id, row.alert_id,
                  attempts, exc.reason, delay)
        self.outbox.retry_at(row.seq, attempts=attempts, next_ms=now + round(delay * 1000), error=exc.reason)

    def _give_up(self, row: OutboxRow, reason: str, attempts: int) -> None:
        with self._cond:  # the dead-letter file is written before the count drops (rare: holding the lock is fine)
            rows = self.outbox.dead_letter(row.seq, attempts=attempts, now_ms=_now_ms(), reason=reason)
            for i, r in enumerate(rows):
                self._write_dead_letter(r, reason if i == 0 else f"follows delivery {row.delivery_id}, not delivered",
                                        attempts if i == 0 else 0)
            self._waiting = max(0, self._waiting - len(rows))

    def _write_dead_letter(self, row: OutboxRow, reason: str, attempts: int) -> None:
        alert = Alert.from_record(row.record)
        self.dead_letter_record(alert, row.delivery_id, reason, attempts)

    def dead_letter_record(self, alert: Alert, delivery_id: str, reason: str, attempts: int) -> None:
        """Append one record to the dead-letter file (and count it)."""
        record = {
            "dead_lettered_at": _iso_now(),
            "notifier": self.id,
            "type": self.kind,
            "reason": reason,
            "attempts": attempts,
            "delivery_id": delivery_id,
            **self._dead_letter_extra(alert, delivery_id),
            "payload": self._payload(alert, delivery_id),
        }
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        if self._stage is not None:
            self._stage.dropped("dead_letter")
        if self.dead_letter_path is None:
            log.error("%s %s: alert %s %s not delivered (%s): %s", self.kind, self.id, alert.id, alert.state.value,
                      reason, line.strip())
            return
        log.error("%s %s: alert %s %s not delivered (%s); written to %s", self.kind, self.id, alert.id,
                  alert.state.value, reason, self.dead_letter_path)
        try:
            with self._dl_lock:
                self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
                with self.dead_letter_path.open("a", encoding="utf-8") as fh:
                    fh.write(line)
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError as exc:
            log.critical("%s %s: cannot write dead-letter file %s: %s; the record stays in the outbox: %s",
                         self.kind, self.id, self.dead_letter_path, exc, line.strip())
            if self._stage is not None:
                self._stage.error(exc)


def _days(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:g} day(s)" if days >= 1 else _duration(round(seconds * 1000))


def retire_removed_notifiers(outbox: DeliveryOutbox, notifier_ids: Collection[str], *, data_dir: Path | None,
                             now_ms: int | None = None, metrics: PipelineMetrics | None = None) -> dict[str, int]:
    """Dead-letter the records still waiting for notifiers that are no longer in the plant file (nothing would
    ever send or purge them); returns the count per removed notifier.

    They are reported once, with a warning (the next start finds them dead already), appended to that notifier's
    dead-letter file ``data_dir/dead-letter-<id>.jsonl``, and kept in the outbox, where ``energymon alerts
    deliveries --dead`` lists them, ``alerts drop`` forgets them and, once the notifier is back in the plant file,
    ``alerts replay`` sends them again; they are purged with the other dead letters when they age out. Each
    counts as ``energymon_dropped_total{stage="notify",reason="dead_letter"}``.
    """
    now = _now_ms() if now_ms is None else now_ms
    rows = outbox.retire(notifier_ids, now)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.notifier] = counts.get(row.notifier, 0) + 1
    if not rows:
        return counts
    if metrics is not None:
        metrics.stage(STAGE).dropped("dead_letter", len(rows))
    log.warning(
        "alert outbox %s: %d record(s) waiting for notifier(s) no longer in the plant file will not be sent and "
        "are dead letters now: %s; 'energymon alerts deliveries --dead' lists them, 'energymon alerts drop "
        "--notifier ID' forgets them, or put the notifier back and 'energymon alerts replay --notifier ID'",
        outbox.path or "(memory)", len(rows), ", ".join(f"{n} {c}" for n, c in counts.items()))
    if data_dir is not None:
        at = _iso_now()
        for notifier in counts:
            lines = []
            for row in rows:
                if row.notifier != notifier:
                    continue
                payload = Alert.from_record(row.record).to_dict()
                payload["delivery_id"] = row.delivery_id
                lines.append(json.dumps({
                    "dead_lettered_at": at, "notifier": notifier, "type": None,
                    "reason": f"notifier {notifier} is no longer in the plant file", "attempts": row.attempts,
                    "delivery_id": row.delivery_id, "payload": payload,
                }, ensure_ascii=False, separators=(",", ":")) + "\n")
            path = Path(data_dir) / f"dead-letter-{notifier}.jsonl"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a", encoding="utf-8") as fh:
                    fh.writelines(lines)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:  # they are in the outbox anyway
                log.error("cannot write dead-letter file %s: %s; the records stay in the outbox", path, exc)
    return counts


def purge_dead_letters(outbox: DeliveryOutbox, keep_s: float, now_ms: int | None = None, *,
                       notifier: str | None = None) -> dict[str, int]:
    """Forget the dead letters dead-lettered more than ``keep_s`` ago (of one notifier, or of all), with a log
    line; returns the count per notifier. The dead-letter files keep them."""
    now = _now_ms() if now_ms is None else now_ms
    counts = outbox.purge_dead(now - round(keep_s * 1000), notifier=notifier)
    if counts:
        log.info("alert outbox %s: purged %d dead letter(s) older than %s: %s (the dead-letter files keep them)",
                 outbox.path or "(memory)", sum(counts.values()), _days(keep_s),
                 ", ".join(f"{n} {c}" for n, c in counts.items()))
    return counts
