"""Alert latency under load: meter values switched on simulated Modbus meters → the alerts arriving at a webhook.

    python bench/bench_alert_latency.py --transitions 1000 --meters 500 --switched 100

The whole real path, each stage where it runs in production: ``--meters`` simulated Modbus TCP meters (pymodbus, in
this process, 25 per bus so that a bus is read within the second) → ``energymon gateway`` (its own process:
ModbusCollector, 1-second wall-clock-aligned polling, SQLite outbox) → Mosquitto (its own process) → ``energymon
processor`` (its own process: ProcessorService, store, counters and accounting of every meter, AlertEngine,
WebhookNotifier) → a local HTTP server (in this process, so the switch and the arrival are timed on one clock).
Every meter sends an energy counter and three gauges each second, so the alerts travel with ``--meters`` × 4 points
a second.

``power_active`` of the first ``--switched`` meters is switched between 50 and 150 kW, each meter at its own
random times (uniform phase against the 1-second polls); a ``threshold`` rule per switched meter (above 100,
``for_secs: 0``) fires on the first poll that sees 150 and resolves on the first that sees 50. Each transition
is timed from the switch to the webhook's receipt of the matching ``firing`` or ``resolved`` record; at least
1,000 transitions make the p99 a percentile rather than the maximum. Reported (one JSON line), in ms:

* ``switch_to_webhook``: what an operator sees; includes waiting for the next poll (0–1000 ms, uniform);
* ``poll_to_webhook``: from the poll that saw the new value (the alert's event time) to the webhook: the
  pipeline's own latency (gateway outbox, MQTT, processor flush, engine, notifier, HTTP).

Beside them, the same-run peer: the poll interval (1,000 ms) that ``switch_to_webhook`` includes, and the ratio
of the poll-to-webhook p99 to it. The temporary folder and every process are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
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
#: meters per Modbus TCP bus: a 1-second poll of one bus must fit in the second (about 20 ms a request)
PER_BUS = 25


class SwitchModel:
    """The simulator's model: one switchable ``power_active`` per meter, steady gauges and a rising counter."""

    def __init__(self) -> None:
        self.clock = WallClock()
        self.current: dict[str, float] = {}

    def protocol_fault(self, meter_id: str, ts_ms: int | None = None) -> None:
        return None

    def value(self, meter_id: str, quantity: str, ts_ms: int | None = None) -> float:
        if quantity == "power_active":
            return self.current.get(meter_id, LOW)
        if quantity == "energy_active_import":
            return 1000.0 + (ts_ms if ts_ms is not None else self.clock.now_ms()) / 3_600_000 * 50.0
        return 230.0 if quantity == "voltage_l1" else 80.0


class Hook:
    """Webhook receiver recording, per meter, (arrival wall time, payload)."""

    def __init__(self) -> None:
        self.received: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self.total = 0
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                at = time.time()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                payload = json.loads(body)
                with outer.cond:
                    outer.received.setdefault(str(payload.get("meter")), []).append((at, payload))
                    outer.total += 1
                    outer.cond.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def count(self, meter: str) -> int:
        with self.cond:
            return len(self.received.get(meter, []))

    def wait_for(self, meter: str, status: str, after: int, timeout: float) -> tuple[float, dict[str, Any]] | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for at, payload in self.received.get(meter, [])[after:]:
                    if payload["status"] == status:
                        return at, payload
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)


def plant_yaml(meters: int, switched: int, ports: list[int], mqtt_url: str, hook_port: int, data: Path) -> str:
    buses = ", ".join(f"{{type: modbus_tcp, id: b{b}, host: 127.0.0.1, port: {port}, timeout_ms: 200, retries: 0}}"
                      for b, port in enumerate(ports))
    lines = [
        "version: 1",
        f"enterprise: {{uscc: {USCC}, name: bench, industry_code: C3011}}",
        "processes: [{id: kiln}]",
        "register_maps:",
        "  pm:",
        "    registers:",
        "      - {quantity: energy_active_import, address: 0, type: float32, unit: kWh, kind: counter}",
        "      - {quantity: power_active, address: 2, type: float32, unit: kW}",
        "      - {quantity: voltage_l1, address: 4, type: float32, unit: V}",
        "      - {quantity: current_l1, address: 6, type: float32, unit: A}",
        f"buses: [{buses}]",
        "meters:",
    ]
    lines += [f"  - {{id: m{i}, carrier: electricity, level: 2, process: kiln, counter: energy_active_import,"
              f" max_rate_per_hour: 100000, source: {{type: modbus, bus: b{i // PER_BUS}, unit_id: {i % PER_BUS + 1},"
              " model: pm, poll_group: fast}}" for i in range(meters)]
    lines += [
        "gateway: {id: gw-bench, poll_groups: [{id: fast, interval_secs: 1}]}",
        f'uplink: {{url: "{mqtt_url}"}}',
        f'processor: {{store: {{type: sqlite, path: "{data / "store.sqlite"}"}}}}',
        "alerts:",
        "  rules:",
    ]
    lines += [f"    - {{kind: threshold, id: power_high_m{i}, meter: m{i}, quantity: power_active, above: 100}}"
              for i in range(switched)]
    lines += [
        "  notifiers:",
        f'    - {{type: webhook, id: hook, url: "http://127.0.0.1:{hook_port}/hook", max_retries: 3}}',
    ]
    return "\n".join(lines) + "\n"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
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


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


async def run(transitions: int, meters: int, switched: int, seed: int,
              flush_interval_ms: int | None) -> dict[str, Any]:
    load_start = loadavg()
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="energymon-alert-bench-"))
    broker = Mosquitto()
    hook = Hook()
    model = SwitchModel()
    sim: ModbusPlantServer | None = None
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        broker.start()
        ports = [free_port() for _ in range(-(-meters // PER_BUS))]
        plant_file = tmp / "plant.yaml"
        plant_file.write_text(plant_yaml(meters, switched, ports, broker.url, hook.port, tmp), encoding="utf-8")
        plant = parse_plant(plant_file.read_text(encoding="utf-8"), str(plant_file))
        sim = ModbusPlantServer(cast(Any, model), plant, port={f"b{b}": port for b, port in enumerate(ports)})
        await sim.start()
        for role in ("processor", "gateway"):
            log = (tmp / f"{role}.log").open("wb")
            logs.append(log)
            if role == "processor" and flush_interval_ms is not None:  # the service with another flush timer
                cmd = [sys.executable, "-c", RUNNER, str(plant_file), str(tmp / role), str(flush_interval_ms)]
            else:  # exactly what production runs
                cmd = [sys.executable, "-m", "energymon.cli", "--log-level", "WARNING", role, "--config",
                       str(plant_file), "--data-dir", str(tmp / role)]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT))
        await asyncio.sleep(5.0)  # processes up, first polls through
        switch_to_hook: list[float] = []
        poll_to_hook: list[float] = []
        missed = 0
        per_meter = -(-transitions // switched)

        async def drive(k: int) -> None:
            nonlocal missed
            meter = f"m{k}"
            local = random.Random(rng.random())
            for i in range(per_meter):
                await asyncio.sleep(local.uniform(0.6, 1.6))  # random phase against the 1-second polls
                target, status = (HIGH, "firing") if i % 2 == 0 else (LOW, "resolved")
                after = hook.count(meter)
                switched_at = time.time()
                model.current[meter] = target
                got = await asyncio.to_thread(hook.wait_for, meter, status, after, 30.0)
                if got is None:
                    missed += 1
                    continue
                at, payload = got
                event_ms = payload["fired_ms"] if status == "firing" else payload["resolved_ms"]
                switch_to_hook.append((at - switched_at) * 1000)
                poll_to_hook.append(at * 1000 - event_ms)

        t0 = time.monotonic()
        await asyncio.gather(*(drive(k) for k in range(switched)))
        measured_s = time.monotonic() - t0
        poll = summary(poll_to_hook)
        return {
            "bench": "alert_latency",
            "path": "modbus sim -> ModbusCollector -> Gateway -> Mosquitto -> ProcessorService -> AlertEngine -> "
                    "WebhookNotifier -> HTTP server",
            "meters_flowing": meters,
            "points_per_s_offered": meters * 4,
            "switched_meters": switched,
            "poll_interval_s": 1,
            "processor_flush_interval_ms": flush_interval_ms if flush_interval_ms is not None else DEFAULT_FLUSH_MS,
            "transitions": len(switch_to_hook),
            "missed": missed,
            "measured_s": round(measured_s, 1),
            "switch_to_webhook_ms": summary(switch_to_hook),
            "poll_to_webhook_ms": poll,
            "peer_poll_interval_ms": 1000,
            "ratio_p99_to_poll_interval": round(poll["p99"] / 1000, 3) if poll else None,
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
        }
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for log in logs:
            log.close()
        if sim is not None:
            await sim.stop()
        hook.server.shutdown()
        hook.server.server_close()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    """Parse arguments, run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transitions", type=int, default=1000, help="value switches (at least 1,000 for a p99)")
    parser.add_argument("--meters", type=int, default=500, help="meters flowing through the pipeline")
    parser.add_argument("--switched", type=int, default=100, help="meters whose power is switched (one rule each)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--flush-interval-ms", type=int, default=None,
                        help="run the processor service with this flush timer instead of `energymon processor`'s")
    args = parser.parse_args()
    result = asyncio.run(run(args.transitions, args.meters, min(args.switched, args.meters), args.seed,
                                 args.flush_interval_ms))
    print(json.dumps(result, ensure_ascii=False))
    return 0 if result["missed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
