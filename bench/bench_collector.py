"""Modbus TCP collection: tags per second per collector core, and energymon beside modpoll2mqtt and Node-RED.

    python bench/bench_collector.py [--quick] [--repeat 3] [--only max,tick,peers] [--tools energymon,...]

Simulated devices: N pymodbus Modbus TCP servers, one per device and port (as in EMQX Neuron's 500-device test),
each holding 30 float32 tags in holding registers 0..59 (big-endian words; tag t of device d holds
``d*100 + t + 0.5``, so every delivered value is checked exactly). They run in separate processes from
everything measured (up to ``--devices-per-sim`` servers per process).

Measurements, each repeated ``--repeat`` times and printed as one JSON line with every run, the median and the
spread:

* ``collector_max``: energymon's :class:`~energymon.collectors.modbus.ModbusCollector` driven as the gateway
  drives it (one collector per bus, built by ``energymon.runtime.build_collectors``; every collector polled with
  ``asyncio.gather`` per tick) in a process of its own, polling back to back for a fixed time. Reported: tags
  read per second and per collector CPU-second.
* ``collector_1s``: the same at wall-clock 1-second ticks (500 x 30 by default): collector CPU as a fraction
  of a core, peak RSS (VmHWM), poll duration per tick, ticks missed.
* ``peers_1s``: read + decode + publish to a real Mosquitto (QoS 1) at 1-second ticks on the same simulated
  devices, one tool after another (100 devices for all three; 500 for energymon and Node-RED, as modpoll would
  need 500 processes): energymon's real gateway path (``build_gateway``: collectors, SQLite outbox and edge
  history, ``MqttTransport``), modpoll2mqtt 2.4.1 (one process per device: it polls one endpoint per process),
  Node-RED 4.x with node-red-contrib-modbus 5.23.3 (modbus-read per device, one float32 decoder function, one
  mqtt out). A subscriber process counts and checks every value delivered; CPU seconds per 10,000 delivered
  tags come from /proc/<pid>/stat of the tool's processes. modpoll2mqtt 2.4.1 busy-waits (a full core per
  process) from its MQTT connect until it receives a first command, so every modpoll process is sent one
  harmless command during its warm-up; a one-process probe (``modpoll2mqtt_1proc_as_shipped`` and
  ``_woken``) shows the cost with and without it.

The peers are installed outside the repository (``~/.cache/energymon-bench``, see ``bench/collector_peers``);
if an install fails (no registry access), that peer's line says so and the rest still runs.

Every line also carries the machine's load average before the run and the CPU other processes used during it
(from /proc/stat), because on a shared 2-core machine that is what most often spoils a figure. Before each run
the script waits (bounded) until the machine is quiet.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from collector_peers import TAGS, expected_value, tag_name  # noqa: E402
from collector_peers import modpoll as modpoll_peer  # noqa: E402
from collector_peers import nodered as nodered_peer  # noqa: E402

USCC = "91530102MA6K7LQ8RH"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CTX = mp.get_context("spawn")
#: a child process that is not told to stop exits by itself after this long
CHILD_LIFETIME_S = 900.0

# ----------------------------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (not its children)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmHWM, VmRSS), 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        vals = [int(x) for x in fh.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


def machine_busy_cores(secs: float = 2.0) -> float:
    """Cores busy on the whole machine over the next ``secs`` seconds."""
    b0, _ = machine_jiffies()
    time.sleep(secs)
    b1, _ = machine_jiffies()
    return (b1 - b0) / CLK_TCK / secs


def wait_quiet(threshold: float, max_wait: float) -> dict[str, Any]:
    """Wait (at most ``max_wait`` s) until other processes use less than ``threshold`` cores.

    Returns the load average and the busy cores seen before the run starts.
    """
    t0 = time.time()
    while True:
        busy = machine_busy_cores(2.0)
        if busy < threshold or time.time() - t0 > max_wait:
            return {"loadavg_before": [round(x, 2) for x in os.getloadavg()], "busy_cores_before": round(busy, 2),
                    "waited_s": round(time.time() - t0, 1)}
        time.sleep(5)


class CpuWindow:
    """CPU seconds of a set of processes, and of the whole machine, between :meth:`start` and :meth:`stop`."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def _sample(self) -> tuple[float, dict[str, float], int]:
        return time.perf_counter(), {k: sum(cpu_seconds(p) for p in v) for k, v in self.groups.items()}, \
            machine_jiffies()[0]

    def start(self) -> None:
        self.t0, self.c0, self.m0 = self._sample()

    def stop(self) -> dict[str, Any]:
        t1, c1, m1 = self._sample()
        wall = t1 - self.t0
        cpu = {k: c1[k] - self.c0[k] for k in self.groups}
        machine = (m1 - self.m0) / CLK_TCK
        return {"wall_s": wall, "cpu_s": cpu, "machine_cpu_s": machine,
                "other_cores": max(0.0, (machine - sum(cpu.values())) / wall)}


# ----------------------------------------------------------------------------------------------- children


def on_message(conn: Connection) -> asyncio.Event:
    """An event set when the parent writes to ``conn`` (the message is left unread)."""
    loop, stop, fd = asyncio.get_running_loop(), asyncio.Event(), conn.fileno()

    def fire() -> None:
        loop.remove_reader(fd)
        stop.set()

    loop.add_reader(fd, fire)
    return stop


def sim_main(first: int, count: int, conn: Connection) -> None:
    """Child: ``count`` Modbus TCP servers on free loopback ports for devices first..first+count-1."""
    asyncio.run(_sim(first, count, conn))


async def _sim(first: int, count: int, conn: Connection) -> None:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    ports: list[int] = []
    for d in range(first, first + count):
        values = [expected_value(d, t) for t in range(TAGS)]
        dev = SimDevice(id=1, simdata=[SimData(address=0, values=values, datatype=DataType.FLOAT32)])
        server = ModbusTcpServer(dev, address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        sockets = getattr(server.transport, "sockets", None) or []  # an asyncio Server while listening
        ports.append(sockets[0].getsockname()[1])
    conn.send(ports)
    stop = on_message(conn)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), CHILD_LIFETIME_S)


def bench_plant(endpoints: list[tuple[int, int]], mqtt_url: str = "mqtt://127.0.0.1:1883") -> Any:
    """A plant file with one Modbus TCP bus per device (device index, port), 30 float32 tags each, 1 s polls."""
    from energymon.config import PlantConfig

    regs = [{"quantity": tag_name(t), "address": 2 * t, "type": "float32", "unit": "kW"} for t in range(TAGS)]
    return PlantConfig.model_validate({
        "enterprise": {"uscc": USCC, "name": "bench", "industry_code": "C3011"},
        "register_maps": {"f30": {"registers": regs}},
        "buses": [{"type": "modbus_tcp", "id": f"b{d}", "host": "127.0.0.1", "port": port, "timeout_ms": 1000,
                   "retries": 0} for d, port in endpoints],
        "meters": [{"id": f"d{d}", "source": {"type": "modbus", "bus": f"b{d}", "unit_id": 1, "model": "f30"}}
                   for d, _ in endpoints],
        "gateway": {"id": "bench", "poll_groups": [{"id": "default", "interval_secs": 1}]},
        "uplink": {"url": mqtt_url},
    })


def collector_main(endpoints: list[tuple[int, int]], mode: str, duration: float, conn: Connection) -> None:
    """Child: the collectors alone, polled back to back (``max``) or at wall-clock 1 s ticks (``tick``)."""
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(_collect(endpoints, mode, duration, conn))


async def _collect(endpoints: list[tuple[int, int]], mode: str, duration: float, conn: Connection) -> None:
    from energymon.clock import WallClock
    from energymon.metrics import private_metrics
    from energymon.runtime import build_collectors
    from energymon.schema import Quality

    plant = bench_plant(endpoints)
    collectors, _ = build_collectors(plant, clock=WallClock(), metrics=private_metrics())
    expected = {f"d{d}": {tag_name(t): expected_value(d, t) for t in range(TAGS)} for d, _ in endpoints}
    good_q = Quality.GOOD
    n = {"points": 0, "bad": 0, "wrong": 0, "poll_errors": 0}

    async def round_(ts_ms: int) -> None:
        results = await asyncio.gather(*(c.poll("default", ts_ms) for c in collectors), return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException):
                n["poll_errors"] += 1
                continue
            n["points"] += len(res)
            for p in res:
                if p.quality is not good_q:
                    n["bad"] += 1
                elif p.value != expected[p.meter][p.quantity]:
                    n["wrong"] += 1

    for c in collectors:
        await c.start()
    for _ in range(3):  # connect every bus, warm up
        await round_(int(time.time() * 1000))
    warm = dict(n)
    for key in n:
        n[key] = 0
    conn.send(("ready", warm))
    conn.recv()  # "go"
    rounds, durations, missed = 0, [], 0
    t0 = time.perf_counter()
    if mode == "max":
        while time.perf_counter() - t0 < duration:
            s = time.perf_counter()
            await round_(int(time.time() * 1000))
            durations.append(time.perf_counter() - s)
            rounds += 1
    else:
        # drift-free 1 s schedule from "go"; a round that overruns skips the ticks it covered (as the gateway
        # does); the window ends one period after the last round started, so it spans whole periods
        start = time.time()
        k = 0
        while k < int(duration):
            await asyncio.sleep(max(0.0, start + k - time.time()))
            s = time.perf_counter()
            await round_(int((start + k) * 1000))
            durations.append(time.perf_counter() - s)
            rounds += 1
            nxt = max(k + 1, int(time.time() - start) + 1)
            missed += nxt - k - 1
            k = nxt
        await asyncio.sleep(max(0.0, start + k - time.time()))
    elapsed = time.perf_counter() - t0
    durations.sort()
    conn.send(("done", {**n, "rounds": rounds, "missed_ticks": missed, "elapsed_s": elapsed,
                        "poll_p50_ms": 1000 * durations[len(durations) // 2],
                        "poll_max_ms": 1000 * durations[-1]}))
    conn.recv()  # "exit" (the parent read VmHWM meanwhile)
    for c in collectors:
        await c.stop()


def gateway_main(endpoints: list[tuple[int, int]], mqtt_url: str, data_dir: str, conn: Connection) -> None:
    """Child: energymon's gateway (collectors, SQLite outbox, MQTT uplink) until the parent says stop."""
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(_gateway(endpoints, mqtt_url, data_dir, conn))


async def _gateway(endpoints: list[tuple[int, int]], mqtt_url: str, data_dir: str, conn: Connection) -> None:
    from energymon.clock import WallClock
    from energymon.metrics import private_metrics
    from energymon.runtime import build_gateway

    gw = build_gateway(bench_plant(endpoints, mqtt_url), data_dir=Path(data_dir), clock=WallClock(),
                       metrics=private_metrics())
    stop = on_message(conn)
    task = asyncio.create_task(gw.run(stop))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(stop.wait()), CHILD_LIFETIME_S)
    stop.set()
    await task
    conn.recv()
    conn.send({"polls": gw.polls})


def subscriber_main(host: str, port: int, topic: str, kind: str, conn: Connection) -> None:
    """Child: subscribe, count every tag delivered and check its value; answer ``mark`` with the counters."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from energymon.schema import decode_batch

    lock = threading.Lock()
    c = {"msgs": 0, "tags": 0, "bad": 0, "wrong": 0}
    seen: set[str] = set()
    subscribed = threading.Event()

    def check(device: str, quantity: str, value: Any) -> None:
        c["tags"] += 1
        if value is None:
            c["bad"] += 1
        elif value != expected_value(int(device[1:]), int(quantity[1:])):
            c["wrong"] += 1

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        with lock:
            c["msgs"] += 1
            try:
                if kind == "energymon":
                    for p in decode_batch(msg.payload).points:
                        seen.add(p.meter)
                        check(p.meter, p.quantity, p.value)
                else:
                    device = msg.topic.split("/")[1]
                    seen.add(device)
                    data = json.loads(msg.payload)
                    for q in range(TAGS):
                        check(device, tag_name(q), data.get(tag_name(q)))
            except Exception:
                c["wrong"] += 1

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{os.getpid()}")
    client.on_message = on_message
    client.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect(host, port)
    client.loop_start()
    subscribed.wait(30)
    conn.send("ready")
    deadline = time.time() + CHILD_LIFETIME_S
    while time.time() < deadline and conn.poll(max(0.0, deadline - time.time())):
        cmd = conn.recv()
        if cmd == "stop":
            break
        with lock:
            conn.send({**c, "devices_seen": len(seen), "t": time.perf_counter()})
    client.loop_stop()
    client.disconnect()


# ----------------------------------------------------------------------------------------------- parent helpers


class Sims:
    """Simulator processes for devices 0..n-1, ``per_proc`` servers each."""

    def __init__(self, n: int, per_proc: int) -> None:
        self.procs: list[tuple[mp.process.BaseProcess, Connection]] = []
        self.endpoints: list[tuple[int, int]] = []
        for first in range(0, n, per_proc):
            parent, child = CTX.Pipe()
            proc = CTX.Process(target=sim_main, args=(first, min(per_proc, n - first), child), daemon=True)
            proc.start()
            self.procs.append((proc, parent))
        for i, (_, conn) in enumerate(self.procs):
            if not conn.poll(120):
                self.stop()
                raise RuntimeError("simulator did not start in 120 s")
            ports = conn.recv()
            self.endpoints += [(i * per_proc + k, port) for k, port in enumerate(ports)]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self.procs if p.pid is not None]

    def stop(self) -> None:
        for _, conn in self.procs:
            with contextlib.suppress(OSError):
                conn.send("stop")
        for proc, _ in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


class Subscriber:
    """The verifying subscriber process."""

    def __init__(self, host: str, port: int, topic: str, kind: str) -> None:
        self.conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=subscriber_main, args=(host, port, topic, kind, child), daemon=True)
        self.proc.start()
        if not self.conn.poll(60) or self.conn.recv() != "ready":
            raise RuntimeError("subscriber did not start")

    def mark(self) -> dict[str, Any]:
        self.conn.send("mark")
        if not self.conn.poll(30):
            raise RuntimeError("subscriber did not answer")
        result: dict[str, Any] = self.conn.recv()
        return result

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()


def summarize(name: str, runs: list[dict[str, Any]], keys: list[str], **extra: Any) -> dict[str, Any]:
    """One JSON line: the runs, and the median and spread (min, max) of each key figure."""
    out: dict[str, Any] = {"bench": name, **extra, "repeat": len(runs), **git_state()}
    for k in keys:
        vals = [r[k] for r in runs if isinstance(r.get(k), int | float)]
        if vals:
            out[k] = {"median": round(statistics.median(vals), 4), "min": round(min(vals), 4),
                      "max": round(max(vals), 4)}
    out["runs"] = runs
    return out


def limit_of(cpu_frac: dict[str, float], other_cores: float, cores: int) -> str:
    """Name what bounded a max-rate run: the process group closest to a full core, or the machine."""
    total = sum(cpu_frac.values()) + other_cores
    top = max(cpu_frac, key=lambda k: cpu_frac[k])
    if cpu_frac[top] >= 0.85:
        return f"{top} CPU-bound ({cpu_frac[top]:.2f} of a core)"
    if total >= cores * 0.9:
        return f"machine saturated ({total:.2f} of {cores} cores busy)"
    return f"not CPU-bound (busiest: {top} at {cpu_frac[top]:.2f} of a core): round-trip latency"


# ----------------------------------------------------------------------------------------------- measurements


def run_collector(n: int, mode: str, duration: float, args: argparse.Namespace,
                  per_sim: int | None = None) -> dict[str, Any]:
    """One run of the collector alone against n simulated devices (``per_sim`` servers per simulator process)."""
    quiet = wait_quiet(args.quiet_cores, args.max_wait)
    sims = Sims(n, per_sim or args.devices_per_sim)
    try:
        parent, child = CTX.Pipe()
        proc = CTX.Process(target=collector_main, args=(sims.endpoints, mode, duration, child), daemon=True)
        proc.start()
        try:
            if not parent.poll(300):
                raise RuntimeError("collector did not get ready")
            _, warm = parent.recv()
            assert proc.pid is not None
            win = CpuWindow({"collector": [proc.pid], "simulator": sims.pids})
            win.start()
            parent.send("go")
            if not parent.poll(duration + 120):
                raise RuntimeError("collector did not finish")
            _, res = parent.recv()
            w = win.stop()
            hwm, rss = status_kb(proc.pid, "VmHWM"), status_kb(proc.pid, "VmRSS")
            parent.send("exit")
            proc.join(30)
        finally:
            if proc.is_alive():
                proc.terminate()
    finally:
        sims.stop()
    good = res["points"] - res["bad"] - res["wrong"]
    ccpu, scpu = w["cpu_s"]["collector"], w["cpu_s"]["simulator"]
    frac = {"collector": ccpu / w["wall_s"], "simulator": scpu / w["wall_s"] / max(1, len(sims.pids)),
            "simulators_total": scpu / w["wall_s"]}
    run = {
        **quiet,
        "devices": n, "tags_per_device": TAGS, "simulator_processes": len(sims.pids),
        "wall_s": round(w["wall_s"], 2), "rounds": res["rounds"], "tags_read": res["points"],
        "tags_good": good, "tags_bad": res["bad"], "tags_wrong_value": res["wrong"],
        "poll_errors": res["poll_errors"], "warmup_bad": warm["bad"] + warm["wrong"],
        "tags_per_s": round(res["points"] / res["elapsed_s"]),
        "tags_per_collector_cpu_s": round(good / max(ccpu, 1e-9)),
        "collector_cpu_s": round(ccpu, 2), "collector_cores": round(frac["collector"], 3),
        "simulator_cpu_s": round(scpu, 2), "simulator_cores_total": round(frac["simulators_total"], 3),
        "other_cores_during": round(w["other_cores"], 2),
        "collector_vmhwm_mb": round(hwm / 1024, 1), "collector_vmrss_mb": round(rss / 1024, 1),
        "poll_p50_ms": round(res["poll_p50_ms"], 1), "poll_max_ms": round(res["poll_max_ms"], 1),
        "missed_ticks": res["missed_ticks"],
    }
    if mode == "max":
        busiest = {"collector": frac["collector"], "simulator (per process)": frac["simulator"]}
        run["limit"] = limit_of(busiest, w["other_cores"], os.cpu_count() or 1)
    return run


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as rsp:
            return bool(rsp.status == 200)
    except OSError:
        return False


def run_tool(tool: str, sims: Sims, mq: Any, tmp: Path, args: argparse.Namespace, *,
             devices: int | None = None, spin_probe: bool = False) -> list[dict[str, Any]]:
    """One tool at 1 s ticks on the first ``devices`` running simulated devices: start it, wait until every
    device was delivered, measure ``args.peer_secs`` seconds, stop it.

    modpoll2mqtt 2.4.1 busy-waits from its MQTT connect until it dequeues a first incoming command (its wake-up
    event is set on connect and cleared only by a dequeue). One message on the get-topic of a device nobody has
    ends that, so during the warm-up every modpoll process gets such a message. With ``spin_probe`` (one
    process) the first window is taken before that message and a second one after it.
    """
    from services import free_port

    endpoints = sims.endpoints[:devices] if devices else sims.endpoints
    n = len(endpoints)
    quiet = wait_quiet(args.quiet_cores, args.max_wait)
    from energymon.topics import readings_filter

    topic = {"energymon": readings_filter(USCC), "modpoll2mqtt": "modpoll/+/data", "node-red": "nr/+"}[tool]
    kind = "energymon" if tool == "energymon" else "json"
    sub = Subscriber(mq.host, mq.port, topic, kind)
    stoppers: list[Callable[[], None]] = []
    pids: list[int] = []
    work = Path(tempfile.mkdtemp(prefix=f"{tool}-", dir=tmp))
    try:
        t_launch = time.perf_counter()
        if tool == "energymon":
            parent, child = CTX.Pipe()
            proc = CTX.Process(target=gateway_main, args=(endpoints, mq.url, str(work), child), daemon=True)
            proc.start()
            pids.append(proc.pid or 0)

            def stop_gw() -> None:
                with contextlib.suppress(OSError):
                    parent.send("stop")
                proc.join(30)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(5)
            stoppers.append(stop_gw)
        elif tool == "modpoll2mqtt":
            procs = []
            for d, port in endpoints:
                csv = modpoll_peer.write_csv(work / f"d{d}.csv", f"d{d}")
                log = open(work / f"d{d}.log", "wb")  # noqa: SIM115 - closed by the stopper
                procs.append((subprocess.Popen(
                    modpoll_peer.command(csv, port, mq.host, mq.port, f"modpoll-d{d}"),
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), log))
            pids += [p.pid for p, _ in procs]

            def stop_mp() -> None:
                for p, _ in procs:
                    p.terminate()
                for p, log in procs:
                    try:
                        p.wait(15)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait(5)
                    log.close()
            stoppers.append(stop_mp)
        else:
            ui_port = free_port()
            nodered_peer.write_settings(work, ui_port)
            nodered_peer.write_flow(work, [(f"d{d}", port) for d, port in endpoints], mq.host, mq.port)
            log = open(work / "node-red.log", "wb")  # noqa: SIM115 - closed by the stopper
            env = {**os.environ, "NODE_RED_DISABLE_TELEMETRY": "1"}
            nr = subprocess.Popen(nodered_peer.command(work, ui_port), cwd=work, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            pids.append(nr.pid)

            def stop_nr() -> None:
                nr.terminate()
                try:
                    nr.wait(15)
                except subprocess.TimeoutExpired:
                    nr.kill()
                    nr.wait(5)
                log.close()
            stoppers.append(stop_nr)
        waker = ModpollWaker(mq.host, mq.port) if tool == "modpoll2mqtt" else None
        if waker is not None:
            stoppers.insert(0, waker.close)
        # warm-up: every device delivered at least once, then a few more ticks
        deadline = time.perf_counter() + args.startup_timeout
        while True:
            m = sub.mark()
            if m["devices_seen"] >= n or time.perf_counter() > deadline:
                break
            if waker is not None and not spin_probe:
                waker.wake()
            time.sleep(0.5)
        startup_s = time.perf_counter() - t_launch
        if waker is not None and not spin_probe:
            waker.wake()
        time.sleep(3.0)
        label = f"{tool}_1proc_as_shipped" if spin_probe else tool
        results = [measure_window(label, sub, pids, n, sims, mq, args)]
        if waker is not None and spin_probe:
            waker.wake()
            time.sleep(3.0)
            results.append(measure_window(f"{tool}_1proc_woken", sub, pids, n, sims, mq, args))
    finally:
        for stop in stoppers:
            stop()
        sub.stop()
    for r in results:
        r.update(quiet)
        r["startup_s"] = round(startup_s, 1)
    return results


class ModpollWaker:
    """Publishes a get command for a device nobody has; every modpoll process receives and rejects it."""

    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-wake-{os.getpid()}")
        self.client.connect(host, port)
        self.client.loop_start()

    def wake(self) -> None:
        self.client.publish("modpoll/nobody/get", b"wake", qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def measure_window(label: str, sub: Subscriber, pids: list[int], n: int, sims: Sims, mq: Any,
                   args: argparse.Namespace) -> dict[str, Any]:
    """Tags delivered and CPU used over ``args.peer_secs`` seconds by ``pids`` polling ``n`` devices."""
    win = CpuWindow({"tool": pids, "simulator": sims.pids, "broker": [mq.pid or 0],
                     "subscriber": [sub.proc.pid or 0]})
    m0 = sub.mark()
    win.start()
    time.sleep(args.peer_secs)
    m1 = sub.mark()
    w = win.stop()
    rss = sum(status_kb(p, "VmRSS") for p in pids)
    hwm = sum(status_kb(p, "VmHWM") for p in pids)
    tags = m1["tags"] - m0["tags"]
    secs = m1["t"] - m0["t"]
    tcpu = w["cpu_s"]["tool"]
    target = n * TAGS
    rate = tags / secs
    return {
        "tool": label, "devices": n, "tags_per_device": TAGS, "processes": len(pids),
        "devices_delivered": m1["devices_seen"],
        "window_s": round(secs, 2), "tags_delivered": tags, "messages": m1["msgs"] - m0["msgs"],
        "tags_bad": m1["bad"] - m0["bad"], "tags_wrong_value": m1["wrong"] - m0["wrong"],
        "tags_per_s": round(rate), "target_tags_per_s": target, "kept_up": rate >= 0.97 * target,
        "tool_cpu_s": round(tcpu, 2), "tool_cores": round(tcpu / w["wall_s"], 3),
        "cpu_s_per_10k_tags": round(10_000 * tcpu / max(tags, 1), 4),
        "tool_rss_mb": round(rss / 1024, 1), "tool_vmhwm_mb_sum": round(hwm / 1024, 1),
        "simulator_cores": round(w["cpu_s"]["simulator"] / w["wall_s"], 3),
        "broker_cores": round(w["cpu_s"]["broker"] / w["wall_s"], 3),
        "subscriber_cores": round(w["cpu_s"]["subscriber"] / w["wall_s"], 3),
        "other_cores_during": round(w["other_cores"], 2),
    }


def peer_availability(args: argparse.Namespace) -> dict[str, str | None]:
    """Install (or find) the peers; value None = available, else why not."""
    out: dict[str, str | None] = {"energymon": None}
    wanted = args.tools.split(",")
    if "modpoll2mqtt" in wanted:
        out["modpoll2mqtt"] = "skipped (--no-peers)" if args.no_peers else modpoll_peer.install()
    if "node-red" in wanted:
        out["node-red"] = "skipped (--no-peers)" if args.no_peers else nodered_peer.install()
    return out


# ----------------------------------------------------------------------------------------------- main


def machine_info() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    import pymodbus

    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip() \
        if shutil.which("node") else None
    return {"bench": "machine", "nproc": os.cpu_count(), "cpu_model": model, "ram_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "pymodbus": pymodbus.__version__, "node": node,
            "node_red": nodered_peer.version(), "modpoll2mqtt": modpoll_peer.VERSION if modpoll_peer.installed()
            else None, "kernel": platform.release(), **git_state()}


def git_state() -> dict[str, Any]:
    """The commit measured and whether the work tree had changes (read-only git commands)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head, "work_tree_modified": bool(dirty)}


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs, 1 repetition, fewer device counts")
    ap.add_argument("--repeat", type=int, default=None, help="repetitions of each figure (default 3, quick 1)")
    ap.add_argument("--only", default="max,tick,peers", help="comma list of: max, tick, peers")
    ap.add_argument("--max-devices", default=None, help="device counts for collector_max (default 50,200,500)")
    ap.add_argument("--max-secs", type=float, default=None, help="length of a collector_max run (default 15)")
    ap.add_argument("--tick-devices", type=int, default=500)
    ap.add_argument("--tick-secs", type=float, default=None, help="length of a collector_1s run (default 30)")
    ap.add_argument("--peer-devices", type=int, default=None, help="devices for peers_1s (default 100)")
    ap.add_argument("--wide-devices", type=int, default=None,
                    help="devices for energymon and Node-RED only (default 500, quick 0 = skip)")
    ap.add_argument("--peer-secs", type=float, default=None, help="measured window per tool (default 30)")
    ap.add_argument("--devices-per-sim", type=int, default=250, help="Modbus servers per simulator process")
    ap.add_argument("--no-peers", action="store_true", help="energymon only")
    ap.add_argument("--tools", default="energymon,modpoll2mqtt,node-red", help="tools compared in peers_1s")
    ap.add_argument("--quiet-cores", type=float, default=0.3,
                    help="wait before a run until other processes use less than this many cores")
    ap.add_argument("--max-wait", type=float, default=120.0, help="longest wait for a quiet machine, s")
    ap.add_argument("--startup-timeout", type=float, default=120.0)
    args = ap.parse_args()
    q = args.quick
    repeat = args.repeat or (1 if q else 3)
    max_devices = [int(x) for x in (args.max_devices or ("50,500" if q else "50,200,500")).split(",")]
    max_secs = args.max_secs or (5.0 if q else 15.0)
    tick_secs = args.tick_secs or (10.0 if q else 30.0)
    args.peer_secs = args.peer_secs or (10.0 if q else 30.0)
    peer_devices = args.peer_devices or (50 if q else 100)
    wide_devices = args.wide_devices if args.wide_devices is not None else (0 if q else 500)
    only = set(args.only.split(","))
    logging.basicConfig(level=logging.WARNING)

    emit(machine_info())
    if "max" in only:
        for n in max_devices:
            runs = [run_collector(n, "max", max_secs, args) for _ in range(repeat)]
            emit(summarize("collector_max", runs, ["tags_per_collector_cpu_s", "tags_per_s", "collector_cores",
                                                   "simulator_cores_total"], devices=n, secs=max_secs))
        if not q:
            # how far one simulator process goes: every server of the largest run in one process
            n = max(max_devices)
            runs = [run_collector(n, "max", max_secs, args, per_sim=n) for _ in range(repeat)]
            emit(summarize("collector_max_one_simulator_process", runs,
                           ["tags_per_collector_cpu_s", "tags_per_s", "collector_cores", "simulator_cores_total"],
                           devices=n, secs=max_secs))
    if "tick" in only:
        n = args.tick_devices
        runs = [run_collector(n, "tick", tick_secs, args) for _ in range(repeat)]
        emit(summarize("collector_1s", runs, ["collector_cores", "collector_vmhwm_mb", "tags_per_s",
                                              "tags_per_collector_cpu_s", "poll_p50_ms", "poll_max_ms"],
                       devices=n, secs=tick_secs))
    if "peers" in only:
        from services import Mosquitto

        avail = peer_availability(args)
        for tool, reason in avail.items():
            if reason is not None:
                emit({"bench": "peers_1s", "tool": tool, "status": "unavailable", "reason": reason})
        tools = [t for t, r in avail.items() if r is None and t in args.tools.split(",")]
        # (tool, devices, spin probe); modpoll runs one process per device, so not at the wide count
        plan = [(t, peer_devices, False) for t in tools]
        if wide_devices:
            plan += [(t, wide_devices, False) for t in tools if t != "modpoll2mqtt"]
        if "modpoll2mqtt" in tools:
            plan.append(("modpoll2mqtt", 1, True))
        by_tool: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for _ in range(repeat):
            with tempfile.TemporaryDirectory(prefix="energymon-bench-coll-") as tmpdir:
                mq = Mosquitto().start()
                sims = Sims(max(peer_devices, wide_devices), args.devices_per_sim)
                try:
                    for tool, n, probe in plan:
                        try:
                            for res in run_tool(tool, sims, mq, Path(tmpdir), args, devices=n, spin_probe=probe):
                                by_tool.setdefault((res["tool"], n), []).append(res)
                        except Exception as exc:
                            by_tool.setdefault((tool, n), []).append(
                                {"tool": tool, "devices": n, "error": f"{type(exc).__name__}: {exc}"})
                finally:
                    sims.stop()
                    mq.stop()
        for (tool, n), tool_runs in by_tool.items():
            emit(summarize("peers_1s", tool_runs, ["cpu_s_per_10k_tags", "tags_per_s", "tool_cores", "tool_rss_mb"],
                           tool=tool, devices=n, secs=args.peer_secs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
