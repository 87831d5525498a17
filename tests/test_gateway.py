"""Gateway: the outbox is durable and its sequence numbers never repeat; polls are aligned to the clock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from energymon.clock import ScaledClock
from energymon.config import load_plant
from energymon.demo import example_plant_path
from energymon.gateway.gateway import Gateway
from energymon.gateway.queue import OutboundQueue
from energymon.interfaces import Message
from energymon.schema import Point, decode_batch


def test_outbox_survives_reopen_and_never_reuses_seq(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    q = OutboundQueue(path)
    seqs = [q.put(lambda s: f"batch {s}".encode(), 1000 + s, 10) for s in range(3)]
    assert seqs == [1, 2, 3]
    q.remove([1, 2, 3])
    q.close()
    q = OutboundQueue(path)
    assert q.depth() == (0, 0)
    seq = q.put(lambda s: f"batch {s}".encode(), 2000, 5)
    assert seq == 4  # AUTOINCREMENT: a number acknowledged before a restart is never handed out again
    q.close()
    q = OutboundQueue(path)
    assert q.peek(10) == [(4, 5, b"batch 4")] and q.depth() == (1, 5) and q.oldest_ms() == 2000
    q.close()


class FakeCollector:
    """Returns one point per poll and records the tick times it was asked for."""

    name = "fake"

    def __init__(self) -> None:
        self.ticks: list[int] = []

    async def start(self) -> None:
        pass

    async def poll(self, group: str, ts_ms: int) -> list[Point]:
        self.ticks.append(ts_ms)
        return [Point(meter="incoming", quantity="power_active", value=1.0, unit="kW", ts_ms=ts_ms)]

    async def stop(self) -> None:
        pass


class RecordingTransport:
    """Accepts publishes (optionally failing the first ones) and records what got through."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.published: list[tuple[str, bytes, bool]] = []

    async def connect(self) -> None:
        pass

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        from energymon.errors import TransportError

        if self.fail_first > 0 and not retain:
            self.fail_first -= 1
            raise TransportError("broker down")
        self.published.append((topic, payload, retain))

    def subscribe(self, topic_filter: str, handler: Callable[[Message], None], *, qos: int = 1) -> None:
        pass

    async def close(self) -> None:
        pass


def test_ticks_are_aligned_and_nothing_is_lost_when_publishing_fails(tmp_path: Path) -> None:
    plant = load_plant(example_plant_path())  # poll group 'fast' every 5 s
    clock = ScaledClock(datetime.now(UTC), 50.0)  # 5 simulated seconds = 0.1 s
    collector = FakeCollector()
    transport = RecordingTransport(fail_first=3)
    gw = Gateway(plant, transport, [collector], queue_path=tmp_path / "q.sqlite", clock=clock)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        while gw.polls < 8:
            await asyncio.sleep(0.02)
        stop.set()
        await task

    asyncio.run(main())
    assert all(t % 5000 == 0 for t in collector.ticks)
    assert collector.ticks == sorted(set(collector.ticks))
    readings = [decode_batch(p) for t, p, r in transport.published if t.endswith("/readings")]
    got = [pt.ts_ms for b in readings for pt in b.points]
    assert got == collector.ticks  # every tick delivered once, in order, despite three failed publishes
    assert [b.seq for b in readings] == sorted({b.seq for b in readings})
    status = [p for t, p, r in transport.published if t.endswith("/status")]
    assert status[0] == b"online" and status[-1] == b"offline"


class SwitchableTransport(RecordingTransport):
    """Refuses every publish while ``down``; ``connect`` raises ``refuse`` if set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.refuse: Exception | None = None

    async def connect(self) -> None:
        if self.refuse is not None:
            raise self.refuse

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        from energymon.errors import TransportError

        if self.down:
            raise TransportError("broker down")
        self.published.append((topic, payload, retain))


def test_polling_starts_while_the_broker_is_down_and_everything_is_delivered_later(tmp_path: Path) -> None:
    plant = load_plant(example_plant_path())
    clock = ScaledClock(datetime.now(UTC), 50.0)
    collector = FakeCollector()
    transport = SwitchableTransport()
    gw = Gateway(plant, transport, [collector], queue_path=tmp_path / "q.sqlite", clock=clock)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        while gw.polls < 5:  # the broker is down from the start: collection goes on regardless
            await asyncio.sleep(0.02)
        assert transport.published == [] and gw.queue.depth()[0] >= 5
        transport.down = False
        while gw.queue.depth()[0] or gw.polls < 8:
            await asyncio.sleep(0.02)
        stop.set()
        await task

    asyncio.run(main())
    readings = [decode_batch(p) for t, p, r in transport.published if t.endswith("/readings")]
    assert sorted(pt.ts_ms for b in readings for pt in b.points) == collector.ticks
    assert len({b.seq for b in readings}) == len(readings)
    status = [p for t, p, r in transport.published if t.endswith("/status")]
    assert status[0] == b"online" and status[-1] == b"offline"


def test_a_broker_that_refuses_the_connection_stops_the_gateway_with_the_error(tmp_path: Path) -> None:
    from energymon.errors import TransportError

    plant = load_plant(example_plant_path())
    collector = FakeCollector()
    transport = SwitchableTransport()
    transport.refuse = TransportError("broker refused the connection: not authorised")
    gw = Gateway(plant, transport, [collector], queue_path=tmp_path / "q.sqlite",
                 clock=ScaledClock(datetime.now(UTC), 50.0))

    async def main() -> None:
        await gw.run(asyncio.Event())

    with pytest.raises(TransportError, match="not authorised"):
        asyncio.run(main())


def test_a_publishing_failure_is_logged_once_and_the_recovery_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that refuses every publish (an ACL) for many retries: one warning, then one line when it works."""
    plant = load_plant(example_plant_path())
    clock = ScaledClock(datetime.now(UTC), 50.0)
    transport = SwitchableTransport()
    transport.down = False
    gw = Gateway(plant, transport, [FakeCollector()], queue_path=tmp_path / "q.sqlite", clock=clock)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        while not transport.published:  # online status first
            await asyncio.sleep(0.01)
        transport.down = True
        while gw.polls < 12:
            await asyncio.sleep(0.02)
        transport.down = False
        while gw.queue.depth()[0]:
            await asyncio.sleep(0.02)
        stop.set()
        await task

    with caplog.at_level(logging.DEBUG, logger="energymon.gateway.gateway"):
        asyncio.run(main())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "publishing fails" in r.getMessage()]
    debug_retries = [r for r in caplog.records if r.levelno == logging.DEBUG and "retrying in" in r.getMessage()]
    again = [r for r in caplog.records if "publishing again" in r.getMessage()]
    assert len(warnings) == 1 and "broker down" in warnings[0].getMessage()
    assert debug_retries, "later failures of the same episode are only debug lines"
    assert len(again) == 1
