"""The gateway's store-and-forward buffer: the durable queue plus its bounds, its overflow policy and quarantine.

:class:`Outbox` sits between the gateway's intake and :class:`~energymon.gateway.queue.OutboundQueue`:

* **clock check** — a reading whose ``ts_ms`` is more than ``time_tolerance_secs`` from the gateway's clock is
  set aside in the queue's quarantine table, counted (``dropped{reason="clock_skew"}``) and reported with one
  WARNING per meter while it persists (and one INFO when the meter's readings are back within tolerance).
  The tolerance is real time: on a clock running ``speed`` times faster than the wall clock (the demo's
  ``--speed``) it covers ``time_tolerance_secs × speed`` of event time, so a reading delayed by a busy machine is
  not mistaken for a meter with a wrong clock;
* **batching** — points are cut into batches of ``batch_max_points``, stored zlib-deflated (about 10 bytes a
  point instead of about 120 as JSON; the publisher inflates them again unless the uplink sends deflated);
* **bounds** — after each write, batches older than ``outbox_max_age_days`` are dropped (``max_age``), and if
  the file's used pages exceed ``outbox_max_bytes`` the overflow policy applies:

  =================  =========================================================================================
  ``drop_oldest``    delete the oldest batches (``overflow``) until the outbox fits, the newest batch kept
  ``reduce_fidelity``  strip the gauge points of every second batch, oldest first (``reduced_fidelity``;
                     counter points, which carry the energy, stay), then, once every batch was thinned, delete
                     the oldest (``overflow``)
  ``refuse_new``     keep the backlog; while the outbox is full, new points are not written (``refused``)
  =================  =========================================================================================

* **disk full** — a write failing with ``SQLITE_FULL`` drops the points (``disk_full``), logs one ERROR per
  episode and one INFO when writes succeed again; the next poll simply tries again.

The fill level is exported as gauges (``energymon_outbox_fill_ratio``, ``..._bytes``, ``..._batches``,
``..._oldest_age_seconds``); a WARNING is logged once when the fill crosses 90 % and an INFO once when it falls
back under 80 %.
"""

from __future__ import annotations

import logging
import sqlite3
import zlib
from collections.abc import Sequence

from energymon.config import GatewayConfig, PlantConfig
from energymon.metrics import PipelineMetrics, StageMetrics
from energymon.schema import Batch, Point, decode_batch, encode_batch

from .queue import OutboundQueue, OutboxDiskFullError, OutboxError, QuarantinedPoint

__all__ = ["FILL_HIGH", "FILL_LOW", "Outbox", "counter_items"]

#: Bound on inflating one of the outbox's own batches (100,000 points of the longest ids fit).
_OWN_BATCH_MAX_BYTES = 64 * 1024 * 1024

log = logging.getLogger(__name__)

#: Fill ratio at which a warning is logged (VOLTTRON's ``backup_storage_report``).
FILL_HIGH = 0.9
#: Fill ratio under which the warning is cleared.
FILL_LOW = 0.8
#: Batches visited per thinning pass.
_THIN_CHUNK = 64


def counter_items(plant: PlantConfig) -> frozenset[tuple[str, str]]:
    """(meter, quantity) of every counter (``kind: counter``) in the plant."""
    items: set[tuple[str, str]] = set()
    for meter in plant.meters:
        try:
            quantities = plant.quantities(meter)
        except (KeyError, ValueError):  # an unresolvable register map: validation reports it at load
            continue
        items.update((meter.id, q) for q, (_, kind, _) in quantities.items() if kind == "counter")
    return frozenset(items)


class Outbox:
    """Bounded, durable store-and-forward of points. Used from the gateway's event loop only.

    Args:
        queue: the durable queue.
        plant: the plant (enterprise, gateway settings, which quantities are counters, compression).
        metrics: self-metrics; the stage is ``gateway``.
        stage: the gateway stage's counters (shared with the gateway).
        speed: event-time seconds per real second of the gateway's clock (``Clock.speed()``); the clock check's
            tolerance is ``time_tolerance_secs`` of real time, so ``time_tolerance_secs × speed`` of event time.
    """

    def __init__(
        self, queue: OutboundQueue, plant: PlantConfig, *, metrics: PipelineMetrics, stage: StageMetrics,
        speed: float = 1.0,
    ) -> None:
        self.queue = queue
        self.config: GatewayConfig = plant.gateway
        self.enterprise = plant.enterprise.uscc
        self.gateway_id = plant.gateway.id
        self.counters = counter_items(plant)
        self.compress_wire = plant.uplink.compress
        self.stage = stage
        self.max_bytes = self.config.outbox_max_bytes
        self.max_age_ms = round(self.config.outbox_max_age_days * 86_400_000)
        self.tolerance_ms = round(self.config.time_tolerance_secs * 1000 * speed)
        self.policy = self.config.overflow_policy
        self._fill = metrics.outbox_fill_ratio.labels(self.gateway_id)
        self._bytes = metrics.outbox_bytes.labels(self.gateway_id)
        self._batches = metrics.outbox_batches.labels(self.gateway_id)
        self._age = metrics.outbox_oldest_age.labels(self.gateway_id)
        self._high = False  # fill crossed FILL_HIGH and has not fallen under FILL_LOW since
        self._refusing = False
        self._disk_full = False
        self._expiring = False  # batches are being dropped for their age (logged once until the outbox empties)
        self._quarantine_pruned = 0
        self._skewed: set[str] = set()  # meters whose readings are currently quarantined

    # ------------------------------------------------------------------ intake

    def append(self, points: Sequence[Point], now_ms: int) -> list[int]:
        """:meth:`admit` then :meth:`store`. Returns the sequence numbers written."""
        return self.store(self.admit(points, now_ms), now_ms)

    def store(self, good: Sequence[Point], now_ms: int) -> list[int]:
        """Batch and store admitted points; apply the bounds. Returns the sequence numbers written.

        Never raises for a storage problem: the points are counted as dropped with the reason and logged.
        """
        if not good:
            return []
        if self.policy == "refuse_new" and self.queue.stored_bytes() >= self.max_bytes:
            self.stage.dropped("refused", len(good))
            if not self._refusing:
                self._refusing = True
                log.warning(
                    "outbox %s is full (%d bytes, overflow_policy refuse_new): new points are not stored until the"
                    " backlog drains", self.queue.path, self.max_bytes,
                )
            self.refresh(now_ms)
            return []
        if self._refusing:
            self._refusing = False
            log.info("outbox %s has room again: storing new points", self.queue.path)
        seqs: list[int] = []
        size = self.config.batch_max_points
        for i in range(0, len(good), size):
            chunk = list(good[i : i + size])
            gauges = sum(1 for p in chunk if (p.meter, p.quantity) not in self.counters)

            def build(seq: int, chunk: list[Point] = chunk) -> bytes:
                batch = Batch(
                    enterprise=self.enterprise, gateway=self.gateway_id, seq=seq, sent_ms=now_ms, points=chunk
                )
                return encode_batch(batch, compress=True)

            try:
                seqs.append(self.queue.put(build, now_ms, len(chunk), gauges))
            except OutboxDiskFullError as exc:
                self.stage.dropped("disk_full", len(chunk))
                self.stage.error(exc)
                if not self._disk_full:
                    self._disk_full = True
                    log.error("%s: %d point(s) lost; polling goes on and writes resume when space is back",
                              exc, len(chunk))
                continue
            except (OutboxError, sqlite3.Error) as exc:
                self.stage.dropped("outbox_error", len(chunk))
                self.stage.error(exc if isinstance(exc, OutboxError) else "OutboxError")
                log.error("outbox %s: write failed, %d point(s) lost: %s", self.queue.path, len(chunk), exc)
                continue
            if self._disk_full:
                self._disk_full = False
                log.info("outbox %s is writable again", self.queue.path)
        self.enforce(now_ms)
        return seqs

    def admit(self, points: Sequence[Point], now_ms: int) -> list[Point]:
        """Quarantine readings whose time is too far from ``now_ms``; return the others."""
        tol = self.tolerance_ms
        good: list[Point] = []
        skewed: list[QuarantinedPoint] = []
        for p in points:
            skew = p.ts_ms - now_ms
            if -tol <= skew <= tol:
                good.append(p)
            else:
                skewed.append((now_ms, p.meter, p.quantity, p.ts_ms, skew, p.model_dump_json()))
        skewed_meters = {row[1] for row in skewed}
        for meter in sorted(skewed_meters - self._skewed):
            first = next(row for row in skewed if row[1] == meter)
            log.warning(
                "meter %s: reading time is %+.0f s off the gateway clock (tolerance %.0f s); its readings are set"
                " aside in the quarantine table of %s and not sent until its clock is fixed",
                meter, first[4] / 1000, tol / 1000, self.queue.path,
            )
        if self._skewed:
            for meter in sorted(self._skewed - skewed_meters):
                if any(p.meter == meter for p in good):
                    log.info("meter %s: reading times are back within %.0f s of the gateway clock", meter, tol / 1000)
                    self._skewed.discard(meter)
        self._skewed |= skewed_meters
        if skewed:
            self.stage.dropped("clock_skew", len(skewed))
            try:
                self.queue.quarantine(skewed)
            except (OutboxError, sqlite3.Error) as exc:
                self.stage.error(exc if isinstance(exc, OutboxError) else "OutboxError")
                log.error("outbox %s: could not quarantine %d reading(s): %s", self.queue.path, len(skewed), exc)
        return good

    # ------------------------------------------------------------------ bounds

    def enforce(self, now_ms: int) -> None:
        """Apply the age bound and, over ``outbox_max_bytes``, the overflow policy; then refresh the gauges."""
        try:
            cutoff = now_ms - self.max_age_ms
            oldest = self.queue.oldest_ms()
            _, expired = self.queue.expire(cutoff) if oldest is not None and oldest < cutoff else (0, 0)
            if now_ms - self._quarantine_pruned >= 3_600_000:
                self.queue.expire_quarantine(cutoff)
                self._quarantine_pruned = now_ms
            if expired:
                self.stage.dropped("max_age", expired)
                if not self._expiring:
                    self._expiring = True
                    log.warning("outbox %s: dropping points older than %g days (outbox_max_age_days)",
                                self.queue.path, self.config.outbox_max_age_days)
            elif self._expiring and self.queue.depth()[0] == 0:
                self._expiring = False
            if self.policy != "refuse_new":
                self._overflow()
        except (OutboxError, sqlite3.Error) as exc:
            self.stage.error(exc if isinstance(exc, OutboxError) else "OutboxError")
            log.error("outbox %s: could not apply its bounds: %s", self.queue.path, exc)
        self.refresh(now_ms)

    def _overflow(self) -> None:
        if self.policy == "reduce_fidelity":
            while self.queue.stored_bytes() > self.max_bytes and self._thin():
                pass
        lost = 0
        while (excess := self.queue.stored_bytes() - self.max_bytes) > 0:
            batches, points = self.queue.evict_oldest(excess)
            if not batches:
                break  # only the newest batch is left
            lost += points
        if lost:
            self.stage.dropped("overflow", lost)
            log.debug("outbox %s: evicted %d point(s), oldest first", self.queue.path, lost)

    def _thin(self) -> bool:
        """One pass of ``reduce_fidelity`` over the oldest unthinned batches; False if none was left."""
        candidates = self.queue.thinnable(_THIN_CHUNK)
        if not candidates:
            return False
        updates: list[tuple[int, bytes | None, int, int]] = []
        for i, (seq, _, _, payload) in enumerate(candidates):
            if i % 2 == 0:
                continue  # every second batch keeps its gauges
            batch = decode_batch(payload, max_bytes=_OWN_BATCH_MAX_BYTES)  # its own batch
            kept = [p for p in batch.points if (p.meter, p.quantity) in self.counters]
            if not kept:
                updates.append((seq, None, 0, 0))
                continue
            thinned = Batch(enterprise=batch.enterprise, gateway=batch.gateway, seq=batch.seq, sent_ms=batch.sent_ms,
                            points=kept)
            updates.append((seq, encode_batch(thinned, compress=True), len(kept), 0))
        removed, _ = self.queue.rewrite(updates, [c[0] for c in candidates])
        if removed:
            self.stage.dropped("reduced_fidelity", removed)
        return True

    def refresh(self, now_ms: int) -> None:
        """Update the fill gauges; log once when the fill crosses 90 % and once when it is back under 80 %."""
        used = self.queue.stored_bytes()
        fill = used / self.max_bytes
        oldest = self.queue.oldest_ms()
        self._fill.set(fill)
        self._bytes.set(used)
        self._batches.set(self.queue.depth()[0])
        self._age.set(0.0 if oldest is None else max(0, now_ms - oldest) / 1000)
        if not self._high and fill >= FILL_HIGH:
            self._high = True
            log.warning(
                "outbox %s is %.0f %% full (%d of %d bytes, oldest batch %.1f h old); at 100 %% overflow_policy %s"
                " applies", self.queue.path, fill * 100, used, self.max_bytes,
                0 if oldest is None else (now_ms - oldest) / 3_600_000, self.policy,
            )
        elif self._high and fill < FILL_LOW:
            self._high = False
            log.info("outbox %s is back under %.0f %% full (%.0f %%)", self.queue.path, FILL_LOW * 100, fill * 100)

    # ------------------------------------------------------------------ uplink

    def wire(self, payload: bytes) -> bytes:
        """The stored payload as the uplink sends it (inflated unless ``uplink.compress``)."""
        deflated = payload[:1] != b"{"
        if deflated and not self.compress_wire:
            try:
                return zlib.decompress(payload)
            except zlib.error:
                return payload  # not ours to judge: the processor sets an undecodable payload aside
        if not deflated and self.compress_wire:
            return zlib.compress(payload, 6)
        return payload
