"""Run every benchmark in bench/ and print their JSON lines (``make bench``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RUNS = [
    ["bench_pipeline.py", "--points", "500000", "--batch", "1000", "--meters", "100"],
    ["bench_store.py", "--points", "200000"],
    ["bench_alert_latency.py", "--transitions", "60"],
    ["bench_recompute.py"],
    ["bench_collector.py"],
    ["bench_gateway.py"],
    ["bench_startup.py"],
]


def main() -> int:
    """Run each benchmark in its own process; stop at the first failure."""
    for args in RUNS:
        print(f"# {' '.join(args)}", flush=True)
        rc = subprocess.call([sys.executable, str(BENCH / args[0]), *args[1:]])
        if rc != 0:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
