"""Measure the ``energymon`` command's start-up: ``--help`` and ``validate`` on the example plant, timed beside
``python3 -c pass`` (the interpreter's own start-up) in the same run, and print one JSON line::

    python bench/bench_startup.py            # 10 runs of each, interleaved
    python bench/bench_startup.py --runs 20

Each command runs ``--runs`` times in a fresh process, the three interleaved so a busy moment of a shared machine
hits them alike; the figure is the minimum wall time of each (the start-up cost without the noise of other
processes), with the median beside it. ``ratio`` is the command's minimum over ``python3 -c pass``'s, the figure to
compare across machines. ``cpu_min_s`` is the least CPU time (user + system) of a run: on a shared machine whose
load stretches wall times it is the closer estimate of the idle start-up. Each command is also run once with ``-X
importtime`` to report whether it imported pandas, numpy or the provincial uplink (it should not: those belong to
the commands that use them). Targets: ``--help`` under 0.3 s and ``validate`` under 0.6 s on an idle machine.
Nothing is left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "energymon" / "examples" / "cement_plant.yaml"
HEAVY = ("pandas", "numpy", "energymon.gateway.provincial")
TARGETS_S = {"help": 0.3, "validate": 0.6}


def commands() -> dict[str, list[str]]:
    """The commands timed: the interpreter alone, and the two energymon start-ups (through the console script
    when it is installed next to this interpreter, as a user runs it)."""
    script = Path(sys.executable).with_name("energymon")
    energymon = [str(script)] if script.exists() else [sys.executable, "-m", "energymon.cli"]
    return {
        "python_pass": [sys.executable, "-c", "pass"],
        "help": [*energymon, "--help"],
        "validate": [*energymon, "validate", str(EXAMPLE)],
    }


def timed(cmd: list[str]) -> float:
    """Wall seconds of one run (its output discarded; a failure stops the bench)."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.decode()[-2000:]}")
    return elapsed


def heavy_imports(cmd: list[str]) -> list[str]:
    """Top modules among :data:`HEAVY` that ``cmd`` imports (from ``-X importtime``)."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return sorted(h for h in HEAVY if any(n == h or n.startswith(h + ".") for n in names))


def main() -> int:
    """Run the measurement and print the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10, help="runs of each command (default 10)")
    args = ap.parse_args()
    cmds = commands()
    times: dict[str, list[float]] = {name: [] for name in cmds}
    cpu: dict[str, list[float]] = {name: [] for name in cmds}
    for cmd in cmds.values():  # one warm-up each: the page cache, .pyc files
        timed(cmd)
    for _ in range(args.runs):
        for name, cmd in cmds.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            times[name].append(timed(cmd))
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    base = min(times["python_pass"])
    result: dict[str, object] = {
        "bench": "startup",
        "runs": args.runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_1min": round(os.getloadavg()[0], 2)},
        "python_pass_min_s": round(base, 4),
        "python_pass_median_s": round(statistics.median(times["python_pass"]), 4),
        "python_pass_cpu_min_s": round(min(cpu["python_pass"]), 4),
    }
    for name in ("help", "validate"):
        best = min(times[name])
        result[name] = {
            "min_s": round(best, 4),
            "median_s": round(statistics.median(times[name]), 4),
            "ratio_to_python_pass": round(best / base, 2),
            "cpu_min_s": round(min(cpu[name]), 4),
            "cpu_ratio_to_python_pass": round(min(cpu[name]) / max(min(cpu["python_pass"]), 1e-6), 2),
            "target_s": TARGETS_S[name],
            "within_target": best < TARGETS_S[name],
            "heavy_imports": heavy_imports(cmds[name]),
        }
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
