"""The gateway's durable outbound queue: a batch is on disk before it counts as collected.

SQLite in WAL mode with two tables:

* ``outbox(seq INTEGER PRIMARY KEY AUTOINCREMENT, created_ms, points, payload, gauges, thinned)``: the batches
  waiting for the broker. ``put`` commits before it returns; a batch leaves the table only when the broker
  acknowledged it (:meth:`OutboundQueue.remove`), or when a bound of the outbox evicts it (the policy layer,
  :mod:`energymon.gateway.outbox`, counts every point it evicts). The sequence number is the row id, so it is
  dense, survives restarts and never repeats: the processor uses it to recognise a batch that was re-sent after
  a crash or a lost PUBACK. ``gauges`` counts the batch's gauge points (the ones ``reduce_fidelity`` may drop),
  ``thinned`` marks a batch that policy already went over.
* ``quarantine(id, received_ms, meter, quantity, ts_ms, skew_ms, point)``: readings whose timestamps were too far
  from the gateway's clock, kept for the operator and never sent as if good (at most
  :data:`QUARANTINE_MAX_ROWS`, oldest deleted first).
* ``counters(meter, value, ts_ms)``: the last accepted reading of each counter the gateway cleans (the baseline
  of the next interval it computes). It is written in the same transaction as the batch that carries the intervals
  up to that reading (:meth:`OutboundQueue.carrying_counters`), so after a crash the baselines and the committed
  batches agree: no interval is computed twice, none is skipped.

Crash guarantee: with ``synchronous=FULL`` a committed batch survives a process crash and a power cut
(SQLite's WAL guarantee). At most the batches published but not yet removed are sent again after a restart.

Integrity: opening runs ``PRAGMA quick_check``. A corrupt file raises :class:`OutboxCorruptError` naming the file
and the recovery, unless the operator chose ``move_aside``: then the file (and its ``-wal``/``-shm``) is renamed
to ``<file>.corrupt-<UTC time>`` and a new, empty one is created whose sequence numbers continue from the current
Unix time in milliseconds, larger than any number the old file can have handed out, so the processor's
duplicate check never mistakes a new batch for an old one. Nothing is deleted.

A write that fails because the disk is full (``SQLITE_FULL``) raises :class:`OutboxDiskFullError`; the
transaction is rolled back and the queue stays usable, so writing resumes as soon as space is back.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from energymon.errors import EnergymonError

__all__ = [
    "QUARANTINE_MAX_ROWS",
    "ROW_OVERHEAD_BYTES",
    "CounterBaseline",
    "OnCorrupt",
    "OutboundQueue",
    "OutboxCorruptError",
    "OutboxDiskFullError",
    "OutboxError",
    "QuarantinedPoint",
    "QueuedBatch",
    "open_checked",
]

log = logging.getLogger(__name__)

QueuedBatch = tuple[int, int, bytes]  # (seq, points, payload)
#: (received_ms, meter, quantity, ts_ms, skew_ms, point as JSON)
QuarantinedPoint = tuple[int, str, str, int, int, str]
OnCorrupt = Literal["stop", "move_aside"]
#: (meter, last accepted counter value, its event time in ms)
CounterBaseline = tuple[str, float, int]

#: Bytes counted for one row besides its payload (row id, times, counts, SQLite's cell header and slack).
ROW_OVERHEAD_BYTES = 32

#: Rows kept in the quarantine table; beyond it the oldest are deleted (a meter with a wrong clock that sends
#: every second for weeks must not fill the outbox: 100,000 rows are about 20 MB).
QUARANTINE_MAX_ROWS = 100_000

_SQLITE_FULL = 13
_T = TypeVar("_T")


class OutboxError(EnergymonError):
    """The gateway's outbox (or edge history) file failed. Derives from :class:`EnergymonError`::

        OutboxError
        ├── OutboxCorruptError    the file failed its integrity check (fatal until the operator acts)
        └── OutboxDiskFullError   a write failed with SQLITE_FULL (retriable once space is back)
    """


class OutboxCorruptError(OutboxError):
    """An outbox or history file failed ``PRAGMA quick_check`` (or is not an SQLite database at all).

    Args:
        path: the file.
        detail: what SQLite reported.
        what: ``outbox`` or ``history``.
    """

    def __init__(self, path: str, detail: str, what: str = "outbox") -> None:
        self.path = path
        self.detail = detail
        super().__init__(
            f"{what} file {path} is corrupt ({detail}). Nothing was deleted. To recover: stop the gateway, keep a "
            f"copy of the file, and either salvage it (`sqlite3 {path} .recover | sqlite3 recovered.sqlite`, then "
            f"put the result in its place), or set `gateway.outbox_on_corrupt: move_aside` in the plant file: the "
            f"gateway then renames it to {path}.corrupt-<time> and starts with an empty {what} (what the old "
            f"file held is not sent, but stays on disk)."
        )


class OutboxDiskFullError(OutboxError):
    """A write to the outbox failed because the disk (or the database's page limit) is full."""

    retriable = True

    def __init__(self, path: str, detail: str = "database or disk is full") -> None:
        self.path = path
        super().__init__(f"outbox {path}: cannot write, {detail} (SQLITE_FULL); free disk space on the gateway")


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == _SQLITE_FULL or "database or disk is full" in str(exc)


def _quick_check(db: sqlite3.Connection) -> str | None:
    """None if the database is sound, else what SQLite reported."""
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    if rows == [("ok",)]:
        return None
    return "; ".join(str(r[0]) for r in rows[:3]) + (f" (+{len(rows) - 3} more)" if len(rows) > 3 else "")


def open_checked(
    path: str, *, what: str, on_corrupt: OnCorrupt, synchronous: str = "FULL"
) -> tuple[sqlite3.Connection, Path | None]:
    """Open an SQLite file in WAL mode after ``PRAGMA quick_check``.

    Returns the connection and, if a corrupt file was moved aside, where it went.

    Raises:
        OutboxCorruptError: the file is corrupt and ``on_corrupt`` is ``stop``.
    """
    moved: Path | None = None
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    if path != ":memory:":
        problem = _quick_check(db)
        if problem is not None:
            db.close()
            if on_corrupt == "stop":
                raise OutboxCorruptError(path, problem, what)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            moved = Path(f"{path}.corrupt-{stamp}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(path + suffix)
                if src.exists():
                    src.rename(Path(f"{moved}{suffix}"))
            log.error("%s file %s was corrupt (%s): moved aside to %s, starting a new one", what, path, problem, moved)
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA journal_size_limit=67108864")  # the WAL shrinks back to 64 MiB after a checkpoint
    except sqlite3.DatabaseError as exc:
        db.close()
        raise OutboxCorruptError(path, str(exc), what) from None
    return db, moved


class OutboundQueue:
    """A FIFO of encoded batches on disk, plus the quarantine table. Thread-safe.

    Args:
        path: the SQLite file (created if missing); ``:memory:`` only for tests.
        on_corrupt: what to do when the file fails its integrity check (see the module docstring).
    """

    def __init__(self, path: Path | str, *, on_corrupt: OnCorrupt = "stop") -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db, self.moved_aside = open_checked(self.path, what="outbox", on_corrupt=on_corrupt)
        with self._lock:
            # one transaction: a kill while a moved-aside outbox is replaced cannot leave numbering at 1
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, created_ms INTEGER NOT NULL,"
                " points INTEGER NOT NULL, payload BLOB NOT NULL, gauges INTEGER NOT NULL DEFAULT 0,"
                " thinned INTEGER NOT NULL DEFAULT 0)"
            )
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
            for name in ("gauges", "thinned"):  # outboxes written before these columns existed
                if name not in columns:
                    self._db.execute(f"ALTER TABLE outbox ADD COLUMN {name} INTEGER NOT NULL DEFAULT 0")
            # the batches reduce_fidelity may still thin, oldest first, without scanning the thinned ones
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS outbox_thinnable ON outbox (seq) WHERE thinned = 0 AND gauges > 0"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS quarantine (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " received_ms INTEGER NOT NULL, meter TEXT NOT NULL, quantity TEXT NOT NULL, ts_ms INTEGER NOT NULL,"
                " skew_ms INTEGER NOT NULL, point TEXT NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS counters (meter TEXT PRIMARY KEY, value REAL NOT NULL,"
                " ts_ms INTEGER NOT NULL)"
            )
            numbered = self._db.execute("SELECT 1 FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            aside = self.path != ":memory:" and any(Path(self.path).parent.glob(Path(self.path).name + ".corrupt-*"))
            if numbered is None and (self.moved_aside is not None or aside):
                self._db.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (time.time_ns() // 1_000_000,)
                )
            self._db.execute("COMMIT")
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(points), 0), COALESCE(SUM(length(payload)), 0) FROM outbox"
            ).fetchone()
            self._batches, self._points = int(row[0]), int(row[1])
            self._bytes = int(row[2]) + self._batches * ROW_OVERHEAD_BYTES
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(length(point)), 0) FROM quarantine").fetchone()
            self._bytes += int(row[1]) + int(row[0]) * ROW_OVERHEAD_BYTES
            self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        self._carry: list[CounterBaseline] | None = None

    # ------------------------------------------------------------------ writing

    def _write(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` in one immediate transaction (lock held by the caller); map SQLITE_FULL."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            result = fn()
            self._db.execute("COMMIT")
            return result
        except BaseException as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error) and _is_full(exc):
                raise OutboxDiskFullError(self.path, str(exc)) from None
            raise

    def next_seq(self) -> int:
        """The sequence number the next :meth:`put` will get (AUTOINCREMENT never reuses a number)."""
        with self._lock:
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        return (int(row[0]) if row else 0) + 1

    def put(self, build: Callable[[int], bytes], created_ms: int, points: int, gauges: int = 0) -> int:
        """Append a batch. ``build(seq) -> bytes`` encodes it once its sequence number is known.

        Returns the sequence number. The batch is durable when this returns.

        Raises:
            OutboxDiskFullError: the disk is full; nothing was written.
        """

        def insert() -> tuple[int, int]:
            cur = self._db.execute(
                "INSERT INTO outbox (created_ms, points, payload, gauges) VALUES (?, ?, x'', ?)",
                (created_ms, points, gauges),
            )
            seq = int(cur.lastrowid or 0)
            payload = build(seq)
            self._db.execute("UPDATE outbox SET payload = ? WHERE seq = ?", (payload, seq))
            if self._carry:
                self._db.executemany(
                    "INSERT INTO counters (meter, value, ts_ms) VALUES (?, ?, ?) ON CONFLICT(meter) DO UPDATE"
                    " SET value = excluded.value, ts_ms = excluded.ts_ms",
                    self._carry,
                )
            return seq, len(payload)

        with self._lock:
            seq, size = self._write(insert)
            self._carry = None  # saved with this batch
            self._batches += 1
            self._points += points
            self._bytes += size + ROW_OVERHEAD_BYTES
        return seq

    @contextlib.contextmanager
    def carrying_counters(self, baselines: Sequence[CounterBaseline]) -> Iterator[None]:
        """Within the block, the next :meth:`put` also saves these counter baselines, in its transaction.

        Leaving the block forgets them if no put committed (the batch was refused or failed): the caller then
        returns its trackers to where they were.
        """
        self._carry = list(baselines)
        try:
            yield
        finally:
            self._carry = None

    def counter_baselines(self) -> dict[str, tuple[float, int]]:
        """The saved counter baselines: meter → (last accepted value, its event time in ms)."""
        with self._lock:
            rows = self._db.execute("SELECT meter, value, ts_ms FROM counters").fetchall()
        return {str(m): (float(v), int(t)) for m, v, t in rows}

    def _delete(self, seqs: Sequence[int]) -> tuple[int, int, int]:
        """Delete rows (lock held, inside a transaction); (batches, points, bytes) actually deleted."""
        batches = points = size = 0
        for i in range(0, len(seqs), 500):
            part = list(seqs[i : i + 500])
            marks = ",".join("?" * len(part))
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(points), 0), COALESCE(SUM(length(payload)), 0) FROM outbox"
                f" WHERE seq IN ({marks})",
                part,
            ).fetchone()
            self._db.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", part)
            batches += int(row[0])
            points += int(row[1])
            size += int(row[2]) + int(row[0]) * ROW_OVERHEAD_BYTES
        return batches, points, size

    def _deleted(self, counts: tuple[int, int, int]) -> tuple[int, int]:
        """Account for deleted rows (lock held); returns (batches, points)."""
        batches, points, size = counts
        self._batches -= batches
        self._points -= points
        self._bytes -= size
        return batches, points

    def remove(self, seqs: Sequence[int]) -> int:
        """Delete acknowledged batches; returns the points deleted (a batch evicted meanwhile counts 0)."""
        if not seqs:
            return 0
        with self._lock:
            return self._deleted(self._write(lambda: self._delete(seqs)))[1]

    def evict_oldest(self, nbytes: int, *, keep: int = 1) -> tuple[int, int]:
        """Delete the oldest batches until their payloads add up to ``nbytes``, keeping the newest ``keep``.

        Returns (batches, points) deleted.
        """
        with self._lock:

            def evict() -> tuple[int, int, int]:
                cur = self._db.execute(
                    "SELECT seq, length(payload) FROM outbox ORDER BY seq LIMIT ?", (max(0, self._batches - keep),)
                )
                chosen: list[int] = []
                freed = 0
                for seq, size in cur:
                    if freed >= nbytes:
                        break
                    chosen.append(int(seq))
                    freed += int(size)
                cur.close()
                return self._delete(chosen)

            return self._deleted(self._write(evict))

    def expire(self, cutoff_ms: int) -> tuple[int, int]:
        """Delete the oldest batches created before ``cutoff_ms``; returns (batches, points) deleted.

        Batches are taken oldest first and the scan stops at the first young one, so a clock that stepped back
        delays expiry of a batch rather than making the scan read the whole table.
        """
        with self._lock:

            def expire() -> tuple[int, int, int]:
                batches = points = size = 0
                while True:
                    rows = self._db.execute("SELECT seq, created_ms FROM outbox ORDER BY seq LIMIT 500").fetchall()
                    run: list[int] = []
                    for seq, created in rows:
                        if created >= cutoff_ms:
                            break
                        run.append(int(seq))
                    b, p, n = self._delete(run)
                    batches, points, size = batches + b, points + p, size + n
                    if len(run) < 500:
                        break
                return batches, points, size

            return self._deleted(self._write(expire))

    def expire_quarantine(self, cutoff_ms: int) -> None:
        """Delete quarantined readings received before ``cutoff_ms``."""
        with self._lock:
            self._bytes -= self._write(lambda: self._delete_quarantine("received_ms < ?", cutoff_ms))

    def thinnable(self, limit: int) -> list[tuple[int, int, int, bytes]]:
        """The oldest ``limit`` batches that hold gauge points and were not thinned: (seq, points, gauges, payload)."""
        with self._lock:
            return [
                (int(s), int(n), int(g), bytes(p))
                for s, n, g, p in self._db.execute(
                    "SELECT seq, points, gauges, payload FROM outbox WHERE thinned = 0 AND gauges > 0 ORDER BY seq"
                    " LIMIT ?",
                    (limit,),
                )
            ]

    def rewrite(self, updates: Iterable[tuple[int, bytes | None, int, int]], visited: Iterable[int]) -> tuple[int, int]:
        """Replace batches by thinned versions and mark ``visited`` ones as thinned, in one transaction.

        ``updates`` holds (seq, payload or None to delete the batch, points left, gauges left). Returns the points
        removed (from the batches still present) and the batches deleted.
        """
        updates = list(updates)
        visited = list(visited)
        with self._lock:

            def apply() -> tuple[int, int, int]:
                removed = deleted = freed = 0
                for seq, payload, points, gauges in updates:
                    row = self._db.execute(
                        "SELECT points, length(payload) FROM outbox WHERE seq = ?", (seq,)
                    ).fetchone()
                    if row is None:
                        continue  # acknowledged meanwhile
                    removed += int(row[0]) - points
                    if payload is None:
                        self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
                        deleted += 1
                        freed += int(row[1]) + ROW_OVERHEAD_BYTES
                    else:
                        freed += int(row[1]) - len(payload)
                        self._db.execute(
                            "UPDATE outbox SET payload = ?, points = ?, gauges = ?, thinned = 1 WHERE seq = ?",
                            (payload, points, gauges, seq),
                        )
                self._db.executemany("UPDATE outbox SET thinned = 1 WHERE seq = ?", [(s,) for s in visited])
                return removed, deleted, freed

            removed, deleted, freed = self._write(apply)
            self._points -= removed
            self._batches -= deleted
            self._bytes -= freed
        return removed, deleted

    def quarantine(self, rows: Sequence[QuarantinedPoint]) -> None:
        """Set readings aside (bounded to :data:`QUARANTINE_MAX_ROWS`, oldest deleted first)."""
        if not rows:
            return
        with self._lock:

            def insert() -> None:
                self._db.executemany(
                    "INSERT INTO quarantine (received_ms, meter, quantity, ts_ms, skew_ms, point)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self._bytes += sum(len(r[5]) + ROW_OVERHEAD_BYTES for r in rows)
                self._bytes -= self._delete_quarantine(
                    "id <= (SELECT MAX(id) FROM quarantine) - ?", QUARANTINE_MAX_ROWS
                )

            before = self._bytes
            try:
                self._write(insert)
            except BaseException:
                self._bytes = before
                raise

    def _delete_quarantine(self, where: str, arg: int) -> int:
        """Delete quarantine rows (lock held, in a transaction); returns the bytes they counted."""
        row = self._db.execute(f"SELECT COUNT(*), COALESCE(SUM(length(point)), 0) FROM quarantine WHERE {where}",
                               (arg,)).fetchone()
        if not row[0]:
            return 0
        self._db.execute(f"DELETE FROM quarantine WHERE {where}", (arg,))
        return int(row[1]) + int(row[0]) * ROW_OVERHEAD_BYTES

    # ------------------------------------------------------------------ reading

    def peek(self, limit: int, *, min_seq: int = 0, max_seq: int | None = None) -> list[QueuedBatch]:
        """The oldest ``limit`` batches with ``min_seq <= seq < max_seq``, oldest first, without removing them."""
        hi = max_seq if max_seq is not None else 2**63 - 1
        with self._lock:
            return [
                (int(s), int(n), bytes(p))
                for s, n, p in self._db.execute(
                    "SELECT seq, points, payload FROM outbox WHERE seq >= ? AND seq < ? ORDER BY seq LIMIT ?",
                    (min_seq, hi, limit),
                )
            ]

    def depth(self) -> tuple[int, int]:
        """(batches, points) waiting."""
        with self._lock:
            return self._batches, self._points

    def oldest_ms(self) -> int | None:
        """Creation time of the oldest waiting batch."""
        with self._lock:
            row = self._db.execute("SELECT created_ms FROM outbox ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    def stored_bytes(self) -> int:
        """Bytes the outbox holds: every payload and quarantined reading plus :data:`ROW_OVERHEAD_BYTES` a row.

        This is what the bound applies to. The file is larger by SQLite's page slack (about 3 % with 1,000-point
        batches), and it never shrinks: freed pages are reused.
        """
        with self._lock:
            return self._bytes

    def file_bytes(self) -> int:
        """Bytes of the database file in use: pages that are not on the free list."""
        with self._lock:
            pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
            free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self._page_size

    def quarantined(self, limit: int = 1000) -> list[QuarantinedPoint]:
        """The newest quarantined readings, newest first."""
        with self._lock:
            return [
                (int(r), str(m), str(q), int(t), int(k), str(p))
                for r, m, q, t, k, p in self._db.execute(
                    "SELECT received_ms, meter, quantity, ts_ms, skew_ms, point FROM quarantine ORDER BY id DESC"
                    " LIMIT ?",
                    (limit,),
                )
            ]

    def execute_pragma(self, pragma: str) -> list[tuple[Any, ...]]:
        """Run a ``PRAGMA`` on the queue's connection (operations and tests, e.g. ``max_page_count``)."""
        if not pragma.lstrip().upper().startswith("PRAGMA "):
            raise ValueError("only PRAGMA statements")
        with self._lock:
            return list(self._db.execute(pragma).fetchall())

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
