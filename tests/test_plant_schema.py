"""``energymon schema``: the plant file's JSON Schema validates every shipped plant file and rejects what the
loader rejects at the key level (unknown keys, wrong types)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from energymon.cli import main
from energymon.plant_schema import plant_json_schema

ROOT = Path(__file__).resolve().parent.parent


class _EditorLoader(yaml.SafeLoader):
    """YAML as an editor's language server reads it: dates stay strings."""


_EditorLoader.yaml_implicit_resolvers = {
    key: [r for r in resolvers if r[0] != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def shipped_plant_files() -> list[Path]:
    files = sorted((ROOT / "energymon" / "examples").glob("*.yaml"))
    files += sorted(p for p in (ROOT / "deploy" / "compose").glob("*.yaml") if "plant" in p.name)
    files += sorted((ROOT / "tests" / "cases").glob("*/plant.yaml"))
    return files


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = plant_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def load(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_EditorLoader)  # a SafeLoader subclass


def test_there_are_shipped_plant_files_in_every_place() -> None:
    files = shipped_plant_files()
    assert {p.parent.name for p in files} >= {"examples", "compose"} and len(files) >= 10


@pytest.mark.parametrize("path", shipped_plant_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_plant_file_validates_against_the_schema(validator: Any, path: Path) -> None:
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(load(path))]
    assert errors == []


def test_the_schema_rejects_unknown_keys_and_wrong_types(validator: Any) -> None:
    doc = load(ROOT / "energymon" / "examples" / "cement_plant.yaml")
    doc["meters"][0]["carier"] = "electricity"
    doc["enterprise"]["uscc"] = 12
    paths = {".".join(map(str, e.absolute_path)) for e in validator.iter_errors(doc)}
    assert "meters.0" in paths and "enterprise.uscc" in paths


def test_cli_prints_the_schema_and_writes_it_to_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["$schema"].endswith("2020-12/schema") and "meters" in printed["properties"]
    out = tmp_path / "plant.schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8")) == printed
    carrier = printed["$defs"]["Meter"]["properties"]["carrier"]
    assert "standard-coal" in carrier["description"]  # the field docs become the editor's hover text


def test_schema_command_runs_as_a_program() -> None:
    done = subprocess.run([sys.executable, "-m", "energymon.cli", "schema"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0 and json.loads(done.stdout)["title"] == "energymon plant file"
