"""Cumulative counters into interval consumption, safe against resets, glitches and rollover.

A meter's energy (or volume, or mass) counter only ever grows. What arrives does not always: a counter that
reads 0 for one poll, a spike from a bad frame, a wrap at 2^32, a meter swapped for a new one. The rules:

* the first reading sets the baseline and yields nothing;
* a rise within the plausibility bound (``max_rate_per_hour`` × elapsed hours, with 10 % slack) is consumption;
* a fall near ``counter_max`` to a small value is a rollover: ``counter_max - last + value``;
* anything else (a fall, or a rise beyond the bound) is rejected and the baseline kept, so a counter that
  briefly reads 0 never becomes a huge spike. If the new level persists for ``confirm_readings`` readings in a
  row, it is taken as the new baseline (a reset or an unrecorded meter change) with no consumption booked for
  the jump, and the delta is flagged;
* a recorded meter replacement (``replacements``: time, old meter's final value, new meter's start value)
  books ``(old_final - last old reading) + (first new reading - new_start)`` across the change, flagged
  ``replaced``: no spike, nothing lost. Readings stamped before the change belong to the old meter, readings at
  or after it to the new one. A part that comes out negative (the record disagrees with the readings) is booked
  as 0 and counted in ``replacement_mismatches``;
* readings not newer than the last accepted one (replays, late data) yield nothing here. The live path books
  forward only; a report recomputes a period from the stored readings (``processors/recompute.py``), with this
  same class, so late data land in the period they belong to.

Every result carries a :class:`DeltaFlag` so the store keeps why a value is what it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["CounterTracker", "Delta", "DeltaFlag", "Replacement", "TrackerState"]


class DeltaFlag(StrEnum):
    """Why a delta is what it is."""

    OK = "ok"
    ROLLOVER = "rollover"
    REBASED = "rebased"  # a persistent jump was accepted as a new baseline; the jump itself was not booked
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


#: Everything :meth:`CounterTracker.update` may change, as :meth:`CounterTracker.state` returns it.
TrackerState = tuple[
    float | None, int, tuple[float, int, float, int] | None, int, int, int, tuple[Replacement, ...]
]


class CounterTracker:
    """The delta logic of one counter. Not thread-safe; one processor owns each counter.

    Args:
        max_rate_per_hour: plausibility bound in the counter's unit per hour (None = no upper bound).
        counter_max: the value at which the counter wraps to 0 (None = it never wraps).
        confirm_readings: readings in a row at a new level before it is accepted as a new baseline.
        replacements: recorded meter changes of this counter (any order).
    """

    __slots__ = ("_candidate", "_candidate_n", "_replacements", "confirm_readings", "counter_max", "last_ms",
                 "last_value", "max_rate_per_ms", "rejected", "replacement_mismatches")

    def __init__(
        self,
        *,
        max_rate_per_hour: float | None = None,
        counter_max: float | None = None,
        confirm_readings: int = 3,
        replacements: Iterable[Replacement] = (),
    ) -> None:
        self.max_rate_per_ms = None if max_rate_per_hour is None else max_rate_per_hour * 1.1 / 3_600_000
        self.counter_max = counter_max
        self.confirm_readings = confirm_readings
        self.last_value: float | None = None
        self.last_ms = 0
        self.rejected = 0
        self.replacement_mismatches = 0
        # pending replacements, latest first (popped from the end)
        self._replacements = sorted(replacements, key=lambda r: r.at_ms, reverse=True)
        # (first value, first time, last value, last time) of a level that was rejected
        self._candidate: tuple[float, int, float, int] | None = None
        self._candidate_n = 0

    def state(self) -> TrackerState:
        """The tracker's whole state, to :meth:`set_state` back if what the updates produced was not kept."""
        return (self.last_value, self.last_ms, self._candidate, self._candidate_n, self.rejected,
                self.replacement_mismatches, tuple(self._replacements))

    def set_state(self, state: TrackerState) -> None:
        """Return to a :meth:`state`."""
        (self.last_value, self.last_ms, self._candidate, self._candidate_n, self.rejected,
         self.replacement_mismatches, replacements) = state
        self._replacements = list(replacements)

    def restore(self, value: float, ts_ms: int) -> None:
        """Continue from a saved baseline (the last accepted reading): recorded replacements at or before it were
        bridged already, and a level that was being confirmed is forgotten."""
        self.last_value, self.last_ms = value, ts_ms
        self._candidate, self._candidate_n = None, 0
        reps = self._replacements
        while reps and reps[-1].at_ms <= ts_ms:
            reps.pop()

    def _plausible(self, amount: float, elapsed_ms: int) -> bool:
        return self.max_rate_per_ms is None or amount <= self.max_rate_per_ms * max(elapsed_ms, 1) + 1e-9

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
        if self._replacements and self._replacements[-1].at_ms <= ts_ms:
            return self._replace(last, value, ts_ms)
        elapsed = ts_ms - self.last_ms
        amount = value - last
        flag = DeltaFlag.OK
        if amount < 0 and self.counter_max is not None and last > 0.5 * self.counter_max:
            wrapped = self.counter_max - last + value
            if wrapped >= 0 and self._plausible(wrapped, elapsed):
                amount, flag = wrapped, DeltaFlag.ROLLOVER
        if amount >= 0 and self._plausible(amount, elapsed):
            self._candidate, self._candidate_n = None, 0
            start = self.last_ms
            self.last_value, self.last_ms = value, ts_ms
            return Delta(start, ts_ms, amount, flag)
        return self._reject(value, ts_ms)

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

    def _reject(self, value: float, ts_ms: int) -> Delta | None:
        self.rejected += 1
        cand = self._candidate
        # The same new level again (growing plausibly since it appeared): count toward a rebase.
        if cand is not None and value >= cand[2] and self._plausible(value - cand[2], ts_ms - cand[3]):
            self._candidate_n += 1
            self._candidate = (cand[0], cand[1], value, ts_ms)
        else:
            self._candidate_n = 1
            self._candidate = (value, ts_ms, value, ts_ms)
        if self._candidate_n >= self.confirm_readings:
            first_value, first_ms = self._candidate[0], self._candidate[1]
            self._candidate, self._candidate_n = None, 0
            self.last_value, self.last_ms = value, ts_ms
            # What was used between the last good reading and the jump is unknown and not booked;
            # what the counter counted since the new level appeared is.
            return Delta(first_ms, ts_ms, value - first_value, DeltaFlag.REBASED)
        return None
