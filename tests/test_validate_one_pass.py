"""``energymon validate``: every problem of a file in one pass, sorted by line, with "did you mean" for misspelt
keys and ids; files that cannot be loaded safely (deep nesting, alias bombs, recursive aliases) get one clear
message instead of a traceback; duplicate keys, control characters, a negative counter scale and a directory as
the SQLite store are refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from plants import USCC

from energymon import cli
from energymon.config import parse_plant
from energymon.errors import ConfigError

MANY_PROBLEMS = f"""\
enterprise: {{uscc: {USCC}, name: 测试, industry_code: C3011}}
processes: [{{id: kiln}}]
register_maps:
  power:
    registers:
      - {{quantity: energy_active_import, address: 0, type: uint32, scale: -0.1, unit: kWh, kind: counter}}
      - {{quantity: power_active, address: 2, type: float32, unit: kW}}
  good:
    registers:
      - {{quantity: energy_active_import, address: 0, type: uint32, scale: 0.1, unit: kWh, kind: counter}}
buses:
  - {{type: modbus_tcp, id: plant_tcp, host: 127.0.0.1, port: 502, timout_ms: 300}}
  - {{type: modbus_tcp, id: line2, host: 127.0.0.1, port: 503}}
meters:
  - {{id: m1, carrier: electricity, process: kilm, counter: energy_active_import,
      source: {{type: modbus, bus: plant_tpc, unit_id: 1, model: good, poll_group: fast}}}}
  - {{id: m2, name: "bad\\0name", carrier: electricity, process: kiln, counter: energy_active_import,
      source: {{type: modbus, bus: line2, unit_id: 2, model: good, poll_group: fast}}}}
  - {{id: m3, carrier: electricity, process: kiln, counter: energy_active_import,
      source: {{type: modbus, bus: line2, unit_id: 3, model: good, poll_group: fsat}}}}
gateway: {{id: gw1, poll_groups: [{{id: fast, interval_secs: 10}}]}}
processor:
  store: {{type: sqlite, path: /}}
  share_grop: x
"""


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as exc:
        parse_plant(text, "plant.yaml")
    return [(i.line, i.path, i.message) for i in exc.value.issues]


def test_every_problem_in_one_pass_sorted_by_line() -> None:
    got = problems(MANY_PROBLEMS)
    lines = [line for line, _, _ in got]
    assert lines == sorted(lines)  # type: ignore[type-var]
    text = "\n".join(f"{line}: {path}: {msg}" for line, path, msg in got)
    expected = [
        r"6: register_maps.power.registers\[0\]: a counter's scale must be positive",
        r"12: buses\[0\].timout_ms: unknown key; did you mean 'timeout_ms'\?",
        r"15: meters\[0\].process: unknown process 'kilm'; did you mean 'kiln'\?",  # cross-reference ...
        r"16: meters\[0\].source.bus: unknown bus 'plant_tpc'; did you mean 'plant_tcp'\?",  # ... to a bad bus
        r"17: meters\[1\].name: contains the control character U\+0000",
        r"20: meters\[2\].source.poll_group: unknown poll group 'fsat'; did you mean 'fast'\?",
        r"23: processor.store.path: path '/' is a directory",
        r"24: processor.share_grop: unknown key; did you mean 'share_group'\?",
    ]
    for pattern in expected:
        assert re.search(pattern, text), f"{pattern!r} not in\n{text}"
    assert len(got) == len(expected), text  # nothing reported twice, no knock-on errors of removed parts


def test_duplicate_keys_name_both_lines() -> None:
    text = f"enterprise:\n  uscc: {USCC}\n  name: a\n  industry_code: C3011\n  name: b\n"
    assert problems(text) == [(5, "enterprise.name", "key 'name' appears twice (lines 3 and 5): keep one")]


@pytest.mark.parametrize(("text", "words"), [
    ("a: " + "[" * 5000 + "]" * 5000, "nest"),  # libyaml: "exceeded maximum nesting depth"
    ("enterprise:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 5000)), "nest"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True)),
     "expands to more than"),
    ("a: &a [*a]\n", "refers to its own anchor"),
    ("enterprise: [unclosed\n", "not valid YAML"),
    ("- a list\n", "a plant file is a YAML mapping"),
])
def test_files_that_cannot_be_loaded_safely(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, words: str
) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text(text, encoding="utf-8")
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert words in err and str(path) in err and "Traceback" not in err


@pytest.mark.parametrize(("field", "kind", "ok"), [
    ("scale: -1", "counter", False), ("scale: 0", "gauge", False), ("scale: .nan", "gauge", False),
    ("scale: -1", "gauge", True), ("scale: 2", "counter", True),
])
def test_scales_of_every_source(field: str, kind: str, ok: bool) -> None:
    head = f"enterprise: {{uscc: {USCC}, name: x, industry_code: C3011}}\n"
    sources = [
        "buses: [{type: mqtt, id: b, url: 'mqtt://127.0.0.1'}]\n"
        "meters: [{id: m, source: {type: mqtt_json, bus: b, topic: t,\n"
        f"  fields: [{{path: v, quantity: q, unit: kWh, kind: {kind}, {field}}}]}}}}]\n",
        "buses: [{type: dlt645_tcp, id: b, host: 127.0.0.1, port: 1}]\n"
        "gateway: {poll_groups: [{id: g, interval_secs: 10}]}\n"
        "meters: [{id: m, source: {type: dlt645, bus: b, address: '000000000001', poll_group: g,\n"
        f"  items: [{{quantity: q, di: '00010000', unit: kWh, kind: {kind}, {field}}}]}}}}]\n",
    ]
    for source in sources:
        if ok:
            parse_plant(head + source, "p.yaml")
        else:
            assert any("scale" in msg for _, _, msg in problems(head + source)), source


def test_validate_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MANY_PROBLEMS, encoding="utf-8")
    assert cli.main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:6:" in err and f"{bad}:24:" in err
    assert cli.main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x00\x01\x02\xff")
    assert cli.main(["validate", str(binary)]) == 2
    assert "binary.yaml" in capsys.readouterr().err
