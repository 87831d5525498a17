"""End to end on real services: simulated Modbus TCP meters → Modbus collector → gateway → Mosquitto (QoS 1)
→ processor → VictoriaMetrics (influxdb-client write API) → threshold alert → webhook.

Everything the gateway published is captured by an independent MQTT subscriber and compared with what
VictoriaMetrics holds afterwards: exactly the same readings, no more, no fewer.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import paho.mqtt.client as mqtt
import pytest
from capture import ReadingsCapture
from paho.mqtt.enums import CallbackAPIVersion
from plants import modbus_plant
from prometheus_client import CollectorRegistry

from energymon.clock import ScaledClock
from energymon.config import PlantConfig, parse_plant
from energymon.metrics import PipelineMetrics
from energymon.runtime import ProcessorService, build_gateway
from energymon.schema import decode_batch
from energymon.simulators.plant import run_simulator
from energymon.topics import readings_topic

pytestmark = pytest.mark.integration

USCC = "91530102MA6K7LQ8RH"

def plant_text(modbus_port: int, mqtt_url: str, vm_url: str, hook_url: str) -> str:
    """Two power meters and the clinker scale, the clinker product, a VictoriaMetrics store and a webhook alert."""
    return modbus_plant(
        name="测试水泥厂", gateway="gw-test", modbus_port=modbus_port, mqtt_url=mqtt_url, uscc=USCC,
        meters=[("kiln_drive", 3, "kiln"), ("raw_mill", 2, "raw_meal")], clinker_scale=("clinker_scale", 11, "kiln"),
        poll_s=5,
        tail=f"""\
products:
  - {{id: clinker, unit: t, output: {{meter: clinker_scale, quantity: mass_total}}, indicator: cement_clinker,
     boundary: {{processes: [kiln, raw_meal]}}}}
processor:
  store: {{type: influxdb, url: "{vm_url}", org: test, bucket: test}}
alerts:
  rules:
    - {{kind: threshold, id: kiln_power_high, meter: kiln_drive, quantity: power_active, above: 1, for_secs: 0,
       severity: critical, notifiers: [hook], summary: kiln drive power above 1 kW}}
  notifiers:
    - {{type: webhook, id: hook, url: "{hook_url}", max_retries: 3}}
""",
    )



class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts"
    server.shutdown()
    server.server_close()


async def run_pipeline(
    plant: PlantConfig, tmp: Path, polls: int, clock: ScaledClock, during: Callable[[], None] | None = None
) -> tuple[ProcessorService, Any]:
    metrics = PipelineMetrics(CollectorRegistry())
    service = ProcessorService(plant, clock=clock, metrics=metrics, data_dir=tmp / "proc")
    await service.start()
    gateway = build_gateway(plant, data_dir=tmp / "gw", clock=clock, metrics=metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    for _ in range(600):
        if during is not None and (
            metrics.registry.get_sample_value("energymon_received_total", {"stage": "processor"}) or 0
        ):
            during()  # the processor is subscribed and receiving
            during = None
        if gateway.polls >= polls and during is None:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task
    # wait until the processor wrote everything the gateway sent
    sent = metrics.registry.get_sample_value("energymon_sent_total", {"stage": "gateway"}) or 0
    for _ in range(200):
        got = metrics.registry.get_sample_value("energymon_received_total", {"stage": "processor"}) or 0
        if got >= sent:
            break
        await asyncio.sleep(0.05)
    await service.stop()
    return service, gateway


def test_end_to_end_on_real_services(mosquitto: Any, victoria_metrics: Any, webhook: str, tmp_path: Path) -> None:
    async def main() -> None:
        clock = ScaledClock(datetime.now(UTC), 20.0)
        draft = parse_plant(
            plant_text(1, mosquitto.url, victoria_metrics.url, webhook)
        )
        sim = await run_simulator(draft, clock, port_overrides={"plant_tcp": 0})
        try:
            plant = parse_plant(
                plant_text(sim.ports["plant_tcp"], mosquitto.url, victoria_metrics.url, webhook)
            )
            capture = ReadingsCapture(mosquitto.host, mosquitto.port, "capture")
            # a malformed payload in the middle of the flow is set aside; everything else still arrives
            bad = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bad-publisher")
            bad.connect(mosquitto.host, mosquitto.port)
            bad.loop_start()
            service, gateway = None, None
            try:

                def publish_bad() -> None:
                    bad.publish(readings_topic(USCC, "gw-test"), b'{"v": 1, "points": "oops"}', qos=1)

                service, gateway = await run_pipeline(plant, tmp_path, polls=6, clock=clock, during=publish_bad)
            finally:
                bad.loop_stop()
                bad.disconnect()
                capture.close()
        finally:
            await sim.stop()

        batches = [decode_batch(p) for p in capture.snapshot() if p.startswith(b'{"v":1,"enterprise"')]
        published = {(p.meter, p.quantity, p.ts_ms): p.value for b in batches for p in b.points}
        assert len(published) >= 6 * 6 - 6  # 3 meters × 2 quantities × ≥5 polls

        series = victoria_metrics.export('{__name__="reading_value"}')
        stored = {
            (s["metric"]["meter"], s["metric"]["quantity"], ts): v
            for s in series
            for ts, v in zip(s["timestamps"], s["values"], strict=True)
        }
        # exactly the published readings, no more, no fewer (VictoriaMetrics keeps 12 significant digits)
        assert stored.keys() == published.keys()
        for key, value in published.items():
            assert stored[key] == pytest.approx(value, rel=1e-11), key

        # interval energy in kgce: 当量值 0.1229 kgce/kWh for electricity
        energy = victoria_metrics.export('{__name__=~"energy_(consumed|kgce)"}')
        by_meter: dict[str, dict[str, float]] = {}
        for s in energy:
            field = s["metric"]["__name__"].removeprefix("energy_")
            by_meter.setdefault(s["metric"]["meter"], {}).setdefault(field, 0.0)
            by_meter[s["metric"]["meter"]][field] += sum(s["values"])
        for meter in ("kiln_drive", "raw_mill"):
            counter = sorted(
                (ts, v) for (m, q, ts), v in published.items() if m == meter and q == "energy_active_import"
            )
            assert by_meter[meter]["consumed"] == pytest.approx(counter[-1][1] - counter[0][1], rel=1e-9)
            assert by_meter[meter]["kgce"] == pytest.approx(by_meter[meter]["consumed"] * 0.1229, rel=1e-9)

        # the clinker indicator exists and is graded against 标杆 100 / 基准 117
        indicator = victoria_metrics.export('{__name__=~"indicator_(value|benchmark|baseline)",period="hour"}')
        names = {s["metric"]["__name__"] for s in indicator}
        assert names == {"indicator_value", "indicator_benchmark", "indicator_baseline"}
        assert {v for s in indicator if s["metric"]["__name__"] == "indicator_benchmark" for v in s["values"]} == {
            100.0
        }

        assert service is not None and gateway is not None
        assert [r.reason for r in service.processor.rejected][:1] == ["bad_payload"]
        assert "invalid batch" in service.processor.rejected[0].detail
        firing = [a for a in Hook.received if a["status"] == "firing"]
        assert len(firing) == 1 and firing[0]["rule_id"] == "kiln_power_high" and firing[0]["source"] == "kiln_drive"

    asyncio.run(main())


def test_unreachable_meter_is_unavailable_not_zero(
    mosquitto: Any, victoria_metrics: Any, webhook: str, tmp_path: Path
) -> None:
    async def main() -> None:
        clock = ScaledClock(datetime.now(UTC), 20.0)
        draft = parse_plant(
            plant_text(1, mosquitto.url, victoria_metrics.url, webhook)
        )
        sim = await run_simulator(draft, clock, port_overrides={"plant_tcp": 0})
        try:
            text = plant_text(sim.ports["plant_tcp"], mosquitto.url, victoria_metrics.url, webhook)
            # raw_mill now points at a unit id nobody answers for
            plant = parse_plant(text.replace("unit_id: 2,", "unit_id: 99,"))
            await run_pipeline(plant, tmp_path, polls=4, clock=clock)
        finally:
            await sim.stop()
        good = victoria_metrics.export('{__name__="reading_value",meter="kiln_drive"}')
        assert good and all(v > 0 for s in good for v in s["values"])
        assert victoria_metrics.export('{__name__="reading_value",meter="raw_mill"}') == []
        missing = victoria_metrics.export('{__name__="reading_unavailable_count",meter="raw_mill"}')
        assert missing and sum(len(s["values"]) for s in missing) >= 2 * 3

    asyncio.run(main())
