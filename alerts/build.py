"""Build the alert stage of a plant: rules, notifiers, state file and engine, wired together.

:func:`build_alerting` is what :func:`energymon.runtime.build_alerting` (and so the processor service) calls.
Nothing connects while building: notifiers connect from their own threads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from energymon.alerts.delivery import purge_dead_letters, retire_removed_notifiers
from energymon.alerts.engine import AlertEngine, AlertState
from energymon.alerts.notifiers import Notifier, Resumable, WebhookNotifier, route
from energymon.alerts.notify_alertmanager import AlertmanagerNotifier
from energymon.alerts.notify_email import EmailNotifier
from energymon.alerts.notify_mqtt import MqttNotifier
from energymon.alerts.outbox import DeliveryOutbox
from energymon.alerts.payload import payload_context
from energymon.alerts.rules import ReplacementRecord, Replacements, build_rules
from energymon.alerts.state import STATE_FILE, AlertStore
from energymon.alerts_config import AlertmanagerNotifier as AlertmanagerConfig
from energymon.alerts_config import EmailNotifier as EmailConfig
from energymon.alerts_config import MqttNotifier as MqttConfig
from energymon.alerts_config import WebhookNotifier as WebhookConfig
from energymon.config import PlantConfig
from energymon.interfaces import Clock, Transport
from energymon.metrics import PipelineMetrics

__all__ = ["STATE_FILE", "build_alerting", "build_notifiers", "plant_info", "tidy_outbox"]


def plant_info(plant: PlantConfig) -> dict[str, Any]:
    """What ``energymon alerts`` checks names against: rule ids, sources (meters, items, products, gateway,
    budget scopes), notifier ids, and the plant's time zone."""
    sources: set[str] = {plant.gateway.id, "enterprise"}
    for m in plant.meters:
        sources.add(m.id)
        sources.update(f"{m.id}.{q}" for q in plant.quantities(m))
    sources.update(p.id for p in plant.products)
    sources.update(p.id for p in plant.processes)  # budget scopes
    for rule in plant.alerts.rules:  # sources a rule names itself (gateway ids, a budget scope)
        sources.update(getattr(rule, "ids", None) or ())
        scope = getattr(rule, "scope", None)
        if isinstance(scope, str):
            sources.add(scope)
    return {
        "enterprise": plant.enterprise.uscc,
        "tz": plant.enterprise.tz.key,
        "rules": [r.id for r in plant.alerts.rules],
        "meters": [m.id for m in plant.meters],
        "sources": sorted(sources),
        "notifiers": [n.id for n in plant.alerts.notifiers],
    }


def _mqtt_factory(plant: PlantConfig, cfg: MqttConfig) -> Transport:
    from energymon.transport import open_transport

    client_id = f"energymon-alerts-{plant.enterprise.uscc}-{cfg.id}-{os.getpid()}"
    if cfg.url is None:
        up = plant.uplink
        return open_transport(up.url, client_id=client_id, username=up.username, password_env=up.password_env,
                              tls=up.tls, keepalive_secs=up.keepalive_secs)
    return open_transport(cfg.url, client_id=client_id, username=cfg.username, password_env=cfg.password_env)


def build_notifiers(plant: PlantConfig, *, data_dir: Path, metrics: PipelineMetrics,
                    outbox_path: Path | None = None, **kw: Any) -> list[Notifier]:
    """One notifier per ``alerts.notifiers`` entry; dead letters go to ``dead-letter-<id>.jsonl`` in ``data_dir``.

    Records wait in the outbox of ``outbox_path`` (default: the state file ``data_dir/alerts.sqlite``) until
    their receiver accepted them. ``kw`` goes to every notifier (back-off settings, e.g. in tests).

    Raises:
        ConfigError: a secret or password environment variable is missing.
    """
    out: list[Notifier] = []
    uscc = plant.enterprise.uscc
    context = payload_context(plant)
    outbox = outbox_path if outbox_path is not None else data_dir / STATE_FILE
    try:
        for cfg in plant.alerts.notifiers:
            dead = data_dir / f"dead-letter-{cfg.id}.jsonl"
            common: dict[str, Any] = {"dead_letter_path": dead, "metrics": metrics, "context": context,
                                      "outbox_path": outbox,
                                      "dead_letter_keep_s": plant.alerts.dead_letter_keep_days * 86400, **kw}
            if isinstance(cfg, WebhookConfig):
                out.append(WebhookNotifier(cfg, enterprise=uscc, **common))
            elif isinstance(cfg, EmailConfig):
                out.append(EmailNotifier(cfg, enterprise=uscc, **common))
            elif isinstance(cfg, AlertmanagerConfig):
                out.append(AlertmanagerNotifier(cfg, enterprise=uscc, **common))
            elif isinstance(cfg, MqttConfig):
                def factory(cfg: MqttConfig = cfg) -> Transport:
                    return _mqtt_factory(plant, cfg)

                out.append(MqttNotifier(cfg, enterprise=uscc, transport_factory=factory, **common))
    except BaseException:
        for n in out:
            n.close(0)
        raise
    return out


def tidy_outbox(plant: PlantConfig, path: Path, *, data_dir: Path, metrics: PipelineMetrics | None = None) -> None:
    """At start: dead-letter the records of notifiers removed from the plant file, purge aged dead letters."""
    outbox = DeliveryOutbox(path)
    try:
        retire_removed_notifiers(outbox, [n.id for n in plant.alerts.notifiers], data_dir=data_dir,
                                 metrics=metrics)
        purge_dead_letters(outbox, plant.alerts.dead_letter_keep_days * 86400)
    finally:
        outbox.close()


def build_alerting(
    plant: PlantConfig,
    *,
    clock: Clock,
    metrics: PipelineMetrics,
    data_dir: Path,
    state_path: Path | None = None,
    replacements: Replacements | Iterable[ReplacementRecord] | None = None,
    notifier_options: dict[str, Any] | None = None,
) -> tuple[AlertEngine, list[Notifier]]:
    """The alert engine with its rules, state file (``data_dir/alerts.sqlite`` unless ``state_path``) and notifiers.

    The notifiers' outbox is the state file. Firing alerts restored from it are handed to notifiers that keep
    state on the far side (Alertmanager) without being notified again. The plant's rule ids, sources and time
    zone are written to the state file for ``energymon alerts``. ``notifier_options`` go to every notifier.

    The outbox is tidied first: records waiting for a notifier no longer in the plant file become dead letters
    (reported once, with a warning), and dead letters older than ``alerts.dead_letter_keep_days`` are purged.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = state_path if state_path is not None else data_dir / STATE_FILE
    store = AlertStore(path)
    try:
        store.save_plant_info(plant_info(plant))
        tidy_outbox(plant, path, data_dir=data_dir, metrics=metrics)
        notifiers = build_notifiers(plant, data_dir=data_dir, metrics=metrics, outbox_path=path,
                                    **(notifier_options or {}))
    except BaseException:
        store.close()
        raise
    try:
        rules = build_rules(plant, replacements=replacements)
        engine = AlertEngine(rules, notify=route(notifiers), clock=clock, metrics=metrics, store=store)
    except BaseException:
        for n in notifiers:
            n.close(0)
        store.close()
        raise
    firing = [a for a in engine.active() if a.state is AlertState.FIRING]
    if firing:
        for n in notifiers:
            if isinstance(n, Resumable):
                n.resume(firing)
    return engine, notifiers
