"""The processor's counter baselines on disk, so a restart books the consumption across the restart.

A counter's interval consumption is the difference between two readings. Without this file a restarted
processor would take its first reading as a new baseline and the consumption between the last reading before
the restart and the first one after it would be lost. The processor saves the baselines after every successful
store write and before it acknowledges the messages, so:

* a crash after the save but before the acknowledgements makes the broker redeliver readings the trackers have
  already passed; they are not newer than the saved baseline and book nothing (their raw rows are rewritten with
  the same timestamps, which overwrites);
* a crash before the save redelivers the same readings against the previous baselines and books the same
  deltas at the same timestamps again, which also overwrites.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from energymon.counters import CounterTracker

__all__ = ["CounterStateFile"]


class CounterStateFile:
    """Last accepted reading per counter, in SQLite (WAL, synchronous=FULL). Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS counters"
                " (meter TEXT PRIMARY KEY, value REAL NOT NULL, ts_ms INTEGER NOT NULL)"
            )

    def load(self) -> dict[str, tuple[float, int]]:
        """Saved baselines: meter → (last accepted value, its event time in ms)."""
        with self._lock:
            return {m: (float(v), int(t)) for m, v, t in self._db.execute("SELECT meter, value, ts_ms FROM counters")}

    def restore(self, trackers: dict[str, CounterTracker]) -> int:
        """Set each tracker's baseline from the file; returns how many were restored."""
        saved = self.load()
        n = 0
        for meter, tracker in trackers.items():
            if meter in saved and tracker.last_value is None:
                tracker.restore(*saved[meter])
                n += 1
        return n

    @staticmethod
    def snapshot(trackers: Iterable[tuple[str, CounterTracker]]) -> list[tuple[str, float, int]]:
        """The baselines of the given trackers now: take it together with the rows it belongs to."""
        return [(m, t.last_value, t.last_ms) for m, t in trackers if t.last_value is not None]

    def save(self, rows: list[tuple[str, float, int]]) -> None:
        """Write a :meth:`snapshot` in one transaction."""
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO counters (meter, value, ts_ms) VALUES (?, ?, ?) "
                "ON CONFLICT(meter) DO UPDATE SET value = excluded.value, ts_ms = excluded.ts_ms",
                rows,
            )
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()
