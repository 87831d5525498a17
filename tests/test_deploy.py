"""Deployment files run commands the CLI really has."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from energymon.cli import build_parser

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@pytest.mark.parametrize("unit", sorted((DEPLOY / "systemd").glob("*.service")), ids=lambda p: p.name)
def test_systemd_exec_start_is_a_valid_command(unit: Path) -> None:
    line = next(x for x in unit.read_text(encoding="utf-8").splitlines() if x.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0].endswith("/energymon")
    args = build_parser().parse_args(argv[1:])
    assert args.command in {"gateway", "processor", "run", "uplink"}
    if args.command == "uplink":
        assert args.uplink_command == "run"
    assert str(args.config) == "/etc/energymon/plant.yaml"
    assert args.metrics_port is not None
