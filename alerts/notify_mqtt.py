"""The ``mqtt`` notifier: each alert's current state as a retained JSON message on
``energymon/v1/{enterprise}/alerts/{rule}/{source}`` (:func:`energymon.topics.alert_topic`).

A dashboard or a SCADA that subscribes to ``energymon/v1/{enterprise}/alerts/#`` gets the state of every alert
at once (the broker hands out the retained messages) and every change afterwards. The payload is the webhook's
(:meth:`~energymon.alerts.engine.Alert.to_dict` plus ``status`` and ``enterprise``); a resolved record replaces
the firing one, so the topic always shows the latest state.

Only the latest state of a topic matters, so the queue keeps one record per alert (the highest version) and
publishes are retried until they succeed or the notifier closes; there is no dead-letter file. Publishing runs
on the notifier's own thread with its own asyncio loop and transport (QoS 1 waits for the PUBACK).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from energymon.alerts.engine import Alert, AlertState
from energymon.alerts.notifiers import accepts
from energymon.alerts_config import MqttNotifier as MqttConfig
from energymon.errors import NotifyError
from energymon.interfaces import Transport
from energymon.metrics import PipelineMetrics, StageMetrics
from energymon.topics import alert_topic

__all__ = ["MqttNotifier", "alert_payload"]

log = logging.getLogger("energymon.alerts.notifiers")

STAGE = "notify"


def alert_payload(alert: Alert, enterprise: str) -> bytes:
    """The retained JSON of one alert record."""
    data: dict[str, Any] = alert.to_dict()
    data["status"] = alert.state.value
    data["enterprise"] = enterprise
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


class MqttNotifier:
    """Publish alert state, retained, on the alert topics.

    Args:
        config: the ``mqtt`` notifier from the plant file.
        enterprise: the enterprise's USCC (part of the topic).
        transport_factory: builds the transport (called once, on the notifier's thread); the runtime passes
            one for the uplink broker or ``config.url``.
        metrics: ``sent`` per published record, ``errors{error_type="NotifyError"}`` per failed attempt.
        backoff_base_s, backoff_cap_s: retry waits, as for the other notifiers.
    """

    kind = "mqtt"

    def __init__(
        self,
        config: MqttConfig,
        *,
        enterprise: str,
        transport_factory: Callable[[], Transport],
        metrics: PipelineMetrics | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
    ) -> None:
        self.config = config
        self.enterprise = enterprise
        self._factory = transport_factory
        self._metrics = metrics
        self._stage: StageMetrics | None = metrics.stage(STAGE) if metrics is not None else None
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._latest: dict[str, Alert] = {}  # topic → newest record not yet published
        self._cond = threading.Condition()
        self._in_flight = 0
        self._closing = False
        self._closed_result: bool | None = None
        self._abort = threading.Event()
        self._random = random.Random()
        self._thread = threading.Thread(target=self._run, name=f"mqtt-notifier-{config.id}", daemon=True)
        self._thread.start()
        if metrics is not None:
            metrics.track_queue(STAGE, config.id, depth=lambda: self.pending)

    @property
    def id(self) -> str:
        """The notifier id."""
        return self.config.id

    @property
    def pending(self) -> int:
        """Alert topics waiting to be published (or being published)."""
        with self._cond:
            return len(self._latest) + self._in_flight

    def accepts(self, alert: Alert) -> bool:
        """The ``severities`` and ``audiences`` filters of the configuration."""
        return accepts(self.config.severities, self.config.audiences, alert)

    def topic(self, alert: Alert) -> str:
        """The retained topic of an alert."""
        return alert_topic(self.enterprise, alert.rule_id, alert.source)

    def notify(self, alert: Alert) -> None:
        """Queue the record (replacing an older queued record of the same alert); returns at once.

        Raises:
            ValueError: the alert is pending.
        """
        if alert.state is AlertState.PENDING:
            raise ValueError(f"alert {alert.id} is pending; only firing and resolved alerts are notified")
        topic = self.topic(alert)
        if self._stage is not None:
            self._stage.received()
        with self._cond:
            if self._closing:
                log.error("mqtt %s: closed; alert %s %s not published", self.id, alert.id, alert.state.value)
                return
            queued = self._latest.get(topic)
            if queued is None or queued.version <= alert.version:
                self._latest[topic] = alert
            self._cond.notify()

    def close(self, timeout: float | None = 10.0) -> bool:
        """Publish what is queued for at most ``timeout`` seconds, then disconnect; True if all was published."""
        with self._cond:
            if self._closed_result is not None:
                return self._closed_result
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        drained = not self._thread.is_alive()
        if not drained:
            self._abort.set()
            with self._cond:
                self._cond.notify_all()
            self._thread.join(15)
        with self._cond:
            lost = list(self._latest.values())
            self._closed_result = drained and not lost
        for alert in lost:
            log.error("mqtt %s: alert %s %s not published before close", self.id, alert.id, alert.state.value)
        if self._metrics is not None:
            self._metrics.untrack_queue(STAGE, self.config.id)
        return self._closed_result

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        except Exception:
            log.exception("mqtt %s: notifier stopped", self.id)
        finally:
            loop.close()

    def _next(self) -> tuple[str, Alert] | None:
        """Wait for a queued record (on the worker thread); None when closing with nothing left."""
        with self._cond:
            while not self._latest and not self._closing:
                self._cond.wait()
            if not self._latest or self._abort.is_set():
                return None
            topic = next(iter(self._latest))
            self._in_flight = 1
            return topic, self._latest.pop(topic)

    async def _main(self) -> None:
        transport = self._factory()
        try:
            # connect() waits up to its timeout for a broker that is down: stay responsive to close()
            connecting = asyncio.ensure_future(transport.connect())
            while not connecting.done():
                await asyncio.wait({connecting}, timeout=0.05)
                with self._cond:
                    give_up = self._abort.is_set() or (self._closing and not self._latest)
                if give_up and not connecting.done():
                    connecting.cancel()
                    with contextlib.suppress(BaseException):
                        await connecting
                    return
            connecting.result()
            while True:
                item = await asyncio.to_thread(self._next)
                if item is None:
                    return
                topic, alert = item
                try:
                    await self._publish(transport, topic, alert)
                finally:
                    with self._cond:
                        self._in_flight = 0
        finally:
            await transport.close()

    async def _publish(self, transport: Transport, topic: str, alert: Alert) -> None:
        payload = alert_payload(alert, self.enterprise)
        attempts = 0
        while True:
            attempts += 1
            try:
                await transport.publish(topic, payload, qos=self.config.qos, retain=True)
            except Exception as exc:
                if self._stage is not None:
                    self._stage.error(NotifyError(str(exc)))
                delay = self._random.uniform(0, min(self._backoff_cap_s, self._backoff_base_s * 2 ** (attempts - 1)))
                level = logging.WARNING if attempts == 1 else logging.DEBUG
                log.log(level, "mqtt %s: alert %s attempt %d failed (%s); retrying in %.2f s", self.id, alert.id,
                        attempts, exc, delay)
                if await asyncio.to_thread(self._abort.wait, delay):
                    with self._cond:  # put it back unless a newer record came in; close() reports it
                        self._latest.setdefault(topic, alert)
                    return
                with self._cond:
                    newer = self._latest.get(topic)
                    if newer is not None and newer.version >= alert.version:
                        return  # a newer state replaces this one; publish that instead
                continue
            if self._stage is not None:
                self._stage.sent()
            return
