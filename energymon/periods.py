"""Calendar periods in the plant's local time: 15 minutes, hour, day, month, year.

Every stage that cuts time into periods (the gateway's edge history, the processor's live indicators, reports)
uses these functions, so a period means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

__all__ = ["ALL_PERIODS", "next_period_start", "period_start", "period_starts", "split_by_period"]

#: Every calendar period the accounting knows, finest first.
ALL_PERIODS = ("15min", "hour", "day", "month", "year")
_QUARTER_MS = 900_000


def period_start(ts_ms: int, period: str, tz: ZoneInfo) -> int:
    """Start (ms) of the local 15 min / hour / day / month / year containing ``ts_ms``."""
    if period == "15min":  # every zone's offset is a multiple of 15 min: local quarters are UTC quarters
        return ts_ms - ts_ms % _QUARTER_MS
    local = datetime.fromtimestamp(ts_ms / 1000, tz)
    if period == "hour":
        floor = local.replace(minute=0, second=0, microsecond=0)
    elif period == "day":
        floor = local.replace(hour=0, minute=0, second=0, microsecond=0)
    elif period == "month":
        floor = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    elif period == "year":
        floor = local.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        raise ValueError(f"unknown period {period!r}")
    # re-attach the zone so a DST fold picks the right offset
    return int(floor.replace(tzinfo=tz).timestamp() * 1000)


def next_period_start(start_ms: int, period: str, tz: ZoneInfo) -> int:
    """Start of the period after the one starting at ``start_ms``."""
    if period == "15min":
        return start_ms + _QUARTER_MS
    if period == "hour":
        return start_ms + 3_600_000
    local = datetime.fromtimestamp(start_ms / 1000, tz)
    if period == "day":
        nxt = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    elif period == "month":
        nxt = (local.replace(day=28) + timedelta(days=4)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    elif period == "year":
        nxt = local.replace(year=local.year + 1, month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        raise ValueError(f"unknown period {period!r}")
    return int(nxt.replace(tzinfo=tz).timestamp() * 1000)


def period_starts(start_ms: int, end_ms: int, period: str, tz: ZoneInfo) -> list[int]:
    """Starts of the local periods overlapping ``[start_ms, end_ms)``, in order."""
    out: list[int] = []
    cur = period_start(start_ms, period, tz)
    while cur < end_ms:
        out.append(cur)
        cur = next_period_start(cur, period, tz)
    return out


def split_by_period(
    start_ms: int, end_ms: int, amount: float, period: str, tz: ZoneInfo
) -> Iterator[tuple[int, float]]:
    """Spread ``amount`` consumed over [start, end) across local periods, in proportion to time."""
    last = period_start(end_ms - 1, period, tz)
    if end_ms <= start_ms or period_start(start_ms, period, tz) == last:
        yield last, amount
        return
    cur = period_start(start_ms, period, tz)
    span = end_ms - start_ms
    while cur < end_ms:
        nxt = next_period_start(cur, period, tz)
        lo, hi = max(cur, start_ms), min(nxt, end_ms)
        if hi > lo:
            yield cur, amount * (hi - lo) / span
        cur = nxt
