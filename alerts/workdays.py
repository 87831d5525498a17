"""Working-day arithmetic for the regulator's repair clock (3 working days, plant local time).

A working day is Monday to Friday in the plant's time zone, less the listed public holidays, plus the listed
weekend days that are worked (调休). "N working days after t" is the instant at which N × 24 hours of working-day
time have passed since t; weekends and holidays do not count.

Example::

    >>> from datetime import UTC, datetime
    >>> from zoneinfo import ZoneInfo
    >>> from energymon.schema import datetime_to_ms, ms_to_datetime
    >>> friday_3pm = datetime_to_ms(datetime(2025, 3, 7, 15, tzinfo=ZoneInfo("Asia/Shanghai")))
    >>> due = add_working_days(friday_3pm, 3, ZoneInfo("Asia/Shanghai"))
    >>> ms_to_datetime(due).astimezone(ZoneInfo("Asia/Shanghai")).strftime("%a %H:%M")
    'Wed 15:00'
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = ["add_working_days", "is_working_day"]

_DAY_MS = 86_400_000
_MAX_DAYS = 3660  # ten years of calendar: a safety bound, never reached by sane inputs


def is_working_day(day: date, holidays: Collection[date] = (), workdays: Collection[date] = ()) -> bool:
    """Monday to Friday and not a holiday, or a listed worked weekend day."""
    if day in workdays:
        return True
    return day.weekday() < 5 and day not in holidays


def add_working_days(
    start_ms: int,
    days: float,
    tz: ZoneInfo,
    holidays: Collection[date] = (),
    workdays: Collection[date] = (),
) -> int:
    """The event time (ms) at which ``days`` working days have passed since ``start_ms``.

    Raises:
        ValueError: ``days`` is negative, or no working day was found within ten years.
    """
    if days < 0:
        raise ValueError("days must not be negative")
    remaining = round(days * _DAY_MS)
    t_ms = start_ms
    day = datetime.fromtimestamp(start_ms / 1000, tz).date()
    for _ in range(_MAX_DAYS):
        next_midnight = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
        end_ms = round(next_midnight.timestamp() * 1000)
        if is_working_day(day, holidays, workdays):
            span = end_ms - t_ms
            if span >= remaining:
                return t_ms + remaining
            remaining -= span
        t_ms = end_ms
        day += timedelta(days=1)
    raise ValueError(f"no {days} working days within {_MAX_DAYS} days of {start_ms}")
