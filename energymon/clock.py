"""Clocks: the wall clock, and a scaled clock for the demo's ``--speed``."""

from __future__ import annotations

import time
from datetime import datetime

from energymon.schema import datetime_to_ms

__all__ = ["ManualClock", "ScaledClock", "WallClock"]


class WallClock:
    """Event time is the system clock."""

    def now_ms(self) -> int:
        """Milliseconds since the epoch."""
        return time.time_ns() // 1_000_000

    def speed(self) -> float:
        """Always 1."""
        return 1.0


class ScaledClock:
    """Simulated time that starts at ``start`` and runs ``speed`` times faster than the wall clock."""

    def __init__(self, start: datetime, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._start_ms = datetime_to_ms(start)
        self._t0 = time.monotonic()
        self._speed = speed

    def now_ms(self) -> int:
        """Simulated ms since the epoch."""
        return self._start_ms + int((time.monotonic() - self._t0) * 1000 * self._speed)

    def speed(self) -> float:
        """Simulated seconds per real second."""
        return self._speed


class ManualClock:
    """A clock moved by hand, for tests."""

    def __init__(self, start: datetime) -> None:
        self._now = datetime_to_ms(start)

    def now_ms(self) -> int:
        """Current manual time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self._now += int(seconds * 1000)

    def speed(self) -> float:
        """Manual clocks are not scaled."""
        return 1.0
