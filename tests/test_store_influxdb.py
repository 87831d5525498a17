"""Every store is whole: InfluxDB 1.x (written through ``/write``, read through InfluxQL) and VictoriaMetrics give
``report``, ``serve``'s reader, the scheduled recompute and the uplink's reading loader the same figures as the
embedded SQLite store, for the same processor run.

The servers are real: Debian's ``influxd`` 1.6.7 and ``victoria-metrics`` 1.79, started on free ports by the
fixtures in ``tests/services.py``. The example plant runs through the processor for three hours across local
midnight with simulated meters (an unanswered stretch, uncertain readings).
"""

from __future__ import annotations

import argparse
import http.server
import io
import json
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from prometheus_client import CollectorRegistry
from services import InfluxDB1, VictoriaMetrics

from energymon import cli
from energymon.clock import ManualClock
from energymon.config import InfluxStoreConfig, PlantConfig, SqliteStoreConfig, load_plant
from energymon.demo import example_plant_path
from energymon.errors import StoreError, UnreadableStoreError
from energymon.interfaces import ReadingsSource
from energymon.metrics import PipelineMetrics
from energymon.processors.processor import Processor
from energymon.processors.report import add_arguments, load_readings_store, main_report
from energymon.processors.schedule import CurrentPeriods
from energymon.processors.store import InfluxStore, SqliteStore
from energymon.schema import Batch
from energymon.simulators.plant import PlantModel
from energymon.simulators.profiles import NoAnswer
from energymon.web.reader import InfluxQLReader, SqliteReader, StoreReader, VictoriaMetricsReader
from energymon.web.serve import open_reader

pytestmark = pytest.mark.integration

SH = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 3, 5, 22, 30, tzinfo=SH)
MINUTES = 180
T0 = int(START.timestamp() * 1000)
END = T0 + MINUTES * 60_000


def simulate(plant: PlantConfig, stores: list[Any]) -> None:
    """Feed the processor three hours of readings, once per store (the same batches each time)."""
    clock = ManualClock(START)
    model = PlantModel.from_config(plant, clock, seed=11)
    model.inject("raw_mill", NoAnswer(start_ms=T0 + 40 * 60_000, duration_secs=600))
    batches: list[Batch] = []
    for seq, k in enumerate(range(MINUTES + 1)):
        ts = T0 + k * 60_000
        points: list[dict[str, Any]] = []
        for meter in plant.meters:
            units = plant.quantities(meter)
            unanswered = model.protocol_fault(meter.id, ts) is not None
            for quantity in model.quantities(meter.id):
                point: dict[str, Any] = {"meter": meter.id, "quantity": quantity, "unit": units[quantity][0],
                                         "ts_ms": ts}
                if unanswered:
                    point |= {"value": None, "quality": "bad"}
                else:
                    point["value"] = model.value(meter.id, quantity, ts)
                    point["quality"] = "uncertain" if quantity == "power_factor" and k % 25 == 0 else "good"
                points.append(point)
        batches.append(Batch.model_validate({"enterprise": plant.enterprise.uscc, "gateway": "gw-line1",
                                             "seq": seq, "sent_ms": ts, "points": points}))
    for store in stores:
        processor = Processor(plant, store)
        for batch in batches:
            processor.handle_batch(batch)
        processor.close()



def influx_config(influxdb: InfluxDB1) -> InfluxStoreConfig:
    return InfluxStoreConfig(type="influxdb", url=influxdb.url, api="v1", database=influxdb.database)


@pytest.fixture
def stores(influxdb: InfluxDB1, victoria_metrics: VictoriaMetrics,
           tmp_path: Path) -> Iterator[tuple[PlantConfig, SqliteStore, InfluxStore, InfluxStore]]:
    """The example plant's run written to SQLite, InfluxDB 1.x (``api: v1``) and VictoriaMetrics."""
    plant = load_plant(example_plant_path())
    sqlite = SqliteStore(SqliteStoreConfig(type="sqlite", path=tmp_path / "store.sqlite"))
    influx = InfluxStore(influx_config(influxdb))
    vm = InfluxStore(InfluxStoreConfig(type="influxdb", url=victoria_metrics.url))
    simulate(plant, [sqlite, influx, vm])
    victoria_metrics.flush()
    try:
        yield plant, sqlite, influx, vm
    finally:
        for store in (sqlite, influx, vm):
            store.close()


def test_influxdb_1x_has_no_v2_write_and_the_v1_write_path_works(influxdb: InfluxDB1) -> None:
    import httpx

    assert httpx.post(f"{influxdb.url}/api/v2/write", content=b"x v=1 1").status_code == 404
    with InfluxStore(influx_config(influxdb)) as store:
        assert store.server() == "influxdb"
        assert isinstance(store, ReadingsSource)
        from energymon.interfaces import series_key

        key = series_key("reading", enterprise="E", meter="m 1", quantity="q'x")
        store.write([(key, {"value": 0.1 + 0.2}, 1_000), (key, {"value": 2.0}, 2_000)])
        store.write([(key, {"value": 1.5}, 2_000)])  # a correction replaces the value
        got = store.query("reading", "value", tags={"meter": "m 1", "quantity": "q'x"}, start_ms=0, end_ms=2_000)
        assert got == [({"enterprise": "E", "meter": "m 1", "quantity": "q'x"}, 1_000, 0.1 + 0.2)]
        assert store.query("reading", "value", tags={"meter": "m 1"})[-1][1:] == (2_000, 1.5)
        assert store.query("reading", "value", tags={"meter": "other"}) == []


def test_a_refused_v1_write_is_a_store_error(influxdb: InfluxDB1) -> None:
    cfg = influx_config(influxdb).model_copy(update={"database": "no_such_db"})
    from energymon.interfaces import series_key

    with InfluxStore(cfg) as store, pytest.raises(StoreError, match=r"no_such_db|database not found"):
        store.write([(series_key("reading", meter="m"), {"value": 1.0}, 1_000)])


def test_every_store_loads_the_same_readings(stores: tuple[PlantConfig, SqliteStore, InfluxStore, InfluxStore]) -> None:
    plant, sqlite, influx, vm = stores
    want = load_readings_store(sqlite, plant, T0 - 3_600_000, END + 1)
    assert want and sum(r.ts.size for r in want.values()) > 1000
    for store in (influx, vm):
        got = load_readings_store(store, plant, T0 - 3_600_000, END + 1)
        assert got.keys() == want.keys()
        for meter, readings in want.items():
            assert got[meter].ts.tolist() == readings.ts.tolist(), (store.describe(), meter)
            assert got[meter].value.tolist() == pytest.approx(readings.value.tolist(), rel=1e-11)
    # influxd keeps float64 exactly
    got = load_readings_store(influx, plant, T0, END + 1)
    assert {m: r.value.tolist() for m, r in got.items()} == {
        m: r.value.tolist() for m, r in load_readings_store(sqlite, plant, T0, END + 1).items()}


def report_json(argv: list[str], out: Path) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([*argv, "--day", "2026-03-05", "--out", str(out), "--format", "json"])
    printed = io.StringIO()
    assert main_report(args, printed) == 0, printed.getvalue()
    (path,) = out.glob("*.json")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def figures(report: dict[str, Any]) -> Any:
    """The report without the fields that name its source or the time it was made."""
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in {"generated_at", "source", "readings_source"}}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node
    return strip(report)


def test_report_reads_the_same_figures_from_every_store(
    stores: tuple[PlantConfig, SqliteStore, InfluxStore, InfluxStore], tmp_path: Path
) -> None:
    _plant, sqlite, influx, _vm = stores
    config = str(example_plant_path())
    want = report_json(["--config", config, "--store-file", str(sqlite.path)], tmp_path / "sqlite")
    assert '"kgce' in json.dumps(want) and "reading" not in str(want.get("error", ""))
    for name, store in (("influx", influx), ("vm", _vm)):
        got = report_json(["--config", config, "--store-url", store.config.url], tmp_path / name)
        assert same(figures(got), figures(want), exact=name == "influx"), name


def test_the_recompute_reads_and_writes_back_the_same_rows(
    stores: tuple[PlantConfig, SqliteStore, InfluxStore, InfluxStore], tmp_path: Path
) -> None:
    plant, sqlite, influx, _vm = stores
    results = {}
    for name, store in (("sqlite", sqlite), ("influx", influx)):
        clock = ManualClock(datetime(2026, 3, 6, 1, 30, tzinfo=SH))
        sched = CurrentPeriods(plant, store, clock=clock, metrics=PipelineMetrics(CollectorRegistry()),
                               cache_path=tmp_path / f"{name}-recompute.sqlite")
        try:
            rows = sched.run_once()
        finally:
            sched.close()
        assert rows
        results[name] = {(k.measurement, k.lp, ts): f for k, f, ts in rows}
    assert results["influx"].keys() == results["sqlite"].keys()
    for key, fields in results["sqlite"].items():
        assert results["influx"][key] == pytest.approx(fields, rel=1e-12, nan_ok=True), key
    # and they were stored: read back through the same interface
    pairs = {(m, f) for (m, _lp, _ts), fields in results["sqlite"].items() for f in fields}
    assert any(m.startswith("acct_") for m, _ in pairs)
    for measurement, field in sorted(pairs):
        want = sqlite.query(measurement, field)
        got = influx.query(measurement, field)
        assert [(t, ts) for t, ts, _ in got] == [(t, ts) for t, ts, _ in want], (measurement, field)
        assert [v for *_, v in got] == pytest.approx([v for *_, v in want], rel=1e-12), (measurement, field)


def same(a: Any, b: Any, *, exact: bool) -> bool:
    """Equal structures; floats equal (``exact``) or within 1e-11 relative."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], exact=exact) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y, exact=exact) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return bool(a == b) if exact else bool(a == pytest.approx(b, rel=1e-11))
    return bool(a == b)


def readers(stores: tuple[PlantConfig, SqliteStore, InfluxStore, InfluxStore]) -> list[StoreReader]:
    _plant, sqlite, influx, vm = stores
    return [SqliteReader(sqlite), InfluxQLReader(influx), VictoriaMetricsReader(vm.config.url)]


def test_serve_reads_the_same_figures_from_every_store(
    stores: tuple[PlantConfig, SqliteStore, InfluxStore, InfluxStore],
) -> None:
    ref, *others = readers(stores)
    at = END - 5 * 60_000
    asks = [
        ("latest", lambda r: r.latest("reading", "value", {"meter": "incoming"}, at_ms=at, window_ms=600_000)),
        ("latest-all", lambda r: r.latest("reading", "value", None, at_ms=at, window_ms=600_000)),
        ("sum", lambda r: r.sum("energy", "consumed", "meter", start_ms=T0, end_ms=at)),
        ("count", lambda r: r.count("energy", "consumed", start_ms=T0, end_ms=at)),
        ("samples", lambda r: r.samples("energy", "consumed", {"meter": "incoming"}, start_ms=T0, end_ms=at)),
    ]
    for name, ask in asks:
        want = ask(ref)
        assert want, name
        for reader in others:
            got = ask(reader)
            exact = isinstance(reader, InfluxQLReader)  # VictoriaMetrics keeps about 12 significant digits
            assert same(got, want, exact=exact), (name, reader.describe(), got, want)
    tags = dict(ref.latest("energy", "consumed", {"meter": "incoming"}, at_ms=at, window_ms=600_000)[0][0])
    ts = ref.latest("energy", "consumed", {"meter": "incoming"}, at_ms=at, window_ms=600_000)[0][1]
    want_row = ref.row("energy", ["consumed", "kgce"], tags, ts)
    assert want_row
    assert others[0].row("energy", ["consumed", "kgce"], tags, ts) == want_row


def test_serve_opens_an_influxdb_reader_from_the_plant_file(influxdb: InfluxDB1, tmp_path: Path) -> None:
    plant = load_plant(example_plant_path())
    cfg = plant.processor.model_copy(update={"store": influx_config(influxdb)})
    reader = open_reader(plant.model_copy(update={"processor": cfg}))
    try:
        assert isinstance(reader, InfluxQLReader)
        assert reader.describe().startswith("influxdb:")
    finally:
        reader.close()


class _NotAStore(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def not_a_store() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotAStore)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_report_and_serve_refuse_a_store_they_cannot_read(
    not_a_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["report", "--config", str(example_plant_path()), "--store-url", not_a_store, "--day", "2026-03-05",
            "--out", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "neither InfluxDB" in err and not_a_store in err and "Traceback" not in err

    text = yaml.safe_load(example_plant_path().read_text(encoding="utf-8"))
    text["processor"]["store"] = {"type": "influxdb", "url": not_a_store}
    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(yaml.safe_dump(text, allow_unicode=True), encoding="utf-8")
    with pytest.raises(UnreadableStoreError, match="neither InfluxDB"):
        open_reader(load_plant(plant_file))
    assert cli.main(["serve", str(plant_file), "--duration", "1"]) == 2
    assert "neither InfluxDB" in capsys.readouterr().err


def test_the_uplink_reads_its_readings_from_influxdb(
    stores: tuple[PlantConfig, SqliteStore, InfluxStore, InfluxStore], influxdb: InfluxDB1
) -> None:
    from energymon.gateway.provincial.service import open_store as uplink_store

    plant, sqlite, _influx, _vm = stores
    cfg = plant.processor.model_copy(update={"store": influx_config(influxdb)})
    store = uplink_store(plant.model_copy(update={"processor": cfg}))
    try:
        assert isinstance(store, InfluxStore) and isinstance(store, ReadingsSource)
        got = load_readings_store(store, plant, T0, END + 1)
    finally:
        store.close()
    want = load_readings_store(sqlite, plant, T0, END + 1)
    assert want and {m: r.value.tolist() for m, r in got.items()} == {m: r.value.tolist() for m, r in want.items()}


def test_retention_policy_is_written_read_and_its_duration_known(influxdb: InfluxDB1) -> None:
    from energymon.interfaces import series_key

    influxdb.query(f'CREATE RETENTION POLICY "week" ON "{influxdb.database}" DURATION 168h REPLICATION 1')
    base = influx_config(influxdb)
    with InfluxStore(base) as store:
        assert store.retention_ms() is None  # autogen keeps everything
    now = int(datetime.now(tz=SH).timestamp() * 1000)
    key = series_key("reading", meter="m1")
    with InfluxStore(base.model_copy(update={"retention_policy": "week"})) as store:
        assert store.retention_ms() == 168 * 3_600_000
        store.write([(key, {"value": 4.25}, now)])
        assert store.query("reading", "value") == [({"meter": "m1"}, now, 4.25)]
    with InfluxStore(base) as store:  # the default policy does not hold it
        assert store.query("reading", "value") == []
    with InfluxStore(base.model_copy(update={"retention_policy": "nope"})) as store:
        assert store.retention_ms() is None  # logged, never raised


def test_influxdb_1x_with_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    from energymon.interfaces import series_key

    with InfluxDB1(admin=("energymon", "s3cret-pw")) as server:
        cfg = InfluxStoreConfig(type="influxdb", url=server.url, api="v1", token_env="ENERGYMON_TEST_INFLUX")
        key = series_key("reading", meter="m1")
        monkeypatch.setenv("ENERGYMON_TEST_INFLUX", "energymon:wrong")
        with InfluxStore(cfg) as store, pytest.raises(StoreError, match="401"):
            store.write([(key, {"value": 1.0}, 1_000)])
        monkeypatch.setenv("ENERGYMON_TEST_INFLUX", "energymon:s3cret-pw")
        with InfluxStore(cfg) as store:
            store.write([(key, {"value": 1.0}, 1_000)])
            assert store.query("reading", "value") == [({"meter": "m1"}, 1_000, 1.0)]
            assert "s3cret" not in store.describe()

