"""The docs stay true: the README's config reference is generated from the models, and its sample plant file
validates."""

from __future__ import annotations

import re
from pathlib import Path

from energymon.config import parse_plant
from energymon.config_reference import render

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_config_reference_is_current() -> None:
    block = README.split("<!-- config-reference:start -->\n", 1)[1].split("<!-- config-reference:end -->", 1)[0]
    assert block == render(), "regenerate: python -m energymon.config_reference"


def test_readme_sample_plant_validates() -> None:
    section = README.split("## A plant file", 1)[1]
    yaml_block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert yaml_block is not None
    plant = parse_plant(yaml_block.group(1), "README.md")
    assert [m.id for m in plant.meters] == ["kiln_drive", "clinker_scale"]


def test_readme_quickstart_is_two_make_commands() -> None:
    quick = README.split("## Quickstart", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in quick.strip().splitlines()] == [["make", "demo"], ["make", "test"]]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "\ndemo: install" in makefile and "\ntest: dev services" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
