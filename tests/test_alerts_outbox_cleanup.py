"""Outbox clean-up at start: records left for a notifier that was removed from the plant file become dead letters
(reported once, listed by ``alerts deliveries``, dropped by ``alerts drop``, replayed by ``alerts replay`` once
the notifier is back), and dead letters older than ``alerts.dead_letter_keep_days`` are purged with a log line.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from services import free_port
from test_alerts_rules import BASE
from test_webhook import HookServer

from energymon.alerts import delivery
from energymon.alerts.build import build_alerting
from energymon.alerts.cli import add_alerts_parser, alerts_main
from energymon.alerts.engine import Alert, AlertState
from energymon.alerts.notifiers import DELIVERY_HEADER, WebhookNotifier
from energymon.alerts.outbox import DeliveryOutbox
from energymon.alerts.state import STATE_FILE
from energymon.alerts_config import WebhookNotifier as WebhookConfig
from energymon.clock import ManualClock
from energymon.config import PlantConfig, parse_plant
from energymon.errors import ConfigError
from energymon.metrics import PipelineMetrics
from energymon.schema import Point

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
FAST = {"backoff_base_s": 0.005, "backoff_cap_s": 0.02}
T0 = 1_740_963_600_000  # 2025-03-03 01:00 UTC


def plant(notifiers: list[dict[str, Any]], **alerts: Any) -> PlantConfig:
    data = copy.deepcopy(BASE)
    data["alerts"] = {"rules": [{"kind": "threshold", "id": "demand_high", "meter": "kiln_drive",
                                 "quantity": "power_active", "above": 100}], "notifiers": notifiers, **alerts}
    return parse_plant(yaml.safe_dump(data, allow_unicode=True))


def hook(notifier_id: str, url: str) -> dict[str, Any]:
    return {"type": "webhook", "id": notifier_id, "url": url}


def start(p: PlantConfig, data_dir: Path, registry: CollectorRegistry | None = None) -> tuple[Any, list[Any]]:
    return build_alerting(p, clock=ManualClock(datetime(2025, 3, 3, 1, 0, tzinfo=UTC)),
                          metrics=PipelineMetrics(registry or CollectorRegistry()), data_dir=data_dir,
                          notifier_options=FAST)


def stop(engine: Any, notifiers: list[Any]) -> None:
    engine.close()
    for n in notifiers:
        n.close(1)


def cli(data_dir: Path, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_alerts_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["alerts", *argv, "--data-dir", str(data_dir)])
    out = io.StringIO()
    return alerts_main(args, out=out), out.getvalue()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def warnings_about_removed(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "no longer in the plant file" in r.getMessage()]


@pytest.fixture
def receiver() -> Iterator[HookServer]:
    srv = HookServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def data_dir(tmp_path: Path, receiver: HookServer) -> Path:
    """A processor ran with two notifiers; ``old_hook``'s receiver was down, so its firing and resolution still
    wait in the outbox (``hook`` got both)."""
    data = tmp_path / "data"
    down = f"http://127.0.0.1:{free_port()}/hook"
    engine, notifiers = start(plant([hook("hook", receiver.url), hook("old_hook", down)]), data)
    engine.observe([Point(meter="kiln_drive", quantity="power_active", value=150.0, unit="kW", ts_ms=T0)])
    engine.observe([Point(meter="kiln_drive", quantity="power_active", value=50.0, unit="kW", ts_ms=T0 + 1000)])
    by_id = {n.id: n for n in notifiers}
    wait_until(lambda: by_id["hook"].pending == 0, "hook's deliveries")
    stop(engine, notifiers)
    rows = DeliveryOutbox(data / STATE_FILE).rows()
    assert [(r.notifier, r.event, r.dead_ms) for r in rows] == [("old_hook", "firing", None),
                                                              ("old_hook", "resolved", None)]
    return data


def test_records_of_a_removed_notifier_are_dead_lettered_once_and_can_be_dropped(
        data_dir: Path, receiver: HookServer, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.INFO)
    without = plant([hook("hook", receiver.url)])
    registry = CollectorRegistry()
    stop(*start(without, data_dir, registry))
    assert registry.get_sample_value("energymon_dropped_total", {"stage": "notify", "reason": "dead_letter"}) == 2
    (warning,) = warnings_about_removed(caplog)
    assert "2 record(s)" in warning and "old_hook 2" in warning
    rows = DeliveryOutbox(data_dir / STATE_FILE).rows()
    assert all(r.dead_ms is not None and r.last_error == "notifier old_hook is no longer in the plant file"
               for r in rows) and len(rows) == 2
    dead = [json.loads(line) for line in (data_dir / "dead-letter-old_hook.jsonl").read_text().splitlines()]
    assert [(d["payload"]["state"], d["delivery_id"]) for d in dead] == [("firing", rows[0].delivery_id),
                                                                         ("resolved", rows[1].delivery_id)]

    caplog.clear()
    stop(*start(without, data_dir))  # the next start: already dead letters, not reported again
    assert warnings_about_removed(caplog) == []
    assert len(DeliveryOutbox(data_dir / STATE_FILE).rows(dead=True)) == 2

    rc, listing = cli(data_dir, "deliveries", "--notifier", "old_hook")
    assert rc == 0 and rows[0].delivery_id in listing and "no longer in the plant file" in listing
    capsys.readouterr()
    assert cli(data_dir, "replay", "--notifier", "old_hook")[0] == 2  # nothing would send them
    assert "no longer in the plant file" in capsys.readouterr().err
    assert cli(data_dir, "replay")[0] == 1  # replaying everything leaves them dead
    assert "2 dead letter(s) of notifiers no longer in the plant file not replayed" in capsys.readouterr().err
    assert all(r.dead_ms is not None for r in DeliveryOutbox(data_dir / STATE_FILE).rows())
    assert cli(data_dir, "replay", rows[0].delivery_id)[0] == 1
    assert f"dead letter {rows[0].delivery_id} is for notifier 'old_hook'" in capsys.readouterr().err
    assert cli(data_dir, "drop", "--notifier", "old_hook_typo")[0] == 2  # still refused: not in the plant

    rc, out = cli(data_dir, "drop", "--notifier", "old_hook")
    assert rc == 0 and out.count("dropped") == 2
    assert DeliveryOutbox(data_dir / STATE_FILE).rows() == []


def test_records_of_a_notifier_put_back_are_replayed_with_their_delivery_ids(
        data_dir: Path, receiver: HookServer, caplog: pytest.LogCaptureFixture) -> None:
    stop(*start(plant([hook("hook", receiver.url)]), data_dir))  # removed: dead letters now
    rows = DeliveryOutbox(data_dir / STATE_FILE).rows(dead=True)
    back = HookServer().start()
    try:
        engine, notifiers = start(plant([hook("hook", receiver.url), hook("old_hook", back.url)]), data_dir)
        try:
            assert back.received == []  # a dead letter waits for the operator
            rc, out = cli(data_dir, "replay", "--notifier", "old_hook")
            assert rc == 0 and out.count("replaying") == 2
            got = back.wait_for(2, timeout=60)
            assert [r.json()["state"] for r in got] == ["firing", "resolved"]
            assert [r.headers[DELIVERY_HEADER.lower()] for r in got] == [r.delivery_id for r in rows]
            wait_until(lambda: DeliveryOutbox(data_dir / STATE_FILE).rows() == [], "the outbox to empty")
        finally:
            stop(engine, notifiers)
    finally:
        back.stop()


def _dead_rows(outbox: DeliveryOutbox, notifier: str, ages_days: list[float], now_ms: int) -> list[str]:
    ids = []
    for i, age in enumerate(ages_days):
        record = Alert(rule_id="demand_high", source=f"m{i}", state=AlertState.FIRING, severity="warning",
                       audience=("energy_manager",), summary="s", value=150.0, threshold=100.0, started_ms=T0,
                       fired_ms=T0, version=1, event="firing").to_record()
        did, _ = outbox.add(notifier, record, now_ms)
        (row,) = [r for r in outbox.rows(notifier=notifier) if r.delivery_id == did]
        outbox.dead_letter(row.seq, attempts=3, now_ms=now_ms - round(age * DAY_MS), reason="HTTP 500")
        ids.append(did)
    return ids


def test_dead_letters_older_than_the_configured_age_are_purged_at_start_with_a_log_line(
        tmp_path: Path, receiver: HookServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    data = tmp_path / "data"
    data.mkdir()
    now = time.time_ns() // 1_000_000
    outbox = DeliveryOutbox(data / STATE_FILE)
    old, recent = _dead_rows(outbox, "hook", [91, 1], now)
    (gone_notifier,) = _dead_rows(outbox, "removed_hook", [100], now)
    outbox.close()
    stop(*start(plant([hook("hook", receiver.url)]), data))  # default: 90 days
    purged = [r.getMessage() for r in caplog.records if "purged" in r.getMessage()]
    assert len(purged) == 1 and "purged 2 dead letter(s) older than 90 day(s)" in purged[0]
    assert ": hook 1, removed_hook 1 (" in purged[0]
    assert [r.delivery_id for r in DeliveryOutbox(data / STATE_FILE).rows()] == [recent]
    assert old != gone_notifier

    caplog.clear()
    stop(*start(plant([hook("hook", receiver.url)], dead_letter_keep_days=0.5), data))
    assert DeliveryOutbox(data / STATE_FILE).rows() == []
    assert any("purged 1 dead letter(s) older than 12.0 h" in r.getMessage() for r in caplog.records)


def test_a_running_notifier_purges_its_own_aged_dead_letters(
        tmp_path: Path, receiver: HookServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "PURGE_INTERVAL_S", 0.05)
    path = tmp_path / STATE_FILE
    now = time.time_ns() // 1_000_000
    outbox = DeliveryOutbox(path)
    _dead_rows(outbox, "hook", [3, 0.001], now)
    (other,) = _dead_rows(outbox, "other", [3], now)
    config = WebhookConfig(type="webhook", id="hook", url=receiver.url)
    n = WebhookNotifier(config, dead_letter_path=tmp_path / "dl.jsonl", outbox_path=path,
                        dead_letter_keep_s=86_400, **FAST)
    try:
        wait_until(lambda: len(outbox.rows(notifier="hook")) == 1, "the 3-day-old dead letter to be purged")
    finally:
        n.close(1)
    assert [r.delivery_id for r in outbox.rows(notifier="other")] == [other]  # not this notifier's
    outbox.close()


def test_dead_letter_keep_days_is_validated() -> None:
    with pytest.raises(ConfigError, match="dead_letter_keep_days"):
        plant([], dead_letter_keep_days=0)
