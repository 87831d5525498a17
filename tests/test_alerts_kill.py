"""kill -9 during alert delivery: a real alert process (``alert_kill_driver.py``: ``build_alerting``'s engine,
state file and webhook notifier with its on-disk outbox, forked from a server that imported energymon once) is
SIGKILLed at random (seeded) moments 25 times while
it raises and resolves alerts and delivers them to a counting HTTP receiver that answers 500 to about a third
of the requests, and restarted after each kill. At the end, with a last run left to finish:

* every firing and every resolution the engine produces for the sequence (computed by the same engine in
  memory) was accepted (2xx) by the receiver: nothing was lost;
* a record that arrived more than once carried the same delivery id (header and body) every time;
* per alert, the receiver accepted the records in version order: a resolution never overtook its firing.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from alert_kill_driver import METERS, points

from energymon.alerts.engine import Alert, AlertEngine
from energymon.alerts_config import ThresholdRule

pytestmark = pytest.mark.integration

DRIVER = Path(__file__).resolve().parent / "alert_kill_driver.py"
STEPS = 120
KILLS = 25
USCC = "91530102MA6K7LQ8RH"


class CountingReceiver:
    """Answers 500 to a seeded third of the requests and 200 to the rest; keeps every request."""

    def __init__(self, seed: int) -> None:
        self.requests: list[tuple[int, str, dict[str, Any]]] = []  # (status, delivery header, body)
        self._random = random.Random(seed)
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                except ValueError:  # the sender was killed in the middle of its request
                    return
                with outer.cond:
                    status = 500 if outer._random.random() < 0.33 else 200
                    outer.requests.append((status, self.headers.get("X-Energymon-Delivery", ""), body))
                    outer.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def count(self) -> int:
        with self.cond:
            return len(self.requests)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def plant_file(tmp_path: Path, url: str) -> Path:
    data = {
        "version": 1,
        "enterprise": {"uscc": USCC, "name": "云南示例水泥有限公司", "industry_code": "C3011"},
        "buses": [{"type": "modbus_tcp", "id": "b", "host": "127.0.0.1", "port": 502}],
        "meters": [{"id": m, "source": {"type": "modbus", "bus": "b", "unit_id": i + 1, "registers": [
            {"quantity": "power_active", "address": 0, "unit": "kW"}]}} for i, m in enumerate(METERS)],
        "alerts": {
            "rules": [{"kind": "threshold", "id": f"{m}_high", "meter": m, "quantity": "power_active",
                       "above": 100} for m in METERS],
            "notifiers": [{"type": "webhook", "id": "hook", "url": url}],
        },
    }
    path = tmp_path / "plant.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def expected_records() -> list[tuple[str, int, str]]:
    """(alert id, version, event) of every record the sequence raises, from the same engine without a store."""
    got: list[Alert] = []
    rules = [ThresholdRule.model_validate({"kind": "threshold", "id": f"{m}_high", "meter": m,
                                           "quantity": "power_active", "above": 100}) for m in METERS]

    class Clock:
        def now_ms(self) -> int:
            return 0

    engine = AlertEngine(rules, notify=got.append, clock=Clock())  # type: ignore[arg-type]
    for step in range(STEPS):
        engine.observe(points(step))
    return [(a.id, a.version, a.event) for a in got]


def log_has_done(log: Path, runs_done: int) -> bool:
    """True once the log holds one more ``DONE`` than the runs already counted as finished."""
    return log.exists() and log.read_text(encoding="utf-8").count("DONE") > runs_done


def test_twenty_five_kill_9_during_delivery_lose_no_firing_or_resolution(tmp_path: Path) -> None:
    rng = random.Random(1307)
    receiver = CountingReceiver(seed=20261207)
    plant = plant_file(tmp_path, receiver.url)
    data_dir = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(DRIVER.parent), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "driver.log"
    server = subprocess.Popen([sys.executable, str(DRIVER), "--fork-server", str(log), str(plant), str(data_dir),
                               str(STEPS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert server.stdin is not None and server.stdout is not None
    stdin, stdout = server.stdin, server.stdout

    def command(text: str) -> int:
        stdin.write(text + "\n")
        stdin.flush()
        return int(stdout.readline())

    finished_early = 0
    pid = 0
    try:
        assert stdout.readline().strip() == "ready"
        for _ in range(KILLS):
            pid = command("spawn")
            want = receiver.count() + rng.randint(1, 6)
            with receiver.cond:  # a kill after some progress: the receiver saw more requests, or the run ended
                while len(receiver.requests) < want and not log_has_done(log, finished_early):
                    receiver.cond.wait(0.01)
            time.sleep(rng.uniform(0, 0.03))  # and a random moment after that one
            with contextlib.suppress(ProcessLookupError):  # a run that ended is reaped below
                os.kill(pid, signal.SIGKILL)
            status = command(f"wait {pid}")
            pid = 0
            if os.WIFEXITED(status):
                assert os.WEXITSTATUS(status) == 0, log.read_text()[-3000:]
                finished_early += 1
            else:
                assert os.WTERMSIG(status) == signal.SIGKILL
        pid = command("spawn")
        status = command(f"wait {pid}")
        pid = 0
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, log.read_text()[-3000:]
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ValueError, OSError):
                command(f"wait {pid}")
        with contextlib.suppress(OSError):
            stdin.write("quit\n")
            stdin.close()
        server.wait(60)
        stdout.close()
        receiver.stop()

    expected = expected_records()
    assert {e for _, _, e in expected} == {"firing", "resolved"} and len(expected) > 40
    accepted = [(b["id"], b["version"], b["event"]) for status, _, b in receiver.requests if status == 200]
    assert set(accepted) == set(expected), "a firing or a resolution was lost (or invented)"

    ids: dict[tuple[str, int, str], set[str]] = defaultdict(set)
    for _, header, body in receiver.requests:
        assert header == body["delivery_id"]
        ids[(body["id"], body["version"], body["event"])].add(header)
    assert all(len(v) == 1 for v in ids.values()), "a record arrived with two delivery ids"

    versions: dict[str, list[int]] = defaultdict(list)
    for status, _, body in receiver.requests:
        if status == 200:
            versions[body["id"]].append(body["version"])
    for alert_id, seen in versions.items():
        assert seen == sorted(seen), f"{alert_id}: accepted out of order: {seen}"
    duplicates = len(accepted) - len(set(accepted))
    print(f"{KILLS} kills ({finished_early} runs ended before their kill), {len(receiver.requests)} requests, "
          f"{len(accepted)} accepted, {duplicates} duplicates accepted, {len(expected)} records")
