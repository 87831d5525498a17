"""The Grafana dashboards of energymon, as code (grafana-foundation-sdk, Grafana 11 build).

    python deploy/grafana/dashboards.py            # write deploy/grafana/dashboards/*.json
    python deploy/grafana/dashboards.py --check    # exit 1 if a committed file differs from the code

Five dashboards, provisioned with the data sources of ``provisioning/datasources/energymon.yml``:

* ``energymon-plant`` 厂级总览 plant overview: live power, today's energy by carrier, 综合能耗 in kgce,
  单位产品综合能耗 against the 标杆 / 基准 band, grade status;
* ``energymon-process`` 工序能耗 process drill-down: energy and kgce per process and meter;
* ``energymon-quality`` 数据质量 data quality: unavailable and uncertain readings, counter flags, completeness,
  daily vs monthly consistency, energy balance;
* ``energymon-regulator`` 监管视图 regulator view: every enterprise's indicators, grades and gaps, 综合能耗 and
  energy budget;
* ``energymon-pipeline`` 运行状态 pipeline health: the self-metrics of :mod:`energymon.metrics` (PromQL).

Data panels query the InfluxDB 2 bucket with Flux; the measurements, fields and tags are those of
``docs/ARCHITECTURE.md`` ("Store layout") and ``docs/accounting.md`` §7. Figures of the ``acct_*`` measurements
come from the processor's scheduled recompute or ``energymon report --write-store``; the live measurements
(``reading``, ``energy``, ``indicator`` hour/day) from the processor as batches arrive.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

__all__ = [
    "DASHBOARDS",
    "INFLUX",
    "OUT_DIR",
    "PROMETHEUS",
    "FluxDataquery",
    "FluxQuery",
    "build_all",
    "main",
    "render",
]

#: Data sources, with the uids of ``provisioning/datasources/energymon.yml``.
INFLUX = model.DataSourceRef(type_val="influxdb", uid="energymon-influxdb")
PROMETHEUS = model.DataSourceRef(type_val="prometheus", uid="energymon-prometheus")

#: Where the JSON files go (the dashboard provider of ``provisioning/dashboards/energymon.yml`` reads them).
OUT_DIR = Path(__file__).resolve().parent / "dashboards"

#: Time zone of the dashboards: days (``now/d``) are the plants' local days, as in the accounting.
TIMEZONE = "Asia/Shanghai"
TAGS = ["energymon"]

# Status of an indicator (processors/grading.py Status) and quota grade (GB 能耗限额 1级/2级/3级, 4 = fails 3级).
STATUS_TEXT = {1: ("达到标杆 benchmark", "green"), 2: ("标杆–基准 between", "yellow"),
               3: ("未达基准 below baseline", "orange"), 4: ("超过限额 over limit", "red")}
QUOTA_TEXT = {1: ("1级", "green"), 2: ("2级", "yellow"), 3: ("3级", "orange"), 4: ("未达标 fails 3级", "red")}
BUDGET_TEXT = {1: ("绿 green", "green"), 2: ("黄 yellow", "yellow"), 3: ("红 red", "red")}


# --------------------------------------------------------------------------- Flux queries


class FluxDataquery(cogvariants.Dataquery):
    """A Flux query of Grafana's InfluxDB data source (the SDK has no InfluxDB query type)."""

    def __init__(self, query: str = "", ref_id: str = "", datasource: model.DataSourceRef | None = None,
                 hide: bool | None = None) -> None:
        self.query = query
        self.ref_id = ref_id
        self.datasource = datasource
        self.hide = hide

    def to_json(self) -> dict[str, object]:
        """The target as Grafana stores it."""
        payload: dict[str, object] = {"query": self.query, "refId": self.ref_id}
        if self.datasource is not None:
            payload["datasource"] = self.datasource
        if self.hide is not None:
            payload["hide"] = self.hide
        return payload

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        """Read a target back."""
        ds = data.get("datasource")
        return cls(query=data.get("query", ""), ref_id=data.get("refId", ""),
                   datasource=model.DataSourceRef.from_json(ds) if ds is not None else None, hide=data.get("hide"))


class FluxQuery(cogbuilder.Builder[FluxDataquery]):
    """Builder of a :class:`FluxDataquery` on the energymon InfluxDB data source."""

    def __init__(self, query: str, ref_id: str = "A") -> None:
        self._internal = FluxDataquery(query=query, ref_id=ref_id, datasource=INFLUX)

    def build(self) -> FluxDataquery:
        """The query."""
        return self._internal

    def ref_id(self, ref_id: str) -> Self:
        """Name of the query within its panel."""
        self._internal.ref_id = ref_id
        return self


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def flux(measurement: str, fields: Sequence[str], *, where: Sequence[str] = (), then: Sequence[str] = (),
         start: str = "v.timeRangeStart") -> str:
    """A Flux pipeline on one measurement: its fields, tag conditions (``where``), then further steps."""
    if len(fields) == 1:
        field_test = f"r._field == {_quote(fields[0])}"
    else:
        field_test = "contains(value: r._field, set: [" + ", ".join(_quote(f) for f in fields) + "])"
    lines = [
        "from(bucket: v.defaultBucket)",
        f"  |> range(start: {start}, stop: v.timeRangeStop)",
        f"  |> filter(fn: (r) => r._measurement == {_quote(measurement)} and {field_test})",
    ]
    if where:
        lines.append("  |> filter(fn: (r) => " + " and ".join(where) + ")")
    lines += [f"  |> {step}" for step in then]
    return "\n".join(lines)


ENTERPRISE = 'r.enterprise == "${enterprise}"'
ENTERPRISES = "r.enterprise =~ /^${enterprise:regex}$/"
PROCESSES = "r.process =~ /^${process:regex}$/"
METERS = "r.meter =~ /^${meter:regex}$/"
PRODUCT = 'r.product == "${product}"'
PRODUCTS = "r.product =~ /^${product:regex}$/"
INDICATOR = 'r.indicator == "${indicator}"'


def tag_values(tag: str, measurement: str, *conditions: str) -> str:
    """Flux of a variable: the values of ``tag`` among the series of ``measurement``."""
    predicate = " and ".join([f"r._measurement == {_quote(measurement)}", *conditions])
    return "\n".join([
        'import "influxdata/influxdb/schema"',
        "",
        f"schema.tagValues(bucket: v.defaultBucket, tag: {_quote(tag)}, predicate: (r) => {predicate}, start: -90d)",
    ])


def variable(name: str, label: str, query: str, *, multi: bool = False) -> dash.QueryVariable:
    """A query variable on the InfluxDB data source (refreshed with the time range)."""
    var = (
        dash.QueryVariable(name)
        .label(label)
        .datasource(INFLUX)
        .query(query)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )
    if multi:
        var = var.multi(True).include_all(True).all_value(".*")
    return var


def custom_variable(name: str, label: str, values: Sequence[str], default: str) -> dash.CustomVariable:
    """A variable with fixed choices."""
    return (
        dash.CustomVariable(name)
        .label(label)
        .values(",".join(values))
        .current(model.VariableOption(selected=True, text=default, value=default))
    )


# --------------------------------------------------------------------------- panel helpers


def thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    """Absolute thresholds; the first step's value is None (from −∞)."""
    return (
        dash.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=v, color=c) for v, c in steps])
    )


def value_map(texts: dict[int, tuple[str, str]]) -> list[model.ValueMapping]:
    """Map integer codes to text and colour."""
    return [model.ValueMap(options={
        str(code): model.ValueMappingResult(text=text, color=color, index=i)
        for i, (code, (text, color)) in enumerate(texts.items())
    })]


def last_value() -> common_builders.ReduceDataOptions:
    """Reduce to the last non-null value."""
    return common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def props(*pairs: tuple[str, object]) -> list[model.DynamicConfigValue]:
    """Properties of a field override: ``(property id, value)`` pairs."""
    return [model.DynamicConfigValue(id_val=k, value=v) for k, v in pairs]


def stat_panel(title: str) -> stat.Panel:
    """A stat panel without the sparkline (the figures are period totals or latest values)."""
    return stat.Panel().title(title).graph_mode(common.BigValueGraphMode.NONE)


def organize(
    rename: dict[str, str], order: Sequence[str] = (), exclude: Sequence[str] = ()
) -> model.DataTransformerConfig:
    """Rename, order and hide table columns."""
    return model.DataTransformerConfig(id_val="organize", options={
        "renameByName": rename,
        "indexByName": {name: i for i, name in enumerate(order)},
        "excludeByName": {name: True for name in exclude},
    })


def merge() -> model.DataTransformerConfig:
    """Merge the frames of one query into one table."""
    return model.DataTransformerConfig(id_val="merge", options={})


class Layout:
    """Assigns panel ids and grid positions, left to right on a 24-column grid."""

    def __init__(self, board: dash.Dashboard) -> None:
        self.board = board
        self.next_id = 1
        self.x = 0
        self.y = 0
        self.row_h = 0

    def row(self, title: str) -> None:
        """Start a new row with a title."""
        self.newline()
        self.board.with_row(dash.Row(title).id(self.next_id).grid_pos(model.GridPos(h=1, w=24, x=0, y=self.y)))
        self.next_id += 1
        self.y += 1

    def newline(self) -> None:
        """Continue below the panels placed so far."""
        self.y += self.row_h
        self.x = 0
        self.row_h = 0

    def add(self, panel: Any, w: int, h: int) -> None:
        """Place ``panel`` (a panel builder) ``w`` columns wide and ``h`` rows high."""
        if self.x + w > 24:
            self.newline()
        panel.id(self.next_id).grid_pos(model.GridPos(h=h, w=w, x=self.x, y=self.y)).datasource(
            panel_datasource(panel))
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        self.board.with_panel(panel)


def panel_datasource(panel: Any) -> model.DataSourceRef:
    """The data source of a panel: that of its queries (all of one panel's queries use one)."""
    targets = panel._internal.targets or []
    refs = {(t.datasource.type_val, t.datasource.uid) for t in targets if getattr(t, "datasource", None)}
    if len(refs) != 1:
        raise ValueError(f"panel {panel._internal.title!r}: queries on {len(refs)} data sources, expected one")
    kind, uid = refs.pop()
    return model.DataSourceRef(type_val=kind, uid=uid)


def board(uid: str, title: str, description: str, *, time_from: str = "now-24h", refresh: str = "1m") -> dash.Dashboard:
    """A dashboard with the common settings."""
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .timezone(TIMEZONE)
        .time(time_from, "now")
        .refresh(refresh)
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .link(dash.DashboardLink("energymon").type(model.DashboardLinkType.DASHBOARDS).tags(TAGS)
              .as_dropdown(True).include_vars(True).keep_time(True))
    )


def prom_query(expr: str, legend: str, ref_id: str = "A") -> prom.Dataquery:
    """A PromQL range query on the energymon Prometheus data source."""
    return prom.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).datasource(PROMETHEUS).range()


# --------------------------------------------------------------------------- 1. plant overview


def plant_overview() -> dash.Dashboard:
    """厂级总览: what the energy manager looks at first."""
    b = board("energymon-plant", "厂级总览 Plant overview",
              "Live power, today's energy by carrier, 综合能耗 (kgce) and the products' 单位产品综合能耗 against "
              "标杆 and 基准. Days are local days; 'today' figures come from the scheduled recompute.")
    b.with_variable(variable("enterprise", "企业 Enterprise", tag_values("enterprise", "reading")))
    b.with_variable(variable("product", "产品 Product", tag_values("product", "indicator", ENTERPRISE)))
    b.with_variable(variable("indicator", "指标 Indicator", tag_values("indicator", "indicator", ENTERPRISE, PRODUCT)))
    lay = Layout(b)

    lay.row("今日 Today")
    today_kgce = flux("acct_enterprise", ["kgce"], where=[ENTERPRISE, 'r.period == "day"'], then=["last()"])
    lay.add(stat_panel("今日综合能耗 Energy today (kgce, 当量值)")
            .description("综合能耗 of today so far, 当量值, from the recompute (acct_enterprise, period day).")
            .with_target(FluxQuery(today_kgce)).time_from("now/d").unit("none").decimals(0)
            .reduce_options(last_value()).color_mode(common.BigValueColorMode.NONE), 6, 5)
    today_tce = flux("acct_enterprise", ["kgce_equal"], where=[ENTERPRISE, 'r.period == "day"'], then=["last()"])
    lay.add(stat_panel("今日综合能耗 等价值 Energy today (kgce, 等价值)")
            .description("Electricity counted at the year's 供电标准煤耗 (等价值); empty when the plant file "
                         "gives no 等价值 factor.")
            .with_target(FluxQuery(today_tce)).time_from("now/d").unit("none").decimals(0)
            .reduce_options(last_value()).color_mode(common.BigValueColorMode.NONE), 6, 5)
    carriers = flux("acct_enterprise_carrier", ["consumed"], where=[ENTERPRISE, 'r.period == "day"'],
                    then=["last()", 'keep(columns: ["_time", "_value", "carrier", "unit"])'])
    lay.add(bargauge.Panel().title("今日分品种能耗 Energy today by carrier (own units)")
            .description("Net consumption of each energy carrier today, in the carrier's unit (kWh, t, Nm3...).")
            .with_target(FluxQuery(carriers)).time_from("now/d").decimals(1)
            .display_name("${__field.labels.carrier} (${__field.labels.unit})")
            .reduce_options(last_value()).display_mode(common.BarGaugeDisplayMode.BASIC)
            .orientation(common.VizOrientation.HORIZONTAL), 6, 5)
    carrier_kgce = flux("acct_enterprise_carrier", ["kgce"], where=[ENTERPRISE, 'r.period == "day"'],
                        then=["last()", 'keep(columns: ["_time", "_value", "carrier"])'])
    lay.add(bargauge.Panel().title("今日分品种折标煤 Energy today by carrier (kgce)")
            .with_target(FluxQuery(carrier_kgce)).time_from("now/d").unit("none").decimals(0)
            .display_name("${__field.labels.carrier}").reduce_options(last_value())
            .display_mode(common.BarGaugeDisplayMode.BASIC).orientation(common.VizOrientation.HORIZONTAL), 6, 5)

    lay.row("实时 Live")
    power = flux("reading", ["value"], where=[ENTERPRISE, 'r.quantity == "power_active"'],
                 then=["aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)",
                       'keep(columns: ["_time", "_value", "meter"])'])
    lay.add(timeseries.Panel().title("有功功率 Active power by meter (kW)")
            .description("Mean active power per meter (power_active readings). The level-1 meter (进线) includes "
                         "its sub-meters.")
            .with_target(FluxQuery(power)).unit("kwatt").decimals(0).display_name("${__field.labels.meter}")
            .fill_opacity(5).legend(common_builders.VizLegendOptions().display_mode(common.LegendDisplayMode.TABLE)
                                    .placement(common.LegendPlacement.RIGHT).show_legend(True)
                                    .calcs(["lastNotNull", "max"])), 16, 9)
    power_now = flux("reading", ["value"], where=[ENTERPRISE, 'r.quantity == "power_active"'],
                     then=["last()", 'keep(columns: ["_time", "_value", "meter"])'], start="-15m")
    lay.add(bargauge.Panel().title("当前功率 Power now (kW)")
            .description("Last active power of each meter within 15 minutes.")
            .with_target(FluxQuery(power_now)).unit("kwatt").decimals(0).display_name("${__field.labels.meter}")
            .reduce_options(last_value()).display_mode(common.BarGaugeDisplayMode.GRADIENT)
            .orientation(common.VizOrientation.HORIZONTAL), 8, 9)
    hourly = flux("acct_enterprise", ["kgce"], where=[ENTERPRISE, 'r.period == "hour"'],
                  then=['keep(columns: ["_time", "_value"])'])
    lay.add(timeseries.Panel().title("每小时综合能耗 Energy per hour (kgce)")
            .description("综合能耗 (当量值) per local hour, from the recompute.")
            .with_target(FluxQuery(hourly)).unit("none").decimals(0).display_name("kgce")
            .draw_style(common.GraphDrawStyle.BARS).fill_opacity(60), 24, 7)

    lay.row("单位产品综合能耗 Energy per unit of product")
    sec = flux("indicator", ["value", "benchmark", "baseline"],
               where=[ENTERPRISE, PRODUCT, INDICATOR, 'r.period == "hour"'],
               then=['pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
                     'keep(columns: ["_time", "value", "benchmark", "baseline"])'])
    dash_line = ("custom.lineStyle", {"fill": "dash", "dash": [10, 10]})
    lay.add(timeseries.Panel().title("单位产品综合能耗 (hourly) vs 标杆 / 基准 (kgce per unit of product)")
            .description("The indicator per local hour (live, provisional; reports recompute it) with its 标杆 "
                         "(benchmark) and 基准 (baseline); the shaded band lies between them. Unit: the "
                         "indicator's, e.g. kgce/t for clinker.")
            .with_target(FluxQuery(sec)).decimals(1).span_nulls(True)
            .override_by_name("value", props(("displayName", "单位产品综合能耗 value"), ("custom.lineWidth", 2),
                                             ("color", {"mode": "fixed", "fixedColor": "blue"})))
            .override_by_name("benchmark", props(("displayName", "标杆 benchmark"), dash_line,
                                                 ("color", {"mode": "fixed", "fixedColor": "green"}),
                                                 ("custom.fillBelowTo", "baseline"), ("custom.fillOpacity", 10)))
            .override_by_name("baseline", props(("displayName", "基准 baseline"), dash_line,
                                                ("color", {"mode": "fixed", "fixedColor": "orange"}))), 16, 9)
    grade_today = flux("indicator", ["status", "quota_grade"], where=[ENTERPRISE, PRODUCT, INDICATOR,
                                                                     'r.period == "day"'],
                       then=["last()", 'pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
                             'keep(columns: ["_time", "status", "quota_grade"])'])
    lay.add(stat_panel("今日等级 Grade today")
            .description("Where today's value stands against 标杆 / 基准 and the 能耗限额 grade (1级 best).")
            .with_target(FluxQuery(grade_today)).time_from("now/d").reduce_options(last_value())
            .override_by_name("status", props(("displayName", "标杆/基准"), ("mappings", value_map(STATUS_TEXT))))
            .override_by_name("quota_grade", props(("displayName", "限额等级"), ("mappings", value_map(QUOTA_TEXT))))

            .color_mode(common.BigValueColorMode.BACKGROUND).text_mode(common.BigValueTextMode.VALUE_AND_NAME), 8, 4)
    value_today = flux("indicator", ["value", "gap_to_benchmark_pct", "gap_to_baseline_pct"],
                       where=[ENTERPRISE, PRODUCT, INDICATOR, 'r.period == "day"'],
                       then=["last()", 'pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
                             'keep(columns: ["_time", "value", "gap_to_benchmark_pct", "gap_to_baseline_pct"])'])
    lay.add(stat_panel("今日单位产品综合能耗 Today's value and gaps")
            .description("Today's indicator value (its unit) and the gaps to 标杆 / 基准 in percent of the level: "
                         "negative is better than the level.")
            .with_target(FluxQuery(value_today)).time_from("now/d").decimals(1).reduce_options(last_value())
            .override_by_name("value", props(("displayName", "单位产品综合能耗")))
            .override_by_name("gap_to_benchmark_pct",
                              props(("displayName", "vs 标杆 (%)"), ("unit", "percent"),
                                    ("thresholds", {"mode": "absolute", "steps": [
                                        {"value": None, "color": "green"}, {"value": 0, "color": "yellow"}]})))
            .override_by_name("gap_to_baseline_pct",
                              props(("displayName", "vs 基准 (%)"), ("unit", "percent"),
                                    ("thresholds", {"mode": "absolute", "steps": [
                                        {"value": None, "color": "green"}, {"value": 0, "color": "red"}]})))
            .color_mode(common.BigValueColorMode.VALUE), 8, 5)
    month = flux("acct_product", ["value", "benchmark", "baseline", "status", "quota_grade", "output"],
                 where=[ENTERPRISE, PRODUCT, INDICATOR, 'r.period == "month"'],
                 then=["last()", 'pivot(rowKey: ["_time", "indicator"], columnKey: ["_field"], valueColumn: "_value")',
                       'keep(columns: ["_time", "indicator", "value", "benchmark", "baseline", "status", '
                       '"quota_grade", "output"])'])
    lay.add(table.Panel().title("本月 This month: value, levels and grade")
            .description("The month so far, recomputed from the readings (acct_product, period month).")
            .with_target(FluxQuery(month)).decimals(1).time_from("now/M")
            .override_by_name("status", [model.DynamicConfigValue(id_val="mappings", value=value_map(STATUS_TEXT)),
                                         model.DynamicConfigValue(id_val="custom.cellOptions",
                                                                  value={"type": "color-background"})])
            .override_by_name("quota_grade", [model.DynamicConfigValue(id_val="mappings", value=value_map(QUOTA_TEXT)),
                                              model.DynamicConfigValue(id_val="custom.cellOptions",
                                                                       value={"type": "color-background"})])
            .with_transformation(organize({"indicator": "指标 indicator", "value": "值 value",
                                           "benchmark": "标杆", "baseline": "基准", "status": "状态 status",
                                           "quota_grade": "限额等级 quota grade", "output": "产量 output"},
                                          exclude=["_time"])), 24, 5)
    return b


# --------------------------------------------------------------------------- 2. process drill-down


def process_drilldown() -> dash.Dashboard:
    """工序能耗: energy and kgce per process and meter."""
    b = board("energymon-process", "工序能耗 Process drill-down",
              "Energy and standard coal per process (工序) and meter, from the live energy intervals.")
    b.with_variable(variable("enterprise", "企业 Enterprise", tag_values("enterprise", "energy")))
    b.with_variable(variable("process", "工序 Process", tag_values("process", "energy", ENTERPRISE), multi=True))
    b.with_variable(variable("meter", "计量器具 Meter", tag_values("meter", "energy", ENTERPRISE, PROCESSES),
                             multi=True))
    lay = Layout(b)
    lay.row("工序 Processes")
    per_hour = flux("energy", ["kgce"], where=[ENTERPRISE, PROCESSES],
                    then=['group(columns: ["process"])',
                          "aggregateWindow(every: 1h, fn: sum, createEmpty: false)"])
    lay.add(timeseries.Panel().title("工序能耗 kgce per process and hour")
            .description("Standard coal (当量值) of the meters of each process, per hour. A level-1 meter tagged with "
                         "a process adds to it.")
            .with_target(FluxQuery(per_hour)).unit("none").decimals(0).display_name("${__field.labels.process}")
            .draw_style(common.GraphDrawStyle.BARS).fill_opacity(70)
            .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL)), 16, 9)
    total = flux("energy", ["kgce"], where=[ENTERPRISE, PROCESSES],
                 then=['group(columns: ["process"])', "sum()"])
    lay.add(bargauge.Panel().title("工序能耗合计 kgce per process (time range)")
            .with_target(FluxQuery(total)).unit("none").decimals(0).display_name("${__field.labels.process}")
            .reduce_options(last_value()).display_mode(common.BarGaugeDisplayMode.GRADIENT)
            .orientation(common.VizOrientation.HORIZONTAL), 8, 9)

    lay.row("计量器具 Meters")
    meters = flux("energy", ["consumed", "kgce", "co2_kg"], where=[ENTERPRISE, PROCESSES, METERS],
                  then=['group(columns: ["meter", "carrier", "process", "unit", "_field"])', "sum()",
                        'pivot(rowKey: ["meter", "carrier", "process", "unit"], columnKey: ["_field"], '
                        'valueColumn: "_value")',
                        "group()"])
    lay.add(table.Panel().title("计量器具能耗 Energy per meter (time range)")
            .description("Consumption in the meter's unit, standard coal (kgce, 当量值) and CO2 (kg) over the time "
                         "range.")
            .with_target(FluxQuery(meters)).decimals(1)
            .with_transformation(organize({"meter": "计量器具 meter", "carrier": "能源品种 carrier",
                                           "process": "工序 process", "unit": "单位 unit",
                                           "consumed": "消耗量 consumed", "kgce": "折标煤 kgce",
                                           "co2_kg": "CO2 (kg)"},
                                          order=["meter", "process", "carrier", "consumed", "unit", "kgce",
                                                 "co2_kg"]))
            .sort_by([common_builders.TableSortByFieldState().display_name("折标煤 kgce").desc(True)]), 12, 9)
    consumed = flux("energy", ["consumed"], where=[ENTERPRISE, PROCESSES, METERS],
                    then=['group(columns: ["meter", "unit"])',
                          "aggregateWindow(every: 1h, fn: sum, createEmpty: false)"])
    lay.add(timeseries.Panel().title("计量器具每小时消耗 Consumption per meter and hour (own units)")
            .with_target(FluxQuery(consumed)).decimals(1)
            .display_name("${__field.labels.meter} (${__field.labels.unit})")
            .draw_style(common.GraphDrawStyle.BARS).fill_opacity(60), 12, 9)
    power = flux("reading", ["value"], where=[ENTERPRISE, METERS, 'r.quantity == "power_active"'],
                 then=["aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)",
                       'keep(columns: ["_time", "_value", "meter"])'])
    lay.add(timeseries.Panel().title("有功功率 Active power of the meters (kW)")
            .with_target(FluxQuery(power)).unit("kwatt").decimals(0).display_name("${__field.labels.meter}"), 12, 8)
    days = flux("acct_meter", ["consumed", "kgce"], where=[ENTERPRISE, METERS, 'r.period == "day"'],
                then=['pivot(rowKey: ["_time", "meter", "carrier", "unit"], columnKey: ["_field"], '
                      'valueColumn: "_value")', "group()",
                      'sort(columns: ["_time", "meter"], desc: true)'])
    lay.add(table.Panel().title("日能耗 Daily energy per meter (recomputed)")
            .description("Per local day, from the recompute (acct_meter, period day).")
            .with_target(FluxQuery(days)).decimals(1)
            .with_transformation(organize({"_time": "日期 day", "meter": "计量器具 meter",
                                           "carrier": "能源品种 carrier", "unit": "单位 unit",
                                           "consumed": "消耗量 consumed", "kgce": "折标煤 kgce"},
                                          order=["_time", "meter", "carrier", "consumed", "unit", "kgce"]))
            .override_by_name("_time", [model.DynamicConfigValue(id_val="unit", value="time:YYYY-MM-DD")]), 12, 8)
    return b


# --------------------------------------------------------------------------- 3. data quality


def data_quality() -> dash.Dashboard:
    """数据质量: what the regulator's data-quality rules look at."""
    b = board("energymon-quality", "数据质量 Data quality",
              "Unavailable and uncertain readings, counter quality flags, completeness (≥90 % per day), daily vs "
              "monthly consistency and energy balance.", time_from="now-7d", refresh="5m")
    b.with_variable(variable("enterprise", "企业 Enterprise", tag_values("enterprise", "reading")))
    b.with_variable(variable("meter", "计量器具 Meter", tag_values("meter", "reading", ENTERPRISE), multi=True))
    lay = Layout(b)
    lay.row("采集 Readings")
    unavailable_total = flux("reading_unavailable", ["count"], where=[ENTERPRISE, METERS],
                             then=["group()", "sum()"])
    lay.add(stat_panel("不可用读数 Unavailable readings (count)")
            .description("Points the gateway could not read (quality bad), stored as reading_unavailable, never "
                         "as 0.")
            .with_target(FluxQuery(unavailable_total)).decimals(0).reduce_options(last_value())
            .thresholds(thresholds((None, "green"), (1, "orange"))), 6, 4)
    uncertain_total = flux("reading", ["uncertain"], where=[ENTERPRISE, METERS], then=["group()", "sum()"])
    lay.add(stat_panel("可疑读数 Uncertain readings (count)")
            .description("Readings with quality uncertain; reports leave them out of counter deltas.")
            .with_target(FluxQuery(uncertain_total)).decimals(0).reduce_options(last_value())
            .thresholds(thresholds((None, "green"), (1, "yellow"))), 6, 4)
    incomplete = flux("acct_quality_day", ["complete"], where=[ENTERPRISE, METERS],
                      then=["group()", "filter(fn: (r) => r._value < 1.0)", "count()"])
    lay.add(stat_panel("不完整日 Incomplete meter-days (count)")
            .description("Meter-days below the completeness threshold (default 90 %).")
            .with_target(FluxQuery(incomplete)).decimals(0).reduce_options(last_value()).no_value("0")
            .thresholds(thresholds((None, "green"), (1, "red"))), 6, 4)
    flagged = flux("energy", ["flag_rollover", "flag_rebased", "flag_replaced", "flag_gap_spread",
                              "flag_gap_at_end"], where=[ENTERPRISE, METERS], then=["group()", "sum()"])
    lay.add(stat_panel("标记区间 Flagged energy intervals (count)")
            .description("Intervals booked with a rollover, rebase, recorded replacement or across a gap.")
            .with_target(FluxQuery(flagged)).decimals(0).reduce_options(last_value()).no_value("0")
            .thresholds(thresholds((None, "green"), (1, "yellow"))), 6, 4)
    unavailable = flux("reading_unavailable", ["count"], where=[ENTERPRISE, METERS],
                       then=['group(columns: ["meter"])', "aggregateWindow(every: 15m, fn: sum, createEmpty: false)"])
    lay.add(timeseries.Panel().title("不可用读数 Unavailable readings per meter (per 15 min)")
            .with_target(FluxQuery(unavailable)).decimals(0).display_name("${__field.labels.meter}")
            .draw_style(common.GraphDrawStyle.BARS).fill_opacity(70), 12, 8)
    uncertain = flux("reading", ["uncertain"], where=[ENTERPRISE, METERS],
                     then=['group(columns: ["meter", "quantity"])',
                           "aggregateWindow(every: 15m, fn: sum, createEmpty: false)"])
    lay.add(timeseries.Panel().title("可疑读数 Uncertain readings per meter (per 15 min)")
            .with_target(FluxQuery(uncertain)).decimals(0)
            .display_name("${__field.labels.meter} ${__field.labels.quantity}")
            .draw_style(common.GraphDrawStyle.BARS).fill_opacity(70), 12, 8)
    flags = flux("energy", ["flag_rollover", "flag_rebased", "flag_replaced", "flag_gap_spread", "flag_gap_at_end"],
                 where=[ENTERPRISE, METERS],
                 then=['group(columns: ["meter", "_field"])', "sum()",
                       'pivot(rowKey: ["meter"], columnKey: ["_field"], valueColumn: "_value")', "group()"])
    lay.add(table.Panel().title("计数器标记 Counter flags per meter (time range)")
            .description("rollover: the counter wrapped; rebased: a persistent jump was taken as a new baseline "
                         "(the jump not booked); replaced: a recorded meter change; gap_spread / gap_at_end: "
                         "readings were missing and the consumption was spread or booked where the gap ends.")
            .with_target(FluxQuery(flags)).decimals(0).no_value("0")
            .with_transformation(organize({"meter": "计量器具 meter", "flag_rollover": "翻转 rollover",
                                           "flag_rebased": "重定基 rebased", "flag_replaced": "换表 replaced",
                                           "flag_gap_spread": "缺数分摊 gap spread",
                                           "flag_gap_at_end": "缺数末记 gap at end"})), 24, 6)

    lay.row("完整率与一致性 Completeness and consistency")
    completeness = flux("acct_quality_day", ["completeness_pct"], where=[ENTERPRISE, METERS],
                        then=['keep(columns: ["_time", "_value", "meter"])'])
    lay.add(timeseries.Panel().title("日完整率 Daily completeness per meter (%)")
            .description("Readings received ÷ expected per local day (acct_quality_day); the regulator asks for ≥90 %.")
            .with_target(FluxQuery(completeness)).unit("percent").decimals(1).min(0).max(100)
            .display_name("${__field.labels.meter}")
            .thresholds(thresholds((None, "red"), (90, "green")))
            .thresholds_style(common_builders.GraphThresholdsStyleConfig()
                              .mode(common.GraphThresholdsStyleMode.DASHED))
            .draw_style(common.GraphDrawStyle.BARS).fill_opacity(40), 16, 8)
    latest = flux("acct_quality_day", ["completeness_pct"], where=[ENTERPRISE, METERS],
                  then=["last()", 'keep(columns: ["_time", "_value", "meter"])'])
    lay.add(bargauge.Panel().title("最近一日完整率 Latest day's completeness (%)")
            .with_target(FluxQuery(latest)).unit("percent").decimals(1).min(0).max(100)
            .display_name("${__field.labels.meter}").reduce_options(last_value())
            .thresholds(thresholds((None, "red"), (90, "green")))
            .display_mode(common.BarGaugeDisplayMode.LCD).orientation(common.VizOrientation.HORIZONTAL), 8, 8)
    consistency = flux("acct_quality_month", ["daily_sum", "monthly_span", "diff_pct", "consistent", "start_ok"],
                       where=[ENTERPRISE, METERS],
                       then=["last()", 'pivot(rowKey: ["_time", "meter"], columnKey: ["_field"], '
                             'valueColumn: "_value")', "group()"])
    lay.add(table.Panel().title("日月一致性 Daily sum vs monthly span")
            .description("Sum of the daily values against the month's counter span; the difference must stay "
                         "within 5 %. start_ok: a reading close enough to the month's start.")
            .with_target(FluxQuery(consistency)).decimals(2)
            .override_by_name("diff_pct", [model.DynamicConfigValue(id_val="unit", value="percent")])
            .override_by_name("consistent", [
                model.DynamicConfigValue(id_val="mappings", value=value_map({1: ("是 yes", "green"),
                                                                              0: ("否 no", "red")})),
                model.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"})])
            .override_by_name("_time", [model.DynamicConfigValue(id_val="unit", value="time:YYYY-MM")])
            .with_transformation(organize({"_time": "月份 month", "meter": "计量器具 meter",
                                           "daily_sum": "日值之和 daily sum", "monthly_span": "月跨度 monthly span",
                                           "diff_pct": "差异 diff (%)", "consistent": "一致 consistent",
                                           "start_ok": "月初读数 start ok"})), 12, 8)
    balance = flux("acct_balance", ["loss_pct"], where=[ENTERPRISE, 'r.period == "day"'],
                   then=['keep(columns: ["_time", "_value", "group", "carrier"])'])
    lay.add(timeseries.Panel().title("能源平衡损失 Energy balance loss per day (%)")
            .description("(一级 − Σ 二级) ÷ 一级 per balance group and day; above the group's limit (default 5 %) "
                         "the balance is flagged.")
            .with_target(FluxQuery(balance)).unit("percent").decimals(1)
            .display_name("${__field.labels.group} ${__field.labels.carrier}")
            .thresholds(thresholds((None, "green"), (5, "red")))
            .thresholds_style(common_builders.GraphThresholdsStyleConfig()
                              .mode(common.GraphThresholdsStyleMode.DASHED)), 12, 8)
    return b


# --------------------------------------------------------------------------- 4. regulator view


def regulator_view() -> dash.Dashboard:
    """监管视图: every enterprise in the bucket, their indicators, grades, 综合能耗 and budget."""
    b = board("energymon-regulator", "监管视图 Regulator view: enterprises and grades",
              "All enterprises of the bucket: latest 单位产品综合能耗 per product with its 标杆 / 基准 status, "
              "限额 grade and gaps; 综合能耗 year to date; energy budget (能耗双控).", time_from="now-1y",
              refresh="15m")
    b.with_variable(variable("enterprise", "企业 Enterprise", tag_values("enterprise", "indicator"), multi=True))
    b.with_variable(variable("product", "产品 Product", tag_values("product", "indicator", ENTERPRISES), multi=True))
    b.with_variable(custom_variable("period", "周期 Period", ["month", "ytd", "year", "day"], "month"))
    lay = Layout(b)
    lay.row("能效等级 Grades")
    grades = flux("indicator", ["value", "benchmark", "baseline", "limit", "status", "quota_grade",
                                "gap_to_benchmark_pct", "gap_to_baseline_pct"],
                  where=[ENTERPRISES, PRODUCTS, 'r.period == "${period}"'],
                  then=["last()",
                        'pivot(rowKey: ["enterprise", "product", "indicator"], columnKey: ["_field"], '
                        'valueColumn: "_value")',
                        "group()", 'sort(columns: ["status", "gap_to_baseline_pct"], desc: true)'])
    color_cells = model.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"})
    pct_cells = [model.DynamicConfigValue(id_val="unit", value="percent"),
                 model.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"}),
                 model.DynamicConfigValue(id_val="thresholds", value={"mode": "absolute", "steps": [
                     {"value": None, "color": "green"}, {"value": 0, "color": "red"}]})]
    lay.add(table.Panel().title("企业能效等级 Enterprises, products and grades (latest ${period})")
            .description("Latest value of each enterprise's indicators for the chosen period, worst first. Gaps "
                         "are value − level in percent of the level: positive is worse than the level.")
            .with_target(FluxQuery(grades)).decimals(1)
            .override_by_name("status", [model.DynamicConfigValue(id_val="mappings", value=value_map(STATUS_TEXT)),
                                         color_cells])
            .override_by_name("quota_grade", [model.DynamicConfigValue(id_val="mappings", value=value_map(QUOTA_TEXT)),
                                              color_cells])
            .override_by_name("gap_to_benchmark_pct", pct_cells)
            .override_by_name("gap_to_baseline_pct", pct_cells)
            .override_by_name("_time", [model.DynamicConfigValue(id_val="unit", value="time:YYYY-MM-DD")])
            .with_transformation(organize(
                {"_time": "周期起 period start", "enterprise": "企业 enterprise (USCC)", "product": "产品 product",
                 "indicator": "指标 indicator", "value": "单位产品综合能耗 value", "benchmark": "标杆",
                 "baseline": "基准", "limit": "限额 (3级)", "status": "状态 status",
                 "quota_grade": "限额等级 quota grade", "gap_to_benchmark_pct": "距标杆 (%)",
                 "gap_to_baseline_pct": "距基准 (%)"},
                order=["enterprise", "product", "indicator", "_time", "value", "benchmark", "baseline", "limit",
                       "status", "quota_grade", "gap_to_benchmark_pct", "gap_to_baseline_pct"],
                exclude=["_start", "_stop", "period", "_measurement"])), 24, 10)
    gap = flux("indicator", ["gap_to_baseline_pct"], where=[ENTERPRISES, PRODUCTS, 'r.period == "${period}"'],
               then=["last()", 'keep(columns: ["_time", "_value", "enterprise", "product"])'])
    lay.add(bargauge.Panel().title("距基准 Gap to 基准 (%) by enterprise and product")
            .description("Positive: the enterprise uses more than the 基准 allows and must improve (below 基准 "
                         "capacity is to be renovated or phased out).")
            .with_target(FluxQuery(gap)).unit("percent").decimals(1)
            .display_name("${__field.labels.enterprise} ${__field.labels.product}").reduce_options(last_value())
            .thresholds(thresholds((None, "green"), (0, "red"))).display_mode(common.BarGaugeDisplayMode.BASIC)
            .orientation(common.VizOrientation.HORIZONTAL), 12, 9)
    trend = flux("indicator", ["value"], where=[ENTERPRISES, PRODUCTS, 'r.period == "month"'],
                 then=['keep(columns: ["_time", "_value", "enterprise", "product", "indicator"])'])
    lay.add(timeseries.Panel().title("月度单位产品综合能耗 Monthly value per enterprise")
            .with_target(FluxQuery(trend)).decimals(1)
            .display_name("${__field.labels.enterprise} ${__field.labels.indicator}")
            .draw_style(common.GraphDrawStyle.LINE).show_points(common.VisibilityMode.ALWAYS), 12, 9)

    lay.row("综合能耗与预算 Energy and budget")
    ytd = flux("acct_enterprise", ["kgce"], where=[ENTERPRISES, 'r.period == "ytd"'],
               then=["last()", "map(fn: (r) => ({r with _value: r._value / 1000.0}))",
                     'keep(columns: ["_time", "_value", "enterprise"])'])
    lay.add(bargauge.Panel().title("本年综合能耗 Energy year to date (tce, 当量值)")
            .with_target(FluxQuery(ytd)).unit("none").decimals(1).display_name("${__field.labels.enterprise}")
            .reduce_options(last_value()).display_mode(common.BarGaugeDisplayMode.GRADIENT)
            .orientation(common.VizOrientation.HORIZONTAL), 12, 8)
    budget = flux("acct_budget", ["ytd_tce", "prorated_tce", "annual_tce", "ratio_pct", "status"],
                  where=[ENTERPRISES, 'r.period == "day"'],
                  then=["last()", 'pivot(rowKey: ["enterprise"], columnKey: ["_field"], valueColumn: "_value")',
                        "group()"])
    lay.add(table.Panel().title("用能预算 Energy budget (能耗双控 晴雨表)")
            .description("Year-to-date use against the budget pro-rated to the day: green within the budget, "
                         "yellow above it, red more than 10 % above.")
            .with_target(FluxQuery(budget)).decimals(1)
            .override_by_name("ratio_pct", [model.DynamicConfigValue(id_val="unit", value="percent")])
            .override_by_name("status", [model.DynamicConfigValue(id_val="mappings", value=value_map(BUDGET_TEXT)),
                                         color_cells])
            .with_transformation(organize({"enterprise": "企业 enterprise", "ytd_tce": "本年累计 YTD (tce)",
                                           "prorated_tce": "预算进度 pro-rated (tce)",
                                           "annual_tce": "年度预算 annual (tce)", "ratio_pct": "完成比 ratio (%)",
                                           "status": "状态 status"},
                                          order=["enterprise", "ytd_tce", "prorated_tce", "annual_tce",
                                                 "ratio_pct", "status"])), 12, 8)
    complete = flux("acct_quality_day", ["completeness_pct"], where=[ENTERPRISES],
                    then=['group(columns: ["enterprise"])', "mean()"])
    lay.add(bargauge.Panel().title("数据完整率 Mean daily completeness per enterprise (%)")
            .with_target(FluxQuery(complete)).unit("percent").decimals(1).min(0).max(100)
            .display_name("${__field.labels.enterprise}").reduce_options(last_value())
            .thresholds(thresholds((None, "red"), (90, "green"))).display_mode(common.BarGaugeDisplayMode.LCD)
            .orientation(common.VizOrientation.HORIZONTAL), 24, 6)
    return b


# --------------------------------------------------------------------------- 5. pipeline health


RATE = "[$__rate_interval]"


def pipeline_health() -> dash.Dashboard:
    """运行状态: the self-metrics every stage exports (energymon/metrics.py)."""
    b = board("energymon-pipeline", "运行状态 Pipeline health",
              "Throughput, drops, errors, meters up, poll and store-write latency, the gateways' outboxes and the "
              "provincial uplink, from the self-metrics of every stage (Prometheus).", time_from="now-6h",
              refresh="30s")
    b.with_variable(
        dash.QueryVariable("stage").label("环节 Stage").datasource(PROMETHEUS)
        .query({"query": "label_values(energymon_received_total, stage)", "refId": "stage"})
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True).all_value(".*")
    )
    lay = Layout(b)
    stage = 'stage=~"$stage"'
    lay.row("吞吐 Throughput")
    lay.add(timeseries.Panel().title("接收 / 发送 Points per second by stage")
            .with_target(prom_query(f"sum by (stage) (rate(energymon_received_total{{{stage}}}{RATE}))",
                                    "{{stage}} received"))
            .with_target(prom_query(f"sum by (stage) (rate(energymon_sent_total{{{stage}}}{RATE}))",
                                    "{{stage}} sent", "B"))
            .unit("pps").decimals(1), 12, 8)
    lay.add(timeseries.Panel().title("丢弃 Dropped points per second by reason")
            .description("non_finite, duplicate_batch, bad_payload, outbox overflow...: every point set aside is "
                         "counted with its reason.")
            .with_target(prom_query(f"sum by (stage, reason) (rate(energymon_dropped_total{{{stage}}}{RATE}))",
                                    "{{stage}} {{reason}}"))
            .unit("pps").decimals(2), 12, 8)
    lay.add(timeseries.Panel().title("错误 Errors per second by type")
            .with_target(prom_query(f"sum by (stage, error_type) (rate(energymon_errors_total{{{stage}}}{RATE}))",
                                    "{{stage}} {{error_type}}"))
            .unit("reqps").decimals(2), 12, 8)
    lay.add(stat_panel("离线表计 Meters not answering")
            .description("Meters whose last poll failed (energymon_device_up == 0).")
            .with_target(prom_query("count(energymon_device_up == 0) or vector(0)", "down").instant())
            .decimals(0).reduce_options(last_value()).color_mode(common.BigValueColorMode.BACKGROUND)
            .thresholds(thresholds((None, "green"), (1, "red"))), 4, 8)
    lay.add(stat_panel("在线表计 Meters answering")
            .with_target(prom_query("count(energymon_device_up == 1) or vector(0)", "up").instant())
            .decimals(0).reduce_options(last_value()).color_mode(common.BigValueColorMode.NONE), 4, 8)
    lay.add(bargauge.Panel().title("表计在线 Meter up (1) / down (0)")
            .with_target(prom_query("min by (meter) (energymon_device_up)", "{{meter}}").instant())
            .decimals(0).min(0).max(1).reduce_options(last_value())
            .thresholds(thresholds((None, "red"), (1, "green"))).display_mode(common.BarGaugeDisplayMode.BASIC)
            .orientation(common.VizOrientation.HORIZONTAL), 24, 6)

    lay.row("延迟 Latency")
    lay.add(timeseries.Panel().title("轮询耗时 Poll duration by group (p50 / p95, s)")
            .with_target(prom_query("histogram_quantile(0.95, sum by (le, group) "
                                    f"(rate(energymon_poll_duration_seconds_bucket{RATE})))", "{{group}} p95"))
            .with_target(prom_query("histogram_quantile(0.5, sum by (le, group) "
                                    f"(rate(energymon_poll_duration_seconds_bucket{RATE})))", "{{group}} p50", "B"))
            .unit("s").decimals(3), 12, 8)
    lay.add(timeseries.Panel().title("存储写入耗时 Store write duration (p50 / p95, s) and writes per second")
            .with_target(prom_query("histogram_quantile(0.95, sum by (le) "
                                    f"(rate(energymon_store_write_duration_seconds_bucket{RATE})))", "p95"))
            .with_target(prom_query("histogram_quantile(0.5, sum by (le) "
                                    f"(rate(energymon_store_write_duration_seconds_bucket{RATE})))", "p50", "B"))
            .with_target(prom_query(f"sum(rate(energymon_store_write_duration_seconds_count{RATE}))",
                                    "writes/s", "C"))
            .unit("s").decimals(3)
            .override_by_name("writes/s", [model.DynamicConfigValue(id_val="unit", value="wps"),
                                           model.DynamicConfigValue(id_val="custom.axisPlacement",
                                                                    value="right")]), 12, 8)

    lay.row("队列与网关 Queues and gateways")
    lay.add(timeseries.Panel().title("队列占用 Queue fill by stage and queue (%)")
            .description("Items waiting ÷ the queue's capacity (queues that declare one). A queue near 100 % "
                         "refuses or sheds items.")
            .with_target(prom_query(f"max by (stage, queue) (energymon_queue_depth{{{stage}}} "
                                    f"/ energymon_queue_capacity{{{stage}}})", "{{stage}} {{queue}}"))
            .unit("percentunit").decimals(1).min(0)
            .thresholds(thresholds((None, "green"), (0.8, "red")))
            .thresholds_style(common_builders.GraphThresholdsStyleConfig()
                              .mode(common.GraphThresholdsStyleMode.DASHED)), 12, 8)
    lay.add(timeseries.Panel().title("队列积压 Queue depth and oldest item age")
            .with_target(prom_query(f"max by (stage, queue) (energymon_queue_depth{{{stage}}})",
                                    "{{stage}} {{queue}} items"))
            .with_target(prom_query(f"max by (stage, queue) (energymon_queue_oldest_age_seconds{{{stage}}})",
                                    "{{stage}} {{queue}} oldest (s)", "B"))
            .unit("short").decimals(0)
            .override_by_regexp(".*oldest.*", props(("unit", "s"), ("custom.axisPlacement", "right"))), 12, 8)
    lay.add(stat_panel("离线网关 Gateways offline")
            .description("Gateways whose retained status says offline (energymon_gateway_up == 0).")
            .with_target(prom_query("count(energymon_gateway_up == 0) or vector(0)", "offline").instant())
            .decimals(0).reduce_options(last_value()).color_mode(common.BigValueColorMode.BACKGROUND)
            .thresholds(thresholds((None, "green"), (1, "red"))), 4, 7)
    lay.add(bargauge.Panel().title("网关最近数据 Time since each gateway's last batch (s)")
            .with_target(prom_query("time() - max by (gateway) (energymon_gateway_last_seen_timestamp_seconds)",
                                    "{{gateway}}").instant())
            .unit("s").decimals(0).reduce_options(last_value())
            .thresholds(thresholds((None, "green"), (60, "yellow"), (900, "red")))
            .display_mode(common.BarGaugeDisplayMode.BASIC).orientation(common.VizOrientation.HORIZONTAL), 14, 7)
    lay.add(stat_panel("版本 Versions running")
            .description("Processes per energymon version (energymon_build_info).")
            .with_target(prom_query("count by (version) (energymon_build_info)", "{{version}}").instant())
            .decimals(0).reduce_options(last_value()).color_mode(common.BigValueColorMode.NONE)
            .text_mode(common.BigValueTextMode.VALUE_AND_NAME), 6, 7)

    lay.row("网关缓存 Gateway outbox")
    lay.add(timeseries.Panel().title("缓存占用 Outbox fill (%)")
            .description("Used outbox bytes ÷ gateway.outbox_max_bytes; alert at 90 %.")
            .with_target(prom_query("max by (gateway) (energymon_outbox_fill_ratio)", "{{gateway}}"))
            .unit("percentunit").decimals(1).min(0).max(1)
            .thresholds(thresholds((None, "green"), (0.7, "yellow"), (0.9, "red")))
            .thresholds_style(common_builders.GraphThresholdsStyleConfig()
                              .mode(common.GraphThresholdsStyleMode.DASHED)), 12, 8)
    lay.add(timeseries.Panel().title("最旧批次 Oldest waiting batch (age)")
            .description("Age of the oldest batch not yet acknowledged by the broker: how far behind the uplink is.")
            .with_target(prom_query("max by (gateway) (energymon_outbox_oldest_age_seconds)", "{{gateway}}"))
            .unit("s").decimals(0), 12, 8)
    lay.add(timeseries.Panel().title("缓存批次 Batches waiting")
            .with_target(prom_query("max by (gateway) (energymon_outbox_batches)", "{{gateway}}"))
            .unit("short").decimals(0), 12, 7)
    lay.add(timeseries.Panel().title("缓存大小 Outbox size (bytes)")
            .with_target(prom_query("max by (gateway) (energymon_outbox_bytes)", "{{gateway}}"))
            .unit("bytes").decimals(1), 12, 7)

    lay.row("省级平台上传 Provincial uplink")
    lay.add(stat_panel("24 小时已确认 Values acknowledged, 24 h")
            .description("Values the provincial platform acknowledged in the last 24 hours (energymon uplink).")
            .with_target(prom_query('sum(increase(energymon_sent_total{stage="uplink"}[24h])) or vector(0)',
                                    "acknowledged").instant())
            .decimals(0).reduce_options(last_value()).color_mode(common.BigValueColorMode.NONE), 6, 7)
    lay.add(stat_panel("24 小时未上传 Values not taken, 24 h")
            .description("Values rejected by the platform, blocked by the quality gate or whose upload failed in "
                         "the last 24 hours; each stays due and is sent again (补传). `energymon uplink status` "
                         "lists them.")
            .with_target(prom_query('sum(increase(energymon_dropped_total{stage="uplink"}[24h])) or vector(0)',
                                    "not taken").instant())
            .decimals(0).reduce_options(last_value()).color_mode(common.BigValueColorMode.BACKGROUND)
            .thresholds(thresholds((None, "green"), (1, "yellow"))), 6, 7)
    lay.add(timeseries.Panel().title("上传结果 Uplink outcomes per hour")
            .with_target(prom_query('sum(increase(energymon_sent_total{stage="uplink"}[1h]))', "acknowledged"))
            .with_target(prom_query('sum by (reason) (increase(energymon_dropped_total{stage="uplink"}[1h]))',
                                    "{{reason}}", "B"))
            .with_target(prom_query('sum by (error_type) (increase(energymon_errors_total{stage="uplink"}[1h]))',
                                    "error {{error_type}}", "C"))
            .unit("short").decimals(0), 12, 7)
    return b


# --------------------------------------------------------------------------- output

#: File name → dashboard factory.
DASHBOARDS = {
    "plant-overview.json": plant_overview,
    "process-drilldown.json": process_drilldown,
    "data-quality.json": data_quality,
    "regulator-view.json": regulator_view,
    "pipeline-health.json": pipeline_health,
}


def render(builder: dash.Dashboard) -> str:
    """The dashboard as the JSON text written to disk (stable: sorted keys, 2-space indent, final newline)."""
    return json.dumps(builder.build(), cls=JSONEncoder, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def build_all() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    return {name: render(factory()) for name, factory in DASHBOARDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dashboards (or, with ``--check``, compare them with the files on disk)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs from the generated JSON")
    args = parser.parse_args(argv)
    rendered = build_all()
    if args.check:
        stale = [name for name, text in rendered.items()
                 if not (args.out / name).is_file() or (args.out / name).read_text(encoding="utf-8") != text]
        for name in stale:
            print(f"{args.out / name}: differs from the generated dashboard; run python deploy/grafana/dashboards.py",
                  file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
