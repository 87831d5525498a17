"""Edge history: the 15-minute, hourly, daily and monthly values the end device keeps for six months.

The end-device rule for 重点用能单位 (technical specification part 6, see docs/domain.md §3) asks the device at
the plant to keep its data locally for about six months, with 15-minute, daily and monthly values. The gateway
does that in an SQLite file beside the outbox, ``history-{gateway}.sqlite``, fed with every reading it polls
(whatever happens to the outbox: a full outbox or a dead uplink does not stop the history):

* for a **counter** (``kind: counter``): the counter's reading at the period start (the first good reading in
  the period; with a poll interval that divides 15 minutes that is the reading at the start itself), the
  consumption in the period and the number of readings. Consumption comes from
  :class:`~energymon.counters.CounterTracker` with the counter rules every stage uses (rollover,
  plausibility bound, recorded replacements, glitches rejected, persistent resets re-based, flagged
  ``rollover`` / ``rebased`` / ``replaced``; docs/accounting.md); an interval that spans several periods is
  spread over them in proportion to time. The tracker's
  last accepted reading is stored too, so a restart does not lose the consumption across it;
* for a **gauge**: minimum, average, maximum and number of readings.

Only readings of quality ``good`` count. Periods are cut in the plant's local time (``enterprise.timezone``).
Aggregates are buffered in memory and written once a minute (of the gateway's clock) and at shutdown, so a
1,000-point poll costs a few milliseconds; a crash loses at most a minute of gauge statistics and no counter
consumption. Rows whose period started more than ``history_retention_days`` ago are deleted (once an hour).
``energymon history`` prints them (:func:`print_history`).

Table ``value(item, period, start_ms, n, min, max, sum, first_ms, first, used, flags)`` is keyed by
(item, period, start) with the item's meter, quantity, kind and unit in table ``item``; about 60 bytes a row.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo

from energymon.config import PlantConfig
from energymon.counters import CounterRules, CounterTracker, counter_rules
from energymon.periods import next_period_start, period_start
from energymon.periods import split_by_period as _split
from energymon.schema import Point, Quality

from .queue import OnCorrupt, open_checked

__all__ = [
    "PERIODS",
    "EdgeHistory",
    "HistoryValue",
    "history_command",
    "history_path",
    "next_period_start",
    "period_start",
    "print_history",
    "read_history",
]

#: The periods kept, finest first.
PERIODS: tuple[str, ...] = ("15min", "hour", "day", "month")
_CODE = {p: i for i, p in enumerate(PERIODS)}
#: Bits of the ``flags`` column, by :class:`DeltaFlag` value (fixed: they are stored).
_FLAG_BITS = {"rollover": 1, "rebased": 2, "replaced": 4}
_PRUNE_EVERY_MS = 3_600_000


def history_path(data_dir: Path, gateway_id: str) -> Path:
    """The history file of a gateway, beside its outbox in ``data_dir``."""
    return data_dir / f"history-{gateway_id}.sqlite"


@dataclass(frozen=True, slots=True)
class HistoryValue:
    """One period of one item.

    Counters fill ``start_value`` (the reading at the period start), ``consumption`` and ``flags``; gauges fill
    ``min``, ``avg`` and ``max``. ``readings`` is the number of good readings in the period (a counter period
    inside an outage can have consumption spread into it and 0 readings).
    """

    meter: str
    quantity: str
    unit: str
    kind: str
    period: str
    start_ms: int
    readings: int
    start_value: float | None = None
    consumption: float | None = None
    min: float | None = None
    avg: float | None = None
    max: float | None = None
    flags: str = ""


class _Agg:
    __slots__ = ("first", "first_ms", "flags", "max", "min", "n", "sum", "used")

    def __init__(self) -> None:
        self.n = 0
        self.min: float | None = None
        self.max: float | None = None
        self.sum: float | None = None
        self.first_ms: int | None = None
        self.first: float | None = None
        self.used: float | None = None
        self.flags = 0


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS item (id INTEGER PRIMARY KEY, meter TEXT NOT NULL, quantity TEXT NOT NULL,"
    " kind TEXT NOT NULL, unit TEXT NOT NULL, UNIQUE (meter, quantity))",
    "CREATE TABLE IF NOT EXISTS value (item INTEGER NOT NULL, period INTEGER NOT NULL, start_ms INTEGER NOT NULL,"
    " n INTEGER NOT NULL, min REAL, max REAL, sum REAL, first_ms INTEGER, first REAL, used REAL,"
    " flags INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (item, period, start_ms)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS counter_state (item INTEGER PRIMARY KEY, value REAL NOT NULL, ts_ms INTEGER NOT NULL)",
)

_UPSERT = """
INSERT INTO value (item, period, start_ms, n, min, max, sum, first_ms, first, used, flags)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (item, period, start_ms) DO UPDATE SET
  n = n + excluded.n,
  min = CASE WHEN min IS NULL OR excluded.min < min THEN excluded.min ELSE min END,
  max = CASE WHEN max IS NULL OR excluded.max > max THEN excluded.max ELSE max END,
  sum = CASE WHEN sum IS NULL THEN excluded.sum WHEN excluded.sum IS NULL THEN sum ELSE sum + excluded.sum END,
  first = CASE WHEN first_ms IS NULL OR excluded.first_ms < first_ms THEN excluded.first ELSE first END,
  first_ms = CASE WHEN first_ms IS NULL OR excluded.first_ms < first_ms THEN excluded.first_ms ELSE first_ms END,
  used = CASE WHEN used IS NULL THEN excluded.used WHEN excluded.used IS NULL THEN used ELSE used + excluded.used END,
  flags = flags | excluded.flags
"""


class EdgeHistory:
    """The gateway's local period values. Used from the gateway's event loop only (one writer).

    Args:
        path: the SQLite file (created if missing); ``:memory:`` for tests.
        plant: the plant (which quantities are counters, their bounds, the time zone).
        retention_days: rows whose period started longer ago are pruned.
        on_corrupt: what to do when the file fails its integrity check (like the outbox).
        flush_every_ms: how often (in the gateway's event time) aggregates are written; 0 writes every record.
    """

    def __init__(
        self,
        path: Path | str,
        plant: PlantConfig,
        *,
        retention_days: int = 183,
        on_corrupt: OnCorrupt = "stop",
        flush_every_ms: int = 60_000,
    ) -> None:
        self.path = str(path)
        self.tz = plant.enterprise.tz
        self.retention_ms = retention_days * 86_400_000
        self._db, self.moved_aside = open_checked(self.path, what="history", on_corrupt=on_corrupt,
                                                  synchronous="NORMAL")
        for stmt in _SCHEMA:
            self._db.execute(stmt)
        # (meter, quantity) -> (kind, unit, counter rules of a counter)
        self._spec: dict[tuple[str, str], tuple[str, str, CounterRules | None]] = {}
        for meter in plant.meters:
            try:
                quantities = plant.quantities(meter)
            except (KeyError, ValueError):
                continue
            for q, (unit, kind, _cmax) in quantities.items():
                rules = counter_rules(plant, meter, q) if kind == "counter" else None
                self._spec[(meter.id, q)] = (kind, unit, rules)
        self._items: dict[tuple[str, str], tuple[int, str]] = {}
        self._load_items()
        self._trackers: dict[int, CounterTracker] = {}
        self._state = {
            int(i): (float(v), int(t)) for i, v, t in self._db.execute("SELECT item, value, ts_ms FROM counter_state")
        }
        self._starts: dict[int, tuple[int, ...]] = {}
        self._last_prune = 0
        self.flush_every_ms = flush_every_ms
        self._flushed_ms = 0
        self._pending: dict[tuple[int, int, int], _Agg] = {}
        self._touched: dict[int, CounterTracker] = {}

    def _item(self, p: Point) -> tuple[int, str]:
        key = (p.meter, p.quantity)
        found = self._items.get(key)
        if found is not None:
            return found
        kind, unit, _ = self._spec.get(key, ("gauge", p.unit, None))
        cur = self._db.execute(
            "INSERT INTO item (meter, quantity, kind, unit) VALUES (?, ?, ?, ?)", (p.meter, p.quantity, kind, unit)
        )
        found = self._items[key] = (int(cur.lastrowid or 0), kind)
        return found

    def _tracker(self, item: int, key: tuple[str, str]) -> CounterTracker:
        tracker = self._trackers.get(item)
        if tracker is None:
            rules = self._spec.get(key, ("counter", "", None))[2] or CounterRules()
            tracker = self._trackers[item] = rules.tracker()
            state = self._state.get(item)
            if state is not None:  # resume after a restart: the interval across it is booked, not lost
                tracker.restore(*state)
        return tracker

    def _period_starts(self, ts_ms: int) -> tuple[int, ...]:
        starts = self._starts.get(ts_ms)
        if starts is None:
            if len(self._starts) > 4096:
                self._starts.clear()
            starts = self._starts[ts_ms] = tuple(period_start(ts_ms, p, self.tz) for p in PERIODS)
        return starts

    def _agg(self, key: tuple[int, int, int]) -> _Agg:
        a = self._pending.get(key)
        if a is None:
            a = self._pending[key] = _Agg()
        return a

    def record(self, points: Sequence[Point], now_ms: int) -> None:
        """Add good readings to their periods.

        Aggregates are kept in memory and written (one transaction, with the counters' last readings) once
        ``flush_every_ms`` of ``now_ms`` has passed since the last write, and by :meth:`flush` / :meth:`close`.
        A crash therefore loses at most that long of gauge statistics; counter consumption is not lost, since the
        counter state written with them resumes the next interval where the written data ends.
        """
        good = Quality.GOOD
        agg = self._agg
        for p in points:
            value = p.value
            if p.quality is not good or value is None:
                continue
            item, kind = self._item(p)
            starts = self._period_starts(p.ts_ms)
            if kind != "counter":
                for code, start in enumerate(starts):
                    a = agg((item, code, start))
                    a.n += 1
                    a.min = value if a.min is None or value < a.min else a.min
                    a.max = value if a.max is None or value > a.max else a.max
                    a.sum = value if a.sum is None else a.sum + value
                continue
            for code, start in enumerate(starts):
                a = agg((item, code, start))
                a.n += 1
                if a.first_ms is None or p.ts_ms < a.first_ms:
                    a.first_ms, a.first = p.ts_ms, value
            tracker = self._tracker(item, (p.meter, p.quantity))
            delta = tracker.update(value, p.ts_ms)
            self._touched[item] = tracker
            if delta is None:
                continue
            bit = _FLAG_BITS.get(delta.flag.value, 0)
            for code, period in enumerate(PERIODS):
                for start, amount in _split(delta.start_ms, delta.end_ms, delta.amount, period, self.tz):
                    a = agg((item, code, start))
                    a.used = amount if a.used is None else a.used + amount
                    a.flags |= bit
        if now_ms - self._flushed_ms >= self.flush_every_ms:
            self.flush(now_ms)

    def flush(self, now_ms: int | None = None) -> None:
        """Write the pending aggregates and counter states (one transaction); prune once an hour of ``now_ms``.

        On failure (e.g. a full disk) nothing is lost from memory: the next flush writes it all.
        """
        if now_ms is not None:
            self._flushed_ms = now_ms
        if not self._pending and not self._touched:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                _UPSERT,
                [
                    (item, code, start, a.n, a.min, a.max, a.sum, a.first_ms, a.first, a.used, a.flags)
                    for (item, code, start), a in self._pending.items()
                ],
            )
            state = [(item, t.last_value, t.last_ms) for item, t in self._touched.items() if t.last_value is not None]
            self._db.executemany(
                "INSERT INTO counter_state (item, value, ts_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (item) DO UPDATE SET value = excluded.value, ts_ms = excluded.ts_ms",
                state,
            )
            if now_ms is not None and now_ms - self._last_prune >= _PRUNE_EVERY_MS:
                self._prune(now_ms)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._pending.clear()
        self._touched.clear()

    def _load_items(self) -> None:
        self._items = {
            (str(m), str(q)): (int(i), str(k))
            for i, m, q, k in self._db.execute("SELECT id, meter, quantity, kind FROM item")
        }

    def _prune(self, now_ms: int) -> None:
        cutoff = now_ms - self.retention_ms
        ids = [i for i, _ in self._items.values()]
        self._db.executemany(
            "DELETE FROM value WHERE item = ? AND period = ? AND start_ms < ?",
            [(i, code, cutoff) for i in ids for code in range(len(PERIODS))],
        )
        self._last_prune = now_ms

    def prune(self, now_ms: int) -> None:
        """Delete rows whose period started more than ``retention_days`` before ``now_ms``."""
        self.flush()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._prune(now_ms)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def query(self, meter: str, quantity: str, period: str, from_ms: int, to_ms: int) -> list[HistoryValue]:
        """Values of one item whose period starts in [from_ms, to_ms), oldest first (pending ones written first)."""
        self.flush()
        return _query(self._db, meter, quantity, period, from_ms, to_ms)

    def close(self) -> None:
        """Write what is pending and close the file."""
        try:
            self.flush()
        finally:
            self._db.close()


def _query(
    db: sqlite3.Connection, meter: str, quantity: str, period: str, from_ms: int, to_ms: int
) -> list[HistoryValue]:
    if period not in _CODE:
        raise ValueError(f"unknown period {period!r}; one of {', '.join(PERIODS)}")
    item = db.execute("SELECT id, kind, unit FROM item WHERE meter = ? AND quantity = ?", (meter, quantity)).fetchone()
    if item is None:
        return []
    item_id, kind, unit = int(item[0]), str(item[1]), str(item[2])
    out: list[HistoryValue] = []
    for start, n, lo, hi, total, first, used, flags in db.execute(
        "SELECT start_ms, n, min, max, sum, first, used, flags FROM value"
        " WHERE item = ? AND period = ? AND start_ms >= ? AND start_ms < ? ORDER BY start_ms",
        (item_id, _CODE[period], from_ms, to_ms),
    ):
        if kind == "counter":
            names = [name for name, bit in _FLAG_BITS.items() if flags & bit]
            out.append(HistoryValue(meter, quantity, unit, kind, period, int(start), int(n), start_value=first,
                                    consumption=0.0 if used is None else used, flags=",".join(names)))
        else:
            out.append(HistoryValue(meter, quantity, unit, kind, period, int(start), int(n), min=lo,
                                    avg=None if total is None or not n else total / n, max=hi))
    return out


def read_history(path: Path, meter: str, quantity: str, period: str, from_ms: int, to_ms: int) -> list[HistoryValue]:
    """Read values from a history file without writing to it (safe while the gateway runs).

    Raises:
        FileNotFoundError: there is no history file at ``path``.
    """
    if not path.exists():
        raise FileNotFoundError(f"no edge history at {path}")
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return _query(db, meter, quantity, period, from_ms, to_ms)
    finally:
        db.close()


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}" if abs(value) < 1e6 else f"{value:.3f}"


def print_history(values: Iterable[HistoryValue], tz: ZoneInfo, fmt: str, out: TextIO) -> None:
    """Write values as an aligned ``table``, ``csv`` or ``json`` (period starts in local time, ISO 8601)."""
    values = list(values)
    if fmt == "json":
        rows = [{**asdict(v), "start": datetime.fromtimestamp(v.start_ms / 1000, tz).isoformat()} for v in values]
        json.dump(rows, out, ensure_ascii=False, indent=1)
        out.write("\n")
        return
    counter = bool(values) and values[0].kind == "counter"
    if counter:
        header = ["start", "start_value", "consumption", "unit", "readings", "flags"]
        body = [[datetime.fromtimestamp(v.start_ms / 1000, tz).isoformat(), _fmt(v.start_value), _fmt(v.consumption),
                 v.unit, str(v.readings), v.flags] for v in values]
    else:
        header = ["start", "min", "avg", "max", "unit", "readings"]
        body = [[datetime.fromtimestamp(v.start_ms / 1000, tz).isoformat(), _fmt(v.min), _fmt(v.avg), _fmt(v.max),
                 v.unit, str(v.readings)] for v in values]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(body)
        out.write(buf.getvalue())
        return
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    left = {0, header.index("unit"), len(header) - 1 if counter else -1}
    for row in [header, *body]:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        out.write("  ".join(cells).rstrip() + "\n")


def _parse_time(text: str, tz: ZoneInfo, name: str) -> int:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{name} {text!r} is not an ISO 8601 date or time (e.g. 2025-03-01 or 2025-03-01T08:00)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)  # plant local time
    return round(dt.timestamp() * 1000)


def _parse_time_to(text: str, tz: ZoneInfo) -> int:
    """``--to`` is included: a date means through the end of that local day, a time includes the period that
    starts at it (the bound returned is exclusive)."""
    if len(text.strip()) == 10:  # YYYY-MM-DD
        try:
            day = date.fromisoformat(text.strip())
        except ValueError:
            raise ValueError(f"--to {text!r} is not an ISO 8601 date or time (e.g. 2025-03-01 or 2025-03-01T08:00)"
                             ) from None
        return round(datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=tz).timestamp() * 1000)
    return _parse_time(text, tz, "--to") + 1


def history_command(
    config: Path, data_dir: Path, meter: str, quantity: str, period: str, start: str | None, end: str | None,
    fmt: str, out: TextIO | None = None,
) -> int:
    """``energymon history``: print one item's values for a period kind and a time range. Returns the exit code.

    Raises:
        ConfigError: the plant file is invalid.
    """
    from energymon.config import load_plant  # imported here: keeps `import energymon.gateway.history` light

    out = out or sys.stdout
    plant = load_plant(config)
    tz = plant.enterprise.tz
    try:
        meter_cfg = plant.meter(meter)
    except KeyError:
        print(f"error: {config} has no meter {meter!r}", file=sys.stderr)
        return 2
    if quantity not in plant.quantities(meter_cfg):
        known = ", ".join(sorted(plant.quantities(meter_cfg)))
        print(f"error: meter {meter!r} has no quantity {quantity!r} (it has {known})", file=sys.stderr)
        return 2
    try:
        to_ms = _parse_time_to(end, tz) if end else round(datetime.now(UTC).timestamp() * 1000)
        from_ms = _parse_time(start, tz, "--from") if start else to_ms - 7 * 86_400_000
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = history_path(data_dir, plant.gateway.id)
    try:
        values = read_history(path, meter, quantity, period, from_ms, to_ms)
    except FileNotFoundError:
        print(f"错误：没有边缘历史 (error: no edge history at {path}; is --data-dir the gateway's data directory?)",
              file=sys.stderr)
        return 2
    if not values:
        print(f"no {period} values of {meter}/{quantity} in that range", file=sys.stderr)
    print_history(values, tz, fmt, out)
    return 0
