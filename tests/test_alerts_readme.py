"""alerts/README.md stays true: every YAML sample validates as part of a plant file and builds its rules and
notifiers; every rule kind and notifier type has a sample."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from prometheus_client import CollectorRegistry
from test_alerts_rules import BASE

from energymon.alerts.build import build_alerting
from energymon.alerts_config import Notifier, Rule
from energymon.clock import ManualClock
from energymon.config import parse_plant
from energymon.metrics import PipelineMetrics

README = (Path(__file__).resolve().parent.parent / "alerts" / "README.md").read_text(encoding="utf-8")


def samples() -> list[dict[str, Any]]:
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", README, re.S)]
    assert blocks and all(isinstance(b, dict) and set(b) == {"alerts"} for b in blocks)
    return blocks


def kinds(union: Any, field: str) -> set[str]:
    members = get_args(get_args(union)[0])
    return {get_args(m.model_fields[field].annotation)[0] for m in members}


def test_every_rule_kind_and_notifier_type_has_a_sample() -> None:
    rules = [r for b in samples() for r in b["alerts"].get("rules", [])]
    notifiers = [n for b in samples() for n in b["alerts"].get("notifiers", [])]
    assert {r["kind"] for r in rules} == kinds(Rule, "kind")
    assert {n["type"] for n in notifiers} == kinds(Notifier, "type")


def test_the_samples_validate_and_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENERGYMON_WEBHOOK_SECRET", "x")
    monkeypatch.setenv("ENERGYMON_SMTP_PASSWORD", "x")
    data = copy.deepcopy(BASE)
    data["alerts"] = {
        "rules": [r for b in samples() for r in b["alerts"].get("rules", [])],
        "notifiers": [n for b in samples() for n in b["alerts"].get("notifiers", [])],
    }
    plant = parse_plant(yaml.safe_dump(data, allow_unicode=True), "alerts/README.md")
    engine, notifiers = build_alerting(plant, clock=ManualClock(datetime(2030, 1, 1, tzinfo=UTC)),
                                       metrics=PipelineMetrics(CollectorRegistry()), data_dir=tmp_path)
    try:
        assert len(engine.rules) == len(plant.alerts.rules)
        assert [n.id for n in notifiers] == [n.id for n in plant.alerts.notifiers]
    finally:
        engine.close()
        for n in notifiers:
            n.close(0.5)


def test_the_documented_receiver_check_accepts_a_real_delivery_and_rejects_stale_replayed_and_forged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_webhook import SECRET, SECRET_ENV, HookServer

    from energymon.alerts.engine import Alert, AlertState
    from energymon.alerts.notifiers import WebhookNotifier
    from energymon.alerts_config import WebhookNotifier as WebhookConfig

    (code,) = re.findall(r"```python\n(.*?)```", README, re.S)
    receiver: dict[str, Any] = {}
    exec(compile(code, "alerts/README.md", "exec"), receiver)  # the documented sample itself
    monkeypatch.setenv(SECRET_ENV, SECRET)
    srv = HookServer().start()
    notifier = WebhookNotifier(WebhookConfig(type="webhook", id="hook", url=srv.url, secret_env=SECRET_ENV),
                               dead_letter_path=tmp_path / "dead.jsonl")
    try:
        notifier.notify(Alert(rule_id="r", source="kiln_drive", state=AlertState.FIRING, severity="warning",
                              audience=("energy_manager",), summary="s", value=1.0, threshold=0.5,
                              started_ms=1_740_816_000_000, fired_ms=1_740_816_000_000, version=1, event="firing"))
        (req,) = srv.wait_for(1)
    finally:
        notifier.close(5)
        srv.stop()
    check, remember, secret = receiver["check"], receiver["remember"], SECRET.encode()
    ts = int(req.headers["x-energymon-timestamp"])
    assert check(secret, req.headers, req.body, now=ts + 1) == "process"
    remember(req.headers, now=ts + 1)
    assert check(secret, req.headers, req.body, now=ts + 2) == "duplicate"  # replayed within the tolerance
    assert check(secret, req.headers, req.body, now=ts + 301) == "stale or missing timestamp"
    assert check(secret, req.headers, req.body + b" ", now=ts + 1) == "bad signature"
    assert check(b"other", req.headers, req.body, now=ts + 1) == "bad signature"
    forged = {**req.headers, "x-energymon-timestamp": str(ts + 100)}  # a fresh time on an old signature
    assert check(secret, forged, req.body, now=ts + 100) == "bad signature"
