"""Working-day arithmetic for the regulator's repair clock (3 working days, plant local time).

Working days come from a maintained calendar: the ``holidays`` package's China calendar (``holidays.China``), with
the State Council's yearly schedule: public holidays, the days off moved onto weekdays, and the weekend days
worked instead (调休, ``weekend_workdays``). The dates listed in a rule's ``escalate.holidays`` and
``escalate.workdays`` override it (a listed holiday is never a working day, a listed workday always is), for a
plant's own shutdown days or a schedule the installed package does not know yet.

The State Council publishes each year's schedule late in the year before. A year whose schedule the installed
package does not hold (no 调休 days known) counts only the fixed-date and lunar holidays it can compute; the
first time the clock counts a day of such a year it logs a warning once, naming the year and what to do
(update the package, or list the year's days in the rule).

"N working days after t" is the instant at which N × 24 hours of working-day time have passed since t; weekends
and holidays do not count.

Example::

    >>> from datetime import UTC, datetime
    >>> from zoneinfo import ZoneInfo
    >>> from energymon.schema import datetime_to_ms, ms_to_datetime
    >>> friday_3pm = datetime_to_ms(datetime(2025, 3, 7, 15, tzinfo=ZoneInfo("Asia/Shanghai")))
    >>> due = add_working_days(friday_3pm, 3, ZoneInfo("Asia/Shanghai"))
    >>> ms_to_datetime(due).astimezone(ZoneInfo("Asia/Shanghai")).strftime("%a %H:%M")
    'Wed 15:00'
    >>> before_golden_week = datetime_to_ms(datetime(2025, 9, 30, 9, tzinfo=ZoneInfo("Asia/Shanghai")))
    >>> due = add_working_days(before_golden_week, 3, ZoneInfo("Asia/Shanghai"))  # 国庆 1-8 Oct, 11 Oct worked
    >>> ms_to_datetime(due).astimezone(ZoneInfo("Asia/Shanghai")).strftime("%a %d %b %H:%M")
    'Sat 11 Oct 09:00'
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

__all__ = ["ChinaYear", "add_working_days", "china_year", "is_working_day"]

log = logging.getLogger(__name__)

_DAY_MS = 86_400_000
_MAX_DAYS = 3660  # ten years of calendar: a safety bound, never reached by sane inputs
_warned: set[int] = set()


@dataclass(frozen=True, slots=True)
class ChinaYear:
    """One year of the China calendar: days off on weekdays, weekend days worked, and whether the year's
    official schedule (with its 调休 days) is known to the installed ``holidays`` package."""

    year: int
    days_off: frozenset[date]
    weekend_workdays: frozenset[date]
    covered: bool


@lru_cache(maxsize=64)
def china_year(year: int) -> ChinaYear:
    """The China calendar of ``year`` (cached)."""
    from holidays import country_holidays  # imported here: the package builds its tables on first use

    cal = country_holidays("CN", years=year)
    days_off = frozenset(d for d in cal if d.year == year)
    worked = frozenset(d for d in cal.weekend_workdays if d.year == year)
    moved = any("substituted" in str(name).lower() for d, name in cal.items() if d.year == year)
    return ChinaYear(year, days_off, worked, covered=bool(worked) or moved)


def _warn_uncovered(year: int, workdays: Collection[date]) -> None:
    if year in _warned or any(d.year == year for d in workdays):
        return
    _warned.add(year)
    log.warning(
        "工作日历: the installed holidays package has no 调休 schedule for %d (only fixed and lunar holidays); "
        "working days of %d may be wrong: update the package (pip install -U holidays) or list the year's "
        "holidays and make-up workdays in the rule's escalate.holidays / escalate.workdays", year, year)


def is_working_day(day: date, holidays: Collection[date] = (), workdays: Collection[date] = (), *,
                   calendar: bool = True) -> bool:
    """Whether ``day`` is a working day.

    Args:
        day: a local calendar date.
        holidays: days off (overrides: never a working day).
        workdays: days worked (overrides: always a working day, e.g. a 调休 Saturday).
        calendar: use the China calendar (``False``: Monday to Friday, less ``holidays``, plus ``workdays``).
    """
    if day in workdays:
        return True
    if day in holidays:
        return False
    if calendar:
        year = china_year(day.year)
        if not year.covered:
            _warn_uncovered(day.year, workdays)
        if day in year.weekend_workdays:
            return True
        if day in year.days_off:
            return False
    return day.weekday() < 5


def add_working_days(
    start_ms: int,
    days: float,
    tz: ZoneInfo,
    holidays: Collection[date] = (),
    workdays: Collection[date] = (),
    *,
    calendar: bool = True,
) -> int:
    """The event time (ms) at which ``days`` working days have passed since ``start_ms``.

    ``holidays`` and ``workdays`` override the China calendar (see :func:`is_working_day`).

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
        if is_working_day(day, holidays, workdays, calendar=calendar):
            span = end_ms - t_ms
            if span >= remaining:
                return t_ms + remaining
            remaining -= span
        t_ms = end_ms
        day += timedelta(days=1)
    raise ValueError(f"no {days} working days within {_MAX_DAYS} days of {start_ms}")
