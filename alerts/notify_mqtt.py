"""The ``mqtt`` notifier: each alert's current state as a retained JSON message on
``energymon/v1/{enterprise}/alerts/{rule}/{source}`` (:func:`energymon.topics.alert_topic`).

A dashboard or a SCADA that subscribes to ``energymon/v1/{enterprise}/alerts/#`` gets the state of every alert
at once (the broker hands out the retained messages) and every change afterwards. The payload is the webhook's
(:func:`energymon.alerts.payload.alert_payload`, with its ``delivery_id``); a resolved record replaces the firing
one, so the topic always shows the latest state.

Records wait in the outbox (the alert state file) until the broker acknowledged them (PUBACK at QoS 1), across
restarts. Only the latest state of a topic matters, so a newer record of an alert replaces the older ones still
waiting, and publishes are retried (capped back-off) for ``retry_for_s`` (30 days by default) before a record is
dead-lettered. Publishing runs on the notifier's own thread with its own asyncio loop and transport.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from energymon.alerts.delivery import BackgroundNotifier, DeliveryError
from energymon.alerts.engine import Alert
from energymon.alerts.payload import PayloadContext, alert_payload
from energymon.alerts_config import MqttNotifier as MqttConfig
from energymon.errors import EnergymonError
from energymon.interfaces import Transport
from energymon.metrics import PipelineMetrics
from energymon.topics import alert_topic

__all__ = ["MqttNotifier", "alert_payload_bytes"]


def alert_payload_bytes(alert: Alert, context: PayloadContext, delivery_id: str | None = None) -> bytes:
    """The retained JSON of one alert record."""
    data = alert_payload(alert, delivery_id=delivery_id, context=context)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


class MqttNotifier(BackgroundNotifier):
    """Publish alert state, retained, on the alert topics.

    Args:
        config: the ``mqtt`` notifier from the plant file.
        enterprise: the enterprise's USCC (part of the topic).
        transport_factory: builds the transport (called once, on the notifier's thread); the runtime passes
            one for the uplink broker or ``config.url``.
        metrics: ``sent`` per published record, ``errors{error_type="NotifyError"}`` per failed attempt.
        dead_letter_path: JSON-lines file for records given up on (default: ``dead-letter-<id>.jsonl`` beside the
            outbox; without an outbox they are only logged).
        context: what the payload says about the plant.
        **kw: outbox and back-off settings of :class:`~energymon.alerts.delivery.BackgroundNotifier`.
    """

    kind = "mqtt"
    supersede = True
    #: One publish at a time: the notifier's one broker connection and its asyncio loop serve every alert alike.
    max_in_flight_limit = 1

    def __init__(
        self,
        config: MqttConfig,
        *,
        enterprise: str,
        transport_factory: Callable[[], Transport],
        metrics: PipelineMetrics | None = None,
        dead_letter_path: Path | None = None,
        context: PayloadContext | None = None,
        **kw: Any,
    ) -> None:
        kw.setdefault("retry_for_s", 30 * 86400.0)
        kw.setdefault("backoff_cap_s", 30.0)
        outbox_path = kw.get("outbox_path")
        if dead_letter_path is None and outbox_path is not None:
            dead_letter_path = Path(outbox_path).parent / f"dead-letter-{config.id}.jsonl"
        super().__init__(config.id, severities=config.severities, audiences=config.audiences,
                         dead_letter_path=dead_letter_path, metrics=metrics, **kw)
        self.config = config
        self.enterprise = enterprise
        self.context = context if context is not None else PayloadContext(enterprise_code=enterprise)
        self._factory = transport_factory
        self._transport: Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start()

    def topic(self, alert: Alert) -> str:
        """The retained topic of an alert."""
        return alert_topic(self.enterprise, alert.rule_id, alert.source)

    def _payload(self, alert: Alert, delivery_id: str) -> dict[str, Any]:
        return alert_payload(alert, delivery_id=delivery_id, context=self.context)

    def _close_grace_s(self) -> float:
        return 15.0

    def _deliver_once(self, alert: Alert, delivery_id: str) -> None:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._publish(alert, delivery_id))
        except DeliveryError:
            raise
        except Exception as exc:  # TransportError (retriable), a broker that refused the message
            retriable = exc.retriable if isinstance(exc, EnergymonError) else True
            raise DeliveryError(f"{type(exc).__name__}: {exc}", retriable=retriable) from None

    async def _publish(self, alert: Alert, delivery_id: str) -> None:
        if self._transport is None:
            transport = self._factory()
            await transport.connect()  # returns after its timeout if the broker is down; reconnects in the background
            self._transport = transport
        await self._transport.publish(self.topic(alert), alert_payload_bytes(alert, self.context, delivery_id),
                                      qos=self.config.qos, retain=True)

    def _closed(self) -> None:
        loop, transport = self._loop, self._transport
        if loop is None:
            return
        try:
            if transport is not None:
                loop.run_until_complete(transport.close())
        except Exception:  # closing a transport that never connected
            pass
        finally:
            loop.close()
