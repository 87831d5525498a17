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


def test_meters_may_share_a_unit_id_where_their_registers_do_not_overlap() -> None:
    feeder2 = METER.format(id="m2", unit=1, unit_name="kWh").replace("address: 0", "address: 10").replace(
        "address: 2", "address: 12")
    plant = parse_plant(plant_text(METER.format(id="m1", unit=1, unit_name="kWh"), feeder2))
    assert [m.source.unit_id for m in plant.meters] == [1, 1]  # type: ignore[union-attr]
    # one register in common is refused, naming the meter and the register
    clash = feeder2.replace("address: 12", "address: 1")
    lines = issues(plant_text(METER.format(id="m1", unit=1, unit_name="kWh"), clash))
    assert any("meters[1].source.unit_id: unit id 1 on bus 'b1' is already used by meters[0] (m1) for holding "
               "register 1" in x for x in lines), lines


def test_shared_unit_ids_compare_protocol_addresses_across_addressing() -> None:
    one_based = METER.format(id="m2", unit=1, unit_name="kWh").replace(
        "      registers:\n", "      addressing: one_based\n      registers:\n").replace(
        "address: 0", "address: 5").replace("address: 2", "address: 7")
    # one-based 5..8 are protocol 4..7: protocol register 4..5 is free, 6..7 is not (m1 has 0..3 only) -> fine
    parse_plant(plant_text(METER.format(id="m1", unit=1, unit_name="kWh"), one_based))
    clash = one_based.replace("address: 5", "address: 3").replace("address: 7", "address: 5")  # protocol 2..5
    lines = issues(plant_text(METER.format(id="m1", unit=1, unit_name="kWh"), clash))
    assert any("already used by meters[0] (m1) for holding register 3" in x for x in lines), lines


def test_the_bus_as_a_whole_must_read_its_meters_within_the_interval() -> None:
    # 200 ms × 2 tries fits 1 s for one meter; eight RTU meters at 1200 baud and a dropping one do not
    head = GOOD_HEAD.replace(
        "  - {type: modbus_tcp, id: b1, host: 127.0.0.1, port: 1502, timeout_ms: 200}",
        "  - {type: modbus_rtu, id: b1, device: /dev/ttyUSB0, baudrate: 1200, timeout_ms: 200}",
    ).replace("interval_secs: 5", "interval_secs: 1")
    meters = "".join(METER.format(id=f"m{u}", unit=u, unit_name="kWh") for u in range(1, 9))
    with pytest.raises(ConfigError) as info:
        parse_plant(head + "meters:\n" + meters, "plant.yaml")
    (line,) = str(info.value).splitlines()
    assert "buses[0]: bus 'b1': its 8 meter(s) of poll group 'default' take about" in line
    assert "timeout_ms 200 × 2 tries" in line and "not shorter than the interval 1.0 s" in line
    # the same at 9600 baud fits
    parse_plant(head.replace("baudrate: 1200", "baudrate: 9600") + "meters:\n" + meters, "plant.yaml")


def test_polling_settings_per_bus_are_strict_and_have_defaults() -> None:
    plant = parse_plant(plant_text(METER.format(id="m1", unit=1, unit_name="kWh")))
    polling = plant.buses[0].polling  # type: ignore[union-attr]
    assert (polling.fail_threshold, polling.probe_interval_secs) == (3, 10.0)
    assert (polling.reconnect_backoff_first_secs, polling.reconnect_backoff_max_secs) == (1.0, 15.0)
    text = plant_text(METER.format(id="m1", unit=1, unit_name="kWh")).replace(
        "timeout_ms: 200}", "timeout_ms: 200, polling: {probe_interval_secs: 5, probe_every: 3}}")
    (line,) = issues(text)
    assert "buses[0].polling.probe_every: unknown key" in line
    text = plant_text(METER.format(id="m1", unit=1, unit_name="kWh")).replace(
        "timeout_ms: 200}",
        "timeout_ms: 200, polling: {reconnect_backoff_first_secs: 30, reconnect_backoff_max_secs: 10}}")
    (line,) = issues(text)
    assert "reconnect_backoff_first_secs must not exceed reconnect_backoff_max_secs" in line


def test_hole_filling_is_set_per_bus_and_overridden_per_meter() -> None:
    text = plant_text(METER.format(id="m1", unit=1, unit_name="kWh")).replace(
        "timeout_ms: 200}", "timeout_ms: 200, max_hole_registers: 0}").replace(
        "      unit_id: 1\n", "      unit_id: 1\n      max_hole_registers: 4\n")
    plant = parse_plant(text)
    assert plant.buses[0].max_hole_registers == 0  # type: ignore[union-attr]
    assert plant.meters[0].source.max_hole_registers == 4  # type: ignore[union-attr]
    (line,) = issues(text.replace("max_hole_registers: 0", "max_hole_registers: -1"))
    assert "buses[0].max_hole_registers" in line
