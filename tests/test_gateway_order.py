"""Why live-first draining is safe: the processor tolerates readings of one meter arriving out of time order.

After an outage the gateway publishes live batches before the backlog (tests/test_gateway_drain.py), so the
processor sees a meter's newest readings before older ones. Raw readings are keyed by their event time, so they
are stored the same whatever the order; counters are only ever booked forward (a reading older than the last
accepted one books nothing), so the first live reading books the whole outage as one interval and the late
backlog readings book nothing more. Fed through the real :class:`~energymon.processors.processor.Processor`, the
reordered stream (with re-sent batches) books exactly the energy of the in-order stream: none lost, none doubled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from energymon.config import load_plant
from energymon.demo import example_plant_path
from energymon.interfaces import Row
from energymon.processors.processor import Processor
from energymon.schema import Batch, Point

T0 = int(datetime(2025, 3, 3, 8, tzinfo=UTC).timestamp() * 1000)
MINUTE = 60_000
METERS = {"incoming": (1_250_000.0, 18_000.0), "raw_mill": (480_000.0, 4_000.0)}  # start kWh, kW


class OverwritingStore:
    """Like the real stores: a row with the same series, field and time overwrites the previous one."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, int], float] = {}

    def write(self, rows: Sequence[Row]) -> None:
        for key, fields, ts in rows:
            for name, value in fields.items():
                self.rows[(key.lp, name, ts)] = value

    def close(self) -> None:
        pass

    def total(self, measurement: str, meter: str, field: str) -> float:
        return sum(v for (lp, f, _), v in self.rows.items()
                   if f == field and lp.startswith(measurement + ",") and f"meter={meter}" in lp)

    def readings(self) -> set[tuple[str, int, float]]:
        return {(lp, ts, v) for (lp, f, ts), v in self.rows.items() if lp.startswith("reading,") and f == "value"}


def counter(meter: str, minute: int) -> float:
    """Energy counter of a meter whose load changes every hour (so the hourly split matters)."""
    start, kw = METERS[meter]
    kwh = sum(kw * (1 + 0.3 * math.sin(m // 60)) / 60 for m in range(minute))
    return round(start + kwh, 1)


def batches(minutes: int) -> list[Batch]:
    out = []
    for m in range(minutes):
        ts = T0 + m * MINUTE
        points = [Point(meter=meter, quantity="energy_active_import", value=counter(meter, m), unit="kWh", ts_ms=ts)
                  for meter in METERS]
        points += [Point(meter=meter, quantity="power_active", value=METERS[meter][1], unit="kW", ts_ms=ts)
                   for meter in METERS]
        out.append(Batch(enterprise="91530102MA6K7LQ8RH", gateway="gw-line1", seq=m + 1, sent_ms=ts, points=points))
    return out


def gateway_order(all_batches: list[Batch], outage: range, slice_size: int = 5) -> list[Batch]:
    """The order the gateway publishes in: before the outage in order; after it, a live batch (one a poll) ahead
    of every backlog slice, the backlog oldest first; plus a few backlog batches sent twice (lost PUBACKs)."""
    before = all_batches[: outage.start]
    backlog = all_batches[outage.start : outage.stop]
    live = all_batches[outage.stop :]
    out = list(before)
    while backlog or live:
        if live:
            out.append(live.pop(0))
        chunk, backlog = backlog[:slice_size], backlog[slice_size:]
        out += chunk
        if chunk and chunk[0].seq % 7 == 0:
            out.append(chunk[0])  # re-sent: the broker delivered it but the PUBACK was lost
    return out


def run(order: list[Batch]) -> OverwritingStore:
    store = OverwritingStore()
    processor = Processor(load_plant(example_plant_path()), store)
    for batch in order:
        processor.handle_batch(batch)
    return store


def test_reordered_delivery_books_the_same_energy_none_lost_none_doubled() -> None:
    all_batches = batches(240)  # 4 h, one poll a minute
    in_order = run(all_batches)
    shuffled = gateway_order(all_batches, outage=range(60, 180))  # 2 h outage of the uplink
    assert [b.seq for b in shuffled] != sorted(b.seq for b in shuffled)  # really out of order, with repeats
    reordered = run(shuffled)
    for meter in METERS:
        expected = counter(meter, 239) - counter(meter, 0)
        assert in_order.total("energy", meter, "consumed") == pytest.approx(expected, rel=1e-9)
        assert reordered.total("energy", meter, "consumed") == pytest.approx(expected, rel=1e-9)
    # raw readings are keyed by event time: the same rows whatever the order
    assert reordered.readings() == in_order.readings()


def test_reordered_delivery_books_the_outage_as_one_interval() -> None:
    """The price of live-first: the centre spreads the outage's energy over it in proportion to time (the exact
    15-minute values stay in the gateway's edge history, ``energymon history``)."""
    all_batches = batches(240)
    reordered = run(gateway_order(all_batches, outage=range(60, 180)))
    intervals = [v for (lp, f, _), v in reordered.rows.items() if f == "interval_s" and "meter=incoming" in lp]
    assert max(intervals) == (180 - 59) * 60  # from the last reading before the outage to the first live one
