"""``energymon`` help and error lines are Chinese first, English beside, and wrap by terminal columns."""

from __future__ import annotations

import argparse
import unicodedata
from pathlib import Path

import pytest

from energymon.cli import _HelpFormatter, build_parser, main

#: Commands energy managers and regulators use: every option of theirs has Chinese-first help.
MANAGER_COMMANDS = ("report", "alerts", "uplink", "serve", "validate", "history", "probe", "schema")


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser] | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _chinese_first(text: str | None) -> bool:
    return text is not None and text != "" and unicodedata.east_asian_width(text[0]) in "WF"


def _columns(line: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


def _all_parsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(parser.prog, parser)]
    sub = _subparsers(parser)
    for child in (sub.choices.values() if sub else ()):
        found += _all_parsers(child)
    return found


def test_every_command_and_the_programme_describe_themselves_in_chinese_first() -> None:
    parser = build_parser()
    assert _chinese_first(parser.description)
    sub = _subparsers(parser)
    assert sub is not None
    for action in sub._choices_actions:
        text = action.help or ""
        assert _chinese_first(text), action.dest
        assert "(" in text or "；" in text, f"{action.dest}: no English beside the Chinese"


@pytest.mark.parametrize("command", MANAGER_COMMANDS)
def test_every_option_of_a_managers_command_is_chinese_first(command: str) -> None:
    sub = _subparsers(build_parser())
    assert sub is not None
    for prog, parser in _all_parsers(sub.choices[command]):
        child = _subparsers(parser)
        for action in child._choices_actions if child else ():
            assert _chinese_first(action.help), f"{prog} {action.dest}"
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert _chinese_first(action.help), f"{prog} {action.option_strings or action.dest}"


@pytest.mark.parametrize("width", [50, 80, 120])
def test_help_wraps_by_terminal_columns(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Chinese character takes two columns; lines break between Chinese characters, not only at spaces."""
    monkeypatch.setenv("COLUMNS", str(width))
    for prog, parser in _all_parsers(build_parser()):
        text = parser.format_help()
        body = text.split("\n\n", 1)[1]  # after the usage, which argparse lays out itself
        for line in body.splitlines():
            if " " not in line.strip():  # a single unbreakable word may be wider
                continue
            assert _columns(line) <= width, f"{prog}: {line!r}"


def test_wrapping_keeps_every_character_and_no_line_starts_with_a_comma() -> None:
    text = "报表：按读数重算某一时段（日、月、年、区间）的综合能耗，输出 JSON、CSV (recompute a period)"
    lines = _HelpFormatter("energymon")._split_lines(text, 16)
    assert len(lines) > 3
    assert all(_columns(line) <= 16 for line in lines)
    assert not any(line[0] in "，、；：）" for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")


def test_invalid_configuration_is_reported_chinese_first_with_the_file(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "plant.yaml"
    bad.write_text("enterprise: [\n", encoding="utf-8")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("错误：配置无效 (error: invalid configuration)\n")
    assert str(bad) in err and "Traceback" not in err
