"""Scale-out on real services: simulated Modbus meters → one gateway (QoS 1) → Mosquitto → three processors on one
MQTT v5 shared subscription (``processor.share_group``) → VictoriaMetrics.

Mosquitto hands each batch to one member of the group in turn, so consecutive readings of a meter land on
different processors. The gateway computes each counter reading's interval at the edge, and every processor books
the intervals it gets without state of its own. Checked against an independent subscriber's copy of everything
the gateway published:

* every reading is in the store exactly once per (meter, quantity, time), none missing, none extra;
* every processor handled a share of the batches;
* the energy booked per meter is exactly the last counter reading minus the first: nothing lost, nothing
  doubled, and one energy row per counter reading after the first, at that reading's time;
* the same holds when one processor stops cleanly midway and comes back later (a rolling restart): the batches
  the broker kept for it in its session arrive then.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from capture import ReadingsCapture
from plants import modbus_plant
from prometheus_client import CollectorRegistry

from energymon.clock import ScaledClock
from energymon.config import PlantConfig, parse_plant
from energymon.metrics import PipelineMetrics
from energymon.runtime import ProcessorService, build_gateway, uplink_transport
from energymon.schema import decode_batch
from energymon.simulators.plant import run_simulator

pytestmark = pytest.mark.integration

USCC = "91530102MA6K7LQ8RH"
COUNTER_METERS = ("kiln_drive", "raw_mill", "coal_mill")


class Instance:
    """One processor of the share group: its own data directory, MQTT client id and self-metrics."""

    def __init__(self, plant: PlantConfig, tmp: Path, index: int, clock: ScaledClock) -> None:
        self.plant, self.clock, self.index = plant, clock, index
        self.data_dir = tmp / f"proc-{index}"
        self.metrics = PipelineMetrics(CollectorRegistry())
        self.service: ProcessorService | None = None
        self.edge_intervals = 0

    async def start(self) -> None:
        transport = uplink_transport(self.plant, client_id=f"energymon-proc-scale-{self.index}", clean_start=False,
                                     manual_ack=True)
        self.service = ProcessorService(self.plant, clock=self.clock, metrics=self.metrics, data_dir=self.data_dir,
                                        transport=transport)
        await self.service.start()

    async def stop(self) -> None:
        assert self.service is not None
        await self.service.stop()
        self.edge_intervals += self.service.processor.edge_intervals
        self.service = None

    def received(self) -> float:
        return self.metrics.registry.get_sample_value("energymon_received_total", {"stage": "processor"}) or 0.0

    def duplicates(self) -> float:
        return self.metrics.registry.get_sample_value(
            "energymon_dropped_total", {"stage": "processor", "reason": "duplicate_batch"}
        ) or 0.0


def test_three_processors_share_the_readings_nothing_lost_nothing_doubled(
    mosquitto: Any, victoria_metrics: Any, tmp_path: Path
) -> None:
    async def main() -> tuple[list[bytes], list[Instance]]:
        clock = ScaledClock(datetime.now(UTC), 20.0)
        def plant_text(modbus_port: int) -> str:
            return modbus_plant(
                name="扩展测试水泥厂", gateway="gw-scale", modbus_port=modbus_port, mqtt_url=mosquitto.url, uscc=USCC,
                meters=[("kiln_drive", 3, "kiln"), ("raw_mill", 2, "raw_meal"), ("coal_mill", 4, "kiln")], poll_s=5,
                tail="processor:\n  share_group: energy\n"
                     f'  store: {{type: influxdb, url: "{victoria_metrics.url}", org: test, bucket: test}}\n')

        sim = await run_simulator(parse_plant(plant_text(1)), clock, port_overrides={"plant_tcp": 0})
        capture = ReadingsCapture(mosquitto.host, mosquitto.port, "scale-out-capture")
        instances: list[Instance] = []
        try:
            plant = parse_plant(plant_text(sim.ports["plant_tcp"]))
            assert plant.processor.share_group == "energy"
            instances = [Instance(plant, tmp_path, i, clock) for i in range(3)]
            for inst in instances:
                await inst.start()
            gw_metrics = PipelineMetrics(CollectorRegistry())
            gateway = build_gateway(plant, data_dir=tmp_path / "gw", clock=clock, metrics=gw_metrics)
            stop = asyncio.Event()
            task = asyncio.create_task(gateway.run(stop))

            async def until_polls(n: int) -> None:
                for _ in range(1200):
                    if gateway.polls >= n or task.done():
                        break
                    await asyncio.sleep(0.05)
                assert gateway.polls >= n, "the gateway stopped polling"

            await until_polls(15)
            await instances[1].stop()  # cleanly, in the middle of the flow
            await until_polls(30)
            await instances[1].start()  # back: its session kept what the broker gave it meanwhile
            await until_polls(45)
            stop.set()
            await task
            sent = gw_metrics.registry.get_sample_value("energymon_sent_total", {"stage": "gateway"}) or 0.0
            assert sent > 0
            # wait until the group processed every point the gateway sent
            for _ in range(600):
                if sum(i.received() - i.duplicates() for i in instances) >= sent:
                    break
                await asyncio.sleep(0.05)
            for inst in instances:
                await inst.stop()
        finally:
            for inst in instances:
                if inst.service is not None:
                    await inst.service.stop()
            capture.close()
            await sim.stop()
        return capture.snapshot(), instances

    payloads, instances = asyncio.run(main())

    batches = {b.seq: b for b in (decode_batch(p) for p in payloads)}
    assert len(batches) >= 45
    published = {(p.meter, p.quantity, p.ts_ms): p for b in batches.values() for p in b.points}
    assert all(p.quality == "good" for p in published.values())

    # every instance handled a share; together they handled every batch (a few again after the clean stop: acks
    # of the rows flushed after the disconnect are not sent, and the broker redelivers those batches)
    shares = [i.received() for i in instances]
    assert all(s > 0 for s in shares), shares
    points_sent = sum(len(b.points) for b in batches.values())
    assert sum(i.received() - i.duplicates() for i in instances) >= points_sent

    # the store holds exactly the published readings, once each
    series = victoria_metrics.export('{__name__="reading_value"}')
    stored: dict[tuple[str, str, int], float] = {}
    for s in series:
        for ts, v in zip(s["timestamps"], s["values"], strict=True):
            key = (s["metric"]["meter"], s["metric"]["quantity"], ts)
            assert key not in stored, key
            stored[key] = v
    assert stored.keys() == published.keys()
    for key, point in published.items():
        assert point.value is not None
        assert stored[key] == pytest.approx(point.value, rel=1e-11), key

    # the energy per meter is exactly last - first counter reading, booked once per reading after the first
    consumed: dict[str, dict[int, float]] = defaultdict(dict)
    for s in victoria_metrics.export('{__name__="energy_consumed"}'):
        for ts, v in zip(s["timestamps"], s["values"], strict=True):
            assert ts not in consumed[s["metric"]["meter"]]
            consumed[s["metric"]["meter"]][ts] = v
    assert set(consumed) == set(COUNTER_METERS)
    for meter in COUNTER_METERS:
        counter = sorted((ts, p.value) for (m, q, ts), p in published.items()
                         if m == meter and q == "energy_active_import")
        assert len(counter) >= 45
        first, last = counter[0][1], counter[-1][1]
        assert first is not None and last is not None
        assert sorted(consumed[meter]) == [ts for ts, _ in counter[1:]]
        assert sum(consumed[meter].values()) == pytest.approx(last - first, rel=1e-9, abs=1e-6)
    assert sum(i.edge_intervals for i in instances) > 0  # booked as the edge computed them
