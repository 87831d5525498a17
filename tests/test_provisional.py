"""A live hour or day is provisional (暂估) until the output meter's data cover it end to end: the running hour,
and the first hour after start-up, are shown without a grade; a covered hour keeps its grade."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from energymon.config import load_plant
from energymon.demo import example_plant_path
from energymon.processors.accounting import Accounting
from energymon.refdata import load_reference_data

SH = ZoneInfo("Asia/Shanghai")
MIN = 60_000


def ms(h: int, m: int = 0) -> int:
    return int(datetime(2026, 3, 16, h, m, tzinfo=SH).timestamp() * 1000)


def book_minutes(acc: Accounting, start: int, end: int, clinker_t: float) -> None:
    """One minute intervals of the clinker line over [start, end): kiln energy, coal and the clinker output."""
    for t in range(start, end, MIN):
        acc.book("kiln_drive", t, t + MIN, 60.0, "ok")
        acc.book("coal_feeder", t, t + MIN, 0.52, "ok")
        acc.book("clinker_scale", t, t + MIN, clinker_t, "ok")


def indicator(acc: Accounting) -> dict[tuple[str, int], dict[str, float]]:
    out = {}
    for key, fields, ts in acc.indicator_rows():
        out[(dict(key.tags)["period"], ts)] = fields
    return out


def test_the_first_partial_hour_stays_provisional_and_a_covered_hour_is_graded() -> None:
    acc = Accounting(load_plant(example_plant_path()), load_reference_data())
    # the pipeline starts at 08:50: ten minutes of a small output, as the demo's first hour
    book_minutes(acc, ms(8, 50), ms(9, 0), 0.35)
    rows = indicator(acc)
    first = rows[("hour", ms(8))]
    assert first["provisional"] == 1.0 and first["output"] > 0
    assert acc.provisional("clinker", "hour", ms(8))
    # 09:00-10:01: the 09:00 hour is covered end to end once an interval reaches 10:00
    book_minutes(acc, ms(9, 0), ms(9, 59), 3.47)
    running = indicator(acc)[("hour", ms(9))]
    assert running["provisional"] == 1.0  # not yet at its end
    book_minutes(acc, ms(9, 59), ms(10, 1), 3.47)
    rows = indicator(acc)
    done = rows[("hour", ms(9))]
    assert done["provisional"] == 0.0 and not acc.provisional("clinker", "hour", ms(9))
    assert "status" in done and 100 < done["value"] < 117  # graded as before: between 标杆 and 基准
    assert rows[("hour", ms(10))]["provisional"] == 1.0
    # the day started at 08:50 (the first day after start-up): provisional while the data do not cover it
    assert rows[("day", ms(0))]["provisional"] == 1.0
    # the demo's summary: the latest hour is the running one, the latest final one is 09:00
    latest = acc.latest("clinker", "hour")
    final = acc.latest("clinker", "hour", final=True)
    assert latest is not None and latest[0] == ms(10)
    assert final is not None and final[0] == ms(9) and final[3] is not None
    # the first hour is never final, whatever comes after it
    assert acc.provisional("clinker", "hour", ms(8))
