"""Read-only access to a plant's store for the live page: the embedded SQLite file, InfluxDB or VictoriaMetrics.

A :class:`StoreReader` answers the few questions the overview asks, with the same semantics on both stores:

* :meth:`~StoreReader.latest`: the newest sample of one field per series in ``(at_ms - window_ms, at_ms]``;
* :meth:`~StoreReader.sum`: the sum of one field over ``(start_ms, end_ms]``, per value of one tag;
* :meth:`~StoreReader.count`: the number of samples of one field over ``(start_ms, end_ms]``;
* :meth:`~StoreReader.samples`: the raw samples of one field per series over ``(start_ms, end_ms]``.

Ranges are closed at the end because rows of the ``energy`` measurement are stamped at the end of their interval:
a row stamped at midnight is the last interval of the day before, and VictoriaMetrics' rollup windows are
``(t - d, t]`` too. Series are returned as ``(tags, ...)`` with every tag as a string.

:class:`SqliteReader` uses :class:`~energymon.processors.store.SqliteStore`'s read API (it may share the store
object a running processor writes through). :class:`InfluxQLReader` runs InfluxQL on InfluxDB's v1 ``/query`` API
(InfluxDB 1.x, 2.x through a DBRP mapping, 3) through :meth:`~energymon.processors.store.InfluxStore.influxql`.
:class:`VictoriaMetricsReader` queries the Prometheus-compatible API of VictoriaMetrics (``/api/v1/query`` and
``/api/v1/export``), where a field is the metric ``{measurement}_{field}`` and tags are labels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx

from energymon.errors import StoreError
from energymon.processors.store import InfluxStore, SqliteStore, influxql_ident, influxql_string, influxql_where

__all__ = ["InfluxQLReader", "SeriesSamples", "SeriesValue", "SqliteReader", "StoreReader", "VictoriaMetricsReader"]

#: ``(tags, ts_ms, value)``: one sample of one series.
SeriesValue = tuple[dict[str, str], int, float]
#: ``(tags, [(ts_ms, value), ...])``: the samples of one series, oldest first.
SeriesSamples = tuple[dict[str, str], list[tuple[int, float]]]


class StoreReader(Protocol):
    """What the overview reads from a store. Every method raises :class:`StoreError` when the store fails."""

    def describe(self) -> str:
        """Kind and location of the store, for the page (no credentials)."""
        ...

    def latest(
        self, measurement: str, field: str, tags: Mapping[str, str] | None, *, at_ms: int, window_ms: int
    ) -> list[SeriesValue]:
        """The newest sample per series carrying all of ``tags`` in ``(at_ms - window_ms, at_ms]``."""
        ...

    def sum(
        self, measurement: str, field: str, group_by: str, *, start_ms: int, end_ms: int
    ) -> dict[str, float]:
        """Sum over ``(start_ms, end_ms]`` per value of the tag ``group_by`` (groups with samples only)."""
        ...

    def count(self, measurement: str, field: str, *, start_ms: int, end_ms: int) -> int:
        """Number of samples of one field over ``(start_ms, end_ms]``, all series together."""
        ...

    def samples(
        self, measurement: str, field: str, tags: Mapping[str, str] | None, *, start_ms: int, end_ms: int
    ) -> list[SeriesSamples]:
        """Raw samples per series carrying all of ``tags`` over ``(start_ms, end_ms]``."""
        ...

    def row(self, measurement: str, fields: list[str], tags: Mapping[str, str], ts_ms: int) -> dict[str, float]:
        """The given fields of the series carrying all of ``tags`` at exactly ``ts_ms`` (fields present only)."""
        ...

    def close(self) -> None:
        """Release connections (not a store object the reader was given)."""
        ...


# --------------------------------------------------------------------------- SQLite


class SqliteReader:
    """Reads an embedded SQLite store through :class:`SqliteStore`'s query API.

    Args:
        store: an open store (e.g. the one the demo's processor writes).
        owns: close the store with the reader (False for a store its writer still uses).
    """

    def __init__(self, store: SqliteStore, *, owns: bool = False) -> None:
        self.store = store
        self.owns = owns

    def describe(self) -> str:
        """``sqlite:<path>``."""
        return f"sqlite:{self.store.path}"

    def latest(
        self, measurement: str, field: str, tags: Mapping[str, str] | None, *, at_ms: int, window_ms: int
    ) -> list[SeriesValue]:
        """See :meth:`StoreReader.latest`."""
        newest = self.store.latest(measurement, field, dict(tags) if tags else None)
        in_window = [s for s in newest if at_ms - window_ms < s[1] <= at_ms]
        if len(in_window) == len(newest):
            return in_window
        # a series written ahead of ``at_ms`` (a fast simulated clock): look for its newest sample in the window
        out: list[SeriesValue] = []
        for series_tags, ts, value in newest:
            if ts <= at_ms - window_ms:
                continue
            if ts <= at_ms:
                out.append((series_tags, ts, value))
                continue
            rows = self.store.query(
                measurement, field, tags=series_tags, start_ms=at_ms - window_ms + 1, end_ms=at_ms + 1
            )
            mine = [r for r in rows if r[0] == series_tags]
            if mine:
                out.append(mine[-1])
        return out

    def sum(
        self, measurement: str, field: str, group_by: str, *, start_ms: int, end_ms: int
    ) -> dict[str, float]:
        """See :meth:`StoreReader.sum`."""
        return self.store.sum(measurement, field, start_ms=start_ms + 1, end_ms=end_ms + 1, group_by=group_by)

    def count(self, measurement: str, field: str, *, start_ms: int, end_ms: int) -> int:
        """See :meth:`StoreReader.count`."""
        return len(self.store.query(measurement, field, start_ms=start_ms + 1, end_ms=end_ms + 1))

    def samples(
        self, measurement: str, field: str, tags: Mapping[str, str] | None, *, start_ms: int, end_ms: int
    ) -> list[SeriesSamples]:
        """See :meth:`StoreReader.samples`."""
        rows = self.store.query(
            measurement, field, tags=dict(tags) if tags else None, start_ms=start_ms + 1, end_ms=end_ms + 1
        )
        out: list[SeriesSamples] = []
        for series_tags, ts, value in rows:  # sorted by tags, then time
            if not out or out[-1][0] != series_tags:
                out.append((series_tags, []))
            out[-1][1].append((ts, value))
        return out

    def row(self, measurement: str, fields: list[str], tags: Mapping[str, str], ts_ms: int) -> dict[str, float]:
        """See :meth:`StoreReader.row`."""
        out: dict[str, float] = {}
        for field in fields:
            found = self.store.query(measurement, field, tags=dict(tags), start_ms=ts_ms, end_ms=ts_ms + 1)
            if found:
                out[field] = found[-1][2]
        return out

    def close(self) -> None:
        """Close the store if the reader owns it."""
        if self.owns:
            self.store.close()


# --------------------------------------------------------------------------- InfluxDB (InfluxQL)


def _series_tags(item: Mapping[str, Any]) -> dict[str, str]:
    """Tags of one InfluxQL result series (``GROUP BY *`` also lists the measurement's other keys, empty)."""
    return {str(k): str(v) for k, v in (item.get("tags") or {}).items() if v not in ("", None)}


class InfluxQLReader:
    """Reads the plant's rows from InfluxDB through InfluxQL (``/query``), with the semantics of the other readers.

    Args:
        store: an :class:`InfluxStore` whose server is InfluxDB (database and credentials from its config).
        owns: close the store with the reader.
    """

    def __init__(self, store: InfluxStore, *, owns: bool = False) -> None:
        self.store = store
        self.owns = owns

    def describe(self) -> str:
        """``influxdb:<url> (database <db>)``."""
        return self.store.describe()

    def _where(self, tags: Mapping[str, str] | None, start_ms: int, end_ms: int) -> str:
        # (start, end]: InfluxQL's range is given in ns, so the open start is start + 1 ms
        return influxql_where(dict(tags) if tags else None, start_ms + 1, end_ms, closed_end=True)

    def latest(
        self, measurement: str, field: str, tags: Mapping[str, str] | None, *, at_ms: int, window_ms: int
    ) -> list[SeriesValue]:
        """See :meth:`StoreReader.latest`."""
        where = self._where(tags, at_ms - window_ms, at_ms)
        statement = f"SELECT last({influxql_ident(field)}) FROM {influxql_ident(measurement)}{where} GROUP BY *"
        out: list[SeriesValue] = []
        for item in self.store.influxql(statement):
            for ts, value in item.get("values") or []:
                if value is not None:
                    out.append((_series_tags(item), int(ts), float(value)))
        out.sort(key=lambda item: sorted(item[0].items()))
        return out

    def sum(
        self, measurement: str, field: str, group_by: str, *, start_ms: int, end_ms: int
    ) -> dict[str, float]:
        """See :meth:`StoreReader.sum`."""
        if end_ms <= start_ms:
            return {}
        where = self._where(None, start_ms, end_ms)
        statement = (f"SELECT sum({influxql_ident(field)}) FROM {influxql_ident(measurement)}{where} "
                     f"GROUP BY {influxql_ident(group_by)}")
        totals: dict[str, float] = {}
        for item in self.store.influxql(statement):
            group = _series_tags(item).get(group_by, "")
            for _ts, value in item.get("values") or []:
                if value is not None:
                    totals[group] = totals.get(group, 0.0) + float(value)
        return {group: totals[group] for group in sorted(totals)}

    def count(self, measurement: str, field: str, *, start_ms: int, end_ms: int) -> int:
        """See :meth:`StoreReader.count`."""
        if end_ms <= start_ms:
            return 0
        where = self._where(None, start_ms, end_ms)
        statement = f"SELECT count({influxql_ident(field)}) FROM {influxql_ident(measurement)}{where}"
        total = 0
        for item in self.store.influxql(statement):
            total += sum(int(value) for _ts, value in item.get("values") or [] if value is not None)
        return total

    def samples(
        self, measurement: str, field: str, tags: Mapping[str, str] | None, *, start_ms: int, end_ms: int
    ) -> list[SeriesSamples]:
        """See :meth:`StoreReader.samples`."""
        if end_ms <= start_ms:
            return []
        where = self._where(tags, start_ms, end_ms)
        statement = f"SELECT {influxql_ident(field)} FROM {influxql_ident(measurement)}{where} GROUP BY *"
        out: list[SeriesSamples] = []
        for item in self.store.influxql(statement):
            pairs = sorted((int(ts), float(v)) for ts, v in item.get("values") or [] if v is not None)
            if pairs:
                out.append((_series_tags(item), pairs))
        out.sort(key=lambda item: sorted(item[0].items()))
        return out

    def row(self, measurement: str, fields: list[str], tags: Mapping[str, str], ts_ms: int) -> dict[str, float]:
        """See :meth:`StoreReader.row` (one query for every field)."""
        terms = [f"{influxql_ident(k)} = {influxql_string(v)}" for k, v in sorted(tags.items())]
        terms.append(f"time = {int(ts_ms) * 1_000_000}")
        columns = ", ".join(influxql_ident(f) for f in fields)
        statement = f"SELECT {columns} FROM {influxql_ident(measurement)} WHERE {' AND '.join(terms)}"
        out: dict[str, float] = {}
        for item in self.store.influxql(statement):
            names = list(item.get("columns") or [])
            for values in item.get("values") or []:
                for name, value in zip(names, values, strict=True):
                    if name != "time" and name in fields and value is not None:
                        out[name] = float(value)
        return out

    def close(self) -> None:
        """Close the store if the reader owns it."""
        if self.owns:
            self.store.close()


# --------------------------------------------------------------------------- VictoriaMetrics


def _quote(value: str) -> str:
    """A PromQL/MetricsQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _selector(measurement: str, field: str, tags: Mapping[str, str] | None) -> str:
    labels = [f"__name__={_quote(f'{measurement}_{field}')}"]
    labels += [f"{name}={_quote(value)}" for name, value in sorted((tags or {}).items())]
    return "{" + ",".join(labels) + "}"


def _seconds(ms: int) -> str:
    whole, frac = divmod(int(ms), 1000)
    return f"{whole}.{frac:03d}"


class VictoriaMetricsReader:
    """Reads the plant's rows from VictoriaMetrics through its Prometheus-compatible query API.

    Rows written through the InfluxDB v2 write API appear as metrics ``{measurement}_{field}`` with the tags as
    labels. Aggregates use instant queries (``/api/v1/query`` with ``last_over_time``, ``tlast_over_time``,
    ``sum_over_time`` and ``count_over_time``; the result cache is bypassed so fresh rows count at once); raw
    samples come from ``/api/v1/export``.

    Args:
        url: base URL, e.g. ``http://127.0.0.1:8428`` (user info in the URL is sent as basic auth).
        timeout_s: HTTP timeout per request.
    """

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        self.public_url = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))
        self._http = httpx.Client(timeout=timeout_s)

    def describe(self) -> str:
        """``victoriametrics:<url>`` (without user info)."""
        return f"victoriametrics:{self.public_url}"

    def _get(self, path: str, params: dict[str, str]) -> httpx.Response:
        try:
            response = self._http.get(f"{self.url}{path}", params=params)
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            status, body = exc.response.status_code, exc.response.text.strip()[:300]
            raise StoreError(f"VictoriaMetrics {self.public_url}{path}: HTTP {status}: {body}") from exc
        except httpx.HTTPError as exc:
            raise StoreError(f"VictoriaMetrics {self.public_url}{path}: {type(exc).__name__}: {exc}") from exc
        return response

    def _vector(self, query: str, at_ms: int) -> list[tuple[dict[str, str], float]]:
        response = self._get("/api/v1/query", {"query": query, "time": _seconds(at_ms), "nocache": "1"})
        try:
            body: dict[str, Any] = response.json()
            result = body["data"]["result"]
            out: list[tuple[dict[str, str], float]] = []
            for item in result:
                labels = {str(k): str(v) for k, v in item["metric"].items() if k != "__name__"}
                out.append((labels, float(item["value"][1])))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise StoreError(f"VictoriaMetrics {self.public_url}/api/v1/query: unexpected answer to {query}") from exc
        return out

    def latest(
        self, measurement: str, field: str, tags: Mapping[str, str] | None, *, at_ms: int, window_ms: int
    ) -> list[SeriesValue]:
        """See :meth:`StoreReader.latest`."""
        sel = f"{_selector(measurement, field, tags)}[{int(window_ms)}ms]"
        values = self._vector(f"last_over_time({sel})", at_ms)
        stamps = {_key(labels): ts for labels, ts in self._vector(f"tlast_over_time({sel})", at_ms)}
        out: list[SeriesValue] = []
        for labels, value in values:
            ts = stamps.get(_key(labels))
            if ts is not None and math.isfinite(value):
                out.append((labels, round(ts * 1000), value))
        out.sort(key=lambda item: sorted(item[0].items()))
        return out

    def sum(
        self, measurement: str, field: str, group_by: str, *, start_ms: int, end_ms: int
    ) -> dict[str, float]:
        """See :meth:`StoreReader.sum`."""
        if end_ms <= start_ms:
            return {}
        sel = f"{_selector(measurement, field, None)}[{int(end_ms - start_ms)}ms]"
        rows = self._vector(f"sum by ({group_by}) (sum_over_time({sel}))", end_ms)
        totals: dict[str, float] = {}
        for labels, value in rows:
            group = labels.get(group_by, "")
            totals[group] = totals.get(group, 0.0) + value
        return {group: totals[group] for group in sorted(totals)}

    def count(self, measurement: str, field: str, *, start_ms: int, end_ms: int) -> int:
        """See :meth:`StoreReader.count`."""
        if end_ms <= start_ms:
            return 0
        sel = f"{_selector(measurement, field, None)}[{int(end_ms - start_ms)}ms]"
        rows = self._vector(f"sum(count_over_time({sel}))", end_ms)
        return round(rows[0][1]) if rows else 0

    def samples(
        self, measurement: str, field: str, tags: Mapping[str, str] | None, *, start_ms: int, end_ms: int
    ) -> list[SeriesSamples]:
        """See :meth:`StoreReader.samples`."""
        if end_ms <= start_ms:
            return []
        params = {"match[]": _selector(measurement, field, tags), "start": _seconds(start_ms + 1),
                  "end": _seconds(end_ms)}
        response = self._get("/api/v1/export", params)
        out: list[SeriesSamples] = []
        try:
            for line in response.text.splitlines():
                if not line.strip():
                    continue
                item: dict[str, Any] = json.loads(line)
                labels = {str(k): str(v) for k, v in item["metric"].items() if k != "__name__"}
                pairs = sorted(
                    (int(t), float(v)) for t, v in zip(item["timestamps"], item["values"], strict=True)
                    if start_ms < int(t) <= end_ms
                )
                if pairs:
                    out.append((labels, pairs))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"VictoriaMetrics {self.public_url}/api/v1/export: unexpected answer") from exc
        out.sort(key=lambda item: sorted(item[0].items()))
        return out

    def row(self, measurement: str, fields: list[str], tags: Mapping[str, str], ts_ms: int) -> dict[str, float]:
        """See :meth:`StoreReader.row` (one export of every field)."""
        names = "|".join(f"{measurement}_{field}" for field in fields)  # identifiers: nothing to escape
        labels = [f"__name__=~{_quote(names)}"] + [f"{k}={_quote(v)}" for k, v in sorted(tags.items())]
        params = {"match[]": "{" + ",".join(labels) + "}", "start": _seconds(ts_ms), "end": _seconds(ts_ms)}
        response = self._get("/api/v1/export", params)
        prefix = f"{measurement}_"
        out: dict[str, float] = {}
        try:
            for line in response.text.splitlines():
                if not line.strip():
                    continue
                item: dict[str, Any] = json.loads(line)
                name = str(item["metric"].get("__name__", ""))
                for t, v in zip(item["timestamps"], item["values"], strict=True):
                    if int(t) == ts_ms and name.startswith(prefix):
                        out[name[len(prefix):]] = float(v)
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"VictoriaMetrics {self.public_url}/api/v1/export: unexpected answer") from exc
        return out

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()


def _key(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))
