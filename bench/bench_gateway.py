"""Gateway backlog drain after an outage, measured to the store: time, CPU and the peak memory of both ends.

    python bench/bench_gateway.py --meters 500 --quantities 4 --interval 15 --hours 24

1. A *fill* process writes the outage into the gateway's outbox file through the gateway's own
   :class:`~energymon.gateway.outbox.Outbox` / :class:`~energymon.gateway.queue.OutboundQueue`: one poll of
   ``meters`` × ``quantities`` points (an energy counter and gauges) every ``interval`` seconds over the past
   ``hours``, cut into the plant's 2,000-point batches (the default ``batch_max_points``). No broker runs meanwhile.
2. Then Mosquitto and VictoriaMetrics start (Debian packages, loopback, free ports), an ``energymon processor``
   process (every meter configured, VictoriaMetrics store, the scheduled recompute at its default) subscribes,
   Modbus simulators for the ``meters`` devices (pymodbus, in a child process, 247 unit ids per TCP bus) answer,
   and an ``energymon gateway`` process starts on the filled outbox: it polls the real devices every
   ``--live-interval`` seconds while it drains.

Reported (one JSON line per measurement): the drain time from the gateway's start until every backlog point is
stored and queryable in VictoriaMetrics (checked by a count query over the outage window), the stored rate, the
processor's and the gateway's CPU seconds over the drain, and both processes' peak RSS (``VmHWM``). The peer in
the same run is the gateway-side drain rate (points published per second), so ``store_to_publish_ratio`` shows
how much of the gateway's speed reaches the store. Every process and temporary folder is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from services import Mosquitto, VictoriaMetrics, free_port  # noqa: E402

GATEWAY_ID = "bench-gw"
USCC = "91530102MA6K7LQ8RH"
QUANTITIES = [("energy_active_import", "kWh"), ("power_active", "kW"), ("voltage_l1", "V"), ("current_l1", "A"),
              ("power_factor", "pf")]


def plant_yaml(meters: int, quantities: int, interval_s: float, ports: list[int], mqtt_url: str, vm_url: str) -> str:
    """The bench plant: ``meters`` Modbus meters (an energy counter and gauges), all configured and accounted."""
    regs = [f"      - {{quantity: {name}, address: {2 * k}, type: float32, unit: {unit}"
            + (", kind: counter}" if k == 0 else "}") for k, (name, unit) in enumerate(QUANTITIES[:quantities])]
    buses = ", ".join(f"{{type: modbus_tcp, id: b{b}, host: 127.0.0.1, port: {port}, timeout_ms: 2000, retries: 0}}"
                      for b, port in enumerate(ports))
    lines = [
        "version: 1",
        f"enterprise: {{uscc: {USCC}, name: bench, industry_code: C3011}}",
        "processes: [{id: kiln}]",
        "register_maps:",
        "  pm:",
        "    registers:",
        *regs,
        f"buses: [{buses}]",
        "meters:",
        *(f"  - {{id: m{i}, carrier: electricity, level: 2, process: kiln, counter: energy_active_import,"
          f" max_rate_per_hour: 1000000, source: {{type: modbus, bus: b{i // 247}, unit_id: {i % 247 + 1},"
          " model: pm}}" for i in range(meters)),
        f"gateway: {{id: {GATEWAY_ID}, poll_groups: [{{id: default, interval_secs: {interval_s:g}}}]}}",
        f"uplink: {{url: '{mqtt_url}'}}",
        f"processor: {{store: {{type: influxdb, url: '{vm_url}', org: bench, bucket: bench}}}}",
    ]
    return "\n".join(lines) + "\n"


def make_points(ts_ms: int, meters: int, quantities: int) -> list[Any]:
    """One poll: per meter an energy counter and ``quantities - 1`` gauges."""
    from energymon.schema import Point

    new = Point.model_construct
    pts = []
    for m in range(meters):
        for q in range(quantities):
            name, unit = QUANTITIES[q]
            pts.append(new(meter=f"m{m}", quantity=name, value=sim_value(m, name, ts_ms), unit=unit, ts_ms=ts_ms))
    return pts


def sim_value(m: int, quantity: str, ts_ms: int) -> float:
    """What meter ``m`` reads at ``ts_ms`` (the same for the outage and the simulators)."""
    if quantity == "energy_active_import":
        return round(1_000_000 + m * 1000 + ts_ms / 3_600_000 * 50, 1)
    return round(100 + (m * 7 + ts_ms // 1000 + len(quantity)) % 997 * 0.731, 3)


def fill(plant_text: str, path: str, meters: int, quantities: int, interval_s: float, polls: int,
         conn: Any) -> None:
    """Child process: write the outage's polls into the outbox, oldest first, as the gateway would have."""
    from energymon.config import parse_plant
    from energymon.gateway.outbox import Outbox
    from energymon.gateway.queue import OutboundQueue
    from energymon.metrics import private_metrics

    plant = parse_plant(plant_text, "bench-plant.yaml")
    metrics = private_metrics()
    queue = OutboundQueue(path)
    outbox = Outbox(queue, plant, metrics=metrics, stage=metrics.stage("gateway"))
    step = round(interval_s * 1000)
    now = int(time.time() * 1000) // step * step
    t0 = time.time()
    for i in range(polls):
        ts = now - (polls - i) * step
        outbox.store(make_points(ts, meters, quantities), ts)
    batches, points = queue.depth()
    queue.close()
    conn.send((batches, points, time.time() - t0, os.path.getsize(path), now - polls * step, now))


class SimModel:
    """The simulators' model: :func:`sim_value` by the wall clock."""

    def __init__(self) -> None:
        from energymon.clock import WallClock

        self.clock = WallClock()

    def protocol_fault(self, meter_id: str, ts_ms: int | None = None) -> None:
        return None

    def value(self, meter_id: str, quantity: str, ts_ms: int | None = None) -> float:
        return sim_value(int(meter_id[1:]), quantity, ts_ms if ts_ms is not None else self.clock.now_ms())


def simulators(plant_text: str, ports: list[int], conn: Any) -> None:
    """Child process: Modbus TCP servers for every bus of the plant, until told to stop."""
    from typing import cast

    from energymon.config import parse_plant
    from energymon.simulators.modbus_server import ModbusPlantServer

    async def main() -> None:
        plant = parse_plant(plant_text, "bench-plant.yaml")
        sim = ModbusPlantServer(cast(Any, SimModel()), plant, port={f"b{b}": p for b, p in enumerate(ports)})
        await sim.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_reader(conn.fileno(), stop.set)
        conn.send("ready")
        await stop.wait()
        await sim.stop()

    asyncio.run(main())


def proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmHWM", "VmRSS")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape_all(port: int) -> str:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def metric(text: str, prefix: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total


def stored_between(vm_url: str, start_ms: int, end_ms: int) -> int:
    """Readings VictoriaMetrics holds with event times in ``[start_ms, end_ms)``."""
    import httpx

    window = max(1, (end_ms - start_ms) // 1000)
    q = httpx.get(f"{vm_url}/api/v1/query", params={
        "query": f"sum(count_over_time(reading_value[{window}s]))", "time": f"{(end_ms - 1) / 1000:.3f}",
    }, timeout=120).json()
    res = q["data"]["result"]
    return int(float(res[0]["value"][1])) if res else 0


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def run(meters: int, quantities: int, interval_s: float, hours: float, live_s: float) -> list[dict[str, Any]]:
    import subprocess

    import httpx
    import paho.mqtt.publish as publish

    from energymon.topics import readings_topic

    load_start = loadavg()
    ctx = mp.get_context("spawn")
    polls = round(hours * 3600 / interval_s)
    tmp = tempfile.mkdtemp(prefix="energymon-bench-gw-")
    mq = Mosquitto(extra_conf="max_queued_messages 100000\n")
    vm = VictoriaMetrics()
    procs: list[subprocess.Popen[bytes]] = []
    sim = None
    sim_conn = None
    try:
        mq.start()
        vm.start()
        ports = [free_port() for _ in range((meters + 246) // 247)]
        text = plant_yaml(meters, quantities, live_s, ports, mq.url, vm.url)
        plant_file = Path(tmp) / "plant.yaml"
        plant_file.write_text(text, encoding="utf-8")
        gw_dir = Path(tmp) / "gateway"
        gw_dir.mkdir()
        parent, child = ctx.Pipe()
        p = ctx.Process(target=fill, args=(text, str(gw_dir / f"outbox-{GATEWAY_ID}.sqlite"), meters, quantities,
                                           interval_s, polls, child))
        p.start()
        batches, points, fill_s, size, outage_start, outage_end = parent.recv()
        p.join()
        fill_line = {"bench": "gateway_outbox_fill", "meters": meters, "quantities": quantities,
                     "interval_s": interval_s, "outage_h": hours, "batches": batches, "points": points,
                     "fill_s": round(fill_s, 1), "points_per_s": round(points / fill_s),
                     "outbox_bytes": size, "bytes_per_point": round(size / points, 2)}
        print(json.dumps(fill_line), flush=True)

        sim_conn, schild = ctx.Pipe()
        sim = ctx.Process(target=simulators, args=(text, ports, schild))
        sim.start()
        assert sim_conn.recv() == "ready"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        mport = free_port()
        proc_log = (Path(tmp) / "processor.log").open("wb")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "energymon.cli", "--log-level", "WARNING", "processor", "--config",
             str(plant_file), "--data-dir", str(Path(tmp) / "processor"), "--metrics-port", str(mport)],
            stdout=proc_log, stderr=subprocess.STDOUT, env=env))
        # subscribed? a message from an unknown gateway is set aside (and counted) once the processor listens
        deadline = time.time() + 300
        while True:
            try:
                if metric(scrape_all(mport), 'energymon_dropped_total{reason="unknown_gateway"') >= 1:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("the processor did not subscribe within 300 s")
            publish.single(readings_topic(USCC, "bench-warmup"), b"{}", qos=1, hostname=mq.host, port=mq.port)
            time.sleep(0.5)
        gw_log = (Path(tmp) / "gateway.log").open("wb")
        t_run = time.time()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "energymon.cli", "--log-level", "WARNING", "gateway", "--config",
             str(plant_file), "--data-dir", str(gw_dir)], stdout=gw_log, stderr=subprocess.STDOUT, env=env))
        processor, gw = procs
        pcpu0, gcpu0 = cpu_seconds(processor.pid), cpu_seconds(gw.pid)
        t_published = None
        while True:
            time.sleep(1.0)
            if gw.poll() is not None or processor.poll() is not None:
                raise RuntimeError(f"a process exited before the backlog was stored (see {tmp})")
            if t_published is None:
                depth = metric(scrape_all(mport), 'energymon_received_total{stage="processor"}')
                if depth >= points:
                    t_published = time.time()
            if t_published is not None:
                vm.flush()
                got = stored_between(vm.url, outage_start, outage_end)
                if got >= points:
                    t_end = time.time()
                    break
            if time.time() - t_run > 3600:
                raise RuntimeError("the backlog was not stored within an hour")
        pcpu, gcpu = cpu_seconds(processor.pid) - pcpu0, cpu_seconds(gw.pid) - gcpu0
        pmem, gmem = proc_status(processor.pid), proc_status(gw.pid)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if sim is not None and sim_conn is not None:
            sim_conn.send("stop")
            sim.join(15)
            if sim.is_alive():
                sim.terminate()
        mq.stop()
        vm.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    drain_s = t_end - t_run
    publish_s = (t_published or t_end) - t_run
    drain = {
        "bench": "gateway_backlog_drain_to_store", "meters": meters, "quantities": quantities, "outage_h": hours,
        "live_interval_s": live_s, "backlog_batches": batches, "backlog_points": points,
        "stored_backlog_points": got,
        "drain_to_store_s": round(drain_s, 2), "stored_points_per_s": round(points / drain_s),
        "received_by_processor_s": round(publish_s, 2),
        "peer_received_points_per_s": round(points / publish_s),
        "store_to_publish_ratio": round(publish_s / drain_s, 3),
        "processor_cpu_s": round(pcpu, 2), "points_per_processor_cpu_s": round(points / max(pcpu, 1e-9)),
        "gateway_cpu_s": round(gcpu, 2),
        "processor_peak_rss_mib": round(pmem["VmHWM"] / 1024, 1),
        "gateway_peak_rss_mib": round(gmem["VmHWM"] / 1024, 1),
        "gateway_modbus_devices": meters,
        "loadavg_start": load_start, "loadavg_end": loadavg(),
    }
    return [drain]


def main() -> None:
    """Parse arguments, run, print one JSON line per measurement."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meters", type=int, default=500)
    ap.add_argument("--quantities", type=int, default=4, choices=range(1, len(QUANTITIES) + 1))
    ap.add_argument("--interval", type=float, default=15.0, help="poll interval of the outage's data, seconds")
    ap.add_argument("--hours", type=float, default=24.0, help="outage length")
    ap.add_argument("--live-interval", type=float, default=None,
                    help="seconds between the gateway's live polls during the drain (default: --interval)")
    args = ap.parse_args()
    for line in run(args.meters, args.quantities, args.interval, args.hours, args.live_interval or args.interval):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
