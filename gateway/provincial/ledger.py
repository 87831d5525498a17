"""The uplink ledger: one SQLite file with every exchange with the platform and the state of every value.

Tables:

* ``exchanges``: every HTTP exchange (operation, time, HTTP status, responseCode, message, the answer as JSON): the
  receipts, kept.
* ``attempts``: every value sent (item, statType, statDate, dataCode, value) with its outcome (``acknowledged``,
  ``rejected`` with the platform's reason, ``failed`` when no answer came).
* ``periods``: the current state per (item, statType, statDate): ``acknowledged``, ``rejected``, ``failed`` or
  ``blocked`` (held back by the quality gate), with the value, the number of attempts and the last message. A
  period without a row is missing.
* ``problems``: the quality gate's findings per (item, statType, statDate, check).
* ``state``: the session (working key, dataIndex, token, assigned upload time, versions, dictionaries,
  fingerprints of the uploaded configuration).

The file is created with mode 0600: it holds the working key and the token.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energymon.errors import StoreError
from energymon.gateway.provincial.client import Exchange

__all__ = ["Ledger", "PeriodRow", "SentValue"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS exchanges (
    id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, operation TEXT NOT NULL, http_status INTEGER,
    code INTEGER, message TEXT NOT NULL, response TEXT);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, item TEXT NOT NULL, stat_type INTEGER NOT NULL,
    stat_ms INTEGER NOT NULL, data_code TEXT NOT NULL, value REAL NOT NULL, outcome TEXT NOT NULL,
    message TEXT NOT NULL, exchange_id INTEGER);
CREATE TABLE IF NOT EXISTS periods (
    item TEXT NOT NULL, stat_type INTEGER NOT NULL, stat_ms INTEGER NOT NULL, data_code TEXT NOT NULL,
    value REAL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, rejects INTEGER NOT NULL DEFAULT 0,
    last_ms INTEGER NOT NULL, acked_ms INTEGER, message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (item, stat_type, stat_ms));
CREATE INDEX IF NOT EXISTS periods_by_time ON periods (stat_ms);
CREATE TABLE IF NOT EXISTS problems (
    item TEXT NOT NULL, stat_type INTEGER NOT NULL, stat_ms INTEGER NOT NULL, check_name TEXT NOT NULL,
    detail TEXT NOT NULL, blocking INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (item, stat_type, stat_ms, check_name));
"""


@dataclass(frozen=True, slots=True)
class SentValue:
    """A value as sent: which item and period, under which dataCode."""

    item: str
    stat_type: int
    stat_ms: int
    data_code: str
    value: float


@dataclass(frozen=True, slots=True)
class PeriodRow:
    """The ledger's state of one (item, statType, statDate)."""

    item: str
    stat_type: int
    stat_ms: int
    data_code: str
    value: float | None
    state: str
    attempts: int
    rejects: int
    last_ms: int
    acked_ms: int | None
    message: str


class Ledger:
    """The uplink's SQLite ledger (thread-safe: one connection behind a lock)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if not self.path.exists():
                    fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                    os.close(fd)
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"uplink ledger {path}: cannot open: {exc}") from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"uplink ledger {self.path}: {exc}") from exc

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            with self._lock:
                self._conn.execute("BEGIN")
                try:
                    self._conn.executemany(sql, rows)
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise StoreError(f"uplink ledger {self.path}: {exc}") from exc

    # ------------------------------------------------------------------ session state

    def get_state(self, key: str) -> str | None:
        """Value of a session key."""
        rows = self._exec("SELECT value FROM state WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_state(self, key: str, value: str | None) -> None:
        """Store a session key (None removes it)."""
        if value is None:
            self._exec("DELETE FROM state WHERE key = ?", (key,))
        else:
            self._exec("INSERT INTO state (key, value) VALUES (?, ?) "
                       "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def get_json(self, key: str) -> Any:
        """A JSON session value (None when absent)."""
        text = self.get_state(key)
        return None if text is None else json.loads(text)

    def set_json(self, key: str, value: Any) -> None:
        """Store a JSON session value."""
        self.set_state(key, json.dumps(value, ensure_ascii=False, sort_keys=True))

    # ------------------------------------------------------------------ exchanges and attempts

    def record_exchange(self, ex: Exchange) -> None:
        """Keep one exchange (the receipt)."""
        self._exec("INSERT INTO exchanges (at_ms, operation, http_status, code, message, response) "
                   "VALUES (?, ?, ?, ?, ?, ?)",
                   (ex.at_ms, ex.operation, ex.http_status, ex.code, ex.message,
                    None if ex.response is None else json.dumps(ex.response, ensure_ascii=False)))

    def last_exchange_id(self) -> int | None:
        """Id of the newest exchange."""
        rows = self._exec("SELECT MAX(id) FROM exchanges")
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    def exchanges(self, operation: str | None = None) -> list[Exchange]:
        """Stored exchanges, oldest first."""
        sql = "SELECT operation, at_ms, http_status, code, message, response FROM exchanges"
        rows = self._exec(sql + (" WHERE operation = ? ORDER BY id" if operation else " ORDER BY id"),
                          (operation,) if operation else ())
        return [Exchange(r[0], r[1], r[2], r[3], r[4], None if r[5] is None else json.loads(r[5])) for r in rows]

    def record_outcomes(self, at_ms: int, outcomes: Sequence[tuple[SentValue, str, str]]) -> None:
        """Record what happened to each value sent: (value, outcome, message).

        ``outcome`` is ``acknowledged``, ``rejected`` or ``failed``. An acknowledged period stays acknowledged;
        a period's attempts and rejects are counted.
        """
        exchange_id = self.last_exchange_id()
        self._many(
            "INSERT INTO attempts (at_ms, item, stat_type, stat_ms, data_code, value, outcome, message, exchange_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(at_ms, v.item, v.stat_type, v.stat_ms, v.data_code, v.value, o, m, exchange_id) for v, o, m in outcomes])
        self._many(
            "INSERT INTO periods (item, stat_type, stat_ms, data_code, value, state, attempts, rejects, last_ms, "
            "acked_ms, message) VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?) "
            "ON CONFLICT(item, stat_type, stat_ms) DO UPDATE SET data_code = excluded.data_code, "
            "value = excluded.value, state = excluded.state, attempts = periods.attempts + 1, "
            "rejects = periods.rejects + excluded.rejects, last_ms = excluded.last_ms, "
            "acked_ms = COALESCE(excluded.acked_ms, periods.acked_ms), message = excluded.message",
            [(v.item, v.stat_type, v.stat_ms, v.data_code, v.value, o, 1 if o == "rejected" else 0, at_ms,
              at_ms if o == "acknowledged" else None, m) for v, o, m in outcomes])

    def mark_blocked(self, at_ms: int, blocked: Sequence[tuple[SentValue, str]]) -> None:
        """Periods held back by the quality gate (an acknowledged period is left as it is)."""
        self._many(
            "INSERT INTO periods (item, stat_type, stat_ms, data_code, value, state, last_ms, message) "
            "VALUES (?, ?, ?, ?, ?, 'blocked', ?, ?) "
            "ON CONFLICT(item, stat_type, stat_ms) DO UPDATE SET state = CASE WHEN periods.state = 'acknowledged' "
            "THEN periods.state ELSE 'blocked' END, message = CASE WHEN periods.state = 'acknowledged' "
            "THEN periods.message ELSE excluded.message END, last_ms = excluded.last_ms",
            [(v.item, v.stat_type, v.stat_ms, v.data_code, v.value, at_ms, m) for v, m in blocked])

    def record_problems(self, at_ms: int, problems: Sequence[tuple[str, int, int, str, str, bool]]) -> None:
        """The quality gate's findings: (item, statType, statDate, check, detail, blocking)."""
        self._many(
            "INSERT INTO problems (item, stat_type, stat_ms, check_name, detail, blocking, at_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(item, stat_type, stat_ms, check_name) DO UPDATE SET "
            "detail = excluded.detail, blocking = excluded.blocking, at_ms = excluded.at_ms",
            [(i, s, t, c, d, int(b), at_ms) for i, s, t, c, d, b in problems])

    def clear_problems(self, keys: Iterable[tuple[str, int, int]]) -> None:
        """Forget the findings of periods that now pass."""
        self._many("DELETE FROM problems WHERE item = ? AND stat_type = ? AND stat_ms = ?", list(keys))

    def problems(self, start_ms: int, end_ms: int) -> list[tuple[str, int, int, str, str, bool]]:
        """Findings for statDates in ``[start_ms, end_ms)``."""
        rows = self._exec("SELECT item, stat_type, stat_ms, check_name, detail, blocking FROM problems "
                          "WHERE stat_ms >= ? AND stat_ms < ? ORDER BY stat_ms, item, stat_type", (start_ms, end_ms))
        return [(r[0], int(r[1]), int(r[2]), r[3], r[4], bool(r[5])) for r in rows]

    # ------------------------------------------------------------------ period state

    def periods(self, start_ms: int, end_ms: int, item: str | None = None) -> list[PeriodRow]:
        """Period rows with statDate in ``[start_ms, end_ms)``."""
        sql = ("SELECT item, stat_type, stat_ms, data_code, value, state, attempts, rejects, last_ms, acked_ms, "
               "message FROM periods WHERE stat_ms >= ? AND stat_ms < ?")
        params: list[Any] = [start_ms, end_ms]
        if item is not None:
            sql += " AND item = ?"
            params.append(item)
        return [PeriodRow(*r) for r in self._exec(sql + " ORDER BY item, stat_type, stat_ms", params)]

    def period_map(self, start_ms: int, end_ms: int) -> dict[tuple[str, int, int], PeriodRow]:
        """(item, statType, statDate) → row, for statDates in ``[start_ms, end_ms)``."""
        return {(r.item, r.stat_type, r.stat_ms): r for r in self.periods(start_ms, end_ms)}

    def attempts(self, item: str | None = None) -> list[tuple[int, str, int, int, str, float, str, str]]:
        """Every attempt: (at, item, statType, statDate, dataCode, value, outcome, message), oldest first."""
        sql = "SELECT at_ms, item, stat_type, stat_ms, data_code, value, outcome, message FROM attempts"
        rows = self._exec(sql + (" WHERE item = ? ORDER BY id" if item else " ORDER BY id"), (item,) if item else ())
        return [(int(r[0]), r[1], int(r[2]), int(r[3]), r[4], float(r[5]), r[6], r[7]) for r in rows]
