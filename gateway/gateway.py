"""The edge gateway: a drift-free polling schedule, the durable outbox, and the MQTT uplink.

Three kinds of tasks run on one asyncio loop:

* one **scheduler** per poll group wakes at wall-clock-aligned ticks (every 5 s at :00, :05, …; the next tick is
  computed from the clock each time, so a slow poll never shifts the schedule), polls every collector serving
  the group concurrently (each collector serialises requests on its own bus), and appends the points to the
  outbox as one or more batches;
* **push collectors** (MQTT JSON meters) hand points to :meth:`Gateway.emit` from any thread; they are batched
  every second;
* one **publisher** sends the outbox oldest first, a window of batches in flight, and removes each batch only
  after the broker's PUBACK. While the broker is down batches accumulate on disk and drain when it returns.

The gateway publishes ``online`` (retained) on its status topic when it starts and ``offline`` when it stops;
the transport's last will publishes ``offline`` if it dies.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Sequence
from pathlib import Path

from energymon.clock import WallClock
from energymon.config import PlantConfig
from energymon.errors import TransportError
from energymon.interfaces import Clock, Collector, PushCollector, Transport
from energymon.metrics import PipelineMetrics, private_metrics
from energymon.schema import Batch, Point, encode_batch
from energymon.topics import readings_topic, status_topic

from .queue import OutboundQueue

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
        publish_window: batches in flight at once.
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
        self.queue = OutboundQueue(queue_path)
        self.publish_window = publish_window
        self._window = publish_window
        self.topic = readings_topic(self.enterprise, self.gateway_id)
        self._pushed: list[Point] = []
        self._push_lock = threading.Lock()
        self._wake = asyncio.Event()
        self._compress = plant.uplink.compress
        self.polls = 0

    # ------------------------------------------------------------------ intake

    def emit(self, points: list[Point]) -> None:
        """Accept pushed points (thread-safe)."""
        with self._push_lock:
            self._pushed.extend(points)

    def enqueue(self, points: list[Point]) -> list[int]:
        """Write points to the outbox as batches; return their sequence numbers."""
        seqs: list[int] = []
        size = self.plant.gateway.batch_max_points
        now = self.clock.now_ms()
        for i in range(0, len(points), size):
            chunk = points[i : i + size]

            def build(seq: int, chunk: list[Point] = chunk) -> bytes:
                batch = Batch(enterprise=self.enterprise, gateway=self.gateway_id, seq=seq, sent_ms=now, points=chunk)
                return encode_batch(batch, compress=self._compress)

            seqs.append(self.queue.put(build, now, len(chunk)))
            self.stage.received(len(chunk))
        self._wake.set()
        return seqs

    # ------------------------------------------------------------------ tasks

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then stop collectors and flush what can be flushed."""
        await self.transport.connect()
        for c in self.collectors:
            await c.start()
        for pc in self.push_collectors:
            await pc.start(self.emit)
        await self._status(b"online")
        tasks = [asyncio.create_task(self._schedule(g.id, g.interval_secs, stop)) for g in self.plant.gateway.poll_groups]
        tasks.append(asyncio.create_task(self._push_batcher(stop)))
        publisher = asyncio.create_task(self._publisher(stop))
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for pc in self.push_collectors:
                await pc.stop()
            for c in self.collectors:
                await c.stop()
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
            self._flush_pushed()
            try:
                await asyncio.wait_for(self._drain_retrying(), timeout=5)
            except TimeoutError:
                log.warning("stopping with %d batch(es) still in the outbox; they are sent on the next start",
                            self.queue.depth()[0])
            try:
                await self._status(b"offline")
            except TransportError:
                pass
            await self.transport.close()
            self.queue.close()

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

    async def _schedule(self, group: str, interval_secs: float, stop: asyncio.Event) -> None:
        interval_ms = max(1, round(interval_secs * 1000))
        serving = list(self.collectors)
        while not stop.is_set():
            now = self.clock.now_ms()
            tick = (now // interval_ms + 1) * interval_ms
            if not await self._sleep_until(tick, stop):
                return
            with self.metrics.poll_duration.labels(group).time():
                results = await asyncio.gather(*(c.poll(group, tick) for c in serving), return_exceptions=True)
            points: list[Point] = []
            for c, res in zip(serving, results, strict=True):
                if isinstance(res, BaseException):
                    if isinstance(res, asyncio.CancelledError):
                        raise res
                    self.stage.error(res)
                    log.error("collector %s failed to poll group %s: %s", c.name, group, res)
                else:
                    points.extend(res)
            self.polls += 1
            if points:
                self.enqueue(points)

    def _flush_pushed(self) -> None:
        with self._push_lock:
            pushed, self._pushed = self._pushed, []
        if pushed:
            self.enqueue(pushed)

    async def _push_batcher(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
            self._flush_pushed()

    async def drain(self) -> None:
        """Publish until the outbox is empty (raises TransportError if the broker fails).

        Up to ``publish_window`` batches are in flight at once. After a failure the window shrinks to one
        batch until a publish succeeds again, so a broker outage does not reorder the backlog.
        """
        while True:
            batch = self.queue.peek(self._window)
            if not batch:
                return
            await self._publish_window(batch)

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
        results = await asyncio.gather(
            *(self.transport.publish(self.topic, payload, qos=1) for _, _, payload in window), return_exceptions=True
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
        if failure is not None:
            self._window = 1
            raise failure if isinstance(failure, TransportError) else TransportError(str(failure))
        self._window = self.publish_window

    async def _publisher(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        while True:
            try:
                await self.drain()
                backoff = 0.5
            except TransportError as exc:
                self.stage.error(exc)
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
