"""``energymon probe``: one read of a meter or a bus against the simulated Modbus and DL/T 645 meters, showing
values, units, quality, raw registers or frames and the request plan, and a clear message for each failure."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from energymon.cli import main
from energymon.clock import ManualClock
from energymon.config import load_plant
from energymon.demo import example_plant_path
from energymon.simulators.dlt645_meter import Dlt645MeterServer, MeterFault
from energymon.simulators.modbus_server import ModbusPlantServer
from energymon.simulators.plant import PlantModel
from energymon.simulators.profiles import ExceptionReply, NoAnswer

ADDRESS = "123456789012"
START = datetime(2025, 1, 6, 10, tzinfo=UTC)


class Servers:
    """The example plant's Modbus bus and one DL/T 645 meter, served from a thread with its own event loop."""

    def __init__(self, plant_path: Path) -> None:
        self.plant = load_plant(plant_path)
        self.model = PlantModel.from_config(self.plant, ManualClock(START))
        self.dlt = Dlt645MeterServer([ADDRESS], lambda address, di, ts: {"00010000": 12345.67,
                                                                         "02010100": 229.8}[di])
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.modbus = ModbusPlantServer(self.model, self.plant)
        self.modbus_port = self.run(self.modbus.start())["plant_tcp"][1]
        self.dlt_port = self.run(self.dlt.start_tcp())[1]

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self.run(self.modbus.stop())
        self.run(self.dlt.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def setup(tmp_path: Path) -> Iterator[tuple[Path, Servers]]:
    servers = Servers(example_plant_path())
    doc = yaml.safe_load(example_plant_path().read_text(encoding="utf-8"))
    for bus in doc["buses"]:
        if bus["id"] == "plant_tcp":
            bus["port"] = servers.modbus_port
    doc["buses"] += [
        {"type": "dlt645_tcp", "id": "rs485", "host": "127.0.0.1", "port": servers.dlt_port, "timeout_ms": 300},
        {"type": "modbus_tcp", "id": "nowhere", "host": "127.0.0.1", "port": free_port(), "timeout_ms": 300},
    ]
    doc["meters"] += [
        {"id": "office", "name": "办公楼", "source": {
            "type": "dlt645", "bus": "rs485", "address": ADDRESS, "poll_group": "fast", "items": [
            {"quantity": "energy_active_import", "di": "00010000", "unit": "kWh", "kind": "counter"},
            {"quantity": "voltage_l1", "di": "02010100", "unit": "V"}]}},
        {"id": "lost", "source": {"type": "modbus", "bus": "nowhere", "unit_id": 1, "model": "demo_power_meter",
                                        "poll_group": "fast"}},
    ]
    path = tmp_path / "plant.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    try:
        yield path, servers
    finally:
        servers.close()


def probe(path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["probe", "--config", str(path), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_modbus_meter_shows_plan_raw_registers_values_units_and_quality(
        setup: tuple[Path, Servers], capsys: pytest.CaptureFixture[str]) -> None:
    path, servers = setup
    code, out, _ = probe(path, capsys, "--meter", "incoming", "--json")
    assert code == 0
    (result,) = json.loads(out)
    assert result["ok"] and result["target"] == "unit 1" and result["endpoint"].endswith(str(servers.modbus_port))
    regmap = servers.plant.register_map(servers.plant.meter("incoming").source)
    assert {v["quantity"] for v in result["values"]} == {r.quantity for r in regmap.registers}
    assert all(step["ok"] and step["raw"] for step in result["plan"])
    planned = {q for step in result["plan"] for q in step["quantities"]}
    assert planned == {r.quantity for r in regmap.registers}
    ts = int(START.timestamp() * 1000)
    for v in result["values"]:
        assert v["quality"] == "good" and v["unit"] == next(r.unit for r in regmap.registers
                                                            if r.quantity == v["quantity"])
        assert len(v["raw"].split()) >= 1
        shown = servers.model.value("incoming", v["quantity"], ts)
        assert v["value"] == pytest.approx(shown, rel=1e-3, abs=0.01)
    code, text, _ = probe(path, capsys, "--meter", "incoming")
    assert code == 0 and "request plan" in text and "FC03" in text and "answered in" in text and "OK" in text


def test_a_dlt645_meter_shows_the_frames(setup: tuple[Path, Servers], capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = setup
    code, out, _ = probe(path, capsys, "--meter", "office", "--json")
    (result,) = json.loads(out)
    assert code == 0 and result["ok"] and result["target"] == f"address {ADDRESS}"
    values = {v["quantity"]: v for v in result["values"]}
    assert values["energy_active_import"]["value"] == pytest.approx(12345.67)
    assert values["voltage_l1"]["value"] == pytest.approx(229.8) and values["voltage_l1"]["unit"] == "V"
    assert "68 12 90 78 56 34 12 68 91" in values["energy_active_import"]["raw"]  # the reply frame, hex
    assert "FE FE FE FE 68 12 90 78 56 34 12 68 11" in result["plan"][0]["sent"]  # the request frame


def test_every_failure_has_a_clear_message(setup: tuple[Path, Servers], capsys: pytest.CaptureFixture[str]) -> None:
    path, servers = setup
    ts = int(START.timestamp() * 1000)
    code, _, err = probe(path, capsys, "--meter", "nope")
    assert code == 2 and "no meter 'nope'" in err and "incoming" in err
    code, _, err = probe(path, capsys, "--bus", "nobus")
    assert code == 2 and "no bus 'nobus'" in err
    code, out, _ = probe(path, capsys, "--meter", "lost")
    assert code == 1 and "cannot connect to 127.0.0.1:" in out and "FAILED" in out
    servers.model.inject("raw_mill", ExceptionReply(start_ms=ts - 1000, code=2))
    code, out, _ = probe(path, capsys, "--meter", "raw_mill")
    assert code == 1 and "exception 2 (illegal data address)" in out
    servers.model.inject("kiln_drive", NoAnswer(start_ms=ts - 1000))
    code, out, _ = probe(path, capsys, "--meter", "kiln_drive")
    assert code == 1 and "no answer within 500 ms" in out and "unit id (3)" in out
    servers.dlt.set_fault(ADDRESS, MeterFault("abnormal", error=0x02))
    code, out, _ = probe(path, capsys, "--meter", "office")
    assert code == 1 and "no requested data" in out
    servers.dlt.set_fault(ADDRESS, MeterFault("no_answer"))
    code, out, _ = probe(path, capsys, "--meter", "office")
    assert code == 1 and "no answer within 300 ms" in out and "address (123456789012)" in out
    code, _, err = probe(path, capsys, "--bus", "field_mqtt")
    assert code == 2 and "MQTT" in err


def test_a_bus_probes_each_of_its_meters(setup: tuple[Path, Servers], capsys: pytest.CaptureFixture[str]) -> None:
    path, servers = setup
    code, out, _ = probe(path, capsys, "--bus", "plant_tcp", "--json")
    results = json.loads(out)
    expected = [m.id for m in servers.plant.meters if m.source.bus == "plant_tcp"]
    assert code == 0 and [r["meter"] for r in results] == expected and all(r["ok"] for r in results)
