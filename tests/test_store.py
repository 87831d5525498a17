"""The stores: line protocol, InfluxStore against a real VictoriaMetrics, and the embedded SqliteStore."""

from __future__ import annotations

import gzip
import itertools
import math
import re
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from services import VictoriaMetrics, free_port

from energymon.config import InfluxStoreConfig, SqliteStoreConfig
from energymon.errors import ConfigError, StoreError
from energymon.interfaces import Row, series_key
from energymon.metrics import PipelineMetrics
from energymon.processors.store import InfluxStore, SqliteStore, open_store, to_line_protocol

BASE_MS = 1_767_225_600_123  # 2026-01-01T00:00:00.123Z: a timestamp with a millisecond part
TRICKY_TAGS = {"meter": "电表 1,a=b", "site": "厂区 一号", "path": "C:\\data"}
#: Values whose line-protocol text must survive exactly (shortest repr round trip).
EXACT = [0.1 + 0.2, 1 / 3, math.pi, 123456.789012345, 5e-324, 1.7976931348623157e308, -0.0, 2**53 + 2.0]
_counter = itertools.count()


def unique(prefix: str) -> str:
    """A measurement name no other test in the session uses (the session VM is shared)."""
    return f"{prefix}{next(_counter)}"


def sample(metrics: PipelineMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"stage": "store", **labels})
    return 0.0 if value is None else value


def influx(url: str, **kw: object) -> InfluxStoreConfig:
    return InfluxStoreConfig.model_validate({"type": "influxdb", "url": url, **kw})


class RecordingServer:
    """A loopback HTTP server that records each request and answers with a set status and body."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []  # (path?query, headers, decoded body)
        self.status = 204
        self.reply = b""
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                recorder.requests.append((self.path, dict(self.headers.items()), body))
                self.send_response(recorder.status)
                self.send_header("Content-Length", str(len(recorder.reply)))
                self.end_headers()
                self.wfile.write(recorder.reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def recorder() -> Iterator[RecordingServer]:
    server = RecordingServer()
    try:
        yield server
    finally:
        server.close()


# --------------------------------------------------------------------------- line protocol (no service)


def test_line_protocol_escapes_keys_and_keeps_every_digit() -> None:
    key = series_key("energy use", **TRICKY_TAGS)
    fields = {f"f{i}": v for i, v in enumerate(EXACT)} | {"a b,c=d\\e": 1.5}
    lines, counts, dropped = to_line_protocol([(key, fields, BASE_MS)])
    assert len(lines) == 1 and counts == [len(fields)]
    assert dropped == {"non_finite": 0, "invalid_value": 0, "invalid_key": 0}
    line = lines[0]
    assert line.startswith(key.lp + " ") and line.endswith(f" {BASE_MS}")
    assert "a\\ b\\,c\\=d\\\\e=1.5" in line
    field_text = line[len(key.lp) + 1 : line.rindex(" ")]
    parsed = dict(part.split("=", 1) for part in field_text.split(",") if part.startswith("f"))
    for i, v in enumerate(EXACT):
        assert float(parsed[f"f{i}"]) == v and math.copysign(1, float(parsed[f"f{i}"])) == math.copysign(1, v)
    assert parsed["f0"] == "0.30000000000000004"


def test_line_protocol_drops_bad_values_and_converts_other_numbers() -> None:
    key = series_key("m", meter="m1")
    rows: list[Row] = [
        (key, {"ok": 1.0, "nan": math.nan, "inf": math.inf, "ninf": -math.inf}, BASE_MS),
        (key, {"nan": math.nan}, BASE_MS + 1),  # nothing left: no line at all
        (key, {"np": np.float64(2.5), "np32": np.float32(0.5), "i": 3}, BASE_MS + 2),  # type: ignore[dict-item]
        (key, {"text": "12"}, BASE_MS + 3),  # type: ignore[dict-item]
        (series_key("m", meter="bad\nline"), {"v": 1.0}, BASE_MS + 4),
    ]
    lines, counts, dropped = to_line_protocol(rows)
    assert lines == [f"m,meter=m1 ok=1.0 {BASE_MS}", f"m,meter=m1 np=2.5,np32=0.5,i=3 {BASE_MS + 2}"]
    assert counts == [1, 3]
    assert dropped == {"non_finite": 4, "invalid_value": 1, "invalid_key": 1}


# --------------------------------------------------------------------------- InfluxStore → VictoriaMetrics


@pytest.mark.integration
def test_influx_round_trip_escaping_chinese_and_ms(victoria_metrics_session: VictoriaMetrics) -> None:
    vm = victoria_metrics_session
    meas = unique("用能 e,")
    key = series_key(meas, **TRICKY_TAGS)
    plain = {"active kw": 1234.5, "kwh": 98765.432, "neg": -42.125}
    rows: list[Row] = [(key, plain | {"tricky": v}, BASE_MS + i) for i, v in enumerate(EXACT[:4])]
    with InfluxStore(influx(vm.url)) as store:
        store.write(rows)
        exported = store.export(f'{{__name__=~"{meas}_.*"}}')
    by_name = {labels["__name__"]: (labels, ts, values) for labels, ts, values in exported}
    assert set(by_name) == {f"{meas}_{name}" for name in [*plain, "tricky"]}
    for name, value in plain.items():
        labels, ts, values = by_name[f"{meas}_{name}"]
        assert labels == {"__name__": f"{meas}_{name}", **TRICKY_TAGS}  # every tag back, unescaped
        assert ts == [BASE_MS, BASE_MS + 1, BASE_MS + 2, BASE_MS + 3]  # ms kept, not cut to seconds
        assert values == [value] * 4  # values with <= 12 significant digits come back exactly
    # VictoriaMetrics stores ~12 significant decimal digits (lib/decimal): 0.1 + 0.2 returns as 0.3. What we
    # send is exact (see test_line_protocol_escapes_keys_and_keeps_every_digit); what VM keeps is this close.
    _, _, tricky = by_name[f"{meas}_tricky"]
    assert tricky == pytest.approx(EXACT[:4], rel=1e-11, abs=0)
    assert tricky[0] == 0.3


@pytest.mark.integration
def test_influx_same_rows_twice_are_stored_once(
    victoria_metrics_session: VictoriaMetrics,
) -> None:
    vm = victoria_metrics_session
    meas = unique("dup")
    metrics = PipelineMetrics(registry=CollectorRegistry())
    rows: list[Row] = [
        (series_key(meas, meter=f"m{i % 3}"), {"v": float(i), "w": i / 7}, BASE_MS + 1000 * (i // 3))
        for i in range(50)
    ]
    with InfluxStore(influx(vm.url, batch_max_points=7), metrics=metrics) as store:
        store.write(rows)
        store.write(rows)  # a replayed batch
        exported = store.export(f'{{__name__=~"{meas}_.*"}}')
    assert len(exported) == 6  # 3 meters x 2 fields
    for labels, ts, values in exported:
        meter = int(labels["meter"][1:])
        indexes = [i for i in range(50) if i % 3 == meter]
        assert ts == [BASE_MS + 1000 * (i // 3) for i in indexes]  # each timestamp once
        expected = [float(i) if labels["__name__"].endswith("_v") else i / 7 for i in indexes]
        assert values == pytest.approx(expected, rel=1e-11)
    assert sample(metrics, "energymon_sent_total") == 2 * 100
    assert metrics.registry.get_sample_value("energymon_store_write_duration_seconds_count") == 2


@pytest.mark.integration
def test_influx_export_time_range_is_inclusive(victoria_metrics_session: VictoriaMetrics) -> None:
    vm = victoria_metrics_session
    meas = unique("range")
    rows: list[Row] = [(series_key(meas, meter="m1"), {"v": float(i)}, BASE_MS + i) for i in range(10)]
    with InfluxStore(influx(vm.url)) as store:
        store.write(rows)
        [(_, ts, values)] = store.export(f"{meas}_v", BASE_MS + 3, BASE_MS + 6)
        assert store.export(f"{meas}_v", BASE_MS + 10) == []
    assert ts == [BASE_MS + 3, BASE_MS + 4, BASE_MS + 5, BASE_MS + 6]
    assert values == [3.0, 4.0, 5.0, 6.0]


@pytest.mark.integration
def test_influx_export_sees_samples_stamped_ahead_of_the_wall_clock(
    victoria_metrics_session: VictoriaMetrics,
) -> None:
    """A fast demo clock stamps samples minutes ahead; VictoriaMetrics' default export range ends at now."""
    meas = unique("future")
    ahead = int(datetime.now(UTC).timestamp() * 1000) + 10 * 60_000
    with InfluxStore(influx(victoria_metrics_session.url)) as store:
        store.write([(series_key(meas, meter="m1"), {"v": 1.0}, ahead)])
        assert [(ts, values) for _, ts, values in store.export(f"{meas}_v")] == [([ahead], [1.0])]


@pytest.mark.integration
def test_influx_non_finite_values_are_dropped_and_counted(victoria_metrics_session: VictoriaMetrics) -> None:
    vm = victoria_metrics_session
    meas = unique("nf")
    metrics = PipelineMetrics(registry=CollectorRegistry())
    key = series_key(meas, meter="m1")
    rows: list[Row] = [
        (key, {"good": 1.0, "bad": math.nan}, BASE_MS),
        (key, {"good": 2.0, "bad": math.inf}, BASE_MS + 1),
        (key, {"good": math.inf, "bad": -math.inf}, BASE_MS + 2),
    ]
    with InfluxStore(influx(vm.url), metrics=metrics) as store:
        store.write(rows)
        exported = store.export(f'{{__name__=~"{meas}_.*"}}')
    assert [(labels["__name__"], ts, values) for labels, ts, values in exported] == [
        (f"{meas}_good", [BASE_MS, BASE_MS + 1], [1.0, 2.0])
    ]
    assert sample(metrics, "energymon_dropped_total", reason="non_finite") == 4
    assert sample(metrics, "energymon_sent_total") == 2


@pytest.mark.parametrize("use_gzip", [False, True])
def test_influx_request_chunks_precision_org_bucket_and_token(
    recorder: RecordingServer, monkeypatch: pytest.MonkeyPatch, use_gzip: bool
) -> None:
    monkeypatch.setenv("ENERGYMON_TEST_TOKEN", "tok-123")
    config = influx(
        recorder.url, org="acme", bucket="plant a", batch_max_points=7, token_env="ENERGYMON_TEST_TOKEN"
    )
    rows: list[Row] = [(series_key("m", meter=f"m{i}"), {"v": float(i)}, BASE_MS + i) for i in range(50)]
    metrics = PipelineMetrics(registry=CollectorRegistry())
    with InfluxStore(config, metrics=metrics, gzip=use_gzip) as store:
        store.write(rows)
        store.write([])  # nothing to send: no request
    assert len(recorder.requests) == 8  # ceil(50 / 7)
    sent_lines: list[str] = []
    for path, headers, body in recorder.requests:
        url = urlsplit(path)
        assert url.path == "/api/v2/write"
        assert parse_qs(url.query) == {"org": ["acme"], "bucket": ["plant a"], "precision": ["ms"]}
        assert headers["Authorization"] == "Token tok-123"
        assert headers.get("Content-Encoding") == ("gzip" if use_gzip else None)
        sent_lines += body.decode().split("\n")
    assert [len(body.decode().split("\n")) for _, _, body in recorder.requests] == [7] * 7 + [1]
    assert sent_lines == [f"m,meter=m{i} v={float(i)!r} {BASE_MS + i}" for i in range(50)]
    assert sample(metrics, "energymon_sent_total") == 50


def test_influx_refused_write_names_status_and_hides_token(
    recorder: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "s3cret-T0ken-echoed-back"
    monkeypatch.setenv("ENERGYMON_TEST_TOKEN", token)
    recorder.status = 401
    recorder.reply = f'{{"code":"unauthorized","message":"bad token {token}"}}'.encode()
    metrics = PipelineMetrics(registry=CollectorRegistry())
    config = influx(recorder.url, token_env="ENERGYMON_TEST_TOKEN")
    with InfluxStore(config, metrics=metrics) as store, pytest.raises(StoreError) as info:
        store.write([(series_key("m", meter="m1"), {"v": 1.0}, BASE_MS)])
    message = str(info.value)
    assert recorder.url in message and "HTTP 401" in message and "unauthorized" in message
    assert token not in message
    assert sample(metrics, "energymon_errors_total", error_type="StoreError") == 1
    assert sample(metrics, "energymon_sent_total") == 0


def test_influx_unreachable_store_raises_store_error_without_token(monkeypatch: pytest.MonkeyPatch) -> None:
    token = "s3cret-T0ken-do-not-log"
    monkeypatch.setenv("ENERGYMON_TEST_TOKEN", token)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    metrics = PipelineMetrics(registry=CollectorRegistry())
    store = InfluxStore(influx(url, token_env="ENERGYMON_TEST_TOKEN", timeout_ms=2000), metrics=metrics)
    try:
        with pytest.raises(StoreError) as info:
            store.write([(series_key("m", meter="m1"), {"v": 1.0}, BASE_MS)])
        assert info.value.retriable
        assert url in str(info.value)
        assert token not in str(info.value) and token not in repr(info.value.__cause__)
        assert sample(metrics, "energymon_errors_total", error_type="StoreError") == 1
        assert sample(metrics, "energymon_sent_total") == 0
        assert not store.ping()
        with pytest.raises(StoreError, match=re.escape(url)):
            store.export("m_v")
    finally:
        store.close()
    with pytest.raises(StoreError, match="closed"):
        store.write([])


@pytest.mark.integration
def test_influx_http_error_becomes_store_error(victoria_metrics_session: VictoriaMetrics) -> None:
    url = f"{victoria_metrics_session.url}/no/such/prefix"  # VictoriaMetrics answers 400 for unknown paths
    with InfluxStore(influx(url)) as store, pytest.raises(StoreError, match=r"HTTP 400") as info:
        store.write([(series_key("m", meter="m1"), {"v": 1.0}, BASE_MS)])
    assert url in str(info.value)


def test_influx_token_env_that_is_not_set_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENERGYMON_UNSET_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="ENERGYMON_UNSET_TOKEN"):
        InfluxStore(influx("http://127.0.0.1:9", token_env="ENERGYMON_UNSET_TOKEN"))


def test_influx_password_in_url_stays_out_of_messages() -> None:
    url = f"http://user:pa55word@127.0.0.1:{free_port()}"
    with InfluxStore(influx(url, timeout_ms=2000)) as store, pytest.raises(StoreError) as info:
        store.write([(series_key("m", meter="m1"), {"v": 1.0}, BASE_MS)])
    assert "pa55word" not in str(info.value) and "127.0.0.1" in str(info.value)


# --------------------------------------------------------------------------- SqliteStore


def sqlite_store(path: Path, metrics: PipelineMetrics | None = None) -> SqliteStore:
    return SqliteStore(SqliteStoreConfig(type="sqlite", path=path), metrics=metrics)


def energy_rows() -> list[Row]:
    """Two processes, three meters, two carriers, four hours of hourly kWh."""
    meters = [
        ("m1", "炼钢", "electricity"),
        ("m2", "炼钢", "natural_gas"),
        ("m3", "轧钢 1,2=3", "electricity"),
    ]
    rows: list[Row] = []
    for hour in range(4):
        for n, (meter, process, carrier) in enumerate(meters, start=1):
            key = series_key("energy", meter=meter, process=process, carrier=carrier)
            fields = {"consumed": 10.0 * n + hour, "kgce": n + hour / 10}
            rows.append((key, fields, BASE_MS + hour * 3_600_000))
    return rows


def test_sqlite_upsert_stores_each_key_once_with_the_last_value(tmp_path: Path) -> None:
    with sqlite_store(tmp_path / "s.db") as store:
        key = series_key("energy", meter="m1")
        store.write([(key, {"consumed": 1.0}, BASE_MS), (key, {"consumed": 2.0}, BASE_MS + 1)])
        store.write([(key, {"consumed": 5.0}, BASE_MS), (key, {"consumed": 7.0}, BASE_MS + 2)])
        # twice in one batch: the later row wins, even though it is the smaller value
        store.write([(key, {"consumed": 9.0}, BASE_MS + 1), (key, {"consumed": 3.0}, BASE_MS + 1)])
        assert store.count() == 3
        assert store.query("energy", "consumed") == [
            ({"meter": "m1"}, BASE_MS, 5.0),
            ({"meter": "m1"}, BASE_MS + 1, 3.0),
            ({"meter": "m1"}, BASE_MS + 2, 7.0),
        ]
        assert store.series() == [("energy", {"meter": "m1"})]


def test_sqlite_query_latest_and_sum_with_filters_and_ranges(tmp_path: Path) -> None:
    hour = 3_600_000
    with sqlite_store(tmp_path / "s.db") as store:
        store.write(energy_rows())
        assert store.count() == 3 * 4 * 2

        got = store.query(
            "energy", "consumed", tags={"meter": "m3"}, start_ms=BASE_MS + hour, end_ms=BASE_MS + 3 * hour
        )
        assert got == [
            ({"meter": "m3", "process": "轧钢 1,2=3", "carrier": "electricity"}, BASE_MS + hour, 31.0),
            ({"meter": "m3", "process": "轧钢 1,2=3", "carrier": "electricity"}, BASE_MS + 2 * hour, 32.0),
        ]  # end is exclusive
        assert [t["meter"] for t, _, _ in store.query("energy", "consumed", tags={"process": "炼钢"})] == [
            "m1"
        ] * 4 + ["m2"] * 4
        assert store.query("energy", "consumed", tags={"meter": "nope"}) == []
        assert store.query("energy", "no_such_field") == []
        assert store.query("no_such_measurement", "consumed") == []

        latest = store.latest("energy", "kgce", tags={"carrier": "electricity"})
        assert [(t["meter"], ts, v) for t, ts, v in latest] == [
            ("m1", BASE_MS + 3 * hour, pytest.approx(1.3)),
            ("m3", BASE_MS + 3 * hour, pytest.approx(3.3)),
        ]

        by_carrier = store.sum("energy", "consumed", group_by="carrier")
        assert by_carrier == {"electricity": (10 + 30) * 4 + 2 * 6, "natural_gas": 20 * 4 + 6}
        assert store.sum("energy", "consumed", tags={"process": "炼钢"}, start_ms=BASE_MS + 2 * hour) == {
            "": 12 + 13 + 22 + 23
        }
        assert store.sum("energy", "consumed", end_ms=BASE_MS + hour, group_by="process") == {
            "炼钢": 30.0,
            "轧钢 1,2=3": 30.0,
        }
        assert store.sum("energy", "consumed", group_by="no_such_tag") == {"": 4 * 60 + 3 * 6}
        assert store.sum("energy", "consumed", start_ms=BASE_MS + 10 * hour) == {}


def test_sqlite_non_finite_and_invalid_values_are_dropped_and_counted(tmp_path: Path) -> None:
    metrics = PipelineMetrics(registry=CollectorRegistry())
    key = series_key("power", meter="m1")
    rows: list[Row] = [
        (key, {"kw": 1.5, "kva": math.nan}, BASE_MS),
        (key, {"kw": math.inf}, BASE_MS + 1),
        (key, {"kw": np.float32(0.5), "kvar": "x"}, BASE_MS + 2),  # type: ignore[dict-item]
        (key, {"kw": 2.0}, 2**70),  # no int64 timestamp
        (series_key("power", meter="only-nan"), {"kw": math.nan}, BASE_MS),  # creates no series
    ]
    with sqlite_store(tmp_path / "s.db", metrics) as store:
        store.write(rows)
        assert store.query("power", "kw") == [
            ({"meter": "m1"}, BASE_MS, 1.5),
            ({"meter": "m1"}, BASE_MS + 2, 0.5),
        ]
        assert store.series() == [("power", {"meter": "m1"})]
    assert sample(metrics, "energymon_sent_total") == 2
    assert sample(metrics, "energymon_dropped_total", reason="non_finite") == 3
    assert sample(metrics, "energymon_dropped_total", reason="invalid_value") == 1
    assert sample(metrics, "energymon_dropped_total", reason="invalid_time") == 1
    assert metrics.registry.get_sample_value("energymon_store_write_duration_seconds_count") == 1


def test_sqlite_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "s.db"
    with sqlite_store(path) as store:
        store.write(energy_rows())
    with sqlite_store(path) as store:
        assert store.count() == 24
        assert store.sum("energy", "consumed", group_by="carrier")["natural_gas"] == 86.0
        store.write(energy_rows()[:3])  # the same series again: reused, not duplicated
        assert len(store.series("energy")) == 3 and store.count() == 24
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert raw.execute("SELECT count(*) FROM series").fetchone() == (3,)
    raw.close()


def test_sqlite_failed_write_stores_nothing_and_caches_no_series_id(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    metrics = PipelineMetrics(registry=CollectorRegistry())
    with sqlite_store(path, metrics) as store:
        store.write([(series_key("energy", meter="m1"), {"consumed": 1.0}, BASE_MS)])
        raw = sqlite3.connect(path)
        raw.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON samples WHEN NEW.value = 666 "
            "BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
        )
        raw.commit()
        new = series_key("energy", meter="m2")
        with pytest.raises(StoreError, match="refused by test") as info:
            store.write([(new, {"consumed": 2.0}, BASE_MS), (new, {"consumed": 666.0}, BASE_MS + 1)])
        assert str(path) in str(info.value)
        assert store.count() == 1 and store.series() == [("energy", {"meter": "m1"})]
        assert sample(metrics, "energymon_errors_total", error_type="StoreError") == 1
        raw.execute("DROP TRIGGER boom")
        raw.commit()
        raw.close()
        store.write([(new, {"consumed": 3.0}, BASE_MS)])  # a stale cached id would orphan this sample
        assert store.latest("energy", "consumed", {"meter": "m2"}) == [({"meter": "m2"}, BASE_MS, 3.0)]
    with pytest.raises(StoreError, match="closed"):
        store.count()
    assert not store.ping()


def test_sqlite_writer_and_reader_threads_share_one_store(tmp_path: Path) -> None:
    batches, per_batch = 60, 100  # rows per batch; each row has 2 values
    errors: list[BaseException] = []
    seen_counts: list[int] = []
    done = threading.Event()
    with sqlite_store(tmp_path / "s.db") as store:

        def writer() -> None:
            try:
                for b in range(batches):
                    store.write([
                        (series_key("energy", meter=f"m{i % 10}", carrier="electricity"),
                         {"consumed": 1.0, "kgce": 0.1229}, BASE_MS + (b * per_batch + i) * 1000)
                        for i in range(per_batch)
                    ])
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        def reader() -> None:
            try:
                while not done.is_set():
                    seen_counts.append(store.count())
                    total = store.sum("energy", "consumed", group_by="carrier").get("electricity", 0.0)
                    assert total == int(total) and int(total) % per_batch == 0  # whole batches only
                    store.latest("energy", "kgce")
                    store.query("energy", "consumed", tags={"meter": "m3"}, start_ms=BASE_MS)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=target) for target in (writer, reader, reader)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        assert store.count() == batches * per_batch * 2
        assert store.sum("energy", "consumed") == {"": float(batches * per_batch)}
    assert seen_counts and all(n % (per_batch * 2) == 0 for n in seen_counts)
    assert seen_counts == sorted(seen_counts)


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    sqlite = open_store(SqliteStoreConfig(type="sqlite", path=tmp_path / "s.db"))
    influx_store = open_store(influx("http://127.0.0.1:9"))
    try:
        assert isinstance(sqlite, SqliteStore) and isinstance(influx_store, InfluxStore)
    finally:
        sqlite.close()
        influx_store.close()


def test_sqlite_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "not-a.db"
    path.write_bytes(b"this is not an SQLite file, just text that is long enough to have a header" * 20)
    with pytest.raises(StoreError, match=r"not-a\.db"):
        sqlite_store(path)
