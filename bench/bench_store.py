"""Measure store write throughput: InfluxStore → a local VictoriaMetrics, and SqliteStore → a temp file.

Each store is measured in a fresh child process (so peak RSS belongs to that store alone) and prints one
JSON line::

    python bench/bench_store.py --points 200000            # both stores
    python bench/bench_store.py --points 200000 --store influx --gzip   # gzip request bodies

Rows are ``(SeriesKey, {field: value}, ts_ms)`` built before the clock starts; the timed loop is the
``store.write()`` calls only (line-protocol serialisation or SQLite upserts included). ``cpu_s`` is the
writer process's CPU time (``time.process_time``), which excludes VictoriaMetrics' own work; ``peak_rss_mib``
is the child's peak resident size, rows included. After timing, the stored sample count is checked.
VictoriaMetrics is started from ``tests/services.py`` on a free loopback port and stopped afterwards.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent.parent / "tests")  # for services.VictoriaMetrics
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from services import VictoriaMetrics  # noqa: E402

from energymon.config import InfluxStoreConfig, SqliteStoreConfig  # noqa: E402
from energymon.interfaces import Row, series_key  # noqa: E402
from energymon.processors.store import InfluxStore, SqliteStore  # noqa: E402

_MEASUREMENT = "bench_energy"
_BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def make_rows(points: int, series: int, fields: int) -> list[Row]:
    """``points`` rows over ``series`` meters, one row per meter per second, ``fields`` values each."""
    keys = [series_key(_MEASUREMENT, meter=f"m{i:05d}", process="炼钢", site="plant a 1")
            for i in range(series)]
    names = [f"f{j}" for j in range(fields)]
    rows: list[Row] = []
    for i in range(points):
        meter, step = i % series, i // series
        values = {name: 1000.0 + step * 0.125 + j * 0.1 + meter * 1e-3 for j, name in enumerate(names)}
        rows.append((keys[meter], values, _BASE_MS + step * 1000))
    return rows


def _timed_writes(write: Callable[[Sequence[Row]], None], rows: list[Row], batch: int) -> dict[str, float]:
    """Write ``rows`` in ``batch``-row calls; wall and CPU seconds, RSS before and peak RSS after (MiB)."""
    rss_before = _current_rss_mib()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for start in range(0, len(rows), batch):
        write(rows[start : start + batch])
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux
    return {"seconds": wall, "cpu_s": cpu, "rss_before_writes_mib": rss_before, "peak_rss_mib": peak}


def _current_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_influx(args: argparse.Namespace) -> dict[str, object]:
    rows = make_rows(args.points, args.series, args.fields)
    with VictoriaMetrics() as vm:
        config = InfluxStoreConfig(type="influxdb", url=vm.url, batch_max_points=args.batch)
        with InfluxStore(config, gzip=args.gzip) as store:
            timing = _timed_writes(store.write, rows, args.batch)
            stored = sum(len(ts) for _, ts, _ in store.export(f'{{__name__=~"{_MEASUREMENT}_.*"}}'))
    return _result("influx", args, timing, stored, {"gzip": args.gzip})


def bench_sqlite(args: argparse.Namespace) -> dict[str, object]:
    rows = make_rows(args.points, args.series, args.fields)
    with tempfile.TemporaryDirectory(prefix="energymon-bench-") as tmp:
        path = Path(tmp) / "store.db"
        with SqliteStore(SqliteStoreConfig(type="sqlite", path=path)) as store:
            timing = _timed_writes(store.write, rows, args.batch)
            stored = store.count()
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
    return _result("sqlite", args, timing, stored, {"file_mib": round(size / 2**20, 1)})


def _result(
    store: str, args: argparse.Namespace, timing: dict[str, float], stored: int, extra: dict[str, object]
) -> dict[str, object]:
    expected = args.points * args.fields
    wall = timing["seconds"]
    return {
        "store": store,
        "rows": args.points,
        "fields_per_row": args.fields,
        "series": args.series,
        "batch": args.batch,
        "seconds": round(wall, 3),
        "rows_per_s": round(args.points / wall),
        "values_per_s": round(expected / wall),
        "cpu_s": round(timing["cpu_s"], 3),
        "rss_before_writes_mib": round(timing["rss_before_writes_mib"], 1),
        "peak_rss_mib": round(timing["peak_rss_mib"], 1),
        "stored_values": stored,
        "ok": stored == expected,
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--points", type=int, default=200_000, help="rows to write (default 200000)")
    parser.add_argument("--fields", type=int, default=2, help="fields per row (default 2)")
    parser.add_argument("--series", type=int, default=1000, help="distinct series (default 1000)")
    parser.add_argument("--batch", type=int, default=5000, help="rows per write() call (default 5000)")
    parser.add_argument("--store", choices=("influx", "sqlite", "both"), default="both")
    parser.add_argument("--gzip", action="store_true", help="gzip InfluxStore request bodies")
    args = parser.parse_args(argv)
    if args.store == "both":
        common = [f"--points={args.points}", f"--fields={args.fields}", f"--series={args.series}",
                  f"--batch={args.batch}", *(["--gzip"] if args.gzip else [])]
        codes = [
            subprocess.run([sys.executable, __file__, *common, f"--store={store}"], check=False).returncode
            for store in ("influx", "sqlite")
        ]
        return 1 if any(codes) else 0
    result = bench_influx(args) if args.store == "influx" else bench_sqlite(args)
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
