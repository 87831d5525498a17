"""The report as a self-contained HTML document a plant prints and files (Chinese first, English beside it).

Inline CSS and SVG only (no script, no network asset), with print rules (A4, page breaks kept out of table rows
and charts, a running footer with the enterprise, period and page number), so ``--format pdf`` prints it through
headless Chromium as it is. Built from the report dict alone (what ``report.json`` holds).

Every missing figure shows "—" with its reason (a missing 等价值 or CO2 factor, no output in the period...);
levels and carriers show by their Chinese names; each carrier's coefficient shows with its source (a plant's
measured LHV beside the reference value it replaces); data-quality problems are located by meter, day and
amount; charts use thousands separators and never draw two labels on top of each other.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from energymon.processors.report_tables import (
    carrier_name,
    combined,
    level_name,
    meter_name,
    meter_table,
    product_table,
)

__all__ = ["nice_ticks", "render_html", "svg_chart"]

_KIND_ZH = {"day": "日报", "month": "月报", "year": "年报", "range": "区间报告"}
_BUDGET_ZH = {"green": "正常 green", "yellow": "预警 yellow", "red": "超限 red"}
_LINE_CLASS = {"benchmark": "r0", "grade_1": "r0", "grade_2": "r3", "baseline": "r1", "grade_3": "r2",
               "yellow": "r1", "red": "r2"}

_CSS = """
@page { size: A4; margin: 14mm 12mm 16mm 12mm;
  @bottom-center { content: "@FOOTER@  第 " counter(page) " / " counter(pages) " 页";
                   font-size: 8pt; color: #666; font-family: "WenQuanYi Micro Hei","Noto Sans CJK SC",sans-serif; } }
body{font-family:"Noto Sans CJK SC","WenQuanYi Micro Hei","Microsoft YaHei",system-ui,sans-serif;margin:24px auto;
  color:#222;max-width:1100px;font-size:13px;line-height:1.45}
h1{font-size:21px;margin:0 0 4px}h2{font-size:16px;margin-top:24px;border-bottom:1px solid #ccc;padding-bottom:2px}
h3{font-size:14px;margin:14px 0 4px}.en{color:#777;font-weight:normal;font-size:.85em}
table{border-collapse:collapse;margin:6px 0 10px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;
  vertical-align:top}th{background:#f1f3f6;font-weight:600}td.k,th.k{text-align:left}td.src{text-align:left;
  color:#555;font-size:.85em;max-width:380px}td.why{text-align:left;color:#8a5a00;font-size:.85em;max-width:420px}
.muted{color:#777}.green{background:#dff2df}.yellow{background:#fff4c8}.red{background:#f9d5d2}
table.wide{font-size:11px}table.wide td,table.wide th{padding:1px 4px}table.wide td.k{white-space:nowrap}
svg{max-width:100%;height:auto;display:block;margin:6px 0}svg text{font-family:inherit}
svg .t{font-size:13px;font-weight:600}svg .l{font-size:10px;fill:#444}svg .ax{stroke:#999}svg .g{stroke:#e3e3e3}
svg .b{fill:#4a7fb5}svg .ln{fill:none;stroke:#4a7fb5;stroke-width:1.6}svg .pt{fill:#4a7fb5}
svg .r0{stroke:#2a9d3a;stroke-dasharray:5 3}svg .r1{stroke:#d08a00;stroke-dasharray:5 3}
svg .r2{stroke:#c0392b;stroke-dasharray:5 3}svg .r3{stroke:#7a5cc0;stroke-dasharray:2 3}
svg text.r0{fill:#1f7a2c;stroke:none}svg text.r1{fill:#9a6600;stroke:none}svg text.r2{fill:#a02a1f;stroke:none}
svg text.r3{fill:#5a3ea0;stroke:none}
.head{border-bottom:2px solid #333;padding-bottom:6px;margin-bottom:8px}
.verdict{font-size:14px;margin:4px 0}.verdict b{font-size:15px}
@media print{body{margin:0;max-width:none;font-size:10.5pt}h2{break-after:avoid}h3{break-after:avoid}
  tr,svg,.verdict{break-inside:avoid}table{width:auto}.noprint{display:none}}
"""


# --------------------------------------------------------------------------- formatting


def _num(v: Any, decimals: int | None = None) -> str:
    """Thousands separators; decimals as kept in the JSON unless given."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "是" if v else "否"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "—"
        if decimals is not None:
            return f"{v:,.{decimals}f}"
        text = repr(v)
        places = len(text.split(".")[1]) if "." in text and "e" not in text else 2
        return f"{v:,.{min(places, 6)}f}"
    return str(v)


def _css_text(text: str) -> str:
    """Text safe inside a CSS string inside a <style> element."""
    return "".join(ch for ch in text if ch not in '"\\<>\n')


def _e(v: Any) -> str:
    return html.escape(_num(v))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] | None = None,
           *, wide: bool = False, text_cols: Sequence[int] = (0,), cell_class: Mapping[int, str] | None = None) -> str:
    """A table; ``header`` cells may hold markup (already escaped), body cells are escaped."""
    cc = dict(cell_class or {})
    head = "".join(f'<th class="{"k" if i in text_cols else ""}">{h}</th>' for i, h in enumerate(header))
    body = []
    for r_i, row in enumerate(rows):
        cls = f' class="{classes[r_i]}"' if classes and classes[r_i] else ""
        cells = "".join(f'<td class="{cc.get(i, "k" if i in text_cols else "")}">{_e(v)}</td>'
                        for i, v in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<table{" class=wide" if wide else ""}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _h(zh: str, en: str = "") -> str:
    return html.escape(zh) + (f' <span class="en">{html.escape(en)}</span>' if en else "")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round axis ticks covering [lo, hi] (1, 2, 2.5, 5 × 10^k steps)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _short(v: float) -> str:
    """A reference value for a label: thousands separators, at most 2 decimals, no trailing zeros."""
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:,.2f}".rstrip("0").rstrip(".")


def _tick_label(v: float, step: float) -> str:
    decimals = 0 if step >= 1 else min(6, max(0, -math.floor(math.log10(step)) + (1 if step * 10 % 1 else 0)))
    return f"{v:,.{decimals}f}"


def svg_chart(values: Sequence[float | None], labels: Sequence[str], title: str, unit: str,
              lines: Sequence[tuple[str, str, float]] = (), kind: str = "bar") -> str:
    """An inline SVG chart: bars or a line over ``labels``, with horizontal reference lines.

    ``lines`` are (css key, label, value); lines of equal value share one label (``基准 / 3级（限额） 117``) and
    labels closer than their height are moved apart, so none overprints another.
    """
    w, h, left, right, bottom, top = 760, 250, 74, 150, 34, 28
    pts = [(i, float(v)) for i, v in enumerate(values) if v is not None and math.isfinite(float(v))]
    if not pts:
        return f'<p class="muted">{html.escape(title)}: 无数据 (no data)</p>'
    merged: dict[float, tuple[str, list[str]]] = {}
    for key, name, value in lines:
        slot = merged.setdefault(round(value, 9), (key, []))
        slot[1].append(name)
    ys = [v for _, v in pts] + list(merged)
    lo, hi = min(0.0, *ys), max(ys)
    ticks = nice_ticks(lo, hi + (hi - lo) * 0.04)
    lo, hi = ticks[0], ticks[-1]
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    n = max(len(values), 1)
    pw, ph = w - left - right, h - bottom - top

    def x(i: float) -> float:
        return left + (i + 0.5) * pw / n

    def y(v: float) -> float:
        return top + ph * (hi - v) / (hi - lo)

    parts = [f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{left}" y="17" class="t">{html.escape(title)}（{html.escape(unit)}）</text>']
    for t in ticks:
        parts.append(f'<line x1="{left}" y1="{y(t):.1f}" x2="{w - right}" y2="{y(t):.1f}" class="g"/>'
                     f'<text x="{left - 5}" y="{y(t) + 3.5:.1f}" class="l" text-anchor="end">'
                     f"{_tick_label(t, step)}</text>")
    parts.append(f'<line x1="{left}" y1="{y(max(lo, 0.0)):.1f}" x2="{w - right}" y2="{y(max(lo, 0.0)):.1f}" '
                 f'class="ax"/><line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" class="ax"/>')
    bw = max(pw / n * 0.7, 1.0)
    if kind == "bar":
        for i, v in pts:
            y0, y1 = sorted((y(max(lo, 0.0)), y(v)))
            parts.append(f'<rect x="{x(i) - bw / 2:.1f}" y="{y0:.1f}" width="{bw:.1f}" '
                         f'height="{max(y1 - y0, 0.5):.1f}" class="b"><title>{html.escape(labels[i])}: '
                         f"{v:,.2f} {html.escape(unit)}</title></rect>")
    else:
        path = " ".join(f"{'M' if k == 0 else 'L'}{x(i):.1f},{y(v):.1f}" for k, (i, v) in enumerate(pts))
        parts.append(f'<path d="{path}" class="ln"/>')
        for i, v in pts:
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.4" class="pt">'
                         f"<title>{html.escape(labels[i])}: {v:,.3f} {html.escape(unit)}</title></circle>")
    # reference lines, labels right of the plot, pushed apart where they would touch
    placed: list[tuple[float, str, str]] = []
    for value, (key, names) in sorted(merged.items(), key=lambda kv: -kv[0]):
        cls = _LINE_CLASS.get(key, "r1")
        parts.append(f'<line x1="{left}" y1="{y(value):.1f}" x2="{w - right}" y2="{y(value):.1f}" class="{cls}"/>')
        placed.append((y(value) + 3.5, f"{' / '.join(names)} {_short(value)}", cls))
    gap = 12.0
    for k in range(1, len(placed)):
        if placed[k][0] - placed[k - 1][0] < gap:
            placed[k] = (placed[k - 1][0] + gap, placed[k][1], placed[k][2])
    for ty, text, cls in placed:
        parts.append(f'<text x="{w - right + 6}" y="{ty:.1f}" class="l {cls}">{html.escape(text)}</text>')
    every = max(1, math.ceil(n / 10))
    for i in range(0, n, every):
        lab = labels[i]
        short = lab[5:] if len(lab) == 10 else lab
        parts.append(f'<text x="{x(i):.1f}" y="{h - bottom + 16}" class="l" text-anchor="middle">'
                     f"{html.escape(short)}</text>")
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- sections


def _energy_section(report: Mapping[str, Any]) -> list[str]:
    tot = report["totals"]
    ytd = tot.get("ytd", {})
    missing = tot.get("missing", {})
    rows = [["综合能耗（当量值）", tot.get("tce"), ytd.get("tce"), ""],
            ["综合能耗（等价值）", tot.get("tce_equal"), ytd.get("tce_equal"), missing.get("tce_equal", "")],
            ["原料用能", tot.get("tce_feedstock"), ytd.get("tce_feedstock"), ""],
            ["能耗双控口径（不含原料用能）", tot.get("tce_dual_control"), ytd.get("tce_dual_control"), ""],
            ["外供/输出（已扣除）", tot.get("tce_exported"), ytd.get("tce_exported"), ""],
            ["余热余能回收利用（不重复计入）", tot.get("tce_recovered"), ytd.get("tce_recovered"), ""]]
    out = ["<h2>" + _h("一、综合能耗", "Energy consumption, tce") + "</h2>",
           _table(["项目", "本期 (tce)", "本年累计 (tce)", "说明"], rows, cell_class={3: "why"}),
           _table(["项目", "本期 (t)", "本年累计 (t)", "说明"],
                  [["CO2 排放", tot.get("co2_t"), ytd.get("co2_t"), missing.get("co2_t", "")]], cell_class={3: "why"})]
    carriers = report.get("carriers", {})
    total_kgce = tot.get("kgce") or 0.0
    crow = []
    for c, v in tot.get("by_carrier", {}).items():
        info = carriers.get(c, {})
        coef = _num(info.get("kgce_per_unit"))
        if info.get("measured"):
            coef += f"（实测；参考值 {_num(info.get('default_kgce_per_unit'))} kgce/{info.get('default_unit', '')}）"
        share = None if not total_kgce else round(100.0 * (v.get("kgce") or 0.0) / total_kgce, 2)
        co2 = v.get("co2_t")
        crow.append([f"{carrier_name(report, c)} ({c})", v.get("consumed"), v.get("unit"), coef, v.get("kgce"), share,
                     co2 if co2 is not None else f"— {info.get('co2_source', '')}"])
    out.append("<h3>" + _h("分能源品种", "By carrier") + "</h3>")
    out.append(_table(["能源品种", "消费量", "单位", "折标系数 (kgce/单位)", "折标煤 (kgce)", "占比 (%)", "CO2 (t)"],
                      crow, cell_class={3: "k", 6: "src"}))
    daily = report.get("daily", {})
    if daily.get("dates"):
        out.append(svg_chart(daily["enterprise_kgce"], daily["dates"], "企业综合能耗 逐日 (daily)", "kgce"))
    return out


def _levels_lines(report: Mapping[str, Any], levels: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    wanted = ("benchmark", "baseline", "grade_3", "grade_2")
    return [(k, level_name(report, k).replace("（限额）", "（限额）"), float(levels[k])) for k in wanted
            if levels.get(k) is not None]


def _products_section(report: Mapping[str, Any]) -> list[str]:
    out = ["<h2>" + _h("二、产品单位产品能耗", "Products and their indicators") + "</h2>"]
    products = report.get("products", {})
    if not products:
        return [*out, '<p class="muted">本厂未定义产品 (no products in the plant file)</p>']
    names = report.get("names", {}).get("indicators", {})
    daily = report.get("daily", {})
    for pid, p in products.items():
        out.append(f"<h3>{html.escape(p.get('name') or pid)} <span class=en>{html.escape(pid)}</span></h3>")
        miss = p.get("missing", {})
        out.append(_table(["产量", "综合能耗 (kgce)", "等价值 (kgce)", "原料用能 (kgce)", "外供 (kgce)", "电耗 (kWh)"],
                          [[f"{_num(p.get('output'))} {p.get('unit')}", p.get("kgce"),
                            p.get("kgce_equal") if p.get("kgce_equal") is not None else
                            ("— " + miss["tce_equal"] if "tce_equal" in miss else None),
                            p.get("kgce_feedstock"), p.get("kgce_exported"), p.get("electricity_kwh")]],
                          text_cols=(0,), cell_class={2: "why"} if "tce_equal" in miss else None))
        out.append(_table(["能源品种", "消费量", "单位", "折标煤 (kgce)"],
                          [[f"{carrier_name(report, c)} ({c})", v["consumed"], v["unit"], v["kgce"]]
                           for c, v in p.get("energy_by_carrier", {}).items()]))
        for ind_id, ind in p.get("indicators", {}).items():
            value = ind.get("value")
            verdict = f"<b>{html.escape(str(ind.get('judgement')))}</b>"
            if ind.get("status_label"):
                verdict += f" · {html.escape(ind['status_label'])}"
            reason = f' <span class="why">（{html.escape(ind["reason"])}）</span>' if ind.get("reason") else ""
            ytd = ind.get("ytd")
            ytd_text = (f" · 本年累计 {_e(ytd.get('value'))} → {html.escape(str(ytd.get('judgement')))}"
                        if ytd else "")
            if ind.get("complete") is False:
                reason += ' <span class="why">（数据不完整，见数据质量 incomplete data）</span>'
            out.append(f'<p class="verdict">{html.escape(names.get(ind_id, ind_id))}：{_e(value)} '
                       f"{html.escape(ind['unit'])} → {verdict}{ytd_text}{reason}</p>")
            lv, gaps = ind.get("levels", {}), ind.get("gaps", {})
            if lv:
                out.append(_table(["等级 level", f"限值 ({html.escape(ind['unit'])})", "差距", "差距 (%)"],
                                  [[level_name(report, k), lv[k], gaps.get(k, {}).get("units"),
                                    gaps.get(k, {}).get("pct")] for k in lv]))
                rule = ind.get("rule", {})
                out.append(f'<p class="muted">依据 rule：{html.escape(str(rule.get("quota")))} · '
                           f"{html.escape(str(rule.get('policy')))} · 规模档 band "
                           f"{html.escape(str(rule.get('band') or '—'))} · 修正 corrections "
                           f"{html.escape('; '.join(rule.get('corrections', [])) or '—')} · 基础数据 "
                           f"{html.escape(str(rule.get('ref_version')))}</p>")
            for t in ind.get("targets", []):
                holds = {True: "满足", False: "未满足", None: "—"}[t.get("holds")]
                out.append(f'<p class="muted">目标 {html.escape(t["id"])}: {html.escape(t["condition"])} → {holds}</p>')
        dp = daily.get("products", {}).get(pid)
        if dp and daily.get("dates"):
            out.append(svg_chart(dp["value"], daily["dates"],
                                 f"{names.get(dp['indicator'], dp['indicator'])} 逐日趋势", dp["unit"],
                                 _levels_lines(report, dp.get("levels", {})), kind="line"))
    return out


def _budget_section(report: Mapping[str, Any]) -> list[str]:
    out = ["<h2>" + _h("三、用能预算", "Energy budget") + "</h2>"]
    bud = report.get("budget")
    if not bud:
        return [*out, '<p class="muted">未配置用能预算 (no budget configured)</p>']
    out.append(_table(["年度", "年度预算 (tce)", "按进度预算 (tce)", "本年累计 (tce)", "完成率 (%)", "状态",
                       "预计全年 (tce)"],
                      [[bud.get("year"), bud.get("annual_tce"), bud.get("prorated_tce"), bud.get("ytd_tce"),
                        bud.get("ratio_pct"), _BUDGET_ZH.get(str(bud.get("status")), bud.get("status")),
                        bud.get("projected_tce")]], [str(bud.get("status") or "")]))
    if bud.get("note"):
        out.append(f'<p class="muted">{html.escape(str(bud["note"]))}</p>')
    daily = report.get("daily", {})
    if daily.get("budget_ratio_pct"):
        out.append(svg_chart(daily["budget_ratio_pct"], daily["dates"], "累计用能 / 按进度预算", "%",
                             [("yellow", "预警", float(bud["yellow_above_pct"])),
                              ("red", "超限", float(bud["red_above_pct"]))], kind="line"))
    return out


def _balance_section(report: Mapping[str, Any]) -> list[str]:
    out = ["<h2>" + _h("四、能量平衡（一级 vs Σ二级）", "Energy balance") + "</h2>"]
    bal = report.get("balance", {})
    if not bal:
        return [*out, '<p class="muted">无平衡分组 (no balance group)</p>']
    out.append(_table(["分组", "能源品种", "一级计量", "Σ二级计量", "损失", "损失率 (%)", "允许 (%)", "超限", "单位"],
                      [[g, carrier_name(report, b["carrier"]), b["parents"], b["children"], b["loss"], b["loss_pct"],
                        b["max_loss_pct"], "超限" if b["flagged"] else "", b["unit"]] for g, b in bal.items()],
                      ["red" if b["flagged"] else "" for b in bal.values()]))
    return out


def _quality_section(report: Mapping[str, Any]) -> list[str]:
    dq = report.get("data_quality", {})
    rules = dq.get("rules", {})
    s = dq.get("summary", {})
    out = ["<h2>" + _h("五、数据质量", "Data quality") + "</h2>",
           f"<p>{_e(s.get('items'))} 个计量点，{_e(s.get('items_complete'))} 个完整；不完整的点·日 "
           f"{_e(s.get('incomplete_item_days'))}；日/月不一致的点·月 {_e(s.get('inconsistent_item_months'))}；"
           f"零点读数偏差的点·日 {_e(s.get('timestamp_item_days_off'))}；估算的缺测区间 {_e(s.get('gaps'))}。"
           f'<span class="muted">（完整率下限 {_e(rules.get("completeness_min_pct"))} %，日/月偏差上限 '
           f'{_e(rules.get("daily_vs_monthly_max_pct"))} %）</span></p>']
    ts = dq.get("timestamps", {})
    comp = dq.get("completeness", {})
    out.append(_table(["计量点", "天数", "不完整天数", "最低完整率 (%)", "平均完整率 (%)", "零点偏差天数"],
                      [[meter_name(report, m), c["days"], c["incomplete_days"], c["min_pct"], c["mean_pct"],
                        ts.get(m, {}).get("days_off")] for m, c in comp.items()],
                      ["yellow" if c["incomplete_days"] else "" for c in comp.values()]))
    bad = [[meter_name(report, m), *run] for m, c in comp.items() for run in _day_runs(c.get("incomplete_detail", []))]
    if bad:
        out.append("<h3>" + _h("不完整的日", "Incomplete days") + "</h3>")
        out.append(_table(["计量点", "日期", "天数", "读数", "应有读数", "最低完整率 (%)"], bad, text_cols=(0, 1)))
    gaps = dq.get("gaps", [])
    if gaps:
        out.append("<h3>" + _h("缺测区间及估算量", "Gaps and the amount estimated across them") + "</h3>")
        out.append(_table(["计量点", "开始", "结束", "时长 (h)", "区间增量", "计入本期", "单位", "处理"],
                          [[meter_name(report, g["meter"]), g["start"][:16].replace("T", " "),
                            g["end"][:16].replace("T", " "), g["hours"], g["amount"], g["in_window"], g["unit"],
                            "按时间分摊 spread" if g["booked"] == "spread" else "计入结束时段 flag"] for g in gaps],
                          text_cols=(0, 1, 2, 6, 7)))
    conflicts = (dq.get("readings_file") or {}).get("conflicts") or {}
    if conflicts:
        total = dq["readings_file"]["conflicting_readings"]
        out.append("<h3>" + _h(f"冲突的重复读数 {total} 条（采用文件中最后一行）",
                               f"Conflicting duplicate readings: {total} (the last row in the file is used)") + "</h3>")
        rows = [[meter_name(report, m), e["ts"], ", ".join(map(str, e["lines"])),
                 ", ".join(f"{v:g}" for v in e["values"]), e["used"]]
                for m, c in conflicts.items() for e in c["examples"]]
        out.append(_table(["计量点", "时间", "行号", "读数", "采用值"], rows, ["red"] * len(rows),
                          text_cols=(0, 1, 2, 3)))
    resets = dq.get("counter_resets") or {}
    if resets:
        out.append("<h3>" + _h("计数器复位或更换未登记", "Counter resets without a replacement record") + "</h3>")
        out.append(_table(["计量点", "复位次数", "日期", "说明"],
                          [[meter_name(report, m), r["resets"], "、".join(r["days"]), r["note"]]
                           for m, r in resets.items()], ["red" for _ in resets], text_cols=(0, 2, 3)))
    cons = [[meter_name(report, m), k, v["daily_sum"], v["monthly_span"], v["diff_pct"],
             "" if v["consistent"] else "不一致"] for m, months in dq.get("consistency", {}).items()
            for k, v in months.items()]
    if cons:
        out.append("<h3>" + _h("日累计与表计月差", "Σ daily vs the counter's monthly span") + "</h3>")
        out.append(_table(["计量点", "月份", "日累计", "表计月差", "偏差 (%)", "一致性"], cons,
                          ["red" if r[5] else "" for r in cons], text_cols=(0, 1)))
    return out


def _day_runs(days: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """Consecutive incomplete days as one row each: dates, number of days, readings, expected, lowest %."""
    from datetime import date, timedelta

    runs: list[list[Any]] = []
    last: date | None = None
    for d in days:
        day = date.fromisoformat(d["day"])
        if runs and last is not None and day == last + timedelta(days=1):
            run = runs[-1]
            run[1] += 1
            run[2] += d["readings"]
            run[3] += d["expected"]
            run[4] = min(run[4], d["completeness_pct"])
            run[5] = d["day"]
        else:
            runs.append([d["day"], 1, d["readings"], d["expected"], d["completeness_pct"], d["day"]])
        last = day
    return [[r[0] if r[0] == r[5] else f"{r[0]} 至 {r[5]}", *r[1:5]] for r in runs]


def _meters_section(report: Mapping[str, Any]) -> list[str]:
    names = report.get("names", {})
    roles, processes = names.get("roles", {}), names.get("processes", {})
    rows = []
    for m, v in report.get("meters", {}).items():
        flags = "，".join(f"{k} {n}" for k, n in v.get("flags", {}).items() if n)
        rows.append([meter_name(report, m), carrier_name(report, v["carrier"]) if v.get("carrier") else "—",
                     roles.get(v["role"], v["role"]), processes.get(v.get("process") or "", v.get("process") or "—"),
                     v.get("consumed"), v.get("unit"), v.get("kgce"), flags or "", v.get("rejected_readings")])
    return ["<h2>" + _h("六、计量器具", "Meters") + "</h2>",
            _table(["计量点", "能源品种", "用途", "工序", "本期量", "单位", "折标煤 (kgce)", "标记", "剔除读数"], rows,
                   text_cols=(0, 1, 2, 3, 5, 7))]


def _daily_tables(report: Mapping[str, Any]) -> list[str]:
    out = []
    days = report.get("daily", {}).get("dates", [])
    months = report.get("monthly", {}).get("months", [])
    if len(months) > 1:
        t = combined([product_table(report, "month"), meter_table(report, "month")])
        out += ["<h2>" + _h("七、月度数据", "Month by month") + "</h2>",
                _table([html.escape(x) for x in t.headers], t.rows(), wide=True)]
    if days and len(days) <= 62:
        t = product_table(report, "day")
        m = meter_table(report, "day")
        out += ["<h2>" + _h("八、逐日数据", "Day by day") + "</h2>",
                "<h3>" + _h("企业与产品", "Enterprise and products") + "</h3>",
                _table([html.escape(x) for x in t.headers], t.rows(), wide=True),
                "<h3>" + _h("计量点逐日用量", "Per meter, per day") + "</h3>",
                _table([html.escape(x) for x in m.headers], m.rows(), wide=True)]
    elif days:
        out += ["<h2>" + _h("八、逐日数据", "Day by day") + "</h2>",
                f'<p class="muted">{len(days)} 天的逐日数据见 report.xlsx（产品日报、计量日报）和 daily.csv。</p>']
    return out


def _coefficients_section(report: Mapping[str, Any]) -> list[str]:
    rows = []
    for c, v in report.get("carriers", {}).items():
        kg = _num(v.get("kgce_per_unit"))
        if v.get("measured"):
            kg += f"（实测，替代参考值 {_num(v.get('default_kgce_per_unit'))} kgce/{v.get('default_unit', '')}）"
        rows.append([f"{v.get('name_zh', c)} ({c})", v.get("unit"), kg, v.get("kgce_source"),
                     v.get("equal_kgce_per_unit"), v.get("equal_source"), v.get("co2_kg_per_unit"),
                     v.get("co2_source")])
    first: Mapping[str, Any] = next(iter(report.get("carriers", {}).values()), {})
    as_of = first.get("as_of", "")
    header = ["能源品种", "单位", "当量值 (kgce/单位)", "来源", "等价值 (kgce/单位)", "来源", "CO2 (kg/单位)", "来源"]
    return ["<h2>" + _h("附：折标系数及来源", "Coefficients and their sources") + "</h2>",
            f'<p class="muted">适用于 {html.escape(str(as_of))}'
            f"；基础数据版本 {html.escape(str(report['rules'].get('ref_version')))}</p>",
            _table(header, rows, text_cols=(0, 1, 2), cell_class={3: "src", 5: "src", 7: "src"}, wide=True)]


def _building_section(report: Mapping[str, Any]) -> list[str]:
    """The 公共建筑 / 公共机构 section: per-m² and per-person indicators and their judgements."""
    b = report.get("building")
    if not b:
        return []
    head = (f"<h2>{_h('建筑能耗', 'Building')}</h2><p>{html.escape(str(b['building_type_zh']))} · "
            f"{html.escape(str(b['operation_class']))}类 · {html.escape(str(b['climate_zone_zh']))}"
            f" · 建筑面积 {_e(b['floor_area_m2'])} m² · 用能人数 {_e(b['occupants'])}"
            f" · {_e(b['days'])} 天{'（全年）' if b['full_year'] else '（折算为年）'}</p>")
    rows = []
    for ind in b["indicators"].values():
        g = ind.get("gbt51161") or {}
        gb = "—" if not g else (f"{g['judgement']}" + (f"（约束值 {g['constraint']}，引导值 {g.get('guide')}）"
                                                        if "constraint" in g else f"（{g.get('reason', '')}）"))
        quotas = "; ".join(f"{q['kind_zh']} {q['value_per_year']}: {q['judgement']} ({q['use_pct']} % 已用)"
                           for q in ind.get("quotas", [])) or "—"
        rows.append([ind["name_zh"], ind["unit"], ind["period_value"], ind["annual_value"], gb, quotas])
    return [head, _table(["指标", "单位", "本期", "年化", "GB/T 51161", "定额/限额"], rows, text_cols=(0, 1, 4, 5))]


def render_html(report: Mapping[str, Any]) -> str:
    """The report page (self-contained: inline CSS and SVG, no script, no network assets)."""
    ent, per = report["enterprise"], report["period"]
    kind = _KIND_ZH.get(per["kind"], "报告")
    footer = f"{ent['name']} · {per['label']} 能源{kind}"
    start, end = per["start"][:16].replace("T", " "), per["end"][:16].replace("T", " ")
    parts = [
        f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>{html.escape(ent["name"])} '
        f"{html.escape(per['label'])} 能源{kind}</title><style>{_CSS.replace('@FOOTER@', _css_text(footer))}"
        "</style></head><body>",
        f'<div class="head"><h1>{html.escape(ent["name"])} · 能源统计{kind} {html.escape(per["label"])}</h1>'
        f'<div class="muted">统一社会信用代码 {html.escape(ent["uscc"])} · 统计期 {html.escape(start)} 至 '
        f"{html.escape(end)}（不含结束时刻，{html.escape(ent['timezone'])} 当地时间） · 基础数据版本 "
        f"{html.escape(str(report['rules'].get('ref_version')))}</div></div>",
    ]
    parts += _energy_section(report)
    parts += _building_section(report)
    parts += _products_section(report)
    parts += _budget_section(report)
    parts += _balance_section(report)
    parts += _quality_section(report)
    parts += _meters_section(report)
    parts += _daily_tables(report)
    parts += _coefficients_section(report)
    notes = report.get("notes") or []
    if notes:
        parts.append("<h2>" + _h("说明", "Notes") + "</h2><ul>"
                     + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)

