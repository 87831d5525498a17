"""Alert latency: a meter value switched on a simulated Modbus meter → the alert arriving at a webhook.

    python bench/bench_alert_latency.py --transitions 60

The whole real path, each stage where it runs in production: a simulated Modbus TCP meter (pymodbus, in this
process) → ``energymon gateway`` (its own process: ModbusCollector, 1-second wall-clock-aligned polling, SQLite
outbox) → Mosquitto (its own process) → ``energymon processor`` (its own process: ProcessorService, store,
AlertEngine, WebhookNotifier) → a local HTTP server (in this process, so the switch and the arrival are timed on
one clock).

The meter's ``power_active`` is switched between 50 and 150 kW at random times (uniform phase against the
1-second polls); a ``threshold`` rule (above 100, ``for_secs: 0``) fires on the first poll that sees 150 and
resolves on the first that sees 50. Each transition is timed from the switch to the webhook's receipt of the
matching ``firing`` or ``resolved`` record. Reported (one JSON line), in milliseconds:

* ``switch_to_webhook``: what an operator sees; includes waiting for the next poll (0–1000 ms, uniform);
* ``poll_to_webhook``: from the poll that saw the new value (the alert's event time) to the webhook: the
  pipeline's own latency (gateway outbox, MQTT, processor flush, engine, notifier, HTTP).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from services import Mosquitto, free_port  # noqa: E402

from energymon.clock import WallClock  # noqa: E402
from energymon.config import parse_plant  # noqa: E402
from energymon.simulators.modbus_server import ModbusPlantServer  # noqa: E402

USCC = "91530102MA6K7LQ8RH"
LOW, HIGH = 50.0, 150.0


class SwitchModel:
    """The simulator's model, reduced to one switchable value (duck-typed PlantModel)."""

    def __init__(self) -> None:
        self.clock = WallClock()
        self.current = LOW

    def protocol_fault(self, meter_id: str, ts_ms: int | None = None) -> None:
        return None

    def value(self, meter_id: str, quantity: str, ts_ms: int | None = None) -> float:
        return self.current


class Hook:
    """Webhook receiver recording (arrival wall time, payload)."""

    def __init__(self) -> None:
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                at = time.time()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with outer.cond:
                    outer.received.append((at, json.loads(body)))
                    outer.cond.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def wait_for(self, status: str, after: int, timeout: float) -> tuple[float, dict[str, Any]] | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for at, payload in self.received[after:]:
                    if payload["status"] == status:
                        return at, payload
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)


def plant_yaml(modbus_port: int, mqtt_url: str, hook_port: int, data: Path) -> str:
    return f"""version: 1
enterprise: {{uscc: {USCC}, name: bench, industry_code: C3011}}
buses: [{{type: modbus_tcp, id: b, host: 127.0.0.1, port: {modbus_port}, timeout_ms: 300, retries: 0}}]
meters:
  - {{id: kiln_drive, source: {{type: modbus, bus: b, unit_id: 1, poll_group: fast,
     registers: [{{quantity: power_active, address: 0, type: float32, unit: kW}}]}}}}
gateway: {{id: gw-bench, poll_groups: [{{id: fast, interval_secs: 1}}]}}
uplink: {{url: "{mqtt_url}"}}
processor: {{store: {{type: sqlite, path: "{data / 'store.sqlite'}"}}}}
alerts:
  rules:
    - {{kind: threshold, id: power_high, meter: kiln_drive, quantity: power_active, above: 100}}
  notifiers:
    - {{type: webhook, id: hook, url: "http://127.0.0.1:{hook_port}/hook", max_retries: 3}}
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(pct(values, 0.5), 1), "p99": round(pct(values, 0.99), 1), "max": round(max(values), 1),
            "mean": round(statistics.fmean(values), 1)}


RUNNER = """
import asyncio, signal, sys
from pathlib import Path
from prometheus_client import REGISTRY
from energymon.clock import WallClock
from energymon.config import load_plant
from energymon.metrics import PipelineMetrics
from energymon.runtime import ProcessorService

async def main():
    service = ProcessorService(load_plant(sys.argv[1]), clock=WallClock(), metrics=PipelineMetrics(REGISTRY),
                               data_dir=Path(sys.argv[2]), flush_interval_ms=int(sys.argv[3]))
    await service.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await service.stop()

asyncio.run(main())
"""


DEFAULT_FLUSH_MS = 50  # ProcessorService flushes every 50 ms unless an InfluxDB store sets its own interval


async def run(transitions: int, seed: int, flush_interval_ms: int | None) -> dict[str, Any]:
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="energymon-alert-bench-"))
    broker = Mosquitto().start()
    hook = Hook()
    model = SwitchModel()
    modbus_port = free_port()
    plant_file = tmp / "plant.yaml"
    plant_file.write_text(plant_yaml(modbus_port, broker.url, hook.port, tmp), encoding="utf-8")
    plant = parse_plant(plant_file.read_text(encoding="utf-8"), str(plant_file))
    sim = ModbusPlantServer(cast(Any, model), plant, port=modbus_port)
    await sim.start()
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        for role in ("processor", "gateway"):
            log = (tmp / f"{role}.log").open("wb")
            if role == "processor" and flush_interval_ms is not None:  # the service with another flush timer
                cmd = [sys.executable, "-c", RUNNER, str(plant_file), str(tmp / role), str(flush_interval_ms)]
            else:  # exactly what production runs
                cmd = [sys.executable, "-m", "energymon.cli", "--log-level", "WARNING", role, "--config",
                       str(plant_file), "--data-dir", str(tmp / role)]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT))
        await asyncio.sleep(3.0)  # processes up, first polls through
        switch_to_hook: list[float] = []
        poll_to_hook: list[float] = []
        missed = 0
        for i in range(transitions):
            await asyncio.sleep(rng.uniform(0.6, 1.6))  # random phase against the 1-second polls
            target, status = (HIGH, "firing") if i % 2 == 0 else (LOW, "resolved")
            after = len(hook.received)
            switched = time.time()
            model.current = target
            got = await asyncio.to_thread(hook.wait_for, status, after, 10.0)
            if got is None:
                missed += 1
                continue
            at, payload = got
            event_ms = payload["fired_ms"] if status == "firing" else payload["resolved_ms"]
            switch_to_hook.append((at - switched) * 1000)
            poll_to_hook.append(at * 1000 - event_ms)
        return {
            "bench": "alert_latency",
            "path": "modbus sim -> ModbusCollector -> Gateway -> Mosquitto -> ProcessorService -> AlertEngine -> "
                    "WebhookNotifier -> HTTP server",
            "poll_interval_s": 1,
            "processor_flush_interval_ms": flush_interval_ms if flush_interval_ms is not None else DEFAULT_FLUSH_MS,
            "transitions": len(switch_to_hook),
            "missed": missed,
            "switch_to_webhook_ms": summary(switch_to_hook),
            "poll_to_webhook_ms": summary(poll_to_hook),
        }
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        await sim.stop()
        hook.server.shutdown()
        broker.stop()


def main() -> int:
    """Parse arguments, run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transitions", type=int, default=60, help="value switches (at least 50 for a p99)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--flush-interval-ms", type=int, default=None,
                        help="run the processor service with this flush timer instead of `energymon processor`'s")
    args = parser.parse_args()
    result = asyncio.run(run(args.transitions, args.seed, args.flush_interval_ms))
    print(json.dumps(result, ensure_ascii=False))
    return 0 if result["missed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
