"""The report as an Excel workbook (xlsxwriter): the 日报/月报/年报 a plant sends on.

Sheets (Chinese names): ``综合`` (综合能耗, by carrier, per product with grade and gaps, budget, balance, data
quality summary), ``产品日报`` and ``计量日报`` (one row per local day), ``产品月报`` and ``计量月报`` (one row
per month, when the window holds whole months), ``数据质量`` (completeness per meter, incomplete days, estimated
gaps, daily vs monthly consistency), ``折标系数`` (each carrier's coefficients and their sources), ``计量器具``
(per meter totals and quality flags) and ``说明`` (notes). Numbers are written as numbers, units are in the
headers, a missing figure is an empty cell with its reason beside it. Charts are native Excel charts.

Built from the report dict (what ``report.json`` holds), so the workbook and the JSON carry the same figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from energymon.processors.report_tables import (
    WideTable,
    carrier_name,
    level_name,
    meter_name,
    meter_table,
    product_table,
)

__all__ = ["SHEETS", "daily_levels", "write_xlsx"]

#: Sheet names in workbook order (the monthly sheets only when the window holds a month start).
SHEETS = ("综合", "产品日报", "计量日报", "产品月报", "计量月报", "数据质量", "折标系数", "计量器具", "说明")

_ROLE_FALLBACK = {"consumption": "消耗"}
_BUDGET_ZH = {"green": "正常", "yellow": "预警", "red": "超限"}


class _Sheet:
    """A worksheet written top to bottom, section by section."""

    def __init__(self, book: Any, name: str, fmt: Mapping[str, Any]) -> None:
        self.ws = book.add_worksheet(name)
        self.name = name
        self.fmt = fmt
        self.row = 0
        self.widths: dict[int, float] = {}

    def title(self, text: str) -> None:
        self.ws.write(self.row, 0, text, self.fmt["title"])
        self.row += 1

    def section(self, text: str) -> None:
        self.row += 1
        self.ws.write(self.row, 0, text, self.fmt["section"])
        self.row += 1

    def line(self, values: Sequence[Any], *, header: bool = False, kinds: Sequence[str] | None = None) -> int:
        for col, v in enumerate(values):
            kind = kinds[col] if kinds and col < len(kinds) else ""
            self.put(self.row, col, v, "header" if header else kind)
        self.row += 1
        return self.row - 1

    def put(self, row: int, col: int, v: Any, kind: str = "") -> None:
        if v is None:
            self.ws.write_blank(row, col, None, self.fmt["cell"])
        elif isinstance(v, bool):
            self.ws.write_string(row, col, "是" if v else "否", self.fmt["cell"])
        elif isinstance(v, int | float):
            self.ws.write_number(row, col, float(v) if isinstance(v, float) else v,
                                 self.fmt.get(kind) or self.fmt["num"])
        else:
            self.ws.write_string(row, col, str(v), self.fmt["header"] if kind == "header" else self.fmt["text"])
        width = min(max(len(str(v)) * (2.0 if any(ord(ch) > 0x2E80 for ch in str(v)) else 1.1) + 2, 8), 60)
        self.widths[col] = max(self.widths.get(col, 8), width)

    def finish(self) -> None:
        for col, width in self.widths.items():
            self.ws.set_column(col, col, width)


def _formats(book: Any) -> dict[str, Any]:
    base = {"font_name": "Microsoft YaHei", "font_size": 10, "border": 1}
    return {
        "title": book.add_format({"font_name": "Microsoft YaHei", "bold": True, "font_size": 14}),
        "section": book.add_format({"font_name": "Microsoft YaHei", "bold": True, "font_size": 11}),
        "header": book.add_format({**base, "bold": True, "bg_color": "#EEF2F7", "text_wrap": True,
                                   "valign": "vcenter"}),
        "text": book.add_format(base),
        "cell": book.add_format(base),
        "num": book.add_format({**base, "num_format": "#,##0.00##"}),
        "int": book.add_format({**base, "num_format": "#,##0"}),
        "pct": book.add_format({**base, "num_format": "0.00"}),
        "muted": book.add_format({"font_name": "Microsoft YaHei", "font_size": 9, "font_color": "#666666"}),
    }


# --------------------------------------------------------------------------- sheets


def _summary(book: Any, fmt: Mapping[str, Any], report: Mapping[str, Any]) -> None:
    sh = _Sheet(book, "综合", fmt)
    ent, per, tot = report["enterprise"], report["period"], report["totals"]
    sh.title(f"{ent['name']} 能源统计报表 {per['label']}")
    sh.line(["统一社会信用代码", ent["uscc"], "统计期", f"{per['start']} 至 {per['end']}（不含）",
             "基础数据版本", str(report["rules"].get("ref_version"))])
    ytd = tot.get("ytd", {})
    missing = tot.get("missing", {})
    sh.section("综合能耗 (Enterprise energy consumption)")
    sh.line(["项目", "本期", "本年累计", "单位", "说明"], header=True)
    for label, key in (("综合能耗（当量值）", "tce"), ("综合能耗（等价值）", "tce_equal"),
                       ("原料用能", "tce_feedstock"), ("能耗双控口径（不含原料用能）", "tce_dual_control"),
                       ("外供/输出（已扣除）", "tce_exported"), ("余热余能回收利用（不重复计入）", "tce_recovered")):
        sh.line([label, tot.get(key), ytd.get(key), "tce", missing.get(key)])
    sh.line(["CO2 排放", tot.get("co2_t"), ytd.get("co2_t"), "t", missing.get("co2_t")])

    sh.section("分能源品种 (By carrier)")
    sh.line(["能源品种", "代码", "消费量", "单位", "折标系数 (kgce/单位)", "折标煤 (kgce)", "CO2 (t)", "系数来源"],
            header=True)
    carriers = report.get("carriers", {})
    for c, v in tot.get("by_carrier", {}).items():
        info = carriers.get(c, {})
        sh.line([carrier_name(report, c), c, v.get("consumed"), v.get("unit"), info.get("kgce_per_unit"),
                 v.get("kgce"), v.get("co2_t"), info.get("kgce_source")])

    sh.section("产品单位产品能耗 (Products)")
    sh.line(["产品", "代码", "产量", "单位", "综合能耗 (kgce)", "指标", "指标值", "指标单位", "等级", "标杆/基准",
             "本年累计值", "本年累计等级", "说明"], header=True)
    names = report.get("names", {}).get("indicators", {})
    for pid, p in report.get("products", {}).items():
        for ind_id, ind in p.get("indicators", {}).items():
            y = ind.get("ytd", {})
            sh.line([p.get("name") or pid, pid, p.get("output"), p.get("unit"), p.get("kgce"),
                     names.get(ind_id, ind_id), ind.get("value"), ind.get("unit"), ind.get("judgement"),
                     ind.get("status_label"), y.get("value"), y.get("judgement"), ind.get("reason")])
    sh.line(["产品", "指标", "等级", "限值", "差距", "差距 (%)", "单位"], header=True)
    for pid, p in report.get("products", {}).items():
        for ind_id, ind in p.get("indicators", {}).items():
            for lv, value in ind.get("levels", {}).items():
                gap = ind.get("gaps", {}).get(lv, {})
                sh.line([p.get("name") or pid, names.get(ind_id, ind_id), level_name(report, lv), value,
                         gap.get("units"), gap.get("pct"), ind.get("unit")])

    sh.section("用能预算 (Energy budget)")
    bud = report.get("budget")
    if bud:
        sh.line(["年度", "年度预算 (tce)", "按进度预算 (tce)", "本年累计 (tce)", "完成率 (%)", "状态",
                 "预计全年 (tce)"], header=True)
        sh.line([bud.get("year"), bud.get("annual_tce"), bud.get("prorated_tce"), bud.get("ytd_tce"),
                 bud.get("ratio_pct"), _BUDGET_ZH.get(str(bud.get("status")), bud.get("status")),
                 bud.get("projected_tce")])
    else:
        sh.line(["未配置用能预算 (no budget configured)"])

    sh.section("能量平衡 (一级 vs Σ二级)")
    bal = report.get("balance", {})
    if bal:
        sh.line(["分组", "能源品种", "一级计量", "Σ二级计量", "损失", "损失率 (%)", "允许 (%)", "超限", "单位"],
                header=True)
        for g, b in bal.items():
            sh.line([g, carrier_name(report, b["carrier"]), b["parents"], b["children"], b["loss"], b["loss_pct"],
                     b["max_loss_pct"], b["flagged"], b["unit"]])
    else:
        sh.line(["无平衡分组 (no balance group)"])

    sh.section("数据质量 (Data quality)")
    summ = report.get("data_quality", {}).get("summary", {})
    sh.line(["计量点", "完整的计量点", "不完整的点·日", "日/月不一致的点·月", "时间戳偏差的点·日", "估算的缺测区间"],
            header=True)
    sh.line([summ.get("items"), summ.get("items_complete"), summ.get("incomplete_item_days"),
             summ.get("inconsistent_item_months"), summ.get("timestamp_item_days_off"), summ.get("gaps")],
            kinds=["int"] * 6)
    sh.ws.write(sh.row, 0, "明细见「数据质量」工作表", fmt["muted"])
    sh.finish()


def _wide(book: Any, fmt: Mapping[str, Any], name: str, table: WideTable, report: Mapping[str, Any],
          title: str) -> _Sheet:
    sh = _Sheet(book, name, fmt)
    sh.title(title)
    sh.line(table.headers, header=True)
    kinds = ["", *("" if c.kind == "number" else "label" for c in table.columns)]
    for row in table.rows():
        sh.line(row, kinds=kinds)
    sh.ws.freeze_panes(2, 1)
    return sh


def _daily_charts(book: Any, sh: _Sheet, table: WideTable, report: Mapping[str, Any], by: str) -> None:
    """Column chart of 综合能耗; per product a line of the indicator with its levels as flat lines."""
    n = len(table.keys)
    if n == 0:
        return
    first, last = 2, 1 + n
    cats = [sh.name, first, 0, last, 0]
    col_chart = book.add_chart({"type": "column"})
    col_chart.add_series({"name": table.columns[0].header, "categories": cats,
                          "values": [sh.name, first, 1, last, 1], "fill": {"color": "#4A7FB5"}})
    col_chart.set_title({"name": "企业综合能耗" + ("（日）" if by == "day" else "（月）")})
    col_chart.set_y_axis({"name": "kgce", "num_format": "#,##0", "major_gridlines": {"visible": True}})
    col_chart.set_legend({"none": True})
    col_chart.set_size({"width": 720, "height": 300})
    anchor_col = len(table.headers) + 1
    sh.ws.insert_chart(1, anchor_col, col_chart)
    section = report.get("daily" if by == "day" else "monthly", {})
    extra_col = len(table.headers) + 12
    chart_row = 17
    for pid, p in section.get("products", {}).items():
        header = next((i for i, c in enumerate(table.columns) if c.path.endswith(f"products.{pid}.value")), None)
        if header is None:
            continue
        line = book.add_chart({"type": "line"})
        line.add_series({"name": table.columns[header].header, "categories": cats,
                         "values": [sh.name, first, header + 1, last, header + 1],
                         "marker": {"type": "circle", "size": 4}, "line": {"color": "#4A7FB5", "width": 1.75}})
        colours = {"benchmark": "#2A9D3A", "baseline": "#D08A00", "grade_3": "#C0392B"}
        levels = daily_levels(report, pid)
        for lv, value in levels.items():
            if lv not in colours:
                continue
            sh.put(1, extra_col, "图表数据", "header")
            sh.put(1, extra_col + 1, f"{level_name(report, lv)} ({p['unit']})", "header")
            for i in range(n):
                sh.put(first + i, extra_col + 1, value)
            line.add_series({"name": f"{level_name(report, lv)} {value:g}",
                             "categories": cats, "values": [sh.name, first, extra_col + 1, last, extra_col + 1],
                             "line": {"color": colours[lv], "dash_type": "dash", "width": 1.25}})
            extra_col += 1
        prod = report.get("products", {}).get(pid, {})
        line.set_title({"name": f"{prod.get('name') or pid} {p['indicator']} 趋势"})
        line.set_y_axis({"name": p["unit"], "num_format": "#,##0.0"})
        line.set_legend({"position": "bottom"})
        line.set_size({"width": 720, "height": 320})
        sh.ws.insert_chart(chart_row, anchor_col, line)
        chart_row += 17


def daily_levels(report: Mapping[str, Any], pid: str) -> dict[str, float]:
    """The levels of a product's indicator in force at the window's end (from ``daily.products.*.levels``)."""
    levels = report.get("daily", {}).get("products", {}).get(pid, {}).get("levels", {})
    return {k: float(v) for k, v in levels.items() if v is not None}


def _quality(book: Any, fmt: Mapping[str, Any], report: Mapping[str, Any]) -> None:
    sh = _Sheet(book, "数据质量", fmt)
    dq = report.get("data_quality", {})
    rules = dq.get("rules", {})
    sh.title("数据质量 (Data quality)")
    sh.line([f"完整率下限 {rules.get('completeness_min_pct')} %；"
             f"日/月偏差上限 {rules.get('daily_vs_monthly_max_pct')} %；"
             f"日零点容差 {rules.get('day_start_tolerance_secs')} s"])
    sh.section("完整率 (Completeness per meter)")
    sh.line(["计量点", "天数", "不完整天数", "最低完整率 (%)", "平均完整率 (%)", "时间戳偏差天数"], header=True)
    ts = dq.get("timestamps", {})
    for m, c in dq.get("completeness", {}).items():
        sh.line([meter_name(report, m), c["days"], c["incomplete_days"], c["min_pct"], c["mean_pct"],
                 ts.get(m, {}).get("days_off")], kinds=["", "int", "int", "pct", "pct", "int"])
    sh.section("不完整的日 (Incomplete days)")
    sh.line(["计量点", "日期", "读数", "应有读数", "完整率 (%)"], header=True)
    for m, c in dq.get("completeness", {}).items():
        for d in c.get("incomplete_detail", []):
            sh.line([meter_name(report, m), d["day"], d["readings"], d["expected"], d["completeness_pct"]],
                    kinds=["", "", "int", "int", "pct"])
    sh.section("缺测区间及估算量 (Gaps and the amount estimated across them)")
    sh.line(["计量点", "开始", "结束", "时长 (h)", "区间增量", "计入本期", "单位", "处理"], header=True)
    for g in dq.get("gaps", []):
        sh.line([meter_name(report, g["meter"]), g["start"], g["end"], g["hours"], g["amount"], g["in_window"],
                 g["unit"], "按时间分摊" if g["booked"] == "spread" else "计入结束时段"])
    sh.section("日累计与月表差 (Σ daily vs the counter's monthly span)")
    sh.line(["计量点", "月份", "日累计", "表计月差", "偏差 (%)", "一致"], header=True)
    for m, months in dq.get("consistency", {}).items():
        for month, v in months.items():
            sh.line([meter_name(report, m), month, v["daily_sum"], v["monthly_span"], v["diff_pct"], v["consistent"]])
    sh.finish()


def _coefficients(book: Any, fmt: Mapping[str, Any], report: Mapping[str, Any]) -> None:
    sh = _Sheet(book, "折标系数", fmt)
    sh.title("折标系数及来源 (Coefficients and their sources)")
    sh.line(["能源品种", "代码", "单位", "当量值 (kgce/单位)", "来源", "实测", "参考值 (kgce/单位)", "参考来源",
             "等价值 (kgce/单位)", "等价值来源", "CO2 (kg/单位)", "CO2 来源", "适用日期"], header=True)
    for c, v in report.get("carriers", {}).items():
        sh.line([v.get("name_zh", c), c, v.get("unit"), v.get("kgce_per_unit"), v.get("kgce_source"),
                 v.get("measured"), v.get("default_kgce_per_unit"), v.get("default_source"),
                 v.get("equal_kgce_per_unit"), v.get("equal_source"), v.get("co2_kg_per_unit"), v.get("co2_source"),
                 v.get("as_of")])
    sh.row += 1
    sh.ws.write(sh.row, 0, f"基础数据版本 {report['rules'].get('ref_version')}", fmt["muted"])
    sh.finish()


def _meters(book: Any, fmt: Mapping[str, Any], report: Mapping[str, Any]) -> None:
    sh = _Sheet(book, "计量器具", fmt)
    roles = report.get("names", {}).get("roles", _ROLE_FALLBACK)
    processes = report.get("names", {}).get("processes", {})
    sh.title("计量器具 (Meters)")
    sh.line(["计量点", "代码", "能源品种", "用途", "工序", "计量级别", "本期量", "单位", "折标煤 (kgce)",
             "CO2 (kg)", "翻转", "基数调整", "换表", "缺测分摊", "缺测计入结束", "剔除读数"], header=True)
    for m, v in report.get("meters", {}).items():
        flags = v.get("flags", {})
        sh.line([v.get("name") or m, m, carrier_name(report, v["carrier"]) if v.get("carrier") else "—",
                 roles.get(v["role"], v["role"]), processes.get(v.get("process") or "", v.get("process")),
                 v.get("level"), v.get("consumed"), v.get("unit"), v.get("kgce"), v.get("co2_kg"),
                 flags.get("rollover"), flags.get("rebased"), flags.get("replaced"), flags.get("gap_spread"),
                 flags.get("gap_at_end"), v.get("rejected_readings")],
                kinds=[""] * 10 + ["int"] * 6)
    sh.finish()


def write_xlsx(report: Mapping[str, Any], path: Path) -> Path:
    """Write the report's workbook to ``path`` and return it."""
    import xlsxwriter

    book = xlsxwriter.Workbook(str(path), {"strings_to_numbers": False, "nan_inf_to_errors": True})
    book.set_properties({"title": f"{report['enterprise']['name']} {report['period']['label']}",
                         "subject": "能源统计报表", "comments": "energymon"})
    fmt = _formats(book)
    _summary(book, fmt, report)
    ent = report["enterprise"]["name"]
    label = report["period"]["label"]
    for by, suffix in (("day", "日报"), ("month", "月报")):
        products, meters = product_table(report, by), meter_table(report, by)
        if not products.keys:
            continue
        sh = _wide(book, fmt, f"产品{suffix}", products, report, f"{ent} 产品能耗{suffix} {label}")
        _daily_charts(book, sh, products, report, by)
        sh.finish()
        _wide(book, fmt, f"计量{suffix}", meters, report, f"{ent} 计量点{suffix} {label}").finish()
    _quality(book, fmt, report)
    _coefficients(book, fmt, report)
    _meters(book, fmt, report)
    notes = _Sheet(book, "说明", fmt)
    notes.title("说明 (Notes)")
    notes.line([f"统计期 {report['period']['start']} 至 {report['period']['end']}（不含结束时刻），时区 "
                f"{report['enterprise']['timezone']}"])
    for n in report.get("notes", []):
        notes.line([n])
    notes.finish()
    book.close()
    return path

