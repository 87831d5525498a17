"""The readings CSV of ``energymon report --readings``: ``ts,meter_id,value`` with optional ``quality`` and
``quantity`` columns, checked line by line.

Every problem is an :class:`~energymon.errors.InputError` naming the file and the line: a file that is empty,
binary or not UTF-8; a header without ``ts``, ``meter_id`` (or ``meter``) and ``value``, or a first line that is
data rather than a header; a row with more or fewer fields than the header; a time that is neither epoch
milliseconds nor ISO 8601, that does not exist (``2026-02-30``, a local time in a DST gap or fold), that looks
like epoch *seconds*, or that lies outside 2000–2099 (the wire schema's window); timestamps with and without a
UTC offset in one file; a value that is not a finite number. A file none of whose rows names a counter meter of
the plant is refused too (a shifted column or the wrong plant file would otherwise report zeros).

Rows that are read but not used are counted by reason (unknown meter, another quantity than the meter's
counter, quality other than ``good``, no value). Two rows for one meter and time with different values are a
*conflict*: the row that comes last in the file is used (as a store keeps the last write), and every conflict
is listed in :attr:`ReadingsFile.conflicts` so the report's data quality section can show it.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from energymon.config import PlantConfig
from energymon.errors import InputError
from energymon.processors.recompute import MeterReadings

__all__ = ["Conflict", "ReadingsFile", "read_readings_csv"]

#: The wire schema's window for event times: 2000-01-01 .. 2100-01-01 (UTC).
MIN_MS = 946_684_800_000
MAX_MS = 4_102_444_800_000
#: Below this an integer ``ts`` is taken for epoch seconds (1e11 ms is 1973-03-03; 1e11 s is year 5138).
_SECONDS_BELOW = 100_000_000_000
_MISSING = {"", "nan", "null", "none", "na", "n/a"}
_CONFLICT_EXAMPLES = 20
_MAX_FIELD = 4096


@dataclass(frozen=True)
class Conflict:
    """Rows of one meter and time with different values; ``used`` is the value of the last of them."""

    meter: str
    ts_ms: int
    lines: tuple[int, ...]
    values: tuple[float, ...]

    @property
    def used(self) -> float:
        """The value the report uses (the last row in the file)."""
        return self.values[-1]


@dataclass
class ReadingsFile:
    """What a readings CSV gave: readings per meter, what was left out, and conflicting duplicates."""

    source: str
    readings: dict[str, MeterReadings]
    rows: int = 0
    used: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    unknown_meters: list[str] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    identical_duplicates: int = 0

    def quality(self, tz: ZoneInfo) -> dict[str, object]:
        """The report's ``quality.readings_file`` block (conflicts listed up to 20, counted in full)."""
        counts: dict[str, int] = {}
        examples: dict[str, list[dict[str, object]]] = {}
        for c in self.conflicts:
            counts[c.meter] = counts.get(c.meter, 0) + 1
            shown = examples.setdefault(c.meter, [])
            if len(shown) < _CONFLICT_EXAMPLES:
                shown.append({"ts": datetime.fromtimestamp(c.ts_ms / 1000, tz).isoformat(),
                              "lines": list(c.lines), "values": list(c.values), "used": c.used})
        per_meter = {m: {"count": n, "examples": examples[m]} for m, n in counts.items()}
        return {
            "file": self.source, "rows": self.rows, "used": self.used, "skipped": dict(self.skipped),
            "unknown_meters": list(self.unknown_meters), "identical_duplicates": self.identical_duplicates,
            "conflicting_readings": len(self.conflicts), "conflicts": per_meter,
            "rule": "冲突的重复读数取文件中最后一行 the last row in the file is used for conflicting duplicates",
        }


def _text(path: Path | str | io.TextIOBase) -> tuple[str, str]:
    """``(name, text)`` of the file; refuses binary and non-UTF-8 content."""
    if isinstance(path, io.TextIOBase):
        return str(getattr(path, "name", "<readings>")), path.read()
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(name, f"cannot read the readings file: {exc.strerror or exc}") from None
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise InputError(name, "contains NUL bytes: a binary file, not a readings CSV (ts,meter_id,value)",
                         line=line)
    try:
        return name, codecs.decode(raw, "utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(name, f"not UTF-8 text (byte {exc.start}): save the CSV as UTF-8", line=line) from None


class _Times:
    """Parses ``ts`` cells; remembers the first line with and without a UTC offset to refuse a mix."""

    def __init__(self, name: str, tz: ZoneInfo) -> None:
        self.name = name
        self.tz = tz
        self.aware_line: int | None = None
        self.naive_line: int | None = None

    def ms(self, cell: str, line: int) -> int:
        text = cell.strip()
        if not text:
            raise InputError(self.name, "ts is empty", line=line)
        if text.lstrip("-").isdigit():
            value = int(text)
            if abs(value) < _SECONDS_BELOW:
                raise InputError(self.name, f"ts {text} looks like epoch seconds (or is before 1973); ts must be "
                                            "epoch milliseconds or ISO 8601 such as 2026-03-05T08:00:00+08:00",
                                 line=line)
            self._mark(aware=True, line=line)
            return self._in_window(value, text, line)
        try:
            dt = datetime.fromisoformat(text)
        except ValueError as exc:
            looks_iso = len(text) >= 8 and text[:4].isdigit() and text[4] == "-"
            why = f"is not a valid time ({exc})" if looks_iso else "is neither epoch milliseconds nor an ISO 8601 time"
            raise InputError(self.name, f"ts {text[:80]!r} {why}; expected e.g. 2026-03-05T08:00:00+08:00",
                             line=line) from None
        if dt.tzinfo is None:
            self._mark(aware=False, line=line)
            local = dt.replace(tzinfo=self.tz)
            back = local.astimezone(UTC).astimezone(self.tz).replace(tzinfo=None)
            if back != dt:
                raise InputError(self.name, f"ts {text!r} does not exist in {self.tz.key} (skipped by a clock "
                                            "change): give the UTC offset", line=line)
            if dt.replace(tzinfo=self.tz, fold=1).utcoffset() != local.utcoffset():
                raise InputError(self.name, f"ts {text!r} happens twice in {self.tz.key} (clock change): give "
                                            "the UTC offset", line=line)
            dt = local
        else:
            self._mark(aware=True, line=line)
        try:
            value = (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
        except OverflowError:
            raise InputError(self.name, f"ts {text!r} is outside 2000-2099", line=line) from None
        return self._in_window(value, text, line)

    def _in_window(self, value: int, text: str, line: int) -> int:
        if not MIN_MS <= value < MAX_MS:
            raise InputError(self.name, f"ts {text!r} is outside 2000-2099 (UTC): a wrong column or unit?",
                             line=line)
        return value

    def _mark(self, *, aware: bool, line: int) -> None:
        if aware:
            self.aware_line = self.aware_line or line
        else:
            self.naive_line = self.naive_line or line
        if self.aware_line is not None and self.naive_line is not None:
            raise InputError(
                self.name, f"readings mix timestamps with and without a UTC offset (line {self.aware_line} has "
                           f"one or is epoch ms, line {self.naive_line} has none): use one form", line=line)


def _value(name: str, cell: str, line: int) -> float | None:
    text = cell.strip()
    if text.lower() in _MISSING:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(name, f"value {text[:80]!r} is not a number (a shifted column?)", line=line) from None
    if not math.isfinite(value):
        raise InputError(name, f"value {text!r} is not a finite number", line=line)
    return value


def _rows(name: str, text: str) -> Iterator[tuple[int, list[str]]]:
    """``(line, fields)`` of every non-blank row; the line is where the row starts."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(name, f"not a valid CSV row: {exc}", line=reader.line_num) from None
        line, start = start, reader.line_num + 1
        if any(len(f) > _MAX_FIELD for f in fields):
            raise InputError(name, f"a field is longer than {_MAX_FIELD} characters: not a readings CSV", line=line)
        if fields and any(f.strip() for f in fields):
            yield line, fields


def read_readings_csv(path: Path | str | io.TextIOBase, plant: PlantConfig) -> ReadingsFile:
    """Read and check a readings CSV for ``plant``.

    Raises:
        InputError: the file, a line or a cell is unusable (the message names the file and the line).
    """
    name, text = _text(path)
    rows = _rows(name, text)
    try:
        header_line, header = next(rows)
    except StopIteration:
        raise InputError(name, "the file is empty: it needs a header line ts,meter_id,value and rows") from None
    cols = [h.strip().lower() for h in header]
    meter_col = "meter_id" if "meter_id" in cols else "meter"
    missing = [c for c in ("ts", meter_col, "value") if c not in cols]
    if missing:
        times = _Times(name, plant.enterprise.tz)
        try:
            times.ms(header[0], header_line)
            is_data = True
        except InputError:
            is_data = False
        if is_data:
            raise InputError(name, "no header line: the first line must name the columns, ts,meter_id,value "
                                   f"(it is data: {','.join(header)[:80]!r})", line=header_line)
        raise InputError(name, f"the header lacks column(s) {', '.join(missing)} (needs ts,meter_id,value; "
                               f"has {','.join(cols)[:120]})", line=header_line)
    dup = sorted({c for c in cols if c and cols.count(c) > 1})
    if dup:
        raise InputError(name, f"the header names column(s) twice: {', '.join(dup)}", line=header_line)
    i_ts, i_meter, i_value = cols.index("ts"), cols.index(meter_col), cols.index("value")
    i_quality = cols.index("quality") if "quality" in cols else None
    i_quantity = cols.index("quantity") if "quantity" in cols else None
    counters = {m.id: m.counter for m in plant.meters if m.counter}
    times = _Times(name, plant.enterprise.tz)
    out = ReadingsFile(name, {})
    unknown: dict[str, int] = {}
    seen: dict[tuple[str, int], list[tuple[int, float]]] = {}

    def skip(reason: str) -> None:
        out.skipped[reason] = out.skipped.get(reason, 0) + 1

    for line, fields in rows:
        out.rows += 1
        if len(fields) != len(cols):
            raise InputError(name, f"{len(fields)} fields, the header has {len(cols)} ({','.join(cols)})",
                             line=line)
        ts = times.ms(fields[i_ts], line)
        value = _value(name, fields[i_value], line)
        meter = fields[i_meter].strip()
        if not meter:
            raise InputError(name, "meter_id is empty", line=line)
        if meter not in counters:
            unknown[meter] = unknown.get(meter, 0) + 1
            skip("unknown_meter")
            continue
        if i_quantity is not None and fields[i_quantity].strip() != counters[meter]:
            skip("other_quantity")
            continue
        if i_quality is not None and fields[i_quality].strip().lower() not in ("good", ""):
            skip("not_good")
            continue
        if value is None:
            skip("no_value")
            continue
        seen.setdefault((meter, ts), []).append((line, value))
        out.used += 1
    if out.used == 0:
        known = ", ".join(sorted(counters)[:20]) or "none"
        given = ", ".join(sorted(unknown)[:10])
        why = f"; its meter ids ({given}) are not counter meters of the plant ({known})" if unknown else ""
        raise InputError(name, f"no usable reading in {out.rows} row(s){why}: wrong file, plant or column order?")
    out.unknown_meters = sorted(unknown)
    per_meter: dict[str, tuple[list[int], list[float]]] = {}
    for (meter, ts), entries in seen.items():
        values = [v for _, v in entries]
        if len(entries) > 1:
            if len(set(values)) > 1:
                out.conflicts.append(Conflict(meter, ts, tuple(ln for ln, _ in entries), tuple(values)))
            else:
                out.identical_duplicates += len(entries) - 1
        t_list, v_list = per_meter.setdefault(meter, ([], []))
        t_list.append(ts)
        v_list.append(values[-1])  # the last row in the file
    out.conflicts.sort(key=lambda c: (c.meter, c.ts_ms))
    out.readings = {m: MeterReadings.of(np.asarray(t, dtype=np.int64), np.asarray(v, dtype=np.float64))
                    for m, (t, v) in per_meter.items()}
    return out
