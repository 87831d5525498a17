"""Compatibility name of :mod:`energymon.counters`, where the counter rules live."""

from energymon.counters import CounterTracker, Delta, DeltaFlag, Replacement, TrackerState

__all__ = ["CounterTracker", "Delta", "DeltaFlag", "Replacement", "TrackerState"]
