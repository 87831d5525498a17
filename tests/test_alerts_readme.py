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
