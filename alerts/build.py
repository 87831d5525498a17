"""Build the alert stage of a plant: rules, notifiers, state file and engine, wired together.

:func:`build_alerting` is what :func:`energymon.runtime.build_alerting` (and so the processor service) calls.
Nothing connects while building: notifiers connect from their own threads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from energymon.alerts.engine import AlertEngine, AlertState
from energymon.alerts.notifiers import Notifier, Resumable, WebhookNotifier, route
from energymon.alerts.notify_alertmanager import AlertmanagerNotifier
from energymon.alerts.notify_email import EmailNotifier
from energymon.alerts.notify_mqtt import MqttNotifier
from energymon.alerts.rules import ReplacementRecord, Replacements, build_rules
from energymon.alerts.state import STATE_FILE, AlertStore
from energymon.alerts_config import AlertmanagerNotifier as AlertmanagerConfig
from energymon.alerts_config import EmailNotifier as EmailConfig
from energymon.alerts_config import MqttNotifier as MqttConfig
from energymon.alerts_config import WebhookNotifier as WebhookConfig
from energymon.config import PlantConfig
from energymon.interfaces import Clock, Transport
from energymon.metrics import PipelineMetrics

__all__ = ["STATE_FILE", "build_alerting", "build_notifiers"]


def _mqtt_factory(plant: PlantConfig, cfg: MqttConfig) -> Transport:
    from energymon.transport import open_transport

    client_id = f"energymon-alerts-{plant.enterprise.uscc}-{cfg.id}-{os.getpid()}"
    if cfg.url is None:
        up = plant.uplink
        return open_transport(up.url, client_id=client_id, username=up.username, password_env=up.password_env,
                              tls=up.tls, keepalive_secs=up.keepalive_secs)
    return open_transport(cfg.url, client_id=client_id, username=cfg.username, password_env=cfg.password_env)


def build_notifiers(plant: PlantConfig, *, data_dir: Path, metrics: PipelineMetrics) -> list[Notifier]:
    """One notifier per ``alerts.notifiers`` entry; dead letters go to ``dead-letter-<id>.jsonl`` in ``data_dir``.

    Raises:
        ConfigError: a secret or password environment variable is missing.
    """
    out: list[Notifier] = []
    uscc = plant.enterprise.uscc
    for cfg in plant.alerts.notifiers:
        dead = data_dir / f"dead-letter-{cfg.id}.jsonl"
        if isinstance(cfg, WebhookConfig):
            out.append(WebhookNotifier(cfg, dead_letter_path=dead, metrics=metrics, enterprise=uscc))
        elif isinstance(cfg, EmailConfig):
            out.append(EmailNotifier(cfg, dead_letter_path=dead, metrics=metrics, enterprise=uscc))
        elif isinstance(cfg, AlertmanagerConfig):
            out.append(AlertmanagerNotifier(cfg, dead_letter_path=dead, metrics=metrics, enterprise=uscc))
        elif isinstance(cfg, MqttConfig):
            def factory(cfg: MqttConfig = cfg) -> Transport:
                return _mqtt_factory(plant, cfg)

            out.append(MqttNotifier(cfg, enterprise=uscc, transport_factory=factory, metrics=metrics))
    return out


def build_alerting(
    plant: PlantConfig,
    *,
    clock: Clock,
    metrics: PipelineMetrics,
    data_dir: Path,
    state_path: Path | None = None,
    replacements: Replacements | Iterable[ReplacementRecord] | None = None,
) -> tuple[AlertEngine, list[Notifier]]:
    """The alert engine with its rules, state file (``data_dir/alerts.sqlite`` unless ``state_path``) and notifiers.

    Firing alerts restored from the state file are handed to notifiers that keep state on the far side
    (Alertmanager) without being notified again.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    notifiers = build_notifiers(plant, data_dir=data_dir, metrics=metrics)
    try:
        rules = build_rules(plant, replacements=replacements)
        store = AlertStore(state_path if state_path is not None else data_dir / STATE_FILE)
        engine = AlertEngine(rules, notify=route(notifiers), clock=clock, metrics=metrics, store=store)
    except BaseException:
        for n in notifiers:
            n.close(0)
        raise
    firing = [a for a in engine.active() if a.state is AlertState.FIRING]
    if firing:
        for n in notifiers:
            if isinstance(n, Resumable):
                n.resume(firing)
    return engine, notifiers
