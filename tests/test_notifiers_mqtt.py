"""The ``mqtt`` notifier against a real Mosquitto: retained alert state read by a fresh subscriber, resolved state
replacing firing, a broker that goes down and comes back, and the plant wiring (uplink broker by default)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry
from services import Mosquitto

from energymon.alerts.build import build_alerting
from energymon.alerts.engine import Alert, AlertState
from energymon.alerts.notify_mqtt import MqttNotifier
from energymon.alerts_config import MqttNotifier as MqttConfig
from energymon.clock import ManualClock
from energymon.config import parse_plant
from energymon.metrics import PipelineMetrics
from energymon.schema import Point
from energymon.topics import alert_topic
from energymon.transport import MqttTransport

USCC = "91530102MA6K7LQ8RH"
pytestmark = pytest.mark.integration


def alert(state: AlertState, version: int, source: str = "kiln_drive") -> Alert:
    return Alert(
        rule_id="meter_offline", source=source, state=state, severity="warning", audience=("energy_manager",),
        summary="电表离线", value=60.0, threshold=45.0, started_ms=1_740_816_000_000, fired_ms=1_740_816_000_000,
        resolved_ms=1_740_816_600_000 if state is AlertState.RESOLVED else None, version=version,
        event=state.value,
    )


def retained(broker: Mosquitto, topic_filter: str, expect: int = 1, timeout: float = 5.0) -> dict[str, Any]:
    """Connect a fresh subscriber and return the retained messages it is handed (topic → JSON)."""
    got: dict[str, Any] = {}
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"reader-{time.monotonic_ns()}")

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        c.subscribe(topic_filter, qos=1)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got[msg.topic] = json.loads(msg.payload)
            if len(got) >= expect:
                done.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        done.wait(timeout)
        time.sleep(0.2)  # anything else retained arrives right behind
    finally:
        client.loop_stop()
        client.disconnect()
    return got


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def notifier(broker: Mosquitto, registry: CollectorRegistry | None = None) -> MqttNotifier:
    config = MqttConfig(type="mqtt", id="alert_topics")

    def factory() -> MqttTransport:
        return MqttTransport(broker.host, broker.port, client_id=f"alerts-{time.monotonic_ns()}",
                             connect_timeout_secs=2, publish_timeout_secs=2, reconnect_max_secs=1)

    metrics = PipelineMetrics(registry) if registry is not None else None
    return MqttNotifier(config, enterprise=USCC, transport_factory=factory, metrics=metrics,
                        backoff_base_s=0.05, backoff_cap_s=0.2)


def test_retained_state_for_a_fresh_subscriber_and_resolved_replaces_it(mosquitto: Mosquitto) -> None:
    n = notifier(mosquitto)
    try:
        n.notify(alert(AlertState.FIRING, 2))
        n.notify(alert(AlertState.FIRING, 2, source="clinker_scale"))
        wait_until(lambda: n.pending == 0, "publish")
        topic = alert_topic(USCC, "meter_offline", "kiln_drive")
        assert topic == f"energymon/v1/{USCC}/alerts/meter_offline/kiln_drive"
        state = retained(mosquitto, f"energymon/v1/{USCC}/alerts/#", expect=2)
        assert set(state) == {topic, alert_topic(USCC, "meter_offline", "clinker_scale")}
        assert state[topic]["state"] == "firing" and state[topic]["status"] == "firing"
        assert state[topic]["enterprise"] == USCC and state[topic]["summary"] == "电表离线"
        n.notify(alert(AlertState.RESOLVED, 3))
        wait_until(lambda: n.pending == 0, "publish")
        after = retained(mosquitto, topic)
        assert after[topic]["state"] == "resolved" and after[topic]["version"] == 3
    finally:
        assert n.close(5)


def test_broker_down_then_back_publishes_the_latest_state(mosquitto: Mosquitto) -> None:
    registry = CollectorRegistry()
    n = notifier(mosquitto, registry)
    try:
        n.notify(alert(AlertState.FIRING, 2))
        wait_until(lambda: n.pending == 0, "first publish")
        mosquitto.kill()
        n.notify(alert(AlertState.FIRING, 4))
        n.notify(alert(AlertState.RESOLVED, 5))
        n.notify(alert(AlertState.FIRING, 3))  # older than what is queued: ignored
        time.sleep(0.5)
        assert n.pending >= 1
        mosquitto.start()  # same port; not persistent: the retained state must come from the notifier again
        wait_until(lambda: n.pending == 0, "publish after the broker came back")
        topic = alert_topic(USCC, "meter_offline", "kiln_drive")
        state = retained(mosquitto, topic)
        assert state[topic]["state"] == "resolved" and state[topic]["version"] == 5
        assert (registry.get_sample_value("energymon_sent_total", {"stage": "notify"}) or 0) <= 3
    finally:
        n.close(5)


def test_pending_records_are_refused(mosquitto: Mosquitto) -> None:
    n = notifier(mosquitto)
    try:
        with pytest.raises(ValueError):
            n.notify(alert(AlertState.PENDING, 1))
    finally:
        n.close(5)


def test_plant_wiring_uses_the_uplink_broker(mosquitto: Mosquitto, tmp_path: Path) -> None:
    text = yaml.safe_dump({
        "version": 1,
        "enterprise": {"uscc": USCC, "name": "x", "industry_code": "C3011"},
        "buses": [{"type": "modbus_tcp", "id": "b", "host": "127.0.0.1", "port": 502}],
        "meters": [{"id": "kiln_drive", "source": {"type": "modbus", "bus": "b", "registers": [
            {"quantity": "power_active", "address": 0, "unit": "kW"}]}}],
        "uplink": {"url": mosquitto.url},
        "alerts": {
            "rules": [{"kind": "threshold", "id": "power_high", "meter": "kiln_drive", "quantity": "power_active",
                       "above": 100}],
            "notifiers": [{"type": "mqtt", "id": "alert_topics", "severities": ["warning", "critical"]}],
        },
    })
    plant = parse_plant(text)
    engine, notifiers = build_alerting(plant, clock=ManualClock(datetime(2030, 1, 1, tzinfo=UTC)),
                                       metrics=PipelineMetrics(CollectorRegistry()), data_dir=tmp_path)
    try:
        ts = 1_740_816_000_000
        engine.observe([Point(meter="kiln_drive", quantity="power_active", value=150.0, unit="kW", ts_ms=ts)])
        topic = alert_topic(USCC, "power_high", "kiln_drive")
        wait_until(lambda: topic in retained(mosquitto, topic, timeout=0.5), "retained alert")
        engine.observe([Point(meter="kiln_drive", quantity="power_active", value=50.0, unit="kW", ts_ms=ts + 1000)])
        wait_until(lambda: retained(mosquitto, topic, timeout=0.5).get(topic, {}).get("state") == "resolved",
                   "resolved state")
    finally:
        engine.close()
        for n in notifiers:
            n.close(5)


