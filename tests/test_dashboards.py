"""Grafana dashboards (deploy/grafana): the committed JSON is what the generator writes, every Flux query asks only
for measurements, fields, tags and tag values the pipeline really writes, every PromQL metric exists in the
self-metrics exposition, and the dashboards fit the provisioned data sources.

The schema the queries are checked against is not a list kept here: two enterprises (the shipped example plant and
a second one with a recorded meter replacement, the gap policy ``flag``, an 等价值 factor and an energy budget) are
run through the processor with simulated meters for four hours across midnight, with unanswered polls, uncertain
readings, a gap, a counter reset and a rollover; ``energymon report --write-store`` then writes the recomputed
``acct_*`` rows into the same SQLite store, and the schema is read back from that store.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from energymon.clock import ManualClock
from energymon.config import PlantConfig, SqliteStoreConfig, load_plant, uscc_is_valid
from energymon.counters import counter_max_of
from energymon.demo import example_plant_path
from energymon.metrics import PipelineMetrics
from energymon.processors.processor import Processor
from energymon.processors.report import add_arguments, main_report
from energymon.processors.store import SqliteStore
from energymon.schema import Batch
from energymon.simulators.plant import MeterOverride, PlantModel
from energymon.simulators.profiles import CounterReset, NoAnswer, Replacement

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
SH = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 3, 5, 22, 0, tzinfo=SH)  # four hours across local midnight
HOURS = 4
STEP_S = 60
FLUX_COLUMNS = {"_time", "_value", "_field", "_measurement", "_start", "_stop"}


# --------------------------------------------------------------------------- the generator module


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("energymon_grafana_dashboards", GRAFANA / "dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return load_generator()


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    files = sorted((GRAFANA / "dashboards").glob("*.json"))
    assert files, "no dashboards committed in deploy/grafana/dashboards"
    return {f.name: json.loads(f.read_text(encoding="utf-8")) for f in files}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def influx_queries(board: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
    """(where, Flux text, panel or None for a variable) of every query on the InfluxDB data source."""
    for var in board.get("templating", {}).get("list", []):
        if (var.get("datasource") or {}).get("type") == "influxdb":
            yield f"{board['uid']} variable {var['name']}", var["query"], None
    for panel in panels(board):
        for target in panel.get("targets", []):
            if (target.get("datasource") or panel.get("datasource") or {}).get("type") == "influxdb":
                yield f"{board['uid']} panel {panel['id']} {panel.get('title')!r}", target["query"], panel


def prom_queries(board: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(where, PromQL, legend) of every query on the Prometheus data source."""
    for var in board.get("templating", {}).get("list", []):
        if (var.get("datasource") or {}).get("type") == "prometheus":
            query = var["query"]
            yield f"{board['uid']} variable {var['name']}", query["query"] if isinstance(query, dict) else query, ""
    for panel in panels(board):
        for target in panel.get("targets", []):
            if (target.get("datasource") or panel.get("datasource") or {}).get("type") == "prometheus":
                yield f"{board['uid']} panel {panel['id']}", target["expr"], target.get("legendFormat", "")


# --------------------------------------------------------------------------- the schema the pipeline writes


@dataclass
class Measurement:
    tags: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    values: dict[str, set[str]] = field(default_factory=dict)


def second_enterprise_uscc(base: str) -> str:
    body = base[:8] + "7Q2K9T0PX"
    return next(body + c for c in "0123456789ABCDEFGHJKLMNPQRTUWXY" if uscc_is_valid(body + c))


def counter_of(plant: PlantConfig, meter_id: str) -> str:
    counter = plant.meter(meter_id).counter
    assert counter is not None
    return counter


def simulate(plant: PlantConfig, store: SqliteStore, model: PlantModel, gateway: str) -> None:
    """Feed the processor four hours of simulated readings: polls every minute, with faults and a gap."""
    processor = Processor(plant, store)
    t0 = int(START.timestamp() * 1000)
    gap = range(t0 + 100 * 60_000, t0 + 150 * 60_000)  # the gas meter's messages are lost for 50 minutes
    for seq, k in enumerate(range(HOURS * 3600 // STEP_S + 1)):
        ts = t0 + k * STEP_S * 1000
        points: list[dict[str, Any]] = []
        for meter in plant.meters:
            if meter.id == "gas_main" and ts in gap:
                continue
            units = plant.quantities(meter)
            unanswered = model.protocol_fault(meter.id, ts) is not None
            for quantity in model.quantities(meter.id):
                point: dict[str, Any] = {"meter": meter.id, "quantity": quantity, "unit": units[quantity][0],
                                         "ts_ms": ts}
                if unanswered:
                    point |= {"value": None, "quality": "bad"}
                else:
                    point["value"] = model.value(meter.id, quantity, ts)
                    # a third-party gateway marks a stale power factor as uncertain now and then
                    point["quality"] = "uncertain" if quantity == "power_factor" and k % 25 == 0 else "good"
                points.append(point)
        processor.handle_batch(Batch.model_validate({"enterprise": plant.enterprise.uscc, "gateway": gateway,
                                                     "seq": seq, "sent_ms": ts, "points": points}))
    processor.close()


def report_to_store(config: Path, db: Path, day: str, out: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", str(config), "--store-file", str(db), "--day", day, "--out", str(out),
                              "--format", "json", "--write-store"])
    printed = io.StringIO()
    assert main_report(args, printed) == 0, printed.getvalue()
    assert "wrote" in printed.getvalue()


def run_pipeline(tmp: Path) -> Path:
    """Run both enterprises through the processor and the report's store write; return the store file."""
    db = tmp / "store.sqlite"
    plant_a = load_plant(example_plant_path())
    text = yaml.safe_load(example_plant_path().read_text(encoding="utf-8"))
    text["enterprise"] = {**text["enterprise"], "uscc": second_enterprise_uscc(plant_a.enterprise.uscc),
                          "name": "第二水泥有限公司"}
    text["gateway"] = {**text["gateway"], "id": "gw-b"}
    text["accounting"] = {"gap_policy": {"mode": "flag"}, "equal_value_kgce_per_kwh": {2026: 0.3},
                          "budget": {"annual_tce": {2026: 150000.0}}}
    config_b = tmp / "plant_b.yaml"
    config_b.write_text(yaml.safe_dump(text, allow_unicode=True), encoding="utf-8")
    plant_b = load_plant(config_b)

    with SqliteStore(SqliteStoreConfig(type="sqlite", path=db)) as store:
        for plant, config, gateway in ((plant_a, example_plant_path(), "gw-line1"), (plant_b, config_b, "gw-b")):
            clock = ManualClock(START)
            t0 = clock.now_ms()
            wrap = counter_max_of(plant, plant.meter("cement_mill"))
            assert wrap is not None
            # the cement mill's register wraps about 90 minutes in (9 MW mill)
            overrides = {"cement_mill": MeterOverride(counter_start=wrap - 9000.0 * 1.5)}
            model = PlantModel.from_config(plant, clock, seed=7, overrides=overrides)
            model.inject("raw_mill", NoAnswer(start_ms=t0 + 30 * 60_000, duration_secs=600))
            model.inject("coal_mill", CounterReset(start_ms=t0 + 200 * 60_000))
            if plant is plant_b:
                at = START + timedelta(hours=2, minutes=30)
                at_ms = int(at.timestamp() * 1000)
                counter = counter_of(plant, "kiln_drive")
                old_final = model.value("kiln_drive", counter, at_ms)
                model.inject("kiln_drive", Replacement(start_ms=at_ms, new_value=5.0))
                text["accounting"]["replacements"] = [{"meter": "kiln_drive", "at": at.isoformat(),
                                                       "old_final_value": old_final, "new_start_value": 5.0}]
                config.write_text(yaml.safe_dump(text, allow_unicode=True), encoding="utf-8")
                plant = load_plant(config)
            simulate(plant, store, model, gateway)
    for config in (example_plant_path(), config_b):
        for day in ("2026-03-05", "2026-03-06"):
            report_to_store(config, db, day, tmp / "report")
    return db


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Measurement]:
    """Measurement → tags, fields and tag values, read back from the store the pipeline wrote."""
    db = run_pipeline(tmp_path_factory.mktemp("pipeline"))
    schema: dict[str, Measurement] = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT DISTINCT s.measurement, s.tags, x.field FROM samples x "
                            "JOIN series s ON s.id = x.series_id").fetchall()
    for name, tags_json, field_name in rows:
        m = schema.setdefault(name, Measurement())
        m.fields.add(field_name)
        for key, value in json.loads(tags_json).items():
            m.tags.add(key)
            m.values.setdefault(key, set()).add(value)
    return schema


# --------------------------------------------------------------------------- Flux analysis


def _strings(text: str) -> list[str]:
    return re.findall(r'"([^"]*)"', text)


@dataclass
class FluxPipeline:
    measurements: list[str]
    fields: list[str]
    columns: set[str]
    literals: list[tuple[str, str]]
    pivots: bool
    defined: set[str]


def flux_pipelines(query: str) -> list[FluxPipeline]:
    """Split a Flux query at each source (``from`` or ``schema.tagValues``) and collect what each one reads."""
    starts = [m.start() for m in re.finditer(r"\bfrom\(bucket:|schema\.tagValues\(", query)]
    assert starts, f"no data source in {query!r}"
    out = []
    for i, start in enumerate(starts):
        seg = query[start: starts[i + 1] if i + 1 < len(starts) else len(query)]
        seg = re.sub(r"/\^[^/]*\$/", "/re/", seg)  # regex literals (template variables) carry no names
        measurements = re.findall(r'r\._measurement\s*==\s*"([^"]+)"', seg)
        fields = re.findall(r'r\._field\s*==\s*"([^"]+)"', seg)
        for found in re.findall(r"contains\(value:\s*r\._field,\s*set:\s*\[([^\]]*)\]\)", seg):
            fields += _strings(found)
        columns = set(re.findall(r"\br\.([A-Za-z_]\w*)", seg))
        for found in re.findall(r"\b(?:columns|rowKey|columnKey):\s*\[([^\]]*)\]", seg):
            columns |= set(_strings(found))
        columns |= set(re.findall(r'\b(?:valueColumn|column|tag):\s*"([^"]+)"', seg))
        literals = re.findall(r'\br\.([A-Za-z]\w*)\s*==\s*"([^"$]*)"', seg)
        defined = set(re.findall(r"\bwith\s+([A-Za-z_]\w*)\s*:", seg))
        out.append(FluxPipeline(measurements, fields, columns, literals, "pivot(" in seg, defined))
    return out


def test_flux_analysis_sees_every_reference() -> None:
    query = ('from(bucket: v.defaultBucket)\n  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n'
             '  |> filter(fn: (r) => r._measurement == "energy" and contains(value: r._field, set: ["kgce", "x"]))\n'
             '  |> filter(fn: (r) => r.enterprise == "${enterprise}" and r.process =~ /^${process:regex}$/)\n'
             '  |> filter(fn: (r) => r.level == "1")\n'
             '  |> group(columns: ["meter"]) |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')
    (p,) = flux_pipelines(query)
    assert p.measurements == ["energy"] and p.fields == ["kgce", "x"] and p.pivots
    assert p.columns >= {"enterprise", "process", "level", "meter", "_time", "_field", "_value"}
    assert p.literals == [("level", "1")]


# --------------------------------------------------------------------------- (a) regeneration


def test_committed_json_is_what_the_generator_writes(generator: ModuleType) -> None:
    rendered: dict[str, str] = generator.build_all()
    committed = {f.name: f.read_text(encoding="utf-8") for f in (GRAFANA / "dashboards").glob("*.json")}
    assert set(committed) == set(rendered), "dashboard files and generator disagree; run deploy/grafana/dashboards.py"
    for name, text in rendered.items():
        assert committed[name] == text, f"{name} is stale: run python deploy/grafana/dashboards.py"
    assert rendered == generator.build_all()  # deterministic
    assert generator.main(["--check"]) == 0


def test_check_mode_reports_a_stale_file(generator: ModuleType, tmp_path: Path) -> None:
    assert generator.main(["--out", str(tmp_path)]) == 0
    assert generator.main(["--out", str(tmp_path), "--check"]) == 0
    victim = tmp_path / "plant-overview.json"
    victim.write_text(victim.read_text(encoding="utf-8").replace("kgce", "kWh", 1), encoding="utf-8")
    assert generator.main(["--out", str(tmp_path), "--check"]) == 1


def test_flux_targets_round_trip_through_the_sdk_query_type(generator: ModuleType,
                                                            dashboards: dict[str, dict[str, Any]]) -> None:
    for board in dashboards.values():
        for panel in panels(board):
            for target in panel.get("targets", []):
                if "query" in target:
                    again = generator.FluxDataquery.from_json(target)
                    assert json.loads(json.dumps(again.to_json(), default=lambda o: o.to_json())) == target


# --------------------------------------------------------------------------- (b) Flux refers to what is written


def test_the_pipeline_run_covers_the_layout(written: dict[str, Measurement]) -> None:
    """The simulated run reaches every path the dashboards read (else the next test would prove little)."""
    assert {"reading", "reading_unavailable", "energy", "production", "indicator", "acct_enterprise",
            "acct_enterprise_carrier", "acct_product", "acct_meter", "acct_quality_day", "acct_quality_month",
            "acct_balance", "acct_budget", "budget"} <= set(written)
    assert {"flag_rollover", "flag_rebased", "flag_replaced", "flag_gap_spread", "flag_gap_at_end"} \
        <= written["energy"].fields
    assert "uncertain" in written["reading"].fields
    assert len(written["reading"].values["enterprise"]) == 2


def test_every_flux_query_reads_only_what_the_pipeline_writes(
    dashboards: dict[str, dict[str, Any]], written: dict[str, Measurement]
) -> None:
    problems: list[str] = []
    checked = 0
    for board in dashboards.values():
        for where, query, panel in influx_queries(board):
            for p in flux_pipelines(query):
                checked += 1
                if len(set(p.measurements)) != 1:
                    problems.append(f"{where}: {len(set(p.measurements))} measurements, expected exactly one")
                    continue
                name = p.measurements[0]
                m = written.get(name)
                if m is None:
                    problems.append(f"{where}: measurement {name!r} is never written")
                    continue
                if panel is not None and not p.fields:
                    problems.append(f"{where}: no _field filter")
                problems += [f"{where}: {name} has no field {f!r}" for f in p.fields if f not in m.fields]
                known = m.tags | FLUX_COLUMNS | p.defined | (m.fields if p.pivots else set())
                problems += [f"{where}: {name} has no tag {c!r}" for c in sorted(p.columns - known)]
                for tag, value in p.literals:
                    if tag in m.tags and value not in m.values.get(tag, set()):
                        problems.append(f"{where}: {name} never has {tag}={value!r} "
                                        f"(written: {sorted(m.values.get(tag, set()))})")
                if panel is not None:
                    known_cols = m.tags | m.fields | FLUX_COLUMNS
                    for tr in panel.get("transformations", []):
                        for key in ("renameByName", "indexByName", "excludeByName"):
                            problems += [f"{where}: organize names unknown column {c!r}"
                                         for c in tr.get("options", {}).get(key, {}) if c not in known_cols]
                    for ov in panel.get("fieldConfig", {}).get("overrides", []):
                        if ov["matcher"]["id"] == "byName" and ov["matcher"]["options"] not in known_cols:
                            problems.append(f"{where}: override of unknown column {ov['matcher']['options']!r}")
    assert checked >= 30
    assert not problems, "\n".join(problems)


def test_fixed_variable_choices_are_written_tag_values(
    dashboards: dict[str, dict[str, Any]], written: dict[str, Measurement]
) -> None:
    for board in dashboards.values():
        for var in board.get("templating", {}).get("list", []):
            if var["type"] != "custom":
                continue
            choices = [c.strip() for c in var["query"].split(",")]
            users = [q for _w, q, _p in influx_queries(board) if f"${{{var['name']}}}" in q]
            assert users, f"variable {var['name']} of {board['uid']} is not used"
            for query in users:
                for p in flux_pipelines(query):
                    tag_values = written[p.measurements[0]].values.get(var["name"], set())
                    assert set(choices) <= tag_values, (board["uid"], var["name"], p.measurements, tag_values)


# --------------------------------------------------------------------------- (c) PromQL metric names


def exposition() -> dict[str, set[str]]:
    """Sample name → label names of a PipelineMetrics registry after every metric got one labelled sample."""
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry=registry)
    for metric in vars(metrics).values():
        if not isinstance(metric, Counter | Gauge | Histogram):
            continue
        child = metric.labels(*["x"] * len(metric._labelnames)) if metric._labelnames else metric
        if isinstance(metric, Counter):
            child.inc()
        elif isinstance(metric, Gauge):
            child.set(1)
        else:
            child.observe(0.01)
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) used in a PromQL expression."""
    labels: set[str] = set()
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    for matchers in re.findall(r"\{([^}]*)\}", text):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    for grouping in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        labels |= {s.strip() for s in grouping.split(",") if s.strip()}
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    if text.strip().startswith("label_values("):
        inner = text.strip()[len("label_values("):-1].split(",")
        return {inner[0].strip()}, {inner[1].strip()}
    names = {n for n in re.findall(r"(?<![\w.])([A-Za-z_:][\w:]*)\b(?!\s*\()", text) if n.lower() not in PROMQL_WORDS}
    return names, labels


def test_promql_parser() -> None:
    names, labels = promql_names('histogram_quantile(0.95, sum by (le, group) (rate(a_bucket{stage=~"$s"}[5m]))) '
                                 "or vector(0)")
    assert names == {"a_bucket"} and labels == {"le", "group", "stage"}


def test_every_promql_metric_is_exported(dashboards: dict[str, dict[str, Any]]) -> None:
    samples = exposition()
    problems: list[str] = []
    seen: set[str] = set()
    for board in dashboards.values():
        for where, expr, legend in prom_queries(board):
            names, labels = promql_names(expr)
            assert names, f"{where}: no metric in {expr!r}"
            seen |= names
            problems += [f"{where}: {n} is not exported" for n in sorted(names - set(samples))]
            available = set().union(*(samples.get(n, set()) for n in names))
            problems += [f"{where}: no label {lb!r} on {sorted(names)}" for lb in sorted(labels - available)]
            problems += [f"{where}: legend label {lb!r} unknown"
                         for lb in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend) if lb not in available]
    assert not problems, "\n".join(problems)
    assert len(seen) >= 10


# --------------------------------------------------------------------------- (d) structure


def provisioned() -> dict[str, str]:
    text = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "energymon.yml").read_text(encoding="utf-8"))
    return {ds["uid"]: ds["type"] for ds in text["datasources"]}


def test_provisioned_data_sources() -> None:
    text = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "energymon.yml").read_text(encoding="utf-8"))
    by_type = {ds["type"]: ds for ds in text["datasources"]}
    influx, prom = by_type["influxdb"], by_type["prometheus"]
    assert influx["url"] == "http://influxdb:8086" and influx["jsonData"]["version"] == "Flux"
    assert influx["jsonData"]["organization"].startswith("${") and influx["jsonData"]["defaultBucket"].startswith("${")
    assert influx["secureJsonData"]["token"].startswith("${")
    assert prom["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "energymon.yml").read_text(encoding="utf-8"))
    assert provider["providers"][0]["type"] == "file"


def test_dashboard_structure(dashboards: dict[str, dict[str, Any]]) -> None:
    sources = provisioned()
    uids: set[str] = set()
    assert len(dashboards) == 5
    for name, board in dashboards.items():
        assert isinstance(board.get("schemaVersion"), int), name
        assert board.get("uid") and board.get("title"), name
        assert board["uid"] not in uids
        uids.add(board["uid"])
        ids = [p["id"] for p in panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in panels(board):
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, (name, panel["id"])
            if panel["type"] == "row":
                continue
            assert panel.get("title"), (name, panel["id"])
            assert panel.get("targets"), (name, panel["id"])
            refs = [panel["datasource"], *[t["datasource"] for t in panel["targets"]]]
            for ref in refs:
                assert sources.get(ref["uid"]) == ref["type"], (name, panel["id"], ref)
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert all(ref_ids) and len(ref_ids) == len(set(ref_ids)), (name, panel["id"])
        for var in board.get("templating", {}).get("list", []):
            if "datasource" in var:
                assert sources.get(var["datasource"]["uid"]) == var["datasource"]["type"], (name, var["name"])
