"""The alert stage inside the processor service: a restart while an alert is firing does not notify it again,
the resolution after the restart is notified exactly once, and the service ticks the engine (offline rule)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry
from test_webhook import HookServer

from energymon.alerts.state import AlertStore
from energymon.clock import WallClock
from energymon.config import PlantConfig, parse_plant
from energymon.metrics import PipelineMetrics
from energymon.runtime import ProcessorService
from energymon.schema import Batch, Point, encode_batch
from energymon.topics import readings_topic
from energymon.transport import InProcTransport

USCC = "91530102MA6K7LQ8RH"


def plant_text(bus: str, hook_url: str, store: Path) -> str:
    return f"""
version: 1
enterprise: {{uscc: {USCC}, name: 测试, industry_code: C3011}}
buses: [{{type: modbus_tcp, id: b, host: 127.0.0.1, port: 502, timeout_ms: 50, retries: 0}}]
meters:
  - {{id: kiln_drive, source: {{type: modbus, bus: b, poll_group: fast,
     registers: [{{quantity: power_active, address: 0, unit: kW}}]}}}}
  - {{id: spare, source: {{type: modbus, bus: b, unit_id: 2, poll_group: fast,
     registers: [{{quantity: power_active, address: 0, unit: kW}}]}}}}
gateway: {{id: gw1, poll_groups: [{{id: fast, interval_secs: 0.2}}]}}
uplink: {{url: "inproc://{bus}"}}
processor: {{store: {{type: sqlite, path: "{store}"}}}}
alerts:
  rules:
    - {{kind: threshold, id: power_high, meter: kiln_drive, quantity: power_active, above: 100}}
    - {{kind: offline, id: spare_offline, ids: [spare], intervals: 5, escalate: null}}
  notifiers:
    - {{type: webhook, id: hook, url: "{hook_url}", max_retries: 3}}
"""


async def publish(bus: str, seq: int, value: float, meter: str = "kiln_drive") -> None:
    pub = InProcTransport(bus, client_id="test-gw")
    await pub.connect()
    batch = Batch(enterprise=USCC, gateway="gw1", seq=seq, sent_ms=WallClock().now_ms(), points=[
        Point(meter=meter, quantity="power_active", value=value, unit="kW", ts_ms=WallClock().now_ms())])
    await pub.publish(readings_topic(USCC, "gw1"), encode_batch(batch))
    await pub.drain()
    await pub.close()


def service(plant: PlantConfig, data_dir: Path, bus: str) -> ProcessorService:
    return ProcessorService(plant, clock=WallClock(), metrics=PipelineMetrics(CollectorRegistry()), data_dir=data_dir,
                            transport=InProcTransport(bus, client_id="proc"), flush_interval_ms=20,
                            alert_tick_ms=50)


def test_restart_while_firing_then_resolution_notified_once(tmp_path: Path) -> None:
    hook = HookServer().start()
    bus = f"alerts-{uuid.uuid4().hex}"
    plant = parse_plant(plant_text(bus, hook.url, tmp_path / "store.sqlite"))
    data_dir = tmp_path / "proc"

    async def main() -> None:
        first = service(plant, data_dir, bus)
        await first.start()
        await publish(bus, 1, 150.0)
        await asyncio.to_thread(hook.wait_for, 1)
        await first.stop()

        second = service(plant, data_dir, bus)
        await second.start()
        await publish(bus, 2, 160.0)
        await asyncio.sleep(0.5)
        assert len(hook.received) == 1  # restored as firing: not notified again
        await publish(bus, 3, 50.0)
        await asyncio.to_thread(hook.wait_for, 2)
        await publish(bus, 4, 40.0)
        await asyncio.sleep(0.3)
        await second.stop()

    try:
        asyncio.run(main())
        assert [(r.json()["id"], r.json()["status"]) for r in hook.received] == [
            ("power_high:kiln_drive", "firing"), ("power_high:kiln_drive", "resolved")]
        store = AlertStore(data_dir / "alerts.sqlite")
        assert [h.event for h in store.history(rule_id="power_high")] == ["firing", "resolved"]
        store.close()
    finally:
        hook.stop()


def test_the_service_ticks_the_engine(tmp_path: Path) -> None:
    hook = HookServer().start()
    bus = f"alerts-{uuid.uuid4().hex}"
    plant = parse_plant(plant_text(bus, hook.url, tmp_path / "store.sqlite"))

    async def main() -> None:
        svc = service(plant, tmp_path / "proc", bus)
        await svc.start()
        started = time.monotonic()
        await asyncio.to_thread(hook.wait_for, 1, 5.0)  # 5 × 0.2 s without data from 'spare'
        assert time.monotonic() - started >= 0.9
        await publish(bus, 1, 1.0, meter="spare")
        await asyncio.to_thread(hook.wait_for, 2, 5.0)
        await svc.stop()

    try:
        asyncio.run(main())
        assert [(r.json()["id"], r.json()["status"]) for r in hook.received] == [
            ("spare_offline:spare", "firing"), ("spare_offline:spare", "resolved")]
    finally:
        hook.stop()


