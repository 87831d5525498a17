"""`energymon demo` runs the whole simulated plant with no external server, shows real numbers that change,
and stops cleanly on Ctrl-C. The tests wait for what the demo shows, never for a number of real seconds."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, cast

import pytest

CMD = [sys.executable, "-m", "energymon.cli", "demo", "--speed", "600", "--refresh", "1", "--web-port", "0"]
#: a bound for a hung demo, not a speed requirement: the conditions below are met in seconds on an idle machine
PATIENCE_S = 300
GRADED = re.compile(r"水泥熟料 单位产品综合能耗 \(hour from \d\d:\d\d\): ([\d.]+) kgce/t")


def kgce_totals(out: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"total\s+([\d,]+\.\d) kgce", out)]


def overview(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "api/overview", timeout=30) as answer:
        return cast(dict[str, Any], json.load(answer))


def test_demo_runs_and_numbers_change(tmp_path: Path) -> None:
    """The demo at ×600 runs until it has shown a graded hour (the simulated time it needs, whatever the machine's
    speed), every meter live on its page, nothing set aside as clock-skewed; then Ctrl-C stops it cleanly."""
    log = tmp_path / "demo.log"  # a file, not a pipe: the INFO log must never block the demo
    with log.open("w", encoding="utf-8") as errors:
        proc = subprocess.Popen(
            [*CMD[:3], "--log-level", "INFO", *CMD[3:], "--data-dir", str(tmp_path / "data")], stdout=subprocess.PIPE,
            stderr=errors, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    assert proc.stdout is not None
    out = ""
    url = None
    live: dict[str, Any] | None = None
    deadline = time.monotonic() + PATIENCE_S
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out += line
            if url is None and (found := re.search(r"live page: (http://127\.0\.0\.1:\d+/)", line)):
                url = found.group(1)
            if url is not None and live is None and "readings/s" in line:
                quality = overview(url)["quality"]
                if quality["meters_ok"] == quality["meters_total"]:
                    live = quality
            if live is not None and GRADED.search(out) and len(kgce_totals(out)) >= 4:
                break
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=PATIENCE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out += rest
    err = log.read_text(encoding="utf-8")
    assert proc.returncode == 0, err[-3000:]
    assert "demo stopped cleanly" in out
    assert url is not None  # a free port, printed
    assert live is not None and not live["silent"] and not live["unavailable"], out[-3000:]
    totals = kgce_totals(out)
    assert len(totals) >= 4 and totals[-1] > totals[0] > 0  # standard coal accumulates
    for carrier in ("electricity", "raw_coal", "natural_gas"):
        assert re.search(rf"{carrier}\s+[\d,]+\.\d", out), carrier
    m = GRADED.findall(out)
    assert m and 100 < float(m[-1]) < 117  # a complete hour: the simulated line sits between 标杆 and 基准
    assert "标杆 100 · 基准 117" in out
    # the running hour is an estimate, shown without a grade
    assert "暂估 provisional" in out and "超过限额" not in out
    assert re.search(r"readings/s [\d,]+\.\d", out)
    assert (tmp_path / "data" / "energymon-demo.sqlite").exists()
    # at 600× every reading reaches the outbox within the (real-time) clock tolerance: none set aside
    assert "set aside in the quarantine" not in err + out
    assert 'reason="clock_skew"' not in err


def test_demo_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*CMD, "--data-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + PATIENCE_S
    seen = ""
    while "readings/s" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    assert "readings/s" in seen
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=PATIENCE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("demo did not stop after SIGINT")
    assert proc.returncode == 0, err
    assert "demo stopped cleanly" in out
    assert "Traceback" not in err
