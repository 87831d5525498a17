"""The delivery outbox: every record a notifier has to deliver, on disk until its receiver acknowledged it.

One table, ``deliveries``, in the alert state file (``alerts.sqlite``; an in-memory database when a notifier
is built without one). A notifier's :meth:`notify` inserts a row and returns; its worker sends the rows that
are due and deletes a row only once the receiver accepted it (HTTP 2xx, SMTP accepted, MQTT PUBACK). After a
crash the next start finds the rows and sends them again: delivery is *at least once*.

* **Delivery id.** Each row has a ``delivery_id`` derived from (notifier, alert id, version, event, and for a
  reminder the time it was due), so the same record handed over twice (the engine repeats a notification it
  could not mark as sent before a crash) is one row, and a receiver sees the same id on every attempt, retry
  and replay of one record: it de-duplicates on it.
* **Order.** Per notifier and alert id, only the oldest waiting row is sent; the next waits until it was
  acknowledged or dead-lettered. A resolution never overtakes its firing, while the rows of other alerts go on.
* **Schedule.** Each row carries its own ``next_ms`` (wall clock): one record's back-off holds no other.
* **Dead letters.** A row that gave up keeps its place with ``dead_ms`` set (and the reason); the rows that
  follow it in the same alert cycle are dead-lettered with it, so a receiver never gets the resolution of a
  firing it did not get. ``energymon alerts replay`` puts dead rows back in the queue, in their order.
* **Clean-up.** :meth:`~DeliveryOutbox.retire` dead-letters the waiting rows of notifiers no longer in the
  plant file; :meth:`~DeliveryOutbox.purge_dead` forgets dead rows past their keeping time.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DeliveryOutbox", "OutboxRow", "delivery_id"]

_NAMESPACE = uuid.UUID("6f1d3c2a-5b9e-4c1f-9a7d-2e8b0c4d6a10")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, delivery_id TEXT NOT NULL UNIQUE, notifier TEXT NOT NULL,
    alert_id TEXT NOT NULL, started_ms INTEGER NOT NULL, version INTEGER NOT NULL, event TEXT NOT NULL,
    record TEXT NOT NULL, created_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_ms INTEGER NOT NULL, last_error TEXT NOT NULL DEFAULT '', dead_ms INTEGER);
CREATE INDEX IF NOT EXISTS deliveries_head ON deliveries (notifier, alert_id, seq);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (notifier, dead_ms, next_ms)
"""


def delivery_id(notifier: str, record: dict[str, Any]) -> str:
    """The stable id of one record's delivery to one notifier (a UUID, as text)."""
    event = record.get("event") or record["state"]
    key = f"{notifier}|{record['id']}|{record['version']}|{event}"
    if event in ("reminder", "acknowledged"):
        key += f"|{record.get('last_notified_ms') if event == 'reminder' else record.get('acked_ms')}"
    return str(uuid.uuid5(_NAMESPACE, key))


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One waiting (or dead-lettered) delivery."""

    seq: int
    delivery_id: str
    notifier: str
    alert_id: str
    started_ms: int
    version: int
    event: str
    record: dict[str, Any]
    created_ms: int
    attempts: int
    next_ms: int
    last_error: str
    dead_ms: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "seq": self.seq, "delivery_id": self.delivery_id, "notifier": self.notifier, "alert_id": self.alert_id,
            "version": self.version, "event": self.event, "created_ms": self.created_ms, "attempts": self.attempts,
            "next_ms": self.next_ms, "last_error": self.last_error, "dead_ms": self.dead_ms,
        }


_COLUMNS = ("seq, delivery_id, notifier, alert_id, started_ms, version, event, record, created_ms, attempts,"
            " next_ms, last_error, dead_ms")


def _exclusion(alert_ids: Collection[str]) -> tuple[str, tuple[str, ...]]:
    """SQL (and its arguments) leaving out the rows of some alert ids."""
    if not alert_ids:
        return "", ()
    ids = tuple(alert_ids)
    return f" AND d.alert_id NOT IN ({', '.join('?' * len(ids))})", ids


def _row(r: Sequence[Any]) -> OutboxRow:
    return OutboxRow(int(r[0]), r[1], r[2], r[3], int(r[4]), int(r[5]), r[6], json.loads(r[7]), int(r[8]),
                     int(r[9]), int(r[10]), r[11], None if r[12] is None else int(r[12]))


class DeliveryOutbox:
    """The ``deliveries`` table. Thread-safe; several notifiers (and the CLI) may share one file.

    Args:
        path: the SQLite file (the alert state file); None keeps the outbox in memory (nothing survives the
            process: for tests and tools that build a notifier on its own).
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.durable = path is not None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(":memory:" if self.path is None else str(self.path), check_same_thread=False,
                                   isolation_level=None, timeout=30.0)
        if self.path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=30000")
        with self._tx() as db:
            for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                db.execute(statement)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------ the notifier's side

    def add(self, notifier: str, record: dict[str, Any], now_ms: int, *, supersede: bool = False) -> tuple[str, bool]:
        """Keep a record for delivery; returns (delivery id, True if new). A record already kept is kept once.

        ``supersede``: drop the alert's older rows still waiting, and keep nothing if a newer one waits (retained
        MQTT state: only the newest counts).
        """
        did = delivery_id(notifier, record)
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        with self._tx() as db:
            if supersede:
                newer = db.execute("SELECT 1 FROM deliveries WHERE notifier = ? AND alert_id = ? AND dead_ms IS NULL"
                                   " AND version > ?", (notifier, record["id"], record["version"])).fetchone()
                if newer is not None:
                    return did, False
                db.execute("DELETE FROM deliveries WHERE notifier = ? AND alert_id = ? AND dead_ms IS NULL"
                           " AND version <= ? AND delivery_id != ?", (notifier, record["id"], record["version"], did))
            cur = db.execute(
                "INSERT OR IGNORE INTO deliveries (delivery_id, notifier, alert_id, started_ms, version, event,"
                " record, created_ms, next_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (did, notifier, record["id"], int(record["started_ms"]), int(record["version"]),
                 record.get("event") or record["state"], text, now_ms, now_ms),
            )
        return did, cur.rowcount > 0

    def due(self, notifier: str, now_ms: int, limit: int = 100, *, exclude: Collection[str] = ()) -> list[OutboxRow]:
        """The waiting rows due now that are the oldest waiting row of their alert, oldest first.

        ``exclude``: alert ids whose head row is being delivered now (they have nothing else due)."""
        skip, args = _exclusion(exclude)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM deliveries d WHERE notifier = ? AND dead_ms IS NULL AND next_ms <= ?{skip}"
                " AND seq = (SELECT MIN(seq) FROM deliveries h WHERE h.notifier = d.notifier"
                " AND h.alert_id = d.alert_id AND h.dead_ms IS NULL) ORDER BY seq LIMIT ?",
                (notifier, now_ms, *args, limit),
            ).fetchall()
        return [_row(r) for r in rows]

    def next_due_ms(self, notifier: str, *, exclude: Collection[str] = ()) -> int | None:
        """The earliest ``next_ms`` of a row that is the oldest waiting row of its alert (None: nothing waits).

        A row waiting behind another of its alert is not due before that one is done, whatever its own time;
        nor is anything of an alert in ``exclude`` (being delivered now)."""
        skip, args = _exclusion(exclude)
        with self._lock:
            row = self._db.execute(
                f"SELECT MIN(next_ms) FROM deliveries d WHERE notifier = ? AND dead_ms IS NULL{skip}"
                " AND seq = (SELECT MIN(seq) FROM deliveries h WHERE h.notifier = d.notifier"
                " AND h.alert_id = d.alert_id AND h.dead_ms IS NULL)", (notifier, *args)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def pending(self, notifier: str) -> tuple[int, int | None]:
        """(rows waiting, ``created_ms`` of the oldest)."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*), MIN(created_ms) FROM deliveries WHERE notifier = ?"
                                   " AND dead_ms IS NULL", (notifier,)).fetchone()
        return int(row[0]), (None if row[1] is None else int(row[1]))

    def delivered(self, seq: int) -> None:
        """The receiver accepted the row: forget it."""
        with self._tx() as db:
            db.execute("DELETE FROM deliveries WHERE seq = ?", (seq,))

    def retry_at(self, seq: int, *, attempts: int, next_ms: int, error: str) -> None:
        """Schedule the row's next attempt."""
        with self._tx() as db:
            db.execute("UPDATE deliveries SET attempts = ?, next_ms = ?, last_error = ? WHERE seq = ?",
                       (attempts, next_ms, error[:500], seq))

    def dead_letter(self, seq: int, *, attempts: int, now_ms: int, reason: str) -> list[OutboxRow]:
        """Give up on a row, and on the rows waiting behind it in the same alert cycle; returns them all."""
        with self._tx() as db:
            head = db.execute(f"SELECT {_COLUMNS} FROM deliveries WHERE seq = ?", (seq,)).fetchone()
            if head is None:
                return []
            first = _row(head)
            db.execute("UPDATE deliveries SET attempts = ?, last_error = ?, dead_ms = ? WHERE seq = ?",
                       (attempts, reason[:500], now_ms, seq))
            rows = [_row(r) for r in db.execute(
                f"SELECT {_COLUMNS} FROM deliveries WHERE notifier = ? AND alert_id = ? AND started_ms = ?"
                " AND dead_ms IS NULL AND seq > ? ORDER BY seq",
                (first.notifier, first.alert_id, first.started_ms, seq)).fetchall()]
            follow = f"follows delivery {first.delivery_id}, which was not delivered"
            for r in rows:
                db.execute("UPDATE deliveries SET last_error = ?, dead_ms = ? WHERE seq = ?", (follow, now_ms, r.seq))
        return [first, *rows]

    def take_all(self, notifier: str) -> list[OutboxRow]:
        """Remove and return every waiting row of a notifier (an in-memory outbox at close)."""
        with self._tx() as db:
            rows = [_row(r) for r in db.execute(
                f"SELECT {_COLUMNS} FROM deliveries WHERE notifier = ? AND dead_ms IS NULL ORDER BY seq",
                (notifier,)).fetchall()]
            db.execute("DELETE FROM deliveries WHERE notifier = ? AND dead_ms IS NULL", (notifier,))
        return rows

    # ------------------------------------------------------------------ the operator's side

    def rows(self, *, notifier: str | None = None, dead: bool | None = None) -> list[OutboxRow]:
        """Rows (waiting, dead-lettered, or both), oldest first."""
        sql = f"SELECT {_COLUMNS} FROM deliveries WHERE 1=1"
        args: list[Any] = []
        if notifier is not None:
            sql += " AND notifier = ?"
            args.append(notifier)
        if dead is True:
            sql += " AND dead_ms IS NOT NULL"
        elif dead is False:
            sql += " AND dead_ms IS NULL"
        with self._lock:
            return [_row(r) for r in self._db.execute(sql + " ORDER BY seq", args).fetchall()]

    def replay(self, now_ms: int, *, notifier: str | None = None, delivery_ids: Sequence[str] = (),
               only: Collection[str] | None = None) -> list[OutboxRow]:
        """Put dead-lettered rows back in the queue (due now, a fresh retry window); returns them.

        ``only``: notifier ids whose rows may be replayed (the plant's notifiers); the others stay dead."""
        targets = self.rows(notifier=notifier, dead=True)
        if delivery_ids:
            wanted = set(delivery_ids)
            targets = [r for r in targets if r.delivery_id in wanted]
        if only is not None:
            allowed = set(only)
            targets = [r for r in targets if r.notifier in allowed]
        with self._tx() as db:
            for r in targets:
                db.execute("UPDATE deliveries SET dead_ms = NULL, attempts = 0, next_ms = ?, created_ms = ?,"
                           " last_error = '' WHERE seq = ? AND dead_ms IS NOT NULL", (now_ms, now_ms, r.seq))
        return targets

    def drop(self, *, notifier: str | None = None, delivery_ids: Sequence[str] = ()) -> list[OutboxRow]:
        """Forget dead-lettered rows (their dead-letter file keeps them); returns them."""
        targets = self.rows(notifier=notifier, dead=True)
        if delivery_ids:
            wanted = set(delivery_ids)
            targets = [r for r in targets if r.delivery_id in wanted]
        with self._tx() as db:
            for r in targets:
                db.execute("DELETE FROM deliveries WHERE seq = ? AND dead_ms IS NOT NULL", (r.seq,))
        return targets

    def notifier_counts(self) -> dict[str, tuple[int, int]]:
        """Per notifier id with rows: (rows waiting, dead letters)."""
        with self._lock:
            rows = self._db.execute("SELECT notifier, SUM(dead_ms IS NULL), SUM(dead_ms IS NOT NULL) FROM deliveries"
                                    " GROUP BY notifier ORDER BY notifier").fetchall()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def retire(self, keep: Collection[str], now_ms: int) -> list[OutboxRow]:
        """Dead-letter every waiting row of a notifier not in ``keep`` (removed from the plant file: nothing would
        ever send them); returns them, oldest first. Rows already dead are left as they are."""
        kept = tuple(keep)
        skip = f" AND notifier NOT IN ({', '.join('?' * len(kept))})" if kept else ""
        with self._tx() as db:
            rows = [_row(r) for r in db.execute(
                f"SELECT {_COLUMNS} FROM deliveries WHERE dead_ms IS NULL{skip} ORDER BY seq", kept).fetchall()]
            for r in rows:
                db.execute("UPDATE deliveries SET dead_ms = ?, last_error = ? WHERE seq = ?",
                           (now_ms, f"notifier {r.notifier} is no longer in the plant file", r.seq))
        return rows

    def purge_dead(self, before_ms: int, *, notifier: str | None = None) -> dict[str, int]:
        """Forget dead letters dead-lettered before ``before_ms`` (of one notifier, or all); returns counts per
        notifier."""
        sql = " FROM deliveries WHERE dead_ms IS NOT NULL AND dead_ms < ?"
        args: list[Any] = [before_ms]
        if notifier is not None:
            sql += " AND notifier = ?"
            args.append(notifier)
        with self._tx() as db:
            counts = {r[0]: int(r[1]) for r in db.execute(
                f"SELECT notifier, COUNT(*){sql} GROUP BY notifier ORDER BY notifier", args).fetchall()}
            if counts:
                db.execute(f"DELETE{sql}", args)
        return counts
