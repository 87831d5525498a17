"""The processor: validated batches in, raw and derived rows out to the store, points on to the alerts.

:meth:`Processor.handle` is called by the transport's delivery thread for every message; :meth:`Processor.flush`
by a timer thread and when enough rows are pending. Both hold one lock. A message is acknowledged to the broker
only after the rows it produced were written, so a crash or a store outage makes the broker redeliver it, and
the store's overwrite-on-same-timestamp semantics plus the per-gateway sequence check keep a redelivered
batch from being counted twice.

Counter readings that carry an edge-computed ``interval`` (wire v1, see :mod:`energymon.schema`) are booked as
they stand, without state, so several processors can share one gateway's batches through a shared subscription;
only readings without one go through the processor's own :class:`~energymon.processors.counters.CounterTracker`.

Store rows (measurement → fields; see docs/ARCHITECTURE.md for tags):

* ``reading``: ``value`` for every good or uncertain point (``uncertain=1`` marks the latter);
* ``reading_unavailable``: ``count=1`` for a point of quality bad (never a 0 in ``reading``);
* ``energy``: interval ``consumed`` in the counter's unit, ``kgce`` (当量值), ``kgce_equal`` (等价值, electricity),
  ``co2_kg``, and ``flag_*`` quality flags (rollover, rebased, replaced, gap_spread, gap_at_end);
* ``production``: interval ``output``;
* ``indicator``: per product, indicator and local hour/day, ``energy_kgce``, ``output``, ``value``, the grade
  fields and ``provisional`` (1 until the output meter's data cover the period end to end; the live values are
  provisional in any case: reports recompute periods from the readings into the ``acct_*`` measurements, see
  ``docs/accounting.md``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from energymon.config import PlantConfig
from energymon.errors import SchemaError, StoreError
from energymon.interfaces import Message, Row, SeriesKey, Store, series_key
from energymon.metrics import PipelineMetrics, private_metrics
from energymon.processors.accounting import Accounting, counter_max_for
from energymon.processors.counters import CounterTracker
from energymon.processors.state import CounterStateFile
from energymon.schema import Batch, WireBatch, WirePoint, decode_wire

__all__ = ["Processor", "Rejected", "counter_max_for"]

log = logging.getLogger(__name__)

Observer = Callable[[Sequence[WirePoint]], None]
RowObserver = Callable[[Sequence[Row]], None]


class Rejected:
    """A message set aside, with the reason."""

    __slots__ = ("payload", "reason", "topic")

    def __init__(self, topic: str, reason: str, payload: bytes) -> None:
        self.topic, self.reason, self.payload = topic, reason, payload

    def to_json(self) -> str:
        """One JSON line for the dead-letter file."""
        return json.dumps(
            {"topic": self.topic, "reason": self.reason, "payload": self.payload[:4096].decode("utf-8", "replace")},
            ensure_ascii=False,
        )


class _SeqWindow:
    """Sequence numbers seen from one gateway (bounded), to drop re-sent batches."""

    def __init__(self, size: int = 65536) -> None:
        self.size = size
        self.seen: OrderedDict[int, None] = OrderedDict()

    def add(self, seq: int) -> bool:
        """Record ``seq``; False if it was seen already."""
        if seq in self.seen:
            return False
        self.seen[seq] = None
        if len(self.seen) > self.size:
            self.seen.popitem(last=False)
        return True


class Processor:
    """Turns batches into store rows for one plant.

    Args:
        plant: the validated plant configuration.
        store: where rows go.
        ref: reference data (coefficients, benchmark levels); defaults to the shipped tables.
        metrics: self-metrics (stage ``processor``).
        observers: called with the points (as decoded wire dicts) of each batch after its rows were written
            (e.g. the scheduled recompute's ``note_points``).
        row_observers: called with every written row set (the alert engine reads ``indicator`` rows).
        intake_observers: called with the points of each accepted batch as soon as it is taken in, before its
            rows are written (the alert engine's ``observe_wire``: an alert does not wait for the store, and a
            store outage does not hold alerts back; a batch the broker delivers again is observed again, which
            the engine's event-time state absorbs).
        max_pending_rows: flush when this many rows are pending.
        dead_letter_path: JSON-lines file receiving rejected messages.
        counter_state_path: SQLite file keeping the counters' baselines across restarts
            (:mod:`energymon.processors.state`).
        live_indicators: write the ``indicator`` rows of the local hour and day from the intervals this
            processor booked. Pass False when several processors share the readings (``processor.share_group``):
            each then holds only partial sums, and the indicator rows are recomputed from the store instead.
    """

    def __init__(
        self,
        plant: PlantConfig,
        store: Store,
        *,
        ref: Any = None,
        metrics: PipelineMetrics | None = None,
        observers: Sequence[Observer] = (),
        row_observers: Sequence[RowObserver] = (),
        intake_observers: Sequence[Observer] = (),
        max_pending_rows: int = 5000,
        dead_letter_path: Path | None = None,
        counter_state_path: Path | None = None,
        live_indicators: bool = True,
    ) -> None:
        if ref is None:
            from energymon.refdata import load_reference_data

            ref = load_reference_data()
        self.plant = plant
        self.store = store
        self.enterprise = plant.enterprise.uscc
        self.live_indicators = live_indicators
        self.accounting = Accounting(plant, ref, indicators=live_indicators)
        self.metrics = metrics or private_metrics()
        self.stage = self.metrics.stage("processor")
        self.observers = list(observers)
        self.row_observers = list(row_observers)
        self.intake_observers = list(intake_observers)
        self.max_pending_rows = max_pending_rows
        self.dead_letter_path = dead_letter_path
        self.rejected: deque[Rejected] = deque(maxlen=100)
        self._lock = threading.Lock()  # guards the pending rows, acks and points
        self._flush_lock = threading.Lock()  # one store write at a time, in order
        self._rows: list[Row] = []
        self._pending_since: float | None = None  # monotonic time the oldest unwritten message arrived
        self._acks: list[Callable[[], None]] = []
        self._points: list[WirePoint] = []
        self._seqs: dict[str, _SeqWindow] = {}
        self._keys: dict[tuple[str, str, str, str], SeriesKey] = {}
        self._bad_keys: dict[tuple[str, str, str], SeriesKey] = {}
        # the accounting builds the trackers: plausibility bound, rollover point, recorded replacements
        self._counters: dict[str, tuple[str, CounterTracker]] = self.accounting.counter_trackers()
        self.duplicates = 0
        self.edge_intervals = 0
        self._dirty_counters: set[str] = set()
        self._state: CounterStateFile | None = None
        if counter_state_path is not None:
            self._state = CounterStateFile(counter_state_path)
            restored = self._state.restore({m: c[1] for m, c in self._counters.items()})
            if restored:
                log.info("restored the baselines of %d counter(s) from %s", restored, counter_state_path)

    # ------------------------------------------------------------------ intake

    def handle(self, msg: Message) -> None:
        """Process one transport message (thread-safe)."""
        try:
            batch = decode_wire(msg.payload)
        except SchemaError as exc:
            self._reject(msg, str(exc))
            return
        with self._lock:
            if not self._accept(batch, msg):
                return
            self._derive(batch)
            self._acks.append(msg.ack)
            if self._pending_since is None:
                self._pending_since = time.monotonic()
            pending = len(self._rows)
        for observer in self.intake_observers:
            try:
                observer(batch["points"])
            except Exception as exc:
                self.stage.error(exc)
                log.exception("intake observer failed")
        if pending >= self.max_pending_rows:
            self.flush()

    @property
    def pending_rows(self) -> int:
        """Rows derived but not yet written."""
        return len(self._rows)

    def pending_age_s(self) -> float | None:
        """Seconds since the oldest unwritten message arrived (None when nothing is pending)."""
        since = self._pending_since
        return None if since is None else time.monotonic() - since

    def handle_batch(self, batch: Batch) -> None:
        """Process an already-decoded batch (in-process use and tests)."""
        wire = cast(WireBatch, batch.model_dump())
        with self._lock:
            if self._accept(wire, None):
                self._derive(wire)
        self.flush()

    def _accept(self, batch: WireBatch, msg: Message | None) -> bool:
        points = batch["points"]
        self.stage.received(len(points))
        if batch["enterprise"] != self.enterprise:
            if msg is not None:
                self._reject(
                    msg, f"batch of enterprise {batch['enterprise']!r}, this processor serves {self.enterprise!r}"
                )
            return False
        self.metrics.gateway_seen(batch["gateway"])
        window = self._seqs.get(batch["gateway"])
        if window is None:
            window = self._seqs[batch["gateway"]] = _SeqWindow()
        if not window.add(batch["seq"]):
            self.duplicates += 1
            self.stage.dropped("duplicate_batch", len(points))
            if msg is not None:
                msg.ack()
            return False
        return True

    def _reject(self, msg: Message, reason: str) -> None:
        rejected = Rejected(msg.topic, reason, msg.payload)
        self.rejected.append(rejected)
        self.stage.dropped("bad_payload")
        self.stage.error("SchemaError")
        log.warning("set aside a message on %s: %s", msg.topic, reason)
        if self.dead_letter_path is not None:
            with self.dead_letter_path.open("a", encoding="utf-8") as fh:
                fh.write(rejected.to_json() + "\n")
        msg.ack()  # a malformed payload never becomes valid: do not let the broker redeliver it

    # ------------------------------------------------------------------ derivation

    def _derive(self, batch: WireBatch) -> None:
        rows = self._rows
        keys = self._keys
        gw = batch["gateway"]
        acc = self.accounting
        counters = self._counters
        for p in batch["points"]:
            meter, quantity, value, ts_ms = p["meter"], p["quantity"], p["value"], p["ts_ms"]
            if value is None:
                bkey = self._bad_keys.get((gw, meter, quantity))
                if bkey is None:
                    bkey = self._bad_keys[(gw, meter, quantity)] = series_key(
                        "reading_unavailable", enterprise=self.enterprise, gateway=gw, meter=meter, quantity=quantity
                    )
                rows.append((bkey, {"count": 1.0}, ts_ms))
                continue
            k = (gw, meter, quantity, p["unit"])
            key = keys.get(k)
            if key is None:
                key = keys[k] = series_key(
                    "reading", enterprise=self.enterprise, gateway=gw, meter=meter, quantity=quantity, unit=p["unit"]
                )
            if p.get("quality", "good") == "good":
                rows.append((key, {"value": value}, ts_ms))
                counter = counters.get(meter)
                if counter is not None and counter[0] == quantity:
                    tracker = counter[1]
                    iv = p.get("interval")
                    if iv is not None:
                        # cleaned at the edge: book the interval as it came, statelessly (a redelivery books the
                        # same rows at the same time); an empty interval books nothing
                        start = iv["start_ms"]
                        if start < ts_ms:
                            self.edge_intervals += 1
                            rows.extend(acc.book(meter, start, ts_ms, iv["amount"], iv.get("flag", "ok")))
                            if ts_ms > tracker.last_ms:  # a reading without interval continues from here
                                tracker.restore(value, ts_ms)
                                self._dirty_counters.add(meter)
                    else:
                        self._dirty_counters.add(meter)
                        delta = tracker.update(value, ts_ms)
                        if delta is not None:
                            rows.extend(acc.book(meter, delta.start_ms, delta.end_ms, delta.amount, delta.flag.value))
            else:
                rows.append((key, {"value": value, "uncertain": 1.0}, ts_ms))
        if self.observers:
            self._points.extend(batch["points"])

    # ------------------------------------------------------------------ output

    def close(self) -> None:
        """Release the counter-state file (after the last :meth:`flush`)."""
        if self._state is not None:
            self._state.close()

    def flush(self) -> int:
        """Write pending rows, then acknowledge their messages and notify observers.

        Intake goes on while the store write is in flight (only one flush runs at a time). Returns the number
        of rows written. On a store error nothing is acknowledged and the rows are kept, ahead of newer ones,
        for the next flush; the error is counted and re-raised as :class:`StoreError`.
        """
        with self._flush_lock:
            with self._lock:
                rows = self._rows + self.accounting.indicator_rows() if self.live_indicators else self._rows
                acks, points = self._acks, self._points
                self._rows, self._acks, self._points = [], [], []
                pending_since, self._pending_since = self._pending_since, None
                dirty, self._dirty_counters = self._dirty_counters, set()
                # the baselines that go with exactly these rows (intake goes on during the write)
                baselines = (
                    CounterStateFile.snapshot((m, self._counters[m][1]) for m in dirty) if self._state else []
                )
            if not rows:
                return 0
            try:
                self.store.write(rows)
            except StoreError as exc:
                with self._lock:
                    self._rows = rows + self._rows
                    if pending_since is not None:
                        self._pending_since = pending_since
                    self._acks = acks + self._acks
                    self._points = points + self._points
                    self._dirty_counters |= dirty
                self.stage.error(exc)
                raise
            if self._state is not None:
                self._state.save(baselines)  # before the acks: see energymon.processors.state
            self.stage.sent(len(rows))
            for ack in acks:
                ack()
            for observer in self.observers:
                try:
                    observer(points)
                except Exception as exc:
                    self.stage.error(exc)
                    log.exception("observer failed")
            for row_observer in self.row_observers:
                try:
                    row_observer(rows)
                except Exception as exc:
                    self.stage.error(exc)
                    log.exception("row observer failed")
            return len(rows)

