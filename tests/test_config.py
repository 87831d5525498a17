"""Plant file validation: every problem is reported with file, line, key path and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from energymon.cli import main
from energymon.config import PlantConfig, load_plant, parse_plant, uscc_is_valid
from energymon.demo import example_plant_path
from energymon.errors import ConfigError

GOOD_HEAD = """\
version: 1
enterprise: {uscc: 91530102MA6K7LQ8RH, name: 测试厂, industry_code: C3011}
processes: [{id: kiln}]
buses:
  - {type: modbus_tcp, id: b1, host: 127.0.0.1, port: 1502, timeout_ms: 200}
gateway: {poll_groups: [{id: default, interval_secs: 5}]}
"""

METER = """\
  - id: {id}
    carrier: electricity
    level: 2
    process: kiln
    counter: e
    source:
      type: modbus
      bus: b1
      unit_id: {unit}
      registers:
        - {{quantity: e, address: 0, type: uint32, scale: 0.1, unit: {unit_name}, kind: counter}}
        - {{quantity: p, address: 2, type: float32, unit: kW}}
"""


def plant_text(*meters: str) -> str:
    return GOOD_HEAD + "meters:\n" + "".join(meters)


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_plant(text, "plant.yaml")
    return str(info.value).splitlines()


def test_example_plant_is_valid() -> None:
    plant = load_plant(example_plant_path())
    assert isinstance(plant, PlantConfig)
    assert {m.id for m in plant.meters} >= {"incoming", "coal_feeder", "clinker_scale", "gas_main"}
    assert plant.enterprise.tz.key == "Asia/Shanghai"


def test_minimal_plant_is_valid() -> None:
    plant = parse_plant(plant_text(METER.format(id="m1", unit=1, unit_name="kWh")))
    assert plant.meter("m1").counter == "e"


def test_unknown_key_names_file_line_and_path() -> None:
    text = plant_text(METER.format(id="m1", unit=1, unit_name="kWh")).replace("    level: 2\n", "    levle: 2\n")
    (line,) = issues(text)
    assert line.startswith("plant.yaml:")
    assert "meters[0].levle: unknown key" in line
    lineno = int(line.split(":")[1])
    assert text.splitlines()[lineno - 1].strip().startswith("levle")


def test_wrong_unit_is_named() -> None:
    (line,) = issues(plant_text(METER.format(id="m1", unit=1, unit_name="kWhh")))
    assert "meters[0].source.registers[0].unit" in line
    assert "unknown unit 'kWhh'" in line


def test_unit_that_does_not_fit_the_carrier() -> None:
    (line,) = issues(plant_text(METER.format(id="m1", unit=1, unit_name="m3")))
    assert "meters[0].counter" in line and "wrong unit 'm3' for carrier 'electricity'" in line


def test_duplicate_meter_id_and_unit_id() -> None:
    lines = issues(
        plant_text(METER.format(id="m1", unit=1, unit_name="kWh"), METER.format(id="m1", unit=1, unit_name="kWh"))
    )
    assert any("meters[1].id: duplicate meter id 'm1' (first at meters[0])" in x for x in lines)
    assert any("meters[1].source.unit_id: unit id 1 on bus 'b1' is already used by meters[0]" in x for x in lines)


def test_register_count_that_does_not_fit_the_type() -> None:
    text = plant_text(METER.format(id="m1", unit=1, unit_name="kWh")).replace(
        "type: float32, unit: kW", "type: float32, count: 1, unit: kW"
    )
    (line,) = issues(text)
    assert "meters[0].source.registers[1].count: count 1 does not fit type float32" in line


def test_overlapping_registers_and_dangling_references() -> None:
    text = plant_text(METER.format(id="m1", unit=1, unit_name="kWh")).replace("address: 2", "address: 1")
    text = text.replace("process: kiln", "process: klin").replace("bus: b1", "bus: b9")
    lines = issues(text)
    assert any("meters[0].process: unknown process 'klin'" in x for x in lines)
    assert any("meters[0].source.bus: unknown bus 'b9'" in x for x in lines)
    assert any("holding register 1 overlaps" in x for x in lines)


def test_timeout_longer_than_poll_interval() -> None:
    text = plant_text(METER.format(id="m1", unit=1, unit_name="kWh")).replace("timeout_ms: 200", "timeout_ms: 3000")
    (line,) = issues(text)
    assert "timeout_ms 3000 × 2 tries is not shorter than poll group 'default' interval 5.0 s" in line


def test_yaml_syntax_error_has_a_line() -> None:
    (line,) = issues(GOOD_HEAD + "meters: [\n  - id: x\n")
    assert line.startswith("plant.yaml:") and "not valid YAML" in line


def test_uscc_check_character() -> None:
    assert uscc_is_valid("91530102MA6K7LQ8RH")
    assert not uscc_is_valid("91530102MA6K7LQ8RX")
    assert not uscc_is_valid("91530102MA6K7LQ8R")  # 17 characters
    (line,) = issues(GOOD_HEAD.replace("8RH", "8RX") + "meters: []\n")
    assert "enterprise.uscc" in line and "check failed" in line


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_plant(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value) and "cannot read file" in str(info.value)


def test_cli_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(example_plant_path())]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(plant_text(METER.format(id="m1", unit=1, unit_name="kWhh")), encoding="utf-8")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:" in err and "meters[0].source.registers[0].unit" in err


def test_cli_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("validate", "demo", "simulate", "gateway", "processor", "run"):
        assert f"    {cmd}" in out
