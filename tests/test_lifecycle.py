"""SIGTERM or SIGINT at any moment of a long-running command's life, start-up included, is a clean stop: exit 0.

Each command runs as a real child process (``python -m energymon.cli ...``) over the example plant (its buses
lead nowhere, its uplink is in-process, its store a file in the test's directory). The signal is sent at
moments defined by what the child has done, never by how fast it is:

* ``pending``: the child is started with the signal blocked and the signal is sent at once, so it is pending
  from the first instruction and arrives the moment the command unblocks it (having installed its handlers);
* ``first-line``: when the child has written its first line of output (``--log-level DEBUG``: the first log
  line comes early in start-up);
* ``running``: after the command said it runs (its banner, or the gateway's outbox file exists).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from services import free_port
from test_provincial_uplink import PASSWORD, make_plant, ms, plant_text, write_readings

pytestmark = pytest.mark.integration

COMMANDS = {
    "gateway": ["gateway", "--config", "{plant}", "--data-dir", "{data}"],
    "processor": ["processor", "--config", "{plant}", "--data-dir", "{data}"],
    "run": ["run", "--config", "{plant}", "--data-dir", "{data}"],
    "serve": ["serve", "{plant}", "--port", "{port}"],
    "uplink": ["uplink", "run", "--config", "{plant}"],
}
#: the file or output line by which each command shows it runs
RUNNING: dict[str, Callable[[Path, str], bool]] = {
    "gateway": lambda data, out: any(data.glob("outbox*")),
    "processor": lambda data, out: any(data.glob("*.sqlite*")) or "processor" in out,
    "run": lambda data, out: any(data.glob("outbox*")),
    "serve": lambda data, out: "live page" in out,
    "uplink": lambda data, out: "uplink running" in out,
}


class Child:
    """A command in a child process, its output collected by a thread."""

    def __init__(self, argv: list[str], *, block: signal.Signals | None, cwd: Path) -> None:
        env = {**os.environ, "ENERGYMON_TEST_PROVINCIAL_PASSWORD": PASSWORD, "PYTHONUNBUFFERED": "1"}

        def blocked() -> None:
            if block is not None:
                signal.pthread_sigmask(signal.SIG_BLOCK, {block})

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "energymon.cli", "--log-level", "DEBUG", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env,
            preexec_fn=blocked,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_until(self, condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s  # only catches a hang; nothing is measured
        while not condition():
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {what}:\n{self.output}"
            assert time.monotonic() < deadline, f"never {what}:\n{self.output[-3000:]}"
            time.sleep(0.02)

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"still running 60 s after {sig.name}:\n{self.output[-3000:]}") from None
        self._reader.join(timeout=10)
        self.close()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self._reader.join(timeout=10)
            self.proc.stdout.close()


@pytest.mark.parametrize("moment", ["pending", "first-line", "running"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_stop_at_any_moment_exits_0(tmp_path: Path, command: str, moment: str) -> None:
    sig = signal.SIGINT if (command, moment) in {("gateway", "first-line"), ("serve", "running")} else signal.SIGTERM
    plant = tmp_path / "plant.yaml"
    url = f"http://127.0.0.1:{free_port()}"
    plant.write_text(plant_text(tmp_path, url), encoding="utf-8")
    if command == "serve":  # the live page reads an existing store
        write_readings(make_plant(tmp_path, url), ms(2026, 3, 1), ms(2026, 3, 2))
    data = tmp_path / "data"
    argv = [a.format(plant=plant, data=data, port=free_port()) for a in COMMANDS[command]]
    child = Child(argv, block=sig if moment == "pending" else None, cwd=tmp_path)
    try:
        if moment == "first-line":
            child.wait_until(lambda: bool(child.lines), "wrote a line")
        elif moment == "running":
            child.wait_until(lambda: RUNNING[command](data, child.output), "ran")
        code = child.stop(sig)
    finally:
        child.close()
    assert code == 0, f"{command} exited {code} after {sig.name} ({moment}):\n{child.output[-3000:]}"
    assert "Traceback" not in child.output, child.output[-3000:]


def test_a_gateway_stopped_while_running_keeps_what_it_accepted(tmp_path: Path) -> None:
    """The outbox the gateway wrote survives its SIGTERM: it opens again, intact, with its batches."""
    import sqlite3

    plant = tmp_path / "plant.yaml"
    plant.write_text(plant_text(tmp_path, f"http://127.0.0.1:{free_port()}"), encoding="utf-8")
    data = tmp_path / "data"
    child = Child(["gateway", "--config", str(plant), "--data-dir", str(data)], block=None, cwd=tmp_path)
    try:
        child.wait_until(lambda: "unavailable" in child.output, "polled a meter")
        assert child.stop(signal.SIGTERM) == 0, child.output[-3000:]
    finally:
        child.close()
    outbox = next(data.glob("outbox*.sqlite"))
    with sqlite3.connect(outbox) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
