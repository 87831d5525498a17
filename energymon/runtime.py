"""Runtime wiring: build each stage from a plant file and run it.

``build_*`` functions construct stages without connecting anywhere (so they are cheap to test); ``run_*``
coroutines run a stage until a stop event is set. :class:`ProcessorService` bundles the processor, its store,
its alert engine and notifiers, the subscription, and the timer that flushes pending rows.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from energymon.config import (
    Dlt645SerialBus,
    Dlt645TcpBus,
    InfluxStoreConfig,
    ModbusRtuBus,
    ModbusRtuTcpBus,
    ModbusSource,
    ModbusTcpBus,
    MqttBus,
    MqttJsonSource,
    PlantConfig,
    SqliteStoreConfig,
)
from energymon.errors import StoreError
from energymon.interfaces import Clock, Collector, Message, PushCollector, Store, Transport
from energymon.metrics import PipelineMetrics
from energymon.topics import readings_filter, status_topic

__all__ = [
    "ProcessorService",
    "build_alerting",
    "build_collectors",
    "build_gateway",
    "open_store",
    "processor_client_id",
    "uplink_transport",
]

log = logging.getLogger(__name__)


def uplink_transport(
    plant: PlantConfig,
    *,
    client_id: str,
    will: tuple[str, bytes] | None = None,
    birth: tuple[str, bytes] | None = None,
    clean_start: bool = True,
    manual_ack: bool = False,
) -> Transport:
    """The transport to the plant's uplink broker; ``birth`` is published (retained) after every (re)connect."""
    from energymon.transport import open_transport

    up = plant.uplink
    return open_transport(
        up.url,
        client_id=client_id,
        username=up.username,
        password_env=up.password_env,
        tls=up.tls,
        keepalive_secs=up.keepalive_secs,
        will=will,
        birth=birth,
        clean_start=clean_start,
        manual_ack=manual_ack,
    )


def build_collectors(
    plant: PlantConfig, *, clock: Clock, metrics: PipelineMetrics
) -> tuple[list[Collector], list[PushCollector]]:
    """One collector per bus that has meters."""
    from energymon.collectors.modbus import ModbusCollector
    from energymon.collectors.mqtt_json import MqttJsonCollector

    polled: list[Collector] = []
    pushed: list[PushCollector] = []
    for bus in plant.buses:
        meters = [m for m in plant.meters if m.source.bus == bus.id]
        if not meters:
            continue
        if isinstance(bus, ModbusTcpBus | ModbusRtuTcpBus | ModbusRtuBus):
            pairs = [(m, plant.register_map(m.source)) for m in meters if isinstance(m.source, ModbusSource)]
            polled.append(ModbusCollector(bus, pairs, metrics=metrics, clock=clock))
        elif isinstance(bus, MqttBus):
            json_meters = [m for m in meters if isinstance(m.source, MqttJsonSource)]
            pushed.append(MqttJsonCollector(bus, json_meters, clock=clock, metrics=metrics))
        elif isinstance(bus, Dlt645SerialBus | Dlt645TcpBus):
            from energymon.collectors.dlt645 import Dlt645Collector

            polled.append(Dlt645Collector(bus, meters, metrics=metrics, clock=clock))
    return polled, pushed


def build_gateway(
    plant: PlantConfig,
    *,
    data_dir: Path,
    clock: Clock,
    metrics: PipelineMetrics,
    transport: Transport | None = None,
) -> Any:
    """The edge gateway with its collectors, outbox file in ``data_dir`` and uplink transport."""
    from energymon.gateway.gateway import Gateway

    data_dir.mkdir(parents=True, exist_ok=True)
    polled, pushed = build_collectors(plant, clock=clock, metrics=metrics)
    if transport is None:
        status = status_topic(plant.enterprise.uscc, plant.gateway.id)
        transport = uplink_transport(
            plant, client_id=f"energymon-gw-{plant.gateway.id}", will=(status, b"offline"), birth=(status, b"online")
        )
    return Gateway(
        plant,
        transport,
        polled,
        pushed,
        queue_path=data_dir / f"outbox-{plant.gateway.id}.sqlite",
        clock=clock,
        metrics=metrics,
    )


def open_store(plant: PlantConfig, *, metrics: PipelineMetrics, override: Path | None = None) -> Store:
    """The store named in the plant file (or an SQLite file at ``override``)."""
    from energymon.processors.store import open_store as _open

    cfg: InfluxStoreConfig | SqliteStoreConfig | None = plant.processor.store
    if override is not None:
        cfg = SqliteStoreConfig(type="sqlite", path=override)
    if cfg is None:
        raise ValueError("the plant file has no processor.store")
    store: Store = _open(cfg, metrics=metrics)
    return store


def build_alerting(
    plant: PlantConfig,
    *,
    clock: Clock,
    metrics: PipelineMetrics,
    data_dir: Path,
    state_path: Path | None = None,
    replacements: Any = None,
) -> tuple[Any, list[Any]]:
    """The alert engine and its notifiers (see :func:`energymon.alerts.build.build_alerting`).

    The engine's state (active alerts, history, acknowledgements, silences) lives in ``data_dir/alerts.sqlite``
    unless ``state_path`` is given; ``replacements`` feeds meter replacement records to ``counter_backwards``.
    """
    from energymon.alerts.build import build_alerting as _build

    return _build(plant, clock=clock, metrics=metrics, data_dir=data_dir, state_path=state_path,
                  replacements=replacements)


def processor_client_id(plant: PlantConfig) -> str:
    """The processor's MQTT client id: stable across restarts, so its persistent session (and what the broker
    queued for it while it was down) is picked up again.

    ``processor.client_id`` when set; otherwise ``energymon-proc-{uscc}``, plus the host name under a shared
    subscription (each instance of the group needs a session of its own).
    """
    cfg = plant.processor
    if cfg.client_id:
        return cfg.client_id
    base = f"energymon-proc-{plant.enterprise.uscc}"
    return f"{base}-{socket.gethostname()}" if cfg.share_group else base


def _store_retention_ms(store: Store) -> int | None:
    """The store's retention (``retention_ms()`` of the shipped stores), None when it keeps everything."""
    read = getattr(store, "retention_ms", None)
    value = read() if callable(read) else None
    return value if isinstance(value, int) else None


class ProcessorService:
    """Processor + store + alerts, fed by a subscription on the uplink broker.

    Args:
        plant: the plant configuration.
        transport: the uplink transport (built with manual acks and a persistent session if None).
        store: the store (opened from the plant file if None).
        clock: event-time clock for the alert engine.
        metrics: shared self-metrics.
        data_dir: where dead-letter files and the alert state file go.
        flush_interval_ms: how often pending rows are written even if few (default: the InfluxDB store's
            ``flush_interval_ms``, else 50 ms); the alert engine sees points as they arrive, without waiting for
            the write.
        alert_tick_ms: how often the alert engine's clock ticks (offline, completeness, reminders, silences).

    With ``processor.recompute_interval_s`` > 0 a thread recomputes today, this month and this year from the
    store on that schedule (:class:`~energymon.processors.schedule.CurrentPeriods`) and hands the ``indicator`` and
    ``budget`` rows to the alert engine.
    """

    def __init__(
        self,
        plant: PlantConfig,
        *,
        clock: Clock,
        metrics: PipelineMetrics,
        data_dir: Path,
        transport: Transport | None = None,
        store: Store | None = None,
        flush_interval_ms: int | None = None,
        observers: Sequence[Callable[[Sequence[Any]], None]] = (),
        alert_tick_ms: int = 1000,
    ) -> None:
        from energymon.processors.processor import Processor

        data_dir.mkdir(parents=True, exist_ok=True)
        self.plant = plant
        self.store = store or open_store(plant, metrics=metrics)
        self.alerts, self.notifiers = build_alerting(plant, clock=clock, metrics=metrics, data_dir=data_dir)
        self.schedule: Any = None
        self.recompute_interval_s = float(plant.processor.recompute_interval_s)
        if self.recompute_interval_s > 0:
            from energymon.processors.schedule import CurrentPeriods

            self.schedule = CurrentPeriods(
                plant,
                self.store,
                clock=clock,
                metrics=metrics,
                cache_path=data_dir / "recompute.sqlite",
                on_rows=[self.alerts.observe_rows],
                lookback_ms=int(plant.processor.recompute_lookback_hours * 3_600_000),
                live_indicators=plant.processor.share_group is None,
            )
            observers = [*observers, self.schedule.note_points]
        self.processor = Processor(
            plant,
            self.store,
            metrics=metrics,
            observers=observers,
            intake_observers=[self.alerts.observe_wire],
            row_observers=[self.alerts.observe_rows],
            counter_state_path=data_dir / "counters.sqlite",
            live_indicators=plant.processor.share_group is None,
            dead_letter_path=data_dir / "rejected-messages.jsonl",
            clock=clock,
            retention_ms=_store_retention_ms(self.store),
        )
        metrics.track_queue("processor", "pending_rows", depth=lambda: self.processor.pending_rows,
                            oldest_age_s=self.processor.pending_age_s)
        if transport is None:
            transport = uplink_transport(
                plant,
                client_id=processor_client_id(plant),
                clean_start=False,
                manual_ack=True,
            )
        self.transport = transport
        if flush_interval_ms is None:
            store_cfg = plant.processor.store
            flush_interval_ms = store_cfg.flush_interval_ms if isinstance(store_cfg, InfluxStoreConfig) else 50
        self.flush_interval_s = flush_interval_ms / 1000
        self.clock = clock
        self.metrics = metrics
        self.alert_tick_s = alert_tick_ms / 1000
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self._recomputer: threading.Thread | None = None

    def _on_message(self, msg: Message) -> None:
        self.processor.handle(msg)

    def _on_status(self, msg: Message) -> None:
        """A gateway's retained status (``online`` / ``offline``, the latter also its last will); a gateway not
        in the plant file is ignored (it gets no metric label and no alert state)."""
        gateway = msg.topic.split("/")[3]
        if gateway not in self.processor.gateways:
            msg.ack()
            return
        self.metrics.gateway_status(gateway, msg.payload.strip() == b"online")
        self.alerts.observe_status(gateway, msg.payload.strip() == b"online", self.clock.now_ms())
        msg.ack()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            try:
                self.processor.flush()
            except StoreError as exc:
                log.warning("store write failed, keeping rows for the next try: %s", exc)

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.alert_tick_s):
            try:
                self.alerts.tick(self.clock.now_ms())
            except Exception:  # an alert rule must not stop the ticks
                log.exception("alert tick failed")

    def _recompute_loop(self) -> None:
        """Recompute the current periods now and then every ``processor.recompute_interval_s``."""
        assert self.schedule is not None
        while not self._stop.is_set():
            try:
                rows = self.schedule.run_once()
                log.debug("recomputed the current periods: %d rows", len(rows))
            except StoreError as exc:
                log.warning("scheduled recompute could not use the store, trying again later: %s", exc)
            except Exception:  # a recompute bug must not stop the processor
                log.exception("scheduled recompute failed")
            if self._stop.wait(self.recompute_interval_s):
                return

    async def start(self) -> None:
        """Subscribe and start the flush and alert-tick timers."""
        flt = readings_filter(self.plant.enterprise.uscc, self.plant.processor.share_group)
        self.transport.subscribe(flt, self._on_message, qos=1)
        self.transport.subscribe(status_topic(self.plant.enterprise.uscc, "+"), self._on_status, qos=1)
        await self.transport.connect()
        self._flusher = threading.Thread(target=self._flush_loop, name="energymon-flush", daemon=True)
        self._flusher.start()
        self._ticker = threading.Thread(target=self._tick_loop, name="energymon-alert-tick", daemon=True)
        self._ticker.start()
        if self.schedule is not None:
            self._recomputer = threading.Thread(target=self._recompute_loop, name="energymon-recompute", daemon=True)
            self._recomputer.start()

    async def stop(self) -> None:
        """Flush what is pending and acknowledge it, disconnect, close the store, save the alert state and drain
        the notifiers.

        The last rows are written and acknowledged while still connected; what arrives after that final flush is
        left unacknowledged, so the broker delivers it again (to this session when it comes back; under a shared
        subscription, a stopped instance's share waits in its persistent session until it returns).
        """
        self._stop.set()
        if self.schedule is not None:
            self.schedule.stop()
        if self._flusher is not None:
            await asyncio.to_thread(self._flusher.join, 5)
        if self._ticker is not None:
            await asyncio.to_thread(self._ticker.join, 5)
        if self._recomputer is not None:
            await asyncio.to_thread(self._recomputer.join, 30)
        try:
            await asyncio.to_thread(self.processor.flush)
        except StoreError as exc:
            log.warning("stopping with unwritten rows (the broker redelivers them): %s", exc)
        await self.transport.close()
        if self.schedule is not None:
            self.schedule.close()
        self.alerts.close()
        for n in self.notifiers:
            await asyncio.to_thread(n.close, 5.0)
        self.processor.close()
        self.store.close()
