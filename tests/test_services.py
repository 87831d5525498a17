"""Prove that the service fixtures in conftest.py / services.py start real, working services."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from services import (
    Alertmanager,
    Mosquitto,
    ServiceError,
    VictoriaMetrics,
    free_port,
    require_binary,
)

pytestmark = pytest.mark.integration

TIMEOUT = 15.0  # bound on every wait for the network; generous for a loaded 2-core machine


class MqttProbe:
    """A paho-mqtt 2.x client running its network loop in a thread, recording what it receives."""

    def __init__(
        self,
        broker: Mosquitto,
        client_id: str,
        *,
        persistent: bool = False,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
    ) -> None:
        self.broker = broker
        self.protocol = protocol
        self.persistent = persistent
        kwargs: dict[str, Any] = {"client_id": client_id, "protocol": protocol}
        if protocol != MQTTProtocolVersion.MQTTv5:
            kwargs["clean_session"] = not persistent
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.session_present: bool | None = None
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)

    def _on_connect(self, _c: mqtt.Client, _u: Any, flags: Any, reason_code: ReasonCode, _p: Any) -> None:
        assert not reason_code.is_failure, f"CONNACK refused: {reason_code}"
        self.session_present = bool(flags.session_present)
        self.connected.set()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: list[ReasonCode], _p: Any) -> None:
        assert all(not code.is_failure for code in codes), f"SUBACK refused: {codes}"
        self.subscribed.set()

    def connect(self) -> MqttProbe:
        """Connect, start the network thread and wait for CONNACK."""
        self.connected.clear()
        if self.protocol == MQTTProtocolVersion.MQTTv5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if self.persistent:
                props.SessionExpiryInterval = 3600
            self.client.connect(
                self.broker.host, self.broker.port, clean_start=not self.persistent, properties=props
            )
        else:
            self.client.connect(self.broker.host, self.broker.port)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT), "no CONNACK"
        return self

    def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(TIMEOUT), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), "no PUBACK"

    def receive(self) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no message within {TIMEOUT} s") from None

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def influx_write(vm: VictoriaMetrics, lines: list[str]) -> None:
    """Write line-protocol records to VictoriaMetrics' /api/v2/write with the official client."""
    with InfluxDBClient(url=vm.url, token="x", org="o") as client:
        client.write_api(write_options=SYNCHRONOUS).write(bucket="b", record=lines)


# --------------------------------------------------------------------------- helpers


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_require_binary_fails_loudly_for_missing_binary() -> None:
    assert require_binary("mosquitto").endswith("/mosquitto")
    with pytest.raises(RuntimeError, match=r"make test"):
        require_binary("energymon-no-such-binary")


def test_start_failure_names_service_and_quotes_log(
    alertmanager_factory: Callable[[str], Alertmanager],
) -> None:
    with pytest.raises(ServiceError, match=r"(?s)Alertmanager on 127\.0\.0\.1:\d+ exited.*receiver"):
        alertmanager_factory("route: {}\n")


# --------------------------------------------------------------------------- Mosquitto


def test_mosquitto_qos1_publish_subscribe(mosquitto: Mosquitto) -> None:
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    sub = MqttProbe(mosquitto, "sub").connect()
    pub = MqttProbe(mosquitto, "pub").connect()
    try:
        sub.subscribe("meters/m1/power")
        pub.publish("meters/m1/power", b'{"active_w": 1234.5}')
        msg = sub.receive()
        assert (msg.topic, msg.payload, msg.qos) == ("meters/m1/power", b'{"active_w": 1234.5}', 1)
    finally:
        sub.disconnect()
        pub.disconnect()


def test_mosquitto_session_fixture_is_shared(mosquitto_session: Mosquitto) -> None:
    probe = MqttProbe(mosquitto_session, "session-probe").connect()
    try:
        probe.subscribe("selftest/echo")
        probe.publish("selftest/echo", b"ping")
        assert probe.receive().payload == b"ping"
    finally:
        probe.disconnect()


@pytest.mark.parametrize(
    "protocol", [MQTTProtocolVersion.MQTTv311, MQTTProtocolVersion.MQTTv5], ids=["mqtt311", "mqtt5"]
)
def test_mosquitto_persistent_session_survives_restart(protocol: MQTTProtocolVersion) -> None:
    with Mosquitto(persistence=True) as broker:
        port = broker.port
        sub = MqttProbe(broker, "durable-sub", persistent=True, protocol=protocol).connect()
        sub.subscribe("meters/+/energy")
        sub.disconnect()

        pub = MqttProbe(broker, "pub-before").connect()
        pub.publish("meters/m1/energy", b"before-restart")
        pub.disconnect()

        broker.restart()
        assert broker.port == port

        pub = MqttProbe(broker, "pub-after").connect()
        pub.publish("meters/m2/energy", b"after-restart")
        pub.disconnect()

        sub.connect()
        try:
            assert sub.session_present is True
            got = {sub.receive().payload, sub.receive().payload}
            assert got == {b"before-restart", b"after-restart"}
        finally:
            sub.disconnect()


# --------------------------------------------------------------------------- VictoriaMetrics


def test_victoria_metrics_influx_write_and_export(victoria_metrics: VictoriaMetrics) -> None:
    assert victoria_metrics.url == f"http://127.0.0.1:{victoria_metrics.port}"
    influx_write(
        victoria_metrics,
        [
            "power,meter=m1,site=plantA active_w=1234.5 1700000000123456789",
            "power,meter=m1,site=plantA active_w=1300.25 1700000001000000000",
            "power,meter=m2,site=plantA active_w=-7 1700000002999000000",
        ],
    )
    rows = victoria_metrics.export('{__name__="power_active_w"}')
    assert rows == [
        {
            "metric": {"__name__": "power_active_w", "meter": "m1", "site": "plantA"},
            "values": [1234.5, 1300.25],
            "timestamps": [1700000000123, 1700000001000],
        },
        {
            "metric": {"__name__": "power_active_w", "meter": "m2", "site": "plantA"},
            "values": [-7],
            "timestamps": [1700000002999],
        },
    ]
    assert victoria_metrics.series_count("power_active_w") == 2
    result = victoria_metrics.query('power_active_w{meter="m1"}', time=1700000001.5)
    assert result["status"] == "success"
    [sample] = result["data"]["result"]
    assert sample["value"] == [1700000001.5, "1300.25"]


def test_victoria_metrics_dedups_identical_samples(victoria_metrics_session: VictoriaMetrics) -> None:
    line = "dedupcheck,meter=m1 energy_kwh=42.5 1700000000000000000"
    influx_write(victoria_metrics_session, [line])
    influx_write(victoria_metrics_session, [line])
    rows = victoria_metrics_session.export("dedupcheck_energy_kwh")
    assert [(r["values"], r["timestamps"]) for r in rows] == [([42.5], [1700000000000])]
    assert victoria_metrics_session.series_count("dedupcheck_energy_kwh") == 1


def test_victoria_metrics_keeps_data_across_restart(victoria_metrics: VictoriaMetrics) -> None:
    influx_write(victoria_metrics, ["restartcheck value=1 1700000000000000000"])
    victoria_metrics.flush()
    victoria_metrics.restart()
    [row] = victoria_metrics.export("restartcheck_value")
    assert (row["values"], row["timestamps"]) == ([1], [1700000000000])


# --------------------------------------------------------------------------- Alertmanager

ALERTMANAGER_CONFIG = """\
route:
  receiver: blackhole
  group_wait: 1s
receivers:
  - name: blackhole
"""


def test_alertmanager_status(alertmanager_factory: Callable[[str], Alertmanager]) -> None:
    manager: Alertmanager = alertmanager_factory(ALERTMANAGER_CONFIG)
    response = httpx.get(f"{manager.url}/api/v2/status", timeout=TIMEOUT)
    assert response.status_code == 200
    status = response.json()
    assert "blackhole" in status["config"]["original"]
    assert status["cluster"]["status"] == "disabled"
