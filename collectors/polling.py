"""Failure handling shared by the polled collectors (:mod:`~energymon.collectors.modbus`,
:mod:`~energymon.collectors.dlt645`): one bus, one connection to it, and the meters behind it.

What is the same whatever the protocol lives here; a collector module keeps only its protocol (framing,
requests, decoding, what counts as busy or as an exception, how a connection is opened):

* :class:`PollPolicy`: the thresholds and windows below, with defaults that suit a plant;
* :class:`DeviceHealth`: one meter's consecutive failures and probe cadence. A meter whose last poll failed is
  read after the healthy meters, in the time left before the bus's next tick; one that failed
  ``fail_threshold`` polls in a row is offline and probed with one request and no retries every
  ``probe_interval_secs``, between ticks too. Its drop is logged once at WARNING with the error, its recovery
  once at INFO, and ``device_up`` follows;
* :class:`BusHealth`: the connection's state. A failed connect waits a capped exponential back-off with
  jitter, during which the bus's meters fail at once, without a request; a socket (or serial) error closes
  the connection and the next read reconnects at once; ``timeouts_before_reconnect`` timeouts in a row on a
  TCP link rebuild it (it may be half-open). Bus down and up are logged once each;
* :class:`PollingCollector`: the collector skeleton on top of them: poll groups, :meth:`~PollingCollector.poll`
  over a group's meters (healthy ones first) and :meth:`~PollingCollector.probe` between ticks, under the bus
  lock, with the ``poll_duration`` histogram and the ``collector`` stage counters (``received``: values read;
  ``sent``: points handed on, a failed meter's quality-bad ones included; ``errors`` by class),
  :meth:`~PollingCollector.stop`, and the connection it keeps.

Messages are logged on the collector module's logger (passed in), so they read and filter as before.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar

from energymon.clock import WallClock
from energymon.errors import ConnectionLostError, SourceError
from energymon.interfaces import Clock
from energymon.metrics import PipelineMetrics
from energymon.schema import Point, Quality

if TYPE_CHECKING:
    from energymon.config import BusPolling

__all__ = [
    "BusHealth",
    "DeviceHealth",
    "OpenFailedError",
    "PollPolicy",
    "PolledDevice",
    "PollingCollector",
    "bad_points",
]


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """How a polled bus reacts to failures. The defaults are those of the plant file's ``polling`` block
    (:class:`~energymon.config.BusPolling`); :meth:`for_bus` builds one from it; tests shorten the windows.

    Protocols with more knobs subclass it (:class:`~energymon.collectors.modbus.ModbusPolicy`).

    Attributes:
        fail_threshold: failed polls in a row after which a meter is offline: only probed, with no retries.
        probe_interval_secs: event time between two probes of an offline meter.
        reconnect_min_secs: wait before the second connect (open) attempt; doubles on each failure (with jitter).
        reconnect_max_secs: cap of the reconnect wait.
        timeouts_before_reconnect: timeouts in a row on the whole bus, without any answer in between, after
            which a TCP connection is rebuilt (it may be half-open). Not applied to serial lines.
    """

    fail_threshold: int = 3
    probe_interval_secs: float = 10.0
    reconnect_min_secs: float = 1.0
    reconnect_max_secs: float = 15.0
    timeouts_before_reconnect: int = 5

    @classmethod
    def for_bus(cls, settings: BusPolling, **extra: Any) -> Self:
        """The policy of a bus's ``polling`` block; ``extra`` sets a subclass's own attributes."""
        return cls(
            fail_threshold=settings.fail_threshold,
            probe_interval_secs=settings.probe_interval_secs,
            reconnect_min_secs=settings.reconnect_backoff_first_secs,
            reconnect_max_secs=settings.reconnect_backoff_max_secs,
            **extra,
        )


class DeviceHealth:
    """The failure state of one meter on a bus, and its transitions.

    A meter is *healthy* until a poll fails, then *failing* (:attr:`failing`): the collector reads it after the
    healthy meters, in the bus's spare time. After ``fail_threshold`` counted failures in a row it is *offline*
    (:attr:`offline`): it is read with no retries (a probe), at most once per ``probe_interval_secs`` of event
    time (:meth:`due`). :meth:`ok` makes it healthy again.

    Contract: read the meter only when :meth:`due`, with :meth:`retries` retries, then report exactly one
    outcome: :meth:`ok` or :meth:`failed`. A failure that ``counts`` (the meter itself did not answer, as
    opposed to the bus being unreachable) adds to the failures in a row. The drop is logged once at WARNING and
    the recovery once at INFO, as ``"<label> on bus <bus> unavailable: <error>"`` / ``"<label> on bus <bus>
    recovered"``, and the ``device_up`` gauge of the meter is set to 0 / 1 on each change (1 also on the first
    success).

    Attributes:
        meter_id: the meter's id (the ``device_up`` label).
        label: how messages name the meter, e.g. ``meter m1 (unit 1)``.
        failures: counted failures in a row.
        probe_at_ms: event time from which an offline meter may be probed again.
        up: None before the first outcome, then whether the last one was a success.
    """

    __slots__ = ("_bus_id", "_clock", "_log", "_metrics", "_policy", "failures", "forced_probe", "label",
                 "last_try_ms", "last_try_real", "meter_id", "probe_at_ms", "up")

    def __init__(
        self,
        meter_id: str,
        label: str,
        *,
        bus_id: str,
        policy: PollPolicy,
        log: logging.Logger,
        metrics: PipelineMetrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.meter_id = meter_id
        self.label = label
        self.failures = 0
        self.probe_at_ms = 0
        self.last_try_ms = 0
        self.last_try_real = 0.0
        self.forced_probe = False
        self.up: bool | None = None
        self._bus_id = bus_id
        self._policy = policy
        self._log = log
        self._metrics = metrics
        self._clock: Clock = clock or WallClock()

    @property
    def failing(self) -> bool:
        """Whether the meter's last poll failed (it is read after the healthy meters)."""
        return self.up is False

    @property
    def offline(self) -> bool:
        """Whether the meter failed ``fail_threshold`` polls in a row (it is only probed)."""
        return self.failures >= self._policy.fail_threshold

    def due(self, now_ms: int) -> bool:
        """Whether the meter may be read at event time ``now_ms``: always, unless offline and probed recently."""
        return not self.offline or now_ms >= self.probe_at_ms

    def starved(self, now_ms: int) -> bool:
        """Whether the failing meter went a probe interval without a request (the bus never had the time).

        Counted in event time and in real time both, so on a fast simulated clock a forced request (which costs
        real time) is not sent more often than once per real probe interval."""
        interval = self._policy.probe_interval_secs
        return (now_ms - self.last_try_ms >= round(interval * 1000)
                and time.monotonic() - self.last_try_real >= interval)

    def retries(self, configured: int) -> int:
        """Retries for this poll: none for an offline meter or a forced probe (one request), else ``configured``."""
        return 0 if self.offline or self.forced_probe else configured

    def failed(self, exc: SourceError, *, counts: bool) -> None:
        """The meter failed this poll with ``exc``; ``counts`` adds it to the failures in a row."""
        self.last_try_ms = self._clock.now_ms()
        self.last_try_real = time.monotonic()
        if counts:
            self.failures += 1
            if self.offline:
                self.probe_at_ms = self._clock.now_ms() + round(self._policy.probe_interval_secs * 1000)
        if self.up is not False:
            self._log.warning("%s on bus %s unavailable: %s", self.label, self._bus_id, exc)
            self.up = False
            if self._metrics is not None:
                self._metrics.device_up.labels(self.meter_id).set(0)

    def ok(self) -> None:
        """The meter answered this poll: it is healthy again."""
        self.last_try_ms = self._clock.now_ms()
        self.last_try_real = time.monotonic()
        self.failures = 0
        self.probe_at_ms = 0
        if self.up is not True:
            if self.up is False:
                self._log.info("%s on bus %s recovered", self.label, self._bus_id)
            self.up = True
            if self._metrics is not None:
                self._metrics.device_up.labels(self.meter_id).set(1)


class BusHealth:
    """The state of one bus's connection: connect back-off, bus up/down, timeouts in a row.

    Contract: report each connect attempt with :meth:`connected` or :meth:`connect_failed`, a socket (serial)
    error with :meth:`broken`, each request that timed out with :meth:`timed_out` and each request that got an
    answer with :meth:`answered`. The ``connect_failed`` / ``broken`` / :meth:`lost` methods return the
    :class:`~energymon.errors.ConnectionLostError` to raise. After the n-th failed connect in a row, the next
    attempt waits ``min(reconnect_max_secs, reconnect_min_secs * 2 ** (n - 1))`` times a random factor in
    [0.5, 1); meanwhile :meth:`refusing` gives the error to fail meters with at once. After a break the next
    attempt is immediate. The bus going down is logged once at WARNING (``"bus <id>: <message>"``), coming back
    once at INFO (``"bus <id>: connected to <where> again"``); a first connect is not logged.

    Attributes:
        where: how messages name the far end (``host:port`` or the serial device).
        connect_failures: failed connects in a row.
        reconnect_at: ``time.monotonic()`` before which no connect is attempted (0: at once).
        error: the error the bus last went down with; None while connected.
        up: None before the first attempt, then whether the bus is connected.
        timeouts_in_row: requests in a row that timed out on this bus.
    """

    __slots__ = ("_bus_id", "_log", "_policy", "_random", "_rebuild", "connect_failures", "error",
                 "reconnect_at", "timeouts_in_row", "up", "where")

    def __init__(
        self, bus_id: str, where: str, *, policy: PollPolicy, log: logging.Logger, rebuild_on_timeouts: bool
    ) -> None:
        """``rebuild_on_timeouts``: a half-open link is possible (TCP), so many timeouts in a row rebuild it."""
        self.where = where
        self.connect_failures = 0
        self.reconnect_at = 0.0
        self.error: ConnectionLostError | None = None
        self.up: bool | None = None
        self.timeouts_in_row = 0
        self._bus_id = bus_id
        self._policy = policy
        self._log = log
        self._rebuild = rebuild_on_timeouts
        self._random = random.Random()

    def refusing(self, now: float) -> ConnectionLostError | None:
        """While a failed connect's back-off runs at ``now``, the error the bus went down with; else None."""
        return self.error if now < self.reconnect_at else None

    def connected(self) -> None:
        """A connect succeeded."""
        self.connect_failures = 0
        self.timeouts_in_row = 0
        if self.up is False:
            self._log.info("bus %s: connected to %s again", self._bus_id, self.where)
        self.up = True
        self.error = None

    def connect_failed(self, message: str) -> ConnectionLostError:
        """A connect failed: start (or grow) the back-off; return the error to raise."""
        self.connect_failures += 1
        delay = min(
            self._policy.reconnect_max_secs,
            self._policy.reconnect_min_secs * 2 ** (self.connect_failures - 1),
        )
        self.reconnect_at = time.monotonic() + delay * self._random.uniform(0.5, 1.0)
        return self.lost(message)

    def broken(self, message: str) -> ConnectionLostError:
        """An open connection failed (the caller closes it); the next read reconnects at once."""
        self.reconnect_at = 0.0
        return self.lost(message)

    def lost(self, message: str) -> ConnectionLostError:
        """The bus is down with ``message``: log it if it was not down already; return the error to raise."""
        err = ConnectionLostError(self._bus_id, message)
        self.error = err
        if self.up is not False:
            self._log.warning("bus %s: %s", self._bus_id, message)
            self.up = False
        return err

    def timed_out(self) -> bool:
        """A request got no answer. Returns whether the connection should now be rebuilt (it may be half-open)."""
        self.timeouts_in_row += 1
        return self._rebuild and self.timeouts_in_row >= self._policy.timeouts_before_reconnect

    def answered(self) -> None:
        """A request got an answer (of any kind): the link carries bytes both ways."""
        self.timeouts_in_row = 0


def bad_points(meter_id: str, quantities: Iterable[tuple[str, str]], ts_ms: int) -> list[Point]:
    """Quality-bad points without a value (never 0) for ``(quantity, unit)`` pairs of a meter."""
    return [
        Point(meter=meter_id, quantity=q, value=None, unit=u, ts_ms=ts_ms, quality=Quality.BAD)
        for q, u in quantities
    ]


class OpenFailedError(Exception):
    """Raised by :meth:`PollingCollector._open` when the bus cannot be reached; the message says why."""


class PolledDevice(Protocol):
    """What :class:`PollingCollector` needs of a collector's device record: its :class:`DeviceHealth`."""

    @property
    def health(self) -> DeviceHealth:
        """The meter's failure state."""
        ...


DeviceT = TypeVar("DeviceT", bound=PolledDevice)
ConnT = TypeVar("ConnT")


class PollingCollector(ABC, Generic[DeviceT, ConnT]):
    """Skeleton of a collector for one polled bus: its meters by poll group, one connection, the failure policy.

    Satisfies :class:`energymon.interfaces.Collector` and :class:`energymon.interfaces.ProbingCollector`.
    Lifecycle: :meth:`start` once (opens nothing; the first poll connects), :meth:`poll` once per tick of each
    poll group and :meth:`probe` between ticks (calls come from one task, the bus's schedule; reads are
    serialised by a lock regardless), :meth:`stop` once at the end.

    A subclass registers its devices with :meth:`_add_device` and implements the protocol:

    * :meth:`_open`, :meth:`_alive`, :meth:`_close`: the connection (``ConnT``);
    * :meth:`_query_device`: read a meter that is due (see :class:`DeviceHealth`) and not behind a bus that waits to
      reconnect;
      it reports the outcome with ``dev.health.ok()`` or :meth:`_device_error` and never raises a
      :class:`~energymon.errors.SourceError`;
    * :meth:`_bad_points`: the quality-bad points of all a meter's quantities.

    Helpers for it: :meth:`_connected` (the open connection, opening it now if needed), :meth:`_connection_broken`,
    :meth:`_timed_out`, :meth:`_count_error`.
    """

    def __init__(
        self,
        bus_id: str,
        where: str,
        *,
        policy: PollPolicy,
        log: logging.Logger,
        metrics: PipelineMetrics | None,
        clock: Clock | None,
        rebuild_on_timeouts: bool,
        timeout_ms: int,
        retries: int,
    ) -> None:
        self.name = bus_id
        self._policy = policy
        self._log = log
        self._clock: Clock = clock or WallClock()
        self._metrics = metrics
        self._stage = metrics.stage("collector") if metrics else None
        self._groups: dict[str, list[DeviceT]] = {}
        self._devices: list[DeviceT] = []
        self._lock = asyncio.Lock()
        self._conn: ConnT | None = None
        self._timeout_ms = timeout_ms
        self._retries = retries
        self._bus_health = BusHealth(bus_id, where, policy=policy, log=log, rebuild_on_timeouts=rebuild_on_timeouts)

    @property
    def groups(self) -> list[str]:
        """Poll groups this collector has meters in."""
        return list(self._groups)

    async def start(self) -> None:
        """Nothing to open: the first poll connects, so a bus that is down does not stop the gateway."""

    async def poll(self, group: str, ts_ms: int, *, until_ms: int | None = None) -> list[Point]:
        """Read the meters of ``group``: the healthy ones first, then those failing, in the time left.

        Every healthy meter (its last poll answered, or not polled yet) is read, one after another, in the
        plant file's order. Then each failing meter that is :meth:`~DeviceHealth.due` is read if its worst
        case (:meth:`worst_read_ms`) ends before ``until_ms``; one that is not read this tick (not due, or
        no time left) gives quality-bad points without a request. A failing meter whose worst case is longer
        than a whole interval (a fast simulated clock), and that went a probe interval without a request
        (:meth:`~DeviceHealth.starved`), is sent one request anyway, after the healthy meters, one such a tick.

        Args:
            group: the poll group that ticked.
            ts_ms: the tick's time; points carry the time their reply arrived instead (drift-free event time).
            until_ms: event time of the bus's next tick (None: no limit, every due meter is read).

        Returns:
            Points of every quantity of every meter of the group; a failed meter's (or item's) are quality bad.
        """
        devices = self._groups.get(group, [])
        started = time.perf_counter()
        points: list[Point] = []
        failing: list[DeviceT] = []
        for device in devices:
            if device.health.failing:
                failing.append(device)
                continue
            async with self._lock:
                points.extend(await self._read_device(device))
        forced = False
        for device in failing:
            health = device.health
            now = self._clock.now_ms()
            if health.due(now) and self._fits(device, until_ms):
                async with self._lock:
                    points.extend(await self._read_device(device))
            elif (not forced and until_ms is not None and health.due(now) and health.starved(now)
                  and (until_ms - ts_ms) / self._clock.speed() < self.worst_read_ms(health)):
                # even an idle interval could not hold its worst case (a fast clock): one request anyway, after
                # the healthy meters and at most one a tick, so the meter is not left unread for good
                forced = True
                health.forced_probe = True
                try:
                    async with self._lock:
                        points.extend(await self._read_device(device))
                finally:
                    health.forced_probe = False
            else:
                points.extend(self._bad_points(device))
        if self._metrics is not None and self._stage is not None and devices:
            self._metrics.poll_duration.labels(group).observe(time.perf_counter() - started)
            self._stage.received(sum(1 for p in points if p.value is not None))
            self._stage.sent(len(points))  # every point goes on, a failed meter's as quality bad (no value)
        return points

    async def probe(self, until_ms: int) -> list[Point]:
        """Between ticks: probe every offline meter that is due, while its worst case ends before ``until_ms``.

        Returns the points of the meters that answered (a recovered meter's reading is not held back to the
        next tick); a probe that fails gives nothing (the meter's ticks give its quality-bad points).
        """
        points: list[Point] = []
        for device in self._devices:
            health = device.health
            if not health.offline or not health.due(self._clock.now_ms()):
                continue
            if not self._fits(device, until_ms):
                break
            async with self._lock:
                read = await self._read_device(device)
            if health.up:
                points.extend(read)
        if points and self._stage is not None:
            self._stage.received(sum(1 for p in points if p.value is not None))
            self._stage.sent(len(points))
        return points

    def next_probe_ms(self) -> int | None:
        """Event time at which the next offline meter is due for a probe; None when none is offline."""
        return min((d.health.probe_at_ms for d in self._devices if d.health.offline), default=None)

    def worst_read_ms(self, health: DeviceHealth) -> float:
        """Real milliseconds a failing meter's read can take: a connect (if none is open) and every try timing
        out (one for an offline meter's probe), with a tenth more for the replies before the one that does
        not come."""
        tries = health.retries(self._retries) + 1
        connect = self._timeout_ms if self._conn is None else 0
        return (connect + tries * self._timeout_ms) * 1.1

    def _fits(self, dev: DeviceT, until_ms: int | None) -> bool:
        """Whether ``dev``'s worst case ends before event time ``until_ms`` (None: always)."""
        if until_ms is None:
            return True
        left_real_ms = (until_ms - self._clock.now_ms()) / self._clock.speed()
        return left_real_ms >= self.worst_read_ms(dev.health)

    async def stop(self) -> None:
        """Close the connection (or the serial line)."""
        async with self._lock:
            self._drop_conn()

    # ----------------------------------------------------------------------------------- for subclasses

    def _add_device(self, group: str, device: DeviceT) -> None:
        self._groups.setdefault(group, []).append(device)
        self._devices.append(device)

    def _new_health(self, meter_id: str, label: str) -> DeviceHealth:
        """A :class:`DeviceHealth` on this bus, with this collector's policy, logger, metrics and clock."""
        return DeviceHealth(meter_id, label, bus_id=self.name, policy=self._policy, log=self._log,
                            metrics=self._metrics, clock=self._clock)

    @abstractmethod
    async def _query_device(self, dev: DeviceT) -> list[Point]:
        """Read ``dev``'s values and report the outcome to its health (see the class docstring)."""

    @abstractmethod
    def _bad_points(self, dev: DeviceT) -> list[Point]:
        """Quality-bad points for every quantity of ``dev``."""

    @abstractmethod
    async def _open(self) -> ConnT:
        """Open a new connection.

        Raises:
            OpenFailedError: the bus cannot be reached; the message (``cannot connect to ...``) is logged.
        """

    @abstractmethod
    def _alive(self, conn: ConnT) -> bool:
        """Whether an open connection is still usable (not closed by the peer)."""

    @abstractmethod
    def _close(self, conn: ConnT) -> None:
        """Close a connection."""

    async def _read_device(self, dev: DeviceT) -> list[Point]:
        now = time.monotonic()
        health = dev.health
        if not health.due(self._clock.now_ms()):
            return self._bad_points(dev)
        if self._conn is None and (err := self._bus_health.refusing(now)) is not None:
            health.failed(err, counts=False)
            return self._bad_points(dev)
        return await self._query_device(dev)

    def _device_error(self, dev: DeviceT, exc: SourceError) -> None:
        """``dev`` failed this poll with ``exc``: count it; it counts towards back-off unless the bus failed."""
        self._count_error(exc)
        dev.health.failed(exc, counts=not isinstance(exc, ConnectionLostError))

    def _count_error(self, exc: SourceError) -> None:
        if self._stage is not None:
            self._stage.error(exc)

    async def _connected(self) -> ConnT:
        """Return an open connection, opening it now if needed.

        Raises:
            ConnectionLostError: the bus cannot be reached; the next attempt waits a back-off.
        """
        if self._conn is not None:
            if self._alive(self._conn):
                return self._conn
            self._drop_conn()  # closed by the peer (e.g. an idle timeout): reconnect quietly
        try:
            conn = await self._open()
        except OpenFailedError as exc:
            raise self._bus_health.connect_failed(str(exc)) from None
        self._conn = conn
        self._bus_health.connected()
        return conn

    def _connection_broken(self, message: str) -> ConnectionLostError:
        """A read hit a socket (serial) error: close the connection; the next read reconnects at once."""
        self._drop_conn()
        return self._bus_health.broken(message)

    def _timed_out(self) -> bool:
        """Count a request without an answer; past the bus's limit, drop the connection and return True."""
        if self._bus_health.timed_out():
            self._drop_conn()  # maybe half-open: rebuild it on the next read
            return True
        return False

    def _drop_conn(self) -> None:
        if self._conn is not None:
            self._close(self._conn)
            self._conn = None
