"""The running processor's scheduled recompute of the current periods (today, this month, this year).

The live path books intervals as they arrive and writes hour and day ``indicator`` rows; months and years, the
year-to-date budget and the ``acct_*`` results come from a recompute of the stored readings
(:mod:`energymon.processors.recompute`), which is also what ``energymon report`` runs. :class:`CurrentPeriods`
runs that recompute on a schedule inside ``energymon processor`` so that the ``indicator`` (month, ytd, year) and
``budget`` rows the alert rules watch stay current without anyone running a report.

Reading a whole year of raw readings every few minutes would not scale, so the counter readings are kept
*thinned* in a small cache file (``recompute.sqlite`` in the processor's data directory): for each meter and each
15-minute slot only the first and the last good reading. For a counter the booked consumption of a slot is the
sum of its intervals, which telescopes to ``last - first``, and the intervals that cross a slot boundary run from
the last reading of one slot to the first of the next, exactly as in the raw data, so slot, hour, day, month and
year totals are the same as from the raw readings. (Only readings the counter cleaning would reject *inside* a
slot, such as a one-reading spike, are dropped earlier; they book nothing either way.) What counts readings
(completeness, the per-meter counts of flagged intervals: ``acct_meter`` and ``acct_quality_day``) is computed
once per closed local day from the raw readings of that day; ``acct_quality_month`` and the ``complete`` field of
``acct_product`` are left to ``energymon report``.

Each run reads only what is new since the previous run, plus ``reread_ms`` before it and anything older that
arrived late (the processor reports the event time of the counter readings it stored, see :meth:`note_points`),
so a gateway draining a day-long backlog gets its days recomputed. The first run fills the cache from the start of
the year, one local day at a time.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from energymon.config import PlantConfig
from energymon.errors import StoreError
from energymon.interfaces import Clock, Row
from energymon.metrics import PipelineMetrics
from energymon.periods import next_period_start, period_start
from energymon.processors.recompute import MeterReadings, recompute
from energymon.processors.report import load_readings_store, report_rows
from energymon.processors.rules import PlantRules

__all__ = ["SLOT_MS", "CurrentPeriods", "ThinnedReadings", "thin"]

log = logging.getLogger(__name__)

#: The thinning slot: 15 minutes, the finest period the accounting reports.
SLOT_MS = 900_000

#: Readings per chunk read from the store above which the next chunk is shorter.
_CHUNK_POINTS = 2_000_000


class _Stopped(Exception):
    """The run was asked to stop."""


#: Results that count readings (completeness, rejected-reading flags): thinned readings cannot give them, so the
#: schedule leaves them to ``energymon report``, which reads the raw readings.
_READING_COUNTS = frozenset({"acct_meter", "acct_quality_day", "acct_quality_month"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS thinned (
    meter TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (meter, ts_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def thin(readings: MeterReadings, slot_ms: int = SLOT_MS) -> MeterReadings:
    """The first and the last reading of every ``slot_ms`` slot (UTC-aligned) of ``readings``."""
    ts = readings.ts
    if ts.size <= 2:
        return readings
    slot = ts // slot_ms
    change = np.flatnonzero(slot[1:] != slot[:-1])
    keep = np.zeros(ts.size, dtype=bool)
    keep[0] = keep[-1] = True
    keep[change] = True  # last of a slot
    keep[change + 1] = True  # first of the next
    return MeterReadings(ts[keep], readings.value[keep])


class ThinnedReadings:
    """The cache file of thinned counter readings, and how far the store has been read.

    Args:
        path: the SQLite file (created if missing).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)

    @property
    def read_to_ms(self) -> int | None:
        """The end (exclusive) of what was read from the store, or None before the first run."""
        return self.meta("read_to_ms")

    def meta(self, key: str) -> int | None:
        """A stored mark, or None."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def set_meta(self, key: str, value: int) -> None:
        """Store a mark."""
        with self._conn:
            self._conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def replace(self, start_ms: int, readings: Mapping[str, MeterReadings], read_to_ms: int) -> None:
        """Replace everything from ``start_ms`` on with ``readings`` and record the new read mark, atomically."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("DELETE FROM thinned WHERE ts_ms >= ?", (start_ms,))
            for meter, r in readings.items():
                sel = r.ts >= start_ms
                self._conn.executemany(
                    "INSERT OR REPLACE INTO thinned (meter, ts_ms, value) VALUES (?, ?, ?)",
                    zip([meter] * int(sel.sum()), r.ts[sel].tolist(), r.value[sel].tolist(), strict=True),
                )
            self._conn.execute(
                "INSERT INTO meta (key, value) VALUES ('read_to_ms', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (read_to_ms,),
            )

    def load(self, start_ms: int, end_ms: int | None = None) -> dict[str, MeterReadings]:
        """Every meter's thinned readings in ``[start_ms, end_ms)`` (to the end when ``end_ms`` is None)."""
        out: dict[str, tuple[list[int], list[float]]] = {}
        for meter, ts, value in self._conn.execute(
            "SELECT meter, ts_ms, value FROM thinned WHERE ts_ms >= ? AND ts_ms < ? ORDER BY meter, ts_ms",
            (start_ms, 2**62 if end_ms is None else end_ms),
        ):
            pair = out.setdefault(meter, ([], []))
            pair[0].append(ts)
            pair[1].append(value)
        return {m: MeterReadings(np.asarray(t, dtype=np.int64), np.asarray(v, dtype=np.float64))
                for m, (t, v) in out.items()}

    def forget_before(self, ts_ms: int) -> None:
        """Drop readings older than ``ts_ms`` (last year's, once the new year's padding no longer needs them)."""
        with self._conn:
            self._conn.execute("DELETE FROM thinned WHERE ts_ms < ?", (ts_ms,))

    def close(self) -> None:
        """Close the file."""
        self._conn.close()


class CurrentPeriods:
    """Recompute today, this month and this year from the store, and hand the rows on.

    Args:
        plant: the plant configuration.
        store: the store the processor writes (``SqliteStore`` or ``InfluxStore``); readings are read from it and
            the recomputed rows written back.
        clock: event-time clock (``now`` decides the current day, month and year, in the plant's local time).
        metrics: self-metrics, stage ``recompute``: received = readings read, sent = rows written.
        cache_path: the thinned-readings cache file.
        on_rows: called with the rows of each run after the store accepted them (the alert engine's
            ``observe_rows``).
        lookback_ms: readings kept before the start of the year, so intervals across New Year split correctly.
        reread_ms: how much already-read data each run reads again (late data the processor did not report).
        live_indicators: False when the live path writes no hour/day ``indicator`` rows (processors sharing a
            subscription): the recompute then writes them.
        ref: reference data (coefficients, levels); the shipped tables if None.
    """

    def __init__(
        self,
        plant: PlantConfig,
        store: Any,
        *,
        clock: Clock,
        metrics: PipelineMetrics,
        cache_path: Path,
        on_rows: Sequence[Callable[[Sequence[Row]], None]] = (),
        lookback_ms: int = 48 * 3_600_000,
        reread_ms: int = 3_600_000,
        live_indicators: bool = True,
        ref: Any = None,
    ) -> None:
        if ref is None:
            from energymon.refdata import load_reference_data

            ref = load_reference_data()
        self.plant = plant
        self.store = store
        self.clock = clock
        self.stage = metrics.stage("recompute")
        self.rules = PlantRules(plant, ref)
        self.tz = plant.enterprise.tz
        self.cache = ThinnedReadings(cache_path)
        self.on_rows = list(on_rows)
        self.lookback_ms = lookback_ms
        self.reread_ms = reread_ms
        self.live_indicators = live_indicators
        self._counter_meters = {m.id: m.counter for m in plant.meters if m.counter is not None}
        self._late_lock = threading.Lock()
        self._late_from: int | None = None
        self._run_lock = threading.Lock()
        self._stopping = threading.Event()

    def note_points(self, points: Iterable[Mapping[str, Any]]) -> None:
        """Processor observer: remember the oldest counter reading stored since the last run (late data)."""
        counters = self._counter_meters
        oldest: int | None = None
        for p in points:
            if counters.get(p["meter"]) == p["quantity"] and (oldest is None or p["ts_ms"] < oldest):
                oldest = p["ts_ms"]
        if oldest is not None:
            with self._late_lock:
                if self._late_from is None or oldest < self._late_from:
                    self._late_from = oldest

    def run_once(self) -> list[Row]:
        """Read what is new, recompute the current periods, write the rows and pass them on; returns them.

        Raises:
            StoreError: the store could not be read or written (the next run tries again from the same mark).
        """
        with self._run_lock:
            now = self.clock.now_ms()
            year_start = period_start(now, "year", self.tz)
            lo = year_start - self.lookback_ms
            with self._late_lock:
                late, self._late_from = self._late_from, None
            try:
                self._refresh(lo, now, late)
                rows = self._recompute(now)
                rows += self._closed_days(now)
                if rows:
                    self.store.write(rows)
            except _Stopped:
                self._keep_late(late)
                return []
            except StoreError as exc:
                self._keep_late(late)
                self.stage.error(exc)
                raise
            self.cache.set_meta("quality_done_to_ms", period_start(now, "day", self.tz))
            self.stage.sent(len(rows))
            for observer in self.on_rows:
                try:
                    observer(rows)
                except Exception as exc:
                    self.stage.error(exc)
                    log.exception("recompute row observer failed")
            return rows

    def _keep_late(self, late: int | None) -> None:
        """Give back the late mark a failed run took, for the next run."""
        if late is not None:
            with self._late_lock:
                self._late_from = late if self._late_from is None else min(late, self._late_from)

    def _refresh(self, lo: int, now: int, late: int | None) -> None:
        """Read the store from the re-read mark to now into the cache, in chunks of local days.

        A chunk is one day to start with; after a chunk without any reading the next one is twice as long (up to
        32 days), so an empty past (the first run of a new plant) costs a few reads, and after a chunk of more
        than :data:`_CHUNK_POINTS` readings it is halved again, so memory stays bounded on dense data.

        Raises:
            _Stopped: ``stop()`` was called; nothing of this run is kept.
        """
        read_to = self.cache.read_to_ms
        start = lo if read_to is None else max(lo, read_to - self.reread_ms)
        if late is not None:
            start = max(lo, min(start, late))
        start = period_start(start, "day", self.tz) if read_to is None else start
        chunks: dict[str, list[MeterReadings]] = {}
        t, days = start, 1
        while t <= now:
            if self._stopping.is_set():
                raise _Stopped
            end = period_start(t, "day", self.tz)
            for _ in range(days):
                end = next_period_start(end, "day", self.tz)
            end = min(end, now + 1)
            dense = load_readings_store(self.store, self.plant, t, end)
            n = 0
            for meter, r in dense.items():
                n += int(r.ts.size)
                chunks.setdefault(meter, []).append(thin(r))
            self.stage.received(n)
            days = min(days * 2, 32) if n == 0 else (max(days // 2, 1) if n > _CHUNK_POINTS else days)
            t = end
        merged = {m: MeterReadings(np.concatenate([c.ts for c in parts]), np.concatenate([c.value for c in parts]))
                  for m, parts in chunks.items()}
        self.cache.replace(start, merged, now + 1)
        self.cache.forget_before(lo)

    def stop(self) -> None:
        """Make a run in progress give up at its next read (it keeps nothing of the run; the next run redoes it)."""
        self._stopping.set()

    def _recompute(self, now: int) -> list[Row]:
        readings = self.cache.load(period_start(now, "year", self.tz) - self.lookback_ms)
        day_end = next_period_start(period_start(now, "day", self.tz), "day", self.tz)
        month_start = period_start(now, "month", self.tz)
        detail = ("hour", "day", "month", "year") if not self.live_indicators else ("day", "month", "year")
        rc = recompute(self.rules, readings, month_start, day_end, with_ytd=True, detail_periods=detail)
        periods = ("hour", "day", "month", "ytd", "year") if not self.live_indicators else ("month", "ytd", "year")
        rows: list[Row] = []
        for key, fields, ts in report_rows(rc, indicator_periods=periods):
            if key.measurement in _READING_COUNTS:
                continue
            if key.measurement == "acct_product" and "complete" in fields:
                fields = {k: v for k, v in fields.items() if k != "complete"}
            rows.append((key, fields, ts))
        return rows

    def _closed_days(self, now: int) -> list[Row]:
        """Reading counts of the days closed since the last run, from the raw readings (once per day; the run
        records ``quality_done_to_ms`` once the rows are stored).

        ``acct_meter`` day rows (with the per-day counts of flagged intervals) and ``acct_quality_day``
        (completeness, the day's first reading) need every reading, so each local day is recomputed once from
        the raw readings after it ends (the first run does yesterday). Late data for a closed day is picked up
        by ``energymon report``.
        """
        today = period_start(now, "day", self.tz)
        done = self.cache.meta("quality_done_to_ms")
        day = period_start(today - 1, "day", self.tz) if done is None else done
        rows: list[Row] = []
        pad = self.lookback_ms
        while day < today:
            if self._stopping.is_set():
                raise _Stopped
            end = next_period_start(day, "day", self.tz)
            # the day's raw readings, and around it the cached thinned ones (the readings next to the day's ends
            # are in the cache: a slot's last and first), so the intervals across midnight split as before
            dense = dict(load_readings_store(self.store, self.plant, day, end))
            for meter, r in self.cache.load(day - pad, end + pad).items():
                outside = (r.ts < day) | (r.ts >= end)
                if not outside.any():
                    continue
                own = dense.get(meter)
                stamps = r.ts[outside] if own is None else np.concatenate([own.ts, r.ts[outside]])
                values = r.value[outside] if own is None else np.concatenate([own.value, r.value[outside]])
                dense[meter] = MeterReadings.of(stamps, values)
            rc = recompute(self.rules, dense, day, end, with_ytd=False, detail_periods=("day",))
            for key, fields, ts in report_rows(rc, indicator_periods=()):
                if key.measurement == "acct_quality_day" or (
                    key.measurement == "acct_meter" and dict(key.tags).get("period") == "day" and day <= ts < end
                ):
                    rows.append((key, fields, ts))
            day = end
        return rows

    def close(self) -> None:
        """Close the cache file."""
        self.cache.close()
