"""modpoll2mqtt 2.4.1 (PyPI, CLI ``modpoll``): install, configuration CSV, command line.

modpoll talks to one Modbus endpoint per process (``--tcp HOST --tcp-port PORT``; several devices only as unit
ids behind that endpoint), so N devices on N ports take N modpoll processes.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

from . import TAGS, cache_dir, tag_name

VERSION = "2.4.1"


def venv_dir() -> Path:
    """The venv modpoll2mqtt is installed in."""
    return cache_dir() / "modpoll-venv"


def executable() -> Path:
    """The ``modpoll`` console script."""
    return venv_dir() / "bin" / "modpoll"


def installed() -> bool:
    """True when modpoll2mqtt VERSION is installed in :func:`venv_dir`."""
    exe = executable()
    if not exe.exists():
        return False
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60, check=False)
    return VERSION in (out.stdout + out.stderr)


def install(timeout: float = 600.0) -> str | None:
    """Install modpoll2mqtt VERSION with pip into its own venv; return None on success, else the reason."""
    if installed():
        return None
    try:
        venv_dir().parent.mkdir(parents=True, exist_ok=True)
        if not (venv_dir() / "bin" / "python").exists():
            venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir())
        out = subprocess.run(
            [str(venv_dir() / "bin" / "python"), "-m", "pip", "install", "-q", f"modpoll2mqtt=={VERSION}"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"pip install modpoll2mqtt=={VERSION} failed: {exc}"
    if out.returncode != 0 or not installed():
        lines = [x for x in (out.stderr or out.stdout).splitlines() if "is ignored" not in x]
        return f"pip install modpoll2mqtt=={VERSION} failed (rc {out.returncode}): {' | '.join(lines[-3:])}"
    return None


def write_csv(path: Path, device_name: str, unit_id: int = 1, tags: int = TAGS) -> Path:
    """One device: one holding-register poll of 2*tags registers from 0, big-endian float32 tags t00.."""
    lines = [f"device,{device_name},{unit_id}", f"poll,holding_register,0,{2 * tags},BE_BE"]
    lines += [f"ref,{tag_name(t)},{2 * t},float32,r" for t in range(tags)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def command(csv: Path, port: int, mqtt_host: str, mqtt_port: int, client_id: str, *, rate: float = 1.0,
            qos: int = 1) -> list[str]:
    """The modpoll command line for one device: poll every ``rate`` s, publish one JSON message per poll.

    Topic ``modpoll/<device>/data``, payload ``{"t00": 0.5, ...}``; no table on stdout.
    """
    return [
        str(executable()), "-f", str(csv), "--tcp", "127.0.0.1", "--tcp-port", str(port), "-r", str(rate),
        "--timeout", "1", "--mqtt-host", mqtt_host, "--mqtt-port", str(mqtt_port), "--mqtt-clientid", client_id,
        "--mqtt-qos", str(qos), "--mqtt-keys", "name-only", "--no-output", "--loglevel", "WARNING", "--read-only",
    ]


if __name__ == "__main__":  # pragma: no cover - manual use: install only
    reason = install()
    print(reason or f"modpoll2mqtt {VERSION} installed in {venv_dir()}")
    sys.exit(1 if reason else 0)
