"""The repair clock's working days: the China calendar with its 调休 days, the plant file's lists as
overrides, and a warning for a year whose schedule the installed calendar does not hold."""

from __future__ import annotations

import doctest
import logging
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from energymon.alerts import workdays
from energymon.alerts.workdays import add_working_days, china_year, is_working_day
from energymon.schema import datetime_to_ms

TZ = ZoneInfo("Asia/Shanghai")


def due(start: datetime, days: float, holidays: list[date] | None = None,
        work: list[date] | None = None) -> datetime:
    ms = add_working_days(datetime_to_ms(start), days, TZ, holidays or (), work or ())
    return datetime.fromtimestamp(ms / 1000, TZ)


def test_golden_week_is_not_working_time_without_any_list() -> None:
    # Tuesday 30 Sep 2025 09:00: 15 h that day, 国庆/中秋 1-8 Oct off, Thu 9 and Fri 10 Oct, then the make-up
    # Saturday 11 Oct (调休) holds the last 9 h
    assert due(datetime(2025, 9, 30, 9, tzinfo=TZ), 3) == datetime(2025, 10, 11, 9, tzinfo=TZ)


def test_make_up_saturdays_and_spring_festival_2026() -> None:
    year = china_year(2026)
    assert year.covered
    assert {date(2026, 2, 14), date(2026, 2, 28)} <= year.weekend_workdays
    assert is_working_day(date(2026, 2, 14))  # Saturday, worked (调休)
    assert not is_working_day(date(2026, 2, 17))  # 春节, a Tuesday
    assert not is_working_day(date(2026, 1, 1)) and is_working_day(date(2026, 1, 4))  # Sunday 4 Jan is worked
    # Friday 13 Feb 2026 10:00 + 1 working day: 14 h Friday, 10 h on the worked Saturday 14 Feb
    assert due(datetime(2026, 2, 13, 10, tzinfo=TZ), 1) == datetime(2026, 2, 14, 10, tzinfo=TZ)


def test_the_plant_files_lists_override_the_calendar() -> None:
    shutdown = date(2025, 3, 10)  # a Monday the plant is shut (a plant holiday)
    assert due(datetime(2025, 3, 7, 15, tzinfo=TZ), 1, holidays=[shutdown]) == datetime(2025, 3, 11, 15, tzinfo=TZ)
    worked = date(2025, 10, 2)  # a 国庆 day the plant's office works
    assert is_working_day(worked, (), [worked]) and not is_working_day(worked)
    assert not is_working_day(date(2025, 10, 11), [date(2025, 10, 11)])  # a listed holiday wins
    assert is_working_day(date(2025, 10, 1), calendar=False)  # plain Monday-Friday when asked


def test_a_year_the_calendar_does_not_cover_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    year = 2031  # the State Council publishes each schedule late in the year before
    assert not china_year(year).covered
    workdays._warned.discard(year)
    with caplog.at_level(logging.WARNING, logger="energymon.alerts.workdays"):
        add_working_days(datetime_to_ms(datetime(year, 3, 3, 9, tzinfo=TZ)), 10, TZ)
        add_working_days(datetime_to_ms(datetime(year, 4, 3, 9, tzinfo=TZ)), 10, TZ)
    warnings = [r for r in caplog.records if "2031" in r.getMessage()]
    assert len(warnings) == 1 and "escalate.workdays" in warnings[0].getMessage()
    assert not is_working_day(date(year, 10, 1))  # fixed holidays are still known
    workdays._warned.discard(year)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="energymon.alerts.workdays"):  # the plant listed the year itself
        is_working_day(date(year, 5, 6), (), [date(year, 4, 27)])
    assert caplog.records == []


def test_module_examples() -> None:
    assert doctest.testmod(workdays).failed == 0
