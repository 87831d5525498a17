"""A simulated meter that publishes JSON, shaped by its :class:`~energymon.config.MqttJsonSource`.

Every ``interval_secs`` of event time (a real sleep of ``interval_secs / clock.speed()``) the meter publishes
one JSON object on its topic: each configured field at its dotted path (``data.flow`` → ``{"data": {"flow":
...}}``) holding ``value / scale``, and the event time at ``timestamp_path`` in the configured format
(``epoch_ms`` integer, ``epoch_s`` number, or ISO 8601 with the plant's UTC offset). The transport is the
caller's ``publish(topic, payload)`` coroutine function, in-process or MQTT.

Faults come from the model: while a protocol fault (no answer, exception, dropped connection) is active the
meter is silent; stuck values and spikes show in the payload.

Example::

    >>> import asyncio, json
    >>> from datetime import UTC, datetime
    >>> from energymon.clock import ManualClock
    >>> from importlib import resources
    >>> from energymon.config import load_plant
    >>> from energymon.simulators.plant import PlantModel
    >>> plant = load_plant(str(resources.files("energymon.examples") / "cement_plant.yaml"))
    >>> model = PlantModel.from_config(plant, ManualClock(datetime(2025, 1, 6, tzinfo=UTC)))
    >>> sent = []
    >>> async def publish(topic: str, payload: bytes) -> None:
    ...     sent.append((topic, json.loads(payload)))
    >>> gas = MqttJsonMeterSimulator(model, plant.meter("gas_main"), publish, interval_secs=10)
    >>> asyncio.run(gas.publish_once())
    True
    >>> topic, body = sent[0]
    >>> topic, sorted(body), body["ts"]
    ('plant/kiln/gas_flowmeter', ['flow_nm3_h', 'totalizer_nm3', 'ts'], 1736121600000)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from energymon.config import Meter, MqttJsonSource

if TYPE_CHECKING:
    from energymon.simulators.plant import PlantModel

__all__ = ["MqttJsonMeterSimulator", "PublishFn", "build_payload"]

log = logging.getLogger(__name__)

#: ``publish(topic, payload)``: sends one message, returns when it is sent (or raises).
PublishFn = Callable[[str, bytes], Awaitable[None]]


def _check_paths(paths: list[str], meter_id: str) -> None:
    seen: set[str] = set()
    for path in paths:
        parts = path.split(".")
        if any(not p for p in parts):
            raise ValueError(f"meter {meter_id}: JSON path {path!r} has an empty segment")
        if path in seen:
            raise ValueError(f"meter {meter_id}: JSON path {path!r} is used twice")
        seen.add(path)
    for path in paths:
        for other in paths:
            if other != path and other.startswith(path + "."):
                raise ValueError(f"meter {meter_id}: JSON path {path!r} is a value and a parent of {other!r}")


def _put(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = obj
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def build_payload(
    source: MqttJsonSource, values: dict[str, float], ts_ms: int, tz: ZoneInfo
) -> dict[str, Any]:
    """The JSON object a meter with ``source`` publishes for ``values`` (engineering values by quantity).

    >>> from energymon.config import MqttJsonField
    >>> src = MqttJsonSource(type="mqtt_json", bus="b", topic="t", timestamp_path="meta.time",
    ...     timestamp_format="iso8601", fields=[MqttJsonField(path="data.flow", quantity="flow", unit="m3/h",
    ...     scale=0.1)])
    >>> build_payload(src, {"flow": 12.5}, 1736121600000, ZoneInfo("Asia/Shanghai"))
    {'data': {'flow': 125.0}, 'meta': {'time': '2025-01-06T08:00:00.000+08:00'}}
    """
    body: dict[str, Any] = {}
    for f in source.fields:
        _put(body, f.path, values[f.quantity] / f.scale)
    if source.timestamp_path is not None:
        stamp: int | float | str
        if source.timestamp_format == "epoch_ms":
            stamp = ts_ms
        elif source.timestamp_format == "epoch_s":
            stamp = ts_ms / 1000
        else:
            stamp = datetime.fromtimestamp(ts_ms / 1000, tz).isoformat(timespec="milliseconds")
        _put(body, source.timestamp_path, stamp)
    return body


class MqttJsonMeterSimulator:
    """Publishes one meter's JSON every ``interval_secs`` of event time.

    Args:
        model: the plant model the values come from.
        meter: a meter whose source is ``mqtt_json``.
        publish: ``publish(topic, payload)`` coroutine function (in-process bus or MQTT client).
        interval_secs: publishing interval in event-time seconds.

    Raises:
        ValueError: the meter is not an MQTT JSON meter, or its paths collide.
    """

    def __init__(
        self, model: PlantModel, meter: Meter, publish: PublishFn, interval_secs: float = 10.0
    ) -> None:
        if not isinstance(meter.source, MqttJsonSource):
            raise ValueError(f"meter {meter.id} is not an mqtt_json meter")
        if not (interval_secs > 0 and math.isfinite(interval_secs)):
            raise ValueError("interval_secs must be positive")
        paths = [f.path for f in meter.source.fields]
        if meter.source.timestamp_path is not None:
            paths.append(meter.source.timestamp_path)
        _check_paths(paths, meter.id)
        self.model = model
        self.meter = meter
        self.source: MqttJsonSource = meter.source
        self.interval_secs = interval_secs
        self._publish = publish
        self._tz = ZoneInfo(model.plant.enterprise.timezone)
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        #: messages published so far
        self.published = 0

    @property
    def topic(self) -> str:
        """The topic the meter publishes on."""
        return self.source.topic

    def payload(self, ts_ms: int | None = None) -> bytes | None:
        """The payload at ``ts_ms`` (default now), or None while the meter is silent (a protocol fault)."""
        ts = self.model.clock.now_ms() if ts_ms is None else ts_ms
        if self.model.protocol_fault(self.meter.id, ts) is not None:
            return None
        values = {f.quantity: self.model.value(self.meter.id, f.quantity, ts) for f in self.source.fields}
        return json.dumps(build_payload(self.source, values, ts, self._tz), separators=(",", ":")).encode()

    async def publish_once(self, ts_ms: int | None = None) -> bool:
        """Publish at ``ts_ms`` (default now); False if the meter is silent or the publish failed."""
        body = self.payload(ts_ms)
        if body is None:
            return False
        try:
            await self._publish(self.topic, body)
        except Exception as exc:  # a field device keeps going whatever the broker does
            if not self._failing:
                log.warning("meter %s: publishing on %s failed: %s", self.meter.id, self.topic, exc)
                self._failing = True
            return False
        if self._failing:
            log.info("meter %s: publishing on %s works again", self.meter.id, self.topic)
            self._failing = False
        self.published += 1
        return True

    async def run(self) -> None:
        """Publish now and then every interval of event time, until cancelled."""
        clock = self.model.clock
        step_ms = self.interval_secs * 1000.0
        due = float(clock.now_ms())
        while True:
            now = clock.now_ms()
            if now < due:
                await asyncio.sleep(max((due - now) / 1000.0 / clock.speed(), 0.0005))
                continue
            await self.publish_once(now)
            due += step_ms
            if due <= now:  # fell behind by more than an interval: do not publish a burst
                due = now + step_ms

    async def start(self) -> None:
        """Start publishing in a background task."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"sim-mqtt-{self.meter.id}")

    async def stop(self) -> None:
        """Stop publishing; no publish starts after this returns."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
