"""A small alert process for the kill -9 test: the real engine, state file and webhook notifier of
``build_alerting``, fed a fixed sequence of points (three meters crossing a threshold up and down).

Usage: ``python alert_kill_driver.py PLANT_YAML DATA_DIR STEPS``. Every run feeds the whole sequence from the
start (points the persisted state has already seen are ignored as late, the others replay the same
transitions with the same versions), then waits until the outbox is empty and prints ``DONE``.
"""

from __future__ import annotations

import sys
import time
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


def main() -> int:
    plant = load_plant(Path(sys.argv[1]))
    data_dir, steps = Path(sys.argv[2]), int(sys.argv[3])
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


if __name__ == "__main__":
    sys.exit(main())
