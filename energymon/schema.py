"""Wire schema v1: what travels from a gateway to the processors.

A gateway publishes one :class:`Batch` per MQTT message on ``energymon/v1/{enterprise}/{gateway}/readings``
at QoS 1. A batch carries a per-gateway sequence number, so a batch re-sent after a crash or a lost PUBACK is
recognised and not counted twice, and a list of :class:`Point`.

Encoding: UTF-8 JSON. A gateway on a weak link may send the same JSON deflated with zlib; receivers tell
the two apart by the first byte (``{`` is JSON). A receiver bounds what it takes in: :func:`decode_wire` and
:func:`decode_batch` refuse a payload larger than ``max_bytes`` as received or once inflated (inflating stops at
the bound, so a small deflated payload cannot make it allocate more) and a batch of more than ``max_points``
points, with :class:`~energymon.errors.PayloadTooLargeError`. Example::

    {"v": 1, "enterprise": "91530100MA6K7XYZ3B", "gateway": "gw-kiln", "seq": 42, "sent_ms": 1763880000123,
     "points": [{"meter": "incoming", "quantity": "energy_active_import", "value": 1234567.8, "unit": "kWh",
                 "ts_ms": 1763880000000, "quality": "good"}]}

``ts_ms`` is the event time: when the value was read from the meter, in milliseconds since the Unix epoch
(UTC by definition). A point that could not be read or decoded has ``quality: "bad"`` and ``value: null``:
an unavailable value is never sent as 0.

Counter intervals computed at the edge (optional, additive): a gateway that cleans its counters itself (rollover,
plausibility, replacements, resets) attaches to a good counter reading the interval that reading closes,
``"interval": {"start_ms": 1763879995000, "amount": 12.5, "flag": "ok"}``: it ends at the point's ``ts_ms``,
``amount`` is in the counter's unit, ``flag`` is ``ok``, ``rollover``, ``rebased`` or ``replaced``. A reading the
edge checked that closes no interval (a rejected spike, a replay) carries an empty one, ``start_ms == ts_ms`` and
``amount`` 0, so it books nothing. A counter reading without ``interval`` (older gateways, the first reading of a
counter the edge has no baseline for) is booked by the processor's own counter tracking.
"""

from __future__ import annotations

import operator
import zlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal, NoReturn, NotRequired

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from typing_extensions import TypedDict

from energymon.errors import PayloadTooLargeError, SchemaError

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "ID_PATTERN",
    "INTERVAL_FLAGS",
    "SCHEMA_VERSION",
    "Batch",
    "Interval",
    "Point",
    "Quality",
    "WireBatch",
    "WireInterval",
    "WirePoint",
    "datetime_to_ms",
    "decode_batch",
    "decode_wire",
    "encode_batch",
    "inflate",
    "ms_to_datetime",
    "wire_to_point",
]

SCHEMA_VERSION: Literal[1] = 1

#: Largest payload the decoders take in by default, as received and inflated (``processor.limits``).
DEFAULT_MAX_PAYLOAD_BYTES = 8 * 1024 * 1024

#: Ids of enterprises, gateways, meters, processes and products: safe in MQTT topics and store tags.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

Id = Annotated[str, Field(pattern=ID_PATTERN)]

#: Why an edge interval is what it is (the values of :class:`energymon.counters.DeltaFlag`).
IntervalFlag = Literal["ok", "rollover", "rebased", "replaced"]
INTERVAL_FLAGS: tuple[str, ...] = ("ok", "rollover", "rebased", "replaced")

EventMs = Annotated[int, Field(ge=946684800000, le=4102444800000)]  # 2000-01-01 .. 2100-01-01


class Quality(StrEnum):
    """Quality flag of a value.

    ``good``: read and decoded normally. ``uncertain``: a value exists but is suspect (e.g. estimated,
    outside the registered range). ``bad``: no value (device did not answer, decode failed); value is null.
    """

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class Interval(BaseModel):
    """The consumption a counter reading closes, computed at the edge: from ``start_ms`` to the point's ``ts_ms``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start_ms: EventMs
    """event time of the previous accepted reading (ms since the epoch); before the point's ``ts_ms``, or equal to
    it with ``amount`` 0 for a reading that closes no interval"""
    amount: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    """consumption in the counter's unit"""
    flag: IntervalFlag = "ok"
    """``ok``, ``rollover``, ``rebased`` (a new level accepted, the jump not booked) or ``replaced`` (spans a
    recorded meter replacement)"""


class Point(BaseModel):
    """One value of one quantity of one meter at one event time.

    ``value`` is null exactly when ``quality`` is ``bad``; the :class:`Batch` that carries points checks this
    for all of them at once (one pass per batch keeps decoding fast). ``interval`` (edge-computed counter
    consumption) is only allowed on a good point, and is omitted from the wire when absent.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    meter: Id
    quantity: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    value: Annotated[float, Field(allow_inf_nan=False)] | None
    unit: Annotated[str, Field(min_length=1, max_length=16)]
    ts_ms: EventMs
    quality: Quality = Quality.GOOD
    interval: Annotated[Interval | None, Field(exclude_if=operator.not_)] = None


def _quality_mismatch(point: Point) -> str:
    if point.value is None:
        return "value is null but quality is not 'bad'"
    return "quality 'bad' must carry value null"


def _interval_problem(quality: str, start_ms: int, amount: float, ts_ms: int) -> str | None:
    if quality != "good":
        return f"an interval needs quality 'good', not {quality!r}"
    if start_ms > ts_ms or (start_ms == ts_ms and amount != 0):
        return f"interval.start_ms {start_ms} is after ts_ms {ts_ms}, or equal to it with an amount"
    return None


class Batch(BaseModel):
    """A gateway's batch of points, the unit of delivery and of de-duplication."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = SCHEMA_VERSION
    enterprise: Id
    gateway: Id
    seq: Annotated[int, Field(ge=0)]
    sent_ms: Annotated[int, Field(ge=0)]
    points: list[Point]

    @model_validator(mode="after")
    def _values_match_quality(self) -> Batch:
        bad = Quality.BAD
        for i, p in enumerate(self.points):
            if (p.value is None) != (p.quality is bad):
                raise ValueError(f"points.{i}: {_quality_mismatch(p)}")
            iv = p.interval
            if iv is not None and (problem := _interval_problem(p.quality, iv.start_ms, iv.amount, p.ts_ms)):
                raise ValueError(f"points.{i}: {problem}")
        return self


def encode_batch(batch: Batch, *, compress: bool = False) -> bytes:
    """Serialise a batch to its wire form (JSON, optionally zlib-deflated)."""
    raw = batch.model_dump_json().encode()
    return zlib.compress(raw, 6) if compress else raw


def inflate(payload: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
    """The JSON of a wire payload: as it is when it starts with ``{``, else zlib-inflated, at most ``max_bytes``.

    Inflating is streamed and stops one byte past the bound, so at most ``max_bytes + 1`` bytes are ever
    allocated for the output, whatever the ratio of the deflated data (a 2 MB zip bomb would otherwise inflate
    to gigabytes).

    Raises:
        PayloadTooLargeError: the payload, as received or inflated, is larger than ``max_bytes``.
        SchemaError: the payload is neither JSON nor a complete zlib stream.
    """
    if len(payload) > max_bytes:
        raise PayloadTooLargeError(f"payload of {len(payload):,} bytes is larger than the limit of {max_bytes:,} bytes")
    if payload[:1] == b"{":
        return payload
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(payload, max_bytes + 1)
    except zlib.error as exc:
        raise SchemaError(f"payload is neither JSON nor zlib-deflated JSON ({exc})") from None
    if len(raw) > max_bytes:
        raise PayloadTooLargeError(
            f"deflated payload of {len(payload):,} bytes inflates beyond the limit of {max_bytes:,} bytes "
            "(inflating stopped there)"
        )
    if not inflater.eof:
        raise SchemaError("payload is neither JSON nor zlib-deflated JSON (truncated zlib stream)")
    if inflater.unused_data:
        raise SchemaError(f"zlib-deflated payload has {len(inflater.unused_data):,} bytes after its end")
    return raw


def _check_points(n: int, max_points: int | None) -> None:
    if max_points is not None and n > max_points:
        raise PayloadTooLargeError(f"batch of {n:,} points is larger than the limit of {max_points:,} points")


def decode_batch(
    payload: bytes, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, max_points: int | None = None
) -> Batch:
    """Parse and validate a wire payload (at most ``max_bytes`` as received and inflated, ``max_points`` points).

    Raises:
        PayloadTooLargeError: the payload is beyond ``max_bytes`` or ``max_points``.
        SchemaError: the payload is not a valid v1 batch; the message says which field and why.
    """
    raw = inflate(payload, max_bytes)
    try:
        batch = Batch.model_validate_json(raw)
    except ValidationError as exc:
        _raise_schema_error(exc)
    _check_points(len(batch.points), max_points)
    return batch


class WireInterval(TypedDict):
    """A decoded edge interval as a plain dict (validated like :class:`Interval`; ``flag`` absent means ``ok``)."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    start_ms: EventMs
    amount: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    flag: NotRequired[IntervalFlag]


class WirePoint(TypedDict):
    """A decoded point as a plain dict: the processor's hot path (validated like :class:`Point`)."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    meter: Annotated[str, Field(pattern=ID_PATTERN)]
    quantity: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    value: Annotated[float, Field(allow_inf_nan=False)] | None
    unit: Annotated[str, Field(min_length=1, max_length=16)]
    ts_ms: EventMs
    quality: NotRequired[Literal["good", "uncertain", "bad"]]
    interval: NotRequired[WireInterval]


class WireBatch(TypedDict):
    """A decoded batch as a plain dict (same rules as :class:`Batch`)."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    v: Literal[1]
    enterprise: Annotated[str, Field(pattern=ID_PATTERN)]
    gateway: Annotated[str, Field(pattern=ID_PATTERN)]
    seq: Annotated[int, Field(ge=0)]
    sent_ms: Annotated[int, Field(ge=0)]
    points: list[WirePoint]


_WIRE = TypeAdapter(WireBatch)


def decode_wire(
    payload: bytes, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, max_points: int | None = None
) -> WireBatch:
    """Parse and validate a wire payload into plain dicts: the same checks as :func:`decode_batch`, about twice
    as fast, because no model instance is built per point. ``quality`` is a plain string, absent when ``good``.

    Raises:
        PayloadTooLargeError: the payload is beyond ``max_bytes`` (as received or inflated) or ``max_points``.
        SchemaError: the payload is not a valid v1 batch; the message says which field and why.
    """
    raw = inflate(payload, max_bytes)
    try:
        batch = _WIRE.validate_json(raw)
    except ValidationError as exc:
        _raise_schema_error(exc)
    _check_points(len(batch["points"]), max_points)
    for i, p in enumerate(batch["points"]):
        if (p["value"] is None) != (p.get("quality") == "bad"):
            point = Point.model_construct(value=p["value"], quality=Quality(p.get("quality", "good")))
            raise SchemaError(f"invalid batch: points.{i}: {_quality_mismatch(point)}")
        if "interval" in p:
            iv = p["interval"]
            if problem := _interval_problem(p.get("quality", "good"), iv["start_ms"], iv["amount"], p["ts_ms"]):
                raise SchemaError(f"invalid batch: points.{i}: {problem}")
    return batch


_POINT_FIELDS = frozenset(Point.model_fields)
_new_object = object.__new__
_set_attribute = object.__setattr__


def wire_to_point(p: WirePoint) -> Point:
    """A wire dict as a :class:`Point` (already validated, so not validated again).

    The same object ``Point.model_construct`` builds with every field given, built directly: this runs for
    every point the processor's alert rules read, and ``model_construct`` costs three times as much.
    """
    quality = p.get("quality")
    interval = p.get("interval")
    point = _new_object(Point)
    _set_attribute(point, "__dict__", {
        "meter": p["meter"],
        "quantity": p["quantity"],
        "value": p["value"],
        "unit": p["unit"],
        "ts_ms": p["ts_ms"],
        "quality": Quality.GOOD if quality is None else Quality(quality),
        "interval": None if interval is None else Interval.model_construct(**interval),
    })
    _set_attribute(point, "__pydantic_fields_set__", set(_POINT_FIELDS))
    _set_attribute(point, "__pydantic_extra__", None)
    _set_attribute(point, "__pydantic_private__", None)
    return point


def _raise_schema_error(exc: ValidationError) -> NoReturn:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    raise SchemaError(f"invalid batch: {loc + ': ' if loc else ''}{msg}{more}") from None


def ms_to_datetime(ts_ms: int) -> datetime:
    """Event time in ms since the epoch → aware UTC datetime."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC)


def datetime_to_ms(dt: datetime) -> int:
    """Aware datetime → ms since the epoch. Naive datetimes are refused."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("naive datetime: event times must be timezone-aware")
    return round(dt.timestamp() * 1000)
