"""Recompute one year of 15-minute data for 1,000 items read from a real store, through the report path, on one core.

    python bench/bench_recompute.py                      # 1,000 items × 35,040 readings = 35 M readings
    python bench/bench_recompute.py --items 100          # smaller
    python bench/bench_recompute.py --source csv         # through a readings CSV instead of the store

A synthetic plant (``--items`` counters: electricity, raw coal, natural gas and fresh-water meters in ten
processes, one level-1 electricity and one level-1 gas meter, ten products with their output scales) and a year
of 15-minute readings are generated first, as a pandas frame sorted by meter and time (the order a store export
gives). A few meters carry the anomalies the counters must handle (zero glitches, a rollover, a recorded
replacement, a missing day), so both the vectorised path and the per-reading tracker are exercised.

With ``--source victoriametrics`` (the default) the readings are imported into a VictoriaMetrics (started on a
free loopback port, stopped and removed afterwards) as the processor stores them (``reading_value`` with the
enterprise, meter and quantity labels), and a fresh child process does the timed part, so its peak RSS is the
report path's alone: reading every counter's year from the store (``load_readings_store``, what ``energymon
report`` runs) → ``recompute`` of the year (15 min, hour, day, month, year, YTD; data quality, balance, budget)
→ the report dict → its JSON, CSV and HTML renderings. With ``--source csv`` the frame is written to a temporary
CSV and the child starts by reading it (``load_readings_csv``). Generation and import are not timed.

Printed: one JSON line with the wall time, the process CPU time, the child's peak RSS and its RSS before the
timed part, the reading rate, and the peak RSS against the 512 MiB target. The timed process pins itself to one
CPU and numpy to one thread. There is no wall-clock pass/fail: the machine may be shared.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from zoneinfo import ZoneInfo  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from energymon.config import PlantConfig, parse_plant  # noqa: E402
from energymon.processors.report import (  # noqa: E402
    ReportPeriod,
    build_report,
    load_readings_csv,
    render_csv,
    render_html,
)
from energymon.processors.rules import PlantRules  # noqa: E402
from energymon.refdata import load_reference_data  # noqa: E402

USCC = "91530102MA6K7LQ8RH"
TZ = ZoneInfo("Asia/Shanghai")
PROCESSES = 10
#: carrier, unit, mean use per 15 minutes
KINDS = [("electricity", "kWh", 250.0), ("raw_coal", "t", 1.5), ("natural_gas", "m3", 40.0), ("fresh_water", "t", 3.0)]


def plant_yaml(items: int) -> tuple[str, list[tuple[str, str, float]]]:
    """The plant file and, per meter, (id, unit, mean use per 15 min)."""
    meters: list[tuple[str, str, float]] = []
    lines = [
        "version: 1",
        f"enterprise: {{uscc: {USCC}, name: bench, industry_code: C3011, timezone: Asia/Shanghai}}",
        "processes: [" + ", ".join(f"{{id: p{i}}}" for i in range(PROCESSES)) + "]",
        "buses: [{type: mqtt, id: f, url: 'inproc://f'}]",
        "meters:",
    ]

    def add(mid: str, carrier: str | None, unit: str, level: int, process: str | None, per_q: float) -> None:
        c = f"carrier: {carrier}, " if carrier else ""
        p = f"process: {process}, " if process else ""
        lines.append(
            f"  - {{id: {mid}, {c}level: {level}, {p}counter: q, max_rate_per_hour: {per_q * 4 * 3:g},"
            f" source: {{type: mqtt_json, bus: f, topic: t/{mid},"
            f" fields: [{{path: v, quantity: q, unit: '{unit}', kind: counter, counter_max: 1.0e12}}]}}}}"
        )
        meters.append((mid, unit, per_q))

    n_energy = items - PROCESSES - 2
    add("incoming", "electricity", "kWh", 1, None, 250.0 * n_energy * 0.6)
    add("gas_main", "natural_gas", "m3", 1, None, 40.0 * n_energy * 0.25)
    for i in range(n_energy):
        carrier, unit, per_q = KINDS[0] if i % 10 < 6 else KINDS[1 + i % 3]
        add(f"m{i:04d}", carrier, unit, 2, f"p{i % PROCESSES}", per_q)
    for i in range(PROCESSES):
        add(f"out{i}", None, "t", 2, f"p{i}", 30.0)
    lines.append("products:")
    for i in range(PROCESSES):
        lines.append(f"  - {{id: prod{i}, unit: t, output: {{meter: out{i}, quantity: q}}, indicator: cement_clinker,"
                     f" boundary: {{processes: [p{i}]}}}}")
    lines += [
        "accounting:",
        "  equal_value_kgce_per_kwh: {2025: 0.2985, 2026: 0.2985}",
        "  co2: {overrides: [{carrier: raw_coal, kg_co2_per_unit: 1866, unit: t, source: bench}]}",
        f"  budget: {{annual_tce: {{2025: {250.0 * n_energy * 0.2 * 35040 / 1000:.0f}}}}}",
        "  replacements:",
        "    - {meter: m0003, at: '2025-06-01T10:07:00+08:00', old_final_value: 1.0e9, new_start_value: 0}",
        "    - {meter: m0013, at: '2025-09-01T00:01:00+08:00', old_final_value: 1.0e9, new_start_value: 0}",
    ]
    return "\n".join(lines) + "\n", meters


def readings_frame(plant: PlantConfig, meters: list[tuple[str, str, float]], year: int, seed: int) -> pd.DataFrame:
    """One year of 15-minute readings per meter (plus the first reading of the next year), sorted by meter."""
    rng = np.random.default_rng(seed)
    start = int(datetime(year, 1, 1, tzinfo=TZ).timestamp() * 1000)
    end = int(datetime(year + 1, 1, 1, tzinfo=TZ).timestamp() * 1000)
    ts = np.arange(start, end + 1, 900_000, dtype=np.int64)
    n = ts.size
    reps = {r.meter: (int(r.at.timestamp() * 1000), r.old_final_value, r.new_start_value)
            for r in plant.accounting.replacements}
    gaps = {k for k in range(len(meters)) if k % 211 == 7}  # these meters miss one day of readings
    gap = slice(20_000, 20_096)
    total = len(meters) * n - len(gaps) * (gap.stop - gap.start)
    all_ts = np.empty(total, dtype=np.int64)
    all_values = np.empty(total, dtype=np.float64)
    all_codes = np.empty(total, dtype=np.int16)
    pos = 0
    keep = np.ones(n, dtype=bool)
    keep[gap] = False
    for k, (mid, _unit, per_q) in enumerate(meters):
        inc = per_q * (0.8 + 0.4 * rng.random(n))
        inc[0] = 0.0
        v = 1000.0 + np.cumsum(inc)
        if mid in reps:  # the new meter restarts at new_start; the old one ended at old_final
            at, old_final, new_start = reps[mid]
            after = ts >= at
            first = int(np.argmax(after))
            v_at = np.interp(at, ts.astype(float), v)
            v[after] = v[after] - v_at + new_start
            v[:first] = np.minimum(v[:first], old_final)
        if k % 97 == 5:  # a zero glitch a week
            v[np.arange(300, n, 672)] = 0.0
        t = ts
        if k in gaps:
            t, v = ts[keep], v[keep]
        all_ts[pos : pos + t.size] = t
        all_values[pos : pos + t.size] = v
        all_codes[pos : pos + t.size] = k
        pos += t.size
    return pd.DataFrame(
        {"ts": all_ts, "meter_id": pd.Categorical.from_codes(all_codes, categories=[m[0] for m in meters]),
         "value": all_values},
        copy=False,
    )


def import_to_vm(url: str, frame: pd.DataFrame) -> None:
    """Import the readings into VictoriaMetrics as the processor stores them (one JSON line per meter)."""
    import httpx

    codes = frame["meter_id"].cat.codes.to_numpy()
    names = list(frame["meter_id"].cat.categories)
    ts = frame["ts"].to_numpy()
    values = frame["value"].to_numpy()
    bounds = np.flatnonzero(np.diff(codes)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(codes)]])
    with httpx.Client(timeout=300) as client:
        body: list[str] = []
        for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
            metric = {"__name__": "reading_value", "enterprise": USCC, "meter": names[codes[lo]], "quantity": "q"}
            body.append(json.dumps({"metric": metric, "values": values[lo:hi].tolist(),
                                    "timestamps": ts[lo:hi].tolist()}))
            if len(body) >= 20:
                client.post(f"{url}/api/v1/import", content="\n".join(body).encode()).raise_for_status()
                body = []
        if body:
            client.post(f"{url}/api/v1/import", content="\n".join(body).encode()).raise_for_status()


def measure(args: argparse.Namespace) -> dict[str, object]:
    """The timed part, in this (fresh) process: read, recompute, report."""
    from energymon.config import InfluxStoreConfig
    from energymon.processors.recompute import recompute
    from energymon.processors.report import load_readings_store
    from energymon.processors.store import InfluxStore

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    text, meters = plant_yaml(args.items)
    plant = parse_plant(text, "bench-plant.yaml")
    ref = load_reference_data()
    period = ReportPeriod.parse("year", str(args.year))
    start_ms, end_ms = period.bounds_ms(TZ)
    rss_before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if args.measure_csv:
        readings = load_readings_csv(Path(args.measure_csv), plant)
    else:
        with InfluxStore(InfluxStoreConfig(type="influxdb", url=args.measure_vm)) as store:
            readings = load_readings_store(store, plant, start_ms - 86_400_000, end_ms + 86_400_000)
    n_readings = sum(len(r.ts) for r in readings.values())
    t_read = time.perf_counter()
    rules = PlantRules(plant, ref)
    rc = recompute(rules, readings, start_ms, end_ms)
    t_recompute = time.perf_counter()
    report = build_report(rc, period)
    rendered = len(json.dumps(report, ensure_ascii=False, default=str)) + len(render_csv(report)) + len(
        render_html(report))
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "bench": "recompute",
        "items": len(meters),
        "readings_read": n_readings,
        "period": period.label,
        "source": "csv" if args.measure_csv else "victoriametrics",
        "seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "read_seconds": round(t_read - wall0, 2),
        "recompute_seconds": round(t_recompute - t_read, 2),
        "report_seconds": round(wall - (t_recompute - wall0), 2),
        "readings_per_second": round(n_readings / wall),
        "readings_per_cpu_second": round(n_readings / max(cpu, 1e-9)),
        "peak_rss_mb": round(peak_rss_mb),
        "rss_before_timing_mb": round(rss_before_mb),
        "report_bytes": rendered,
        "target_peak_rss_mb": 512,
        "ratio_to_target": round(peak_rss_mb / 512, 3),
        "target_met": peak_rss_mb < 512,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000, help="counters (meters) in the plant")
    parser.add_argument("--year", type=int, default=2025)
    parser.add_argument("--source", choices=("victoriametrics", "csv"), default="victoriametrics",
                        help="where the timed part reads the readings from")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--measure-vm", help=argparse.SUPPRESS)
    parser.add_argument("--measure-csv", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_vm or args.measure_csv:
        print(json.dumps(measure(args)))
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from services import VictoriaMetrics

    load_start = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    text, meters = plant_yaml(args.items)
    plant = parse_plant(text, "bench-plant.yaml")
    frame = readings_frame(plant, meters, args.year, args.seed)
    n_readings = len(frame)
    common = [sys.executable, __file__, f"--items={args.items}", f"--year={args.year}"]
    tmp = Path(tempfile.mkdtemp(prefix="energymon-bench-recompute-"))
    try:
        if args.source == "csv":
            csv_path = tmp / "readings.csv"
            frame.to_csv(csv_path, index=False)
            del frame
            out = subprocess.run([*common, f"--measure-csv={csv_path}"], check=True, capture_output=True, text=True)
        else:
            with VictoriaMetrics() as vm:
                t0 = time.perf_counter()
                import_to_vm(vm.url, frame)
                del frame
                vm.flush()
                import_s = time.perf_counter() - t0
                out = subprocess.run([*common, f"--measure-vm={vm.url}"], check=True, capture_output=True,
                                     text=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["readings_generated"] = n_readings
    result["readings_ok"] = result["readings_read"] == n_readings
    if args.source != "csv":
        result["import_seconds_untimed"] = round(import_s, 1)
    result["loadavg_start"] = load_start
    result["loadavg_end"] = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    print(json.dumps(result))
    return 0 if result["readings_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
