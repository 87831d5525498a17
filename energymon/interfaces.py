"""The small interfaces between stages. Each states who calls it, how often, and whether calls overlap.

Data flows ``Collector → Gateway → Transport → Processor → Store`` and ``Processor → AlertEngine → Notifier``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from energymon.schema import Point

__all__ = [
    "Clock",
    "Collector",
    "Message",
    "ProbingCollector",
    "PushCollector",
    "ReadingsSource",
    "Row",
    "SeriesKey",
    "Store",
    "Transport",
    "series_key",
]


class Clock(Protocol):
    """Source of event time. The demo's clock may run faster than the wall clock."""

    def now_ms(self) -> int:
        """Current event time in ms since the epoch (UTC)."""
        ...

    def speed(self) -> float:
        """Simulated seconds per real second (1.0 for the wall clock)."""
        ...


@runtime_checkable
class Collector(Protocol):
    """A polled source: one bus (Modbus TCP server, serial line) with the meters behind it.

    The gateway calls :meth:`start` once, then :meth:`poll` once per tick of each poll group the collector
    serves. Calls to :meth:`poll` never overlap for one collector (one connection per bus, requests serialised).
    :meth:`stop` is called once, after the last :meth:`poll` has returned.
    """

    name: str

    async def start(self) -> None:
        """Prepare (no blocking connect: a bus that is down must not stop the gateway starting)."""
        ...

    async def poll(self, group: str, ts_ms: int) -> list[Point]:
        """Read every meter of ``group``; a meter that fails yields quality-bad points, never an exception."""
        ...

    async def stop(self) -> None:
        """Close connections."""
        ...


@runtime_checkable
class ProbingCollector(Collector, Protocol):
    """A polled collector that reads its failing meters only in its bus's spare time.

    The gateway runs one schedule per such collector. On each tick it calls :meth:`poll` with ``until_ms``,
    the bus's next tick: the meters that answer are read first, failing ones only if they fit before
    ``until_ms``. Between ticks it calls :meth:`probe` whenever :meth:`next_probe_ms` comes due, so an offline
    meter is probed on its own cadence and a recovered one is read at once. Calls never overlap.
    """

    @property
    def groups(self) -> list[str]:
        """Poll groups the collector has meters in."""
        ...

    async def poll(self, group: str, ts_ms: int, *, until_ms: int | None = None) -> list[Point]:
        """Read ``group``'s meters, healthy ones first, failing ones only if they fit before ``until_ms``."""
        ...

    async def probe(self, until_ms: int) -> list[Point]:
        """Probe due offline meters whose worst case ends before ``until_ms``; the points of those that answered."""
        ...

    def next_probe_ms(self) -> int | None:
        """Event time at which an offline meter is next due for a probe (None: none is offline)."""
        ...


@runtime_checkable
class PushCollector(Protocol):
    """A source that pushes readings (MQTT JSON meters). ``emit`` may be called from any thread."""

    name: str

    async def start(self, emit: Callable[[list[Point]], None]) -> None:
        """Subscribe and start calling ``emit`` with decoded points."""
        ...

    async def stop(self) -> None:
        """Unsubscribe; no ``emit`` call starts after this returns."""
        ...


@dataclass(frozen=True, slots=True)
class Message:
    """A message received from a :class:`Transport`.

    ``ack`` confirms it to the broker (MQTT PUBACK). Receivers call it once the message's effect is durable
    (written to the store), so a crash before that makes the broker redeliver.
    """

    topic: str
    payload: bytes
    ack: Callable[[], None] = field(default=lambda: None)


class Transport(Protocol):
    """The message bus between stages: MQTT (paho) or in-process.

    :meth:`publish` returns once the broker has acknowledged a QoS 1 message. Handlers passed to
    :meth:`subscribe` run on the transport's delivery thread, one message at a time, in arrival order.
    """

    async def connect(self) -> None:
        """Connect (retrying in the background if the broker is down)."""
        ...

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish and wait for the broker's acknowledgement (QoS 1), raising TransportError on failure."""
        ...

    def subscribe(self, topic_filter: str, handler: Callable[[Message], None], *, qos: int = 1) -> None:
        """Deliver matching messages to ``handler``; must be called before :meth:`connect`."""
        ...

    async def close(self) -> None:
        """Disconnect cleanly."""
        ...


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """A store series: measurement plus tags, with its line-protocol prefix computed once."""

    measurement: str
    tags: tuple[tuple[str, str], ...]
    lp: str


def _escape_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def series_key(measurement: str, **tags: str) -> SeriesKey:
    """Build a :class:`SeriesKey`; tags are sorted (line protocol's canonical order). Empty tags are dropped."""
    items = tuple(sorted((k, v) for k, v in tags.items() if v))
    meas = measurement.replace(",", "\\,").replace(" ", "\\ ")
    lp = meas + "".join(f",{_escape_tag(k)}={_escape_tag(v)}" for k, v in items)
    return SeriesKey(measurement, items, lp)


#: One stored sample set: (series, {field: value}, event time in ms).
Row = tuple[SeriesKey, dict[str, float], int]


class Store(Protocol):
    """Time-series store. One writer thread calls :meth:`write`; writes of the same (series, field, time)
    overwrite (so a replayed batch stores nothing twice).
    """

    def write(self, rows: Sequence[Row]) -> None:
        """Write rows durably, raising StoreError if the store refused them."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class ReadingsSource(Protocol):
    """Read access every store offers (SQLite, InfluxDB through InfluxQL, VictoriaMetrics).

    The report, the scheduled recompute and the provincial uplink read counter readings through it; the live
    page builds its reader on it. Calls may come from several threads.
    """

    def query(
        self,
        measurement: str,
        field: str,
        *,
        tags: dict[str, str] | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> list[tuple[dict[str, str], int, float]]:
        """``(tags, ts_ms, value)`` of one field of the series carrying all of ``tags`` (``""`` matches series
        without the tag), in ``[start_ms, end_ms)``, sorted by tags then time; raises ``StoreError``."""
        ...

    def describe(self) -> str:
        """Kind and location of the store, without credentials."""
        ...

    def close(self) -> None:
        """Release files and connections."""
        ...
