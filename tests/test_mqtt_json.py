"""MqttJsonCollector: JSON meters over the in-process bus and over a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry
from services import Mosquitto

from energymon.clock import ManualClock
from energymon.collectors.mqtt_json import MqttJsonCollector
from energymon.config import Meter, MqttBus, MqttJsonField, MqttJsonSource
from energymon.metrics import PipelineMetrics
from energymon.schema import Point, Quality, datetime_to_ms
from energymon.transport import InProcTransport, MqttTransport

TIMEOUT = 15.0
T = TypeVar("T")

EVENT = datetime(2026, 11, 22, 8, 30, 15, 250000, tzinfo=UTC)
EVENT_MS = datetime_to_ms(EVENT)
ARRIVAL = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 120)

    return asyncio.run(bounded())


def field(path: str, quantity: str, unit: str, **kw: Any) -> MqttJsonField:
    return MqttJsonField(path=path, quantity=quantity, unit=unit, **kw)


def meter(meter_id: str, topic: str, fields: list[MqttJsonField], bus: str = "field", **source: Any) -> Meter:
    return Meter(
        id=meter_id,
        source=MqttJsonSource(type="mqtt_json", bus=bus, topic=topic, fields=fields, **source),
    )


def steam(time: str, heat_mj: float = 1, temps: list[float] | None = None) -> dict[str, Any]:
    """A payload of the ``steam`` meter."""
    return {"meta": {"time": time}, "data": {"heat_mj": heat_mj, "temps": temps or [0, 1]}}


def plant_meters(prefix: str) -> list[Meter]:
    return [
        meter(
            "gasflow",
            f"{prefix}/kiln/gas",
            [
                field("totalizer_nm3", "volume_total", "Nm3", kind="counter"),
                field("flow_nm3_h", "volume_flow", "Nm3/h"),
            ],
            timestamp_path="ts",
            timestamp_format="epoch_ms",
        ),
        meter(
            "steam",
            f"{prefix}/boiler/steam",
            [field("data.heat_mj", "heat_total", "GJ", scale=0.001), field("data.temps.1", "temp", "degC")],
            timestamp_path="meta.time",
            timestamp_format="iso8601",
        ),
        meter(
            "pump",
            f"{prefix}/pump",
            [field("power_w", "power_active", "kW", scale=0.001)],
        ),
        meter(
            "water",
            f"{prefix}/water",
            [field("v", "volume_total", "m3", kind="counter")],
            timestamp_path="t",
            timestamp_format="epoch_s",
        ),
        meter("elsewhere", f"{prefix}/kiln/gas", [field("x", "x", "kW")], bus="other_bus"),  # not ours
    ]


class Sink:
    """The ``emit`` callback: records every call (from the transport's thread)."""

    def __init__(self) -> None:
        self.calls: queue.Queue[list[Point]] = queue.Queue()
        self.threads: set[int] = set()

    def __call__(self, points: list[Point]) -> None:
        self.threads.add(threading.get_ident())
        self.calls.put(points)

    async def next(self, timeout: float = TIMEOUT) -> list[Point]:
        try:
            return await asyncio.to_thread(self.calls.get, True, timeout)
        except queue.Empty:
            raise AssertionError(f"no emit within {timeout} s") from None

    def drained(self) -> list[list[Point]]:
        out = []
        while not self.calls.empty():
            out.append(self.calls.get_nowait())
        return out


def dropped(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value("energymon_dropped_total", {"stage": "collector", "reason": reason})
    return value or 0.0


def counter(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(f"energymon_{name}_total", {"stage": "collector"}) or 0.0


class Harness:
    """A collector on an in-process bus, with a publisher on the same bus."""

    def __init__(self) -> None:
        self.bus_name = f"field-{uuid.uuid4().hex[:8]}"
        self.prefix = "plant"
        self.bus = MqttBus(type="mqtt", id="field", url=f"inproc://{self.bus_name}")
        self.registry = CollectorRegistry()
        self.clock = ManualClock(ARRIVAL)
        self.collector = MqttJsonCollector(
            self.bus,
            plant_meters(self.prefix),
            clock=self.clock,
            metrics=PipelineMetrics(self.registry),
        )
        self.publisher = InProcTransport(self.bus_name, client_id="meters")
        self.sink = Sink()

    async def __aenter__(self) -> Harness:
        await self.collector.start(self.sink)
        await self.publisher.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.collector.stop()
        await self.publisher.close()

    async def send(self, topic: str, payload: Any) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.publisher.publish(f"{self.prefix}/{topic}", raw)

    async def settle(self) -> list[list[Point]]:
        await self.publisher.drain()
        return self.sink.drained()


def by_quantity(points: list[Point]) -> dict[str, Point]:
    return {p.quantity: p for p in points}


def test_only_mqtt_json_meters_of_the_bus_are_served() -> None:
    h = Harness()
    assert [m.id for m in h.collector.meters] == ["gasflow", "steam", "pump", "water"]
    assert h.collector.name == "field"


def test_good_payloads_give_points_with_event_time() -> None:
    async def scenario() -> None:
        async with Harness() as h:
            await h.send("kiln/gas", {"ts": EVENT_MS, "totalizer_nm3": 123456.5, "flow_nm3_h": 812})
            gas = by_quantity(await h.sink.next())
            assert gas["volume_total"] == Point(
                meter="gasflow", quantity="volume_total", value=123456.5, unit="Nm3", ts_ms=EVENT_MS
            )
            assert gas["volume_flow"].value == 812.0 and gas["volume_flow"].unit == "Nm3/h"

            # ISO 8601 with an offset: 16:30:15.25+08:00 is 08:30:15.25 UTC. Lists are indexed by number.
            await h.send("boiler/steam", steam("2026-11-22T16:30:15.250+08:00", 4500, [1, 182.5]))
            boiler = by_quantity(await h.sink.next())
            assert boiler["heat_total"].value == pytest.approx(4.5)  # scale 0.001: MJ -> GJ
            assert boiler["temp"].value == 182.5
            assert {p.ts_ms for p in boiler.values()} == {EVENT_MS}
            await h.send("boiler/steam", steam("2026-11-22T08:30:15.25Z"))
            assert {p.ts_ms for p in await h.sink.next()} == {EVENT_MS}

            # epoch seconds, fractional.
            await h.send("water", {"t": EVENT_MS / 1000, "v": 77})
            (water,) = await h.sink.next()
            assert (water.ts_ms, water.value, water.quality) == (EVENT_MS, 77.0, Quality.GOOD)

            # No timestamp_path: arrival time from the clock.
            h.clock.advance(42)
            await h.send("pump", {"power_w": 15500})
            (pump,) = await h.sink.next()
            assert pump.ts_ms == datetime_to_ms(ARRIVAL) + 42_000
            assert pump.value == pytest.approx(15.5) and pump.unit == "kW"

            assert counter(h.registry, "received") == counter(h.registry, "sent") == 8
            assert h.collector.rejected == []

    run(scenario())


def test_null_and_non_finite_values_are_quality_bad() -> None:
    async def scenario() -> None:
        async with Harness() as h:
            await h.send("kiln/gas", {"ts": EVENT_MS, "totalizer_nm3": None, "flow_nm3_h": 5})
            gas = by_quantity(await h.sink.next())
            assert (gas["volume_total"].value, gas["volume_total"].quality) == (None, Quality.BAD)
            assert gas["volume_flow"].quality is Quality.GOOD
            await h.send("kiln/gas", b'{"ts": %d, "totalizer_nm3": NaN, "flow_nm3_h": Infinity}' % EVENT_MS)
            gas = by_quantity(await h.sink.next())
            assert all(p.value is None and p.quality is Quality.BAD for p in gas.values())
            assert h.collector.rejected == []

    run(scenario())


BAD_CASES = [
    # (topic, payload, reason, points dropped, fragment of the detail)
    ("kiln/gas", b"totalizer=5", "bad_payload", 2, "not JSON"),
    ("kiln/gas", b"\xff\xfe{", "bad_payload", 2, "not JSON"),
    ("kiln/gas", b"[" * 200_000 + b"]" * 200_000, "bad_payload", 2, "nested too deeply"),
    ("kiln/gas", b'{"ts": ' + b"9" * 5000 + b"}", "bad_payload", 2, "not JSON"),  # past int's digit limit
    ("kiln/gas", {"ts": EVENT_MS, "flow_nm3_h": 1.0}, "missing_field", 1, "totalizer_nm3"),
    ("kiln/gas", {"ts": EVENT_MS, "totalizer_nm3": "123.4", "flow_nm3_h": 1.0}, "not_numeric", 1, "'123.4'"),
    ("kiln/gas", {"ts": EVENT_MS, "totalizer_nm3": True, "flow_nm3_h": 1}, "not_numeric", 1, "totalizer_nm3"),
    ("kiln/gas", {"totalizer_nm3": 1, "flow_nm3_h": 1}, "bad_timestamp", 2, "missing"),
    ("kiln/gas", {"ts": "1763800000000", "totalizer_nm3": 1, "flow_nm3_h": 1}, "bad_timestamp", 2, "number"),
    ("kiln/gas", {"ts": 5, "totalizer_nm3": 1, "flow_nm3_h": 1}, "bad_timestamp", 2, "2000..2100"),
    ("boiler/steam", steam("2026-11-22T16:30:15"), "bad_timestamp", 2, "no time zone"),  # naive
    ("boiler/steam", steam("yesterday"), "bad_timestamp", 2, "not ISO 8601"),
    ("water", {"t": 1763800000, "v": [1, 2]}, "not_numeric", 1, "'v'"),
]


@pytest.mark.parametrize(("topic", "payload", "reason", "n", "detail"), BAD_CASES)
def test_bad_payload_is_counted_and_set_aside_while_a_good_meter_flows(
    topic: str, payload: Any, reason: str, n: int, detail: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[Harness, list[list[Point]]]:
        async with Harness() as h:
            for _ in range(2):
                await h.send(topic, payload)
                await h.send("pump", {"power_w": 1000})  # a good meter on the same bus
            calls = await h.settle()
        return h, calls

    with caplog.at_level(logging.WARNING, logger="energymon.collectors.mqtt_json"):
        h, calls = run(scenario())
    pump_points = [p for call in calls for p in call if p.meter == "pump"]
    assert [p.value for p in pump_points] == [1.0, 1.0]
    assert dropped(h.registry, reason) == 2 * n
    rejected = h.collector.rejected
    assert len(rejected) == 2
    assert {(r.reason, r.topic) for r in rejected} == {(reason, f"plant/{topic}")}
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    assert rejected[0].payload == raw[:4096]  # kept truncated
    assert detail in rejected[0].detail
    assert rejected[0].received_ms == datetime_to_ms(ARRIVAL)
    # Every configured field of every message is accounted for.
    total_dropped = sum(dropped(h.registry, r) for r in {c[2] for c in BAD_CASES})
    assert counter(h.registry, "received") == counter(h.registry, "sent") + total_dropped
    warnings = [r for r in caplog.records if r.name == "energymon.collectors.mqtt_json"]
    assert len(warnings) == 1  # the second identical rejection is counted, not logged
    assert reason in warnings[0].getMessage()


def test_missing_field_keeps_the_other_fields() -> None:
    async def scenario() -> None:
        async with Harness() as h:
            await h.send("kiln/gas", {"ts": EVENT_MS, "flow_nm3_h": 9.5})
            (point,) = await h.sink.next()
            assert (point.quantity, point.value, point.ts_ms) == ("volume_flow", 9.5, EVENT_MS)
            assert dropped(h.registry, "missing_field") == 1

    run(scenario())


def test_distinct_reasons_are_logged_once_per_meter(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with Harness() as h:
            for _ in range(3):
                await h.send("kiln/gas", b"garbage")
                await h.send("water", b"garbage")
                await h.send("kiln/gas", {"ts": EVENT_MS, "flow_nm3_h": 1.0})
            await h.settle()
            assert len(h.collector.rejected) == 9

    with caplog.at_level(logging.WARNING, logger="energymon.collectors.mqtt_json"):
        run(scenario())
    logged = sorted(
        (r.getMessage().split("'")[1], "bad_payload" in r.getMessage())
        for r in caplog.records
        if r.name == "energymon.collectors.mqtt_json"
    )
    assert logged == [("gasflow", False), ("gasflow", True), ("water", True)]


def test_rejected_keeps_only_the_last_n() -> None:
    async def scenario() -> None:
        h = Harness()
        h.collector = MqttJsonCollector(h.bus, plant_meters("plant"), keep_rejected=3, clock=h.clock)
        async with h:
            for i in range(10):
                await h.send("pump", b"bad %d" % i)
            await h.settle()
            assert [r.payload for r in h.collector.rejected] == [b"bad 7", b"bad 8", b"bad 9"]

    run(scenario())


def test_emit_errors_are_counted_and_do_not_stop_the_collector(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        h = Harness()
        seen: list[float | None] = []

        def flaky(points: list[Point]) -> None:
            if not seen:
                seen.append(None)
                raise RuntimeError("buffer full")
            seen.extend(p.value for p in points)

        async with h:
            h.collector._emit = flaky  # swap the sink after start
            await h.send("pump", {"power_w": 1000})
            await h.send("pump", {"power_w": 2000})
            await h.settle()
        assert seen == [None, 2.0]
        value = h.registry.get_sample_value(
            "energymon_errors_total", {"stage": "collector", "error_type": "RuntimeError"}
        )
        assert value == 1

    with caplog.at_level(logging.ERROR):
        run(scenario())
    assert "emit failed" in caplog.text


def test_no_emit_after_stop() -> None:
    async def scenario() -> None:
        h = Harness()
        await h.collector.start(h.sink)
        await h.publisher.connect()
        await h.send("pump", {"power_w": 1})
        assert len(await h.sink.next()) == 1
        await h.collector.stop()
        await h.send("pump", {"power_w": 2})
        await h.publisher.drain()
        assert h.sink.drained() == []
        await h.publisher.close()

    run(scenario())


@pytest.mark.integration
def test_collector_over_mosquitto(mosquitto_session: Mosquitto) -> None:
    prefix = f"it-{uuid.uuid4().hex[:8]}"
    bus = MqttBus(type="mqtt", id="field", url=mosquitto_session.url)
    registry = CollectorRegistry()

    async def scenario() -> None:
        collector = MqttJsonCollector(
            bus, plant_meters(prefix), clock=ManualClock(ARRIVAL), metrics=PipelineMetrics(registry)
        )
        sink = Sink()
        await collector.start(sink)
        pub = MqttTransport(mosquitto_session.host, mosquitto_session.port, client_id=f"{prefix}-meters")
        await pub.connect()
        try:
            for topic, payload in [
                ("kiln/gas", b"not json at all"),
                ("boiler/steam", steam("2026-11-22T16:30:15.25")),  # naive time
                ("kiln/gas", {"ts": EVENT_MS, "totalizer_nm3": "lots", "flow_nm3_h": 3.5}),
                ("pump", {"power_w": 2500}),
                ("boiler/steam", steam("2026-11-22T16:30:15.25+08:00", 2000, [0, 90])),
            ]:
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                await pub.publish(f"{prefix}/{topic}", raw)

            # Messages on one topic arrive in order; across topics, collect until everything is in.
            points: list[Point] = []
            while len(points) < 4:
                points.extend(await sink.next())
            got = {(p.meter, p.quantity): p for p in points}
            assert got[("gasflow", "volume_flow")].value == 3.5
            assert got[("gasflow", "volume_flow")].ts_ms == EVENT_MS
            assert got[("pump", "power_active")].value == pytest.approx(2.5)
            assert got[("pump", "power_active")].ts_ms == datetime_to_ms(ARRIVAL)
            assert got[("steam", "heat_total")].value == pytest.approx(2.0)
            assert got[("steam", "temp")].ts_ms == EVENT_MS
            reasons = sorted((r.meter, r.reason) for r in collector.rejected)
            assert reasons == [
                ("gasflow", "bad_payload"),
                ("gasflow", "not_numeric"),
                ("steam", "bad_timestamp"),
            ]
            assert dropped(registry, "bad_payload") == 2
            assert dropped(registry, "not_numeric") == 1
            assert dropped(registry, "bad_timestamp") == 2
        finally:
            await collector.stop()
            await pub.close()

    run(scenario())
