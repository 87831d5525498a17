"""Run every benchmark in bench/ and print one JSON object with each figure, its peer or limit and the ratio.

    python bench/run.py            # the full configurations (``make bench``)
    python bench/run.py --quick    # a short version of every bench (well under ten minutes)

Each bench runs in its own process and prints JSON lines; this runner keeps them (under ``runs``) and lifts the
headline figures into ``figures``: for each, the figure, the peer or limit it is judged against (measured in the
same run where there is one), the ratio and, where a target is set, the target and whether the same-run ratio
meets it. A bench that fails is recorded with its exit code and the rest still run; the exit code is non-zero if
any failed. The machine (cores, CPU model, memory, Python) and the load average at the start and the end of
each bench are recorded beside the figures, since on a shared machine only the ratios are comparable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent

#: name → (full arguments, quick arguments); a bench whose file is missing is skipped
RUNS: dict[str, tuple[list[str], list[str]]] = {
    "pipeline": (
        ["bench_pipeline.py", "--points", "500000", "--batch", "1000", "--meters", "100"],
        ["bench_pipeline.py", "--points", "60000", "--batch", "1000", "--meters", "100"],
    ),
    "pipeline_10k_meters": (
        ["bench_pipeline.py", "--points", "500000", "--batch", "5000", "--meters", "10000"],
        ["bench_pipeline.py", "--points", "100000", "--batch", "5000", "--meters", "10000"],
    ),
    "store": (["bench_store.py", "--points", "200000"], ["bench_store.py", "--points", "50000"]),
    "alert_latency": (
        ["bench_alert_latency.py", "--transitions", "1000", "--meters", "500", "--switched", "100"],
        ["bench_alert_latency.py", "--transitions", "1000", "--meters", "500", "--switched", "200"],
    ),
    "recompute": (["bench_recompute.py", "--items", "1000"], ["bench_recompute.py", "--items", "100"]),
    "collector": (["bench_collector.py"], ["bench_collector.py", "--quick", "--max-wait", "20"]),
    "gateway": (["bench_gateway.py"], ["bench_gateway.py", "--meters", "500", "--hours", "2"]),
    "startup": (["bench_startup.py"], ["bench_startup.py", "--runs", "3"]),
}


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory and Python version of this machine."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {"nproc": os.cpu_count(), "cpu_model": model, "mem_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "loadavg": _loadavg()}


def _figure(value: Any, peer: Any, peer_name: str, *, target: float | None = None, lower_is_better: bool = False,
            ratio: float | None = None) -> dict[str, Any]:
    if ratio is None and isinstance(value, int | float) and isinstance(peer, int | float) and peer:
        ratio = round(value / peer, 3)
    out: dict[str, Any] = {"value": value, "peer": peer_name, "peer_value": peer, "ratio": ratio}
    if target is not None:
        out["target_ratio"] = target
        out["target_met"] = None if ratio is None else (ratio <= target if lower_is_better else ratio >= target)
    return out


def _pipeline(lines: list[dict[str, Any]]) -> dict[str, Any]:
    r = lines[-1]
    lim = r.get("writer_limit", {})
    return {
        "processor_points_per_cpu_s": _figure(r["points_per_processor_cpu_s"], lim.get("list", {}).get(
            "lines_per_cpu_s"), "influxdb-client list-of-strings writer, lines per CPU-s", target=0.5),
        "processor_vs_joined_bytes_writer": _figure(r["points_per_processor_cpu_s"], lim.get("bytes", {}).get(
            "lines_per_cpu_s"), "influxdb-client joined-bytes writer, lines per CPU-s"),
        "system_cpu_us_per_point": _figure(r["system_cpu_us_per_point"], r["processor_cpu_us_per_point"],
                                           "processor's own CPU µs per point"),
        "stored_ok": r.get("stored_ok"),
    }


def _store(lines: list[dict[str, Any]]) -> dict[str, Any]:
    by = {r["store"]: r for r in lines if "store" in r}
    out: dict[str, Any] = {}
    if "influx" in by and "sqlite" in by:
        out["influx_values_per_s"] = _figure(by["influx"]["values_per_s"], by["sqlite"]["values_per_s"],
                                             "SqliteStore values per s")
    return out


def _alert(lines: list[dict[str, Any]]) -> dict[str, Any]:
    r = lines[-1]
    return {"poll_to_webhook_p99_ms": _figure(r["poll_to_webhook_ms"].get("p99"), r["peer_poll_interval_ms"],
                                              "poll interval ms"),
            "switch_to_webhook_p99_ms": _figure(r["switch_to_webhook_ms"].get("p99"), r["peer_poll_interval_ms"],
                                                "poll interval ms"),
            "transitions": r["transitions"], "missed": r["missed"], "meters_flowing": r["meters_flowing"]}


def _recompute(lines: list[dict[str, Any]]) -> dict[str, Any]:
    r = lines[-1]
    return {"peak_rss_mb": _figure(r["peak_rss_mb"], r["target_peak_rss_mb"], "512 MB limit", target=1.0,
                                   lower_is_better=True),
            "seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"], "items": r["items"],
            "readings_read": r["readings_read"]}


def _collector(lines: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    peers: dict[tuple[str, int], float] = {}
    for r in lines:
        if r.get("bench") == "peers_1s" and "cpu_s_per_10k_tags" in r:
            peers[(r["tool"], r["devices"])] = r["cpu_s_per_10k_tags"]["median"]
        elif r.get("bench") == "collector_max":
            out[f"collector_max_{r['devices']}_tags_per_cpu_s"] = r["tags_per_collector_cpu_s"]["median"]
    for (tool, devices), cpu in peers.items():
        if tool == "energymon" and ("node-red", devices) in peers:
            out[f"cpu_per_tag_vs_node_red_{devices}_devices"] = _figure(
                cpu, peers[("node-red", devices)], "Node-RED CPU-s per 10k tags", target=0.5, lower_is_better=True)
    return out


def _startup(lines: list[dict[str, Any]]) -> dict[str, Any]:
    r = lines[-1]
    base = r["python_pass_min_s"]
    return {name: _figure(r[name]["min_s"], r[name]["target_s"], f"{r[name]['target_s']} s limit", target=1.0,
                          lower_is_better=True) | {"python_pass_min_s": base}
            for name in ("help", "validate") if name in r}


def _gateway(lines: list[dict[str, Any]]) -> dict[str, Any]:
    r = lines[-1]
    return {"stored_points_per_s": _figure(r["stored_points_per_s"], r["peer_received_points_per_s"],
                                           "points per s received by the processor"),
            "drain_to_store_s": r["drain_to_store_s"], "backlog_points": r["backlog_points"],
            "processor_cpu_s": r["processor_cpu_s"], "processor_peak_rss_mib": r["processor_peak_rss_mib"],
            "gateway_peak_rss_mib": r["gateway_peak_rss_mib"]}


def _generic(lines: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in lines:
        name = str(r.get("bench", r.get("name", "")))
        for key, value in r.items():
            if ("ratio" in key or key.endswith("_ok") or key == "target_met") and not isinstance(value, dict):
                out[f"{name}.{key}" if name else key] = value
    return out


EXTRACT: dict[str, Callable[[list[dict[str, Any]]], dict[str, Any]]] = {
    "pipeline": _pipeline, "pipeline_10k_meters": _pipeline, "store": _store, "alert_latency": _alert,
    "recompute": _recompute, "collector": _collector, "startup": _startup, "gateway": _gateway,
}


def run_one(args: list[str], timeout: float) -> tuple[int, list[dict[str, Any]], float, str]:
    """Run one bench; its exit code, the JSON lines it printed, its wall time, the tail of its stderr.

    A bench over its time is interrupted (SIGINT, so its clean-up runs: services stopped, folders removed) and
    killed with its process group only if it is still there a minute later.
    """
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(BENCH / args[0]), *args[1:]], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    note = ""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        note = f"timed out after {timeout:.0f} s\n"
        proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
    lines = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                lines.append(json.loads(line))
    rc = proc.returncode if not note else -1
    return rc, lines, time.monotonic() - t0, note + stderr[-2000:]


def main() -> int:
    """Run each benchmark in its own process and print one JSON object."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short versions of every bench")
    ap.add_argument("--only", default="", help="comma list of bench names (default: all): " + ", ".join(RUNS))
    args = ap.parse_args()
    names = [n for n in RUNS if not args.only or n in args.only.split(",")]
    started = time.monotonic()
    out: dict[str, Any] = {"mode": "quick" if args.quick else "full", "machine": machine(), "figures": {},
                           "runs": {}}
    failed = False
    for name in names:
        argv = RUNS[name][1 if args.quick else 0]
        if not (BENCH / argv[0]).exists():
            out["runs"][name] = {"skipped": f"{argv[0]} not present"}
            continue
        print(f"# {name}: {' '.join(argv)}", file=sys.stderr, flush=True)
        load0 = _loadavg()
        rc, lines, wall, err = run_one(argv, timeout=300 if args.quick else 3600)
        entry: dict[str, Any] = {"argv": argv, "exit_code": rc, "wall_s": round(wall, 1), "loadavg_start": load0,
                                 "loadavg_end": _loadavg(), "results": lines}
        if rc != 0:
            failed = True
            entry["stderr_tail"] = err
        out["runs"][name] = entry
        if lines:
            try:
                out["figures"][name] = EXTRACT.get(name, _generic)(lines)
            except (KeyError, IndexError, TypeError) as exc:
                out["figures"][name] = {"error": f"could not read the figures: {exc!r}"}
    out["total_wall_s"] = round(time.monotonic() - started, 1)
    out["machine"]["loadavg_end"] = _loadavg()
    print(json.dumps(out, ensure_ascii=False, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
