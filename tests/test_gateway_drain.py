"""Gateway backlog drain: after an outage live batches go first and the backlog drains oldest first in slices,
so live data waits at most one slice; every batch is published exactly once."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_gateway_outbox import plant_with, poll

from energymon.clock import ManualClock, ScaledClock
from energymon.errors import TransportError
from energymon.gateway.gateway import Gateway
from energymon.interfaces import Message
from energymon.schema import Batch, Point, decode_batch

WINDOW = 5


class OutageTransport:
    """Fails every publish while ``down``; records what got through and calls ``on_publish`` after each."""

    def __init__(self) -> None:
        self.down = False
        self.delay_s = 0.0
        self.published: list[Batch] = []
        self.on_publish: Callable[[Batch], None] | None = None

    async def connect(self) -> None:
        pass

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        if retain:
            return  # status messages
        if self.down:
            raise TransportError("broker down")
        await asyncio.sleep(self.delay_s)
        batch = decode_batch(payload)
        self.published.append(batch)
        if self.on_publish is not None:
            self.on_publish(batch)

    def subscribe(self, topic_filter: str, handler: Callable[[Message], None], *, qos: int = 1) -> None:
        pass

    async def close(self) -> None:
        pass


def test_live_batches_overtake_the_backlog_which_drains_oldest_first_in_slices(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2025, 3, 3, tzinfo=UTC))
    transport = OutageTransport()
    gw = Gateway(plant_with(), transport, [], queue_path=tmp_path / "outbox.sqlite", clock=clock,
                 publish_window=WINDOW)
    rnd = random.Random(1)
    transport.down = True
    for _ in range(60):  # an outage: 60 polls pile up
        clock.advance(15)
        gw.enqueue(poll(clock.now_ms(), rnd))

    created_at: dict[int, int] = {}  # live seq -> how many batches had been published when it was written

    def poll_now_and_then(batch: Batch) -> None:
        if len(transport.published) % 3 == 0:  # a poll arrives while the backlog drains
            clock.advance(15)
            for seq in gw.enqueue(poll(clock.now_ms(), rnd)):
                created_at[seq] = len(transport.published)

    async def main() -> None:
        with pytest.raises(TransportError):
            await gw.drain()  # the broker is down: the publish fails, everything so far is backlog
        transport.down = False
        transport.on_publish = poll_now_and_then
        await gw.drain()

    asyncio.run(main())
    seqs = [b.seq for b in transport.published]
    assert sorted(seqs) == list(range(1, gw.queue.next_seq()))  # every batch, exactly once
    backlog = [s for s in seqs if s <= 60]
    live = [s for s in seqs if s > 60]
    assert backlog == sorted(backlog) and live == sorted(live)  # each stream in time order
    assert len(live) >= 20
    for seq, published_before in created_at.items():
        waited = seqs.index(seq) - published_before  # batches published between its write and its publish
        assert waited <= WINDOW, (seq, waited)
    assert seqs.index(60) > seqs.index(61)  # live data went out before the backlog was done
    assert gw.queue.depth() == (0, 0)
    gw.queue.close()


class TickCollector:
    name = "ticks"

    def __init__(self) -> None:
        self.ticks: list[int] = []

    async def start(self) -> None:
        pass

    async def poll(self, group: str, ts_ms: int) -> list[Point]:
        self.ticks.append(ts_ms)
        return [Point(meter="incoming", quantity="power_active", value=1.0, unit="kW", ts_ms=ts_ms)]

    async def stop(self) -> None:
        pass


def test_a_backlog_left_from_before_a_restart_drains_behind_live_data(tmp_path: Path) -> None:
    plant = plant_with()  # poll group 'fast' every 5 s
    path = tmp_path / "outbox.sqlite"
    old_clock = ManualClock(datetime.fromtimestamp(datetime.now(UTC).timestamp() - 3600, UTC))
    old = Gateway(plant, OutageTransport(), [], queue_path=path, clock=old_clock)
    rnd = random.Random(2)
    for _ in range(150):  # an hour before the restart, every 15 s, nothing published
        old_clock.advance(15)
        old.enqueue(poll(old_clock.now_ms(), rnd))
    old.queue.close()
    old.history.close()  # type: ignore[union-attr]

    clock = ScaledClock(datetime.now(UTC), 50.0)  # a poll every 0.1 s
    transport = OutageTransport()
    transport.delay_s = 0.004  # a slow link: the backlog takes ~0.6 s, several polls
    collector = TickCollector()
    gw = Gateway(plant, transport, [collector], queue_path=path, clock=clock, publish_window=WINDOW)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        while gw.queue.depth()[0] or gw.polls < 3:
            await asyncio.sleep(0.02)
        stop.set()
        await task

    asyncio.run(main())
    seqs = [b.seq for b in transport.published]
    assert sorted(seqs) == sorted(set(seqs)) == list(range(1, max(seqs) + 1))
    first_live = next(i for i, s in enumerate(seqs) if s > 150)
    assert first_live < 150  # a live poll went out while the backlog was still draining
    assert seqs[:first_live] == list(range(1, first_live + 1))  # the backlog, oldest first
    live_ticks = [p.ts_ms for b in transport.published if b.seq > 150 for p in b.points]
    assert live_ticks == collector.ticks  # every live poll delivered, in order
