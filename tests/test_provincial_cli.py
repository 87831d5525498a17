"""``energymon uplink`` and ``energymon simulate-platform`` entry points, run through their own parsers: the
simulator started standalone on a free loopback port, the uplink commands against it as an operator runs them."""

from __future__ import annotations

import argparse
import io
import json
import threading
from pathlib import Path

import pytest
from services import free_port
from test_provincial_uplink import PASSWORD, USCC, make_plant, ms, plant_text, write_readings

from energymon.gateway.provincial import cli as uplink_cli
from energymon.simulators import provincial_platform
from energymon.simulators.provincial_platform import ProvincialPlatform


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="energymon")
    sub = p.add_subparsers(dest="command", required=True)
    uplink_cli.add_parser(sub)
    provincial_platform.add_parser(sub)
    return p


def test_operator_workflow_against_the_standalone_simulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    started: list[ProvincialPlatform] = []
    ready = threading.Event()
    stop = threading.Event()
    sim_args = parser().parse_args(["simulate-platform", "--port", str(port), "--profile", "yunnan"])

    def serve() -> None:
        provincial_platform.main(sim_args, ready=lambda p: (started.append(p), ready.set()), stop=stop)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        url = f"http://127.0.0.1:{port}/platform/"
        config = tmp_path / "plant.yaml"
        config.write_text(plant_text(tmp_path, url), encoding="utf-8")
        write_readings(make_plant(tmp_path, url), ms(2026, 3, 1), ms(2026, 3, 18))
        monkeypatch.setenv("ENERGYMON_TEST_PROVINCIAL_PASSWORD", PASSWORD)
        now = ["--now", "2026-03-17T02:00:00"]

        def run(*argv: str) -> tuple[int, str]:
            out = io.StringIO()
            code = uplink_cli.main(parser().parse_args(["uplink", *argv, "--config", str(config), *now]), out)
            return code, out.getvalue()

        code, text = run("register")
        assert code == 0 and "upload slot 01:30:00" in text and "data_items 11" in text
        code, text = run("send", "--day", "2026-03-15")
        assert code == 0 and "acknowledged 292" in text  # 3 × 96 quarter hours and 4 day values
        code, text = run("status", "--from", "2026-03-15", "--to", "2026-03-16", "--json")
        rows = json.loads(text)
        day15 = [r for r in rows if r["date"] == "2026-03-15"]
        assert day15 and all(r["acknowledged"] == r["expected"] for r in day15)
        assert any(r["date"] == "2026-03-16" and r["missing"] > 0 for r in rows)
        assert code == 4  # something in the range is not acknowledged yet
        code, text = run("send", "--missing")
        assert code == 0
        code, text = run("status", "--from", "2026-03-05", "--to", "2026-03-16")
        assert code == 0, text
        assert "elec_total" in text and "15min" in text
        stored = started[0].stored(USCC)
        assert len([k for k in stored if k[1] == 1 and k[0] == "00-00-0000023400-80"]) == 12
        # without the password in the environment the command says which variable to set
        monkeypatch.delenv("ENERGYMON_TEST_PROVINCIAL_PASSWORD")
        err = io.StringIO()
        with pytest.MonkeyPatch.context() as m:
            m.setattr("sys.stderr", err)
            code, _ = run("status")
        assert code == 1 and "ENERGYMON_TEST_PROVINCIAL_PASSWORD" in err.getvalue()
    finally:
        stop.set()
        thread.join(30)
