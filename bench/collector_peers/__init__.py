"""Helpers for the peer gateways in ``bench/bench_collector.py``: modpoll2mqtt and Node-RED.

Both are installed outside the repository (default ``~/.cache/energymon-bench``): modpoll2mqtt 2.4.1 into a venv
of its own (it may pin versions the project's venv does not want), Node-RED 4.x with node-red-contrib-modbus
5.23.3 with npm into a folder of its own. Their configuration (modpoll CSV files, Node-RED settings and flow) is
generated into a temporary directory at run time. Nothing here contacts an address other than 127.0.0.1; the
installs use PyPI and the npm registry through pip and npm.
"""

from __future__ import annotations

import os
from pathlib import Path

TAGS = 30  #: float32 tags per simulated device, in holding registers 0..59


def cache_dir() -> Path:
    """Where the peers are installed: ``$ENERGYMON_BENCH_CACHE`` or ``~/.cache/energymon-bench``."""
    return Path(os.environ.get("ENERGYMON_BENCH_CACHE", Path.home() / ".cache" / "energymon-bench"))


def tag_name(tag: int) -> str:
    """Name of tag ``tag`` of a device: t00 .. t29 (same in every tool)."""
    return f"t{tag:02d}"


def expected_value(device: int, tag: int) -> float:
    """The value simulated device ``device`` holds in tag ``tag``; exact in float32 for device < 80,000."""
    return device * 100 + tag + 0.5
