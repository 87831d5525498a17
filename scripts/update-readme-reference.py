"""Rewrite the config reference embedded in README.md from the models (``make docs``)."""

from __future__ import annotations

from pathlib import Path

from energymon.config_reference import render

START, END = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
readme = Path(__file__).resolve().parent.parent / "README.md"
text = readme.read_text(encoding="utf-8")
head, rest = text.split(START, 1)
tail = rest.split(END, 1)[1]
readme.write_text(head + START + render() + END + tail, encoding="utf-8")
