"""The README's command table lists every ``energymon`` command."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from energymon.cli import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_command_is_in_the_readme_table() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    table = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("| `energymon ")]
    listed = {m.group(1) for line in table if (m := re.match(r"\| `energymon ([a-z-]+)", line))}
    listed |= {m.group(1) for line in table if (m := re.match(r"\| `energymon gateway ([a-z-]+)", line))}
    missing = sorted(set(sub.choices) - listed)
    assert missing == [], f"commands missing from the README's command table: {missing}"
