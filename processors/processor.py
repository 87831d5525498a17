"""The processor: validated batches in, raw and derived rows out to the store, points on to the alerts.

:meth:`Processor.handle` is called by the transport's delivery thread for every message; :meth:`Processor.flush`
by a timer thread and when enough rows are pending. Both hold one lock. A message is acknowledged to the broker
only after the rows it produced were written, so a crash or a store outage makes the broker redeliver it, and
the store's overwrite-on-same-timestamp semantics plus the per-gateway sequence check keep a redelivered
batch from being counted twice.

Counter readings that carry an edge-computed ``interval`` (wire v1, see :mod:`energymon.schema`) are booked as
they stand, without state, so several processors can share one gateway's batches through a shared subscription;
only readings without one go through the processor's own :class:`~energymon.counters.CounterTracker`. An edge
interval is re-checked first with the same counter rules and rate bound (:func:`energymon.counters.check_interval`:
a non-negative amount within ``max_rate_per_hour`` over the interval, a rollover only where a wrap can be, and
agreement with the readings where this processor saw the one the interval starts at); one that fails is set
aside with its reason (:attr:`Processor.set_aside_intervals`, metric ``pipeline_dropped_total{reason=
"implausible_interval"}``), never booked. A counter the rules find reset or swapped without a record (an interval
flagged ``rebased``) is logged as a warning and counted in :attr:`Processor.counter_resets`.

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

import base64
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from energymon.clock import WallClock
from energymon.config import PlantConfig, ProcessorLimits
from energymon.counters import CounterRules, CounterTracker, DeltaFlag, check_interval
from energymon.deadletter import DeadLetterFile
from energymon.errors import PayloadTooLargeError, SchemaError, StoreError
from energymon.interfaces import Clock, Message, Row, SeriesKey, Store, series_key
from energymon.metrics import PipelineMetrics, private_metrics
from energymon.processors.accounting import Accounting
from energymon.processors.state import CounterStateFile
from energymon.schema import Batch, WireBatch, WirePoint, decode_wire
from energymon.topics import parse_readings_topic

__all__ = ["SET_ASIDE_REASONS", "Processor", "Rejected", "SetAsideInterval"]

log = logging.getLogger(__name__)

Observer = Callable[[Sequence[WirePoint]], None]
RowObserver = Callable[[Sequence[Row]], None]


#: Why a message, or points of a batch, were set aside: the ``reason`` label of ``energymon_dropped_total`` and
#: ``energymon_dead_letters_total`` (stage ``processor``), and the ``reason`` of each dead-letter record. A fixed
#: set: ids (gateways, meters) are never labels, they are in the log line and the record.
SET_ASIDE_REASONS: dict[str, str] = {
    "bad_topic": "not on a readings topic energymon/v1/{enterprise}/{gateway}/readings",
    "unknown_enterprise": "the topic's enterprise is not the one this processor serves",
    "unknown_gateway": "the topic's gateway is not the plant's (gateway.id)",
    "too_large": "larger than processor.limits.max_payload_bytes (as received or inflated) or max_batch_points",
    "bad_payload": "not a valid wire v1 batch",
    "identity_mismatch": "the batch's enterprise or gateway differs from its topic's",
    "unknown_meter": "a point of a meter the plant file does not list",
    "unknown_quantity": "a point of a quantity the meter's source does not read",
    "future_timestamp": "stamped more than processor.limits.future_tolerance_secs ahead of the processor's clock",
    "beyond_retention": "stamped before the store's retention (the store would drop it)",
    "implausible_interval": "an edge interval the counter rules refuse (over the rate bound, or not matching the "
                            "readings)",
}

#: How often one (reason, id) is logged at most: once when first seen, then once a period with a count.
LOG_PERIOD_S = 3600.0
_LOG_KEYS_MAX = 1024  # distinct (reason, id) pairs tracked; more are logged under "(other ids)"


class SetAsideInterval:
    """An edge interval the centre did not book, with the reason."""

    __slots__ = ("amount", "flag", "gateway", "meter", "reason", "start_ms", "ts_ms")

    def __init__(self, gateway: str, meter: str, start_ms: int, ts_ms: int, amount: float, flag: str,
                 reason: str) -> None:
        self.gateway, self.meter, self.start_ms, self.ts_ms = gateway, meter, start_ms, ts_ms
        self.amount, self.flag, self.reason = amount, flag, reason


class Rejected:
    """A message set aside: its topic, reason code, detail and (a bounded prefix of) its payload."""

    __slots__ = ("detail", "payload", "payload_bytes", "reason", "topic")

    def __init__(self, topic: str, reason: str, detail: str, payload: bytes, payload_bytes: int) -> None:
        self.topic, self.reason, self.detail = topic[:1024], reason, detail
        self.payload, self.payload_bytes = payload, payload_bytes

    def record(self, at: str) -> dict[str, Any]:
        """The dead-letter record: the payload's prefix as text when it is UTF-8, else in base64."""
        out: dict[str, Any] = {"at": at, "reason": self.reason, "detail": self.detail, "topic": self.topic,
                               "payload_bytes": self.payload_bytes,
                               "payload_truncated": len(self.payload) < self.payload_bytes}
        text = _utf8_prefix(self.payload, whole=len(self.payload) == self.payload_bytes)
        if text is not None:
            out["payload"] = text
        else:
            out["payload_base64"] = base64.b64encode(self.payload).decode("ascii")
        return out


def _utf8_prefix(data: bytes, *, whole: bool) -> str | None:
    """``data`` as text if it is UTF-8 (a prefix may end inside a character: up to 3 bytes are let go)."""
    for cut in (0,) if whole else (0, 1, 2, 3):
        try:
            return data[: len(data) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


class _OncePerPeriod:
    """Rate limit for log lines: each key logs once, then at most once per ``period_s`` with a count."""

    def __init__(self, period_s: float = LOG_PERIOD_S, max_keys: int = _LOG_KEYS_MAX) -> None:
        self.period_s = period_s
        self.max_keys = max_keys
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def check(self, reason: str, ident: str) -> int | None:
        """None to stay quiet; else the number of occurrences not logged since the last line."""
        key = (reason, ident[:200])
        if key not in self._last and len(self._last) >= self.max_keys:
            key = (reason, "(other ids)")
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.period_s:
            self._last[key] = (last[0], last[1] + 1)
            return None
        self._last[key] = (now, 0)
        return 0 if last is None else last[1]


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
        dead_letter_path: JSON-lines file receiving what is set aside (:mod:`energymon.deadletter`, rotated at
            ``limits.dead_letter_max_bytes``): whole messages (payload prefix of ``limits.payload_prefix_bytes``)
            and the points taken out of an accepted batch (whole).
        counter_state_path: SQLite file keeping the counters' baselines across restarts
            (:mod:`energymon.processors.state`).
        live_indicators: write the ``indicator`` rows of the local hour and day from the intervals this
            processor booked. Pass False when several processors share the readings (``processor.share_group``):
            each then holds only partial sums, and the indicator rows are recomputed from the store instead.
        clock: the processor's clock, which the accepted time window is relative to (the wall clock by default;
            the demo passes its faster one).
        limits: bounds on what is taken in (default: the plant file's ``processor.limits``).
        retention_ms: how far back the store keeps samples (:meth:`InfluxStore.retention_ms
            <energymon.processors.store.InfluxStore.retention_ms>`); older points are set aside instead of being
            written and dropped. None: the store keeps everything.
        gateways: the gateway ids whose batches are accepted (default: the plant file's ``gateway.id``, the one
            gateway a plant file describes).

    The trust boundary (docs/ARCHITECTURE.md, "Trust boundary"): the topic, which the broker's ACL ties to the
    publishing gateway's certificate, is the identity. A message is set aside, with one of
    :data:`SET_ASIDE_REASONS`, counted and logged once per id per :data:`LOG_PERIOD_S`, when its topic is not
    the plant's enterprise and gateway, it is too large or malformed, or the batch names another enterprise or
    gateway than its topic. Points of unknown meters or quantities, or outside the accepted time window, are
    taken out of an otherwise accepted batch and set aside. Nothing set aside reaches the store, creates a
    metric label or touches a sequence window.
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
        clock: Clock | None = None,
        limits: ProcessorLimits | None = None,
        retention_ms: int | None = None,
        gateways: Iterable[str] | None = None,
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
        self.clock: Clock = clock or WallClock()
        self.limits = limits or plant.processor.limits
        self.future_ms = round(self.limits.future_tolerance_secs * 1000)
        self.retention_ms = retention_ms
        self.gateways = frozenset(gateways if gateways is not None else (plant.gateway.id,))
        self._quantities: dict[str, frozenset[str]] = {m.id: frozenset(plant.quantities(m)) for m in plant.meters}
        self.dead_letter_path = dead_letter_path
        self.dead_letters = (
            None
            if dead_letter_path is None
            else DeadLetterFile(
                dead_letter_path, max_bytes=self.limits.dead_letter_max_bytes, files=self.limits.dead_letter_files
            )
        )
        #: the last 100 messages set aside (payloads cut to ``limits.payload_prefix_bytes``)
        self.rejected: deque[Rejected] = deque(maxlen=100)
        self._log_gate = _OncePerPeriod()
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
        self._counter_rules: dict[str, CounterRules] = {
            m: self.accounting.rules.counter_rules(m) for m in self._counters
        }
        self.duplicates = 0
        self.edge_intervals = 0
        #: edge intervals not booked (the last 100), and how many in all
        self.set_aside_intervals: deque[SetAsideInterval] = deque(maxlen=100)
        self.intervals_set_aside = 0
        #: intervals flagged ``rebased``: counters reset or swapped without a recorded replacement
        self.counter_resets = 0
        self._dirty_counters: set[str] = set()
        self._state: CounterStateFile | None = None
        if counter_state_path is not None:
            self._state = CounterStateFile(counter_state_path)
            restored = self._state.restore({m: c[1] for m, c in self._counters.items()})
            if restored:
                log.info("restored the baselines of %d counter(s) from %s", restored, counter_state_path)
        if retention_ms is not None:
            replay_ms = plant.gateway.outbox_max_age_days * 86_400_000
            if retention_ms < replay_ms:
                log.warning(
                    "the store keeps %.1f days of data, less than the %.1f days a gateway's outbox may replay after "
                    "an outage (gateway.outbox_max_age_days): readings older than %.1f days are set aside to %s "
                    "(reason beyond_retention), not stored",
                    retention_ms / 86_400_000, plant.gateway.outbox_max_age_days, retention_ms / 86_400_000,
                    dead_letter_path or "nowhere (no dead-letter file)",
                )

    # ------------------------------------------------------------------ intake

    def handle(self, msg: Message) -> None:
        """Process one transport message (thread-safe)."""
        parsed = parse_readings_topic(msg.topic)
        if parsed is None:
            self._reject(msg, "bad_topic", msg.topic, "not a readings topic")
            return
        enterprise, gateway = parsed
        if enterprise != self.enterprise:
            self._reject(msg, "unknown_enterprise", enterprise,
                         f"enterprise {enterprise[:100]!r}, this processor serves {self.enterprise!r}")
            return
        if gateway not in self.gateways:
            known = ", ".join(sorted(self.gateways))
            self._reject(msg, "unknown_gateway", gateway,
                         f"gateway {gateway[:100]!r} is not in the plant file ({known})")
            return
        try:
            batch = decode_wire(msg.payload, max_bytes=self.limits.max_payload_bytes,
                                max_points=self.limits.max_batch_points)
        except PayloadTooLargeError as exc:
            self._reject(msg, "too_large", gateway, str(exc), error=exc)
            return
        except SchemaError as exc:
            self._reject(msg, "bad_payload", gateway, str(exc), error=exc)
            return
        if batch["enterprise"] != enterprise or batch["gateway"] != gateway:
            self._reject(msg, "identity_mismatch", gateway,
                         f"batch names enterprise {batch['enterprise']!r} and gateway {batch['gateway']!r}, "
                         f"its topic {enterprise!r} and {gateway!r}")
            return
        with self._lock:
            accepted = self._accept(batch, msg)
            if accepted is None:
                return
            self._derive(accepted)
            self._acks.append(msg.ack)
            if self._pending_since is None:
                self._pending_since = time.monotonic()
            pending = len(self._rows)
        for observer in self.intake_observers:
            try:
                observer(accepted["points"])
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
        """Process an already-decoded batch (in-process use and tests): the same checks as :meth:`handle`
        except the topic's, which an in-process batch does not have."""
        wire = cast(WireBatch, batch.model_dump())
        with self._lock:
            if wire["enterprise"] != self.enterprise or wire["gateway"] not in self.gateways:
                reason = "unknown_enterprise" if wire["enterprise"] != self.enterprise else "unknown_gateway"
                n = len(wire["points"])
                self.stage.received(n)
                self._set_aside(reason, [wire["gateway"]], f"in-process batch of {wire['enterprise']!r}/"
                                f"{wire['gateway']!r}", n, {"gateway": wire["gateway"], "seq": wire["seq"],
                                                            "points": wire["points"]})
                return
            accepted = self._accept(wire, None)
            if accepted is not None:
                self._derive(accepted)
        self.flush()

    def _accept(self, batch: WireBatch, msg: Message | None) -> WireBatch | None:
        """The batch to derive rows from (its points outside the plant or the time window taken out and set
        aside), or None when nothing is left to derive: a re-sent batch, or one whose points were all set
        aside (both acknowledged here)."""
        points = batch["points"]
        gateway = batch["gateway"]
        self.stage.received(len(points))
        window = self._seqs.get(gateway)
        if window is None:
            window = self._seqs[gateway] = _SeqWindow()
        if batch["seq"] in window.seen:
            self.duplicates += 1
            self.stage.dropped("duplicate_batch", len(points))
            if msg is not None:
                msg.ack()
            return None
        kept = self._screen(batch, msg.topic if msg is not None else None)
        if kept is None:
            return None  # the set-aside record could not be written: not acknowledged, the broker redelivers
        window.add(batch["seq"])
        self.metrics.gateway_seen(gateway)
        if not kept:
            if msg is not None:
                msg.ack()
            return None
        if len(kept) == len(points):
            return batch
        out = dict(batch)
        out["points"] = kept
        return cast(WireBatch, out)

    def _screen(self, batch: WireBatch, topic: str | None) -> list[WirePoint] | None:
        """The points of known meters and quantities inside the accepted time window; the others are set aside
        (one record per reason). None if a record could not be written."""
        now = self.clock.now_ms()
        latest = now + self.future_ms
        earliest = now - self.retention_ms if self.retention_ms is not None else -1
        known = self._quantities
        aside: dict[str, list[WirePoint]] = {}
        kept: list[WirePoint] = []
        for p in batch["points"]:
            quantities = known.get(p["meter"])
            if quantities is None:
                reason = "unknown_meter"
            elif p["quantity"] not in quantities:
                reason = "unknown_quantity"
            elif p["ts_ms"] > latest:
                reason = "future_timestamp"
            elif p["ts_ms"] < earliest:
                reason = "beyond_retention"
            else:
                kept.append(p)
                continue
            aside.setdefault(reason, []).append(p)
        if not aside:
            return kept
        gateway = batch["gateway"]
        for reason, pts in aside.items():
            if reason in ("unknown_meter", "unknown_quantity"):
                ids = sorted({p["meter"] if reason == "unknown_meter" else f"{p['meter']}.{p['quantity']}"
                              for p in pts})
                detail = f"{len(pts)} point(s) of {'meter' if reason == 'unknown_meter' else 'quantity'} " + \
                    ", ".join(ids[:10]) + (f" (+{len(ids) - 10} more)" if len(ids) > 10 else "")
                idents = ids
            else:
                first, last = min(p["ts_ms"] for p in pts), max(p["ts_ms"] for p in pts)
                bound = latest if reason == "future_timestamp" else earliest
                detail = (f"{len(pts)} point(s) stamped {_iso(first)} .. {_iso(last)}, "
                          f"{'after' if reason == 'future_timestamp' else 'before'} {_iso(bound)}")
                idents = [gateway]
            record = {"topic": topic, "enterprise": batch["enterprise"], "gateway": gateway, "seq": batch["seq"],
                      "points": pts}
            if not self._set_aside(reason, idents, f"gateway {gateway!r} seq {batch['seq']}: {detail}", len(pts),
                                   record):
                return None
        return kept

    def _set_aside(
        self, reason: str, idents: Sequence[str], detail: str, n_points: int, record: dict[str, Any]
    ) -> bool:
        """Write a dead-letter record, count and log it; False if the record could not be written."""
        if self.dead_letters is not None:
            try:
                self.dead_letters.write({"at": _iso(time.time_ns() // 1_000_000), "reason": reason,
                                         "detail": detail, **record})
            except OSError as exc:
                self.stage.error(exc)
                log.error("could not write the dead-letter file %s (%s): %s not acknowledged, the broker "
                          "delivers it again", self.dead_letter_path, exc, detail)
                return False
            self.stage.dead_letter(reason)
        self.stage.dropped(reason, n_points)
        # logged when any of the ids is new in this period (every id is counted towards its own period)
        checks = [self._log_gate.check(reason, ident) for ident in idents]
        quiet = max((q for q in checks if q is not None), default=None)
        if quiet is not None:
            more = f" (and {quiet} more since the last line)" if quiet else ""
            log.warning("set aside (%s): %s%s", reason, detail, more)
        return True

    def _reject(self, msg: Message, reason: str, ident: str, detail: str, *, error: Exception | None = None) -> None:
        """Set a whole message aside and acknowledge it (it would never become valid)."""
        prefix = msg.payload[: self.limits.payload_prefix_bytes]
        rejected = Rejected(msg.topic, reason, detail, bytes(prefix), len(msg.payload))
        self.rejected.append(rejected)
        if error is not None:
            self.stage.error(error)
        if self.dead_letters is not None:
            try:
                self.dead_letters.write(rejected.record(_iso(time.time_ns() // 1_000_000)))
            except OSError as exc:
                self.stage.error(exc)
                log.error("could not write the dead-letter file %s (%s): the message on %s is not acknowledged, "
                          "the broker delivers it again", self.dead_letter_path, exc, msg.topic)
                return
            self.stage.dead_letter(reason)
        self.stage.dropped(reason)
        quiet = self._log_gate.check(reason, ident)
        if quiet is not None:
            more = f" (and {quiet} more since the last line)" if quiet else ""
            log.warning("set aside a message on %s (%s): %s%s", msg.topic[:200], reason, detail, more)
        msg.ack()

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
                            amount, flag = iv["amount"], iv.get("flag", "ok")
                            last = None if tracker.last_value is None else (tracker.last_value, tracker.last_ms)
                            reason = check_interval(self._counter_rules[meter], start, ts_ms, amount, flag,
                                                    value=value, last=last)
                            if reason is not None:
                                self._set_aside_interval(gw, meter, start, ts_ms, amount, flag, reason)
                                continue
                            self.edge_intervals += 1
                            rows.extend(acc.book(meter, start, ts_ms, amount, flag))
                            if flag == DeltaFlag.REBASED.value:
                                self._reset(meter, start, gw)
                            if ts_ms > tracker.last_ms:  # a reading without interval continues from here
                                tracker.restore(value, ts_ms)
                                self._dirty_counters.add(meter)
                    else:
                        self._dirty_counters.add(meter)
                        delta = tracker.update(value, ts_ms)
                        if delta is not None:
                            rows.extend(acc.book(meter, delta.start_ms, delta.end_ms, delta.amount, delta.flag.value))
                            if delta.flag is DeltaFlag.REBASED:
                                self._reset(meter, delta.start_ms, gw)
            else:
                rows.append((key, {"value": value, "uncertain": 1.0}, ts_ms))
        if self.observers:
            self._points.extend(batch["points"])

    def _set_aside_interval(self, gw: str, meter: str, start: int, ts_ms: int, amount: float, flag: str,
                            reason: str) -> None:
        """An edge interval the counter rules refuse: kept in the dead-letter file, counted, logged once a period."""
        self.intervals_set_aside += 1
        self.set_aside_intervals.append(SetAsideInterval(gw, meter, start, ts_ms, amount, flag, reason))
        detail = (f"meter {meter!r} (gateway {gw!r}): edge interval {_iso(start)} .. {_iso(ts_ms)} of {amount!r} "
                  f"({flag}) not booked: {reason}")
        self._set_aside("implausible_interval", meter, detail, 1,
                        {"gateway": gw, "meter": meter, "interval": {"start_ms": start, "ts_ms": ts_ms,
                                                                     "amount": amount, "flag": flag}})

    def _reset(self, meter: str, at_ms: int, gw: str) -> None:
        self.counter_resets += 1
        log.warning("meter %s (gateway %s): the counter was reset or swapped at %d without a recorded replacement; "
                    "nothing is booked across it (record it in accounting.replacements if the meter was changed)",
                    meter, gw, at_ms)

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
                for ack in acks:  # messages that produced no rows: nothing to wait for
                    ack()
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


def _iso(ms: int) -> str:
    """Milliseconds since the epoch as an ISO 8601 UTC time."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
