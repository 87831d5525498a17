"""The live web page: the overview computed from a store filled by the real processor (SQLite and
VictoriaMetrics give the same numbers), the HTTP endpoints, and the page itself in headless Chromium over
``energymon serve`` and ``energymon demo``: the numbers it shows are the store's, the screenshot is not blank and
the page updates without a reload."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from energymon.alerts.state import STATE_FILE, AlertStore
from energymon.clock import ManualClock
from energymon.config import InfluxStoreConfig, PlantConfig, SqliteStoreConfig, load_plant
from energymon.demo import example_plant_path
from energymon.interfaces import Message, Store
from energymon.processors.processor import Processor
from energymon.processors.store import InfluxStore, SqliteStore
from energymon.schema import Batch, Point, Quality, encode_batch
from energymon.simulators.plant import PlantModel
from energymon.topics import readings_topic
from energymon.web import Overview, SqliteReader, VictoriaMetricsReader, WebServer, alerts_from_state_file

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MINUTE = 60_000
HOUR = 3_600_000


# ----------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def plant() -> PlantConfig:
    return load_plant(example_plant_path())


def window(plant: PlantConfig) -> tuple[int, int]:
    """06:00 to 09:00 local, two days ago (in the past for VictoriaMetrics, whatever the date)."""
    tz = plant.enterprise.tz
    day = (datetime.now(tz) - timedelta(days=2)).date()
    start = datetime(day.year, day.month, day.day, 6, 0, tzinfo=tz)
    return int(start.timestamp() * 1000), int((start + timedelta(hours=3)).timestamp() * 1000)


def fill(plant: PlantConfig, stores: list[Store], start: int, end: int, *, bad_meter: str = "raw_mill") -> None:
    """Simulated readings every minute over ``[start, end)`` through the real processor into each store; the
    last 10 minutes of ``bad_meter`` are unavailable. One flush at the end: every store gets the same rows."""
    model = PlantModel(plant, ManualClock(datetime.fromtimestamp(start / 1000, plant.enterprise.tz)))
    processors = [Processor(plant, store, max_pending_rows=10**9) for store in stores]
    for seq, ts in enumerate(range(start, end, MINUTE), 1):
        points = []
        for meter in plant.meters:
            for quantity, (unit, _, _) in plant.quantities(meter).items():
                if meter.id == bad_meter and ts >= end - 10 * MINUTE:
                    points.append(Point(meter=meter.id, quantity=quantity, value=None, unit=unit, ts_ms=ts,
                                        quality=Quality.BAD))
                else:
                    value = model.value(meter.id, quantity, ts)
                    points.append(Point(meter=meter.id, quantity=quantity, value=value, unit=unit, ts_ms=ts))
        payload = encode_batch(Batch(enterprise=plant.enterprise.uscc, gateway=plant.gateway.id, seq=seq,
                                     sent_ms=ts, points=points))
        for proc in processors:
            proc.handle(Message(readings_topic(plant.enterprise.uscc, plant.gateway.id), payload, lambda: None))
    for proc in processors:
        assert proc.flush() > 0


def expected_from_store(plant: PlantConfig, store: SqliteStore, day_start: int, now: int) -> dict[str, Any]:
    """The overview's main numbers recomputed from raw samples (not through the reader)."""
    top = {"electricity": ["incoming"], "raw_coal": ["coal_feeder"], "natural_gas": ["gas_main"]}
    kgce: dict[str, float] = {}
    for carrier, meters in top.items():
        kgce[carrier] = sum(v for tags, ts, v in store.query("energy", "kgce")
                            if tags["meter"] in meters and day_start < ts <= now)
    rows = store.query("indicator", "value", tags={"product": "clinker", "period": "hour"}, end_ms=now + 1)
    _, hour_start, hour_value = max(rows, key=lambda r: r[1])
    power = {tags["meter"]: v for tags, ts, v in store.query("reading", "value", tags={"quantity": "power_active"},
                                                              end_ms=now + 1)}  # sorted by time: last wins
    return {"kgce": kgce, "kgce_today": sum(kgce.values()), "hour_start": hour_start, "hour_value": hour_value,
            "power": power}


def firing_alert(data_dir: Path, at_ms: int) -> None:
    """An active alert in the state file, as the alert engine stores it."""
    store = AlertStore(data_dir / STATE_FILE)
    alert = {"id": "demand_over_contract:incoming", "rule_id": "demand_over_contract", "source": "incoming",
             "state": "firing", "event": "firing", "severity": "warning", "audience": ["energy_manager"],
             "summary": "进线有功功率超过合同需量", "value": 19500.0, "threshold": 19000.0,
             "started_ms": at_ms - 120_000, "fired_ms": at_ms - 60_000, "resolved_ms": None, "acked_by": None,
             "acked_ms": None, "version": 1}
    store.save_track("demand_over_contract", "incoming", 1, "firing", {"alert": alert}, at_ms)
    store.close()


@pytest.fixture(scope="module")
def filled(plant: PlantConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SqliteStore, int, int]]:
    start, end = window(plant)
    path = tmp_path_factory.mktemp("web") / "store.sqlite"
    store = SqliteStore(SqliteStoreConfig(type="sqlite", path=path))
    fill(plant, [store], start, end)
    yield store, start, end
    store.close()


# ----------------------------------------------------------------------------------------------- overview


def test_overview_shows_the_stores_numbers(plant: PlantConfig, filled: tuple[SqliteStore, int, int]) -> None:
    store, start, end = filled
    now = end - MINUTE + 1
    snap = Overview(plant, SqliteReader(store), clock=ManualClock(datetime.fromtimestamp(now / 1000,
                                                                                          plant.enterprise.tz))).snapshot()
    assert snap["error"] is None
    exp = expected_from_store(plant, store, snap["day_start_ms"], now)
    assert snap["day_start_ms"] < start  # 06:00-09:00 is all "today"
    by_carrier = {c["carrier"]: c for c in snap["energy_today"]}
    assert set(by_carrier) == set(exp["kgce"])
    for carrier, kgce in exp["kgce"].items():
        assert by_carrier[carrier]["kgce"] == pytest.approx(kgce, rel=1e-12)
        assert kgce > 0
    assert by_carrier["electricity"]["unit"] == "kWh" and by_carrier["raw_coal"]["unit"] == "t"
    assert snap["kgce_today"] == pytest.approx(exp["kgce_today"], rel=1e-12)
    hour = snap["indicators"][0]["hour"]
    assert hour["start_ms"] == exp["hour_start"] and hour["value"] == exp["hour_value"]
    assert hour["benchmark"] == 100.0 and hour["baseline"] == 117.0
    # the running hour is an estimate: its value without a grade; the hour before it is complete and graded
    assert 100 < hour["value"] < 117 and hour["provisional"] and hour["status"] is None
    assert hour["grade"] == "暂估（时段未完整，不分级）"
    last = snap["indicators"][0]["last_hour"]
    assert last["start_ms"] == hour["start_ms"] - 3_600_000 and not last["provisional"]
    assert 100 < last["value"] < 117 and last["status"] == 2 and last["grade"] == "标杆与基准之间"
    power = {p["meter"]: p for p in snap["power"]}
    for meter, value in exp["power"].items():
        if meter != "raw_mill":
            assert power[meter]["value"] == value and power[meter]["unit"] == "kW"
    assert len(power["incoming"]["history"]) == 60  # the last hour, one reading a minute
    assert power["coal_feeder"]["quantity"] == "feed_rate" and power["gas_main"]["quantity"] == "volume_flow"
    quality = snap["quality"]
    assert [u["meter"] for u in quality["unavailable"]] == ["raw_mill"] and quality["silent"] == []
    assert quality["meters_ok"] == 7 and quality["meters_total"] == 8
    assert quality["latest_reading_ms"] == end - MINUTE
    per_minute = sum(len(plant.quantities(m)) for m in plant.meters) - 5  # raw_mill's 5 quantities are bad
    assert quality["readings_last_5min"] == 5 * per_minute
    assert snap["alerts"] is None


def test_overview_reads_active_alerts_from_the_state_file(
    plant: PlantConfig, filled: tuple[SqliteStore, int, int], tmp_path: Path
) -> None:
    store, _, end = filled
    path = tmp_path / STATE_FILE
    overview = Overview(plant, SqliteReader(store), alerts=alerts_from_state_file(path), alerts_from=str(path))
    assert overview.snapshot()["alerts"] == []  # no file yet: nothing active, the page starts anyway
    firing_alert(tmp_path, end)
    alerts = overview.snapshot()["alerts"]
    assert [(a["id"], a["state"], a["severity"]) for a in alerts] == [
        ("demand_over_contract:incoming", "firing", "warning")]


def test_store_failure_is_shown_not_raised(plant: PlantConfig, tmp_path: Path) -> None:
    store = SqliteStore(SqliteStoreConfig(type="sqlite", path=tmp_path / "s.sqlite"))
    store.close()
    snap = Overview(plant, SqliteReader(store)).snapshot()
    assert "is closed" in snap["error"] and str(tmp_path / "s.sqlite") in snap["error"]


# ----------------------------------------------------------------------------------------------- HTTP


def test_http_endpoints(plant: PlantConfig, filled: tuple[SqliteStore, int, int]) -> None:
    store, _, end = filled
    clock = ManualClock(datetime.fromtimestamp(end / 1000, plant.enterprise.tz))
    server = WebServer(Overview(plant, SqliteReader(store), clock=clock), port=0, refresh_s=0.2)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            page = http.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert "default-src 'self'" in page.headers["content-security-policy"]
            embedded = re.search(r'<script id="snapshot" type="application/json">(.*?)</script>', page.text)
            assert embedded is not None and '<script src="app.js">' in page.text
            assert "</" not in embedded.group(1)  # nothing in the data can close the script element
            first = json.loads(embedded.group(1))
            assert first["plant"]["name"] == "示例水泥有限公司" and first["kgce_today"] > 0
            api = http.get("/api/overview")
            assert api.headers["content-type"].startswith("application/json")
            snap = api.json()
            assert snap["kgce_today"] == first["kgce_today"] and snap["seq"] >= first["seq"]
            for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
                response = http.get(f"/{name}")
                assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
                text = response.text.replace("http://www.w3.org/2000/svg", "")  # the SVG namespace, not a fetch
                assert "http://" not in text and "https://" not in text and "//" + "cdn" not in text
            assert http.get("/nope").status_code == 404
            assert http.get("/healthz").text == "ok\n"
            # the event stream: two snapshots with increasing seq; then the client goes away mid-stream
            seqs: list[int] = []
            with http.stream("GET", "/api/stream") as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        seqs.append(json.loads(line[6:])["seq"])
                        if len(seqs) == 2:
                            break
            assert seqs[1] > seqs[0]
            # the server shrugs off the disconnect and keeps serving, with fresh snapshots
            deadline = time.monotonic() + 30
            while http.get("/api/overview").json()["seq"] <= seqs[1] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert http.get("/api/overview").json()["seq"] > seqs[1]
    finally:
        server.stop()


# ----------------------------------------------------------------------------------------------- VictoriaMetrics


@pytest.mark.integration
def test_victoria_metrics_reader_gives_the_same_overview(
    plant: PlantConfig, victoria_metrics: Any, tmp_path: Path
) -> None:
    start, end = window(plant)
    sqlite = SqliteStore(SqliteStoreConfig(type="sqlite", path=tmp_path / "s.sqlite"))
    influx = InfluxStore(InfluxStoreConfig(type="influxdb", url=victoria_metrics.url))
    try:
        fill(plant, [sqlite, influx], start, end)
        victoria_metrics.flush()
        clock = ManualClock(datetime.fromtimestamp((end - MINUTE + 1) / 1000, plant.enterprise.tz))
        vm_reader = VictoriaMetricsReader(victoria_metrics.url)
        try:
            vm = Overview(plant, vm_reader, clock=clock).snapshot()
        finally:
            vm_reader.close()
        lite = Overview(plant, SqliteReader(sqlite), clock=clock).snapshot()
    finally:
        influx.close()
        sqlite.close()
    assert vm["error"] is None and vm["store"] == f"victoriametrics:{victoria_metrics.url}"
    assert vm["kgce_today"] > 0
    approx = {"rel": 1e-10}  # VictoriaMetrics keeps about 12 significant digits
    assert vm["kgce_today"] == pytest.approx(lite["kgce_today"], **approx)
    for a, b in zip(vm["energy_today"], lite["energy_today"], strict=True):
        assert a["carrier"] == b["carrier"]
        assert a["consumed"] == pytest.approx(b["consumed"], **approx)
        assert a["kgce"] == pytest.approx(b["kgce"], **approx)
    for period in ("hour", "day"):
        a, b = vm["indicators"][0][period], lite["indicators"][0][period]
        assert a["start_ms"] == b["start_ms"] and a["provisional"] == b["provisional"] is True
        assert a["status"] == b["status"] is None  # the running hour and day: not graded yet
        for field in ("value", "energy_kgce", "output", "benchmark", "baseline"):
            assert a[field] == pytest.approx(b[field], **approx)
    for a, b in zip(vm["power"], lite["power"], strict=True):
        assert (a["meter"], a["ts_ms"]) == (b["meter"], b["ts_ms"])
        assert a["value"] == pytest.approx(b["value"], **approx)
        assert [t for t, _ in a["history"]] == [t for t, _ in b["history"]]
    assert vm["quality"] == lite["quality"]


# ----------------------------------------------------------------------------------------------- browser


class _Dom(HTMLParser):
    """Attributes and text of the elements with an id, data-carrier, data-meter or data-alert-id."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str]] = {}
        self.rows: list[dict[str, str]] = []
        self.body: dict[str, str] = {}
        self.snapshot_json = ""
        self._stack: list[dict[str, str]] = []
        self._in_snapshot = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        a["_tag"], a["_text"] = tag, ""
        if tag == "body":
            self.body = a
        if "id" in a:
            self.by_id[a["id"]] = a
        if any(k in a for k in ("data-carrier", "data-meter", "data-alert-id", "data-product", "data-value")):
            self.rows.append(a)
        self._in_snapshot = a.get("id") == "snapshot"
        if tag not in ("br", "img", "meta", "link", "input", "line", "rect", "polygon", "polyline"):
            self._stack.append(a)

    def handle_endtag(self, tag: str) -> None:
        if self._stack and self._stack[-1]["_tag"] == tag:  # `</rect>` of an element never pushed: not ours
            self._stack.pop()
        self._in_snapshot = False

    def handle_data(self, data: str) -> None:
        if self._in_snapshot:
            self.snapshot_json += data
        for a in self._stack:
            a["_text"] += data


def chromium(url: str, *args: str, budget_ms: int = 5000) -> subprocess.CompletedProcess[str]:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--window-size=1280,900", f"--virtual-time-budget={budget_ms}", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def dump_dom(url: str, budget_ms: int = 5000) -> _Dom:
    done = chromium(url, "--dump-dom", budget_ms=budget_ms)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = _Dom()
    dom.feed(done.stdout)
    assert dom.body.get("data-rendered"), done.stdout[:2000]  # the script ran and rendered a snapshot
    return dom


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of an 8-bit RGB or RGBA PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        filt, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, ul = prev[i], prev[i - channels] if i >= channels else 0
            if filt == 1:
                line[i] = (line[i] + left) & 255
            elif filt == 2:
                line[i] = (line[i] + up) & 255
            elif filt == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif filt == 4:
                p = left + up - ul
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else ul)) & 255
        prev = line
        rgb = bytes(line) if channels == 3 else bytes(b for j, b in enumerate(line) if j % 4 != 3)
        rows.append(rgb)
    return width, height, rows


def start_process(cmd: list[str], pattern: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``cmd`` and wait (bounded) for the URL it prints on the line matching ``pattern``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    deadline = time.monotonic() + 300  # a bound for a hung process, not a speed requirement
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise AssertionError(f"{cmd[3]} exited: {proc.stderr.read() if proc.stderr else ''}")
        found = re.search(pattern + r"(http://127\.0\.0\.1:\d+/)", line)
        if found:
            return proc, found.group(1)
    proc.kill()
    raise AssertionError(f"{cmd[3]} printed no URL within 300 s")


def stop_process(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("process did not stop after SIGINT")
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    return out


@pytest.mark.integration
def test_serve_page_in_chromium_shows_the_stores_numbers(plant: PlantConfig, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    db = tmp_path / "plant.sqlite"
    store = SqliteStore(SqliteStoreConfig(type="sqlite", path=db))
    fill(plant, [store], now - 3 * HOUR, now)
    firing_alert(tmp_path / "data", now)
    doc = yaml.safe_load(example_plant_path().read_text(encoding="utf-8"))
    doc["processor"]["store"] = {"type": "sqlite", "path": str(db)}
    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    proc, url = start_process(
        [sys.executable, "-m", "energymon.cli", "serve", str(plant_file), "--port", "0", "--data-dir",
         str(tmp_path / "data")], "live page of .* on ")
    try:
        dom = dump_dom(url)
        shot = tmp_path / "page.png"
        done = chromium(url, f"--screenshot={shot}")
        assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    finally:
        stop_process(proc)
    snap = json.loads(dom.snapshot_json)
    exp = expected_from_store(plant, store, snap["day_start_ms"], snap["now_ms"])
    store.close()
    # the numbers on the page are the store's (the rendered text and the exact value behind it)
    kgce = dom.by_id["kgce-today"]
    assert float(kgce["data-value"]) == pytest.approx(exp["kgce_today"], rel=1e-12)
    assert kgce["_text"] == f"{exp['kgce_today']:,.1f}"
    carriers = {r["data-carrier"]: r for r in dom.rows if r["_tag"] == "tr" and "data-carrier" in r}
    assert set(carriers) == {"electricity", "raw_coal", "natural_gas"}
    kgce_cells = [r for r in dom.rows if r["_tag"] == "td" and "kgce" in r.get("class", "").split()]
    assert sorted(float(c["data-value"]) for c in kgce_cells) == pytest.approx(sorted(exp["kgce"].values()))
    value = next(r for r in dom.rows if r.get("class") == "value")
    assert float(value["data-value"]) == exp["hour_value"] and value["_text"] == f"{exp['hour_value']:,.1f}"
    assert "标杆与基准之间" in dom.by_id["indicators"]["_text"]
    tiles = {r["data-meter"]: r for r in dom.rows if r.get("class") == "tile"}
    assert set(tiles) == {m.id for m in plant.meters}
    vals = [r for r in dom.rows if r.get("class") == "val"]
    shown = {float(v["data-value"]) for v in vals if v["data-value"]}
    assert {v for m, v in exp["power"].items() if m != "raw_mill"} <= shown
    assert "raw_mill" in dom.by_id["quality"]["_text"] and "unavailable" in dom.by_id["quality"]["_text"]
    assert dom.by_id["meters-ok"]["_text"] == "7 / 8"
    assert "demand_over_contract:incoming" in dom.by_id["alerts"]["_text"]
    assert dom.by_id["alert-count"]["_text"] == "1"
    assert "live on" in dom.by_id["live"]["class"] and int(dom.body["data-polls"]) >= 1  # polling ran
    # the screenshot: right size, not blank, the sparklines and bars drawn in the accent colour
    width, height, rows = read_png(shot)
    assert (width, height) == (1280, 900)
    colours = {row[i:i + 3] for row in rows[::4] for i in range(0, len(row), 12)}
    assert len(colours) > 50
    accent = sum(1 for row in rows[150:700] for i in range(0, len(row), 3)
                 if abs(row[i] - 0x25) < 40 and abs(row[i + 1] - 0x63) < 40 and abs(row[i + 2] - 0xEB) < 40)
    assert accent > 500, accent


@pytest.mark.integration
def test_demo_page_in_chromium_updates_live(tmp_path: Path) -> None:
    proc, url = start_process(
        [sys.executable, "-m", "energymon.cli", "demo", "--speed", "600", "--refresh", "1", "--web-port", "0",
         "--data-dir", str(tmp_path)], "live page: ")
    try:
        first = dump_dom(url)
        deadline = time.monotonic() + 300  # a bound for a hung demo: a new reading shows within seconds
        second = dump_dom(url)
        while second.by_id["latest-reading"]["data-ts"] == first.by_id["latest-reading"]["data-ts"]:
            assert time.monotonic() < deadline, "the page showed the same latest reading for 300 s"
            time.sleep(1)
            second = dump_dom(url)
        # within one page load: the script renders newer snapshots than the one embedded in the page
        long = dump_dom(url, budget_ms=20000)
    finally:
        out = stop_process(proc)
    assert "demo stopped cleanly" in out
    assert int(second.by_id["latest-reading"]["data-ts"]) > int(first.by_id["latest-reading"]["data-ts"])
    assert int(second.by_id["seq"]["data-seq"]) > int(first.by_id["seq"]["data-seq"])
    for dom in (first, second):
        assert float(dom.by_id["kgce-today"]["data-value"]) > 0
        assert dom.by_id["plant-name"]["_text"] == "示例水泥有限公司"
        assert int(dom.by_id["readings-5min"]["data-value"]) > 0
    embedded = json.loads(long.snapshot_json)["seq"]
    assert int(long.body["data-rendered"]) > embedded and int(long.body["data-polls"]) >= 2
    value = next(r for r in long.rows if r.get("class") == "value")
    shown = long.by_id["indicators"]["_text"].split("上一小时")[0]  # the card's main value, not the hour before
    if "暂估" in shown:  # the running hour: an estimate (far off in the first minutes), shown without a grade
        assert float(value["data-value"]) > 0 and "超过限额" not in shown
    else:
        assert 100 < float(value["data-value"]) < 117  # the simulated clinker line sits between 标杆 and 基准
