"""The live page explains: the indicator's trend today by hour and this month by day against 标杆/基准/限额, energy
per process (工序), the grade with its 1级/2级/3级, alert values with threshold and unit, sparklines with their
scale and time span, level labels that never overprint, and the plant (not a store path) in the header. A
headless Chromium renders the page served over a real store; every figure is checked against the store."""

from __future__ import annotations

import json
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from test_web import HOUR, chromium, fill, firing_alert, start_process, stop_process

from energymon.config import PlantConfig, SqliteStoreConfig, load_plant
from energymon.demo import example_plant_path
from energymon.processors.store import SqliteStore
from energymon.web.overview import _process_meters


class Page(HTMLParser):
    """Every element: tag, attributes and text (its own and its children's)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[dict[str, str]] = []
        self._stack: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        a["_tag"], a["_text"] = tag, ""
        self.elements.append(a)
        if tag not in ("br", "img", "meta", "link", "input"):
            self._stack.append(a)

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            if self._stack.pop()["_tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        for a in self._stack:
            a["_text"] += data

    def find(self, **attrs: str) -> list[dict[str, str]]:
        return [e for e in self.elements if all(e.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def classed(self, name: str) -> list[dict[str, str]]:
        return [e for e in self.elements if name in e.get("class", "").split()]


@pytest.fixture(scope="module")
def plant() -> PlantConfig:
    return load_plant(example_plant_path())


@pytest.mark.integration
def test_live_page_explains_and_every_figure_is_the_stores(plant: PlantConfig, tmp_path: Path) -> None:
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
        done = chromium(url, "--dump-dom")
        shot = tmp_path / "page.png"
        chromium(url, f"--screenshot={shot}", "--window-size=1280,2200")
    finally:
        stop_process(proc)
    assert done.returncode == 0, done.stderr[-2000:]
    page = Page()
    page.feed(done.stdout)
    snapshot = next(e for e in page.elements if e.get("id") == "snapshot")
    snap = json.loads(snapshot["_text"])
    day_start, now_ms = snap["day_start_ms"], snap["now_ms"]
    # ---- header: the plant, not a store path
    header = next(e for e in page.elements if e["_tag"] == "header")
    assert "示例水泥有限公司" in header["_text"] and plant.enterprise.uscc in header["_text"]
    assert "sqlite" not in header["_text"] and str(db) not in header["_text"]
    # ---- the indicator's trend, today by hour and the month by day, from the store's rows
    for period, start in (("hour", day_start), ("day", snap["trends"][0]["days_start_ms"])):
        rows = sorted((ts, v) for _t, ts, v in store.query("indicator", "value",
                                                           tags={"product": "clinker", "period": period})
                      if start <= ts <= now_ms)
        chart = page.find(data_period=period)
        assert len(chart) == 1 and int(chart[0]["data-points"]) == len(rows) >= 1
        dots = [e for e in page.classed("trend-pt") if e in page.elements]
        shown = sorted((int(e["data-ts"]), float(e["data-v"])) for e in dots if int(e["data-ts"]) in dict(rows))
        assert set(shown) >= set(rows)
    # levels share one label when they are equal (基准 117 = 限额 117), in the gauge and in each trend
    labels = [e["_text"] for e in page.classed("level-label")]
    assert labels.count("基准 / 限额 117") == 3 and "标杆 100" in labels
    assert not any(t in ("基准 117", "限额 117") for t in labels)
    # ---- the grade, with the GB quota grade (1级/2级/3级)
    # the running hour is provisional (暂估, no grade); the last complete hour beside it carries the grades
    hours = sorted(store.query("indicator", "quota_grade", tags={"product": "clinker", "period": "hour"}),
                   key=lambda r: r[1])
    grade, last_hour = page.classed("grade")[:2]
    assert grade["data-quota"] == "" and "暂估" in grade["_text"]
    before = hours[-2]
    assert last_hour["data-quota"] == str(int(before[2])) and f"{int(before[2])}级" in last_hour["_text"]
    # ---- per process energy today: each top-level process's top meters, from the store
    energy = store.query("energy", "kgce")
    processes = _process_meters(plant)
    rows = [e for e in page.elements if e["_tag"] == "tr"]
    by_process = {e["data-process"]: e for e in rows if "data-process" in e}
    assert set(by_process) == set(processes) and len(processes) >= 4
    cells = page.classed("pkgce")
    for process, carriers in processes.items():
        meters = {m for ids in carriers.values() for m in ids}
        expected = sum(v for tags, ts, v in energy if tags["meter"] in meters and day_start < ts <= now_ms)
        cell = next(c for c in cells if c in page.elements and c["_text"] and c in _cells_of(page, process))
        assert float(cell["data-value"]) == pytest.approx(expected, rel=1e-12) and expected > 0
    # ---- the alert row: value and threshold with the unit
    value = page.classed("alert-value")[0]
    threshold = page.classed("alert-threshold")[0]
    assert value["_text"] == "19,500.0 kW" and threshold["_text"] == "19,000.0 kW"
    # ---- sparklines: scale (the lowest and highest value shown) and time span
    power = {p["meter"]: p for p in snap["power"]}
    tiles = [e for e in page.elements if e.get("class") == "tile"]
    highs = [e for e in page.classed("spark-max")]
    assert len(highs) >= len([p for p in power.values() if len(p["history"]) >= 2]) >= 5
    incoming = [v for _, v in power["incoming"]["history"]]
    assert float(highs[0]["data-scale"]) == max(incoming) and float(page.classed("spark-min")[0]["data-scale"]) == min(
        incoming)
    assert all(e["data-span-min"] == "60" for e in page.classed("spark-x")) and len(tiles) == len(plant.meters)
    assert shot.exists()
    store.close()


def _cells_of(page: Page, process: str) -> list[dict[str, str]]:
    """The cells of the process's row (elements after its <tr> up to the next row)."""
    out: list[dict[str, str]] = []
    inside = False
    for e in page.elements:
        if e["_tag"] == "tr":
            inside = e.get("data-process") == process
            continue
        if inside:
            out.append(e)
    return out
