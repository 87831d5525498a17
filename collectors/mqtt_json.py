"""Collector for meters that publish JSON over MQTT (``source.type: mqtt_json``).

One :class:`MqttJsonCollector` serves every ``mqtt_json`` meter of one :class:`~energymon.config.MqttBus`.
For each message on a meter's topic it parses the JSON, reads each configured field by dotted path
(``data.flow_total``; a numeric level indexes a list, ``values.0``), multiplies by ``scale``, and takes the
event time from ``timestamp_path`` (``epoch_ms``, ``epoch_s``, or ISO 8601 *with* an offset) or, without a
``timestamp_path``, from the clock at arrival.

What does not fit is counted and set aside, never guessed:

==================  ==========================================================  ==============================
reason              cause                                                       points dropped
==================  ==========================================================  ==============================
``bad_payload``     not UTF-8 JSON (or nested too deeply to parse)              every field of the meter
``bad_timestamp``   timestamp missing, null, of the wrong type, naive, or       every field of the meter
                    outside 2000..2100
``missing_field``   a field's path is absent                                    that field
``not_numeric``     a field's value is a string, bool, object or list           that field
==================  ==========================================================  ==============================

Each rejection is counted in ``energymon_dropped_total{stage="collector", reason=...}``, kept (the last
``keep_rejected``) in :attr:`MqttJsonCollector.rejected`, and logged at WARNING the first time a meter
shows that reason. The other fields and meters keep flowing. A field that is present but ``null`` (or a
non-finite number) gives a point with quality ``bad`` and value None: the meter said it has no value.

Counting: ``received`` counts configured fields per message and meter, ``sent`` the points emitted, so
``received == sent + dropped``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from energymon.clock import WallClock
from energymon.config import Meter, MqttBus, MqttJsonField, MqttJsonSource
from energymon.interfaces import Clock, Message, Transport
from energymon.metrics import PipelineMetrics
from energymon.schema import Point, Quality, datetime_to_ms
from energymon.transport import open_transport

__all__ = ["MqttJsonCollector", "RejectedPayload"]

log = logging.getLogger(__name__)

STAGE = "collector"
#: Rejected payloads are kept up to this many bytes.
_MAX_KEPT_PAYLOAD = 4096
_MISSING = object()
#: Event times a Point accepts (2000-01-01 .. 2100-01-01).
_MIN_TS_MS, _MAX_TS_MS = 946684800000, 4102444800000


@dataclass(frozen=True, slots=True)
class RejectedPayload:
    """A payload (or one field of it) that was set aside.

    Attributes:
        meter: Meter id.
        topic: Topic it arrived on.
        reason: Short reason, the ``reason`` label of the dropped counter.
        detail: What exactly was wrong (which path, which value).
        payload: The payload, truncated to 4 KiB.
        received_ms: Arrival time from the collector's clock.
    """

    meter: str
    topic: str
    reason: str
    detail: str
    payload: bytes
    received_ms: int


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _lookup(doc: Any, path: str) -> Any:
    """Follow a dotted path through objects (and lists, by index); ``_MISSING`` if it is absent."""
    node = doc
    for part in path.split("."):
        if isinstance(node, dict):
            if part not in node:
                return _MISSING
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _event_ms(doc: Any, source: MqttJsonSource, arrival_ms: int) -> int:
    """The message's event time in ms since the epoch."""
    if source.timestamp_path is None:
        return arrival_ms
    raw = _lookup(doc, source.timestamp_path)
    where = f"timestamp {source.timestamp_path!r}"
    if raw is _MISSING:
        raise _Reject("bad_timestamp", f"{where} is missing")
    fmt = source.timestamp_format
    if fmt in ("epoch_ms", "epoch_s"):
        if not _is_number(raw) or not math.isfinite(raw):
            raise _Reject("bad_timestamp", f"{where} must be a number ({fmt}), got {raw!r}")
        ms = round(raw * 1000) if fmt == "epoch_s" else round(raw)
    else:
        if not isinstance(raw, str):
            raise _Reject("bad_timestamp", f"{where} must be an ISO 8601 string, got {raw!r}")
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            raise _Reject("bad_timestamp", f"{where} is not ISO 8601: {raw!r}") from None
        if dt.tzinfo is None or dt.utcoffset() is None:
            raise _Reject("bad_timestamp", f"{where} has no time zone offset: {raw!r}")
        ms = datetime_to_ms(dt)
    if not _MIN_TS_MS <= ms <= _MAX_TS_MS:
        raise _Reject("bad_timestamp", f"{where} {raw!r} ({fmt}) is outside 2000..2100")
    return int(ms)


class MqttJsonCollector:
    """:class:`~energymon.interfaces.PushCollector` for the ``mqtt_json`` meters of one MQTT bus.

    Args:
        bus: The broker the meters publish to.
        meters: Meters to serve; those that are not ``mqtt_json`` meters on ``bus`` are ignored, so the
            plant's whole meter list may be passed.
        transport: Transport to subscribe with; by default one is opened for ``bus.url`` with the bus's
            credentials. The collector connects and closes it.
        clock: Arrival time for meters without ``timestamp_path`` (default: the wall clock).
        metrics: Where to count; a private registry when omitted.
        keep_rejected: How many rejected payloads :attr:`rejected` keeps.

    Example:
        >>> collector = MqttJsonCollector(bus, plant.meters)  # doctest: +SKIP
        >>> await collector.start(gateway_buffer.add)  # doctest: +SKIP
    """

    def __init__(
        self,
        bus: MqttBus,
        meters: list[Meter],
        *,
        transport: Transport | None = None,
        clock: Clock | None = None,
        metrics: PipelineMetrics | None = None,
        keep_rejected: int = 100,
    ) -> None:
        self.name = bus.id
        self.bus = bus
        self.meters = [m for m in meters if isinstance(m.source, MqttJsonSource) and m.source.bus == bus.id]
        self._by_topic: dict[str, list[tuple[Meter, MqttJsonSource]]] = {}
        for meter in self.meters:
            assert isinstance(meter.source, MqttJsonSource)
            self._by_topic.setdefault(meter.source.topic, []).append((meter, meter.source))
        self._transport = transport or open_transport(
            bus.url,
            client_id=f"energymon-{socket.gethostname()}-{os.getpid()}-{bus.id}",
            username=bus.username,
            password_env=bus.password_env,
            tls=bus.tls,
        )
        self._clock: Clock = clock or WallClock()
        self._metrics = (metrics or PipelineMetrics(CollectorRegistry())).stage(STAGE)
        self._rejected: deque[RejectedPayload] = deque(maxlen=keep_rejected)
        self._logged: set[tuple[str, str]] = set()
        self._emit_lock = threading.Lock()  # held while emitting, so stop() can wait out a running emit
        self._log_lock = threading.Lock()
        self._emit: Callable[[list[Point]], None] | None = None
        self._started = False

    @property
    def transport(self) -> Transport:
        """The transport the collector subscribes with."""
        return self._transport

    @property
    def rejected(self) -> list[RejectedPayload]:
        """The most recent rejected payloads, oldest first."""
        return list(self._rejected)

    async def start(self, emit: Callable[[list[Point]], None]) -> None:
        """Subscribe to every meter topic (QoS 1) and connect; ``emit`` then gets the points of each message.

        Raises:
            TransportError: the transport could not be set up (see :meth:`Transport.connect`).
        """
        if self._started:
            raise RuntimeError(f"collector {self.name!r} already started")
        self._started = True
        self._emit = emit
        for topic, served in self._by_topic.items():
            self._transport.subscribe(topic, self._handler(served), qos=1)
        await self._transport.connect()

    async def stop(self) -> None:
        """Stop emitting (waiting for an emit in progress) and close the transport."""
        await asyncio.to_thread(self._clear_emit)
        await self._transport.close()

    def _clear_emit(self) -> None:
        with self._emit_lock:
            self._emit = None

    # ----------------------------------------------------------------- message handling

    def _handler(self, served: list[tuple[Meter, MqttJsonSource]]) -> Callable[[Message], None]:
        def handle(message: Message) -> None:
            self._handle(message, served)

        return handle

    def _handle(self, message: Message, served: list[tuple[Meter, MqttJsonSource]]) -> None:
        """Decode one message for the meters on its topic and emit the points (transport thread)."""
        arrival_ms = self._clock.now_ms()
        doc: Any = _MISSING
        parse_error = ""
        try:
            doc = json.loads(message.payload)
        except (UnicodeDecodeError, ValueError) as exc:  # ValueError: bad JSON, or an integer of > 4300 digits
            parse_error = f"payload is not JSON: {exc}"
        except RecursionError:
            parse_error = "payload is not usable JSON: nested too deeply to parse"
        points: list[Point] = []
        for meter, source in served:
            self._metrics.received(len(source.fields))
            if doc is _MISSING:
                rej = _Reject("bad_payload", parse_error)
                self._reject(meter, message, rej, len(source.fields), arrival_ms)
                continue
            points.extend(self._decode(meter, source, doc, message, arrival_ms))
        if points:
            self._deliver(points)
        message.ack()

    def _decode(
        self, meter: Meter, source: MqttJsonSource, doc: Any, message: Message, arrival_ms: int
    ) -> list[Point]:
        try:
            ts_ms = _event_ms(doc, source, arrival_ms)
        except _Reject as rej:
            self._reject(meter, message, rej, len(source.fields), arrival_ms)
            return []
        points: list[Point] = []
        for fld in source.fields:
            try:
                points.append(self._point(meter, fld, _lookup(doc, fld.path), ts_ms))
            except _Reject as rej:
                self._reject(meter, message, rej, 1, arrival_ms)
        return points

    def _point(self, meter: Meter, fld: MqttJsonField, raw: Any, ts_ms: int) -> Point:
        if raw is _MISSING:
            raise _Reject("missing_field", f"field {fld.path!r} ({fld.quantity}) is missing")
        value: float | None
        if raw is None:
            value = None
        elif _is_number(raw):
            try:
                value = float(raw) * fld.scale
            except OverflowError:
                value = math.inf
            if not math.isfinite(value):
                value = None
        else:
            raise _Reject(
                "not_numeric", f"field {fld.path!r} ({fld.quantity}) is not a number: {str(raw)[:80]!r}"
            )
        try:
            return Point(
                meter=meter.id,
                quantity=fld.quantity,
                value=value,
                unit=fld.unit,
                ts_ms=ts_ms,
                quality=Quality.GOOD if value is not None else Quality.BAD,
            )
        except ValidationError as exc:  # config and the time range are checked before; this is a safety net
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise _Reject("invalid_point", f"field {fld.path!r}: {where}: {first['msg']}") from None

    def _reject(self, meter: Meter, message: Message, rej: _Reject, n_points: int, arrival_ms: int) -> None:
        self._metrics.dropped(rej.reason, n_points)
        self._rejected.append(
            RejectedPayload(
                meter=meter.id,
                topic=message.topic,
                reason=rej.reason,
                detail=rej.detail,
                payload=message.payload[:_MAX_KEPT_PAYLOAD],
                received_ms=arrival_ms,
            )
        )
        key = (meter.id, rej.reason)
        with self._log_lock:
            first = key not in self._logged
            self._logged.add(key)
        if first:
            log.warning(
                "meter %r on %r: payload set aside (%s): %s; further %s payloads of this meter are counted "
                "in energymon_dropped_total and kept in `rejected`, not logged",
                meter.id,
                message.topic,
                rej.reason,
                rej.detail,
                rej.reason,
            )

    def _deliver(self, points: list[Point]) -> None:
        with self._emit_lock:
            emit = self._emit
            if emit is None:
                self._metrics.dropped("stopped", len(points))
                return
            try:
                emit(points)
            except Exception as exc:
                self._metrics.error(exc)
                log.exception("collector %r: emit failed; %d points lost", self.name, len(points))
                return
        self._metrics.sent(len(points))
