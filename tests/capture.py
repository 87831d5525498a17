"""An independent MQTT subscriber that records every batch published on the readings topics (tests count what
really crossed the broker with it)."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from energymon.topics import readings_filter


class ReadingsCapture:
    """Subscribes (not shared, QoS 1) to every gateway's readings; ``snapshot()`` is what arrived so far."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self.payloads: list[bytes] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(readings_filter(), qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert subscribed.wait(10), "the capture did not get its subscription"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.payloads.append(bytes(msg.payload))

    def snapshot(self) -> list[bytes]:
        """Every payload received so far, in arrival order."""
        with self._lock:
            return list(self.payloads)

    def close(self) -> None:
        """Stop the client."""
        self.client.loop_stop()
        self.client.disconnect()
