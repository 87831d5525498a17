"""The gateway's durable outbound queue: a batch is on disk before it counts as collected.

SQLite in WAL mode, one table ``outbox(seq INTEGER PRIMARY KEY, created_ms, points, payload)``. ``put`` commits
before it returns; a batch leaves the table only when the broker acknowledged it (:meth:`OutboundQueue.remove`).
The sequence number is the row id, so it is dense, survives restarts and never repeats: the processor uses it
to recognise a batch that was re-sent after a crash or a lost PUBACK.

Crash guarantee: with ``synchronous=FULL`` a committed batch survives a process crash and a power cut
(SQLite's WAL guarantee). At most the batches published but not yet removed are sent again after a restart.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

__all__ = ["OutboundQueue", "QueuedBatch"]

QueuedBatch = tuple[int, int, bytes]  # (seq, points, payload)


class OutboundQueue:
    """A FIFO of encoded batches on disk. Thread-safe.

    Args:
        path: the SQLite file (created if missing); ``:memory:`` only for tests.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, created_ms INTEGER NOT NULL,"
                " points INTEGER NOT NULL, payload BLOB NOT NULL)"
            )

    def next_seq(self) -> int:
        """The sequence number the next :meth:`put` will get (AUTOINCREMENT never reuses a number)."""
        with self._lock:
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        return (row[0] if row else 0) + 1

    def put(self, build: object, created_ms: int, points: int) -> int:
        """Append a batch. ``build(seq) -> bytes`` encodes it once its sequence number is known.

        Returns the sequence number. The batch is durable when this returns.
        """
        assert callable(build)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "INSERT INTO outbox (created_ms, points, payload) VALUES (?, ?, x'')", (created_ms, points)
                )
                seq = int(cur.lastrowid or 0)
                self._db.execute("UPDATE outbox SET payload = ? WHERE seq = ?", (build(seq), seq))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return seq

    def peek(self, limit: int) -> list[QueuedBatch]:
        """The oldest ``limit`` batches, oldest first, without removing them."""
        with self._lock:
            return [
                (int(s), int(n), bytes(p))
                for s, n, p in self._db.execute(
                    "SELECT seq, points, payload FROM outbox ORDER BY seq LIMIT ?", (limit,)
                )
            ]

    def remove(self, seqs: list[int]) -> None:
        """Delete acknowledged batches."""
        if not seqs:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
            self._db.execute("COMMIT")

    def depth(self) -> tuple[int, int]:
        """(batches, points) waiting."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(points), 0) FROM outbox").fetchone()
        return int(row[0]), int(row[1])

    def oldest_ms(self) -> int | None:
        """Creation time of the oldest waiting batch."""
        with self._lock:
            row = self._db.execute("SELECT MIN(created_ms) FROM outbox").fetchone()
        return None if row[0] is None else int(row[0])

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
