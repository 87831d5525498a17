"""Accounting: periods in local time, standard coal, product boundaries, indicators and grades; the processor's
intake (de-duplication, malformed payloads, acknowledgement only after a durable write)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from energymon.config import load_plant
from energymon.demo import example_plant_path
from energymon.errors import StoreError
from energymon.interfaces import Message, Row
from energymon.processors.accounting import Accounting, period_start, split_by_period
from energymon.processors.grading import Status
from energymon.processors.processor import Processor
from energymon.refdata import load_reference_data
from energymon.schema import Batch, Point, Quality, datetime_to_ms, encode_batch

SH = ZoneInfo("Asia/Shanghai")


def ms(*args: int) -> int:
    return datetime_to_ms(datetime(*args, tzinfo=SH))  # type: ignore[misc]


def test_period_start_in_local_time() -> None:
    assert period_start(ms(2026, 11, 23, 0, 30), "day", SH) == ms(2026, 11, 23)
    assert period_start(ms(2026, 11, 23, 0, 30), "hour", SH) == ms(2026, 11, 23, 0)
    assert period_start(ms(2026, 11, 23, 0, 30), "month", SH) == ms(2026, 11, 1)


def test_consumption_spread_over_periods_in_proportion_to_time() -> None:
    # 23:45 → 00:15 local: half before midnight, half after
    parts = list(split_by_period(ms(2026, 11, 22, 23, 45), ms(2026, 11, 23, 0, 15), 10.0, "day", SH))
    assert parts == [(ms(2026, 11, 22), 5.0), (ms(2026, 11, 23), 5.0)]
    parts = list(split_by_period(ms(2026, 11, 23, 9, 50), ms(2026, 11, 23, 11, 10), 80.0, "hour", SH))
    assert [round(a, 9) for _, a in parts] == [10.0, 60.0, 10.0]
    assert list(split_by_period(ms(2026, 11, 23, 9, 0), ms(2026, 11, 23, 9, 15), 3.0, "hour", SH)) == [
        (ms(2026, 11, 23, 9), 3.0)
    ]


@pytest.fixture
def accounting() -> Accounting:
    return Accounting(load_plant(example_plant_path()), load_reference_data())


def test_standard_coal_and_clinker_indicator(accounting: Accounting) -> None:
    t0, t1 = ms(2026, 11, 23, 9, 0), ms(2026, 11, 23, 9, 15)
    rows = accounting.book("kiln_drive", t0, t1, 1000.0, "ok")  # kWh
    (key, fields, ts) = rows[0]
    assert key.measurement == "energy" and ts == t1
    assert fields["kgce"] == pytest.approx(122.9)  # 当量值 0.1229 kgce/kWh
    accounting.book("coal_feeder", t0, t1, 1.0, "ok")  # t of raw coal: 714.3 kgce
    accounting.book("gas_main", t0, t1, 100.0, "ok")  # Nm3 of natural gas: 121.43 kgce
    accounting.book("incoming", t0, t1, 5000.0, "ok")  # level-1 meter: outside the clinker boundary
    accounting.book("cement_mill", t0, t1, 3000.0, "ok")  # cement grinding: outside the clinker boundary
    accounting.book("clinker_scale", t0, t1, 9.0, "ok")
    rows = {(k.tags, ts): f for k, f, ts in accounting.indicator_rows()}
    hour = next(f for (tags, ts), f in rows.items() if ("period", "hour") in tags and ts == ms(2026, 11, 23, 9))
    assert hour["energy_kgce"] == pytest.approx(122.9 + 714.3 + 121.43)
    assert hour["output"] == pytest.approx(9.0)
    assert hour["value"] == pytest.approx((122.9 + 714.3 + 121.43) / 9.0)  # 106.5 kgce/t
    assert hour["status"] == Status.BETWEEN
    assert hour["benchmark"] == 100.0 and hour["baseline"] == 117.0 and hour["quota_grade"] == 2
    assert accounting.indicator_rows() == []  # nothing changed since


class ListStore:
    """In-memory store for unit tests of the processor's logic."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.fail = False

    def write(self, rows: Sequence[Row]) -> None:
        if self.fail:
            raise StoreError("store down")
        self.rows.extend(rows)

    def close(self) -> None:
        pass


def make_batch(seq: int, values: list[float], t0: int) -> bytes:
    pts = [
        Point(meter="kiln_drive", quantity="energy_active_import", value=v, unit="kWh", ts_ms=t0 + i * 60_000)
        for i, v in enumerate(values)
    ]
    pts.append(Point(meter="raw_mill", quantity="power_active", value=None, unit="kW", ts_ms=t0, quality=Quality.BAD))
    return encode_batch(Batch(enterprise="91530102MA6K7LQ8RH", gateway="gw", seq=seq, sent_ms=t0, points=pts))


def test_processor_dedupes_sets_aside_and_acks_after_write() -> None:
    store = ListStore()
    seen: list[int] = []
    proc = Processor(load_plant(example_plant_path()), store, observers=[lambda pts: seen.append(len(pts))])
    acks: list[str] = []
    t0 = ms(2026, 11, 23, 9, 0)
    proc.handle(Message("t", make_batch(1, [100.0, 110.0, 125.0], t0), lambda: acks.append("1")))
    proc.handle(Message("t", make_batch(1, [100.0, 110.0, 125.0], t0), lambda: acks.append("1-again")))
    proc.handle(Message("t", b"garbage", lambda: acks.append("bad")))
    assert acks == ["1-again", "bad"]  # duplicate and malformed acked at once; the real one not yet written
    assert proc.duplicates == 1 and "neither JSON" in proc.rejected[0].reason
    assert proc.flush() > 0
    assert acks == ["1-again", "bad", "1"] and seen == [4]
    energy = [f for k, f, _ in store.rows if k.measurement == "energy"]
    assert sum(f["consumed"] for f in energy) == pytest.approx(25.0)
    unavailable = [k for k, f, _ in store.rows if k.measurement == "reading_unavailable"]
    assert len(unavailable) == 1 and ("meter", "raw_mill") in unavailable[0].tags
    assert not any(("meter", "raw_mill") in k.tags for k, _, _ in store.rows if k.measurement == "reading")

    # store down: nothing is acknowledged, rows are kept and written on the next flush
    store.fail = True
    proc.handle(Message("t", make_batch(2, [130.0], t0 + 4 * 60_000), lambda: acks.append("2")))
    with pytest.raises(StoreError):
        proc.flush()
    assert acks[-1] == "1"
    store.fail = False
    proc.flush()
    assert acks[-1] == "2"
    assert sum(f["consumed"] for k, f, _ in store.rows if k.measurement == "energy") == pytest.approx(30.0)
