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

function renderPower() {
  const box = $("power");
  box.replaceChildren();
  for (const m of snap.power || []) {
    const val = el("div", { class: "val", "data-value": m.value ?? "", "data-ts": m.ts_ms ?? "" },
      fmt(m.value, 1), " ", el("small", {}, m.unit));
    const tile = el("div", { class: "tile", "data-meter": m.meter },
      el("div", { class: "name", title: `${m.name} (${m.meter})` }, m.name, " ", el("span", { class: "muted" }, m.meter)),
      val,
      sparkline(m.history, snap.now_ms - 3600000, snap.now_ms),
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
  const w = 400, h = 58, top = 14, bandH = 18;
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
  for (const [label, v] of [["标杆", p.benchmark], ["基准", p.baseline], ["限额", p.limit]]) {
    if (v === null || v === undefined) continue;
    box.append(svg("line", { x1: x(v), x2: x(v), y1: top, y2: top + bandH, stroke: "#6b7280" }));
    box.append(svg("text", { class: "tick", x: x(v), y: top + bandH + 13, "text-anchor": "middle" }, `${label} ${fmt(v, 0)}`));
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
    const grade = el("span", { class: `grade grade-${p.status ?? "none"}`, "data-status": p.status ?? "" },
      p.grade ? `${p.grade} · ${p.grade_en}` : (ind.no_figure ? "无数值 no figure" : "无分级 not graded"));
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
      el("td", {}, a.state), el("td", {}, a.id), el("td", {}, fmtTime(a.fired_ms || a.started_ms, true)),
      el("td", {}, a.summary || "")));
  }
  box.append(el("table", { id: "alert-table" },
    el("thead", {}, el("tr", {}, ...["级别 Severity", "状态 State", "告警 Alert", "开始 Since", "说明 Summary"].map((t) => el("th", {}, t)))),
    body));
}

function render(next) {
  snap = next;
  if (snap.plant) {
    $("plant-name").textContent = snap.plant.name;
    document.title = `${snap.plant.name} · 能源在线监测`;
  }
  $("store").textContent = snap.store ? `· ${snap.store}` : "";
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
