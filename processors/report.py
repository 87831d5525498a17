"""Period reports: recompute a period from counter readings and write it as JSON, CSV and HTML (and to the store).

    energymon report --config plant.yaml --month 2026-03 --out reports/2026-03
    energymon report --config plant.yaml --readings corrected.csv --day 2026-03-05 --write-store

Readings come from the plant's store (the SQLite file, InfluxDB through InfluxQL, or VictoriaMetrics; any
:class:`~energymon.interfaces.ReadingsSource`), from another store given on the command line, or from a CSV file
with the columns ``ts,meter_id,value`` (``ts`` in epoch ms or ISO 8601; naive times are the plant's local time; optional
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

from energymon import units
from energymon.config import InfluxStoreConfig, PlantConfig, SqliteStoreConfig, load_plant
from energymon.errors import InputError
from energymon.interfaces import ReadingsSource, Row, series_key
from energymon.processors.accounting import period_start
from energymon.processors.grading import LEVEL_NAMES
from energymon.processors.recompute import FLAG_NAMES, MeterReadings, Recomputation, recompute
from energymon.processors.report_cli import add_arguments
from energymon.processors.rules import PlantRules

__all__ = [
    "DECIMALS",
    "FORMATS",
    "LEVEL_ZH",
    "ROLE_ZH",
    "ReportPeriod",
    "add_arguments",
    "alert_rows",
    "build_report",
    "daily_csv",
    "load_readings_csv",
    "load_readings_store",
    "main_report",
    "parse_formats",
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
    "ratio6": 6,  # conversion factors (kgce per unit...)
    "kgce/m2": 3,
    "kgce/100m": 3,
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

    @staticmethod
    def days(first: str, last: str) -> ReportPeriod:
        """The days ``first`` to ``last``, both included (what ``--from``/``--to`` name on the command line).

        Raises:
            ValueError: a date does not parse, or ``last`` is before ``first``.
        """
        try:
            a, b = date.fromisoformat(first), date.fromisoformat(last)
        except ValueError as exc:
            raise ValueError(f"not a date YYYY-MM-DD: {exc}") from None
        if b < a:
            raise ValueError(f"--to {b} is before --from {a}")
        return ReportPeriod("range", a, b + timedelta(days=1))

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


def load_readings_store(
    store: ReadingsSource, plant: PlantConfig, start_ms: int, end_ms: int
) -> dict[str, MeterReadings]:
    """Read the counter readings of every meter from a store, in ``[start_ms, end_ms)``.

    Args:
        store: any store (:class:`~energymon.interfaces.ReadingsSource`: the SQLite file, InfluxDB through
            InfluxQL, VictoriaMetrics). Readings marked ``uncertain`` are left out.

    Raises:
        StoreError: the store could not be read.
    """
    out: dict[str, MeterReadings] = {}
    for meter in plant.meters:
        if meter.counter is None:
            continue
        tags = {"enterprise": plant.enterprise.uscc, "meter": meter.id, "quantity": meter.counter}
        values = store.query("reading", "value", tags=tags, start_ms=start_ms, end_ms=end_ms)
        uncertain = {t for _tags, t, v in store.query("reading", "uncertain", tags=tags, start_ms=start_ms,
                                                       end_ms=end_ms) if v}
        pairs = [(t, v) for _tags, t, v in values if t not in uncertain]
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
        out["reason"] = "本期无产量 (no output in the period)"
        return out
    levels = {name: rec[name] for name in LEVEL_NAMES if name in rec}
    if "rule" not in rec or rec.get("rule") is None:
        out["judgement"] = "不适用"
        out["reason"] = "基础数据中无该指标在此日期的等级 (no level in the reference data for this indicator and date)"
        return out
    if not levels and rec["rule"].get("missing"):
        out["judgement"] = "无数值"
        out["reason"] = f"no figure: {rec['rule']['missing']}"
        out["rule"] = rec["rule"]
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


def _building_report(rc: Recomputation, building: Any, tz: Any) -> dict[str, Any]:
    """Per-m² and per-person indicators of a public building over the report period (processors.building)."""
    from energymon.processors.building import building_block

    ent = _one(rc.enterprise, period="report") or {}
    kwh = 0.0
    for rec in _rows(rc.enterprise_carriers, period="report").to_dict("records"):
        if rec["carrier"] == "electricity":
            kwh += units.convert(float(rec["consumed"]), str(rec["unit"]), "kWh")
    start = datetime.fromtimestamp(rc.start_ms / 1000, tz)
    year_days = (date(start.year + 1, 1, 1) - date(start.year, 1, 1)).days
    block = building_block(building, kgce=float(ent.get("kgce", 0.0)), electricity_kwh=kwh,
                           days=(rc.end_ms - rc.start_ms) / 86_400_000, year_days=year_days)
    rounded: dict[str, Any] = _round_tree(block)
    return rounded


def _round_tree(node: Any, key: str = "") -> Any:
    """Round every number of a nested block: percentages to 2 decimals, kgce to 2, other figures to 4."""
    if isinstance(node, dict):
        return {k: _round_tree(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_round_tree(v, key) for v in node]
    if isinstance(node, bool) or not isinstance(node, float):
        return node
    kind = "pct" if key.endswith("_pct") else ("kgce" if key in ("kgce", "electricity_kwh") else "")
    return _round(node, kind)


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
    end_year = datetime.fromtimestamp((rc.end_ms - 1) / 1000, tz).year
    report["rules"]["grid_co2_factor"] = rules.grid_factor_text(end_year)
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
    if plant.building is not None:
        report["building"] = _building_report(rc, plant.building, tz)
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
    report["monthly"] = _monthly_block(rc)
    report["carriers"] = _carriers_block(rc)
    report["names"] = _names_block(rc)
    totals["missing"] = _missing_reasons(totals, report["carriers"], by_carrier)
    for block in products.values():
        block["missing"] = _missing_reasons(block, report["carriers"], block["energy_by_carrier"])
    report["notes"] = list(rc.missing)
    return report


#: Chinese names of the levels a value is graded against (GB quota grades, policy 标杆/基准).
LEVEL_ZH: dict[str, str] = {"grade_1": "1级", "grade_2": "2级", "grade_3": "3级（限额）", "benchmark": "标杆",
                            "baseline": "基准"}
#: Chinese names of meter roles in the accounting (``production``: a product's output counter).
ROLE_ZH: dict[str, str] = {"consumption": "消耗", "export": "外供", "recovered": "余热余能回收",
                           "in_house_medium": "自产耗能工质", "feedstock": "原料用能", "production": "产量计量"}
_BLOCK_ZH = {"tce_equal": "综合能耗 等价值", "co2_t": "CO2 排放"}


def _carrier_name(rules: PlantRules, carrier: str) -> str:
    names = [c.name_zh for c in rules.ref.coefficients if c.carrier == carrier]
    names += [r.name_zh for r in rules.ref.coefficient_ranges if r.carrier == carrier]
    if not names:
        return carrier
    return str(names[0]).removesuffix("（当量值）")


def _names_block(rc: Recomputation) -> dict[str, Any]:
    """Display names: levels, carriers, indicators, meters, roles and products in Chinese."""
    from energymon.refdata import ReferenceDataError

    rules = rc.rules
    indicators: dict[str, str] = {}
    for pid in rules.products:
        for ind, _c in rules.indicators(pid):
            try:
                indicators[ind] = str(rules.ref.indicator(ind).name_zh)
            except ReferenceDataError:
                indicators[ind] = ind
    carriers = sorted({i.meter.carrier for i in rules.meters.values() if i.meter.carrier is not None})
    return {
        "levels": dict(LEVEL_ZH),
        "roles": dict(ROLE_ZH),
        "carriers": {c: _carrier_name(rules, c) for c in carriers},
        "indicators": indicators,
        "meters": {m.id: m.name or m.id for m in rules.plant.meters},
        "processes": {p.id: p.name or p.id for p in rules.plant.processes},
    }


def _carriers_block(rc: Recomputation) -> dict[str, Any]:
    """Per carrier, the factors used on the window's last day per carrier unit, and where each comes from.

    ``kgce_per_unit`` is 当量值 (a plant's measured LHV when one is configured, then ``default_*`` is the
    reference value it replaces); ``equal_kgce_per_unit`` 等价值; ``co2_kg_per_unit``; a ``*_source`` for each
    (for a missing factor: why it is missing).
    """
    from energymon.refdata import ReferenceDataError

    rules = rc.rules
    day = rules.local_date(rc.end_ms - 1)
    out: dict[str, Any] = {}
    for carrier, unit in rc.carrier_units.items():
        meter_id = next((m for m, i in rules.meters.items() if i.meter.carrier == carrier and i.unit == unit), None)
        if meter_id is None:
            continue
        block: dict[str, Any] = {"name_zh": _carrier_name(rules, carrier), "unit": unit, "as_of": day.isoformat()}
        try:
            f = rules.factors(meter_id, day)
        except ReferenceDataError as exc:
            block.update(kgce_per_unit=None, kgce_source=f"缺少折标系数 (no coefficient): {exc}",
                         equal_kgce_per_unit=None, equal_source="缺少折标系数", co2_kg_per_unit=None,
                         co2_source="缺少折标系数")
            out[carrier] = block
            continue
        block.update(kgce_per_unit=_round(f.kgce, "ratio6"), kgce_source=f.kgce_source,
                     measured=any(ov.carrier == carrier and ov.effective_from <= day <= (ov.effective_to or date.max)
                                  for ov in rules.acc.coefficient_overrides),
                     equal_kgce_per_unit=_round(f.kgce_equal, "ratio6"), equal_source=f.equal_source,
                     co2_kg_per_unit=_round(f.co2_kg, "ratio6"), co2_source=f.co2_source)
        if block["measured"]:
            try:
                ref = rules.ref.coefficient(carrier, on=day)
                block.update(default_kgce_per_unit=_round(ref.kgce_per_unit, "ratio6"), default_unit=ref.unit,
                             default_source=f"{ref.source} ({ref.confidence})")
            except ReferenceDataError as exc:
                block.update(default_kgce_per_unit=None, default_source=str(exc))
        out[carrier] = block
    return out


def _missing_reasons(block: Mapping[str, Any], carriers: Mapping[str, Any],
                     used: Mapping[str, Any]) -> dict[str, str]:
    """Why 等价值 or CO2 is not given for a scope (the carriers whose factor is missing, and what to set)."""
    out: dict[str, str] = {}
    checks = (("tce_equal", "equal_kgce_per_unit", "equal_source"), ("co2_t", "co2_kg_per_unit", "co2_source"))
    for key, factor, source in checks:
        if block.get(key) is not None or block.get("tce") is None:
            continue
        lacking = [f"{carriers[c]['name_zh']}: {carriers[c][source]}" for c in used
                   if c in carriers and carriers[c].get(factor) is None]
        out[key] = (f"{_BLOCK_ZH[key]}缺少系数 — " + "; ".join(lacking)) if lacking else \
            f"{_BLOCK_ZH[key]}: 部分日期缺少系数 (a factor is missing on some days; see notes)"
    return out


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
        "completeness": {}, "consistency": {}, "timestamps": {}, "counter_resets": {},
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
                "incomplete_detail": [
                    {"day": _day(int(r["start"]), tz), "readings": int(r["readings"]), "expected": int(r["expected"]),
                     "completeness_pct": _round(r["completeness_pct"], "pct")}
                    for r in bad.to_dict("records")],
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
    # 计数器复位/更换未登记: the counter rules took a new level as an unrecorded reset or swap; nothing was booked
    # across the jump, so the energy manager should record the change (accounting.replacements) and recompute
    days = _rows(rc.meters, period="day")
    if not days.empty and "n_rebased" in days.columns:
        days = days[(days["start"] >= rc.start_ms) & (days["start"] < rc.end_ms) & (days["n_rebased"] > 0)]
        for meter, g in days.groupby("meter", sort=False):
            out["counter_resets"][str(meter)] = {
                "resets": int(g["n_rebased"].sum()),
                "days": [_day(int(s), tz) for s in g["start"]],
                "note": "计数器复位或更换未登记，跨越处未计能耗；请在 accounting.replacements 中登记后重算 "
                        "(counter reset or swapped without a recorded replacement; nothing booked across it)",
            }
    out["gaps"] = _gaps_block(rc)
    comp = out["completeness"]
    cons = out["consistency"]
    out["summary"] = {
        "counter_resets": sum(v["resets"] for v in out["counter_resets"].values()),
        "items": len(comp),
        "items_complete": sum(1 for v in comp.values() if v["incomplete_days"] == 0),
        "incomplete_item_days": sum(v["incomplete_days"] for v in comp.values()),
        "inconsistent_item_months": sum(1 for m in cons.values() for v in m.values() if not v["consistent"]),
        "timestamp_item_days_off": sum(v["days_off"] for v in out["timestamps"].values()),
        "gaps": len(out["gaps"]),
    }
    return out


def _gaps_block(rc: Recomputation) -> list[dict[str, Any]]:
    """Each estimated gap: meter, local start and end, hours, the amount booked across it, and how it was booked.

    ``amount`` is the whole interval's counter increase; ``in_window`` is the part of it booked inside the
    report's window (spread in proportion to time, or, under gap policy ``flag``, in the slot where it ends).
    """
    gaps = rc.gaps
    if gaps.empty:
        return []
    rules = rc.rules
    tz = rules.tz
    flag = rules.acc.gap_policy.mode == "flag"
    out = []
    for rec in gaps.sort_values(["meter", "start"]).to_dict("records"):
        s, e, amount = int(rec["start"]), int(rec["end"]), float(rec["amount"])
        if flag:
            inside = amount if rc.start_ms < e <= rc.end_ms else 0.0
        else:
            overlap = max(0, min(e, rc.end_ms) - max(s, rc.start_ms))
            inside = amount * overlap / (e - s) if e > s else 0.0
        info = rules.meters[str(rec["meter"])]
        out.append({"meter": str(rec["meter"]), "start": _iso(s, tz), "end": _iso(e, tz),
                    "start_day": _day(s, tz), "end_day": _day(e - 1, tz),
                    "hours": _round((e - s) / 3_600_000, "pct"), "amount": _round(amount, "consumed"),
                    "in_window": _round(inside, "consumed"), "unit": info.unit,
                    "booked": "flag" if flag else "spread"})
    return out


def _meters_block(rc: Recomputation) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rules = rc.rules
    for rec in _rows(rc.meters, period="report").to_dict("records"):
        info = rules.meters[rec["meter"]]
        role = "production" if info.meter.carrier is None and rec["meter"] in rules.output_meters \
            else info.role.value
        block: dict[str, Any] = {"name": info.meter.name or rec["meter"], "carrier": info.meter.carrier,
                                 "role": role, "process": info.meter.process, "level": info.meter.level,
                                 "unit": rec["unit"], "consumed": _round(rec["consumed"], "consumed")}
        if role == "production":
            block["products"] = list(rules.output_meters[rec["meter"]])
        for key, kind in (("kgce", "kgce"), ("kgce_equal", "kgce"), ("co2_kg", "co2_kg")):
            if key in rec and isinstance(rec[key], float) and math.isfinite(rec[key]):
                block[key] = _round(rec[key], kind)
        block["flags"] = {name: int(rec.get(f"n_{name}", 0) or 0) for name in FLAG_NAMES}
        block["rejected_readings"] = int(rec.get("n_rejected", 0) or 0)
        out[rec["meter"]] = block
    return out


def _int_or_none(x: Any) -> int | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) else None


def _monthly_block(rc: Recomputation) -> dict[str, Any]:
    """Month by month (the months that start inside the window, so a year report's 月报 rows): enterprise kgce,
    per product output, kgce, indicator value and grade, per meter consumption."""
    tz = rc.rules.tz

    def inside(f: pd.DataFrame) -> pd.DataFrame:
        f = _rows(f, period="month")
        return f[(f["start"] >= rc.start_ms) & (f["start"] < rc.end_ms)] if not f.empty else f

    ent = inside(rc.enterprise)
    out: dict[str, Any] = {
        "months": [datetime.fromtimestamp(int(x) / 1000, tz).strftime("%Y-%m") for x in ent["start"]]
        if not ent.empty else [],
        "enterprise_kgce": [_round(x, "kgce") for x in ent["kgce"]] if not ent.empty else [],
        "products": {}, "meters": {},
    }
    if not out["months"]:
        return out
    for pid, product in rc.rules.products.items():
        rows = inside(_rows(rc.products, product=pid, indicator=product.indicator))
        if rows.empty:
            continue
        unit = rc.rules.indicator_unit(product.indicator)
        out["products"][pid] = {
            "indicator": product.indicator, "unit": unit,
            "output": [_round(x, "output") for x in rows["output"]],
            "kgce": [_round(x, "kgce") for x in rows["kgce"]],
            "value": [_round(x, unit) for x in rows["value"]],
            "quota_grade": [_int_or_none(x) for x in rows.get("quota_grade", pd.Series([None] * len(rows)))],
        }
    for meter, g in inside(rc.meters).groupby("meter", sort=False):
        out["meters"][str(meter)] = {"unit": str(g["unit"].iloc[0]),
                                     "consumed": [_round(x, "consumed") for x in g["consumed"]]}
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
            "quota_grade": [_int_or_none(x) for x in rows.get("quota_grade", pd.Series([None] * len(rows)))],
            "status": [_int_or_none(x) for x in rows.get("status", pd.Series([None] * len(rows)))],
            "levels": {name: _round(rows[name].iloc[-1], unit) for name in LEVEL_NAMES
                       if name in rows.columns and pd.notna(rows[name].iloc[-1])},
        }
    meters = _rows(rc.meters, period="day")
    out["meters"] = {}
    if not meters.empty:
        meters = meters[(meters["start"] >= rc.start_ms) & (meters["start"] < rc.end_ms)]
        for meter, g in meters.groupby("meter", sort=False):
            out["meters"][str(meter)] = {
                "unit": str(g["unit"].iloc[0]),
                "consumed": [_round(x, "consumed") for x in g["consumed"]],
                **({"kgce": [_round(x, "kgce") for x in g["kgce"]]}
                   if "kgce" in g.columns and g["kgce"].notna().all() else {}),
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

    for section in ("period", "totals", "building", "products", "budget", "balance", "data_quality", "meters",
                    "daily"):
        node = report.get(section)
        if isinstance(node, Mapping) and section in ("products", "balance", "meters"):
            for item, sub in node.items():
                walk(section, item, "", sub)
        elif node is not None:
            walk(section, "", "", node)
    for note in report.get("notes", []):
        w.writerow(["notes", "", "", note])
    return buf.getvalue()


def daily_csv(report: Mapping[str, Any]) -> str:
    """The 日报 as one row per local day: 企业综合能耗, per product 产量 / 综合能耗 / indicator / 等级, then every
    meter's consumption (or output) in its unit. Headers are Chinese with units; grades are labels (``1级``)."""
    from energymon.processors.report_tables import combined, meter_table, product_table

    table = combined([product_table(report, "day"), meter_table(report, "day")])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.headers)
    for row in table.rows():
        w.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


# --------------------------------------------------------------------------- HTML


def render_html(report: Mapping[str, Any]) -> str:
    """The report as a self-contained HTML document (see :mod:`.report_html`)."""
    from energymon.processors.report_html import render_html as render

    return render(report)


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
            raise InputError("--from", "needs --to (the last day, included)")
        flag, kind, text, end = "--from/--to", "range", args.date_from, args.date_to
    shown = f"{flag} {text}" + (f" {end}" if end else "")
    try:
        period = ReportPeriod.days(text, end) if kind == "range" and end else ReportPeriod.parse(kind, text)
    except ValueError as exc:
        forms = {"day": "YYYY-MM-DD", "month": "YYYY-MM", "year": "YYYY", "range": "YYYY-MM-DD YYYY-MM-DD"}
        raise InputError(shown, f"not a valid {kind} ({exc}); expected {forms[kind]}") from None
    if not (period.start.year >= 2000 and period.end.year <= 2100):
        raise InputError(shown, "the period must lie within 2000-2099")
    return period


#: What ``--format`` accepts.
FORMATS = ("json", "csv", "xlsx", "html", "pdf")


def parse_formats(text: str) -> set[str]:
    """``json,csv,xlsx`` → the set of formats.

    Raises:
        InputError: an unknown format, or none at all.
    """
    formats = {f.strip().lower() for f in text.split(",") if f.strip()}
    unknown = sorted(formats - set(FORMATS))
    if unknown:
        raise InputError("--format", f"unknown format {', '.join(unknown)} (one or more of {', '.join(FORMATS)}, "
                         "comma-separated)")
    if not formats:
        raise InputError("--format", f"names no format (one or more of {', '.join(FORMATS)})")
    return formats


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
    cfg = plant.processor.store
    if args.store_url is not None:
        # the plant's InfluxDB settings (database, token, api) apply to another URL too
        try:
            base = (cfg if isinstance(cfg, InfluxStoreConfig)
                    else InfluxStoreConfig(type="influxdb", url=args.store_url))
            store = InfluxStore(base.model_copy(update={"url": args.store_url}))
        except ValueError as exc:
            raise InputError(f"--store-url {args.store_url}", str(exc).splitlines()[-1]) from None
    elif cfg is None:
        raise InputError("--readings", "no readings source: give --readings, --store-file or --store-url (the "
                                       "plant has no processor.store)")
    elif isinstance(cfg, SqliteStoreConfig):
        if reading:
            _existing_sqlite(Path(cfg.path), f"processor.store.path of {args.config}")
        return SqliteStore(cfg)
    else:
        store = InfluxStore(cfg)
    try:
        store.server()  # refuse at once a store that cannot be read back (UnreadableStoreError)
    except BaseException:
        store.close()
        raise
    return store


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
        parse_formats(args.format)
        _check_lookback(args)
    except InputError as exc:
        print(f"energymon report: 错误 (error): {exc}", file=sys.stderr)
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
                print(f"energymon report: 警告 (warning): {args.readings}: {len(csv_file.conflicts)} conflicting "
                      f"duplicate reading(s), e.g. meter {first.meter} lines {', '.join(map(str, first.lines))} "
                      f"(values {', '.join(f'{v:g}' for v in first.values)}); the last row in the file is used "
                      "(data_quality.readings_file.conflicts)", file=sys.stderr)
            if csv_file.unknown_meters:
                print(f"energymon report: 警告 (warning): {args.readings}: rows of meter(s) not in the plant left out: "
                      f"{', '.join(csv_file.unknown_meters[:10])}", file=sys.stderr)
        out_dir = args.out or Path(f"report-{period.label}")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--out {out_dir}", f"cannot create the output directory: {exc.strerror or exc}") from None
        formats = parse_formats(args.format)
        written: list[Path] = []
        if "json" in formats:
            p = out_dir / "report.json"
            p.write_text(json.dumps(report, ensure_ascii=False, indent=1, default=str), encoding="utf-8")
            written.append(p)
        if "csv" in formats:
            p = out_dir / "report.csv"
            p.write_text(render_csv(report), encoding="utf-8-sig")  # the BOM: Excel on Chinese Windows reads UTF-8
            d = out_dir / "daily.csv"
            d.write_text(daily_csv(report), encoding="utf-8-sig")
            written += [p, d]
        if "xlsx" in formats:
            from energymon.processors.report_xlsx import write_xlsx

            written.append(write_xlsx(report, out_dir / "report.xlsx"))
        if "html" in formats or "pdf" in formats:
            p = out_dir / "report.html"
            p.write_text(render_html(report), encoding="utf-8")
            if "html" in formats:
                written.append(p)
        if "pdf" in formats:
            from energymon.processors.report_pdf import print_pdf

            try:
                written.append(print_pdf(out_dir / "report.html", out_dir / "report.pdf"))
            finally:
                if "html" not in formats:
                    (out_dir / "report.html").unlink()
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
          + (f"; 用能预算 budget {report['budget']['status']}" if report.get("budget") else ""), file=stream)
    for p in written:
        print(f"  {p}", file=stream)
    return 0
