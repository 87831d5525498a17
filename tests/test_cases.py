"""Golden cases: each ``tests/cases/<name>/`` holds a plant file, readings, the expected report numbers and a
README that works them out by hand. One test runs every case through the report path (CSV readings →
recompute → report JSON) and compares every value of ``expected.json`` with the report.

``expected.json``::

    {"request": {"kind": "month", "value": "2026-03"},      # day | month | year | range (+ "to")
     "report": { ...a subset of the report JSON... }}

Numbers are compared at the decimals the report keeps (``energymon.processors.report.DECIMALS``): the report
rounds when it writes, and the expected values are written with the same decimals. Strings, booleans, nulls
and lists are compared exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from energymon.config import load_plant
from energymon.processors.report import ReportPeriod, load_readings_csv, render_csv, render_html, run_report

CASES = Path(__file__).resolve().parent / "cases"
NAMES = sorted(p.name for p in CASES.iterdir() if p.is_dir() and (p / "expected.json").exists())


def compare(expected: Any, actual: Any, path: str, errors: list[str]) -> None:
    """Record every difference between ``expected`` and the same place in ``actual``."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            errors.append(f"{path}: expected a mapping, got {actual!r}")
            return
        for key, value in expected.items():
            if key not in actual:
                errors.append(f"{path}.{key}: missing from the report")
            else:
                compare(value, actual[key], f"{path}.{key}", errors)
    elif isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            errors.append(f"{path}: expected {len(expected)} items, got {actual!r}")
            return
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            compare(e, a, f"{path}[{i}]", errors)
    elif isinstance(expected, bool) or expected is None or isinstance(expected, str):
        if expected != actual:
            errors.append(f"{path}: expected {expected!r}, got {actual!r}")
    elif isinstance(expected, int | float):
        if not isinstance(actual, int | float) or isinstance(actual, bool) or not math.isclose(
            float(expected), float(actual), rel_tol=0, abs_tol=1e-9
        ):
            errors.append(f"{path}: expected {expected!r}, got {actual!r}")
    else:  # pragma: no cover - JSON has no other types
        errors.append(f"{path}: unsupported expected value {expected!r}")


@pytest.mark.parametrize("name", NAMES)
def test_golden_case(name: str) -> None:
    case = CASES / name
    for required in ("plant.yaml", "readings.csv", "expected.json", "README.md"):
        assert (case / required).exists(), f"{name}: {required} missing"
    spec = json.loads((case / "expected.json").read_text(encoding="utf-8"))
    request = spec["request"]
    period = ReportPeriod.parse(request["kind"], request["value"], request.get("to"))
    plant = load_plant(case / "plant.yaml")
    _rc, report = run_report(plant, period, load_readings_csv(case / "readings.csv", plant))
    report = json.loads(json.dumps(report, ensure_ascii=False, default=str))  # exactly what report.json holds
    errors: list[str] = []
    compare(spec["report"], report, "report", errors)
    assert not errors, f"{name}:\n  " + "\n  ".join(errors)
    assert render_html(report).startswith("<!doctype html>")
    assert render_csv(report).startswith("section,item,field,value")


def test_there_are_at_least_ten_cases() -> None:
    assert len(NAMES) >= 10, NAMES
