"""The ``alertmanager`` notifier against the real prometheus-alertmanager (API v2): active, escalated, resolved;
Alertmanager down and then back (delivered once); firing alerts re-sent; resume after a restart."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from services import Alertmanager, free_port
from test_webhook import HookServer

from energymon.alerts.engine import Alert, AlertState
from energymon.alerts.notify_alertmanager import AlertmanagerNotifier
from energymon.alerts_config import AlertmanagerNotifier as AlertmanagerConfig
from energymon.metrics import PipelineMetrics

pytestmark = pytest.mark.integration

USCC = "91530102MA6K7LQ8RH"
CONFIG = """
route:
  receiver: blackhole
  group_wait: 1s
receivers:
  - name: blackhole
"""


def alert(state: AlertState = AlertState.FIRING, version: int = 2, severity: str = "warning",
          audience: tuple[str, ...] = ("energy_manager",)) -> Alert:
    return Alert(
        rule_id="meter_offline", source="kiln_drive", state=state, severity=severity, audience=audience,
        summary="窑主电机电表离线", value=60.0, threshold=45.0, started_ms=int(time.time() * 1000) - 60_000,
        fired_ms=int(time.time() * 1000) - 60_000, version=version, event=state.value,
        resolved_ms=int(time.time() * 1000) if state is AlertState.RESOLVED else None,
    )


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def am_alerts(am: Alertmanager) -> list[dict[str, Any]]:
    response = httpx.get(f"{am.url}/api/v2/alerts", timeout=5)
    response.raise_for_status()
    data: list[dict[str, Any]] = response.json()
    return data


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.registry = CollectorRegistry()
        self.metrics = PipelineMetrics(self.registry)
        self.dead_letters = tmp_path / "dead-letter-am.jsonl"
        self.notifiers: list[AlertmanagerNotifier] = []

    def notifier(self, url: str, **kw: Any) -> AlertmanagerNotifier:
        data: dict[str, Any] = {"type": "alertmanager", "id": "am", "url": url, "timeout_ms": 2000,
                                "labels": {"site": "kunming"}}
        data.update(kw)
        n = AlertmanagerNotifier(AlertmanagerConfig.model_validate(data), dead_letter_path=self.dead_letters,
                                 enterprise=USCC, metrics=self.metrics, backoff_base_s=0.05, backoff_cap_s=0.3)
        self.notifiers.append(n)
        return n

    def sent(self) -> float:
        return self.registry.get_sample_value("energymon_sent_total", {"stage": "notify"}) or 0.0


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    for n in harness.notifiers:
        n.close(5)


def test_active_then_resolved_in_alertmanager(h: Harness, alertmanager_factory: Callable[[str], Alertmanager]) -> None:
    am = alertmanager_factory(CONFIG)
    n = h.notifier(am.url)
    n.notify(alert())
    wait_until(lambda: len(am_alerts(am)) == 1, "the alert in Alertmanager")
    (found,) = am_alerts(am)
    assert found["status"]["state"] == "active"
    assert found["labels"] == {
        "alertname": "meter_offline", "rule": "meter_offline", "source": "kiln_drive", "severity": "warning",
        "audience": "energy_manager", "enterprise": USCC, "site": "kunming",
    }
    assert found["annotations"]["summary"] == "窑主电机电表离线" and found["annotations"]["version"] == "2"
    n.notify(alert(AlertState.RESOLVED, 3))
    wait_until(lambda: am_alerts(am) == [], "the alert resolved (Alertmanager lists active alerts only)")
    assert h.sent() == 2


def test_escalation_replaces_the_label_set(h: Harness, alertmanager_factory: Callable[[str], Alertmanager]) -> None:
    am = alertmanager_factory(CONFIG)
    n = h.notifier(am.url)
    n.notify(alert())
    wait_until(lambda: len(am_alerts(am)) == 1, "the alert")
    n.notify(alert(version=3, severity="critical", audience=("energy_manager", "regulator")))

    def escalated() -> bool:
        found = am_alerts(am)
        return len(found) == 1 and found[0]["labels"]["severity"] == "critical"

    wait_until(escalated, "only the escalated alert active")
    assert am_alerts(am)[0]["labels"]["audience"] == "energy_manager,regulator"
    n.notify(alert(AlertState.RESOLVED, 4, severity="critical", audience=("energy_manager", "regulator")))
    wait_until(lambda: am_alerts(am) == [], "resolved")


def test_alertmanager_down_then_back_delivers_once(tmp_path: Path, h: Harness) -> None:
    port = free_port()
    n = h.notifier(f"http://127.0.0.1:{port}", max_retries=100)
    n.notify(alert())
    time.sleep(0.5)
    assert h.sent() == 0
    am = Alertmanager(CONFIG, port=port)
    try:
        am.start()
        wait_until(lambda: len(am_alerts(am)) == 1, "the alert after Alertmanager came up")
        wait_until(lambda: n.pending == 0, "delivery done")
        assert h.sent() == 1
        assert not h.dead_letters.exists()
    finally:
        am.stop()


def test_firing_alerts_are_resent_and_resumed(h: Harness) -> None:
    hook = HookServer().start()
    try:
        n = h.notifier(hook.url.removesuffix("/hook"), resend_interval_secs=1)
        n.resume([alert()])  # restored from the state file: posted again, not notified anew
        posts = hook.wait_for(1, timeout=5)
        assert posts[0].headers["content-type"] == "application/json"
        body = json.loads(posts[0].body)
        assert body[0]["labels"]["source"] == "kiln_drive" and h.sent() == 0
        hook.wait_for(3, timeout=8)  # re-sent every second
        n.notify(alert(AlertState.RESOLVED, 3))
        time.sleep(2.5)
        count = len(hook.received)
        time.sleep(1.5)
        assert len(hook.received) == count  # nothing active: no more re-sends
        last = json.loads(hook.received[-1].body)
        assert last[0]["annotations"]["version"] == "3" and "resolved" in last[0]["annotations"]
    finally:
        h.notifiers[-1].close(5)
        hook.stop()


def test_400_is_dead_lettered(h: Harness, alertmanager_factory: Callable[[str], Alertmanager]) -> None:
    am = alertmanager_factory(CONFIG)
    n = h.notifier(am.url, labels={"bad-label": "x"})  # not a valid label name
    n.notify(alert())
    wait_until(lambda: h.dead_letters.exists(), "dead letter")
    record = json.loads(h.dead_letters.read_text(encoding="utf-8").splitlines()[0])
    assert record["reason"].startswith("not retriable: HTTP 400") and record["type"] == "alertmanager"
