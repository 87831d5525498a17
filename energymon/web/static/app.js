// energymon live page: renders the embedded overview snapshot, then polls /api/overview every second.
// (Polling, not the /api/stream event source: it needs no long-lived request, so proxies and headless browsers
// with a virtual-time budget handle it too; the server caches the snapshot, so a poll costs no store query.)
"use strict";

const SVG = "http://www.w3.org/2000/svg";
let snap = null;
let polls = 0;

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, String(v));
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(v, digits) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  const d = digits === undefined ? 1 : digits;
  return Number(v).toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d });
}

function fmtTime(ms, withDate) {
  if (ms === null || ms === undefined) return "–";
  const opts = { timeZone: snap.plant.timezone, hour12: false, hour: "2-digit", minute: "2-digit", second: "2-digit" };
  if (withDate) Object.assign(opts, { year: "numeric", month: "2-digit", day: "2-digit" });
  const parts = {};
  for (const p of new Intl.DateTimeFormat("en-CA", opts).formatToParts(new Date(ms))) parts[p.type] = p.value;
  const time = `${parts.hour === "24" ? "00" : parts.hour}:${parts.minute}:${parts.second}`;
  return withDate ? `${parts.year}-${parts.month}-${parts.day} ${time}` : time;
}

function setNumber(node, value, digits) {
  node.textContent = fmt(value, digits);
  node.dataset.value = value === null || value === undefined ? "" : String(value);
}

function sparkline(history, startMs, endMs) {
  const w = 200, h = 48, pad = 2;
  const box = svg("svg", { viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none", class: "sparkline" });
  if (!history || history.length < 2) return box;
  const values = history.map((p) => p[1]);
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const x = (t) => ((t - startMs) / (endMs - startMs)) * w;
  const y = (v) => h - pad - ((v - lo) / (hi - lo)) * (h - 2 * pad);
  const pts = history.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
  const first = x(history[0][0]).toFixed(1), last = x(history[history.length - 1][0]).toFixed(1);
  box.append(svg("polygon", { class: "spark-area", points: `${first},${h} ${pts.join(" ")} ${last},${h}` }));
  box.append(svg("polyline", { class: "spark", points: pts.join(" ") }));
  return box;
}

function sparkBox(history, startMs, endMs) {
  // the sparkline with its scale (lowest and highest value shown) and its time span
  const wrap = el("div", { class: "spark-box" }, sparkline(history, startMs, endMs));
  if (history && history.length >= 2) {
    const values = history.map((p) => p[1]);
    const lo = Math.min(...values), hi = Math.max(...values);
    wrap.append(el("div", { class: "spark-y" },
      el("span", { class: "spark-max", "data-scale": hi }, fmt(hi, 1)),
      el("span", { class: "spark-min", "data-scale": lo }, fmt(lo, 1))));
  }
  const minutes = Math.round((endMs - startMs) / 60000);
  wrap.append(el("div", { class: "spark-x", "data-span-min": minutes },
    el("span", {}, fmtTime(startMs).slice(0, 5)), el("span", {}, `${minutes} min`), el("span", {}, fmtTime(endMs).slice(0, 5))));
  return wrap;
}

function placeLabels(items, minGap) {
  // items: [{x, text}] sorted by x; equal values share one label, close ones go to a second row
  const merged = [];
  for (const it of items) {
    const same = merged.find((m) => Math.abs(m.value - it.value) < 1e-9);
    if (same) { same.names.push(it.name); continue; }
    merged.push({ ...it, names: [it.name] });
  }
  merged.sort((a, b) => a.x - b.x);
  let lastX = -Infinity, row = 0;
  for (const m of merged) {
    row = m.x - lastX < minGap ? 1 - row : 0;
    m.row = row;
    lastX = m.x;
  }
  return merged;
}

function renderPower() {
  const box = $("power");
  box.replaceChildren();
  for (const m of snap.power || []) {
    const val = el("div", { class: "val", "data-value": m.value ?? "", "data-ts": m.ts_ms ?? "" },
      fmt(m.value, 1), " ", el("small", {}, m.unit));
    const tile = el("div", { class: "tile", "data-meter": m.meter },
      el("div", { class: "name", title: `${m.name} (${m.meter})` }, m.name, " ", el("span", { class: "muted" }, m.meter)),
      val,
      sparkBox(m.history, snap.now_ms - 3600000, snap.now_ms),
      el("div", { class: "muted" }, m.ts_ms ? `${fmtTime(m.ts_ms)} · ${m.quantity}` : "无数据 no data"));
    box.append(tile);
  }
}

function renderEnergy() {
  const body = $("energy").querySelector("tbody");
  body.replaceChildren();
  const total = snap.kgce_today || 0;
  for (const c of snap.energy_today || []) {
    const share = total > 0 ? c.kgce / total : 0;
    const bar = svg("svg", { viewBox: "0 0 100 10", preserveAspectRatio: "none", width: "100%", height: "12" });
    bar.append(svg("rect", { class: "bar-bg", x: 0, y: 0, width: 100, height: 10 }));
    bar.append(svg("rect", { class: "bar", x: 0, y: 0, width: (share * 100).toFixed(2), height: 10 }));
    const consumed = el("td", { class: "num consumed" });
    setNumber(consumed, c.consumed, 1);
    consumed.append(" ", el("small", { class: "muted" }, c.unit));
    const kgce = el("td", { class: "num kgce" });
    setNumber(kgce, c.kgce, 1);
    body.append(el("tr", { "data-carrier": c.carrier },
      el("td", {}, c.name, " ", el("span", { class: "muted" }, c.carrier)), consumed, kgce,
      el("td", { class: "bar-col", title: `${(share * 100).toFixed(1)} %` }, bar)));
  }
  setNumber($("energy-total"), snap.kgce_today, 1);
  setNumber($("kgce-today"), snap.kgce_today, 1);
}

function gauge(p) {
  const w = 400, h = 72, top = 14, bandH = 18;
  const box = svg("svg", { viewBox: `0 0 ${w} ${h}`, class: "gauge" });
  const levels = [p.benchmark, p.baseline, p.limit].filter((v) => v !== null && v !== undefined);
  if (p.value === null || p.value === undefined || levels.length === 0) return box;
  const lo = Math.min(p.value, ...levels) * 0.9, hi = Math.max(p.value, ...levels) * 1.08;
  const x = (v) => ((v - lo) / (hi - lo)) * w;
  const zones = [];
  let from = lo;
  if (p.benchmark !== null) { zones.push(["zone-good", from, p.benchmark]); from = p.benchmark; }
  if (p.baseline !== null) { zones.push(["zone-mid", from, p.baseline]); from = p.baseline; }
  if (p.limit !== null && p.limit > from) { zones.push(["zone-bad", from, p.limit]); from = p.limit; zones.push(["zone-over", from, hi]); }
  else zones.push(["zone-bad", from, hi]);
  for (const [cls, a, b] of zones) {
    box.append(svg("rect", { class: cls, x: x(a).toFixed(1), y: top, width: Math.max(0, x(b) - x(a)).toFixed(1), height: bandH }));
  }
  const marks = [];
  for (const [label, v] of [["标杆", p.benchmark], ["基准", p.baseline], ["限额", p.limit]]) {
    if (v === null || v === undefined) continue;
    box.append(svg("line", { x1: x(v), x2: x(v), y1: top, y2: top + bandH, stroke: "#6b7280" }));
    marks.push({ x: x(v), value: v, name: label });
  }
  for (const m of placeLabels(marks, 70)) {
    const anchor = m.x < 40 ? "start" : m.x > w - 40 ? "end" : "middle";
    box.append(svg("text", { class: "tick level-label", x: m.x, y: top + bandH + 13 + 13 * m.row, "text-anchor": anchor },
      `${m.names.join(" / ")} ${fmt(m.value, m.value % 1 ? 1 : 0)}`));
  }
  const mx = x(p.value);
  box.append(svg("polygon", { class: "marker", points: `${mx - 6},0 ${mx + 6},0 ${mx},${top + 4}` }));
  box.append(svg("rect", { class: "marker", x: mx - 1.5, y: top, width: 3, height: bandH }));
  return box;
}

function renderIndicators() {
  const box = $("indicators");
  box.replaceChildren();
  for (const ind of snap.indicators || []) {
    const p = ind.hour || ind.day;
    const card = el("div", { class: "ind", "data-product": ind.product });
    if (!p) {
      card.append(el("div", { class: "head" }, el("b", {}, ind.name), el("span", { class: "muted" }, "等待产量 waiting for output")));
      box.append(card);
      continue;
    }
    const value = el("span", { class: "value" });
    setNumber(value, p.value, 1);
    const gradeText = [p.quota_label, p.grade ? `${p.grade} · ${p.grade_en}` : null].filter((t) => t).join(" · ");
    const grade = el("span", { class: `grade grade-${p.status ?? "none"}`, "data-status": p.status ?? "",
      "data-quota": p.quota_grade ?? "" }, gradeText || (ind.no_figure ? "无数值 no figure" : "无分级 not graded"));
    if (ind.no_figure) grade.title = ind.no_figure;
    card.append(el("div", { class: "head" },
      el("span", {}, el("b", {}, ind.name), " ", el("span", { class: "muted" }, `${ind.hour ? "本小时 hour from" : "今日 day"} ${p.start_local.slice(11, 16)}`)),
      el("span", {}, value, " ", el("small", { class: "muted" }, ind.unit), " ", grade)));
    card.append(gauge(p));
    const lines = [`${fmt(p.energy_kgce, 0)} kgce / ${fmt(p.output, 1)} ${ind.product_unit}`];
    if (p.gap_to_benchmark_pct !== null && p.gap_to_benchmark_pct !== undefined) {
      lines.push(`较标杆 vs benchmark ${p.gap_to_benchmark_pct >= 0 ? "+" : ""}${fmt(p.gap_to_benchmark_pct, 1)} %`);
    }
    if (ind.day && ind.hour) lines.push(`今日 day ${fmt(ind.day.value, 1)} ${ind.unit}`);
    card.append(el("div", { class: "muted" }, lines.join(" · ")));
    const last = ind.last_hour;  // the graded hour before a provisional one
    if (ind.hour && last) {
      card.append(el("div", { class: "last-hour" },
        `上一小时 last hour ${last.start_local.slice(11, 16)}: ${fmt(last.value, 1)} ${ind.unit} `,
        el("span", { class: `grade grade-${last.status ?? "none"}`, "data-status": last.status ?? "",
          "data-quota": last.quota_grade ?? "" },
          [last.quota_label, last.grade ? `${last.grade} · ${last.grade_en}` : null].filter((t) => t).join(" · ")
            || "无分级 not graded")));
    }
    const trend = (snap.trends || []).find((t) => t.product === ind.product);
    if (trend) {
      const levels = { benchmark: p.benchmark, baseline: p.baseline, limit: p.limit };
      card.append(el("div", { class: "trends" },
        trendChart(trend.hours, trend.hours_start_ms, trend.hours_end_ms, 3600000, levels, ind.unit,
          "今日逐时 today, by hour", "hour"),
        trendChart(trend.days, trend.days_start_ms, trend.days_end_ms, 86400000, levels, ind.unit,
          "本月逐日 this month, by day", "day")));
    }
    box.append(card);
  }
  const b = snap.building;
  if (!b) return;
  for (const [id, ind] of Object.entries(b.indicators)) {
    const card = el("div", { class: "ind", "data-building-indicator": id });
    const value = el("span", { class: "value" });
    setNumber(value, ind.annual_value, 2);
    const judged = [ind.gbt51161, ...(ind.quotas || [])].filter(Boolean).map((j) => j.judgement);
    card.append(el("div", { class: "head" },
      el("span", {}, el("b", {}, ind.name_zh), " ", el("span", { class: "muted" }, "本年折算 year to date, annualised")),
      el("span", {}, value, " ", el("small", { class: "muted" }, ind.unit), " ",
        el("span", { class: "grade" }, judged.join(" · ") || "无数值 no figure"))));
    card.append(el("div", { class: "muted" }, `${b.building_type_zh} · ${b.climate_zone_zh} · ${fmt(b.floor_area_m2, 0)} m² · ${b.occupants} 人`));
    box.append(card);
  }
}

function trendChart(points, startMs, endMs, stepMs, levels, unit, title, period) {
  // the indicator's values per period against 标杆 / 基准 / 限额 lines, with its scale and time span
  const w = 400, h = 150, left = 44, right = 86, top = 18, bottom = 20;
  const box = svg("svg", { viewBox: `0 0 ${w} ${h}`, class: "trend", "data-period": period, "data-points": points.length });
  box.append(svg("text", { class: "tick", x: left, y: 11 }, `${title} (${unit})`));
  const lv = [["标杆", levels.benchmark, "lv-good"], ["基准", levels.baseline, "lv-mid"], ["限额", levels.limit, "lv-bad"]]
    .filter((l) => l[1] !== null && l[1] !== undefined);
  const values = points.map((q) => q[1]).concat(lv.map((l) => l[1]));
  if (points.length === 0) {
    box.append(svg("text", { class: "tick", x: left, y: h / 2 }, "尚无数据 no values yet"));
    return box;
  }
  let lo = Math.min(...values), hi = Math.max(...values);
  const pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.05 || 1;
  lo -= pad; hi += pad;
  const pw = w - left - right, ph = h - top - bottom;
  const x = (t) => left + ((t - startMs + stepMs / 2) / (endMs - startMs)) * pw;
  const y = (v) => top + ((hi - v) / (hi - lo)) * ph;
  box.append(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: top + ph }));
  box.append(svg("line", { class: "axis", x1: left, x2: left + pw, y1: top + ph, y2: top + ph }));
  for (const v of [lo + pad, (lo + hi) / 2, hi - pad]) {
    box.append(svg("text", { class: "tick axis-label", x: left - 4, y: y(v) + 4, "text-anchor": "end" }, fmt(v, 0)));
  }
  const marks = [];
  for (const [name, v, cls] of lv) {
    box.append(svg("line", { class: `level ${cls}`, x1: left, x2: left + pw, y1: y(v), y2: y(v) }));
    marks.push({ x: y(v), value: v, name, cls });
  }
  let lastY = -Infinity;
  for (const m of placeLabels(marks, 0).sort((a, b) => a.x - b.x)) {
    const ty = Math.max(m.x + 4, lastY + 12);
    lastY = ty;
    box.append(svg("text", { class: `tick level-label ${m.cls}`, x: left + pw + 4, y: ty },
      `${m.names.join(" / ")} ${fmt(m.value, m.value % 1 ? 1 : 0)}`));
  }
  const pts = points.map((q) => `${x(q[0]).toFixed(1)},${y(q[1]).toFixed(1)}`);
  box.append(svg("polyline", { class: "trend-line", points: pts.join(" ") }));
  for (const q of points) {
    const dot = svg("circle", { class: "trend-pt", cx: x(q[0]).toFixed(1), cy: y(q[1]).toFixed(1), r: 2.5,
      "data-ts": q[0], "data-v": q[1] });
    dot.append(svg("title", {}, `${fmtTime(q[0], true).slice(0, 16)}  ${fmt(q[1], 2)} ${unit}`));
    box.append(dot);
  }
  const first = fmtTime(startMs, true), last = fmtTime(endMs - stepMs, true);
  const label = period === "hour" ? [first.slice(11, 16), last.slice(11, 16)] : [first.slice(5, 10), last.slice(5, 10)];
  box.append(svg("text", { class: "tick", x: left, y: h - 5 }, label[0]));
  box.append(svg("text", { class: "tick", x: left + pw, y: h - 5, "text-anchor": "end" }, label[1]));
  return box;
}

function renderProcesses() {
  const body = $("processes").querySelector("tbody");
  body.replaceChildren();
  const rows = snap.processes_today || [];
  const total = rows.reduce((a, r) => a + r.kgce, 0);
  for (const r of rows) {
    const kgce = el("td", { class: "num pkgce" });
    setNumber(kgce, r.kgce, 1);
    const share = el("td", { class: "num" }, total > 0 ? `${fmt((100 * r.kgce) / total, 1)} %` : "–");
    const detail = r.carriers.map((c) => `${c.name} ${fmt(c.consumed, 1)} ${c.unit}`).join(" · ");
    body.append(el("tr", { "data-process": r.process },
      el("td", {}, r.name, " ", el("span", { class: "muted" }, r.process)), el("td", { class: "muted" }, detail), kgce, share));
  }
  if (rows.length === 0) body.append(el("tr", {}, el("td", { colspan: 4, class: "muted" }, "未定义工序计量 no process meters")));
}

function renderQuality() {
  const q = snap.quality;
  const box = $("quality");
  box.replaceChildren();
  if (!q) return;
  $("meters-ok").textContent = `${q.meters_ok} / ${q.meters_total}`;
  $("meters-ok").dataset.value = String(q.meters_ok);
  const latest = $("latest-reading");
  latest.textContent = fmtTime(q.latest_reading_ms, false);
  latest.dataset.ts = q.latest_reading_ms ?? "";
  setNumber($("readings-5min"), q.readings_last_5min, 0);
  box.append(el("p", {}, `在线 OK ${q.meters_ok} / ${q.meters_total} · 最新读数 latest reading ${fmtTime(q.latest_reading_ms, true)}`));
  if (q.unavailable.length === 0 && q.silent.length === 0) {
    box.append(el("p", { class: "ok" }, "全部计量器具正常 every meter reporting"));
  }
  if (q.unavailable.length) {
    const list = el("ul", { class: "plain", id: "unavailable" });
    for (const u of q.unavailable) {
      list.append(el("li", { "data-meter": u.meter }, `${u.name} (${u.meter}): 不可用 unavailable at ${fmtTime(u.last_unavailable_ms, true)} — ${u.quantities.join(", ")}`));
    }
    box.append(el("b", {}, "不可用 Unavailable"), list);
  }
  if (q.silent.length) {
    const list = el("ul", { class: "plain", id: "silent" });
    for (const s of q.silent) {
      list.append(el("li", { "data-meter": s.meter }, `${s.name} (${s.meter}): 无新数据 silent, last ${fmtTime(s.last_good_ms, true)}`));
    }
    box.append(el("b", {}, "无新数据 Silent"), list);
  }
}

function renderAlerts() {
  const box = $("alerts");
  box.replaceChildren();
  if (snap.alerts === null || snap.alerts === undefined) {
    $("alert-count").textContent = "–";
    box.append(el("p", { class: "muted" }, snap.alerts_error || "未配置告警状态 no alert state (energymon serve --data-dir DIR)"));
    return;
  }
  $("alert-count").textContent = String(snap.alerts.length);
  $("alert-count").dataset.value = String(snap.alerts.length);
  if (snap.alerts.length === 0) {
    box.append(el("p", { class: "ok" }, "无活动告警 no active alerts"));
    return;
  }
  const body = el("tbody");
  for (const a of snap.alerts) {
    body.append(el("tr", { "data-alert-id": a.id },
      el("td", {}, el("span", { class: `sev sev-${a.severity}` }, a.severity)),
      el("td", {}, a.state), el("td", {}, a.id),
      el("td", { class: "num alert-value", "data-v": a.value ?? "" }, a.value === null || a.value === undefined ? "–" : `${fmt(a.value, 1)} ${a.unit || ""}`),
      el("td", { class: "num alert-threshold", "data-v": a.threshold ?? "" }, a.threshold === null || a.threshold === undefined ? "–" : `${fmt(a.threshold, 1)} ${a.unit || ""}`),
      el("td", {}, fmtTime(a.fired_ms || a.started_ms, true)),
      el("td", {}, a.summary || "")));
  }
  box.append(el("table", { id: "alert-table" },
    el("thead", {}, el("tr", {}, ...["级别 Severity", "状态 State", "告警 Alert", "值 Value", "阈值 Threshold", "开始 Since", "说明 Summary"].map((t) => el("th", {}, t)))),
    body));
}

function render(next) {
  snap = next;
  if (snap.plant) {
    $("plant-name").textContent = snap.plant.name;
    document.title = `${snap.plant.name} · 能源在线监测`;
  }
  $("store").textContent = snap.store ? `数据源 store ${snap.store}` : "";
  if (snap.plant) $("plant-meta").textContent = `统一社会信用代码 ${snap.plant.uscc} · ${snap.plant.timezone}`;
  $("now-local").textContent = snap.now_local ? snap.now_local.replace("T", " ").slice(0, 19) : "–";
  $("now-local").dataset.ms = snap.now_ms ?? "";
  const err = $("error");
  err.hidden = !snap.error;
  err.textContent = snap.error ? `数据读取失败 store error: ${snap.error}` : "";
  $("seq").textContent = `snapshot ${snap.seq}`;
  $("seq").dataset.seq = String(snap.seq);
  if (snap.plant) {
    renderPower();
    renderEnergy();
    renderProcesses();
    renderIndicators();
    renderQuality();
    renderAlerts();
  }
  document.body.dataset.rendered = String(snap.seq);
}

function setLive(on, text) {
  $("live").className = `live ${on ? "on" : "off"}`;
  $("live-text").textContent = text;
}

function poll() {
  fetch("api/overview", { cache: "no-store" })
    .then((r) => { if (!r.ok) throw new Error(`HTTP ${r.status}`); return r.json(); })
    .then((s) => {
      if (!snap || s.seq !== snap.seq) render(s);
      polls += 1;
      document.body.dataset.polls = String(polls);
      setLive(true, "实时 live");
    })
    .catch(() => setLive(false, "已断开 disconnected"))
    .finally(() => setTimeout(poll, 1000));
}

const initial = $("snapshot");
if (initial) render(JSON.parse(initial.textContent));
setTimeout(poll, 1000);
