"""The processor's trust boundary: identity from the topic, the plant's gateways, meters and quantities, the
store's time window, and the bounds on what is taken in (docs/ARCHITECTURE.md, "Trust boundary").

The integration tests run a real :class:`~energymon.runtime.ProcessorService` subscribed to a real Mosquitto and
writing to a real VictoriaMetrics (retention 30 days, read from its ``/metrics``); batches are published as a
gateway (or a forger) would. The decoder and dead-letter tests need no services.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from plants import USCC, modbus_plant
from prometheus_client import CollectorRegistry, generate_latest
from services import Mosquitto, VictoriaMetrics, free_port

from energymon.clock import WallClock
from energymon.config import InfluxStoreConfig, ProcessorLimits, parse_plant
from energymon.deadletter import DeadLetterFile, read_dead_letters
from energymon.errors import ConfigError, PayloadTooLargeError, SchemaError
from energymon.interfaces import Message
from energymon.metrics import PipelineMetrics
from energymon.processors.processor import SET_ASIDE_REASONS, Processor
from energymon.processors.store import InfluxStore, _vm_duration_ms
from energymon.runtime import ProcessorService
from energymon.schema import decode_batch, decode_wire
from energymon.topics import readings_topic, status_topic
from energymon.transport import open_transport

GATEWAY = "gw-a"
TOPIC = readings_topic(USCC, GATEWAY)
#: Bound on waiting for a condition (never a timing assertion).
TIMEOUT = 60.0
DAY_MS = 86_400_000
ENERGY = "energy_active_import"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def point(meter: str, value: float | None, ts_ms: int, quantity: str = ENERGY, unit: str = "kWh") -> dict[str, Any]:
    p: dict[str, Any] = {"meter": meter, "quantity": quantity, "value": value, "unit": unit, "ts_ms": ts_ms}
    if value is None:
        p["quality"] = "bad"
    return p


def batch(points: list[dict[str, Any]], seq: int, *, gateway: str = GATEWAY, enterprise: str = USCC) -> bytes:
    return json.dumps({"v": 1, "enterprise": enterprise, "gateway": gateway, "seq": seq, "sent_ms": now_ms(),
                       "points": points}).encode()


def plant_text(mqtt_url: str, vm_url: str, processor_extra: str = "") -> str:
    return modbus_plant(
        name="边界测试厂", gateway=GATEWAY, modbus_port=free_port(), mqtt_url=mqtt_url,
        meters=[("kiln_drive", 3, "kiln"), ("raw_mill", 2, "raw_meal")], poll_s=5,
        tail=f'processor:\n  store: {{type: influxdb, url: "{vm_url}", org: t, bucket: t}}\n'
             f"  recompute_interval_s: 0\n{processor_extra}",
    )


def wait(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --------------------------------------------------------------------------- against the real services


class Centre:
    """A processor service on the broker and VictoriaMetrics, and a client that publishes as anyone."""

    def __init__(self, mosquitto: Mosquitto, vm: VictoriaMetrics, tmp: Path) -> None:
        self.vm = vm
        self.plant = parse_plant(plant_text(mosquitto.url, vm.url))
        self.metrics = PipelineMetrics(CollectorRegistry())
        self.data_dir = tmp / "proc"
        self.loop = asyncio.new_event_loop()
        self.service = ProcessorService(self.plant, clock=WallClock(), metrics=self.metrics, data_dir=self.data_dir)
        self.loop.run_until_complete(self.service.start())
        self.client = open_transport(mosquitto.url, client_id="publisher")
        self.loop.run_until_complete(self.client.connect())

    def publish(self, topic: str, payload: bytes) -> None:
        self.loop.run_until_complete(self.client.publish(topic, payload, qos=1))

    def dropped(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "energymon_dropped_total", {"stage": "processor", "reason": reason})
        return value or 0.0

    def dead_letters(self) -> list[dict[str, Any]]:
        return list(read_dead_letters(self.data_dir / "rejected-messages.jsonl"))

    def samples(self, match: str) -> list[tuple[int, float]]:
        return sorted((t, v) for row in self.vm.export(match) for t, v in zip(row["timestamps"], row["values"],
                                                                            strict=True))

    def exposition(self) -> str:
        return generate_latest(self.metrics.registry).decode()

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.run_until_complete(self.service.stop())
        self.loop.close()


@pytest.fixture
def centre(mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Centre]:
    vm = VictoriaMetrics(extra_args=["-retentionPeriod=30d"]).start()
    caplog.set_level(logging.INFO, logger="energymon.processors.processor")
    c: Centre | None = None
    try:
        c = Centre(mosquitto, vm, tmp_path)
        yield c
    finally:
        if c is not None:
            c.close()
        vm.stop()


KILN = f'reading_value{{gateway="{GATEWAY}",meter="kiln_drive",quantity="{ENERGY}"}}'


@pytest.mark.integration
def test_a_forged_batch_neither_stores_nor_erases_the_real_gateways_batch(centre: Centre) -> None:
    t = now_ms() // 60_000 * 60_000 - 10 * 60_000
    # another identity publishing gw-a's seq 7 on its own topic, and a batch naming another gateway than its topic
    centre.publish(readings_topic(USCC, "gw-other"), batch([point("kiln_drive", 999_999.0, t)], 7))
    centre.publish(TOPIC, batch([point("kiln_drive", 888_888.0, t)], 7, gateway="gw-other"))
    centre.publish(TOPIC, batch([point("kiln_drive", 777_777.0, t)], 7, enterprise="91110000OTHER0000X"))
    centre.publish(TOPIC, batch([point("kiln_drive", 1000.0, t)], 7))  # the real one
    wait("the real batch stored", lambda: centre.samples(KILN) != [])
    wait("the forgeries counted", lambda: centre.dropped("unknown_gateway") == 1
         and centre.dropped("identity_mismatch") == 2)
    assert centre.samples(KILN) == [(t, 1000.0)]
    assert centre.service.processor.duplicates == 0
    assert centre.vm.series_count('{gateway="gw-other"}') == 0
    assert "gw-other" not in centre.exposition()
    reasons = sorted(r["reason"] for r in centre.dead_letters())
    assert reasons == ["identity_mismatch", "identity_mismatch", "unknown_gateway"]
    assert all(r["topic"] and r["payload"].startswith("{") for r in centre.dead_letters())


@pytest.mark.integration
def test_unknown_gateways_meters_and_quantities_create_no_series_and_no_labels(
    centre: Centre, caplog: pytest.LogCaptureFixture
) -> None:
    t = now_ms() // 60_000 * 60_000 - 5 * 60_000
    ghosts = [f"ghost-{i}" for i in range(50)]
    for round_ in range(2):
        for g in ghosts:
            centre.publish(readings_topic(USCC, g), batch([point("kiln_drive", 5.0, t)], round_ + 1, gateway=g))
    centre.publish(TOPIC, batch([
        point("kiln_drive", 1000.0, t),
        point("ghost-meter", 1.0, t),
        point("kiln_drive", 2.0, t, quantity="ghost_quantity"),
    ], 1))
    # the retained status of an unknown gateway is ignored too; gw-a's, published after it, is taken
    centre.publish(status_topic(USCC, "ghost-0"), b"online")
    centre.publish(status_topic(USCC, GATEWAY), b"online")
    wait("gw-a's status", lambda: centre.metrics.registry.get_sample_value(
        "energymon_gateway_up", {"gateway": GATEWAY}) == 1)
    wait("the known point stored", lambda: centre.samples(KILN) != [])
    wait("every ghost message counted", lambda: centre.dropped("unknown_gateway") == 100)
    assert centre.dropped("unknown_meter") == 1 and centre.dropped("unknown_quantity") == 1
    assert centre.samples(KILN) == [(t, 1000.0)]
    for selector in ('{gateway=~"ghost.*"}', '{meter="ghost-meter"}', '{quantity="ghost_quantity"}'):
        assert centre.vm.series_count(selector) == 0, selector
    assert "ghost" not in centre.exposition()
    # logged once per id (the second round of each ghost is counted, not logged again)
    lines = [r.getMessage() for r in caplog.records if "(unknown_gateway)" in r.getMessage()]
    assert len(lines) == 50 and all(any(f"{g}/readings" in line for line in lines) for g in ghosts)
    # the points of the valid gateway's batch are kept whole in the dead letters
    by_reason = {r["reason"]: r for r in centre.dead_letters() if "points" in r}
    assert by_reason["unknown_meter"]["points"] == [point("ghost-meter", 1.0, t)]
    assert by_reason["unknown_quantity"]["points"][0]["quantity"] == "ghost_quantity"
    assert by_reason["unknown_meter"]["gateway"] == GATEWAY and by_reason["unknown_meter"]["seq"] == 1


@pytest.mark.integration
def test_points_the_store_would_drop_are_set_aside_not_acknowledged_and_lost(
    centre: Centre, caplog: pytest.LogCaptureFixture
) -> None:
    assert centre.service.processor.retention_ms == 30 * DAY_MS  # read from VictoriaMetrics
    assert any("less than the 183.0 days" in r.getMessage() for r in caplog.get_records("setup"))
    t = now_ms() // 60_000 * 60_000 - 60_000
    y2099 = int(datetime(2099, 6, 1, tzinfo=UTC).timestamp() * 1000)
    old = t - 60 * DAY_MS
    centre.publish(TOPIC, batch([point("kiln_drive", 1000.0, t), point("kiln_drive", 1001.0, y2099),
                                 point("raw_mill", 7.0, y2099 + 60_000), point("raw_mill", 6.0, old)], 1))
    # a batch entirely in the future is set aside whole and acknowledged; the next one is still taken in
    centre.publish(TOPIC, batch([point("kiln_drive", 1002.0, y2099 + 120_000)], 2))
    centre.publish(TOPIC, batch([point("kiln_drive", 1003.0, t + 30_000)], 3))
    wait("both good points stored", lambda: len(centre.samples(KILN)) == 2)
    assert centre.samples(KILN) == [(t, 1000.0), (t + 30_000, 1003.0)]
    assert centre.samples('{meter="raw_mill"}') == []
    assert centre.dropped("future_timestamp") == 3 and centre.dropped("beyond_retention") == 1
    records = centre.dead_letters()
    future = [p for r in records if r["reason"] == "future_timestamp" for p in r["points"]]
    assert sorted(p["ts_ms"] for p in future) == [y2099, y2099 + 60_000, y2099 + 120_000]
    past = [p for r in records if r["reason"] == "beyond_retention" for p in r["points"]]
    assert past == [point("raw_mill", 6.0, old)]
    assert all("2099-06-01" in r["detail"] for r in records if r["reason"] == "future_timestamp")


@pytest.mark.integration
def test_zip_bomb_and_oversized_batches_are_refused_and_the_processor_goes_on(centre: Centre) -> None:
    t = now_ms() // 60_000 * 60_000 - 60_000
    bomb = _bomb(64)
    assert len(bomb) < 1 << 20  # 64 MiB once inflated, from well under 1 MB
    centre.publish(TOPIC, bomb)
    many = [point("kiln_drive", 1000.0 + i, t - i) for i in range(centre.plant.processor.limits.max_batch_points + 1)]
    centre.publish(TOPIC, batch(many, 2))
    centre.publish(TOPIC, batch([point("kiln_drive", 1000.0, t)], 3))
    wait("the good batch stored", lambda: centre.samples(KILN) != [])
    wait("both counted", lambda: centre.dropped("too_large") == 2)
    assert centre.samples(KILN) == [(t, 1000.0)]
    details = sorted(r["detail"] for r in centre.dead_letters())
    assert "inflates beyond the limit of 8,388,608 bytes" in details[1]
    assert "batch of 20,001 points is larger than the limit of 20,000 points" in details[0]
    assert all(len(r.get("payload", "")) <= 4096 for r in centre.dead_letters())


# --------------------------------------------------------------------------- decoder bounds


def _bomb(inflated_mib: int) -> bytes:
    """A JSON-looking text of ``inflated_mib`` MiB, deflated to about a thousandth of that."""
    z = zlib.compressobj(9)
    return b"".join(z.compress(b"{" + b" " * ((1 << 20) - 1)) for _ in range(inflated_mib)) + z.flush()


@pytest.mark.parametrize("decode", [decode_wire, decode_batch])
def test_the_decoders_stop_inflating_at_the_cap(decode: Callable[..., Any]) -> None:
    bomb = _bomb(256)  # 256 MiB in about 250 KB
    cap = 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLargeError, match=r"inflates beyond the limit of 1,048,576 bytes"):
            decode(bomb, max_bytes=cap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * cap, peak  # one output buffer of cap + 1 bytes, not 256 MiB


def test_the_decoders_refuse_what_is_too_large_or_broken() -> None:
    good = batch([point("kiln_drive", 1.0, 1_763_880_000_000)], 1)
    assert decode_wire(zlib.compress(good))["seq"] == 1
    with pytest.raises(PayloadTooLargeError, match=r"payload of 2,000 bytes is larger than the limit of 1,024"):
        decode_wire(b"{" + b" " * 1999, max_bytes=1024)
    with pytest.raises(PayloadTooLargeError, match=r"batch of 3 points is larger than the limit of 2 points"):
        decode_wire(batch([point("m", 1.0, 1_763_880_000_000 + i) for i in range(3)], 1), max_points=2)
    with pytest.raises(SchemaError, match="truncated zlib stream"):
        decode_wire(zlib.compress(good)[:-6])
    with pytest.raises(SchemaError, match="bytes after its end"):
        decode_wire(zlib.compress(good) + b"junk")
    with pytest.raises(SchemaError, match="neither JSON nor zlib"):
        decode_wire(b"\x00garbage")


# --------------------------------------------------------------------------- processor, no services


class ListStore:
    def __init__(self) -> None:
        self.rows: list[Any] = []

    def write(self, rows: Any) -> None:
        self.rows.extend(rows)

    def close(self) -> None:
        pass


def _plant() -> Any:
    return parse_plant(plant_text("mqtt://127.0.0.1:1", "http://127.0.0.1:1"))


def test_rejected_payloads_are_kept_as_a_bounded_prefix(tmp_path: Path) -> None:
    proc = Processor(_plant(), ListStore(), dead_letter_path=tmp_path / "dead.jsonl")
    junk = b"\xff" * (5 * 1024 * 1024)
    for _ in range(120):
        proc.handle(Message(TOPIC, junk, lambda: None))
    assert len(proc.rejected) == 100
    assert all(len(r.payload) == 4096 and r.payload_bytes == len(junk) for r in proc.rejected)
    record = next(read_dead_letters(tmp_path / "dead.jsonl"))
    assert record["payload_truncated"] is True and record["payload_bytes"] == len(junk)
    assert len(record["payload_base64"]) <= 4 * 4096 // 3 + 4  # not UTF-8: base64 of the prefix


def test_dead_letters_rotate_by_size_one_entry_per_physical_line(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    limits = ProcessorLimits(dead_letter_max_bytes=65_536, dead_letter_files=2, payload_prefix_bytes=1000)
    proc = Processor(_plant(), ListStore(), dead_letter_path=path, limits=limits)
    sent = 0
    for i in range(400):
        text = f'{{"v": 1, "note": "line\u2028sep\u2029para\u0085nel #{i}", "points": "x{"y" * 400}"}}'
        proc.handle(Message(TOPIC, text.encode(), lambda: None))
        sent += 1
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["dead.jsonl", "dead.jsonl.1", "dead.jsonl.2"]  # the oldest deleted
    total = 0
    for f in files:
        raw = f.read_bytes()
        assert len(raw) <= 65_536
        assert raw.isascii()
        lines = raw.decode("ascii").splitlines()  # splitlines also splits at U+2028: nothing to split here
        assert len(lines) == raw.count(b"\n")
        total += len(lines)
    records = list(read_dead_letters(path))
    assert len(records) == total < sent
    assert records[-1]["payload"].endswith(f'#{sent - 1}", "points": "x' + "y" * 400 + '"}')
    assert "\u2028" in records[-1]["payload"]
    assert [int(r["payload"].split("#")[1].split('"')[0]) for r in records] == list(range(sent - total, sent))


def test_a_record_larger_than_the_file_limit_is_written_whole(tmp_path: Path) -> None:
    dead = DeadLetterFile(tmp_path / "d.jsonl", max_bytes=100, files=1)
    dead.write({"n": 1})
    dead.write({"big": "z" * 500})
    assert [r.get("n", "big") for r in read_dead_letters(tmp_path / "d.jsonl")] == [1, "big"]
    dead.write({"n": 3})
    assert [r.get("n") for r in read_dead_letters(tmp_path / "d.jsonl")] == [None, 3]


def test_in_process_batches_pass_the_same_plant_checks() -> None:
    from energymon.schema import Batch, Point

    store = ListStore()
    proc = Processor(_plant(), store)
    t = now_ms() - 60_000
    pt = Point(meter="kiln_drive", quantity=ENERGY, value=1.0, unit="kWh", ts_ms=t)
    proc.handle_batch(Batch(enterprise=USCC, gateway="gw-unknown", seq=1, sent_ms=t, points=[pt]))
    assert store.rows == []
    proc.handle_batch(Batch(enterprise=USCC, gateway=GATEWAY, seq=1, sent_ms=t, points=[
        pt, Point(meter="nobody", quantity=ENERGY, value=1.0, unit="kWh", ts_ms=t)]))
    assert {k.tags for k, _, _ in store.rows if k.measurement == "reading"} == {
        (("enterprise", USCC), ("gateway", GATEWAY), ("meter", "kiln_drive"), ("quantity", ENERGY), ("unit", "kWh"))}


def test_the_set_aside_reasons_are_documented() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text(encoding="utf-8")
    for reason in SET_ASIDE_REASONS:
        assert f"`{reason}`" in doc, reason


def test_a_gateway_batch_larger_than_the_processor_takes_is_a_config_error() -> None:
    text = plant_text("mqtt://127.0.0.1:1", "http://127.0.0.1:1", "  limits: {max_batch_points: 1000}\n")
    text = text.replace("poll_groups:", "batch_max_points: 2000, poll_groups:")
    with pytest.raises(ConfigError, match=r"gateway.batch_max_points: 2000 is more than the processor takes"):
        parse_plant(text)


@pytest.mark.parametrize(("text", "days"), [("30d", 30), ("2w", 14), ("1y", 365), ("1", 31), ("48h", 2),
                                            ("100y", 36_500)])
def test_victoriametrics_retention_values(text: str, days: float) -> None:
    assert _vm_duration_ms(text) == days * DAY_MS


class _Influx2(BaseHTTPRequestHandler):
    """Answers like InfluxDB 2: Prometheus metrics without VictoriaMetrics' flags, and one bucket."""

    every_seconds = 7 * 86_400
    seen_auth: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        if self.path.startswith("/metrics"):
            body = b"# HELP go_goroutines x\ngo_goroutines 12\n"
        elif self.path.startswith("/api/v2/buckets?name=plant&org=acme"):
            _Influx2.seen_auth.append(self.headers.get("Authorization", ""))
            rules = [{"type": "expire", "everySeconds": self.every_seconds}]
            body = json.dumps({"buckets": [{"name": "plant", "retentionRules": rules}]}).encode()
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_retention_of_an_influxdb2_bucket_is_read_and_a_configured_one_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_INFLUX_TOKEN", "s3cret")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Influx2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        cfg = InfluxStoreConfig(type="influxdb", url=url, org="acme", bucket="plant", token_env="TEST_INFLUX_TOKEN")
        with InfluxStore(cfg) as store:
            assert store.retention_ms() == 7 * DAY_MS
        assert _Influx2.seen_auth == ["Token s3cret"]
        _Influx2.every_seconds = 0  # infinite retention
        with InfluxStore(cfg) as store:
            assert store.retention_ms() is None
        with InfluxStore(cfg.model_copy(update={"retention_days": 90.0})) as store:
            assert store.retention_ms() == 90 * DAY_MS
    finally:
        server.shutdown()
        server.server_close()
    # a store that does not answer: unknown, never an exception
    with InfluxStore(InfluxStoreConfig(type="influxdb", url=f"http://127.0.0.1:{free_port()}", timeout_ms=500)) as s:
        assert s.retention_ms() is None


def test_unknown_meters_are_logged_once_per_id(caplog: pytest.LogCaptureFixture) -> None:
    proc = Processor(_plant(), ListStore())
    t = now_ms() - 60_000
    caplog.set_level(logging.WARNING, logger="energymon.processors.processor")
    for seq, ghosts in enumerate((["g1", "g2"], ["g1", "g3"], ["g1", "g2", "g3"], ["g2"]), 1):
        pts = [point("kiln_drive", 1.0 + seq, t + seq)] + [point(g, 1.0, t + seq) for g in ghosts]
        proc.handle(Message(TOPIC, batch(pts, seq), lambda: None))
    lines = [r.getMessage() for r in caplog.records if "(unknown_meter)" in r.getMessage()]
    assert len(lines) == 2 and "g1, g2" in lines[0] and "g1, g3" in lines[1]
    assert proc.metrics.registry.get_sample_value(
        "energymon_dropped_total", {"stage": "processor", "reason": "unknown_meter"}) == 8
