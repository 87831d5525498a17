"""`energymon simulate` serves a plant file's meters on the ports the file names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pymodbus.client import ModbusTcpClient
from services import free_port

from energymon.demo import example_plant_path


def test_simulate_serves_the_plant(tmp_path: Path) -> None:
    port = free_port()
    plant = tmp_path / "plant.yaml"
    plant.write_text(example_plant_path().read_text(encoding="utf-8").replace("port: 15020", f"port: {port}"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "energymon.cli", "simulate", "--config", str(plant)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"bus plant_tcp: serving on 127.0.0.1:{port}"
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=30)  # generous: a loaded machine
        assert client.connect()
        reply = client.read_holding_registers(0, count=10, device_id=1)  # the incoming meter
        assert not reply.isError()
        power = client.convert_from_registers(reply.registers[2:4], client.DATATYPE.FLOAT32)
        assert isinstance(power, float) and 1000 < power < 40000  # kW of a 5,000 t/d line
        client.close()
    finally:
        proc.terminate()
        assert proc.wait(120) == 0
