"""The stores: InfluxDB (1.x, 2.x) or VictoriaMetrics through line protocol, and an embedded SQLite file.

Both implement :class:`energymon.interfaces.Store`: one writer thread calls ``write(rows)`` with
``(SeriesKey, {field: value}, ts_ms)`` rows; a failed write raises :class:`~energymon.errors.StoreError`
(retriable), and writing the same (series, field, ts) again never stores it twice, so a replayed batch is
harmless. Non-finite values (NaN, ±inf) are never written: each one is counted as dropped with reason
``"non_finite"``.

:class:`InfluxStore` turns rows into line protocol itself (the series' precomputed ``lp`` prefix, the fields
with ``repr()`` floats so no digit is lost in transit, the ms timestamp) and posts one body per
``batch_max_points`` lines through influxdb-client's SYNCHRONOUS write API, which is about ten times faster
than building ``Point`` objects. Notes for VictoriaMetrics, measured against 1.79.5:

* metric names are ``{measurement}_{field}``; tags become labels; bucket and org are not stored;
* VictoriaMetrics keeps about 12 significant decimal digits (``lib/decimal``, conversion precision 1e12):
  ``0.1 + 0.2`` is read back as ``0.3`` and ``math.pi`` as ``3.141592653589`` (InfluxDB 2 keeps float64
  exactly);
* "the same (series, field, ts) is stored once" needs ``-dedup.minScrapeInterval=1ms`` (without it a
  replayed batch is stored twice). With it, samples that share a timestamp are collapsed, but
  VictoriaMetrics keeps the **largest** value, not the last one written: a replay of identical rows is
  harmless, a correction of a past value to a smaller one is not possible;
* samples stamped more than about 2 days ahead of VictoriaMetrics' wall clock are dropped silently (the
  write still answers 204), and its ``/api/v1/export`` range ends at *now* unless told otherwise;
* Flux does not work there, so :meth:`InfluxStore.export` reads through ``/api/v1/export`` instead.

Every store is also a :class:`energymon.interfaces.ReadingsSource`: ``query(measurement, field, tags=,
start_ms=, end_ms=)`` answers the same on each (half-open range, sorted by tags then time). :class:`InfluxStore`
reads InfluxDB through InfluxQL over the v1 ``/query`` API, which InfluxDB 1.x, 2.x (through a DBRP mapping of the
bucket) and 3 serve, and VictoriaMetrics through ``/api/v1/export``; :meth:`InfluxStore.server` tells them apart.
With ``api: v1`` it writes to InfluxDB 1.x's ``/write?db=&precision=ms`` (Debian's 1.6 has no
``/api/v2/write``; measured against influxd 1.6.7). InfluxDB keeps the last value written for a (series, field,
time), so corrections replace a value there, as in SQLite.

:class:`SqliteStore` keeps everything in one SQLite file (WAL, ``synchronous=NORMAL``). It uses a single
connection guarded by a lock, so a writer thread and reader threads (the demo's live summary,
``energymon serve``) can share one store object: a read waits at most for the batch being written (a few
milliseconds) and always sees whole batches, never half of one. Other processes may read the file at the
same time (WAL readers never block the writer).

Time ranges of the SQLite queries are half-open, ``start_ms <= ts_ms < end_ms``, so consecutive periods
(days, months) never count a sample twice. :meth:`InfluxStore.export` follows VictoriaMetrics, whose range
is inclusive at both ends.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import numbers
import operator
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import urlsplit, urlunsplit

import httpx
import urllib3.exceptions
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from energymon.config import InfluxStoreConfig, SqliteStoreConfig
from energymon.errors import ConfigError, ConfigIssue, StoreError, UnreadableStoreError
from energymon.interfaces import Row, SeriesKey, Store
from energymon.metrics import PipelineMetrics, StageMetrics

__all__ = [
    "DUMMY_TOKEN",
    "ExportedSeries",
    "InfluxStore",
    "SqliteStore",
    "influxql_ident",
    "influxql_string",
    "influxql_where",
    "open_store",
    "to_line_protocol",
]

#: ``(tags, ts_ms, value)``: one sample of one series, as :meth:`InfluxStore.query` and :meth:`SqliteStore.query`
#: return them.
Sample = tuple[dict[str, str], int, float]

#: Token sent when ``token_env`` is not configured (VictoriaMetrics ignores it; InfluxDB 2 would answer 401).
DUMMY_TOKEN = "energymon-no-token"

#: One series from :meth:`InfluxStore.export`: labels (with ``__name__``), timestamps in ms, values.
ExportedSeries = tuple[dict[str, str], list[int], list[float]]

log = logging.getLogger(__name__)

_STAGE = "store"
_NON_FINITE = "non_finite"
_INVALID_KEY = "invalid_key"
_INVALID_VALUE = "invalid_value"
_INVALID_TIME = "invalid_time"
_TS_MIN, _TS_MAX = -(2**63), 2**63 - 1  # SQLite INTEGER
_SAMPLE_KEY = operator.itemgetter(0, 1, 2)
_MS = cast(WritePrecision, WritePrecision.MS)  # a str constant the stubs type as the class
_EXPORT_END_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
_SQL_IN_CHUNK = 500  # ids per "IN (...)" clause, far below SQLite's variable limit
_CACHE_KIB = 32 * 1024  # SQLite page cache; the default 2 MiB thrashes once the file outgrows it


# --------------------------------------------------------------------------- line protocol


def _escape_key(name: str) -> str:
    """Escape a field key like the kernel escapes tag keys and values (backslash first)."""
    escaped = name.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")
    if "\n" in escaped:
        raise ValueError(f"field key {name!r} contains a line break")
    return escaped


class _Templates(dict[tuple[str, ...], str]):
    """``"%s key1=%s,key2=%s %d"`` per tuple of field names, built once (a few tuples, millions of rows)."""

    def __missing__(self, names: tuple[str, ...]) -> str:
        if len(self) >= 10_000:  # field names are a small fixed set; never grow without bound
            self.clear()
        fields = ",".join(_escape_key(name).replace("%", "%%") + "=%s" for name in names)
        template = f"%s {fields} %d"
        self[names] = template
        return template


_TEMPLATES = _Templates()


def _slow_line(
    lp: str, fields: dict[str, float], ts_ms: int, dropped: dict[str, int]
) -> tuple[str, int] | None:
    """Serialise a row the fast path refused, dropping each bad value with its reason."""
    parts: list[str] = []
    for name, value in fields.items():
        if not isinstance(value, numbers.Real):
            dropped[_INVALID_VALUE] += 1
            continue
        number = float(value)
        if not math.isfinite(number):
            dropped[_NON_FINITE] += 1
            continue
        try:
            parts.append(f"{_escape_key(name)}={number!r}")
        except ValueError:
            dropped[_INVALID_KEY] += 1
    if not parts:
        return None
    if "\n" in lp or not isinstance(ts_ms, numbers.Real):
        dropped[_INVALID_KEY if "\n" in lp else _INVALID_VALUE] += len(parts)
        return None
    return f"{lp} {','.join(parts)} {int(ts_ms)}", len(parts)


def to_line_protocol(rows: Iterable[Row]) -> tuple[list[str], list[int], dict[str, int]]:
    """Serialise rows to line protocol with ms timestamps.

    Values are written as ``repr(float)``, the shortest text that parses back to the same float64 (also for
    numpy floats, whose ``repr`` is not line protocol). Each value that cannot be written is left out and
    counted by reason: ``"non_finite"`` (NaN, ±inf), ``"invalid_value"`` (not a real number) or
    ``"invalid_key"`` (a line break in the series key or field key, which line protocol cannot carry). A row
    left with no value is left out.

    The fast path formats a whole row with one cached template; a row whose sum is not finite (or not a
    number) takes the slow path, which checks value by value.

    Args:
        rows: ``(SeriesKey, {field: value}, ts_ms)`` rows.

    Returns:
        ``(lines, values, dropped)``: the lines; the number of values on each line; dropped values by reason
        (reasons with a zero count included).
    """
    lines: list[str] = []
    counts: list[int] = []
    append = lines.append
    count = counts.append
    templates = _TEMPLATES
    dropped = {_NON_FINITE: 0, _INVALID_VALUE: 0, _INVALID_KEY: 0}
    for key, fields, ts_ms in rows:
        lp = key.lp
        values = fields.values()
        try:
            total = sum(values)
            if total - total == 0.0 and "\n" not in lp:
                append(templates[tuple(fields)] % (lp, *values, ts_ms))
                count(len(fields))
                continue
        except (TypeError, ValueError):  # not numbers, or a field key with a line break
            pass
        slow = _slow_line(lp, fields, ts_ms, dropped)
        if slow is not None:
            append(slow[0])
            count(slow[1])
    return lines, counts, dropped


def _chunk_bounds(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(start + size, total)


def _public_url(url: str) -> str:
    """The URL without user info (``http://user:secret@host`` → ``http://host``), for messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url.rstrip("/")
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)).rstrip("/")


def _ms_to_seconds_text(ms: int) -> str:
    """Exact decimal seconds for VictoriaMetrics' ``start``/``end`` (which reads plain numbers as seconds)."""
    sign = "-" if ms < 0 else ""
    whole, frac = divmod(abs(int(ms)), 1000)
    return f"{sign}{whole}.{frac:03d}"


# --------------------------------------------------------------------------- InfluxStore


class InfluxStore:
    """Write rows to InfluxDB or VictoriaMetrics in line protocol, and read them back.

    Writes go to the v2 write API (``api: v2``: InfluxDB 2.x and 1.8+, VictoriaMetrics' ``/api/v2/write``) or to
    InfluxDB 1.x's ``/write`` (``api: v1``). Reads (:meth:`query`, :meth:`influxql`, :meth:`export`) use InfluxQL
    on ``/query`` for InfluxDB and the export API for VictoriaMetrics (:meth:`server`). Credentials for the v1
    endpoints come from ``token_env``: a value ``user:password`` is sent as HTTP basic auth (every InfluxDB 1.x),
    any other value as ``Authorization: Token ...`` (InfluxDB 2.x and 3).

    Args:
        config: URL, org, bucket, token variable, batch size and timeout.
        metrics: Self-metrics; write durations and the store stage's sent/dropped/error counters.
        gzip: Gzip request bodies. Off by default: on loopback it halved the throughput (zlib's CPU cost
            outweighs the bytes saved; see ``bench/bench_store.py --gzip``). Worth turning on only for a slow
            link to a remote InfluxDB.

    Raises:
        ConfigError: ``token_env`` names an environment variable that is not set.
    """

    def __init__(
        self, config: InfluxStoreConfig, *, metrics: PipelineMetrics | None = None, gzip: bool = False
    ) -> None:
        self.config = config
        self.url = _public_url(config.url)
        if config.token_env is None:
            token = DUMMY_TOKEN
        else:
            value = os.environ.get(config.token_env)
            if not value:
                message = f"environment variable {config.token_env} is not set"
                issue = ConfigIssue("processor.store.token_env", message)
                raise ConfigError("environment", [issue])
            token = value
        self._token = token
        self._metrics = metrics
        self._stage: StageMetrics | None = metrics.stage(_STAGE) if metrics is not None else None
        self._client = InfluxDBClient(
            url=config.url, token=token, org=config.org, timeout=config.timeout_ms, enable_gzip=gzip
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._http = httpx.Client(timeout=config.timeout_ms / 1000)
        self._closed = False
        self._server: str | None = None if config.server == "auto" else config.server

    @property
    def database(self) -> str:
        """The InfluxQL database written with ``api: v1`` and read through ``/query`` (default: the bucket)."""
        return self.config.database or self.config.bucket

    def describe(self) -> str:
        """Kind and location of the store, without credentials (``influxdb:URL/db`` or ``victoriametrics:URL``)."""
        if self._server == "influxdb":
            return f"influxdb:{self.url} (database {self.database})"
        if self._server == "victoriametrics":
            return f"victoriametrics:{self.url}"
        return f"influxdb-api:{self.url}"

    # ----------------------------------------------------------------- Store protocol

    def write(self, rows: Sequence[Row]) -> None:
        """Serialise ``rows`` and post them in chunks of ``batch_max_points`` lines.

        Raises:
            StoreError: The store could not be reached or refused a chunk. Earlier chunks of the same call may
                have been stored; writing the rows again is safe (same timestamps, same values).
        """
        if self._closed:
            raise StoreError(f"InfluxDB store {self.url} is closed")
        began = time.perf_counter()
        if self._stage is not None:
            self._stage.received(sum(len(f) for _, f, _ in rows))
        try:
            lines, counts, dropped = to_line_protocol(rows)
            if self._stage is not None:
                for reason, n in dropped.items():
                    if n:
                        self._stage.dropped(reason, n)
            for start, end in _chunk_bounds(len(lines), self.config.batch_max_points):
                body = "\n".join(lines[start:end]).encode()
                try:
                    if self.config.api == "v1":
                        self._write_v1(body)
                    else:
                        self._write_api.write(
                            bucket=self.config.bucket,
                            org=self.config.org,
                            record=body,
                            write_precision=_MS,
                        )
                except (InfluxDBError, urllib3.exceptions.HTTPError, OSError, httpx.HTTPError) as exc:
                    error = StoreError(f"InfluxDB write to {self.url} failed: {self._describe(exc)}")
                    if self._stage is not None:
                        self._stage.error(error)
                    raise error from exc
                if self._stage is not None:
                    self._stage.sent(sum(counts[start:end]))
        finally:
            if self._metrics is not None:
                self._metrics.store_write_duration.observe(time.perf_counter() - began)

    def _write_v1(self, body: bytes) -> None:
        """POST one body to InfluxDB 1.x's ``/write`` (raises httpx errors; 4xx/5xx as HTTPStatusError)."""
        params = {"db": self.database, "precision": "ms"}
        if self.config.retention_policy is not None:
            params["rp"] = self.config.retention_policy
        response = self._http.post(
            f"{self.config.url.rstrip('/')}/write", params=params, content=body, headers=self._auth_headers()
        )
        response.raise_for_status()

    def _auth_headers(self) -> dict[str, str]:
        """Credentials of the v1 endpoints: ``user:password`` as basic auth (InfluxDB 1.x), else a token."""
        if self.config.token_env is None:
            return {}
        if ":" in self._token:
            return {"Authorization": "Basic " + base64.b64encode(self._token.encode()).decode("ascii")}
        return {"Authorization": f"Token {self._token}"}

    def close(self) -> None:
        """Close the HTTP connections. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._write_api.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- extras

    def ping(self) -> bool:
        """Tell whether the store answers ``GET /ping`` (never raises)."""
        if self._closed:
            return False
        return bool(self._client.ping())

    def retention_ms(self) -> int | None:
        """How far back the store keeps samples, in ms; None when it keeps everything or cannot tell.

        ``retention_days`` of the store config when set; else VictoriaMetrics' ``-retentionPeriod`` (from the
        ``flag{name="retentionPeriod"}`` line of its ``/metrics``, which also shows the default); else the
        bucket's retention rule from InfluxDB 2's ``/api/v2/buckets`` (needs a token that may read buckets); else,
        with ``api: v1``, the duration of the retention policy written to (``SHOW RETENTION POLICIES``). Never
        raises: a store that does not answer is reported as unknown (logged).
        """
        if self.config.retention_days is not None:
            return round(self.config.retention_days * 86_400_000)
        base = self.config.url.rstrip("/")
        try:
            response = self._http.get(f"{base}/metrics")
            if response.status_code == 200:
                found = _VM_RETENTION.search(response.text)
                if found is not None:
                    return _vm_duration_ms(found.group(1))
            response = self._http.get(
                f"{base}/api/v2/buckets",
                params={"name": self.config.bucket, "org": self.config.org},
                headers={"Authorization": f"Token {self._token}"},
            )
            if response.status_code != 200 and self.config.api == "v1":
                return self._influxql_retention_ms()
            if response.status_code == 200:
                buckets = response.json().get("buckets") or []
                if buckets:
                    every = [int(r.get("everySeconds") or 0) for r in buckets[0].get("retentionRules") or []]
                    return min(every) * 1000 if every and min(every) > 0 else None
        except (httpx.HTTPError, ValueError, StoreError) as exc:
            log.warning("could not read the retention of the store %s: %s", self.url, self._scrub(str(exc)))
            return None
        log.info("the retention of the store %s is not known (set processor.store.retention_days): points of any "
                 "age are written", self.url)
        return None

    def server(self) -> str:
        """Which server answers: ``"influxdb"`` (read through InfluxQL) or ``"victoriametrics"``.

        ``server`` of the config when not ``auto``; else ``GET /ping``: InfluxDB 1.x, 2.x and 3 name their
        version in the ``X-Influxdb-Version`` header; VictoriaMetrics answers ``/ping`` without it and names
        itself in ``/metrics`` (``vm_app_version``). Asked once per store object.

        Raises:
            StoreError: The server cannot be reached.
            UnreadableStoreError: It answers, but is neither (e.g. a Prometheus, or an InfluxDB-compatible
                endpoint without ``/query``).
        """
        if self._server is not None:
            return self._server
        base = self.config.url.rstrip("/")
        try:
            ping = self._http.get(f"{base}/ping")
            if ping.headers.get("x-influxdb-version"):
                self._server = "influxdb"
                return self._server
            metrics = self._http.get(f"{base}/metrics")
            if metrics.status_code == 200 and "vm_app_version" in metrics.text:
                self._server = "victoriametrics"
                return self._server
        except httpx.HTTPError as exc:
            detail = self._scrub(f"{type(exc).__name__}: {exc}")
            raise StoreError(f"store {self.url} cannot be reached: {detail}") from exc
        raise UnreadableStoreError(
            f"store {self.url} is neither InfluxDB (no X-Influxdb-Version header on /ping) nor VictoriaMetrics "
            "(no vm_app_version in /metrics): energymon cannot read it back; set processor.store.server if it is "
            "one of them behind a proxy"
        )

    def influxql(self, statement: str) -> list[dict[str, Any]]:
        """Run one InfluxQL statement on ``/query`` (database and retention policy of the config, ``epoch=ms``).

        Returns:
            The ``series`` of the statement's result (``name``, ``tags``, ``columns``, ``values``); empty when
            nothing matched.

        Raises:
            StoreError: The server could not be reached, refused the query or reported an error in it.
        """
        params = {"db": self.database, "q": statement, "epoch": "ms"}
        if self.config.retention_policy is not None:
            params["rp"] = self.config.retention_policy
        where = f"InfluxQL query on {self.url} (database {self.database})"
        try:
            response = self._http.post(
                f"{self.config.url.rstrip('/')}/query", data=params, headers=self._auth_headers()
            )
            response.raise_for_status()
            body: dict[str, Any] = response.json()
        except httpx.HTTPStatusError as exc:
            text = self._scrub(exc.response.text.strip()[:300])
            raise StoreError(f"{where} failed: HTTP {exc.response.status_code}: {text}") from exc
        except (httpx.HTTPError, ValueError) as exc:
            raise StoreError(f"{where} failed: {self._scrub(f'{type(exc).__name__}: {exc}')}") from exc
        results = body.get("results")
        if not isinstance(results, list) or not results:
            error = body.get("error")
            raise StoreError(f"{where} failed: {error or 'no results in the answer'}")
        first: dict[str, Any] = results[0]
        if "error" in first:
            raise StoreError(f"{where} failed: {first['error']} (query: {statement})")
        series: list[dict[str, Any]] = first.get("series") or []
        return series

    def query(
        self,
        measurement: str,
        field: str,
        *,
        tags: dict[str, str] | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> list[Sample]:
        """Samples of one field of the series that carry all of ``tags``, in ``[start_ms, end_ms)``.

        The same answer as :meth:`SqliteStore.query` (a filter value ``""`` matches series without that tag;
        sorted by tags, then time), read through InfluxQL on InfluxDB and ``/api/v1/export`` on
        VictoriaMetrics.

        Raises:
            StoreError: The store could not be reached or refused the query.
            UnreadableStoreError: The server is neither InfluxDB nor VictoriaMetrics.
        """
        if start_ms is not None and end_ms is not None and end_ms <= start_ms:
            return []
        out: list[Sample] = []
        if self.server() == "influxdb":
            where = influxql_where(tags, start_ms, end_ms)
            statement = f"SELECT {influxql_ident(field)} FROM {influxql_ident(measurement)}{where} GROUP BY *"
            for item in self.influxql(statement):
                series_tags = {str(k): str(v) for k, v in (item.get("tags") or {}).items() if v != ""}
                out.extend(
                    (series_tags, int(ts), float(value)) for ts, value in item.get("values") or [] if value is not None
                )
        else:
            wanted = tags or {}
            labels = [f"__name__={_prom_string(f'{measurement}_{field}')}"]
            labels += [f"{k}={_prom_string(v)}" for k, v in sorted(wanted.items())]
            last = None if end_ms is None else end_ms - 1
            for series_labels, times, values in self.export("{" + ",".join(labels) + "}", start_ms, last):
                series_tags = {k: v for k, v in series_labels.items() if k != "__name__"}
                out.extend((series_tags, t, v) for t, v in zip(times, values, strict=True))
        out.sort(key=lambda item: (sorted(item[0].items()), item[1]))
        return out

    def _influxql_retention_ms(self) -> int | None:
        """The duration of the retention policy written to (``SHOW RETENTION POLICIES``); None for ``0s`` (forever).

        Raises:
            StoreError: The query failed or names no such policy.
        """
        found = self.influxql(f"SHOW RETENTION POLICIES ON {influxql_ident(self.database)}")
        rows = [dict(zip(item.get("columns") or [], values, strict=False))
                for item in found for values in item.get("values") or []]
        wanted = self.config.retention_policy
        for row in rows:
            if (row.get("name") == wanted) if wanted is not None else bool(row.get("default")):
                return _go_duration_ms(str(row.get("duration", "0s")))
        raise StoreError(f"InfluxDB {self.url}: database {self.database} has no retention policy "
                         f"{wanted or '(default)'}")

    def export(
        self, match: str, start_ms: int | None = None, end_ms: int | None = None, *, flush: bool = True
    ) -> list[ExportedSeries]:
        """Read raw samples back from VictoriaMetrics (``GET /api/v1/export``), for tests and reports.

        Args:
            match: Series selector, e.g. ``'energy_kwh{meter="m1"}'`` or ``'{__name__=~"energy_.*"}'``.
            start_ms: First timestamp (inclusive); all history when omitted.
            end_ms: Last timestamp (inclusive); when omitted, the year 2100. (VictoriaMetrics' own default is
                *now*, which hides samples stamped ahead of the wall clock, e.g. by the demo's fast clock.)
            flush: Call ``/internal/force_flush`` first so fresh writes are visible (ignored if absent).

        Returns:
            ``(labels, timestamps_ms, values)`` per series, sorted by labels; labels include ``__name__``.

        Raises:
            StoreError: VictoriaMetrics could not be reached or refused the query.
        """
        params: dict[str, str] = {"match[]": match}
        if start_ms is not None:
            params["start"] = _ms_to_seconds_text(start_ms)
        params["end"] = _ms_to_seconds_text(_EXPORT_END_MS if end_ms is None else end_ms)
        try:
            if flush:
                flushed = self._http.get(f"{self.config.url.rstrip('/')}/internal/force_flush")
                if flushed.status_code != 404:
                    flushed.raise_for_status()
            response = self._http.get(f"{self.config.url.rstrip('/')}/api/v1/export", params=params)
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            body = exc.response.text.strip()[:300]
            raise StoreError(
                f"export from {self.url} failed: HTTP {exc.response.status_code}: {self._scrub(body)}"
            ) from exc
        except httpx.HTTPError as exc:
            detail = self._scrub(f"{type(exc).__name__}: {exc}")
            raise StoreError(f"export from {self.url} failed: {detail}") from exc
        result: list[ExportedSeries] = []
        for line in response.text.splitlines():
            if not line.strip():
                continue
            item: dict[str, Any] = json.loads(line)
            labels = {str(k): str(v) for k, v in item["metric"].items()}
            result.append((labels, [int(t) for t in item["timestamps"]], [float(v) for v in item["values"]]))
        result.sort(key=lambda series: sorted(series[0].items()))
        return result

    # ----------------------------------------------------------------- internals

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, ApiException):
            body = (exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or ""))
            detail = f"HTTP {exc.status} {exc.reason or ''}".rstrip()
            if body.strip():
                detail += f": {body.strip()[:300]}"
        elif isinstance(exc, httpx.HTTPStatusError):
            detail = f"HTTP {exc.response.status_code} {exc.response.reason_phrase}".rstrip()
            if exc.response.text.strip():
                detail += f": {exc.response.text.strip()[:300]}"
        else:
            detail = f"{type(exc).__name__}: {exc}"
        return self._scrub(detail)


def influxql_ident(name: str) -> str:
    """An InfluxQL identifier in double quotes (``"`` and ``\\`` escaped)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def influxql_string(value: str) -> str:
    """An InfluxQL string literal in single quotes (``'`` and ``\\`` escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def influxql_where(
    tags: dict[str, str] | None, start_ms: int | None, end_ms: int | None, *, closed_end: bool = False
) -> str:
    """`` WHERE`` clause: every tag equal (``''`` matches series without it), ``start_ms <= time < end_ms``
    (``<=`` with ``closed_end``); times in ns, which every InfluxQL version reads as a bare integer."""
    terms = [f"{influxql_ident(k)} = {influxql_string(v)}" for k, v in sorted((tags or {}).items())]
    if start_ms is not None:
        terms.append(f"time >= {int(start_ms) * 1_000_000}")
    terms.append(f"time {'<=' if closed_end else '<'} {int(_EXPORT_END_MS if end_ms is None else end_ms) * 1_000_000}")
    return " WHERE " + " AND ".join(terms)


_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms|us|µs|ns)")
_GO_UNITS_MS = {"h": 3_600_000.0, "m": 60_000.0, "s": 1000.0, "ms": 1.0, "us": 1e-3, "µs": 1e-3, "ns": 1e-6}


def _go_duration_ms(text: str) -> int | None:
    """An InfluxDB duration (``168h0m0s``) in ms; None for ``0s`` (InfluxDB 1.x: keep forever)."""
    total = sum(float(n) * _GO_UNITS_MS[u] for n, u in _GO_DURATION.findall(text))
    return round(total) if total > 0 else None


def _prom_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_VM_RETENTION = re.compile(r'^flag\{name="retentionPeriod", value="([^"]+)"', re.MULTILINE)
_VM_UNITS_MS = {"h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000, "y": 365 * 86_400_000}


def _vm_duration_ms(text: str) -> int | None:
    """A VictoriaMetrics ``-retentionPeriod`` value in ms: ``30d``, ``2w``, ``1y``, ``12h``; a bare number counts
    months of 31 days (VictoriaMetrics' own reading). None if not understood."""
    text = text.strip()
    unit = _VM_UNITS_MS.get(text[-1:])
    number = text[:-1] if unit is not None else text
    try:
        value = float(number)
    except ValueError:
        return None
    return round(value * (unit if unit is not None else 31 * 86_400_000)) if value > 0 else None


# --------------------------------------------------------------------------- SqliteStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    measurement TEXT NOT NULL,
    tags TEXT NOT NULL,  -- JSON object, keys sorted
    UNIQUE (measurement, tags)
);
CREATE TABLE IF NOT EXISTS samples (
    series_id INTEGER NOT NULL,
    field TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (series_id, field, ts_ms)
) WITHOUT ROWID;
"""

_UPSERT = (
    "INSERT INTO samples (series_id, field, ts_ms, value) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (series_id, field, ts_ms) DO UPDATE SET value = excluded.value"
)


def _tags_json(tags: Iterable[tuple[str, str]]) -> str:
    return json.dumps(dict(tags), ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _as_ts(value: object) -> int | None:
    """``value`` as an int64 timestamp (numpy integers, integral floats), or None."""
    try:
        ts = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        if not isinstance(value, float) or not value.is_integer():
            return None
        ts = int(value)
    return ts if _TS_MIN <= ts <= _TS_MAX else None


def _time_clause(start_ms: int | None, end_ms: int | None) -> tuple[str, list[int]]:
    clause = ""
    args: list[int] = []
    if start_ms is not None:
        clause += " AND ts_ms >= ?"
        args.append(int(start_ms))
    if end_ms is not None:
        clause += " AND ts_ms < ?"
        args.append(int(end_ms))
    return clause, args


class SqliteStore:
    """The embedded store: one SQLite file with a ``series`` and a ``samples`` table.

    One connection, guarded by a lock (``check_same_thread=False``), serves the writer and every reader
    thread; a read waits at most for the batch being written and sees whole batches only. Each
    :meth:`write` is one transaction. Series ids are cached in memory once committed.

    Args:
        config: The file path (``:memory:`` also works, for tests).
        metrics: Self-metrics; write durations and the store stage's sent/dropped/error counters.

    Raises:
        StoreError: The file cannot be opened or is not an energymon database.
    """

    def __init__(self, config: SqliteStoreConfig, *, metrics: PipelineMetrics | None = None) -> None:
        self.config = config
        self.path = config.path
        self._metrics = metrics
        self._stage: StageMetrics | None = metrics.stage(_STAGE) if metrics is not None else None
        self._lock = threading.Lock()
        self._ids: dict[tuple[str, str], int] = {}  # (measurement, lp) -> series id, committed rows only
        self._tags_by_id: dict[int, dict[str, str]] = {}
        self._closed = False
        try:
            if str(self.path) != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0
            )
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"SQLite store {self.path}: cannot open: {exc}") from exc
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._conn.close()
            raise StoreError(f"SQLite store {self.path}: cannot initialise: {exc}") from exc

    # ----------------------------------------------------------------- Store protocol

    def write(self, rows: Sequence[Row]) -> None:
        """Upsert every finite value of ``rows`` in one transaction (the last value of a key wins).

        Raises:
            StoreError: SQLite failed (disk full, file locked for longer than 10 s, store closed...); nothing
                of this call is stored.
        """
        began = time.perf_counter()
        if self._stage is not None:
            self._stage.received(sum(len(f) for _, f, _ in rows))
        try:
            with self._lock:
                self._check_open()
                self._write_locked(rows)
        except StoreError as error:
            if self._stage is not None:
                self._stage.error(error)
            raise
        finally:
            if self._metrics is not None:
                self._metrics.store_write_duration.observe(time.perf_counter() - began)

    def _write_locked(self, rows: Sequence[Row]) -> None:
        conn = self._conn
        ids = self._ids
        isfinite = math.isfinite
        pending: dict[tuple[str, str], int] = {}
        params: list[tuple[int, str, int, float]] = []
        append = params.append
        dropped = {_NON_FINITE: 0, _INVALID_VALUE: 0, _INVALID_TIME: 0}
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for key, fields, ts_ms in rows:
                    if type(ts_ms) is not int or not _TS_MIN <= ts_ms <= _TS_MAX:
                        ts = _as_ts(ts_ms)
                        if ts is None:
                            dropped[_INVALID_TIME] += len(fields)
                            continue
                        ts_ms = ts
                    sid: int | None = None
                    for name, value in fields.items():
                        try:
                            finite = isfinite(value)
                        except TypeError:
                            dropped[_INVALID_VALUE] += 1
                            continue
                        if not finite:
                            dropped[_NON_FINITE] += 1
                            continue
                        if sid is None:
                            cache_key = (key.measurement, key.lp)
                            sid = ids.get(cache_key) or pending.get(cache_key)
                            if sid is None:
                                sid = pending[cache_key] = self._series_id(key)
                        append((sid, name, ts_ms, value if type(value) is float else float(value)))
                # Key order touches each B-tree page once; the sort is stable, so of two values for one key
                # the one written last is still upserted last and wins.
                params.sort(key=_SAMPLE_KEY)
                conn.executemany(_UPSERT, params)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write to {self.path} failed: {exc}") from exc
        ids.update(pending)  # only now: ids of a rolled-back transaction must never be cached
        if self._stage is not None:
            if params:
                self._stage.sent(len(params))
            for reason, n in dropped.items():
                if n:
                    self._stage.dropped(reason, n)

    def _series_id(self, key: SeriesKey) -> int:
        tags = _tags_json(key.tags)
        self._conn.execute(
            "INSERT INTO series (measurement, tags) VALUES (?, ?) ON CONFLICT (measurement, tags) DO NOTHING",
            (key.measurement, tags),
        )
        row = self._conn.execute(
            "SELECT id FROM series WHERE measurement = ? AND tags = ?", (key.measurement, tags)
        ).fetchone()
        sid: int = row[0]
        return sid

    def close(self) -> None:
        """Close the connection (checkpointing the WAL). Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def describe(self) -> str:
        """``sqlite:<path>``."""
        return f"sqlite:{self.path}"

    def retention_ms(self) -> int | None:
        """None: the SQLite store keeps every sample."""
        return None

    def ping(self) -> bool:
        """Tell whether the database answers (never raises)."""
        try:
            with self._lock:
                self._check_open()
                self._conn.execute("SELECT 1").fetchone()
            return True
        except (StoreError, sqlite3.Error):
            return False

    # ----------------------------------------------------------------- queries

    def query(
        self,
        measurement: str,
        field: str,
        *,
        tags: dict[str, str] | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> list[tuple[dict[str, str], int, float]]:
        """Samples of one field of the series that carry all of ``tags``, in ``[start_ms, end_ms)``.

        A filter value ``""`` matches series without that tag. Results are sorted by tags, then time.

        Raises:
            StoreError: SQLite failed or the store is closed.
        """
        clause, time_args = _time_clause(start_ms, end_ms)
        out: list[tuple[dict[str, str], int, float]] = []
        with self._reading():
            series = self._matching_series(measurement, tags)
            for ids in _id_chunks(series):
                marks = ",".join("?" * len(ids))
                cursor = self._conn.execute(
                    f"SELECT series_id, ts_ms, value FROM samples WHERE series_id IN ({marks}) AND field = ?"
                    f"{clause} ORDER BY series_id, ts_ms",
                    (*ids, field, *time_args),
                )
                out.extend((series[sid], ts, value) for sid, ts, value in cursor)
        out.sort(key=lambda item: (sorted(item[0].items()), item[1]))
        return out

    def latest(
        self, measurement: str, field: str, tags: dict[str, str] | None = None
    ) -> list[tuple[dict[str, str], int, float]]:
        """The newest sample of one field for each series that carries all of ``tags``, sorted by tags.

        Raises:
            StoreError: SQLite failed or the store is closed.
        """
        out: list[tuple[dict[str, str], int, float]] = []
        with self._reading():
            series = self._matching_series(measurement, tags)
            for ids in _id_chunks(series):
                marks = ",".join("?" * len(ids))
                # SQLite guarantees that the bare column ``value`` comes from the row holding max(ts_ms).
                cursor = self._conn.execute(
                    f"SELECT series_id, max(ts_ms), value FROM samples WHERE series_id IN ({marks}) "
                    "AND field = ? GROUP BY series_id",
                    (*ids, field),
                )
                out.extend((series[sid], ts, value) for sid, ts, value in cursor)
        out.sort(key=lambda item: sorted(item[0].items()))
        return out

    def sum(
        self,
        measurement: str,
        field: str,
        tags: dict[str, str] | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        group_by: str | None = None,
    ) -> dict[str, float]:
        """Sum of one field over ``[start_ms, end_ms)``, per value of the tag ``group_by``.

        Without ``group_by`` the result has one key, ``""``. Series without the ``group_by`` tag are summed
        under ``""``. Only groups with at least one sample appear; keys are sorted.

        Raises:
            StoreError: SQLite failed or the store is closed.
        """
        clause, time_args = _time_clause(start_ms, end_ms)
        parts: dict[str, list[float]] = {}
        with self._reading():
            series = self._matching_series(measurement, tags)
            for ids in _id_chunks(series):
                marks = ",".join("?" * len(ids))
                cursor = self._conn.execute(
                    f"SELECT series_id, sum(value) FROM samples WHERE series_id IN ({marks}) AND field = ?"
                    f"{clause} GROUP BY series_id",
                    (*ids, field, *time_args),
                )
                for sid, total in cursor:
                    group = series[sid].get(group_by, "") if group_by is not None else ""
                    parts.setdefault(group, []).append(total)
        return {group: math.fsum(parts[group]) for group in sorted(parts)}

    def count(self) -> int:
        """Number of stored samples (one per series, field and timestamp).

        Raises:
            StoreError: SQLite failed or the store is closed.
        """
        with self._reading():
            row = self._conn.execute("SELECT count(*) FROM samples").fetchone()
        n: int = row[0]
        return n

    def series(self, measurement: str | None = None) -> list[tuple[str, dict[str, str]]]:
        """The stored series as ``(measurement, tags)``, sorted.

        Raises:
            StoreError: SQLite failed or the store is closed.
        """
        with self._reading():
            if measurement is None:
                rows = self._conn.execute("SELECT measurement, tags FROM series").fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT measurement, tags FROM series WHERE measurement = ?", (measurement,)
                ).fetchall()
        out = [(str(m), {str(k): str(v) for k, v in json.loads(t).items()}) for m, t in rows]
        out.sort(key=lambda item: (item[0], sorted(item[1].items())))
        return out

    # ----------------------------------------------------------------- internals

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"SQLite store {self.path} is closed")

    def _reading(self) -> _Reading:
        return _Reading(self)

    def _matching_series(self, measurement: str, tags: dict[str, str] | None) -> dict[int, dict[str, str]]:
        """Series of ``measurement`` carrying all of ``tags`` (caller holds the lock)."""
        wanted = list((tags or {}).items())
        found: dict[int, dict[str, str]] = {}
        cache = self._tags_by_id
        rows = self._conn.execute("SELECT id, tags FROM series WHERE measurement = ?", (measurement,))
        for sid, text in rows:
            series_tags = cache.get(sid)
            if series_tags is None:
                series_tags = {str(k): str(v) for k, v in json.loads(text).items()}
                cache[sid] = series_tags
            if all(series_tags.get(k, "") == v for k, v in wanted):
                found[sid] = series_tags
        return found


class _Reading:
    """Hold the store's lock for a read and map SQLite errors to StoreError."""

    __slots__ = ("_store",)

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def __enter__(self) -> None:
        self._store._lock.acquire()
        try:
            self._store._check_open()
        except BaseException:
            self._store._lock.release()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._store._lock.release()
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"SQLite query on {self._store.path} failed: {exc}") from exc


def _id_chunks(series: dict[int, dict[str, str]]) -> Iterator[list[int]]:
    ids = sorted(series)
    for start in range(0, len(ids), _SQL_IN_CHUNK):
        yield ids[start : start + _SQL_IN_CHUNK]


# --------------------------------------------------------------------------- factory


def open_store(
    config: InfluxStoreConfig | SqliteStoreConfig, *, metrics: PipelineMetrics | None = None
) -> Store:
    """Open the store a processor config names.

    Raises:
        StoreError: The SQLite file cannot be opened.
        ConfigError: An InfluxDB ``token_env`` variable is not set.
    """
    if isinstance(config, InfluxStoreConfig):
        return InfluxStore(config, metrics=metrics)
    return SqliteStore(config, metrics=metrics)
