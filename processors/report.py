"""Period reports: recompute a period from counter readings and write it as JSON, CSV and HTML (and to the store).

    energymon report --config plant.yaml --month 2026-03 --out reports/2026-03
    energymon report --config plant.yaml --readings corrected.csv --day 2026-03-05 --write-store

Readings come from the plant's store (the SQLite file, or VictoriaMetrics / InfluxDB through
``InfluxStore.export``), from another store given on the command line, or from a CSV file with the columns
``ts,meter_id,value`` (``ts`` in epoch ms or ISO 8601; naive times are the plant's local time; optional
``quality`` and ``quantity`` columns). Because the report recomputes from readings, a period can be reported
again after late data arrived or readings were corrected, and ``--write-store`` replaces the stored period
results (``acct_*`` measurements; see ``docs/accounting.md``).

The report holds, for the period and year to date: per product the output, energy by carrier, kgce (当量值 and
等价值), 原料用能, exported energy, each indicator's value, grade (1级/2级/3级/未达标, 标杆/基准 status), gap to every
level in units and percent and the rule applied; the enterprise's 综合能耗 (当量值, 等价值, 能耗双控 total without
原料用能) and CO2; the energy budget (year to date vs the pro-rated budget, green/yellow/red); energy balances; data
quality (completeness per item and day, daily vs monthly consistency, period timestamps); per-meter totals and
quality flags. Numbers are rounded only when written, to the decimals in :data:`DECIMALS`.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from energymon.config import InfluxStoreConfig, PlantConfig, SqliteStoreConfig, load_plant
from energymon.errors import InputError
from energymon.interfaces import Row, series_key
from energymon.processors.accounting import period_start
from energymon.processors.grading import LEVEL_NAMES
from energymon.processors.recompute import FLAG_NAMES, MeterReadings, Recomputation, recompute
from energymon.processors.report_cli import add_arguments
from energymon.processors.rules import PlantRules

__all__ = [
    "DECIMALS",
    "ReportPeriod",
    "add_arguments",
    "alert_rows",
    "build_report",
    "load_readings_csv",
    "load_readings_store",
    "main_report",
    "render_csv",
    "render_html",
    "report_rows",
    "run_report",
]

#: Decimals kept when writing, by kind of figure (the standards' limits have at most 2 decimals; values keep
#: one more where the limits are integers). Grading always uses full precision.
DECIMALS: dict[str, int] = {
    "kgce": 2,  # kg of standard coal
    "tce": 4,
    "consumed": 3,  # carrier units (kWh, t, m3...)
    "output": 3,
    "kwh": 2,
    "co2_kg": 2,
    "co2_t": 4,
    "pct": 2,
    "kgce/t": 2,
    "kgoe/t": 2,
    "kWh/t": 2,
    "kgce/weight_case": 3,
    "kgoe/(t*energy_factor)": 3,
    "ratio": 3,
    "offset_s": 1,
}

_PERIOD_KINDS = ("day", "month", "year", "range")


@dataclass(frozen=True, slots=True)
class ReportPeriod:
    """A report window in the plant's local time: ``[start, end)`` dates, and what kind of period it is."""

    kind: str
    start: date
    end: date

    @staticmethod
    def parse(kind: str, text: str, end_text: str | None = None) -> ReportPeriod:
        """``day 2026-03-05``, ``month 2026-03``, ``year 2026`` or ``range 2026-03-01 2026-03-15`` (end exclusive)."""
        if kind == "day":
            d = date.fromisoformat(text)
            return ReportPeriod("day", d, d + timedelta(days=1))
        if kind == "month":
            y, m = (int(x) for x in text.split("-")[:2])
            return ReportPeriod("month", date(y, m, 1), date(y + (m == 12), m % 12 + 1, 1))
        if kind == "year":
            y = int(text)
            return ReportPeriod("year", date(y, 1, 1), date(y + 1, 1, 1))
        if kind == "range":
            if end_text is None:
                raise ValueError("a range needs an end date")
            a, b = date.fromisoformat(text), date.fromisoformat(end_text)
            if b <= a:
                raise ValueError(f"range end {b} is not after its start {a}")
            return ReportPeriod("range", a, b)
        raise ValueError(f"unknown period kind {kind!r} (one of {', '.join(_PERIOD_KINDS)})")

    def bounds_ms(self, tz: ZoneInfo) -> tuple[int, int]:
        """[start, end) in ms, local midnights."""
        def ms(d: date) -> int:
            return int(datetime(d.year, d.month, d.day, tzinfo=tz).timestamp() * 1000)

        return ms(self.start), ms(self.end)

    @property
    def label(self) -> str:
        """``2026-03-05``, ``2026-03``, ``2026`` or ``2026-03-01_2026-03-15``."""
        if self.kind == "day":
            return self.start.isoformat()
        if self.kind == "month":
            return f"{self.start:%Y-%m}"
        if self.kind == "year":
            return f"{self.start:%Y}"
        return f"{self.start.isoformat()}_{(self.end - timedelta(days=1)).isoformat()}"


# --------------------------------------------------------------------------- reading sources


def load_readings_csv(path: Path | str | io.TextIOBase, plant: PlantConfig) -> dict[str, MeterReadings]:
    """Read ``ts,meter_id,value`` (optional ``quality``, ``quantity``) into readings per meter.

    Rows of unknown meters, of a quantity other than the meter's counter, and of quality other than ``good`` are
    left out; of conflicting duplicate rows the last in the file is used (see
    :mod:`energymon.processors.readings_csv`, which also reports them).

    Raises:
        InputError: the file, a line or a cell is unusable; the message names the file and the line.
    """
    from energymon.processors.readings_csv import read_readings_csv

    return read_readings_csv(path, plant).readings


def load_readings_store(store: Any, plant: PlantConfig, start_ms: int, end_ms: int) -> dict[str, MeterReadings]:
    """Read the counter readings of every meter from a store, in ``[start_ms, end_ms)``.

    Args:
        store: a :class:`~.store.SqliteStore` (``query``) or an :class:`~.store.InfluxStore` (``export``,
            VictoriaMetrics). Readings marked ``uncertain`` are left out.
    """
    out: dict[str, MeterReadings] = {}
    for meter in plant.meters:
        if meter.counter is None:
            continue
        tags = {"enterprise": plant.enterprise.uscc, "meter": meter.id, "quantity": meter.counter}
        if hasattr(store, "query"):
            values = store.query("reading", "value", tags=tags, start_ms=start_ms, end_ms=end_ms)
            uncertain = {t for _tags, t, v in store.query("reading", "uncertain", tags=tags, start_ms=start_ms,
                                                           end_ms=end_ms) if v}
            pairs = [(t, v) for _tags, t, v in values if t not in uncertain]
        else:
            selector = ",".join(f'{k}="{v}"' for k, v in tags.items())
            uncertain = set()
            for _labels, times, vals in store.export(f"reading_uncertain{{{selector}}}", start_ms, end_ms - 1):
                uncertain |= {t for t, v in zip(times, vals, strict=True) if v}
            pairs = []
            for _labels, times, vals in store.export(f"reading_value{{{selector}}}", start_ms, end_ms - 1):
                pairs += [(t, v) for t, v in zip(times, vals, strict=True) if t not in uncertain]
        if pairs:
            out[meter.id] = MeterReadings.of([p[0] for p in pairs], [p[1] for p in pairs])
    return out


# --------------------------------------------------------------------------- the report


def _round(value: Any, kind: str) -> Any:
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return value
    if not math.isfinite(x):
        return None
    r = round(x, DECIMALS.get(kind, 4))
    return 0.0 if r == 0 else r


def _iso(ms: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ms / 1000, tz).isoformat()


def _day(ms: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ms / 1000, tz).date().isoformat()


def _rows(frame: pd.DataFrame, **match: Any) -> pd.DataFrame:
    if frame.empty:
        return frame
    sel = np.ones(len(frame), dtype=bool)
    for k, v in match.items():
        sel &= (frame[k] == v).to_numpy()
    return frame[sel]


def _one(frame: pd.DataFrame, **match: Any) -> dict[str, Any] | None:
    rows = _rows(frame, **match)
    if rows.empty:
        return None
    rec: dict[str, Any] = rows.iloc[-1].to_dict()
    return {k: v for k, v in rec.items() if not (isinstance(v, float) and math.isnan(v))}


def _energy_block(rec: Mapping[str, Any] | None) -> dict[str, Any]:
    if rec is None:
        return {}
    out: dict[str, Any] = {}
    for key in ("kgce", "kgce_equal", "kgce_feedstock", "kgce_dual_control", "kgce_dual_control_equal",
                "kgce_exported", "kgce_recovered"):
        if key in rec:
            out[key] = _round(rec[key], "kgce")
            out[key.replace("kgce", "tce")] = _round(rec[key] / 1000.0, "tce")
    if "co2_kg" in rec:
        out["co2_t"] = _round(rec["co2_kg"] / 1000.0, "co2_t")
    return out


def _grade_block(rec: Mapping[str, Any], unit: str, complete: bool) -> dict[str, Any]:
    value = rec.get("value")
    out: dict[str, Any] = {"unit": unit, "value": _round(value, unit), "complete": complete}
    if value is None:
        out["judgement"] = "不完整"
        out["reason"] = "no output in the period"
        return out
    levels = {name: rec[name] for name in LEVEL_NAMES if name in rec}
    if "rule" not in rec or rec.get("rule") is None:
        out["judgement"] = "不适用"
        out["reason"] = "no level in the reference data for this indicator and date"
        return out
    quota = rec.get("quota_grade")
    quota_label = "不适用" if quota is None else ("未达标" if int(quota) == 4 else f"{int(quota)}级")
    status = rec.get("status")
    labels = {1: "达到标杆", 2: "标杆与基准之间", 3: "未达基准", 4: "超过限额"}
    status_label = labels.get(int(status)) if status is not None else None
    out.update(
        judgement=quota_label if complete else "不完整",
        quota_grade=None if quota is None else int(quota),
        quota_label=quota_label,
        status=None if status is None else int(status),
        status_label=status_label,
        levels={k: _round(v, unit) for k, v in levels.items()},
        gaps={
            name: {"units": _round(rec.get(f"gap_{name}"), unit), "pct": _round(rec.get(f"gap_{name}_pct"), "pct")}
            for name in LEVEL_NAMES if name in levels
        },
        rule=rec["rule"],
    )
    return out


_REPORT_PERIODS = ("day", "month", "ytd", "report")


def _coarse(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows a report reads (day and coarser), selected once: 15-minute and hourly rows are most of a frame."""
    if frame.empty or "period" not in frame.columns:
        return frame
    return frame[frame["period"].isin(_REPORT_PERIODS).to_numpy()]


def build_report(rc: Recomputation, period: ReportPeriod) -> dict[str, Any]:
    """The report of a recomputation as a JSON-ready dict (numbers rounded to :data:`DECIMALS`)."""
    rc = _Coarse(rc)  # type: ignore[assignment]
    rules = rc.rules
    plant = rules.plant
    tz = rules.tz
    ent = plant.enterprise
    report: dict[str, Any] = {
        "schema": "energymon.report/1",
        "enterprise": {"uscc": ent.uscc, "name": ent.name, "province": ent.province, "timezone": ent.timezone},
        "period": {"kind": period.kind, "label": period.label, "start": _iso(rc.start_ms, tz),
                   "end": _iso(rc.end_ms, tz), "ytd_start": _iso(rc.ytd_start_ms, tz)},
        "rules": rules.describe(),
    }
    report["rules"].pop("generated_utc", None)
    # ---- enterprise
    totals = _energy_block(_one(rc.enterprise, period="report"))
    by_carrier = {}
    for rec in _rows(rc.enterprise_carriers, period="report").to_dict("records"):
        carrier_block: dict[str, Any] = {"consumed": _round(rec["consumed"], "consumed"), "unit": rec["unit"],
                 "kgce": _round(rec["kgce"], "kgce")}
        if "co2_kg" in rec and isinstance(rec["co2_kg"], float) and math.isfinite(rec["co2_kg"]):
            carrier_block["co2_t"] = _round(rec["co2_kg"] / 1000.0, "co2_t")
        by_carrier[rec["carrier"]] = carrier_block
    totals["by_carrier"] = by_carrier
    ytd = _rows(rc.enterprise, period="ytd")
    totals["ytd"] = _energy_block(_one(ytd, start=int(ytd["start"].max())) if not ytd.empty else None)
    report["totals"] = totals
    # ---- products
    products: dict[str, Any] = {}
    for pid, product in rules.products.items():
        rec = _one(rc.products, product=pid, indicator=product.indicator, period="report") or {}
        block: dict[str, Any] = {
            "name": product.name, "unit": product.unit, "output": _round(rec.get("output"), "output"),
            **_energy_block(rec),
            "electricity_kwh": _round(rec.get("electricity_kwh"), "kwh"),
            "energy_by_carrier": {
                c["carrier"]: {"consumed": _round(c["consumed"], "consumed"), "unit": c["unit"],
                               "kgce": _round(c["kgce"], "kgce")}
                for c in _rows(rc.product_carriers, product=pid, period="report").to_dict("records")
            },
            "indicators": {},
        }
        for indicator, _carriers in rules.indicators(pid):
            unit = rules.indicator_unit(indicator)
            r = _one(rc.products, product=pid, indicator=indicator, period="report")
            ind = _grade_block(r or {}, unit, bool((r or {}).get("complete", True)))
            prod_ytd = _rows(rc.products, product=pid, indicator=indicator, period="ytd")
            if not prod_ytd.empty:
                y = _one(prod_ytd, start=int(prod_ytd["start"].max())) or {}
                ind["ytd"] = {"output": _round(y.get("output"), "output"), "kgce": _round(y.get("kgce"), "kgce"),
                              **{k: v for k, v in _grade_block(y, unit, bool(y.get("complete", True))).items()
                                 if k in ("value", "judgement", "quota_grade", "status", "gaps", "complete")}}
            targets = _targets(rules, indicator, r.get("value") if r else None, rc.end_ms)
            if targets:
                ind["targets"] = targets
            block["indicators"][indicator] = ind
        products[pid] = block
    report["products"] = products
    report["budget"] = _budget_block(rc)
    report["balance"] = {
        rec["group"]: {"carrier": rec["carrier"], "unit": rec["unit"], "parents": _round(rec["parents"], "consumed"),
                       "children": _round(rec["children"], "consumed"), "loss": _round(rec["loss"], "consumed"),
                       "loss_pct": _round(rec["loss_pct"], "pct"), "max_loss_pct": rec["max_loss_pct"],
                       "flagged": bool(rec["flagged"])}
        for rec in _rows(rc.balance, period="report").to_dict("records")
    }
    report["data_quality"] = _quality_block(rc)
    report["meters"] = _meters_block(rc)
    report["daily"] = _daily_block(rc)
    report["notes"] = list(rc.missing)
    return report


_COMPARE = {"lt": lambda a, b: a < b, "le": lambda a, b: a <= b, "gt": lambda a, b: a > b,
            "ge": lambda a, b: a >= b}


def _targets(rules: PlantRules, indicator: str, value: Any, end_ms: int) -> list[dict[str, Any]]:
    """Policy targets and triggers on the indicator (PUE < 1.3 ...), evaluated on the period's value."""
    from energymon.refdata import ReferenceDataError

    try:
        targets = rules.ref.targets_for(indicator)
    except ReferenceDataError:
        return []
    day = rules.local_date(end_ms - 1)
    out = []
    for t in targets:
        if t.effective_from is not None and day < t.effective_from:
            continue
        holds = None if value is None else bool(_COMPARE[t.comparison](float(value), t.value))
        out.append({"id": t.id, "kind": t.kind, "condition": f"{t.comparison} {t.value:g}", "holds": holds,
                    "scope": t.scope})
    return out


class _Coarse:
    """A view of a recomputation with only the day-and-coarser rows of its period frames."""

    def __init__(self, rc: Recomputation) -> None:
        self._rc = rc
        self.products = _coarse(rc.products)
        self.enterprise = _coarse(rc.enterprise)
        self.meters = _coarse(rc.meters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rc, name)


def _budget_block(rc: Recomputation) -> dict[str, Any] | None:
    cfg = rc.rules.acc.budget
    if cfg is None or rc.budget.empty:
        return None
    rec = _one(rc.budget, period="report") or {}
    return {
        "year": rec.get("year"), "basis": cfg.basis, "scope": cfg.scope,
        "annual_tce": _round(rec.get("annual_tce"), "tce"), "prorated_tce": _round(rec.get("prorated_tce"), "tce"),
        "ytd_tce": _round(rec.get("ytd_tce"), "tce"), "ratio_pct": _round(rec.get("ratio_pct"), "pct"),
        "projected_tce": _round(rec.get("projected_tce"), "tce"), "status": rec.get("status"),
        "yellow_above_pct": cfg.yellow_above_pct, "red_above_pct": cfg.red_above_pct,
        **({"note": rec["note"]} if "note" in rec else {}),
    }


def _quality_block(rc: Recomputation) -> dict[str, Any]:
    tz = rc.rules.tz
    dq = rc.rules.acc.data_quality
    qd = rc.quality_days
    out: dict[str, Any] = {
        "rules": {"completeness_min_pct": dq.completeness_min_pct,
                  "daily_vs_monthly_max_pct": dq.daily_vs_monthly_max_pct,
                  "day_start_tolerance_secs": dq.day_start_tolerance_secs,
                  "month_start_tolerance_secs": dq.month_start_tolerance_secs},
        "completeness": {}, "consistency": {}, "timestamps": {},
    }
    if not qd.empty:
        window = qd[(qd["start"] >= rc.start_ms) & (qd["start"] < rc.end_ms)]
        for meter, g in window.groupby("meter", sort=False):
            bad = g[~g["complete"].astype(bool)]
            off = g[~g["start_ok"].astype(bool)]
            out["completeness"][str(meter)] = {
                "days": len(g), "incomplete_days": len(bad),
                "min_pct": _round(g["completeness_pct"].min(), "pct"),
                "mean_pct": _round(g["completeness_pct"].mean(), "pct"),
                "incomplete": [_day(int(s), tz) for s in bad["start"]],
            }
            out["timestamps"][str(meter)] = {
                "days_off": len(off), "off": [_day(int(s), tz) for s in off["start"]],
            }
    qm = rc.quality_months
    if not qm.empty:
        months = qm[(qm["start"] < rc.end_ms) & (qm["start"] >= period_start(rc.start_ms, "month", tz))]
        for rec in months.to_dict("records"):
            key = datetime.fromtimestamp(rec["start"] / 1000, tz).strftime("%Y-%m")
            out["consistency"].setdefault(str(rec["meter"]), {})[key] = {
                "daily_sum": _round(rec["daily_sum"], "consumed"),
                "monthly_span": _round(rec["monthly_span"], "consumed"),
                "diff_pct": _round(rec["diff_pct"], "pct"), "consistent": bool(rec["consistent"]),
                "start_offset_s": _round(rec["start_offset_s"], "offset_s"), "start_ok": bool(rec["start_ok"]),
            }
    comp = out["completeness"]
    cons = out["consistency"]
    out["summary"] = {
        "items": len(comp),
        "items_complete": sum(1 for v in comp.values() if v["incomplete_days"] == 0),
        "incomplete_item_days": sum(v["incomplete_days"] for v in comp.values()),
        "inconsistent_item_months": sum(1 for m in cons.values() for v in m.values() if not v["consistent"]),
        "timestamp_item_days_off": sum(v["days_off"] for v in out["timestamps"].values()),
    }
    return out


def _meters_block(rc: Recomputation) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rules = rc.rules
    for rec in _rows(rc.meters, period="report").to_dict("records"):
        info = rules.meters[rec["meter"]]
        block: dict[str, Any] = {"carrier": info.meter.carrier, "role": info.role.value, "unit": rec["unit"],
                                 "consumed": _round(rec["consumed"], "consumed")}
        for key, kind in (("kgce", "kgce"), ("kgce_equal", "kgce"), ("co2_kg", "co2_kg")):
            if key in rec and isinstance(rec[key], float) and math.isfinite(rec[key]):
                block[key] = _round(rec[key], kind)
        block["flags"] = {name: int(rec.get(f"n_{name}", 0) or 0) for name in FLAG_NAMES}
        block["rejected_readings"] = int(rec.get("n_rejected", 0) or 0)
        out[rec["meter"]] = block
    return out


def _daily_block(rc: Recomputation) -> dict[str, Any]:
    tz = rc.rules.tz
    ent = _rows(rc.enterprise, period="day")
    ent = ent[(ent["start"] >= rc.start_ms) & (ent["start"] < rc.end_ms)] if not ent.empty else ent
    out: dict[str, Any] = {
        "dates": [_day(int(s), tz) for s in ent["start"]] if not ent.empty else [],
        "enterprise_kgce": [_round(x, "kgce") for x in ent["kgce"]] if not ent.empty else [],
        "products": {},
    }
    for pid, product in rc.rules.products.items():
        rows = _rows(rc.products, product=pid, indicator=product.indicator, period="day")
        if rows.empty:
            continue
        rows = rows[(rows["start"] >= rc.start_ms) & (rows["start"] < rc.end_ms)]
        unit = rc.rules.indicator_unit(product.indicator)
        out["products"][pid] = {
            "indicator": product.indicator, "unit": unit,
            "output": [_round(x, "output") for x in rows["output"]],
            "kgce": [_round(x, "kgce") for x in rows["kgce"]],
            "value": [_round(x, unit) for x in rows["value"]],
            "levels": {name: _round(rows[name].iloc[-1], unit) for name in ("benchmark", "baseline", "grade_3")
                       if name in rows.columns and pd.notna(rows[name].iloc[-1])},
        }
    bud = _rows(rc.budget, period="day") if not rc.budget.empty else rc.budget
    if not bud.empty and "ratio_pct" in bud.columns:
        out["budget_ratio_pct"] = [_round(x, "pct") for x in bud["ratio_pct"]]
        out["budget_ytd_tce"] = [_round(x, "tce") for x in bud["ytd_tce"]]
        out["budget_prorated_tce"] = [_round(x, "tce") for x in bud["prorated_tce"]]
        out["budget_status"] = [str(x) for x in bud["status"]]
    return out


# --------------------------------------------------------------------------- CSV


def render_csv(report: Mapping[str, Any]) -> str:
    """The report flattened to ``section,item,field,value`` rows (every number of the JSON, daily series
    included), for spreadsheets."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["section", "item", "field", "value"])

    def walk(section: str, item: str, prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(section, item, f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, list) and node and not isinstance(node[0], Mapping | list):
            if section == "daily":
                for i, v in enumerate(node):
                    w.writerow([section, item, f"{prefix}[{i}]", "" if v is None else v])
            else:
                w.writerow([section, item, prefix, ";".join("" if v is None else str(v) for v in node)])
        elif not isinstance(node, list):
            w.writerow([section, item, prefix, "" if node is None else node])

    for section in ("period", "totals", "products", "budget", "balance", "data_quality", "meters", "daily"):
        node = report.get(section)
        if isinstance(node, Mapping) and section in ("products", "balance", "meters"):
            for item, sub in node.items():
                walk(section, item, "", sub)
        elif node is not None:
            walk(section, "", "", node)
    for note in report.get("notes", []):
        w.writerow(["notes", "", "", note])
    return buf.getvalue()


def daily_csv(rc: Recomputation) -> str:
    """One row per local day and product: output, kgce, indicator value and grade, plus the enterprise total."""
    tz = rc.rules.tz
    rows = rc.products
    if rows.empty:
        return "date,product,indicator,output,kgce,value,quota_grade,status\n"
    day = rows[(rows["period"] == "day") & (rows["start"] >= rc.start_ms) & (rows["start"] < rc.end_ms)]
    out = pd.DataFrame({
        "date": [_day(int(s), tz) for s in day["start"]],
        "product": day["product"], "indicator": day["indicator"],
        "output": day["output"].round(DECIMALS["output"]), "kgce": day["kgce"].round(DECIMALS["kgce"]),
        "value": day["value"].round(3),
        "quota_grade": day.get("quota_grade", pd.Series(np.nan, index=day.index)),
        "status": day.get("status", pd.Series(np.nan, index=day.index)),
    })
    text: str = out.to_csv(index=False, lineterminator="\n")
    return text


# --------------------------------------------------------------------------- HTML


def _svg_bars(values: Sequence[float | None], labels: Sequence[str], title: str, unit: str,
              lines: Mapping[str, float] | None = None, kind: str = "bar") -> str:
    """A small inline SVG chart: bars or a line, with optional horizontal reference lines."""
    w, h, left, bottom, top = 720, 220, 60, 30, 24
    pts = [(i, float(v)) for i, v in enumerate(values) if v is not None and math.isfinite(float(v))]
    refs = dict(lines or {})
    if not pts:
        return f'<p class="muted">{html.escape(title)}: no data</p>'
    ys = [v for _, v in pts] + list(refs.values())
    lo, hi = min(0.0, *ys), max(ys)
    if hi == lo:
        hi = lo + 1.0
    n = max(len(values), 1)
    pw, ph = w - left - 10, h - bottom - top

    def x(i: float) -> float:
        return left + (i + 0.5) * pw / n

    def y(v: float) -> float:
        return top + ph * (hi - v) / (hi - lo)

    parts = [f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{left}" y="16" class="t">{html.escape(title)} ({html.escape(unit)})</text>',
             f'<line x1="{left}" y1="{y(0):.1f}" x2="{w - 10}" y2="{y(0):.1f}" class="ax"/>']
    for frac in (0.0, 0.5, 1.0):
        v = lo + frac * (hi - lo)
        parts.append(f'<text x="{left - 4}" y="{y(v) + 4:.1f}" class="l" text-anchor="end">{v:,.4g}</text>')
    bw = max(pw / n * 0.7, 1.0)
    if kind == "bar":
        for i, v in pts:
            y0, y1 = sorted((y(0), y(v)))
            parts.append(f'<rect x="{x(i) - bw / 2:.1f}" y="{y0:.1f}" width="{bw:.1f}" height="{max(y1 - y0, 0.5):.1f}"'
                         f' class="b"><title>{html.escape(labels[i])}: {v:,.2f}</title></rect>')
    else:
        path = " ".join(f"{'M' if k == 0 else 'L'}{x(i):.1f},{y(v):.1f}" for k, (i, v) in enumerate(pts))
        parts.append(f'<path d="{path}" class="ln"/>')
        for i, v in pts:
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" class="pt">'
                         f'<title>{html.escape(labels[i])}: {v:,.3f}</title></circle>')
    for k, (name, v) in enumerate(refs.items()):
        parts.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{w - 10}" y2="{y(v):.1f}" class="r{k % 3}"/>'
                     f'<text x="{w - 12}" y="{y(v) - 3:.1f}" class="l" text-anchor="end">'
                     f"{html.escape(name)} {v:g}</text>")
    step = max(1, n // 8)
    for i in range(0, n, step):
        parts.append(f'<text x="{x(i):.1f}" y="{h - 10}" class="l" text-anchor="middle">'
                     f"{html.escape(labels[i][5:])}</text>")
    parts.append("</svg>")
    return "".join(parts)


_CSS = """body{font-family:system-ui,"Noto Sans CJK SC",sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.k,th.k{text-align:left}.muted{color:#888}
.green{background:#d8f0d8}.yellow{background:#fff3c4}.red{background:#f8d0d0}
svg .t{font-size:13px;font-weight:600}svg .l{font-size:10px;fill:#555}svg .ax{stroke:#999}
svg .b{fill:#4a7fb5}svg .ln{fill:none;stroke:#4a7fb5;stroke-width:1.5}svg .pt{fill:#4a7fb5}
svg .r0{stroke:#2a9d3a;stroke-dasharray:4 3}svg .r1{stroke:#d08a00;stroke-dasharray:4 3}
svg .r2{stroke:#c0392b;stroke-dasharray:4 3}"""


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    return f"{v:,}" if isinstance(v, float) else str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] | None = None) -> str:
    head = "".join(f'<th class="{"k" if i == 0 else ""}">{html.escape(str(h))}</th>' for i, h in enumerate(header))
    body = []
    for r_i, row in enumerate(rows):
        cls = f' class="{classes[r_i]}"' if classes and classes[r_i] else ""
        cells = "".join(f'<td class="{"k" if i == 0 else ""}">{html.escape(_cell(v))}</td>' for i, v in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_html(report: Mapping[str, Any]) -> str:
    """A self-contained HTML page (inline CSS and SVG, no network assets)."""
    ent = report["enterprise"]
    per = report["period"]
    tot = report["totals"]
    parts = [f"<!doctype html><html lang=\"zh\"><head><meta charset=\"utf-8\"><title>{html.escape(ent['name'])} "
             f"{html.escape(per['label'])}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(ent['name'])} · 能源统计报告 {html.escape(per['label'])}</h1>",
             f"<p class=\"muted\">{html.escape(ent['uscc'])} · {html.escape(per['start'])} – {html.escape(per['end'])}"
             f" · reference data {html.escape(str(report['rules'].get('ref_version')))}</p>"]
    parts.append("<h2>综合能耗 (enterprise)</h2>")
    rows = [["综合能耗 当量值 (tce)", tot.get("tce"), tot.get("ytd", {}).get("tce")],
            ["综合能耗 等价值 (tce)", tot.get("tce_equal"), tot.get("ytd", {}).get("tce_equal")],
            ["原料用能 (tce)", tot.get("tce_feedstock"), tot.get("ytd", {}).get("tce_feedstock")],
            ["能耗双控口径 (tce, 不含原料用能)", tot.get("tce_dual_control"),
             tot.get("ytd", {}).get("tce_dual_control")],
            ["外供/输出 (tce, 已扣除)", tot.get("tce_exported"), tot.get("ytd", {}).get("tce_exported")],
            ["余热回收利用 (tce, 不重复计入)", tot.get("tce_recovered"), tot.get("ytd", {}).get("tce_recovered")],
            ["CO2 (t)", tot.get("co2_t"), tot.get("ytd", {}).get("co2_t")]]
    parts.append(_table(["", "period", "year to date"], rows))
    parts.append(_table(["carrier", "consumed", "unit", "kgce"],
                        [[c, v.get("consumed"), v.get("unit"), v.get("kgce")] for c, v in tot["by_carrier"].items()]))
    daily = report.get("daily", {})
    if daily.get("dates"):
        parts.append(_svg_bars(daily["enterprise_kgce"], daily["dates"], "综合能耗 per day", "kgce"))
    parts.append("<h2>Products</h2>")
    for pid, p in report["products"].items():
        parts.append(f"<h3>{html.escape(p.get('name') or pid)} ({html.escape(pid)})</h3>")
        parts.append(_table(["output", "kgce", "kgce 等价值", "原料用能 kgce", "exported kgce", "kWh"],
                            [[f"{p.get('output')} {p.get('unit')}", p.get("kgce"), p.get("kgce_equal"),
                              p.get("kgce_feedstock"), p.get("kgce_exported"), p.get("electricity_kwh")]]))
        parts.append(_table(["carrier", "consumed", "unit", "kgce"],
                            [[c, v["consumed"], v["unit"], v["kgce"]] for c, v in p["energy_by_carrier"].items()]))
        for ind_id, ind in p["indicators"].items():
            lv = ind.get("levels", {})
            gaps = ind.get("gaps", {})
            parts.append(f"<p><b>{html.escape(ind_id)}</b>: {ind.get('value')} {html.escape(ind['unit'])} → "
                         f"<b>{html.escape(str(ind.get('judgement')))}</b>"
                         + (f" · {html.escape(ind['status_label'])}" if ind.get("status_label") else "")
                         + (f" · YTD {ind['ytd'].get('value')} → {html.escape(str(ind['ytd'].get('judgement')))}"
                            if "ytd" in ind else "") + "</p>")
            if lv:
                parts.append(_table(["level", "value", "gap", "gap %"],
                                    [[k, lv[k], gaps.get(k, {}).get("units"), gaps.get(k, {}).get("pct")] for k in lv]))
                rule = ind.get("rule", {})
                parts.append(f"<p class=\"muted\">rule: {html.escape(str(rule.get('quota')))} · "
                             f"{html.escape(str(rule.get('policy')))} · "
                             f"band {html.escape(str(rule.get('band') or '—'))}"
                             f" · corrections {html.escape('; '.join(rule.get('corrections', [])) or '—')}"
                             f" · ref {html.escape(str(rule.get('ref_version')))}</p>")
        dp = daily.get("products", {}).get(pid)
        if dp:
            parts.append(_svg_bars(dp["value"], daily["dates"], f"{dp['indicator']} per day", dp["unit"],
                                   dp.get("levels"), kind="line"))
    bud = report.get("budget")
    parts.append("<h2>Energy budget (用能预算)</h2>")
    if bud:
        parts.append(_table(["year", "annual tce", "pro-rated tce", "YTD tce", "ratio %", "status", "projected tce"],
                            [[bud.get("year"), bud.get("annual_tce"), bud.get("prorated_tce"), bud.get("ytd_tce"),
                              bud.get("ratio_pct"), bud.get("status"), bud.get("projected_tce")]],
                            [str(bud.get("status") or "")]))
        if daily.get("budget_ratio_pct"):
            parts.append(_svg_bars(daily["budget_ratio_pct"], daily["dates"], "YTD use / pro-rated budget", "%",
                                   {"yellow": bud["yellow_above_pct"], "red": bud["red_above_pct"]}, kind="line"))
    else:
        parts.append('<p class="muted">no budget configured</p>')
    parts.append("<h2>Energy balance (一级 vs Σ二级)</h2>")
    bal = report.get("balance", {})
    parts.append(_table(["group", "carrier", "parents", "children", "loss", "loss %", "max %", "flagged"],
                        [[g, b["carrier"], b["parents"], b["children"], b["loss"], b["loss_pct"], b["max_loss_pct"],
                          "yes" if b["flagged"] else ""] for g, b in bal.items()],
                        ["red" if b["flagged"] else "" for b in bal.values()]) if bal
                 else '<p class="muted">no balance group</p>')
    dq = report["data_quality"]
    parts.append("<h2>Data quality</h2>")
    parts.append(_table(["meter", "days", "incomplete days", "min %", "mean %", "timestamp days off"],
                        [[m, c["days"], c["incomplete_days"], c["min_pct"], c["mean_pct"],
                          dq["timestamps"].get(m, {}).get("days_off")] for m, c in dq["completeness"].items()],
                        ["yellow" if c["incomplete_days"] else "" for c in dq["completeness"].values()]))
    cons_rows = [[m, k, v["daily_sum"], v["monthly_span"], v["diff_pct"], "" if v["consistent"] else "no"]
                 for m, months in dq["consistency"].items() for k, v in months.items()]
    parts.append(_table(["meter", "month", "Σ daily", "counter span", "diff %", "consistent"], cons_rows,
                        ["" if r[5] == "" else "red" for r in cons_rows]))
    conflicts = (dq.get("readings_file") or {}).get("conflicts") or {}
    if conflicts:
        total = dq["readings_file"]["conflicting_readings"]
        parts.append(f"<h3>冲突的重复读数 Conflicting duplicate readings: {total} (the last row in the file is used)"
                     "</h3>")
        rows = [[m, e["ts"], ", ".join(map(str, e["lines"])), ", ".join(f"{v:g}" for v in e["values"]), e["used"]]
                for m, c in conflicts.items() for e in c["examples"]]
        parts.append(_table(["meter", "ts", "lines", "values", "used"], rows, ["red"] * len(rows)))
    parts.append("<h2>Meters</h2>")
    parts.append(_table(["meter", "carrier", "role", "consumed", "unit", "kgce", "flags", "rejected"],
                        [[m, v["carrier"], v["role"], v["consumed"], v["unit"], v.get("kgce"),
                          ", ".join(f"{k} {n}" for k, n in v["flags"].items() if n), v["rejected_readings"]]
                         for m, v in report["meters"].items()]))
    if report.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report["notes"]) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- store rows


_STATUS_CODE = {"green": 1.0, "yellow": 2.0, "red": 3.0}


def report_rows(rc: Recomputation, *, indicator_periods: Sequence[str] = ("month", "ytd", "year")) -> list[Row]:
    """Store rows of a recomputation (``acct_*`` measurements, documented in ``docs/accounting.md``).

    Periods overlapping the window are written, plus ``year`` and ``ytd`` rows (year so far). Every row is
    stamped at its period's start, so writing a recomputed period again replaces it. ``indicator_periods`` are
    passed to :func:`alert_rows`.
    """
    ent = rc.rules.enterprise
    rows: list[Row] = []
    lo, hi = rc.start_ms, rc.end_ms

    def emit(measurement: str, frame: pd.DataFrame, tag_cols: Sequence[str], value_cols: Sequence[str],
             keep: Any = None) -> None:
        if frame.empty:
            return
        f = frame if keep is None else frame[keep(frame)]
        cols = [c for c in value_cols if c in f.columns]
        tags_arr = [f[c].astype(str).to_numpy() for c in tag_cols]
        vals = f[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64) if cols else None
        starts = f["start"].to_numpy(dtype=np.int64)
        keys: dict[tuple[str, ...], Any] = {}
        for i in range(len(f)):
            tv = tuple(t[i] for t in tags_arr)
            key = keys.get(tv)
            if key is None:
                key = keys[tv] = series_key(measurement, enterprise=ent, **dict(zip(tag_cols, tv, strict=True)))
            fields = {} if vals is None else {c: float(vals[i, j]) for j, c in enumerate(cols)
                                              if math.isfinite(vals[i, j])}
            if fields:
                rows.append((key, fields, int(starts[i])))

    def window(f: pd.DataFrame) -> Any:
        period = f["period"].to_numpy()
        start = f["start"].to_numpy(dtype=np.int64)
        end = f["end"].to_numpy(dtype=np.int64) if "end" in f.columns else start + 1
        return (period != "report") & ((np.isin(period, ["year", "ytd"])) | ((start < hi) & (end > lo)))

    energy_cols = ["kgce", "kgce_equal", "kgce_feedstock", "kgce_dual_control", "kgce_dual_control_equal",
                   "kgce_exported", "kgce_recovered", "electricity_kwh", "co2_kg"]
    emit("acct_enterprise", rc.enterprise, ["period"], energy_cols, window)
    emit("acct_enterprise_carrier", rc.enterprise_carriers, ["carrier", "unit", "period"],
         ["consumed", "kgce", "co2_kg"], lambda f: (f["period"] != "report").to_numpy())
    prod_cols = ["output", *energy_cols, "value", "status", "quota_grade", *LEVEL_NAMES,
                 *[f"gap_{n}" for n in LEVEL_NAMES], *[f"gap_{n}_pct" for n in LEVEL_NAMES], "complete"]
    prods = rc.products
    if not prods.empty and "complete" in prods.columns:
        prods = prods.assign(complete=prods["complete"].astype(float))
    emit("acct_product", prods, ["product", "indicator", "period"], prod_cols, window)
    emit("acct_product_carrier", rc.product_carriers, ["product", "carrier", "unit", "period"],
         ["consumed", "kgce"], lambda f: (f["period"] != "report").to_numpy())
    meters = rc.meters
    if not meters.empty:
        carriers = {m: (i.meter.carrier or "") for m, i in rc.rules.meters.items()}
        meters = meters.assign(carrier=meters["meter"].map(carriers))
    emit("acct_meter", meters, ["meter", "carrier", "unit", "period"],
         ["consumed", "kgce", "kgce_equal", "co2_kg", *[f"n_{n}" for n in FLAG_NAMES]],
         lambda f: ((f["period"] != "report") & ((f["period"] == "year") | ((f["start"] < hi) & (f["start"] >= lo - 0)))
                    | ((f["period"] == "month") & (f["start"] < hi))).to_numpy())
    qd = rc.quality_days
    if not qd.empty:
        qd = qd.assign(complete=qd["complete"].astype(float), start_ok=qd["start_ok"].astype(float))
    emit("acct_quality_day", qd, ["meter"], ["readings", "expected", "completeness_pct", "complete",
                                              "start_offset_s", "start_ok"],
         lambda f: ((f["start"] >= lo) & (f["start"] < hi)).to_numpy())
    qm = rc.quality_months
    if not qm.empty:
        qm = qm.assign(consistent=qm["consistent"].astype(float), start_ok=qm["start_ok"].astype(float))
    emit("acct_quality_month", qm, ["meter"], ["daily_sum", "monthly_span", "diff_pct", "consistent",
                                                "start_offset_s", "start_ok"],
         lambda f: (f["start"] < hi).to_numpy())
    bal = rc.balance
    if not bal.empty:
        bal = bal.assign(flagged=bal["flagged"].astype(float))
    emit("acct_balance", bal, ["group", "carrier", "unit", "period"],
         ["parents", "children", "loss", "loss_pct", "flagged", "max_loss_pct"],
         lambda f: (f["period"] != "report").to_numpy())
    bud = rc.budget
    if not bud.empty and "status" in bud.columns:
        bud = bud.assign(status=bud["status"].map(_STATUS_CODE))
        emit("acct_budget", bud, ["period"], ["ytd_tce", "annual_tce", "prorated_tce", "ratio_pct", "status",
                                             "projected_tce"], lambda f: (f["period"] == "day").to_numpy())
    rows += alert_rows(rc, periods=indicator_periods)
    return rows


def alert_rows(rc: Recomputation, *, periods: Sequence[str] = ("month", "ytd", "year")) -> list[Row]:
    """Rows in the shape the alert engine reads (``AlertEngine.observe_rows``), from a recomputation.

    * ``indicator`` (tags enterprise, product, indicator, period ``month`` / ``ytd`` / ``year``): the live path's
      indicator fields (``energy_kgce``, ``output``, ``value``, ``status``, ``quota_grade``, ``benchmark``,
      ``baseline``, ``limit``, ``gap_to_benchmark(_pct)``, ``gap_to_baseline(_pct)``) plus ``as_of_ms``, the end of
      the data the value covers (a month, or the year so far, may be cut at the window's end);
    * ``budget`` (tags enterprise, scope ``enterprise``): ``ytd_share`` (year-to-date use ÷ pro-rated budget,
      1.0 = 100 %), ``ytd_tce``, ``prorated_tce``, ``annual_tce`` and ``as_of_ms`` (the end of the day), one row
      per day of the window, stamped at the day's start.

    ``periods`` are the indicator periods written (``hour`` and ``day`` too when no live path writes them);
    hour and day rows are limited to the window.
    """
    ent = rc.rules.enterprise
    rows: list[Row] = []
    prods = rc.products
    if not prods.empty and "value" in prods.columns:
        fine = prods["period"].isin(["hour", "day"]).to_numpy()
        in_window = ~fine | ((prods["start"].to_numpy(dtype=np.int64) < rc.end_ms)
                             & (prods["end"].to_numpy(dtype=np.int64) > rc.start_ms))
        sel = prods[prods["period"].isin(list(periods)).to_numpy() & prods["value"].notna().to_numpy() & in_window]
        for rec in sel.to_dict("records"):
            fields = {"energy_kgce": rec["kgce"], "output": rec["output"], "value": rec["value"],
                      "as_of_ms": float(min(int(rec["end"]), rc.end_ms))}
            for name, src in (("status", "status"), ("quota_grade", "quota_grade"), ("benchmark", "benchmark"),
                              ("baseline", "baseline"), ("limit", "grade_3"),
                              ("gap_to_benchmark", "gap_benchmark"), ("gap_to_benchmark_pct", "gap_benchmark_pct"),
                              ("gap_to_baseline", "gap_baseline"), ("gap_to_baseline_pct", "gap_baseline_pct")):
                v = rec.get(src)
                if v is not None and isinstance(v, int | float) and math.isfinite(v):
                    fields[name] = float(v)
            key = series_key("indicator", enterprise=ent, product=str(rec["product"]),
                             indicator=str(rec["indicator"]), period=str(rec["period"]))
            rows.append((key, {k: float(v) for k, v in fields.items() if math.isfinite(float(v))}, int(rec["start"])))
    bud = rc.budget
    if not bud.empty and "ratio_pct" in bud.columns:
        key = series_key("budget", enterprise=ent, scope="enterprise")
        for rec in bud[bud["period"] == "day"].to_dict("records"):
            ratio = rec.get("ratio_pct")
            if ratio is None or not math.isfinite(ratio):
                continue
            rows.append((key, {"ytd_share": ratio / 100.0, "ytd_tce": rec["ytd_tce"],
                               "prorated_tce": rec["prorated_tce"], "annual_tce": rec["annual_tce"],
                               "as_of_ms": float(rec["at"])}, int(rec["start"])))
    return rows


# --------------------------------------------------------------------------- running a report


def run_report(
    plant: PlantConfig,
    period: ReportPeriod,
    readings: Mapping[str, MeterReadings],
    *,
    ref: Any = None,
) -> tuple[Recomputation, dict[str, Any]]:
    """Recompute ``period`` from ``readings`` and build its report."""
    if ref is None:
        from energymon.refdata import load_reference_data

        ref = load_reference_data()
    rules = PlantRules(plant, ref)
    start_ms, end_ms = period.bounds_ms(rules.tz)
    rc = recompute(rules, readings, start_ms, end_ms)
    return rc, build_report(rc, period)


def _period_from_args(args: argparse.Namespace) -> ReportPeriod:
    if args.day:
        flag, kind, text, end = "--day", "day", args.day, None
    elif args.month:
        flag, kind, text, end = "--month", "month", args.month, None
    elif args.year:
        flag, kind, text, end = "--year", "year", args.year, None
    else:
        if not args.date_to:
            raise InputError("--from", "needs --to (the end day, exclusive)")
        flag, kind, text, end = "--from/--to", "range", args.date_from, args.date_to
    shown = f"{flag} {text}" + (f" {end}" if end else "")
    try:
        period = ReportPeriod.parse(kind, text, end)
    except ValueError as exc:
        forms = {"day": "YYYY-MM-DD", "month": "YYYY-MM", "year": "YYYY", "range": "YYYY-MM-DD YYYY-MM-DD"}
        raise InputError(shown, f"not a valid {kind} ({exc}); expected {forms[kind]}") from None
    if not (period.start.year >= 2000 and period.end.year <= 2100):
        raise InputError(shown, "the period must lie within 2000-2099")
    return period


def _existing_sqlite(path: Path, source: str) -> Path:
    """``path`` if it is an SQLite file; a reading command never creates an empty store by a typo."""
    if not path.exists():
        raise InputError(source, f"SQLite store {str(path)!r} does not exist (a reading command creates no store)")
    if not path.is_file():
        raise InputError(source, f"{str(path)!r} is not a file")
    try:
        with path.open("rb") as f:
            magic = f.read(16)
    except OSError as exc:
        raise InputError(source, f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if magic != b"SQLite format 3\x00":
        raise InputError(source, f"{str(path)!r} is not an SQLite database")
    return path


def _open_source_store(args: argparse.Namespace, plant: PlantConfig, *, reading: bool = True) -> Any:
    from energymon.processors.store import InfluxStore, SqliteStore

    if args.store_file is not None:
        path = _existing_sqlite(args.store_file, f"--store-file {args.store_file}")
        return SqliteStore(SqliteStoreConfig(type="sqlite", path=path))
    if args.store_url is not None:
        try:
            return InfluxStore(InfluxStoreConfig(type="influxdb", url=args.store_url))
        except ValueError as exc:
            raise InputError(f"--store-url {args.store_url}", str(exc).splitlines()[-1]) from None
    cfg = plant.processor.store
    if cfg is None:
        raise InputError("--readings", "no readings source: give --readings, --store-file or --store-url (the "
                                       "plant has no processor.store)")
    if isinstance(cfg, SqliteStoreConfig):
        if reading:
            _existing_sqlite(Path(cfg.path), f"processor.store.path of {args.config}")
        return SqliteStore(cfg)
    return InfluxStore(cfg)


def _check_lookback(args: argparse.Namespace) -> None:
    hours = args.lookback_hours
    if not (isinstance(hours, float | int) and 0 <= hours <= 24 * 366):
        raise InputError("--lookback-hours", f"must be between 0 and {24 * 366} hours, got {hours}")


def _readings_in(readings: Mapping[str, MeterReadings], lo: int, hi: int) -> bool:
    return any(bool(((r.ts >= lo) & (r.ts < hi)).any()) for r in readings.values())


def main_report(args: argparse.Namespace, out: Any = None) -> int:
    """Run ``energymon report`` with parsed arguments; print where the files went. Returns the exit code."""
    stream = out or sys.stdout
    plant = load_plant(args.config)
    try:
        period = _period_from_args(args)
        _check_lookback(args)
    except InputError as exc:
        print(f"energymon report: {exc}", file=sys.stderr)
        return 2
    tz = plant.enterprise.tz
    start_ms, end_ms = period.bounds_ms(tz)
    ytd_start = period_start(end_ms - 1, "year", tz)
    pad = int(args.lookback_hours * 3_600_000)
    store = None
    try:
        csv_file = None
        if args.readings is not None:
            from energymon.processors.readings_csv import read_readings_csv

            csv_file = read_readings_csv(args.readings, plant)
            readings = csv_file.readings
            if not _readings_in(readings, min(start_ms, ytd_start) - pad, end_ms + pad):
                raise InputError(str(args.readings), f"no reading of the file falls in {period.label} (with "
                                                     f"{args.lookback_hours:g} h around it): wrong period or file?")
        else:
            store = _open_source_store(args, plant)
            readings = load_readings_store(store, plant, min(start_ms, ytd_start) - pad, end_ms + pad)
        rc, report = run_report(plant, period, readings)
        if csv_file is not None:
            report["data_quality"]["readings_file"] = csv_file.quality(tz)
            report["data_quality"]["summary"]["conflicting_readings"] = len(csv_file.conflicts)
            if csv_file.conflicts:
                first = csv_file.conflicts[0]
                print(f"energymon report: warning: {args.readings}: {len(csv_file.conflicts)} conflicting "
                      f"duplicate reading(s), e.g. meter {first.meter} lines {', '.join(map(str, first.lines))} "
                      f"(values {', '.join(f'{v:g}' for v in first.values)}); the last row in the file is used "
                      "(data_quality.readings_file.conflicts)", file=sys.stderr)
            if csv_file.unknown_meters:
                print(f"energymon report: warning: {args.readings}: rows of meter(s) not in the plant left out: "
                      f"{', '.join(csv_file.unknown_meters[:10])}", file=sys.stderr)
        out_dir = args.out or Path(f"report-{period.label}")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--out {out_dir}", f"cannot create the output directory: {exc.strerror or exc}") from None
        formats = {f.strip() for f in args.format.split(",") if f.strip()}
        written: list[Path] = []
        if "json" in formats:
            p = out_dir / "report.json"
            p.write_text(json.dumps(report, ensure_ascii=False, indent=1, default=str), encoding="utf-8")
            written.append(p)
        if "csv" in formats:
            p = out_dir / "report.csv"
            p.write_text(render_csv(report), encoding="utf-8")
            d = out_dir / "daily.csv"
            d.write_text(daily_csv(rc), encoding="utf-8")
            written += [p, d]
        if "html" in formats:
            p = out_dir / "report.html"
            p.write_text(render_html(report), encoding="utf-8")
            written.append(p)
        if args.write_store:
            target = store if store is not None else _open_source_store(
                argparse.Namespace(store_file=None, store_url=None, config=args.config), plant, reading=False)
            rows = report_rows(rc)
            target.write(rows)
            print(f"wrote {len(rows)} rows (acct_*) to the store", file=stream)
            if target is not store:
                target.close()
    finally:
        if store is not None:
            store.close()
    tot = report["totals"]
    print(f"{plant.enterprise.name} {period.label}: 综合能耗 {tot.get('tce')} tce (当量值)"
          + (f", {tot['tce_equal']} tce (等价值)" if tot.get("tce_equal") is not None else "")
          + (f"; budget {report['budget']['status']}" if report.get("budget") else ""), file=stream)
    for p in written:
        print(f"  {p}", file=stream)
    return 0
