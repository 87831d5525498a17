"""The shipped Prometheus and Alertmanager files: promtool and amtool accept them, the promtool unit tests of
every health rule pass, every rule is complete and documented, and the whole chain works on real services: a
gateway started by ``energymon gateway --metrics-port`` polls simulated Modbus meters, one meter stops
answering, a real Prometheus scrapes the gateway and evaluates the shipped rules, and a real Alertmanager
delivers ``EnergymonDeviceDown`` for that meter to a webhook."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from plants import modbus_plant
from services import Alertmanager, Mosquitto, Prometheus, free_port, require_binary

from energymon.clock import WallClock
from energymon.config import parse_plant
from energymon.simulators.plant import SimulatorHandle, run_simulator
from energymon.simulators.profiles import NoAnswer

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES = PROM_DIR / "rules" / "energymon-health.rules.yml"
RULE_TESTS = PROM_DIR / "tests" / "energymon-health.test.yml"
AM_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DOC = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")


def run_tool(*argv: str) -> str:
    """Run promtool/amtool; fail the test with its output unless it exits 0."""
    done = subprocess.run([require_binary(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=120,
                          check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{output}"
    return output


def shipped_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


# ----------------------------------------------------------------------------------------- static checks


def test_promtool_accepts_the_rules() -> None:
    out = run_tool("promtool", "check", "rules", *map(str, sorted((PROM_DIR / "rules").glob("*.yml"))))
    assert f"SUCCESS: {len(shipped_rules())} rules found" in out


def test_promtool_accepts_the_prometheus_config() -> None:
    out = run_tool("promtool", "check", "config", str(PROM_DIR / "prometheus.yml"))
    assert "SUCCESS: 1 rule files found" in out  # the glob finds the shipped rule file


def test_amtool_accepts_the_alertmanager_config() -> None:
    run_tool("amtool", "check-config", str(AM_CONFIG))


def test_promtool_unit_tests_of_every_rule_pass() -> None:
    out = run_tool("promtool", "test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in out


def test_every_rule_is_unit_tested_quiet_and_firing() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    quiet: set[str] = set()
    firing: set[str] = set()
    for case in tests:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in shipped_rules()}
    assert names <= quiet, f"rules without a no-alert check: {names - quiet}"
    assert names <= firing, f"rules without a firing check: {names - firing}"


def test_every_rule_has_for_severity_and_annotations() -> None:
    for rule in shipped_rules():
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["labels"].get("component"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert rule["alert"].startswith("Energymon"), rule["alert"]


def test_docs_list_every_rule_with_its_severity_and_for() -> None:
    block = DOC.split("<!-- rules-table:start -->\n", 1)[1].split("<!-- rules-table:end -->", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.strip().splitlines()[2:]]
    documented = {row[0].strip("`"): (row[1], row[2]) for row in rows}
    assert documented == {r["alert"]: (r["labels"]["severity"], r["for"]) for r in shipped_rules()}


# ----------------------------------------------------------------------------------------- the whole chain


class Webhook:
    """An HTTP receiver for Alertmanager's webhook notifications."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer._cond:
                    outer.posts.append(json.loads(body))
                    outer._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def alerts(self) -> list[dict[str, Any]]:
        with self._cond:
            return [a for post in self.posts for a in post["alerts"]]

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for post in self.posts:
                    found: dict[str, Any]
                    for found in post["alerts"]:
                        if predicate(found):
                            return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching alert within {timeout:.0f} s; received: {self.posts}")
                self._cond.wait(left)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SimulatorThread:
    """The plant's simulated Modbus meters, served from their own event loop in a thread."""

    def __init__(self, plant_text: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        plant = parse_plant(plant_text, "plant.yaml")
        self.handle: SimulatorHandle = self._run(
            run_simulator(plant, WallClock(), port_overrides={"plant_tcp": 0})
        )

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    @property
    def port(self) -> int:
        return self.handle.ports["plant_tcp"]

    def silence(self, meter_id: str) -> None:
        """The meter stops answering (requests are swallowed) from now on."""
        self.handle.model.inject(meter_id, NoAnswer(start_ms=int(datetime.now(UTC).timestamp() * 1000)))

    def stop(self) -> None:
        self._run(self.handle.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


#: The shipped ``for:`` of the rules run by the chain test is minutes; the copy it loads waits this long instead.
TEST_FOR = "2s"


def rules_with_short_for() -> str:
    """The shipped rule file with every ``for:`` replaced by :data:`TEST_FOR`; expressions and labels unchanged."""
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in data["groups"]:
        for rule in group["rules"]:
            rule["for"] = TEST_FOR
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def scrape(url: str) -> str:
    try:
        return httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return ""


def wait_until(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.mark.integration
def test_meter_down_reaches_the_webhook_through_prometheus_and_alertmanager(
    tmp_path: Path, mosquitto: Mosquitto, webhook: Webhook, alertmanager_factory: Callable[[str], Alertmanager]
) -> None:
    def plant_text(port: int) -> str:
        return modbus_plant(name="测试水泥厂", gateway="gw-test", modbus_port=port, mqtt_url=mosquitto.url,
                            meters=[("kiln_drive", 3, "kiln"), ("raw_mill", 2, "kiln")], poll_s=1,
                            max_rate_per_hour=None)

    sim = SimulatorThread(plant_text(1))
    gateway: subprocess.Popen[bytes] | None = None
    prometheus: Prometheus | None = None
    log_path = tmp_path / "gateway.log"
    try:
        plant_file = tmp_path / "plant.yaml"
        plant_file.write_text(plant_text(sim.port), encoding="utf-8")
        metrics_port = free_port()
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        with log_path.open("wb") as log:
            gateway = subprocess.Popen(
                [sys.executable, "-m", "energymon.cli", "--log-level", "INFO", "gateway", "--config",
                 str(plant_file), "--data-dir", str(tmp_path / "gw"), "--metrics-port", str(metrics_port)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        wait_until(lambda: 'energymon_device_up{meter="kiln_drive"} 1.0' in scrape(metrics_url),
                   "the gateway to report kiln_drive up", 60)

        am = alertmanager_factory(f"""
route:
  receiver: hook
  group_by: [alertname, meter]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {webhook.url}
        send_resolved: true
""")
        prometheus = Prometheus(
            f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [rules/energymon-health.rules.yml]
alerting:
  alertmanagers:
    - static_configs: [{{targets: ["{am.host}:{am.port}"]}}]
scrape_configs:
  - job_name: energymon-gateway
    static_configs: [{{targets: ["127.0.0.1:{metrics_port}"]}}]
""",
            files={"rules/energymon-health.rules.yml": rules_with_short_for()},
        ).start()
        assert prometheus.alert_rule_names() == [rule["alert"] for rule in shipped_rules()]
        wait_until(lambda: len(prometheus.query('energymon_device_up{job="energymon-gateway"} == 1')) == 2,
                   "Prometheus to scrape both meters up", 60)
        assert prometheus.query('up{job="energymon-gateway"}')[0]["value"][1] == "1"
        assert not [a for a in webhook.alerts() if a["labels"]["alertname"] == "EnergymonDeviceDown"]

        sim.silence("kiln_drive")  # a real fault on the wire: the meter's requests go unanswered

        found = webhook.wait_for(
            lambda a: a["labels"]["alertname"] == "EnergymonDeviceDown" and a["status"] == "firing", timeout=120
        )
        labels = found["labels"]
        assert labels["meter"] == "kiln_drive"
        assert labels["job"] == "energymon-gateway" and labels["instance"] == f"127.0.0.1:{metrics_port}"
        assert labels["severity"] == "warning" and labels["component"] == "collector"
        assert found["annotations"]["summary"] == "meter kiln_drive does not answer"
        # the healthy meter never alerted
        assert {a["labels"]["meter"] for a in webhook.alerts()
                if a["labels"]["alertname"] == "EnergymonDeviceDown"} == {"kiln_drive"}
        assert 'energymon_device_up{meter="raw_mill"} 1.0' in scrape(metrics_url)
    except BaseException:
        print(f"--- gateway log\n{log_path.read_text(errors='replace') if log_path.exists() else ''}")
        if prometheus is not None:
            print(f"--- Prometheus log\n{prometheus.log_tail()}")
        raise
    finally:
        if gateway is not None:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(20)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait(10)
        if prometheus is not None:
            prometheus.stop()
        sim.stop()
