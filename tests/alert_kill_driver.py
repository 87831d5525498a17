"""A small alert process for the kill -9 test: the real engine, state file and webhook notifier of
``build_alerting``, fed a fixed sequence of points (three meters crossing a threshold up and down).

Usage: ``python alert_kill_driver.py PLANT_YAML DATA_DIR STEPS``. Every run feeds the whole sequence from the
start (points the persisted state has already seen are ignored as late, the others replay the same
transitions with the same versions), then waits until the outbox is empty and exits 0.

``python alert_kill_driver.py --fork-server LOG PLANT_YAML DATA_DIR STEPS`` imports energymon once and forks one
such run per ``spawn`` line on stdin (printing its pid); ``wait PID`` reaps it and prints its wait status. A
Python start costs seconds of imports on a loaded machine; a fork costs milliseconds, and the child is still a
separate process with its own connections and file handles.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

from prometheus_client import CollectorRegistry

from energymon.alerts.build import build_alerting
from energymon.clock import WallClock
from energymon.config import load_plant
from energymon.metrics import PipelineMetrics
from energymon.schema import Point

T0 = 1_740_816_000_000
METERS = ("kiln_drive", "mill_drive", "fan_drive")
PERIODS = (3, 5, 7)  # steps per half-cycle of each meter


def value(meter_index: int, step: int) -> float:
    """150 kW (above the 100 kW threshold) or 50 kW, alternating every PERIODS[meter] steps."""
    return 150.0 if (step // PERIODS[meter_index]) % 2 == 0 else 50.0


def points(step: int) -> list[Point]:
    return [Point(meter=m, quantity="power_active", value=value(i, step), unit="kW", ts_ms=T0 + step * 1000)
            for i, m in enumerate(METERS)]


def main(argv: list[str]) -> int:
    plant = load_plant(Path(argv[0]))
    data_dir, steps = Path(argv[1]), int(argv[2])
    engine, notifiers = build_alerting(
        plant, clock=WallClock(), metrics=PipelineMetrics(CollectorRegistry()), data_dir=data_dir,
        notifier_options={"backoff_base_s": 0.01, "backoff_cap_s": 0.05})
    for step in range(steps):
        engine.observe(points(step))
        time.sleep(0.002)  # spreads the records over the run, so kills land while records are still coming
    while any(n.pending for n in notifiers):  # type: ignore[attr-defined]
        time.sleep(0.01)
    engine.close()
    for n in notifiers:
        n.close(5)
    print("DONE", flush=True)
    return 0


def serve(log: str, argv: list[str]) -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "spawn":
            pid = os.fork()
            if pid == 0:
                fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                try:
                    code = main(argv)
                except BaseException:
                    traceback.print_exc()
                    code = 99
                sys.stdout.flush()
                os._exit(code)
            print(pid, flush=True)
        elif cmd[0] == "wait":
            _, status = os.waitpid(int(cmd[1]), 0)
            print(status, flush=True)
        else:
            break


if __name__ == "__main__":
    if sys.argv[1] == "--fork-server":
        serve(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(main(sys.argv[1:]))
