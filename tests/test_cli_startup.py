"""`energymon --help` and `energymon validate` start without the heavy imports of the commands they do not run
(pandas and numpy for reports, the provincial uplink, asyncio): each check runs in a fresh interpreter and
reads ``sys.modules``. Start-up times are measured by ``bench/bench_startup.py``, not asserted here."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from energymon.cli import _STAGE_COMMANDS, build_parser
from energymon.demo import example_plant_path

HEAVY = ("pandas", "numpy", "energymon.gateway.provincial", "energymon.simulators.provincial_platform",
         "energymon.alerts.cli", "asyncio")

PROBE = """
import contextlib, io, json, sys
from energymon.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
    code = main(sys.argv[1:])
print(json.dumps({"out": out.getvalue(), "modules": sorted(sys.modules)}))
"""


def loaded_by(*argv: str) -> tuple[str, set[str]]:
    """What ``energymon ARGV`` printed, and the modules it had imported when it returned."""
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["out"], set(result["modules"])


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_help_imports_none_of_the_stage_commands() -> None:
    out, modules = loaded_by("--help")
    assert "simulate-platform" in out and "uplink" in out and "report" in out
    assert heavy(modules) == []


def test_validate_imports_no_pandas_no_uplink_no_event_loop() -> None:
    out, modules = loaded_by("validate", str(example_plant_path()))
    assert ": OK" in out
    assert heavy(modules) == []


@pytest.mark.parametrize("command", sorted(_STAGE_COMMANDS))
def test_a_stage_command_is_built_in_full_when_it_runs(command: str) -> None:
    out, modules = loaded_by(command, "--help")
    assert f"usage: energymon {command}" in out
    assert _STAGE_COMMANDS[command][1] in modules


def _helps(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {choice.dest: choice.help for choice in sub._choices_actions}


def test_the_listed_help_of_each_stage_command_is_its_modules_own() -> None:
    full, listed = _helps(build_parser()), _helps(build_parser(["--help"]))
    assert listed == full
    assert set(_STAGE_COMMANDS) <= set(full)


def test_config_field_docstrings_are_the_ones_pydantic_reads() -> None:
    """energymon._model_docs reads each module's source once; the descriptions are pydantic's own."""
    import inspect

    from pydantic import BaseModel
    from pydantic._internal import _docs_extraction, _fields

    from energymon import accounting_config, alerts_config, config, provincial_config

    checked = 0
    for module in (config, accounting_config, alerts_config, provincial_config):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if not issubclass(cls, BaseModel) or cls.__module__ != module.__name__:
                continue
            assert _fields.extract_docstrings_from_cls(cls) == _docs_extraction.extract_docstrings_from_cls(
                cls, use_inspect=True), cls
            checked += 1
    assert checked > 50
