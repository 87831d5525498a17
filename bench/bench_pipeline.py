"""Points per second from MQTT through the processor into the store, each in its own process.

    python bench/bench_pipeline.py --points 500000 --batch 1000 --meters 100

Starts Mosquitto and VictoriaMetrics (Debian packages, loopback, free ports), an ``energymon processor`` process
writing to VictoriaMetrics through the InfluxDB v2 write API, and a publisher process that sends pre-encoded
batches at QoS 1 as fast as the broker takes them. One meter carries five quantities (an energy counter and four
gauges), so a fifth of the points also go through counter deltas, standard coal and the product indicators.

Every meter is configured (accounted), the example plant's alert rule (contracted demand on the incoming
meter, here ``m0``) is active beside the rules a plant runs on every meter (a demand threshold per meter,
offline, completeness, counter backwards and counter reset), and the scheduled recompute runs
(``--recompute-interval``, default 60 s; it also runs once at start, reading today back from the store).

Reported (one JSON line): wall-clock rate from the first publish to the last row written; the processor
process's CPU seconds, whose inverse is the rate per processor core; the whole system's CPU (processor,
Mosquitto and VictoriaMetrics processes, from ``/proc/<pid>/stat``) per point; and, measured in the same run on
the same VictoriaMetrics, the one-process line-protocol writer limit: influxdb-client writing the same number
of lines as a list of strings (and as joined bytes), per CPU-second of the writer process. ``ratio_to_limit``
is the processor's points per CPU-second over the list-of-strings limit. The run is verified by counting the
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


def plant_yaml(meters: int, mqtt_url: str, vm_url: str, recompute_s: int = 60) -> str:
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
        "buses: []",
        "meters:",
    ]
    # 247 unit ids per Modbus bus: one bus per 247 meters, so that every meter is a configured, accounted meter
    buses = (meters + 246) // 247
    lines[lines.index("buses: []")] = (
        "buses: [" + ", ".join(f"{{type: modbus_tcp, id: b{b}, host: 127.0.0.1, port: {1502 + b}, timeout_ms: 100,"
                               " retries: 0}" for b in range(buses + 1)) + "]")
    for i in range(meters):
        lines.append(
            f"  - {{id: m{i}, carrier: electricity, level: 2, process: kiln, counter: energy_active_import,"
            f" max_rate_per_hour: 100000, source: {{type: modbus, bus: b{i // 247}, unit_id: {i % 247 + 1},"
            " model: pm}}"
        )
    lines += [
        "  - {id: out, level: 2, process: kiln, counter: mass_total, max_rate_per_hour: 100000,",
        f"     source: {{type: modbus, bus: b{buses}, unit_id: 1, model: sc}}}}",
        "products: [{id: clinker, output: {meter: out, quantity: mass_total}, indicator: cement_clinker,",
        "            boundary: {processes: [kiln]}}]",
        "gateway: {id: bench}",
        f"uplink: {{url: '{mqtt_url}'}}",
        f"processor: {{recompute_interval_s: {recompute_s}, store: {{type: influxdb, url: '{vm_url}', org: bench,"
        " bucket: bench, batch_max_points: 5000}}",
        "alerts:",
        "  rules:",
        # the example plant's rule, on the incoming meter
        "    - {kind: threshold, id: demand_over_contract, meter: m0, quantity: power_active, above: 19000,"
        " clear_above: 18500, for_secs: 60, summary: 进线有功功率超过合同需量}",
        "    - {kind: offline, id: meter_offline}",
        "    - {kind: completeness, id: completeness}",
        "    - {kind: counter_backwards, id: counter_backwards}",
        "    - {kind: counter_reset, id: counter_reset}",
    ]
    lines += [f"    - {{kind: threshold, id: demand_m{i}, meter: m{i}, quantity: power_active, above: 5000,"
              " for_secs: 60}" for i in range(meters)]
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
    # warm-up: one gauge point per message until the processor has one (it is subscribed); not counted
    warm = 0
    while conn.recv() == "warm":
        warm += 1
        pt = Point(meter="m0", quantity="voltage_l1", value=230.0, unit="V", ts_ms=start_ms - 100_000 + warm)
        client.publish(topic, encode_batch(Batch(enterprise=USCC, gateway="bench", seq=10_000_000 + warm,
                                                 sent_ms=start_ms, points=[pt])), qos=1).wait_for_publish(30)
    t0 = time.time()
    infos = [client.publish(topic, p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(120)
    conn.send(("done", t0, time.time()))
    client.loop_stop()
    client.disconnect()


def writer_limit(vm_url: str, lines_total: int, batch: int, form: str, conn: Any) -> None:
    """Child process: the one-process writer limit, influxdb-client posting ``lines_total`` lines to VictoriaMetrics.

    The lines are shaped like the processor's reading rows (measurement, meter/quantity/unit tags, one value,
    ms timestamps) and built before the clock starts. ``form`` is ``list`` (a list of strings per request, as
    influxdb-client's users write them) or ``bytes`` (the lines joined once per request). Sends the writer's CPU
    and wall seconds.
    """
    from influxdb_client import InfluxDBClient, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    base = int(time.time() * 1000) - 3_600_000
    lines = [
        f"limit_{form},meter=m{n % 1000},quantity=power_active,unit=kW value={100.0 + n % 17!r} {base + n // 1000}"
        for n in range(lines_total)
    ]
    chunks: list[Any] = [lines[i : i + batch] for i in range(0, lines_total, batch)]
    if form == "bytes":
        chunks = ["\n".join(c).encode() for c in chunks]
    with InfluxDBClient(url=vm_url, token="bench", org="bench") as client:
        api = client.write_api(write_options=SYNCHRONOUS)
        cpu0, t0 = time.process_time(), time.perf_counter()
        for chunk in chunks:
            api.write(bucket="bench", org="bench", record=chunk, write_precision=WritePrecision.MS)
        conn.send((time.process_time() - cpu0, time.perf_counter() - t0))


def measure_limit(vm_url: str, lines_total: int, batch: int, form: str) -> dict[str, Any]:
    """Run :func:`writer_limit` in a fresh process; lines per CPU-second and per wall second."""
    parent, child = mp.Pipe()
    p = mp.get_context("spawn").Process(target=writer_limit, args=(vm_url, lines_total, batch, form, child))
    p.start()
    cpu, wall = parent.recv()
    p.join(60)
    return {"lines": lines_total, "cpu_s": round(cpu, 3), "lines_per_cpu_s": round(lines_total / max(cpu, 1e-9)),
            "lines_per_s_wall": round(lines_total / max(wall, 1e-9))}


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


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


def run(points: int, batch: int, meters: int, *, edge_intervals: bool = True, recompute_s: int = 60,
        limit: bool = True) -> dict[str, Any]:
    load_start = loadavg()
    with tempfile.TemporaryDirectory(prefix="energymon-bench-") as tmp:
        mq, vm = Mosquitto(), VictoriaMetrics()
        mq.start()
        vm.start()
        proc = None
        pub = None
        try:
            plant = Path(tmp) / "plant.yaml"
            plant.write_text(plant_yaml(meters, mq.url, vm.url, recompute_s), encoding="utf-8")
            mport = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "energymon.cli", "--log-level", "WARNING", "processor", "--config", str(plant),
                 "--data-dir", tmp, "--metrics-port", str(mport)],
            )
            # a plant of 10,000 meters takes the processor a while to load: wait for its metrics endpoint
            up_deadline = time.time() + 600
            while True:
                try:
                    scrape(mport, "energymon_received_total", "processor")
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None or time.time() > up_deadline:
                        raise RuntimeError(f"the processor did not start (exit code {proc.poll()})") from None
                    time.sleep(0.2)
            start_ms = int(time.time() * 1000) - points // (meters * len(QUANTITIES)) * 1000 - 60_000
            parent, child = mp.Pipe()
            pub = mp.get_context("spawn").Process(
                target=publisher, args=(mq.host, mq.port, points, batch, meters, start_ms, child, edge_intervals),
                daemon=True,
            )
            pub.start()
            assert parent.recv()[0] == "ready"
            # the processor subscribes once it is set up (reference data, rules, recompute cache), which can
            # take seconds on a loaded machine: what is published before that is not for it
            warm_deadline = time.time() + 300
            while scrape(mport, "energymon_received_total", "processor") < 1:
                if time.time() > warm_deadline:
                    raise RuntimeError("the processor did not subscribe within 300 s")
                parent.send("warm")
                time.sleep(0.5)
            time.sleep(1.0)  # a warm-up still in flight arrives before the clock starts
            points_total = points + int(scrape(mport, "energymon_received_total", "processor"))
            system = {"processor": proc.pid, "mosquitto": mq.pid, "victoriametrics": vm.pid}
            cpu0 = cpu_seconds(proc.pid)
            sys0 = {name: cpu_seconds(pid) for name, pid in system.items() if pid is not None}
            parent.send("go")
            _, t0, t_pub = parent.recv()
            # poll the processor's metrics sparingly (a scrape costs it CPU); the end time is when the rows
            # written last changed, once every point was received
            last, stable, t1 = -1.0, 0, time.time()
            while True:
                if time.time() - t1 > 120:
                    raise RuntimeError("the processor wrote nothing for 120 s (see its log above)")
                got = scrape(mport, "energymon_received_total", "processor")
                sent = scrape(mport, "energymon_sent_total", "processor")
                if sent != last:
                    last, t1, stable = sent, time.time(), 0
                elif got >= points_total:
                    stable += 1
                    if stable >= 2:
                        break
                time.sleep(0.2)
            cpu1 = cpu_seconds(proc.pid)
            sys1 = {name: cpu_seconds(system[name]) for name in sys0 if system[name] is not None}
            pub.join(30)
            vm.flush()
            q = httpx.get(f"{vm.url}/api/v1/query", params={"query": "sum(count_over_time(reading_value[30d]))"},
                          timeout=30).json()
            stored = int(float(q["data"]["result"][0]["value"][1])) if q["data"]["result"] else 0
            stored -= points_total - points  # the warm-up points
            proc_cpu = cpu1 - cpu0
            system_cpu = {name: round(sys1[name] - sys0[name], 3) for name in sys0}
            total_cpu = sum(system_cpu.values())
            limits: dict[str, Any] = {}
            if limit:  # the same VictoriaMetrics, after the processor is done with it
                limits = {form: measure_limit(vm.url, points, 5000, form) for form in ("list", "bytes")}
            per_cpu = points / max(proc_cpu, 1e-9)
            result: dict[str, Any] = {
                "bench": "mqtt_processor_store",
                "points": points,
                "batch_points": batch,
                "meters": meters,
                "edge_intervals": edge_intervals,
                "wall_s": round(t1 - t0, 3),
                "publish_s": round(t_pub - t0, 3),
                "points_per_s_wall": round(points / (t1 - t0)),
                "every_meter_configured": True,
                "alert_rules": 5 + meters,
                "recompute_interval_s": recompute_s,
                "processor_cpu_s": round(proc_cpu, 3),
                "points_per_processor_cpu_s": round(per_cpu),
                "system_cpu_s": system_cpu,
                "system_cpu_us_per_point": round(total_cpu / points * 1e6, 2),
                "processor_cpu_us_per_point": round(proc_cpu / points * 1e6, 2),
                "rows_written": int(last),
                "stored_readings_verified": stored,
                "stored_ok": stored >= points,
            }
            if limits:
                result["writer_limit"] = limits
                result["ratio_to_limit_list"] = round(per_cpu / limits["list"]["lines_per_cpu_s"], 3)
                result["ratio_to_limit_bytes"] = round(per_cpu / limits["bytes"]["lines_per_cpu_s"], 3)
                result["target_ratio"] = 0.5
                result["target_met"] = result["ratio_to_limit_list"] >= 0.5
            result["loadavg_start"] = load_start
            result["loadavg_end"] = loadavg()
            return result
        finally:
            if pub is not None and pub.is_alive():
                pub.terminate()
                pub.join(10)
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
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
    ap.add_argument("--recompute-interval", type=int, default=60,
                    help="processor.recompute_interval_s (production default 300; 0 turns it off)")
    ap.add_argument("--no-limit", action="store_true", help="skip the writer-limit measurement")
    args = ap.parse_args()
    print(json.dumps(run(args.points, args.batch, args.meters, edge_intervals=not args.no_edge_intervals,
                         recompute_s=args.recompute_interval, limit=not args.no_limit), ensure_ascii=False))


if __name__ == "__main__":
    main()
