"""Test clocks that do not depend on machine speed.

:class:`HeldClock` is a scaled clock that stands still at its start until :meth:`HeldClock.release` is called,
then runs ``speed`` times faster than the wall clock from that moment. A test builds its fixtures (stores,
services, setup calls) on a held clock and releases it once the thing under test is running, or on the first
event it waits for, so a slow setup on a busy machine never eats into simulated time.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime

from energymon.schema import datetime_to_ms

__all__ = ["HeldClock"]


class HeldClock:
    """Simulated time held at ``start`` until :meth:`release`, then ``speed`` times the wall clock."""

    def __init__(self, start: datetime, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._start_ms = datetime_to_ms(start)
        self._speed = speed
        self._t0: float | None = None
        self._lock = threading.Lock()

    def release(self) -> None:
        """Let time run from now on (again calls are ignored)."""
        with self._lock:
            if self._t0 is None:
                self._t0 = time.monotonic()

    @property
    def released(self) -> bool:
        """True once time runs."""
        return self._t0 is not None

    def now_ms(self) -> int:
        """Simulated ms since the epoch."""
        t0 = self._t0
        if t0 is None:
            return self._start_ms
        return self._start_ms + int((time.monotonic() - t0) * 1000 * self._speed)

    def speed(self) -> float:
        """Simulated seconds per real second."""
        return self._speed
