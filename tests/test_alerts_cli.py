"""``energymon alerts``: names the plant does not have and data directories without a state file are refused
with a clear message and exit 2 (nothing is created), and times are printed in the plant's time zone."""

from __future__ import annotations

import argparse
import copy
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from test_alerts_rules import BASE

from energymon.alerts.build import build_alerting
from energymon.alerts.cli import add_alerts_parser, alerts_main
from energymon.alerts.state import STATE_FILE
from energymon.clock import ManualClock
from energymon.config import parse_plant
from energymon.metrics import PipelineMetrics
from energymon.schema import Point


def cli(data_dir: Path, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_alerts_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["alerts", *argv, "--data-dir", str(data_dir)])
    out = io.StringIO()
    return alerts_main(args, out=out), out.getvalue()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory a processor ran in: one firing alert, the plant's names and zone recorded."""
    data = copy.deepcopy(BASE)
    data["alerts"] = {"rules": [{"kind": "threshold", "id": "demand_high", "meter": "kiln_drive",
                                 "quantity": "power_active", "above": 100}]}
    plant = parse_plant(yaml.safe_dump(data, allow_unicode=True))
    engine, notifiers = build_alerting(plant, clock=ManualClock(datetime(2025, 3, 3, 1, 0, tzinfo=UTC)),
                                       metrics=PipelineMetrics(CollectorRegistry()), data_dir=tmp_path / "data")
    engine.observe([Point(meter="kiln_drive", quantity="power_active", value=150.0, unit="kW",
                          ts_ms=1_740_963_600_000)])  # 2025-03-03 01:00 UTC = 09:00 in Shanghai
    engine.close()
    for n in notifiers:
        n.close(1)
    return tmp_path / "data"


def test_a_mistyped_data_dir_is_refused_and_nothing_is_created(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    wrong = tmp_path / "energymon-dta"
    for argv in (("silence", "--rule", "demand_high", "--for-secs", "60", "--comment", "x"), ("list",),
                 ("ack", "demand_high:kiln_drive"), ("replay",)):
        assert cli(wrong, *argv)[0] == 2
        assert f"data directory {wrong} does not exist" in capsys.readouterr().err
    assert not wrong.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(empty, "silence", "--rule", "demand_high", "--for-secs", "60", "--comment", "x")[0] == 2
    assert f"has no alert state file {STATE_FILE}" in capsys.readouterr().err
    assert list(empty.iterdir()) == []


def test_unknown_rules_sources_notifiers_and_alert_ids_are_refused(data_dir: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (("silence", "--rule", "demand_hihg", "--for-secs", "60", "--comment", "x"),
         "no alert rule 'demand_hihg' in the plant (did you mean 'demand_high'?)"),
        (("silence", "--rule", "demand_high", "--source", "kiln_drvie", "--for-secs", "60", "--comment", "x"),
         "(did you mean 'kiln_drive'?)"),
        (("ack", "no_such_rule:kiln_drive"), "no alert rule 'no_such_rule'"),
        (("ack", "demand_high"), "is not an alert id"),
        (("list", "--rule", "nope"), "no alert rule 'nope'"),
        (("replay", "--notifier", "hook"), "no notifier 'hook'"),
    ]
    for argv, message in cases:
        assert cli(data_dir, *argv)[0] == 2, argv
        assert message in capsys.readouterr().err, argv
    assert cli(data_dir, "silences")[1].strip() == "id  rule  source  until  by  comment"  # nothing silenced


def test_times_are_printed_in_the_plant_time_zone(data_dir: Path) -> None:
    rc, out = cli(data_dir, "list")
    assert rc == 0 and "demand_high:kiln_drive" in out
    assert "2025-03-03T09:00:00+08:00" in out
    rc, out = cli(data_dir, "silence", "--rule", "demand_high", "--for-secs", "60", "--comment", "检修")
    assert rc == 0 and "+08:00" in out
    rc, out = cli(data_dir, "list", "--history")
    assert rc == 0 and "+08:00" in out and "Z " not in out
