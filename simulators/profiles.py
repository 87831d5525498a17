"""Deterministic meter behaviour over event time: load profiles, exact counters and faults.

Everything here is a function of *event time* (milliseconds since the epoch, UTC), never of how often or in
which order it is asked: a value at ``t`` is the same whether a poller reads every second or once a day, and
two models built with the same seed agree to the last bit.

* :class:`Noise`: band-limited relative noise, a few slow sinusoids plus a bounded random walk (smooth value
  noise on a grid of knots), seeded per meter.
* :class:`Schedule`: when equipment runs: daily stops in plant local time (e.g. a cement mill that stops for
  the peak tariff), one-off :class:`Outage` windows, and linear shutdown / start-up ramps around each.
* :class:`LoadProfile`: ``base × level(schedule, idle) × (1 + noise)``, the rate (kW, t/h, Nm3/h...) at any
  time.
* :class:`CounterState`: the counter that integrates a rate over event time on a fixed grid (midpoint rule,
  linear inside a cell), so energy and power agree, the counter never runs backwards between events, and
  counter events (reset, replacement, a jump to just below the rollover point) shift it from their time on.
* Faults (:data:`Fault`): small frozen dataclasses a :class:`~energymon.simulators.plant.PlantModel` applies
  per meter: :class:`NoAnswer`, :class:`ExceptionReply`, :class:`DroppedConnection`, :class:`Stuck`,
  :class:`Spike`, :class:`CounterReset`, :class:`Rollover`, :class:`Replacement`.

Example::

    >>> from datetime import UTC, datetime, time
    >>> from energymon.schema import datetime_to_ms
    >>> mill = LoadProfile(base=9000.0, schedule=Schedule(daily_stops=(DailyStop(time(8), time(11)),)))
    >>> nine = datetime_to_ms(datetime(2025, 1, 6, 1, 0, tzinfo=UTC))   # 09:00 in Asia/Shanghai
    >>> mill.rate(nine)
    0.0
    >>> 8500 < mill.rate(nine - 6 * 3_600_000) < 9500                 # 03:00 local: grinding
    True
    >>> energy = CounterState(mill.rate, start=1000.0, origin_ms=nine)
    >>> energy.value(nine + 3_600_000)                                 # stopped until 11:00
    1000.0
"""

from __future__ import annotations

import bisect
import math
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "EXCEPTION_CODES",
    "CounterEventFault",
    "CounterReset",
    "CounterState",
    "DailyStop",
    "DroppedConnection",
    "ExceptionReply",
    "Fault",
    "LoadProfile",
    "NoAnswer",
    "Noise",
    "Outage",
    "ProtocolFault",
    "Replacement",
    "Rollover",
    "Schedule",
    "Spike",
    "Stuck",
    "WindowFault",
    "derive_seed",
]

_MS_PER_HOUR = 3_600_000
_DAY_S = 86_400
_MASK64 = (1 << 64) - 1

#: Modbus exception codes a simulated device may answer with (pymodbus ``ExcCodes`` values).
EXCEPTION_CODES = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 10, 11})


def derive_seed(seed: int, *parts: str) -> int:
    """A stable 32-bit seed for one purpose of one meter (independent of ``PYTHONHASHSEED``).

    >>> derive_seed(0, "incoming", "noise") == derive_seed(0, "incoming", "noise")
    True
    >>> derive_seed(0, "incoming") != derive_seed(1, "incoming")
    True
    """
    return zlib.crc32("\x1f".join((str(seed), *parts)).encode())


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _knot(seed: int, n: int) -> float:
    """Uniform value in [-1, 1) for knot ``n``: random access, no state."""
    return _splitmix((seed << 32) ^ (n & _MASK64)) / 2.0**63 - 1.0


# --------------------------------------------------------------------------- noise


@dataclass(frozen=True, slots=True)
class Noise:
    """Relative, band-limited noise: ``value(t)`` stays within ``[-amplitude, amplitude]``.

    Three slow sinusoids (periods 10 min to 4 h, weight 0.6 together) plus a bounded random walk: value noise
    with smoothstep interpolation between random knots 97 s and 1,307 s apart (weights 0.25 and 0.15). It is
    continuous in time and a pure function of ``(seed, t)``.

    Attributes:
        amplitude: largest relative deviation (0.02 = ±2 %); 0 disables the noise.
        seed: reproducibility seed; use :func:`derive_seed` to give each meter its own.

    >>> n = Noise(amplitude=0.02, seed=7)
    >>> n.value(1_763_880_000_000) == Noise(amplitude=0.02, seed=7).value(1_763_880_000_000)
    True
    >>> abs(n.value(1_763_880_000_000)) <= 0.02
    True
    """

    amplitude: float = 0.02
    seed: int = 0
    _waves: tuple[tuple[float, float, float], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.amplitude) and 0 <= self.amplitude < 1):
            raise ValueError(f"noise amplitude must be in [0, 1), got {self.amplitude}")
        rng = random.Random(self.seed)
        raw = []
        for _ in range(3):
            period = math.exp(rng.uniform(math.log(600), math.log(14_400)))
            raw.append((2 * math.pi / period, rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 1.0)))
        total = sum(w for _, _, w in raw)
        object.__setattr__(self, "_waves", tuple((omega, phase, 0.6 * w / total) for omega, phase, w in raw))

    def value(self, ts_ms: int) -> float:
        """Relative deviation at event time ``ts_ms``."""
        if self.amplitude == 0:
            return 0.0
        t = ts_ms / 1000.0
        total = 0.0
        for omega, phase, weight in self._waves:
            total += weight * math.sin(omega * t + phase)
        total += 0.25 * self._walk(t / 97.0, 1) + 0.15 * self._walk(t / 1307.0, 2)
        return self.amplitude * total

    def _walk(self, x: float, octave: int) -> float:
        n = math.floor(x)
        f = x - n
        f = f * f * (3.0 - 2.0 * f)
        seed = (self.seed * 4 + octave) & 0xFFFFFFFF
        a = _knot(seed, n)
        return a + (_knot(seed, n + 1) - a) * f


# --------------------------------------------------------------------------- schedules


def _seconds_of_day(value: time) -> int:
    if value.tzinfo is not None:
        raise ValueError("daily stop times are plant local wall-clock times: give them without tzinfo")
    return value.hour * 3600 + value.minute * 60 + value.second


@dataclass(frozen=True, slots=True)
class DailyStop:
    """A stop every day from ``start`` to ``end`` (local time); ``end`` before ``start`` crosses midnight.

    >>> DailyStop(time(17), time(21)).duration_secs
    14400
    >>> DailyStop(time(22), time(6)).duration_secs
    28800
    """

    start: time
    end: time

    def __post_init__(self) -> None:
        if _seconds_of_day(self.start) == _seconds_of_day(self.end):
            raise ValueError("a daily stop needs different start and end times")

    @property
    def duration_secs(self) -> int:
        """Length of the stop."""
        return (_seconds_of_day(self.end) - _seconds_of_day(self.start)) % _DAY_S


@dataclass(frozen=True, slots=True)
class Outage:
    """A one-off stop: stopped from ``start_ms`` for ``duration_secs`` of event time."""

    start_ms: int
    duration_secs: float

    def __post_init__(self) -> None:
        if not (self.duration_secs > 0 and math.isfinite(self.duration_secs)):
            raise ValueError(f"outage duration must be positive and finite, got {self.duration_secs}")

    @property
    def end_ms(self) -> float:
        """End of the stop (event time, ms)."""
        return self.start_ms + self.duration_secs * 1000.0


@lru_cache(maxsize=4096)
def _utc_offset_s(tz_name: str, hour: int) -> float:
    """UTC offset of ``tz_name`` in the UTC hour ``hour`` since the epoch (cached: offsets change rarely)."""
    offset = datetime.fromtimestamp(hour * 3600, ZoneInfo(tz_name)).utcoffset()
    return offset.total_seconds() if offset is not None else 0.0


def _window(x: float, start: float, end: float, down: float, up: float) -> float:
    """Running fraction around one stop: ramp down over ``down`` before ``start``, 0 inside, ramp up after."""
    if x >= end + up or x <= start - down:
        return 1.0
    if x < start:
        return (start - x) / down
    if x <= end:
        return 0.0
    return (x - end) / up


@dataclass(frozen=True, slots=True)
class Schedule:
    """When equipment runs. :meth:`running` is 1 while it runs, 0 while stopped, linear in between.

    A stop window (daily or one-off) is the time the equipment *is* stopped: the shutdown ramp ends when the
    window starts, the start-up ramp begins when it ends. So a mill that must be off for the 08:00 peak
    tariff stops from 07:55 to 08:00 with ``ramp_down_secs=300``.

    Attributes:
        timezone: IANA zone the daily stops are given in (the plant's ``enterprise.timezone``).
        daily_stops: stops repeated every day.
        outages: one-off stops (a kiln trip, a planned maintenance).
        ramp_down_secs: shutdown ramp before each stop.
        ramp_up_secs: start-up ramp after each stop.

    >>> from energymon.schema import datetime_to_ms
    >>> from datetime import UTC
    >>> s = Schedule(daily_stops=(DailyStop(time(8), time(11)),), ramp_down_secs=600, ramp_up_secs=600)
    >>> s.running(datetime_to_ms(datetime(2025, 1, 6, 23, 55, tzinfo=UTC)))  # 07:55 local: ramping down
    0.5
    """

    timezone: str = "Asia/Shanghai"
    daily_stops: tuple[DailyStop, ...] = ()
    outages: tuple[Outage, ...] = ()
    ramp_down_secs: float = 300.0
    ramp_up_secs: float = 600.0

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r}") from None
        if not (self.ramp_down_secs > 0 and self.ramp_up_secs > 0):
            raise ValueError("ramps must be positive (use a few seconds for an abrupt stop)")
        if not isinstance(self.daily_stops, tuple) or not isinstance(self.outages, tuple):
            raise TypeError("daily_stops and outages are tuples")

    def with_outage(self, outage: Outage) -> Schedule:
        """A copy with one more one-off stop."""
        return Schedule(self.timezone, self.daily_stops, (*self.outages, outage), self.ramp_down_secs,
                        self.ramp_up_secs)

    def running(self, ts_ms: int) -> float:
        """Running fraction in [0, 1] at event time ``ts_ms``."""
        level = 1.0
        down, up = self.ramp_down_secs, self.ramp_up_secs
        if self.daily_stops:
            t = ts_ms / 1000.0
            local = t + _utc_offset_s(self.timezone, int(t // 3600))
            day = math.floor(local / _DAY_S) * _DAY_S
            for stop in self.daily_stops:
                a = _seconds_of_day(stop.start)
                b = a + stop.duration_secs
                for d in (day - _DAY_S, day, day + _DAY_S):
                    level = min(level, _window(local, d + a, d + b, down, up))
        t_s = ts_ms / 1000.0
        for outage in self.outages:
            level = min(level, _window(t_s, outage.start_ms / 1000.0, outage.end_ms / 1000.0, down, up))
        return level


# --------------------------------------------------------------------------- load profiles


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """The rate of one meter: ``base × (idle + (1 − idle) × running) × (1 + noise)``, never negative.

    Attributes:
        base: rate at full load, in the rate's unit (kW, t/h, Nm3/h...).
        schedule: the equipment's own schedule (daily stops, outages, ramps).
        idle_fraction: share of ``base`` drawn while stopped (lube pumps, fans on slow speed...).
        noise: relative noise on the rate.

    >>> LoadProfile(base=100.0, noise=Noise(amplitude=0)).rate(1_763_880_000_000)
    100.0
    >>> idle = LoadProfile(base=100.0, idle_fraction=0.1, noise=Noise(amplitude=0))
    >>> idle.rate(1_763_880_000_000, running=0.0)
    10.0
    """

    base: float
    schedule: Schedule = field(default_factory=Schedule)
    idle_fraction: float = 0.0
    noise: Noise = field(default_factory=Noise)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base) and self.base >= 0):
            raise ValueError(f"base must be a finite rate >= 0, got {self.base}")
        if not 0 <= self.idle_fraction <= 1:
            raise ValueError(f"idle_fraction must be in [0, 1], got {self.idle_fraction}")

    def running(self, ts_ms: int, running: float = 1.0) -> float:
        """Running fraction: the own schedule times an external one (e.g. the process's)."""
        return self.schedule.running(ts_ms) * running

    def rate(self, ts_ms: int, running: float = 1.0) -> float:
        """Rate at ``ts_ms``; ``running`` is an external running fraction multiplied with the own schedule."""
        r = self.schedule.running(ts_ms) * running
        level = self.idle_fraction + (1.0 - self.idle_fraction) * r
        return max(0.0, self.base * level * (1.0 + self.noise.value(ts_ms)))


# --------------------------------------------------------------------------- counters


class CounterState:
    """A counter that is the exact integral of a rate over event time, with counter events.

    ``value(t) = start + ∫ rate dt`` from ``origin_ms`` (``rate`` is per hour: kW → kWh, t/h → t). The
    integral uses a fixed grid of ``step_secs`` cells anchored at ``origin_ms``: each cell adds
    ``rate(midpoint) × step``, and inside a cell the counter is linear. So the value at ``t`` does not
    depend on when or how often it was asked, it is continuous, and it never decreases while the rate is
    >= 0. Evaluations continue from the last one; checkpoints every 360 cells make a jump back in time cheap.

    Counter events (:meth:`add_event`) set the counter to a new value at a time (a reset to 0, a new meter's
    start reading, a jump to just below the rollover point); from then on it integrates again. With ``wrap``,
    :meth:`value` is the reading of a register that rolls over: the running total modulo ``wrap``.

    Not thread-safe; the owner serialises calls.

    >>> c = CounterState(lambda ts: 3600.0, start=10.0, origin_ms=0)   # 3,600 units per hour = 1 per second
    >>> c.value(60_000)
    70.0
    >>> c.add_event(30_000, 0.0)                                        # reset at 30 s
    >>> c.value(60_000)
    30.0
    """

    CHECKPOINT_CELLS = 360

    def __init__(
        self,
        rate: Callable[[int], float],
        *,
        start: float,
        origin_ms: int,
        step_secs: float = 10.0,
        wrap: float | None = None,
    ) -> None:
        if not step_secs > 0:
            raise ValueError("step_secs must be positive")
        if wrap is not None and not wrap > 0:
            raise ValueError("wrap must be positive")
        self._rate = rate
        self._start = float(start)
        self._origin = int(origin_ms)
        self._step = max(1, round(step_secs * 1000))
        self.wrap = wrap
        self._checkpoints: dict[int, float] = {0: 0.0}
        self._hi = 0  # highest cell index with a checkpoint (a multiple of CHECKPOINT_CELLS)
        self._lo = 0  # lowest one
        self._cursor = (0, 0.0)  # last grid point evaluated: (cell index, integral there)
        self._events: list[tuple[int, float]] = []

    @property
    def origin_ms(self) -> int:
        """Event time at which the counter reads ``start``."""
        return self._origin

    def rate(self, ts_ms: int) -> float:
        """The integrated rate at ``ts_ms`` (per hour)."""
        return self._rate(ts_ms)

    def _cell(self, k: int) -> float:
        """Increment of cell ``k`` (from grid point k to k+1)."""
        mid = self._origin + k * self._step + self._step // 2
        return max(0.0, self._rate(mid)) * self._step / _MS_PER_HOUR

    def _grid(self, k: int) -> float:
        """Integral from the origin to grid point ``k``."""
        n = self.CHECKPOINT_CELLS
        ck, cv = self._cursor
        if k >= 0:
            if k >= self._hi:
                base_k, value = (ck, cv) if self._hi <= ck <= k else (self._hi, self._checkpoints[self._hi])
            else:
                base_k = (k // n) * n
                value = self._checkpoints[base_k]
                if base_k <= ck <= k:
                    base_k, value = ck, cv
            while base_k < k:
                value += self._cell(base_k)
                base_k += 1
                if base_k % n == 0 and base_k > self._hi:
                    self._checkpoints[base_k] = value
                    self._hi = base_k
        else:
            if k <= self._lo:
                base_k, value = (ck, cv) if k <= ck <= self._lo else (self._lo, self._checkpoints[self._lo])
            else:
                base_k = -((-k) // n) * n
                value = self._checkpoints[base_k]
                if k <= ck <= base_k:
                    base_k, value = ck, cv
            while base_k > k:
                base_k -= 1
                value -= self._cell(base_k)
                if base_k % n == 0 and base_k < self._lo:
                    self._checkpoints[base_k] = value
                    self._lo = base_k
        self._cursor = (k, value)
        return value

    def integral(self, ts_ms: int) -> float:
        """``∫ rate dt`` from the origin to ``ts_ms`` (negative before the origin), without events."""
        offset = ts_ms - self._origin
        k = offset // self._step
        g = self._grid(k)
        frac = offset - k * self._step
        return g + self._cell(k) * frac / self._step if frac else g

    def total(self, ts_ms: int) -> float:
        """The running total at ``ts_ms`` after counter events, before any rollover."""
        i = bisect.bisect_right(self._events, ts_ms, key=lambda e: e[0])
        if i == 0:
            return self._start + self.integral(ts_ms)
        at, new_value = self._events[i - 1]
        return new_value + self.integral(ts_ms) - self.integral(at)

    def value(self, ts_ms: int) -> float:
        """The counter reading at ``ts_ms``: :meth:`total`, modulo ``wrap`` when the register rolls over."""
        total = self.total(ts_ms)
        if self.wrap is not None:
            total %= self.wrap
        return total

    def add_event(self, ts_ms: int, new_value: float) -> None:
        """From ``ts_ms`` on, the counter continues from ``new_value`` (reset, replacement, jump)."""
        if not math.isfinite(new_value):
            raise ValueError("a counter event needs a finite value")
        bisect.insort_right(self._events, (int(ts_ms), float(new_value)), key=lambda e: e[0])

    def invalidate(self, from_ms: int) -> None:
        """Forget cached integrals from ``from_ms`` on, after the rate changed there (a new outage)."""
        first = (from_ms - self._origin) // self._step  # first cell that may have changed
        if first <= 0:
            self._checkpoints = {0: 0.0}
            self._hi = self._lo = 0
            self._cursor = (0, 0.0)
            return
        keep = min(self._hi, (first // self.CHECKPOINT_CELLS) * self.CHECKPOINT_CELLS)
        self._checkpoints = {k: v for k, v in self._checkpoints.items() if k <= keep}
        self._hi = keep
        if self._cursor[0] > first:
            self._cursor = (keep, self._checkpoints[keep])


# --------------------------------------------------------------------------- faults


def _check_start(start_ms: int) -> None:
    if not isinstance(start_ms, int) or isinstance(start_ms, bool):
        raise TypeError(f"start_ms is event time in integer ms since the epoch, got {start_ms!r}")


@dataclass(frozen=True, slots=True)
class WindowFault:
    """A fault active from ``start_ms`` for ``duration_secs`` of event time (default: until cleared).

    Attributes:
        start_ms: event time the fault starts (ms since the epoch).
        duration_secs: how long it lasts; ``math.inf`` until :meth:`PlantModel.clear_faults`.
    """

    start_ms: int
    duration_secs: float = math.inf

    def __post_init__(self) -> None:
        _check_start(self.start_ms)
        if not self.duration_secs >= 0:
            raise ValueError(f"duration_secs must be >= 0, got {self.duration_secs}")

    def active(self, ts_ms: int) -> bool:
        """True while the fault applies at ``ts_ms``."""
        return self.start_ms <= ts_ms < self.start_ms + self.duration_secs * 1000.0


@dataclass(frozen=True, slots=True)
class NoAnswer(WindowFault):
    """The meter is silent: Modbus requests get no response (a black hole); an MQTT meter stops publishing.

    >>> NoAnswer(start_ms=0, duration_secs=60).active(59_999)
    True
    """


@dataclass(frozen=True, slots=True)
class ExceptionReply(WindowFault):
    """The meter answers every read with a Modbus exception ``code`` (2 illegal address, 6 busy...).

    >>> ExceptionReply(start_ms=0, code=6).code
    6
    """

    code: int = 4

    def __post_init__(self) -> None:
        WindowFault.__post_init__(self)
        if self.code not in EXCEPTION_CODES:
            raise ValueError(f"Modbus exception code must be in {sorted(EXCEPTION_CODES)}, got {self.code}")


@dataclass(frozen=True, slots=True)
class DroppedConnection(WindowFault):
    """A request to the meter makes the server close its TCP connection (on a serial line: no answer)."""


@dataclass(frozen=True, slots=True)
class Stuck(WindowFault):
    """The meter shows the value it had at ``start_ms`` for the whole window (frozen display).

    Attributes:
        quantity: the quantity frozen; None freezes every quantity of the meter.
    """

    quantity: str | None = None


@dataclass(frozen=True, slots=True)
class Spike(WindowFault):
    """One absurd reading.

    With ``duration_secs=0`` (the default) the first read of each affected quantity at or after ``start_ms``
    returns the spike, once; with a positive duration every read inside the window does.

    Attributes:
        quantity: the quantity that spikes; None: every quantity of the meter.
        value: the absurd value; None: ``factor`` × the true value (or ``factor`` if that is 0).
        factor: multiplier used when ``value`` is None.
    """

    duration_secs: float = 0.0
    quantity: str | None = None
    value: float | None = None
    factor: float = 1000.0

    def absurd(self, true_value: float) -> float:
        """The value shown instead of ``true_value``."""
        if self.value is not None:
            return self.value
        return true_value * self.factor if true_value else self.factor


@dataclass(frozen=True, slots=True)
class CounterEventFault:
    """A permanent change of a counter at ``start_ms`` (no duration: the counter goes on from there).

    Attributes:
        start_ms: event time of the change.
        quantity: the counter affected; None: every counter of the meter.
    """

    start_ms: int
    quantity: str | None = None

    def __post_init__(self) -> None:
        _check_start(self.start_ms)


@dataclass(frozen=True, slots=True)
class CounterReset(CounterEventFault):
    """The counter is cleared to 0 at ``start_ms`` and counts on from there."""


@dataclass(frozen=True, slots=True)
class Rollover(CounterEventFault):
    """The counter jumps to just below its rollover point, then wraps past it.

    The rollover point is ``counter_max``, or ``2**bits × scale`` of an unsigned integer register.

    Attributes:
        margin: distance below the rollover point after the jump, in the counter's unit; None: what the meter
            counts in ``wraps_after_secs`` at its rate at ``start_ms``.
        wraps_after_secs: used when ``margin`` is None.
    """

    margin: float | None = None
    wraps_after_secs: float = 60.0

    def __post_init__(self) -> None:
        CounterEventFault.__post_init__(self)
        if self.margin is not None and not self.margin >= 0:
            raise ValueError("margin must be >= 0")
        if not self.wraps_after_secs > 0:
            raise ValueError("wraps_after_secs must be positive")


@dataclass(frozen=True, slots=True)
class Replacement(CounterEventFault):
    """The meter is replaced at ``start_ms``: the new meter's counter starts at ``new_value``."""

    new_value: float = 0.0

    def __post_init__(self) -> None:
        CounterEventFault.__post_init__(self)
        if not (math.isfinite(self.new_value) and self.new_value >= 0):
            raise ValueError("new_value must be a finite reading >= 0")


#: Faults that act on the protocol (the server's answer), not on the values.
ProtocolFault = NoAnswer | ExceptionReply | DroppedConnection
#: Every fault :meth:`PlantModel.inject` accepts.
Fault = NoAnswer | ExceptionReply | DroppedConnection | Stuck | Spike | CounterReset | Rollover | Replacement
