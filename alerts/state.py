"""Alert state, history, acknowledgements and silences in one SQLite file (``alerts.sqlite`` in the data dir).

The engine writes it on every change of an alert and reads it back when it starts, so a restart neither loses
an active alert nor notifies it again. The ``energymon alerts`` command opens the same file from another
process to list alerts, acknowledge them and add silences; the engine notices those writes on its next tick
(``PRAGMA data_version`` changes when another connection commits) and applies them.

Tables:

* ``tracks``: one row per (rule, source) ever seen: the current pending or firing record (``state`` is null
  while inactive), the version counter, what the notifiers last heard, and the keep-firing clock.
* ``history``: one row per event (``pending`` is not one): ``firing``, ``escalated``, ``updated``,
  ``reminder``, ``resolved``, ``acknowledged``, ``rule_removed``, with ``notified`` 0 when a silence held it.
* ``acks``: acknowledgements per alert cycle (alert id + ``started_ms``).
* ``silences``: rule, optional source, start and end (engine clock, ms), comment.
* ``rule_state``: JSON snapshots of stateful rules (completeness counts, last counter values).
* ``meta``: what the processor last started with (``plant``: rule ids, sources, notifier ids, time zone), so
  ``energymon alerts`` can refuse a name the plant does not have.
* ``deliveries``: the notifiers' outbox (:mod:`energymon.alerts.outbox`): records not yet accepted by their
  receiver, and dead letters.

The file is in WAL mode with ``synchronous=NORMAL``: a committed change survives a process crash; a power cut
may lose the last transactions.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["STATE_FILE", "AlertStore", "HistoryEntry", "Silence", "TrackRecord"]

#: The alert state file's name in the data directory.
STATE_FILE = "alerts.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tracks (
    rule_id TEXT NOT NULL, source TEXT NOT NULL, version INTEGER NOT NULL, state TEXT, data TEXT NOT NULL,
    updated_ms INTEGER NOT NULL, PRIMARY KEY (rule_id, source));
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, ts_ms INTEGER, alert_id TEXT NOT NULL,
    rule_id TEXT NOT NULL, source TEXT NOT NULL, event TEXT NOT NULL, state TEXT NOT NULL, severity TEXT NOT NULL,
    version INTEGER NOT NULL, notified INTEGER NOT NULL, by TEXT NOT NULL DEFAULT '', comment TEXT NOT NULL DEFAULT '',
    record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS history_alert ON history (rule_id, source, at_ms);
CREATE INDEX IF NOT EXISTS history_at ON history (at_ms);
CREATE TABLE IF NOT EXISTS acks (
    alert_id TEXT NOT NULL, started_ms INTEGER NOT NULL, by TEXT NOT NULL, comment TEXT NOT NULL,
    at_ms INTEGER NOT NULL, PRIMARY KEY (alert_id, started_ms));
CREATE TABLE IF NOT EXISTS silences (
    id INTEGER PRIMARY KEY AUTOINCREMENT, rule_id TEXT NOT NULL, source TEXT, starts_ms INTEGER NOT NULL,
    ends_ms INTEGER NOT NULL, comment TEXT NOT NULL, by TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rule_state (rule_id TEXT PRIMARY KEY, data TEXT NOT NULL, saved_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, data TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Silence:
    """Alerts of ``rule_id`` (and ``source``, if set) are not notified from ``starts_ms`` until ``ends_ms``.

    Times are the engine clock's (the wall clock in production), in ms since the epoch.
    """

    id: int
    rule_id: str
    source: str | None
    starts_ms: int
    ends_ms: int
    comment: str
    by: str = ""
    created_ms: int = 0

    def matches(self, rule_id: str, source: str, now_ms: int) -> bool:
        """True if this silence covers that alert at ``now_ms``."""
        return (
            self.rule_id == rule_id and (self.source is None or self.source == source)
            and self.starts_ms <= now_ms < self.ends_ms
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "id": self.id, "rule_id": self.rule_id, "source": self.source, "starts_ms": self.starts_ms,
            "ends_ms": self.ends_ms, "comment": self.comment, "by": self.by, "created_ms": self.created_ms,
        }


@dataclass(frozen=True, slots=True)
class TrackRecord:
    """One persisted (rule, source): version counter, the active record (JSON) and the engine's bookkeeping."""

    rule_id: str
    source: str
    version: int
    state: str | None
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One row of the alert history."""

    seq: int
    at_ms: int
    ts_ms: int | None
    alert_id: str
    event: str
    state: str
    severity: str
    version: int
    notified: bool
    by: str
    comment: str
    record: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "seq": self.seq, "at_ms": self.at_ms, "ts_ms": self.ts_ms, "alert_id": self.alert_id,
            "event": self.event, "state": self.state, "severity": self.severity, "version": self.version,
            "notified": self.notified, "by": self.by, "comment": self.comment, "summary": self.record.get("summary"),
            "value": self.record.get("value"),
        }


class AlertStore:
    """The alert state file. Thread-safe; several processes may open the same file (WAL, busy timeout).

    Args:
        path: the SQLite file (created with its directory if missing).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        with self._tx() as db:  # executescript would commit on its own: run the statements one by one
            for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                db.execute(statement)
        self._data_version = self._version()

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

    def _version(self) -> int:
        row = self._db.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def changed_elsewhere(self) -> bool:
        """True once after another connection (the CLI) committed something since the last call."""
        with self._lock:
            version = self._version()
            if version == self._data_version:
                return False
            self._data_version = version
            return True

    # ------------------------------------------------------------------ tracks

    def save_track(self, rule_id: str, source: str, version: int, state: str | None, data: dict[str, Any],
                   at_ms: int, history: list[dict[str, Any]] | None = None) -> None:
        """Write one track and its new history rows in one transaction."""
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        with self._tx() as db:
            db.execute(
                "INSERT INTO tracks (rule_id, source, version, state, data, updated_ms) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (rule_id, source) DO UPDATE SET version=excluded.version, state=excluded.state,"
                " data=excluded.data, updated_ms=excluded.updated_ms",
                (rule_id, source, version, state, text, at_ms),
            )
            for entry in history or ():
                self._insert_history(db, entry)

    def delete_track(self, rule_id: str, source: str) -> None:
        """Forget a track (its rule is gone)."""
        with self._tx() as db:
            db.execute("DELETE FROM tracks WHERE rule_id = ? AND source = ?", (rule_id, source))

    def tracks(self) -> list[TrackRecord]:
        """Every persisted track."""
        with self._lock:
            rows = self._db.execute("SELECT rule_id, source, version, state, data FROM tracks").fetchall()
        return [TrackRecord(r[0], r[1], int(r[2]), r[3], json.loads(r[4])) for r in rows]

    def active(self, *, rule_id: str | None = None, source: str | None = None) -> list[dict[str, Any]]:
        """The pending and firing records (as stored), optionally of one rule and source."""
        sql = "SELECT data FROM tracks WHERE state IS NOT NULL"
        args: list[Any] = []
        if rule_id is not None:
            sql += " AND rule_id = ?"
            args.append(rule_id)
        if source is not None:
            sql += " AND source = ?"
            args.append(source)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY rule_id, source", args).fetchall()
        out: list[dict[str, Any]] = []
        for (text,) in rows:
            alert = json.loads(text).get("alert")
            if isinstance(alert, dict):
                out.append(alert)
        return out

    # ------------------------------------------------------------------ history

    @staticmethod
    def _insert_history(db: sqlite3.Connection, entry: dict[str, Any]) -> None:
        record = entry["record"]
        db.execute(
            "INSERT INTO history (at_ms, ts_ms, alert_id, rule_id, source, event, state, severity, version,"
            " notified, by, comment, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry["at_ms"], entry.get("ts_ms"), record["id"], record["rule_id"], record["source"],
                entry["event"], record["state"], record["severity"], record["version"],
                1 if entry.get("notified") else 0, entry.get("by", ""), entry.get("comment", ""),
                json.dumps(record, ensure_ascii=False, separators=(",", ":")),
            ),
        )

    def history(self, *, rule_id: str | None = None, source: str | None = None, since_ms: int | None = None,
                limit: int = 1000) -> list[HistoryEntry]:
        """History rows, oldest first, filtered by rule, source and time (engine clock, ms)."""
        sql = ("SELECT seq, at_ms, ts_ms, alert_id, event, state, severity, version, notified, by, comment, record"
               " FROM history WHERE 1=1")
        args: list[Any] = []
        if rule_id is not None:
            sql += " AND rule_id = ?"
            args.append(rule_id)
        if source is not None:
            sql += " AND source = ?"
            args.append(source)
        if since_ms is not None:
            sql += " AND at_ms >= ?"
            args.append(since_ms)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [
            HistoryEntry(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5], r[6], int(r[7]), bool(r[8]), r[9], r[10],
                         json.loads(r[11]))
            for r in reversed(rows)
        ]

    # ------------------------------------------------------------------ acks

    def ack(self, alert_id: str, *, by: str, comment: str, at_ms: int) -> dict[str, Any]:
        """Acknowledge the current cycle of a firing alert; returns its stored record.

        Raises:
            KeyError: no firing alert has this id.
        """
        rule_id, _, source = alert_id.partition(":")
        with self._tx() as db:
            row = db.execute(
                "SELECT data FROM tracks WHERE rule_id = ? AND source = ? AND state = 'firing'", (rule_id, source)
            ).fetchone()
            if row is None:
                raise KeyError(alert_id)
            record: dict[str, Any] = json.loads(row[0])["alert"]
            db.execute(
                "INSERT INTO acks (alert_id, started_ms, by, comment, at_ms) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (alert_id, started_ms) DO UPDATE SET by=excluded.by, comment=excluded.comment,"
                " at_ms=excluded.at_ms",
                (alert_id, record["started_ms"], by, comment, at_ms),
            )
            self._insert_history(db, {"at_ms": at_ms, "ts_ms": None, "event": "acknowledged", "record": record,
                                      "notified": False, "by": by, "comment": comment})
        return record

    def acks(self) -> dict[tuple[str, int], tuple[str, str, int]]:
        """(alert id, started_ms) → (by, comment, at_ms) for every acknowledgement."""
        with self._lock:
            rows = self._db.execute("SELECT alert_id, started_ms, by, comment, at_ms FROM acks").fetchall()
        return {(r[0], int(r[1])): (r[2], r[3], int(r[4])) for r in rows}

    # ------------------------------------------------------------------ silences

    def add_silence(self, rule_id: str, source: str | None, *, starts_ms: int, ends_ms: int, comment: str,
                    by: str, created_ms: int) -> Silence:
        """Store a silence and return it with its id."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO silences (rule_id, source, starts_ms, ends_ms, comment, by, created_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rule_id, source, starts_ms, ends_ms, comment, by, created_ms),
            )
            sid = cur.lastrowid
        assert sid is not None
        return Silence(sid, rule_id, source, starts_ms, ends_ms, comment, by, created_ms)

    def expire_silence(self, silence_id: int, at_ms: int) -> bool:
        """End a silence now; False if it does not exist or has already ended."""
        with self._tx() as db:
            cur = db.execute("UPDATE silences SET ends_ms = ? WHERE id = ? AND ends_ms > ?",
                             (at_ms, silence_id, at_ms))
            return cur.rowcount > 0

    def silences(self, *, active_at_ms: int | None = None) -> list[Silence]:
        """Silences (those not yet ended at ``active_at_ms``, if given), oldest first."""
        sql = "SELECT id, rule_id, source, starts_ms, ends_ms, comment, by, created_ms FROM silences"
        args: list[Any] = []
        if active_at_ms is not None:
            sql += " WHERE ends_ms > ?"
            args.append(active_at_ms)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [Silence(int(r[0]), r[1], r[2], int(r[3]), int(r[4]), r[5], r[6], int(r[7])) for r in rows]

    # ------------------------------------------------------------------ rule snapshots

    def save_rule_states(self, states: dict[str, dict[str, Any]], at_ms: int) -> None:
        """Write the snapshots of stateful rules."""
        if not states:
            return
        with self._tx() as db:
            for rule_id, state in states.items():
                db.execute(
                    "INSERT INTO rule_state (rule_id, data, saved_ms) VALUES (?, ?, ?) ON CONFLICT (rule_id)"
                    " DO UPDATE SET data=excluded.data, saved_ms=excluded.saved_ms",
                    (rule_id, json.dumps(state, separators=(",", ":")), at_ms),
                )

    def rule_states(self) -> dict[str, dict[str, Any]]:
        """Rule id → last snapshot."""
        with self._lock:
            rows = self._db.execute("SELECT rule_id, data FROM rule_state").fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}

    # ------------------------------------------------------------------ plant info

    def save_plant_info(self, info: dict[str, Any]) -> None:
        """Record the plant's names and time zone (the processor does at start)."""
        with self._tx() as db:
            db.execute("INSERT INTO meta (key, data) VALUES ('plant', ?) ON CONFLICT (key) DO UPDATE SET"
                       " data=excluded.data", (json.dumps(info, ensure_ascii=False, separators=(",", ":")),))

    def plant_info(self) -> dict[str, Any] | None:
        """What :meth:`save_plant_info` wrote last; None if no processor started on this file yet."""
        with self._lock:
            row = self._db.execute("SELECT data FROM meta WHERE key = 'plant'").fetchone()
        if row is None:
            return None
        data = json.loads(row[0])
        return data if isinstance(data, dict) else None
