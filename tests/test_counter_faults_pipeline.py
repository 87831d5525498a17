"""Counter faults through the real pipeline: simulated Modbus TCP meters → Modbus collector → gateway (edge
intervals) → Mosquitto → processor (re-check, booking) → SQLite store → the counter_reset alert → webhook, and the
report recomputed from the stored readings.

The meters have a rollover point (uint32 × 0.1) and no ``max_rate_per_hour``, and read 70 % of their range: the
case where a single bad reading used to become a wrap of 30 % of the range. One meter reads 0.0 once: its energy
is exactly the counter's span, as if the 0.0 had never been read. The other is reset to 0 and counts on from
there: nothing is booked across the reset, the interval is flagged ``rebased``, the alert reaches the energy
manager and the report lists the reset.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from plants import modbus_plant
from prometheus_client import CollectorRegistry

from energymon.clock import ScaledClock
from energymon.config import PlantConfig, SqliteStoreConfig, parse_plant
from energymon.metrics import PipelineMetrics
from energymon.processors.report import ReportPeriod, load_readings_store, run_report
from energymon.processors.store import SqliteStore
from energymon.runtime import ProcessorService, build_gateway
from energymon.simulators.plant import MeterOverride, run_simulator
from energymon.simulators.profiles import CounterReset, Spike

pytestmark = pytest.mark.integration

COUNTER = "energy_active_import"
#: the register's rollover point (uint32 × 0.1 kWh); both counters start at 70 % of it, above the half where a
#: fall used to be taken as a wrap, below the top tenth where a wrap can be
WRAP = 2**32 * 0.1
START = {"kiln_drive": MeterOverride(counter_start=0.7 * WRAP), "raw_mill": MeterOverride(counter_start=0.7 * WRAP)}


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


def plant_text(modbus_port: int, mqtt_url: str, store: Path, hook_url: str) -> str:
    return modbus_plant(
        name="计数器故障厂", gateway="gw-faults", modbus_port=modbus_port, mqtt_url=mqtt_url,
        meters=[("kiln_drive", 3, "kiln"), ("raw_mill", 2, "raw_meal")], poll_s=5, max_rate_per_hour=None,
        tail=f"""\
processor:
  store: {{type: sqlite, path: "{store}"}}
alerts:
  rules:
    - {{kind: counter_reset, id: counter_reset, severity: warning, notifiers: [hook]}}
  notifiers:
    - {{type: webhook, id: hook, url: "{hook_url}", max_retries: 3}}
""",
    )


async def _until(condition: Any, what: str, timeout_s: float = 120.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _stored(store: SqliteStore, measurement: str, field: str, meter: str) -> list[tuple[int, float]]:
    return sorted((ts, v) for tags, ts, v in store.query(measurement, field, tags={"meter": meter}))


def test_a_zero_reading_changes_nothing_and_a_reset_books_nothing_across_it(
    mosquitto: Any, webhook: str, tmp_path: Path
) -> None:
    store_path = tmp_path / "store.sqlite"
    service: ProcessorService | None = None

    async def main() -> PlantConfig:
        nonlocal service
        draft = parse_plant(plant_text(1, mosquitto.url, store_path, webhook))
        clock = ScaledClock(datetime.now(UTC), 20.0)  # 5 s polls every 0.25 s of real time
        sim = await run_simulator(draft, clock, port_overrides={"plant_tcp": 0}, overrides=START)
        try:
            plant = parse_plant(plant_text(sim.ports["plant_tcp"], mosquitto.url, store_path, webhook))
            metrics = PipelineMetrics(CollectorRegistry())
            service = ProcessorService(plant, clock=clock, metrics=metrics, data_dir=tmp_path / "proc")
            await service.start()
            gateway = build_gateway(plant, data_dir=tmp_path / "gw", clock=clock, metrics=metrics)
            stop = asyncio.Event()
            task = asyncio.create_task(gateway.run(stop))
            processor = service.processor
            # a few intervals first, so each counter has a rate of its own (the learned bound)
            await _until(lambda: processor.edge_intervals >= 8, "the first booked intervals")
            polls = gateway.polls
            sim.model.inject("kiln_drive", Spike(clock.now_ms(), quantity=COUNTER, value=0.0))  # one read of 0.0
            sim.model.inject("raw_mill", CounterReset(clock.now_ms()))  # cleared to 0, counts on from there
            await _until(lambda: gateway.polls >= polls + 8, "eight polls after the faults")
            await _until(lambda: any(a.get("status") == "firing" for a in Hook.received), "the counter_reset alert")
            stop.set()
            await task
            sent = metrics.registry.get_sample_value("energymon_sent_total", {"stage": "gateway"}) or 0
            await _until(lambda: (metrics.registry.get_sample_value("energymon_received_total",
                                                                    {"stage": "processor"}) or 0) >= sent,
                         "the processor to take every batch")
            await service.stop()
            return plant
        finally:
            await sim.stop()

    plant = asyncio.run(main())
    assert service is not None
    assert service.processor.intervals_set_aside == 0  # the gateway's intervals passed the centre's re-check
    assert service.processor.counter_resets == 1

    with SqliteStore(SqliteStoreConfig(type="sqlite", path=store_path)) as store:
        # the meter that read 0.0 once: booked energy = the counter's span, the 0.0 ignored
        kiln_counter = sorted((ts, v) for tags, ts, v in store.query("reading", "value", tags={
            "meter": "kiln_drive", "quantity": COUNTER}))
        zeros = [ts for ts, v in kiln_counter if v == 0.0]
        assert len(zeros) == 1, "the simulated meter read 0.0 exactly once"
        good = [(ts, v) for ts, v in kiln_counter if v != 0.0]
        assert good[0][1] > 0.69 * WRAP
        assert all(b[1] >= a[1] for a, b in itertools.pairwise(good))
        kiln_booked = sum(v for _, v in _stored(store, "energy", "consumed", "kiln_drive"))
        assert kiln_booked == pytest.approx(good[-1][1] - good[0][1], rel=1e-9)
        assert not _stored(store, "energy", "flag_rollover", "kiln_drive")

        # the meter reset to 0: what it counted before and after, nothing across the reset
        raw = sorted((ts, v) for tags, ts, v in store.query("reading", "value", tags={
            "meter": "raw_mill", "quantity": COUNTER}))
        drop = next(i for i in range(1, len(raw)) if raw[i][1] < raw[i - 1][1])
        before, after = raw[:drop], raw[drop:]
        assert len(after) >= 3 and after[0][1] < 100  # stayed down
        raw_booked = sum(v for _, v in _stored(store, "energy", "consumed", "raw_mill"))
        assert raw_booked == pytest.approx((before[-1][1] - before[0][1]) + (after[-1][1] - after[0][1]), rel=1e-9)
        assert [ts for ts, _ in _stored(store, "energy", "flag_rebased", "raw_mill")] != []

        # the report recomputed from the stored readings agrees and lists the reset
        tz = plant.enterprise.tz
        first_day = datetime.fromtimestamp(raw[0][0] / 1000, tz).date()
        last_day = datetime.fromtimestamp(raw[-1][0] / 1000, tz).date()
        period = ReportPeriod.parse("range", first_day.isoformat(), (last_day + timedelta(days=1)).isoformat())
        start_ms, end_ms = period.bounds_ms(tz)
        _rc, report = run_report(plant, period, load_readings_store(store, plant, start_ms, end_ms))
    assert report["meters"]["kiln_drive"]["consumed"] == pytest.approx(kiln_booked, abs=0.01)
    assert report["meters"]["kiln_drive"]["rejected_readings"] == 1
    assert report["meters"]["raw_mill"]["consumed"] == pytest.approx(raw_booked, abs=0.01)
    assert report["data_quality"]["counter_resets"]["raw_mill"]["resets"] == 1
    assert "kiln_drive" not in report["data_quality"]["counter_resets"]

    firing = [a for a in Hook.received if a.get("status") == "firing"]
    assert [(a["rule_id"], a["source"]) for a in firing] == [("counter_reset", "raw_mill")]
    assert "复位" in firing[0]["summary"]
