"""Points per second from MQTT through the processor into the store, each in its own process.

    python bench/bench_pipeline.py --points 500000 --batch 1000 --meters 100

Starts Mosquitto and VictoriaMetrics (Debian packages, loopback, free ports), an ``energymon processor`` process
writing to VictoriaMetrics through the InfluxDB v2 write API, and a publisher process that sends pre-encoded
batches at QoS 1 as fast as the broker takes them. One meter carries five quantities (an energy counter and four
gauges), so a fifth of the points also go through counter deltas, standard coal and the product indicators.

Reported (one JSON line): wall-clock rate from the first publish to the last row written, and the processor
process's CPU seconds, whose inverse is the rate per processor core. The run is verified by counting the
samples VictoriaMetrics holds afterwards.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from services import Mosquitto, VictoriaMetrics, free_port  # noqa: E402

USCC = "91530102MA6K7LQ8RH"
QUANTITIES = [("energy_active_import", "kWh"), ("power_active", "kW"), ("voltage_l1", "V"), ("current_l1", "A"),
              ("power_factor", "pf")]


def plant_yaml(meters: int, mqtt_url: str, vm_url: str) -> str:
    lines = [
        "version: 1",
        f"enterprise: {{uscc: {USCC}, name: bench, industry_code: C3011}}",
        "processes: [{id: kiln}]",
        "register_maps:",
        "  pm:",
        "    registers:",
        "      - {quantity: energy_active_import, address: 0, type: uint32, scale: 0.1, unit: kWh, kind: counter}",
        "      - {quantity: power_active, address: 2, type: float32, unit: kW}",
        "      - {quantity: voltage_l1, address: 4, type: float32, unit: V}",
        "      - {quantity: current_l1, address: 6, type: float32, unit: A}",
        "      - {quantity: power_factor, address: 8, type: float32, unit: pf}",
        "  sc:",
        "    registers:",
        "      - {quantity: mass_total, address: 0, type: uint32, scale: 0.001, unit: t, kind: counter}",
        "buses: [{type: modbus_tcp, id: b, host: 127.0.0.1, port: 1502, timeout_ms: 100, retries: 0}]",
        "meters:",
    ]
    for i in range(meters):
        lines.append(
            f"  - {{id: m{i}, carrier: electricity, level: 2, process: kiln, counter: energy_active_import,"
            f" max_rate_per_hour: 100000, source: {{type: modbus, bus: b, unit_id: {i % 247 + 1}, model: pm}}}}"
            if i < 247 else ""
        )
    lines = [x for x in lines if x]
    lines += [
        "  - {id: out, level: 2, process: kiln, counter: mass_total, max_rate_per_hour: 100000,",
        "     source: {type: modbus, bus: b, unit_id: 0, model: sc}}",
        "products: [{id: clinker, output: {meter: out, quantity: mass_total}, indicator: cement_clinker,",
        "            boundary: {processes: [kiln]}}]",
        f"uplink: {{url: '{mqtt_url}'}}",
        # the scheduled recompute (every 5 minutes in production) is left out: this measures the stream
        f"processor: {{recompute_interval_s: 0, store: {{type: influxdb, url: '{vm_url}', org: bench, bucket: bench,"
        " batch_max_points: 5000}}",
    ]
    return "\n".join(lines) + "\n"


def publisher(host: str, port: int, points: int, batch: int, meters: int, start_ms: int, conn: Any,
              edge_intervals: bool = True) -> None:
    """Child process: encode all batches first, then publish them at QoS 1 and wait for every PUBACK.

    With ``edge_intervals`` each counter reading after the first carries the interval it closes, as a gateway
    sends it; without, the processor books the counters with its own trackers (older gateways).
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from energymon.schema import Batch, Interval, Point, encode_batch
    from energymon.topics import readings_topic

    payloads: list[bytes] = []
    pts: list[Point] = []
    per_round = meters * len(QUANTITIES)
    seq = 1
    for n in range(points):
        rnd, k = divmod(n, per_round)
        meter, q = divmod(k, len(QUANTITIES))
        ts = start_ms + rnd * 1000
        name, unit = QUANTITIES[q]
        value = 1000.0 + rnd * 2.5 if q == 0 else 100.0 + (n % 17)
        interval = None
        if q == 0 and edge_intervals and rnd > 0:
            interval = Interval(start_ms=ts - 1000, amount=2.5, flag="ok")
        pts.append(Point(meter=f"m{meter}", quantity=name, value=value, unit=unit, ts_ms=ts, interval=interval))
        if len(pts) == batch:
            payloads.append(encode_batch(Batch(enterprise=USCC, gateway="bench", seq=seq, sent_ms=ts, points=pts)))
            pts, seq = [], seq + 1
    if pts:
        payloads.append(encode_batch(Batch(enterprise=USCC, gateway="bench", seq=seq, sent_ms=start_ms, points=pts)))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    topic = readings_topic(USCC, "bench")
    conn.send(("ready", len(payloads)))
    conn.recv()
    t0 = time.time()
    infos = [client.publish(topic, p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(120)
    conn.send(("done", t0, time.time()))
    client.loop_stop()
    client.disconnect()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(port: int, name: str, stage: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f'{name}{{stage="{stage}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def run(points: int, batch: int, meters: int, *, edge_intervals: bool = True) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="energymon-bench-") as tmp:
        mq, vm = Mosquitto(), VictoriaMetrics()
        mq.start()
        vm.start()
        proc = None
        try:
            plant = Path(tmp) / "plant.yaml"
            plant.write_text(plant_yaml(meters, mq.url, vm.url), encoding="utf-8")
            mport = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "energymon.cli", "--log-level", "WARNING", "processor", "--config", str(plant),
                 "--data-dir", tmp, "--metrics-port", str(mport)],
            )
            for _ in range(200):
                try:
                    scrape(mport, "energymon_received_total", "processor")
                    break
                except httpx.HTTPError:
                    time.sleep(0.05)
            time.sleep(0.5)  # subscription settles
            start_ms = int(time.time() * 1000) - points // (meters * len(QUANTITIES)) * 1000 - 60_000
            parent, child = mp.Pipe()
            pub = mp.get_context("spawn").Process(
                target=publisher, args=(mq.host, mq.port, points, batch, meters, start_ms, child, edge_intervals)
            )
            pub.start()
            assert parent.recv()[0] == "ready"
            cpu0 = cpu_seconds(proc.pid)
            parent.send("go")
            _, t0, t_pub = parent.recv()
            # poll the processor's metrics sparingly (a scrape costs it CPU); the end time is when the rows
            # written last changed, once every point was received
            last, stable, t1 = -1.0, 0, time.time()
            while True:
                got = scrape(mport, "energymon_received_total", "processor")
                sent = scrape(mport, "energymon_sent_total", "processor")
                if sent != last:
                    last, t1, stable = sent, time.time(), 0
                elif got >= points:
                    stable += 1
                    if stable >= 2:
                        break
                time.sleep(0.2)
            cpu1 = cpu_seconds(proc.pid)
            pub.join(30)
            vm.flush()
            q = httpx.get(f"{vm.url}/api/v1/query", params={"query": "sum(count_over_time(reading_value[30d]))"},
                          timeout=30).json()
            stored = int(float(q["data"]["result"][0]["value"][1])) if q["data"]["result"] else 0
            return {
                "bench": "mqtt_processor_store",
                "points": points,
                "batch_points": batch,
                "meters": meters,
                "edge_intervals": edge_intervals,
                "wall_s": round(t1 - t0, 3),
                "publish_s": round(t_pub - t0, 3),
                "points_per_s_wall": round(points / (t1 - t0)),
                "processor_cpu_s": round(cpu1 - cpu0, 3),
                "points_per_processor_cpu_s": round(points / max(cpu1 - cpu0, 1e-9)),
                "rows_written": int(last),
                "stored_readings_verified": stored,
            }
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
            mq.stop()
            vm.stop()


def main() -> None:
    """Parse arguments, run, print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=500_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--meters", type=int, default=100)
    ap.add_argument("--no-edge-intervals", action="store_true",
                    help="counter readings without the gateway's intervals (the processor tracks the counters)")
    args = ap.parse_args()
    print(json.dumps(run(args.points, args.batch, args.meters, edge_intervals=not args.no_edge_intervals)))


if __name__ == "__main__":
    main()
