"""The counter rules: cumulative readings into interval consumption, in one place for every stage.

A meter's energy (or volume, or mass) counter only ever grows. What arrives does not always: a counter that
reads 0 for one poll, a spike from a bad frame, a wrap at 2^32, a meter swapped for a new one. The edge gateway
(edge intervals and the edge history), the processor (live path and its re-check of edge intervals) and the
recompute all build their trackers here, with :func:`counter_rules` / :func:`plant_counter_rules`, so one
reading sequence gives the same intervals everywhere.

**The bound.** A counter's plausible rise over ``elapsed`` is

* with ``max_rate_per_hour`` configured: ``max_rate_per_hour × 1.1 × elapsed hours`` (10 % slack);
* without it, a bound learned from the counter itself: ``LEARNED_BOUND_FACTOR`` (10) × the highest rate of any
  interval booked since the tracker started × elapsed. Until a first interval with consumption is booked the
  bound is unknown. A rise beyond the learned bound may be the counter speeding up (a plant leaving standby):
  it is held, and confirmed if the next reading goes on from it at a tenth of its pace or more (booked, and the
  bound learns the new pace); a next reading that goes on at the old pace makes it a jump (a glitch, the first
  reading of a candidate level, below).

**The rules**, for each new reading ``v`` at ``t`` after the last accepted reading ``last`` at ``t0``:

* the first reading sets the baseline and yields nothing; a reading not newer than ``t0`` yields nothing;
* a rise within the bound is consumption (flag ``ok``);
* **confirmation**: while the bound is unknown, a rise is *held* and booked only when a later reading
  continues from it (is at least ``v``): then ``last → that reading`` is booked as one interval. A reading
  between ``last`` and ``v`` shows ``v`` was a glitch (counted in ``rejected``) and is itself judged against
  ``last``; a reading below ``last`` is a glitch of its own (or the start of a reset) and the rise waits on.
  Latency: after a start, the first rise of each counter is booked one reading later, in one interval across
  two polls; nothing else waits;
* a **wrap** (flag ``rollover``, consumption ``counter_max − last + v``) needs all three of: ``last`` near the
  top of the range (``last ≥ counter_max × (1 − WRAP_MARGIN)``), ``v`` near the bottom
  (``v ≤ counter_max × WRAP_MARGIN``), ``WRAP_MARGIN`` = 10 %; and that consumption within the bound. A wrap is
  never booked while the bound is unknown;
* anything else (any other fall, a rise beyond the bound) is a **glitch**: never consumption, counted in
  ``rejected``, the baseline kept. A glitch is also the first reading of a *candidate level* (its readings
  leave ``rejected`` again if the level is confirmed);
* **stays down** (or up): when ``confirm_readings`` (3) readings in a row, the glitch included, are at the
  candidate level (each at least the one before it and within the bound from it) without the counter
  returning to ``last``, the level is an unrecorded reset or meter swap: it becomes the new baseline, what
  was used between ``t0`` and the first candidate reading is unknown and not booked, the growth since is
  booked with flag ``rebased``, and :attr:`CounterTracker.resets` counts it (the processor and the alert rule
  ``counter_reset`` raise it to the energy manager);
* a **recorded replacement** (``accounting.replacements``: time, old meter's final value, new meter's start
  value) books ``(old_final − last) + (first new reading − new_start)`` across the change, flag ``replaced``.
  Readings stamped before the change belong to the old meter, readings at or after it to the new one. A part
  that comes out negative (the record disagrees with the readings) is booked as 0 and counted in
  ``replacement_mismatches``.

Without a configured bound two things are left to chance: while the bound is still unknown (right after a
start), a jump *up* that the next reading continues from (a two-reading spike, a swap to a meter showing more) is
booked as consumption; and a counter that speeds up beyond the learned bound for a single interval and then
slows to under a tenth of that pace has that interval taken as a jump (not booked; a reset if it persists).
``energymon validate`` warns about counters with a rollover point and no ``max_rate_per_hour``.

:func:`check_interval` applies the same rules to an interval computed elsewhere (the processor re-checks the
intervals a gateway sends).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from energymon.config import Meter, PlantConfig, Register

__all__ = [
    "CONFIRM_READINGS",
    "LEARNED_BOUND_FACTOR",
    "RATE_SLACK",
    "WRAP_MARGIN",
    "CounterRules",
    "CounterTracker",
    "Delta",
    "DeltaFlag",
    "Replacement",
    "TrackerState",
    "check_interval",
    "counter_max_of",
    "counter_rules",
    "natural_counter_max",
    "plant_counter_rules",
    "wrap_position",
]

#: Slack on a configured ``max_rate_per_hour``.
RATE_SLACK = 1.1
#: Without a configured bound: plausible rise = this × the highest booked rate × elapsed.
LEARNED_BOUND_FACTOR = 10.0
#: Share of the range that counts as "near the top" (for the old value) and "near the bottom" (the new one).
WRAP_MARGIN = 0.1
#: Readings in a row at a new level before it is taken as an unrecorded reset or swap.
CONFIRM_READINGS = 3
#: Absolute tolerance of the bound (floating point rounding of the readings).
_EPS = 1e-9


class DeltaFlag(StrEnum):
    """Why a delta is what it is."""

    OK = "ok"
    ROLLOVER = "rollover"
    REBASED = "rebased"  # a persistent new level was accepted as a new baseline; the jump itself was not booked
    REPLACED = "replaced"  # the interval spans a recorded meter replacement


@dataclass(frozen=True, slots=True)
class Replacement:
    """A recorded meter change: readings at or after ``at_ms`` come from the new meter."""

    at_ms: int
    old_final: float
    new_start: float


@dataclass(frozen=True, slots=True)
class Delta:
    """Consumption between two accepted readings of one counter."""

    start_ms: int
    end_ms: int
    amount: float
    flag: DeltaFlag


def natural_counter_max(register: Register) -> float | None:
    """The value at which an unsigned integer register rolls over: ``2**bits × scale``.

    None for floats, signed integers and bits, which have no natural rollover point.
    """
    from energymon.config import DataType

    if register.type not in (DataType.UINT16, DataType.UINT32, DataType.UINT64):
        return None
    return float(2 ** (16 * register.type.registers)) * register.scale


def counter_max_of(plant: PlantConfig, meter: Meter, quantity: str | None = None) -> float | None:
    """The rollover point of a meter's counter (``quantity``, default the accounted one): its ``counter_max``,
    else, for a Modbus register of an unsigned integer type, the type's range. None: it never wraps."""
    from energymon.config import ModbusSource

    q = quantity if quantity is not None else meter.counter
    if q is None:
        return None
    try:
        info = plant.quantities(meter).get(q)
    except (KeyError, ValueError):
        return None
    if info is not None and info[2] is not None:
        return info[2]
    if isinstance(meter.source, ModbusSource):
        for reg in plant.register_map(meter.source).registers:
            if reg.quantity == q:
                return natural_counter_max(reg)
    return None


def wrap_position(last: float, value: float, counter_max: float) -> bool:
    """True if a fall from ``last`` to ``value`` is where a wrap can be: ``last`` near the top of the range and
    ``value`` near the bottom (:data:`WRAP_MARGIN`). Works on numpy arrays too (element-wise, with ``&``)."""
    return (last >= counter_max * (1.0 - WRAP_MARGIN)) & (value <= counter_max * WRAP_MARGIN) & (value < last)


@dataclass(frozen=True, slots=True)
class CounterRules:
    """What the rules need to know about one counter; :meth:`tracker` builds its tracker.

    Args:
        max_rate_per_hour: configured plausibility bound in the counter's unit per hour (None: learned).
        counter_max: the value at which the counter wraps to 0 (None = it never wraps).
        replacements: recorded meter changes of this counter, in time order.
        confirm_readings: readings in a row at a new level before it is accepted as a new baseline.
    """

    max_rate_per_hour: float | None = None
    counter_max: float | None = None
    replacements: tuple[Replacement, ...] = field(default_factory=tuple)
    confirm_readings: int = CONFIRM_READINGS

    @property
    def max_rate_per_ms(self) -> float | None:
        """The configured bound per millisecond, slack included (None without one)."""
        return None if self.max_rate_per_hour is None else self.max_rate_per_hour * RATE_SLACK / 3_600_000

    def tracker(self, *, track_rejected: bool = False) -> CounterTracker:
        """A fresh tracker following these rules (``track_rejected``: keep the times of rejected readings)."""
        return CounterTracker(max_rate_per_hour=self.max_rate_per_hour, counter_max=self.counter_max,
                              confirm_readings=self.confirm_readings, replacements=self.replacements,
                              track_rejected=track_rejected)


def _replacements(plant: PlantConfig, meter_id: str) -> tuple[Replacement, ...]:
    return tuple(sorted(
        (Replacement(int(r.at.timestamp() * 1000), r.old_final_value, r.new_start_value)
         for r in plant.accounting.replacements if r.meter == meter_id),
        key=lambda r: r.at_ms,
    ))


def counter_rules(plant: PlantConfig, meter: Meter, quantity: str | None = None) -> CounterRules:
    """The rules of a meter's counter ``quantity`` (default: the accounted ``counter``).

    The accounted counter carries the meter's ``max_rate_per_hour`` and its recorded replacements; another
    counter quantity of the meter (an export register, a second tariff) only its rollover point.
    """
    q = quantity if quantity is not None else meter.counter
    accounted = q is not None and q == meter.counter
    return CounterRules(
        max_rate_per_hour=meter.max_rate_per_hour if accounted else None,
        counter_max=counter_max_of(plant, meter, q),
        replacements=_replacements(plant, meter.id) if accounted else (),
    )


def plant_counter_rules(plant: PlantConfig) -> dict[str, tuple[str, CounterRules]]:
    """Per meter with an accounted ``counter``: the counter quantity and its rules."""
    return {m.id: (m.counter, counter_rules(plant, m)) for m in plant.meters if m.counter is not None}


#: Everything :meth:`CounterTracker.update` may change, as :meth:`CounterTracker.state` returns it.
TrackerState = tuple[
    float | None, int, tuple[float, int, float, int] | None, int, int, int, tuple[Replacement, ...],
    float | None, tuple[float, int, float] | None, int, int,
]


class CounterTracker:
    """The delta logic of one counter (the rules in the module docstring). Not thread-safe; one owner each.

    Args:
        max_rate_per_hour: configured plausibility bound in the counter's unit per hour (None = learned).
        counter_max: the value at which the counter wraps to 0 (None = it never wraps).
        confirm_readings: readings in a row at a new level before it is accepted as a new baseline.
        replacements: recorded meter changes of this counter (any order).
        track_rejected: keep the event times of rejected readings in :attr:`rejected_ms` (a reading of a level
            later taken as a reset is not rejected in the end and is removed from it).

    Attributes:
        rejected: readings set aside as glitches (the readings of a level later taken as a reset are not: they
            count while the level is being confirmed and no longer once it is).
        resets: persistent new levels taken as unrecorded resets or swaps (deltas flagged ``rebased``).
        replacement_mismatches: recorded replacements that disagreed with the readings.
    """

    __slots__ = ("_candidate", "_candidate_n", "_held", "_peak_per_ms", "_replacements", "confirm_readings",
                 "counter_max", "last_ms", "last_value", "max_rate_per_ms", "rejected", "rejected_ms",
                 "replacement_mismatches", "resets")

    def __init__(
        self,
        *,
        max_rate_per_hour: float | None = None,
        counter_max: float | None = None,
        confirm_readings: int = CONFIRM_READINGS,
        replacements: Iterable[Replacement] = (),
        track_rejected: bool = False,
    ) -> None:
        self.max_rate_per_ms = None if max_rate_per_hour is None else max_rate_per_hour * RATE_SLACK / 3_600_000
        self.counter_max = counter_max
        self.confirm_readings = confirm_readings
        self.last_value: float | None = None
        self.last_ms = 0
        self.rejected = 0
        self.resets = 0
        self.replacement_mismatches = 0
        self.rejected_ms: list[int] | None = [] if track_rejected else None
        # pending replacements, latest first (popped from the end)
        self._replacements = sorted(replacements, key=lambda r: r.at_ms, reverse=True)
        # (first value, first time, last value, last time) of a level that was rejected
        self._candidate: tuple[float, int, float, int] | None = None
        self._candidate_n = 0
        self._peak_per_ms: float | None = None  # highest booked rate (the learned bound's base)
        # a rise waiting for the next reading to confirm it: (value, time, the least rate per ms that confirms it)
        self._held: tuple[float, int, float] | None = None

    def state(self) -> TrackerState:
        """The tracker's whole state, to :meth:`set_state` back if what the updates produced was not kept."""
        return (self.last_value, self.last_ms, self._candidate, self._candidate_n, self.rejected,
                self.replacement_mismatches, tuple(self._replacements), self._peak_per_ms, self._held,
                self.resets, -1 if self.rejected_ms is None else len(self.rejected_ms))

    def set_state(self, state: TrackerState) -> None:
        """Return to a :meth:`state`."""
        (self.last_value, self.last_ms, self._candidate, self._candidate_n, self.rejected,
         self.replacement_mismatches, replacements, self._peak_per_ms, self._held, self.resets, n_rej) = state
        self._replacements = list(replacements)
        if self.rejected_ms is not None and n_rej >= 0:
            del self.rejected_ms[n_rej:]

    def restore(self, value: float, ts_ms: int) -> None:
        """Continue from a saved baseline (the last accepted reading): recorded replacements at or before it were
        bridged already, and a level that was being confirmed is forgotten."""
        self.last_value, self.last_ms = value, ts_ms
        self._candidate, self._candidate_n = None, 0
        self._held = None
        reps = self._replacements
        while reps and reps[-1].at_ms <= ts_ms:
            reps.pop()

    @property
    def bound_known(self) -> bool:
        """True if rises can be judged now (a configured bound, or a learned one)."""
        return self.max_rate_per_ms is not None or self._peak_per_ms is not None

    def bound(self, elapsed_ms: int) -> float | None:
        """The largest plausible rise over ``elapsed_ms`` (None while it is unknown)."""
        elapsed = max(elapsed_ms, 1)
        if self.max_rate_per_ms is not None:
            return self.max_rate_per_ms * elapsed + _EPS
        if self._peak_per_ms is not None:
            return LEARNED_BOUND_FACTOR * self._peak_per_ms * elapsed + _EPS
        return None

    def update(self, value: float, ts_ms: int) -> Delta | None:
        """Feed one good reading; return the consumption since the last accepted reading, if any."""
        last = self.last_value
        if last is None:
            reps = self._replacements
            while reps and reps[-1].at_ms <= ts_ms:
                reps.pop()  # the counter starts after that change: nothing to bridge
            self.last_value, self.last_ms = value, ts_ms
            return None
        if ts_ms <= self.last_ms:
            return None  # a replay or a late reading: the interval was already booked
        held = self._held
        if held is not None and ts_ms <= held[1]:
            return None  # the held reading again, or one older than it
        if self._replacements and self._replacements[-1].at_ms <= ts_ms:
            self._held = None  # an old-meter reading awaiting confirmation: the replacement bridge supersedes it
            return self._replace(last, value, ts_ms)
        if held is not None:
            h_value, h_ms, min_rate = held
            if value >= h_value and value - h_value >= min_rate * (ts_ms - h_ms):
                # the counter continues from the held rise (at its pace): book both polls as one interval
                self._held = None
                return self._accept(value, ts_ms, value - last, DeltaFlag.OK)
            if value < last:  # below the baseline too: this reading is the glitch (or a reset), the rise waits on
                return self._reject(value, ts_ms)
            self._held = None
            if value < h_value:
                self._rejected_at(h_ms)  # between the two: the held reading was a spike; judge this one
            else:  # on from the held level, but at the old pace: a jump, the first reading of a new level
                self._reject(h_value, h_ms)
        return self._judge(last, value, ts_ms)

    def _judge(self, last: float, value: float, ts_ms: int) -> Delta | None:
        bound = self.bound(ts_ms - self.last_ms)
        amount = value - last
        if amount >= 0:
            if bound is None:
                if amount == 0:
                    return self._accept(value, ts_ms, 0.0, DeltaFlag.OK)
                self._held = (value, ts_ms, 0.0)  # confirmed by any reading at or above it
                return None
            if amount <= bound:
                return self._accept(value, ts_ms, amount, DeltaFlag.OK)
            if self.max_rate_per_ms is None and self._candidate is None:
                # beyond the learned bound: the counter may have sped up. Held: confirmed if the next reading
                # goes on at a tenth of this pace or more, else a jump
                self._held = (value, ts_ms, amount / max(ts_ms - self.last_ms, 1) / LEARNED_BOUND_FACTOR)
                return None
            return self._reject(value, ts_ms)
        cmax = self.counter_max
        if cmax is not None and bound is not None and wrap_position(last, value, cmax):
            wrapped = cmax - last + value
            if wrapped <= bound:
                return self._accept(value, ts_ms, wrapped, DeltaFlag.ROLLOVER)
        return self._reject(value, ts_ms)

    def _accept(self, value: float, ts_ms: int, amount: float, flag: DeltaFlag) -> Delta:
        start = self.last_ms
        self._candidate, self._candidate_n = None, 0
        self.last_value, self.last_ms = value, ts_ms
        self._learn(amount, ts_ms - start)
        return Delta(start, ts_ms, amount, flag)

    def _learn(self, amount: float, elapsed_ms: int) -> None:
        if amount > 0 and elapsed_ms > 0 and math.isfinite(amount):
            rate = amount / elapsed_ms
            if self._peak_per_ms is None or rate > self._peak_per_ms:
                self._peak_per_ms = rate

    def _replace(self, last: float, value: float, ts_ms: int) -> Delta:
        """Bridge one or more recorded replacements between the last reading and this one."""
        amount = 0.0
        level = last
        reps = self._replacements
        while reps and reps[-1].at_ms <= ts_ms:
            rep = reps.pop()
            amount += self._part(rep.old_final - level)
            level = rep.new_start
        amount += self._part(value - level)
        self._candidate, self._candidate_n = None, 0
        start = self.last_ms
        self.last_value, self.last_ms = value, ts_ms
        return Delta(start, ts_ms, amount, DeltaFlag.REPLACED)

    def _part(self, amount: float) -> float:
        if amount < 0:
            self.replacement_mismatches += 1
            return 0.0
        return amount

    def has_pending_replacement(self, until_ms: int) -> bool:
        """True if a recorded replacement at or before ``until_ms`` has not been bridged yet."""
        return bool(self._replacements) and self._replacements[-1].at_ms <= until_ms

    def _rejected_at(self, ts_ms: int) -> None:
        self.rejected += 1
        if self.rejected_ms is not None:
            self.rejected_ms.append(ts_ms)

    def _reject(self, value: float, ts_ms: int) -> Delta | None:
        self._rejected_at(ts_ms)
        cand = self._candidate
        # The same new level again (growing plausibly since it appeared): count toward a rebase.
        if cand is not None and value >= cand[2]:
            growth_bound = self.bound(ts_ms - cand[3])
            same_level = growth_bound is None or value - cand[2] <= growth_bound
        else:
            same_level = False
        if cand is not None and same_level:
            self._candidate_n += 1
            self._candidate = (cand[0], cand[1], value, ts_ms)
        else:
            self._candidate_n = 1
            self._candidate = (value, ts_ms, value, ts_ms)
        if self._candidate_n >= self.confirm_readings:
            first_value, first_ms = self._candidate[0], self._candidate[1]
            self.rejected -= self._candidate_n  # the level's readings are real readings after all
            if self.rejected_ms is not None:
                del self.rejected_ms[len(self.rejected_ms) - self._candidate_n:]
            self._candidate, self._candidate_n = None, 0
            self._held = None  # an unconfirmed rise of the old level: what it counted is unknown, as the jump
            self.last_value, self.last_ms = value, ts_ms
            self.resets += 1
            # What was used between the last good reading and the jump is unknown and not booked;
            # what the counter counted since the new level appeared is.
            self._learn(value - first_value, ts_ms - first_ms)
            return Delta(first_ms, ts_ms, value - first_value, DeltaFlag.REBASED)
        return None


def check_interval(
    rules: CounterRules,
    start_ms: int,
    end_ms: int,
    amount: float,
    flag: str,
    *,
    value: float | None = None,
    last: tuple[float, int] | None = None,
) -> str | None:
    """Why an interval computed elsewhere (a gateway's edge interval) cannot be booked, or None if it can.

    The stateless part of the rules: a finite, non-negative amount; a known flag; a rollover only on a counter
    with a rollover point, and at most what a wrap can be (``2 × WRAP_MARGIN × counter_max``); with a configured
    bound, the amount within it over the interval (whatever its flag); without one, at most the counter's
    range. With ``value`` (the reading closing the interval) and ``last`` (the reading seen at ``start_ms``, if
    the checker saw it), the amount must also agree with the readings: ``value − last`` (``ok``),
    ``counter_max − last + value`` (``rollover``).
    """
    if not math.isfinite(amount) or amount < 0:
        return f"amount {amount!r} is not a non-negative number"
    if end_ms <= start_ms:
        return "interval does not end after it starts"
    try:
        kind = DeltaFlag(flag)
    except ValueError:
        return f"unknown flag {flag!r}"
    cmax = rules.counter_max
    if kind is DeltaFlag.ROLLOVER:
        if cmax is None:
            return "rollover on a counter without a rollover point"
        if amount > 2 * WRAP_MARGIN * cmax + _EPS:
            return f"rollover of {amount:g} is more than a wrap near the rollover point {cmax:g} can be"
    rate = rules.max_rate_per_ms
    if rate is not None:
        bound = rate * max(end_ms - start_ms, 1) + _EPS
        if amount > bound:
            return (f"{amount:g} in {(end_ms - start_ms) / 1000:g} s is over the bound "
                    f"max_rate_per_hour {rules.max_rate_per_hour:g}")
    elif cmax is not None and amount > cmax:
        return f"{amount:g} is more than the counter's whole range {cmax:g}"
    if value is not None and last is not None and last[1] == start_ms:
        if kind is DeltaFlag.OK:
            expected = value - last[0]
        elif kind is DeltaFlag.ROLLOVER and cmax is not None:
            expected = cmax - last[0] + value
        else:
            return None
        if abs(expected - amount) > 1e-6 * max(abs(value), abs(last[0]), 1.0):
            return f"amount {amount:g} disagrees with the readings ({last[0]:g} → {value:g})"
    return None
