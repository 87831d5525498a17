"""The edge gateway: a drift-free polling schedule, the durable outbox, and the MQTT uplink.

Three kinds of tasks run on one asyncio loop:

* one **scheduler** per bus (collector) wakes at its poll groups' wall-clock-aligned ticks (every 5 s at :00,
  :05, …; the next tick is computed from the clock each time, so a slow poll never shifts the schedule), polls
  the due groups (healthy meters first, failing ones in the time left before the bus's next tick), probes the
  bus's offline meters between ticks, and appends the points to the outbox as one or more batches. Buses never
  wait for each other: a dead bus or a host that accepts connections and never answers delays only itself;
* **push collectors** (MQTT JSON meters) hand points to :meth:`Gateway.emit` from any thread; they are batched
  every second;
* one **publisher** sends the outbox with a window of batches in flight, and removes each batch only after
  the broker's PUBACK. While the broker is down batches accumulate on disk. When it returns, the backlog
  drains oldest first in slices of ``publish_window`` batches, and before each slice every *live* batch (one
  written since the last failed publish) goes out first, so live data waits at most one slice behind the
  backlog. Readings of one meter can therefore arrive out of time order across the backlog/live boundary;
  the processor tolerates it (docs/ARCHITECTURE.md, section Gateway).

Every polled or pushed point goes through the :class:`~energymon.gateway.outbox.Outbox` (clock check and
quarantine, bounds, overflow policy) and, when good, into the :class:`~energymon.gateway.history.EdgeHistory`
(15-minute, hourly, daily and monthly values kept for six months beside the outbox).

**Counter intervals at the edge.** The gateway is the single, ordered writer of its meters' readings, so it
cleans each accounted counter (the meter's ``counter``) with :class:`~energymon.counters.CounterTracker`, by the
counter rules every stage uses (rollover, plausibility bound, recorded replacements, rejected drops and spikes, a
persistent new level, gaps; see docs/accounting.md), and attaches to every good counter reading the interval it
closes (:class:`~energymon.schema.Interval`; an empty one when it closes none, or while a rise waits for the
next reading to confirm it). The processor re-checks every interval with the same rules before booking it.
The trackers' baselines are saved in the outbox file in the same transaction as the batch carrying their
intervals and restored at start, so a crash neither loses nor repeats an interval, and a batch that is refused
or fails to be written returns the trackers to where they were. Processors then book each interval as it comes,
without state of their own, which lets several of them share the readings (``processor.share_group``).

The gateway publishes ``online`` (retained) on its status topic once its uplink connects and ``offline`` when it stops;
the transport's last will publishes ``offline`` if it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from energymon.clock import WallClock
from energymon.config import PlantConfig
from energymon.counters import CounterTracker, TrackerState, plant_counter_rules
from energymon.errors import TransportError
from energymon.interfaces import Clock, Collector, ProbingCollector, PushCollector, Transport
from energymon.metrics import PipelineMetrics, private_metrics
from energymon.schema import Interval, Point, Quality
from energymon.topics import readings_topic, status_topic

from .history import EdgeHistory, history_path
from .outbox import Outbox
from .queue import OutboundQueue, OutboxError

__all__ = ["Gateway"]

log = logging.getLogger(__name__)


class Gateway:
    """Runs collectors on schedule and forwards their points through a durable outbox.

    Args:
        plant: the plant configuration (gateway id, poll groups, enterprise).
        transport: the uplink.
        collectors: polled collectors (one per bus).
        push_collectors: collectors that push points.
        queue_path: the outbox file.
        clock: event-time clock (the demo's runs faster than the wall clock).
        metrics: self-metrics (stage ``gateway``).
        publish_window: batches in flight at once, and the size of one backlog slice.
        history_file: the edge history file (default ``history-{gateway}.sqlite`` beside the outbox; ``:memory:``
            when the outbox is); none when ``gateway.history_retention_days`` is 0.

    Raises:
        OutboxCorruptError: the outbox or history file is corrupt and ``gateway.outbox_on_corrupt`` is ``stop``.
    """

    def __init__(
        self,
        plant: PlantConfig,
        transport: Transport,
        collectors: Sequence[Collector],
        push_collectors: Sequence[PushCollector] = (),
        *,
        queue_path: Path | str,
        clock: Clock | None = None,
        metrics: PipelineMetrics | None = None,
        publish_window: int = 20,
        history_file: Path | str | None = None,
    ) -> None:
        self.plant = plant
        self.enterprise = plant.enterprise.uscc
        self.gateway_id = plant.gateway.id
        self.transport = transport
        self.collectors = list(collectors)
        self.push_collectors = list(push_collectors)
        self.clock: Clock = clock or WallClock()
        self.metrics = metrics or private_metrics()
        self.stage = self.metrics.stage("gateway")
        cfg = plant.gateway
        self.queue = OutboundQueue(queue_path, on_corrupt=cfg.outbox_on_corrupt)
        self.outbox = Outbox(self.queue, plant, metrics=self.metrics, stage=self.stage, speed=self.clock.speed())
        self.history: EdgeHistory | None = None
        if cfg.history_retention_days > 0:
            if history_file is None:
                memory = str(queue_path) == ":memory:"
                history_file = ":memory:" if memory else history_path(Path(queue_path).parent, self.gateway_id)
            try:
                self.history = EdgeHistory(history_file, plant, retention_days=cfg.history_retention_days,
                                           on_corrupt=cfg.outbox_on_corrupt)
            except BaseException:
                self.queue.close()
                raise
        try:
            self._trackers = _counter_trackers(plant)
            saved = self.queue.counter_baselines()
        except BaseException:
            self.queue.close()
            if self.history is not None:
                self.history.close()
            raise
        for meter, (_, tracker) in self._trackers.items():
            if meter in saved:
                tracker.restore(*saved[meter])
        self._batch_points = cfg.batch_max_points
        self._history_failing = False
        self.publish_window = publish_window
        self._window = publish_window
        self._live_from = 0  # batches with seq >= this are live; older ones are backlog
        self._uplink_started = False
        self._backlog_draining = False
        self.topic = readings_topic(self.enterprise, self.gateway_id)
        self._pushed: list[Point] = []
        self._push_lock = threading.Lock()
        self._wake = asyncio.Event()
        self.polls = 0

    # ------------------------------------------------------------------ intake

    def emit(self, points: list[Point]) -> None:
        """Accept pushed points (thread-safe)."""
        with self._push_lock:
            self._pushed.extend(points)

    def enqueue(self, points: list[Point]) -> list[int]:
        """Take points in: quarantine clock-skewed ones, write the others to the outbox as batches and add them to
        the edge history. Returns the sequence numbers written (none if the outbox refused or failed them: the
        points are then counted as dropped with the reason, and logged)."""
        now = self.clock.now_ms()
        self.stage.received(len(points))
        good = self.outbox.admit(points, now)
        seqs = self._store(good, now) if self._trackers else self.outbox.store(good, now)
        if self.history is not None and good:
            try:
                self.history.record(good, now)
                if self._history_failing:
                    self._history_failing = False
                    log.info("edge history %s is writable again", self.history.path)
            except (OutboxError, sqlite3.Error) as exc:
                self.stage.error(exc if isinstance(exc, OutboxError) else "HistoryError")
                if not self._history_failing:
                    self._history_failing = True
                    log.error("edge history %s: cannot record readings (%s); the outbox is not affected",
                              self.history.path, exc)
        self._wake.set()
        return seqs

    def _store(self, good: list[Point], now: int) -> list[int]:
        """Attach each counter reading's interval and store batch by batch, each with its trackers' baselines."""
        seqs: list[int] = []
        trackers = self._trackers
        size = self._batch_points
        for i in range(0, len(good), size):
            chunk = good[i : i + size]
            before: dict[str, TrackerState] = {}
            for j, p in enumerate(chunk):
                counter = trackers.get(p.meter)
                if counter is None or counter[0] != p.quantity or p.value is None or p.quality is not Quality.GOOD:
                    continue
                tracker = counter[1]
                if p.meter not in before:
                    before[p.meter] = tracker.state()
                had_baseline = tracker.last_value is not None
                delta = tracker.update(p.value, p.ts_ms)
                if delta is not None:
                    interval = Interval(start_ms=delta.start_ms, amount=delta.amount, flag=delta.flag.value)
                elif had_baseline:
                    interval = Interval(start_ms=p.ts_ms, amount=0.0)  # checked here, closes no interval
                else:
                    continue  # the first reading: the processor may hold a baseline from before
                chunk[j] = p.model_copy(update={"interval": interval})
            if not before:
                seqs.extend(self.outbox.store(chunk, now))
                continue
            baselines = [
                (m, t.last_value, t.last_ms) for m in before if (t := trackers[m][1]).last_value is not None
            ]
            with self.queue.carrying_counters(baselines):
                written = self.outbox.store(chunk, now)
            if not written:  # refused or lost (counted by the outbox): the next reading closes the interval
                for m, state in before.items():
                    trackers[m][1].set_state(state)
            seqs.extend(written)
        return seqs

    # ------------------------------------------------------------------ tasks

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then stop collectors and flush what can be flushed.

        Polling starts at once; the uplink connects in the publisher task, so a broker that is down when the
        gateway starts delays publishing, never collecting.

        Raises:
            TransportError: the broker refused the connection for a reason retrying will not fix (credentials,
                TLS files); collection stops too, since nothing could ever be delivered.
        """
        for c in self.collectors:
            await c.start()
        for pc in self.push_collectors:
            await pc.start(self.emit)
        groups = [(g.id, max(1, round(g.interval_secs * 1000))) for g in self.plant.gateway.poll_groups]
        tasks = []
        for c in self.collectors:
            served = getattr(c, "groups", None)
            mine = [g for g in groups if served is None or g[0] in served]
            if mine:
                tasks.append(asyncio.create_task(self._schedule(c, mine, stop)))
        tasks.append(asyncio.create_task(self._push_batcher(stop)))
        publisher = asyncio.create_task(self._publisher(stop))
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({stopped, publisher}, return_when=asyncio.FIRST_COMPLETED)
            failure = publisher.exception() if publisher.done() and not publisher.cancelled() else None
            if failure is not None:
                raise failure
        finally:
            stopped.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(stopped, *tasks, return_exceptions=True)
            for pc in self.push_collectors:
                await pc.stop()
            for c in self.collectors:
                await c.stop()
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
            self._flush_pushed()
            if self._uplink_started:
                try:
                    await asyncio.wait_for(self._drain_retrying(), timeout=5)
                except TimeoutError:
                    log.warning("stopping with %d batch(es) still in the outbox; they are sent on the next start",
                                self.queue.depth()[0])
                with contextlib.suppress(TransportError):
                    await self._status(b"offline")
            await self.transport.close()
            self.queue.close()
            if self.history is not None:
                try:
                    self.history.close()
                except sqlite3.Error as exc:
                    log.error("edge history %s: the last minute of values could not be written: %s",
                              self.history.path, exc)

    async def _sleep_until(self, tick_ms: int, stop: asyncio.Event) -> bool:
        """Sleep until event time ``tick_ms``; False if stopped meanwhile."""
        while True:
            wait_ms = tick_ms - self.clock.now_ms()
            if wait_ms <= 0:
                return not stop.is_set()
            try:
                await asyncio.wait_for(stop.wait(), timeout=wait_ms / 1000 / self.clock.speed())
                return False
            except TimeoutError:
                continue

    async def _schedule(self, collector: Collector, groups: list[tuple[str, int]], stop: asyncio.Event) -> None:
        """One bus's schedule: its poll groups' ticks, and probes of its offline meters in between.

        Every bus has a task of its own, so a bus whose meters are dead, or a host that accepts connections and
        never answers, costs no other bus anything. At each tick the due groups are polled (healthy meters
        first; failing ones only in the time left before the bus's next tick, see
        :class:`~energymon.interfaces.ProbingCollector`). The next tick of a group is computed from the clock
        after its poll, so a poll that overran skips the ticks it covered rather than piling them up.
        """
        probing = collector if isinstance(collector, ProbingCollector) else None
        now = self.clock.now_ms()
        next_tick = {g: (now // iv + 1) * iv for g, iv in groups}
        intervals = dict(groups)
        while not stop.is_set():
            tick = min(next_tick.values())
            if probing is not None and not await self._probe_until(probing, tick, stop):
                return
            if not await self._sleep_until(tick, stop):
                return
            due = [g for g, t in next_tick.items() if t == tick]
            for g in due:
                next_tick[g] = tick + intervals[g]
            until = min(next_tick.values())
            for g in due:
                try:
                    if probing is not None:
                        res = await probing.poll(g, tick, until_ms=until)
                    else:
                        res = await collector.poll(g, tick)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a collector's bug must not stop its bus's schedule
                    self.stage.error(exc)
                    log.error("collector %s failed to poll group %s: %s", collector.name, g, exc)
                    res = []
                self.polls += 1
                if res:
                    self.enqueue(res)
            now = self.clock.now_ms()
            for g in due:
                iv = intervals[g]
                next_tick[g] = max(next_tick[g], (now // iv + 1) * iv)

    async def _probe_until(self, collector: ProbingCollector, tick_ms: int, stop: asyncio.Event) -> bool:
        """Probe ``collector``'s offline meters as they come due before ``tick_ms``; False if stopped."""
        while not stop.is_set():
            due = collector.next_probe_ms()
            if due is None or due >= tick_ms:
                return True
            if due > self.clock.now_ms() and not await self._sleep_until(due, stop):
                return False
            try:
                points = await collector.probe(tick_ms)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stage.error(exc)
                log.error("collector %s failed to probe its meters: %s", collector.name, exc)
                return True
            if points:
                self.enqueue(points)
            again = collector.next_probe_ms()
            if again is not None and again <= self.clock.now_ms():
                return True  # due, but no probe fits before the tick: it waits for the spare time after it
        return False

    def _flush_pushed(self) -> None:
        with self._push_lock:
            pushed, self._pushed = self._pushed, []
        if pushed:
            self.enqueue(pushed)

    async def _push_batcher(self, stop: asyncio.Event) -> None:
        # pushed points go into the outbox once a second of event time (at most once a second of wall time), so
        # on a fast simulated clock they are not held long enough to look skewed against the gateway's clock
        period_s = min(1.0, max(0.01, 1.0 / self.clock.speed()))
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=period_s)
            self._flush_pushed()

    async def drain(self) -> None:
        """Publish until the outbox is empty (raises TransportError if the broker fails).

        Live batches (``seq >= live_from``: written since the publisher started or last failed) go first, oldest
        first; then one slice of the backlog, oldest first; then live batches again, and so on. A slice is one
        window: up to ``publish_window`` batches in flight at once. After a failure the window shrinks to one
        batch until a publish succeeds again, so a broker outage does not reorder the backlog.
        """
        while True:
            window = self.queue.peek(self._window, min_seq=self._live_from)
            if not window:
                window = self.queue.peek(self._window, max_seq=self._live_from)
                if not window:
                    if self._backlog_draining:
                        self._backlog_draining = False
                        log.info("uplink: backlog drained")
                    return
            await self._publish_window(window)

    async def _drain_retrying(self) -> None:
        backoff = 0.05
        while True:
            try:
                await self.drain()
                return
            except TransportError:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def _publish_window(self, window: list[tuple[int, int, bytes]]) -> None:
        wire = self.outbox.wire
        results = await asyncio.gather(
            *(self.transport.publish(self.topic, wire(payload), qos=1) for _, _, payload in window),
            return_exceptions=True,
        )
        done: list[int] = []
        failure: BaseException | None = None
        for (seq, n, _), res in zip(window, results, strict=True):
            if isinstance(res, BaseException):
                failure = failure or res
                continue  # sent again later; the ones the broker acknowledged are not
            done.append(seq)
            self.stage.sent(n)
        self.queue.remove(done)
        self.outbox.refresh(self.clock.now_ms())
        if failure is not None:
            self._window = 1
            self._mark_backlog()
            raise failure if isinstance(failure, TransportError) else TransportError(str(failure))
        self._window = self.publish_window

    def _mark_backlog(self) -> None:
        """Everything written so far is backlog; what is written from now on is live."""
        self._live_from = self.queue.next_seq()
        self._backlog_draining = self.queue.depth()[0] > 0

    async def _publisher(self, stop: asyncio.Event) -> None:
        self._mark_backlog()
        if self._backlog_draining:
            log.info("uplink: %d batch(es) left from before the start drain oldest first, live data first",
                     self.queue.depth()[0])
        await self.transport.connect()  # returns when connected or after its timeout (it keeps retrying)
        self._uplink_started = True
        online = False
        backoff = 0.5
        failures = 0
        while True:
            try:
                if not online:
                    await self._status(b"online")
                    online = True
                await self.drain()
                backoff = 0.5
                if failures:
                    log.info("uplink: publishing again after %d failed attempt(s)", failures)
                    failures = 0
            except TransportError as exc:
                self.stage.error(exc)
                failures += 1
                if failures == 1:  # once per episode: an outage or a refusal (ACL) is not logged per retry
                    log.warning("uplink: publishing fails (%s); the outbox keeps every batch, retrying with backoff",
                                exc)
                else:
                    log.debug("uplink publish failed (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, 30.0)
                continue
            self._wake.clear()
            if self.queue.depth()[0]:
                continue
            await self._wake.wait()

    async def _status(self, state: bytes) -> None:
        await self.transport.publish(status_topic(self.enterprise, self.gateway_id), state, qos=1, retain=True)


def _counter_trackers(plant: PlantConfig) -> dict[str, tuple[str, CounterTracker]]:
    """Per accounted meter, its counter quantity and tracker, by the counter rules every stage uses."""
    return {m: (q, rules.tracker()) for m, (q, rules) in plant_counter_rules(plant).items()}
