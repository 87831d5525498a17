"""Gateway backlog drain after an outage: points/s, live-batch delay and the gateway's peak memory.

    python bench/bench_gateway.py --meters 500 --quantities 4 --interval 15 --hours 24

1. A *fill* process writes the outage into a gateway outbox file through the gateway's own
   :class:`~energymon.gateway.outbox.Outbox` / :class:`~energymon.gateway.queue.OutboundQueue`: one batch per
   poll of ``meters`` × ``quantities`` points (2,000 points, the default ``batch_max_points``), ``hours`` × 3600 /
   ``interval`` polls, timestamped over the past ``hours``. No broker runs meanwhile.
2. Then Mosquitto starts (Debian package, loopback, free port), a *subscriber* process subscribes at QoS 1 and
   counts what arrives, and a *gateway* process runs a real :class:`~energymon.gateway.gateway.Gateway` on that
   outbox with an MQTT transport and a trivial collector producing ``meters`` × ``quantities`` live points every
   ``interval`` seconds of the wall clock.

Reported (one JSON line per measurement): the drain rate (backlog points / seconds from the gateway process's
start, and from the first to the last backlog batch received), the largest delay of a live batch (receipt time
minus its creation time ``sent_ms``) during the drain, and the gateway process's peak RSS (``VmHWM``) and CPU
seconds. Batches are counted by sequence number, so loss and duplicates show.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from services import Mosquitto  # noqa: E402

GATEWAY_ID = "bench-gw"
QUANTITIES = [("energy_active_import", "kWh"), ("power_active", "kW"), ("voltage_l1", "V"), ("current_l1", "A"),
              ("power_factor", "pf")]
_HEAD = re.compile(rb'"seq":(\d+),"sent_ms":(\d+)')


def bench_plant() -> Any:
    """The example cement plant with its gateway renamed (default outbox settings: 2,000-point batches)."""
    import yaml

    from energymon.config import parse_plant
    from energymon.demo import example_plant_path

    data = yaml.safe_load(example_plant_path().read_text(encoding="utf-8"))
    data["gateway"]["id"] = GATEWAY_ID
    return parse_plant(yaml.safe_dump(data, allow_unicode=True), "bench-plant.yaml")


def make_points(ts_ms: int, meters: int, quantities: int, model_construct: bool) -> list[Any]:
    """One poll: per meter an energy counter and ``quantities - 1`` gauges."""
    from energymon.schema import Point

    new = Point.model_construct if model_construct else Point
    pts = []
    for m in range(meters):
        for q in range(quantities):
            name, unit = QUANTITIES[q]
            value = round(1_000_000 + m * 1000 + ts_ms / 3_600_000 * 50, 1) if q == 0 else \
                round(100 + (m * 7 + ts_ms // 1000 + q) % 997 * 0.731, 3)
            pts.append(new(meter=f"m{m}", quantity=name, value=value, unit=unit, ts_ms=ts_ms))
    return pts


def fill(path: str, meters: int, quantities: int, interval_s: float, polls: int, conn: Any) -> None:
    """Child process: write the outage's polls into the outbox, oldest first, as the gateway would have."""
    from energymon.gateway.outbox import Outbox
    from energymon.gateway.queue import OutboundQueue
    from energymon.metrics import private_metrics

    plant = bench_plant()
    metrics = private_metrics()
    queue = OutboundQueue(path)
    outbox = Outbox(queue, plant, metrics=metrics, stage=metrics.stage("gateway"))
    step = round(interval_s * 1000)
    now = int(time.time() * 1000) // step * step
    t0 = time.time()
    for i in range(polls):
        ts = now - (polls - i) * step
        outbox.store(make_points(ts, meters, quantities, True), ts)
    batches, points = queue.depth()
    queue.close()
    conn.send((batches, points, time.time() - t0, os.path.getsize(path)))


def subscriber(host: str, port: int, topic: str, backlog_points: int, live_after_ms: int, conn: Any) -> None:
    """Child process: count batches and points; time the backlog; record each live batch's delay."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    seen: set[int] = set()
    st: dict[str, Any] = {"msgs": 0, "dups": 0, "backlog_points": 0, "live_points": 0, "first": None, "last": None,
                          "live": []}
    done = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        t = time.time()
        m = _HEAD.search(msg.payload, 0, 400)
        if m is None:
            return
        seq, sent_ms = int(m.group(1)), int(m.group(2))
        st["msgs"] += 1
        if seq in seen:
            st["dups"] += 1
            return
        seen.add(seq)
        n = msg.payload.count(b'"meter"')
        if sent_ms >= live_after_ms:
            st["live_points"] += n
            st["live"].append((seq, sent_ms, round(t * 1000) - sent_ms, st["backlog_points"]))
        else:
            st["backlog_points"] += n
            st["first"] = st["first"] or t
            st["last"] = t
            if st["backlog_points"] >= backlog_points:
                done.set()

    def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe(topic, qos=1)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-subscriber")
    client.on_message = on_message
    client.on_connect = on_connect
    client.connect(host, port)
    client.loop_start()
    time.sleep(0.5)
    conn.send("ready")
    done.wait(3600)
    conn.send("drained")
    time.sleep(float(conn.recv()))  # a little longer: a live batch written at the very end
    client.loop_stop()
    client.disconnect()
    conn.send(st)


class LiveCollector:
    """A trivial polled collector: ``meters`` × ``quantities`` points at every tick."""

    name = "bench-live"

    def __init__(self, meters: int, quantities: int) -> None:
        self.meters, self.quantities = meters, quantities

    async def start(self) -> None:
        pass

    async def poll(self, group: str, ts_ms: int) -> list[Any]:
        return make_points(ts_ms, self.meters, self.quantities, False)

    async def stop(self) -> None:
        pass


def gateway(path: str, url: str, meters: int, quantities: int, interval_s: float, window: int, conn: Any) -> None:
    """Child process: a real Gateway on the filled outbox, MQTT uplink, live polls every ``interval_s``."""
    from energymon.gateway.gateway import Gateway
    from energymon.transport import open_transport

    plant = bench_plant()
    groups = plant.gateway.poll_groups
    plant = plant.model_copy(update={"gateway": plant.gateway.model_copy(
        update={"poll_groups": [groups[0].model_copy(update={"interval_secs": interval_s})]})})
    t_start = time.time()

    async def main() -> None:
        transport = open_transport(url, client_id=GATEWAY_ID)
        gw = Gateway(plant, transport, [LiveCollector(meters, quantities)], queue_path=path,
                     history_file=str(Path(path).parent / "history.sqlite"), publish_window=window)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        conn.send(("started", t_start, time.time()))
        loop.add_reader(conn.fileno(), stop.set)
        await gw.run(stop)

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


def run(
    meters: int, quantities: int, interval_s: float, hours: float, window: int, live_s: float
) -> list[dict[str, Any]]:
    from energymon.topics import readings_topic

    ctx = mp.get_context("spawn")
    polls = round(hours * 3600 / interval_s)
    with tempfile.TemporaryDirectory(prefix="energymon-bench-gw-") as tmp:
        path = str(Path(tmp) / "outbox.sqlite")
        parent, child = ctx.Pipe()
        p = ctx.Process(target=fill, args=(path, meters, quantities, interval_s, polls, child))
        p.start()
        batches, points, fill_s, size = parent.recv()
        p.join()
        fill_line = {"bench": "gateway_outbox_fill", "meters": meters, "quantities": quantities,
                     "interval_s": interval_s, "outage_h": hours, "batches": batches, "points": points,
                     "fill_s": round(fill_s, 1), "points_per_s": round(points / fill_s),
                     "outbox_bytes": size, "bytes_per_point": round(size / points, 2)}
        print(json.dumps(fill_line), flush=True)

        mq = Mosquitto(extra_conf="max_queued_messages 100000\n")
        mq.start()
        gw = sub = None
        try:
            topic = readings_topic(bench_plant().enterprise.uscc, GATEWAY_ID)
            live_after = int(time.time() * 1000) - 1000
            sparent, schild = ctx.Pipe()
            sub = ctx.Process(target=subscriber, args=(mq.host, mq.port, topic, points, live_after, schild))
            sub.start()
            assert sparent.recv() == "ready"
            gparent, gchild = ctx.Pipe()
            gw = ctx.Process(target=gateway, args=(path, mq.url, meters, quantities, live_s, window, gchild))
            gw.start()
            _, _t_spawn, t_run = gparent.recv()
            cpu0 = cpu_seconds(gw.pid)
            while not sparent.poll(0.2):
                if not gw.is_alive():
                    raise RuntimeError(f"the gateway process exited ({gw.exitcode}) before the backlog drained")
            assert sparent.recv() == "drained"
            cpu1 = cpu_seconds(gw.pid)
            status = proc_status(gw.pid)
            sparent.send(str(live_s + 2))
            st = sparent.recv()
            gparent.send("stop")
            gw.join(60)
            sub.join(10)
        finally:
            for proc in (gw, sub):
                if proc is not None and proc.is_alive():
                    proc.terminate()
            mq.stop()
    drain_s = st["last"] - t_run
    live = [x for x in st["live"] if x[3] < points]  # live batches received while backlog was still arriving
    delays = [x[2] for x in live]
    drain = {
        "bench": "gateway_backlog_drain", "meters": meters, "quantities": quantities, "outage_h": hours,
        "publish_window": window, "live_interval_s": live_s, "backlog_batches": batches, "backlog_points": points,
        "received_backlog_points": st["backlog_points"], "messages": st["msgs"], "duplicates": st["dups"],
        "drain_s": round(drain_s, 2), "points_per_s": round(points / drain_s),
        "first_to_last_s": round(st["last"] - st["first"], 2),
        "points_per_s_first_to_last": round(points / (st["last"] - st["first"])),
        "gateway_startup_s": round(st["first"] - t_run, 2),
        "gateway_cpu_s_drain": round(cpu1 - cpu0, 2),
        "gateway_cpu_s_total": round(cpu1, 2),
        "live_batches_during_drain": len(live), "live_points_received": st["live_points"],
        "live_delay_max_ms": max(delays) if delays else None,
        "live_delay_median_ms": sorted(delays)[len(delays) // 2] if delays else None,
    }
    mem = {"bench": "gateway_drain_memory", "backlog_points": points,
           "peak_rss_mib_vmhwm": round(status["VmHWM"] / 1024, 1),
           "rss_mib_at_end_of_drain": round(status["VmRSS"] / 1024, 1)}
    return [drain, mem]


def main() -> None:
    """Parse arguments, run, print one JSON line per measurement."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meters", type=int, default=500)
    ap.add_argument("--quantities", type=int, default=4, choices=range(1, len(QUANTITIES) + 1))
    ap.add_argument("--interval", type=float, default=15.0, help="poll interval, seconds")
    ap.add_argument("--hours", type=float, default=24.0, help="outage length")
    ap.add_argument("--live-interval", type=float, default=None,
                    help="wall-clock seconds between live polls during the drain (default: --interval)")
    ap.add_argument("--window", type=int, default=20, help="Gateway publish_window")
    args = ap.parse_args()
    for line in run(args.meters, args.quantities, args.interval, args.hours, args.window,
                    args.live_interval or args.interval):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
