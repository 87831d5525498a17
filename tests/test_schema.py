"""Wire schema v1: round trips, compression, and clear errors for malformed payloads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from energymon.errors import SchemaError
from energymon.schema import (
    Batch,
    Interval,
    Point,
    Quality,
    datetime_to_ms,
    decode_batch,
    decode_wire,
    encode_batch,
    ms_to_datetime,
    wire_to_point,
)
from energymon.topics import alert_topic, parse_readings_topic, readings_filter, readings_topic, status_topic

TS = 1_763_880_000_000


def batch(**kw: object) -> Batch:
    points = [
        Point(meter="m1", quantity="energy_active_import", value=1234.5, unit="kWh", ts_ms=TS),
        Point(meter="m1", quantity="power_active", value=None, unit="kW", ts_ms=TS, quality=Quality.BAD),
    ]
    return Batch(enterprise="91530102MA6K7LQ8RH", gateway="gw1", seq=7, sent_ms=TS, points=points, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(compress: bool) -> None:
    b = batch()
    raw = encode_batch(b, compress=compress)
    assert (raw[:1] == b"{") is not compress
    assert decode_batch(raw) == b


def test_bad_quality_carries_null_never_zero() -> None:
    def one(point: Point) -> Batch:
        return Batch(enterprise="E", gateway="g", seq=1, sent_ms=TS, points=[point])

    with pytest.raises(ValueError, match=r"points\.0: quality 'bad' must carry value null"):
        one(Point(meter="m", quantity="p", value=0.0, unit="kW", ts_ms=TS, quality=Quality.BAD))
    with pytest.raises(ValueError, match=r"points\.0: value is null"):
        one(Point(meter="m", quantity="p", value=None, unit="kW", ts_ms=TS))
    with pytest.raises(ValueError, match="finite"):
        Point(meter="m", quantity="p", value=float("nan"), unit="kW", ts_ms=TS)
    doc = json.loads(encode_batch(batch()))
    doc["points"][0]["value"] = None
    with pytest.raises(SchemaError, match=r"points\.0: value is null but quality is not 'bad'"):
        decode_batch(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "neither JSON nor zlib"),
        (b'{"v": 2}', "v"),
        (b"{", "invalid batch"),
    ],
)
def test_malformed_payload_names_the_fault(payload: bytes, reason: str) -> None:
    with pytest.raises(SchemaError, match=reason):
        decode_batch(payload)


def test_field_error_names_the_point() -> None:
    doc = json.loads(encode_batch(batch()))
    doc["points"][1]["ts_ms"] = "yesterday"
    with pytest.raises(SchemaError, match=r"points\.1\.ts_ms"):
        decode_batch(json.dumps(doc).encode())
    doc = json.loads(encode_batch(batch()))
    doc["points"][0]["extra"] = 1
    with pytest.raises(SchemaError, match=r"points\.0\.extra"):
        decode_batch(json.dumps(doc).encode())


def test_event_time_conversions_refuse_naive() -> None:
    dt = datetime(2026, 11, 23, 8, 0, tzinfo=timezone(timedelta(hours=8)))
    assert datetime_to_ms(dt) == datetime_to_ms(dt.astimezone(UTC))
    assert ms_to_datetime(datetime_to_ms(dt)) == dt
    with pytest.raises(ValueError, match="naive"):
        datetime_to_ms(datetime(2026, 1, 1))  # noqa: DTZ001 - the point of the test


def test_topic_scheme() -> None:
    assert readings_topic("E", "g") == "energymon/v1/E/g/readings"
    assert status_topic("E", "g") == "energymon/v1/E/g/status"
    assert alert_topic("E", "r", "m") == "energymon/v1/E/alerts/r/m"
    assert readings_filter() == "energymon/v1/+/+/readings"
    assert readings_filter("E", "procs") == "$share/procs/energymon/v1/E/+/readings"
    assert parse_readings_topic("energymon/v1/E/g/readings") == ("E", "g")
    assert parse_readings_topic("energymon/v1/E/alerts/r/m") is None


def counter_point(interval: Interval | None, **kw: object) -> Point:
    return Point(meter="m1", quantity="energy_active_import", value=1234.5, unit="kWh", ts_ms=TS,
                 interval=interval, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("compress", [False, True])
def test_edge_interval_round_trips_on_both_decoders(compress: bool) -> None:
    b = Batch(enterprise="E", gateway="g", seq=1, sent_ms=TS, points=[
        counter_point(Interval(start_ms=TS - 5000, amount=2.5, flag="rollover")),
        counter_point(Interval(start_ms=TS, amount=0.0)),  # checked at the edge, closes no interval
        counter_point(None),
    ])
    raw = encode_batch(b, compress=compress)
    assert decode_batch(raw) == b
    wire = decode_wire(raw)
    assert wire["points"][0]["interval"] == {"start_ms": TS - 5000, "amount": 2.5, "flag": "rollover"}
    assert wire["points"][1]["interval"] == {"start_ms": TS, "amount": 0.0, "flag": "ok"}
    assert "interval" not in wire["points"][2]
    assert wire_to_point(wire["points"][0]) == b.points[0]


def test_a_batch_without_intervals_keeps_its_old_bytes() -> None:
    raw = encode_batch(batch())
    assert b"interval" not in raw
    assert json.loads(raw)["points"][0] == {"meter": "m1", "quantity": "energy_active_import", "value": 1234.5,
                                            "unit": "kWh", "ts_ms": TS, "quality": "good"}


@pytest.mark.parametrize(
    ("interval", "quality", "reason"),
    [
        ({"start_ms": TS + 1, "amount": 1.0, "flag": "ok"}, "good", "is after ts_ms"),
        ({"start_ms": TS, "amount": 1.0, "flag": "ok"}, "good", "equal to it with an amount"),
        ({"start_ms": TS - 1, "amount": -1.0, "flag": "ok"}, "good", "points.0.interval.amount"),
        ({"start_ms": TS - 1, "amount": float("nan"), "flag": "ok"}, "good", "points.0.interval.amount"),
        ({"start_ms": TS - 1, "amount": 1.0, "flag": "guessed"}, "good", "points.0.interval.flag"),
        ({"start_ms": TS - 1, "amount": 1.0, "extra": 1}, "good", "points.0.interval.extra"),
        ({"start_ms": TS - 1, "amount": 1.0}, "uncertain", "needs quality 'good'"),
    ],
)
def test_invalid_interval_is_refused_by_both_decoders(interval: dict[str, object], quality: str, reason: str) -> None:
    point = {"meter": "m1", "quantity": "energy_active_import", "value": 1.0, "unit": "kWh", "ts_ms": TS,
             "quality": quality, "interval": interval}
    raw = json.dumps({"v": 1, "enterprise": "E", "gateway": "g", "seq": 1, "sent_ms": TS, "points": [point]},
                     allow_nan=True).encode()
    for decode in (decode_batch, decode_wire):
        with pytest.raises(SchemaError, match=reason):
            decode(raw)
