"""The self-metrics: docs/metrics.md and the ``energymon.metrics`` docstring name exactly what a real
``PipelineMetrics`` exposes (names, types, labels); queue gauges are read at scrape time; gateway liveness; the
notifiers' queue gauges and counters against a real HTTP receiver; polled collectors count what they hand on."""

from __future__ import annotations

import asyncio
import gc
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from plants import modbus_plant
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_webhook import HookServer, Reply, alert

import energymon.metrics
from energymon import __version__
from energymon.alerts.notifiers import WebhookNotifier
from energymon.config import WebhookNotifier as WebhookConfig
from energymon.config import parse_plant
from energymon.metrics import PipelineMetrics
from energymon.runtime import build_collectors
from energymon.simulators.plant import run_simulator

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")


def exposition(metrics: PipelineMetrics) -> dict[str, tuple[str, frozenset[str]]]:
    """Every family a registry exposes: name → (type, label names), ``_created`` series left out."""
    text = generate_latest(metrics.registry).decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    labels: dict[str, set[str]] = {name: set() for name in types}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            base = re.sub(r"_(bucket|sum|count|total)$", "", sample.name)
            for name in (sample.name, base, f"{base}_total"):
                if name in labels:
                    labels[name] |= set(sample.labels) - {"le"}
                    break
    return {
        name: (kind, frozenset(labels[name])) for name, kind in types.items() if not name.endswith("_created")
    }


def populated() -> PipelineMetrics:
    """A registry with one child of every labelled family, as a running pipeline has."""
    m = PipelineMetrics(CollectorRegistry())
    stage = m.stage("gateway")
    stage.received()
    stage.sent()
    stage.dropped("overflow")
    stage.error("OutboxError")
    m.stage("processor").dead_letter("bad_payload")
    m.device_up.labels("kiln_drive").set(1)
    m.poll_duration.labels("fast").observe(0.1)
    m.store_write_duration.observe(0.01)
    for gauge in (m.outbox_fill_ratio, m.outbox_bytes, m.outbox_batches, m.outbox_oldest_age):
        gauge.labels("gw1").set(0)
    m.track_queue("notify", "ops", depth=lambda: 0, oldest_age_s=lambda: None, capacity=10)
    m.gateway_status("gw1", True)
    return m


def doc_table(text: str, marker: str) -> list[list[str]]:
    block = text.split(f"<!-- {marker}:start -->\n", 1)[1].split(f"<!-- {marker}:end -->", 1)[0]
    rows = [line.strip().strip("|").split("|") for line in block.strip().splitlines()[2:]]
    return [[cell.strip() for cell in row] for row in rows]


def test_docs_table_matches_the_exposition() -> None:
    documented = {
        row[0].strip("`"): (row[1], frozenset(x.strip() for x in row[2].split(",") if x.strip()))
        for row in doc_table(DOC, "metrics-table")
    }
    assert documented == exposition(populated())


def test_empty_registry_exposes_every_family() -> None:
    """Families without children still appear (with HELP and TYPE), so a scrape always shows the full set."""
    assert set(exposition(PipelineMetrics(CollectorRegistry()))) == set(exposition(populated()))


def test_module_docstring_table_matches_the_exposition() -> None:
    lines = (energymon.metrics.__doc__ or "").splitlines()
    rule = next(line for line in lines if line.startswith("===="))
    cols = [m.span() for m in re.finditer(r"=+", rule)]  # the simple table's column bounds
    documented = {}
    for line in lines:
        if line.startswith("``energymon_"):
            name, kind, labels = (line[a:b if i < 2 else cols[3][0]].strip() for i, (a, b) in enumerate(cols[:3]))
            documented[name.strip("`")] = (kind, frozenset(x.strip() for x in labels.split(",") if x.strip()))
    assert documented == exposition(populated())


def test_build_info_carries_the_version() -> None:
    m = PipelineMetrics(CollectorRegistry())
    assert m.registry.get_sample_value("energymon_build_info", {"version": __version__}) == 1.0


def test_queue_gauges_are_read_at_scrape_time_and_untracked() -> None:
    m = PipelineMetrics(CollectorRegistry())
    waiting: list[float] = []
    m.track_queue(
        "processor", "pending_rows", depth=lambda: len(waiting),
        oldest_age_s=lambda: time.monotonic() - waiting[0] if waiting else None,
    )
    labels = {"stage": "processor", "queue": "pending_rows"}

    def sample(name: str) -> float | None:
        return m.registry.get_sample_value(name, labels)

    assert sample("energymon_queue_depth") == 0.0
    assert sample("energymon_queue_oldest_age_seconds") == 0.0
    assert sample("energymon_queue_capacity") is None  # no capacity given: no series
    waiting.extend([time.monotonic() - 30.0, time.monotonic()])
    assert sample("energymon_queue_depth") == 2.0
    age = sample("energymon_queue_oldest_age_seconds")
    assert age is not None and age >= 30.0
    m.untrack_queue("processor", "pending_rows")
    assert sample("energymon_queue_depth") is None and sample("energymon_queue_oldest_age_seconds") is None
    m.untrack_queue("processor", "pending_rows")  # twice is harmless


def test_gateway_status_and_last_seen() -> None:
    m = PipelineMetrics(CollectorRegistry())

    def seen(gw: str) -> float | None:
        return m.registry.get_sample_value("energymon_gateway_last_seen_timestamp_seconds", {"gateway": gw})

    before = time.time()
    m.gateway_status("gw1", True)  # heard of, no batch yet: silent from now on
    first = seen("gw1")
    assert first is not None and before <= first <= time.time()
    assert m.registry.get_sample_value("energymon_gateway_up", {"gateway": "gw1"}) == 1.0
    time.sleep(0.01)
    m.gateway_status("gw1", True)  # a repeated status does not count as data
    assert seen("gw1") == first
    m.gateway_seen("gw1")
    later = seen("gw1")
    assert later is not None and later > first
    m.gateway_status("gw1", False)
    assert m.registry.get_sample_value("energymon_gateway_up", {"gateway": "gw1"}) == 0.0
    assert seen("gw1") == later
    m.gateway_seen("gw2")  # data before any status
    assert seen("gw2") is not None
    assert m.registry.get_sample_value("energymon_gateway_up", {"gateway": "gw2"}) is None


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_notifier_queue_gauges_follow_a_real_receiver(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    release = threading.Event()
    server = HookServer().script(Reply(hang=release)).start()
    config = WebhookConfig(type="webhook", id="ops", url=server.url, timeout_ms=15_000, max_retries=2)
    notifier = WebhookNotifier(config, dead_letter_path=tmp_path / "dead.jsonl", enterprise="91530102MA6K7LQ8RH",
                               metrics=metrics, queue_max=50)
    labels = {"stage": "notify", "queue": "ops"}

    def sample(name: str, **extra: str) -> float:
        return registry.get_sample_value(name, {**labels, **extra} if name.startswith("energymon_queue") else extra)\
            or 0.0

    try:
        assert sample("energymon_queue_capacity") == 50.0
        assert sample("energymon_queue_depth") == 0.0 and sample("energymon_queue_oldest_age_seconds") == 0.0
        for source in ("kiln", "mill", "dryer"):
            notifier.notify(alert(source=source))
        server.wait_for(1)  # the first record is in flight and held by the receiver
        assert sample("energymon_received_total", stage="notify") == 3.0
        assert sample("energymon_queue_depth") == 3.0
        held = sample("energymon_queue_oldest_age_seconds")
        wait_until(lambda: sample("energymon_queue_oldest_age_seconds") > held, "the oldest record to age")
        release.set()
        wait_until(lambda: sample("energymon_sent_total", stage="notify") == 3.0, "three deliveries")
        wait_until(lambda: sample("energymon_queue_depth") == 0.0, "an empty queue")
        assert sample("energymon_queue_oldest_age_seconds") == 0.0
    finally:
        assert notifier.close(5)
        server.stop()
    assert registry.get_sample_value("energymon_queue_depth", labels) is None  # closed: no queue any more
    del notifier
    gc.collect()
    assert "energymon_queue_depth{" not in generate_latest(registry).decode()


def plant_text(port: int) -> str:
    """Meter ``ghost`` is on a unit id no simulated device answers."""
    return modbus_plant(name="测试水泥厂", gateway="gw-test", modbus_port=port, mqtt_url="mqtt://127.0.0.1:1",
                        meters=[("kiln_drive", 3, "kiln"), ("ghost", 9, "kiln")], poll_s=1, max_rate_per_hour=None)


def test_polled_collector_counts_values_read_and_points_handed_on() -> None:
    """Meter ``ghost`` has no simulated device: its points go on as quality bad, counted as sent, not received."""

    async def main() -> None:
        from energymon.clock import WallClock

        clock = WallClock()
        served = parse_plant(plant_text(1), "plant.yaml")
        # only kiln_drive is simulated: the simulator serves the meters of a plant without ghost
        sim_plant = served.model_copy(update={"meters": [served.meter("kiln_drive")]})
        sim = await run_simulator(sim_plant, clock, port_overrides={"plant_tcp": 0})
        try:
            plant = parse_plant(plant_text(sim.ports["plant_tcp"]), "plant.yaml")
            metrics = PipelineMetrics(CollectorRegistry())
            (collector,), _ = build_collectors(plant, clock=clock, metrics=metrics)
            await collector.start()
            points = await collector.poll("fast", clock.now_ms())
            await collector.stop()
        finally:
            await sim.stop()
        good = [p for p in points if p.value is not None]
        assert len(good) == 2 and len(points) == 4
        reg = metrics.registry
        assert reg.get_sample_value("energymon_received_total", {"stage": "collector"}) == 2.0
        assert reg.get_sample_value("energymon_sent_total", {"stage": "collector"}) == 4.0
        assert reg.get_sample_value("energymon_device_up", {"meter": "kiln_drive"}) == 1.0
        assert reg.get_sample_value("energymon_device_up", {"meter": "ghost"}) == 0.0

    asyncio.run(main())
