"""Wide tables of a report (日报/月报 shape): one row per day or month, one column per product figure and meter.

Built from the report dict alone (what ``report.json`` holds), so every writer (CSV, Excel, HTML) shows the same
numbers the JSON does. Headers are Chinese with the unit in brackets, e.g. ``水泥熟料 产量 (t)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Column", "WideTable", "carrier_name", "combined", "grade_label", "level_name", "meter_name",
           "meter_table", "product_table", "status_label"]

_GRADE = {1: "1级", 2: "2级", 3: "3级", 4: "未达标"}
_STATUS = {1: "达到标杆", 2: "标杆与基准之间", 3: "未达基准", 4: "超过限额"}


def grade_label(grade: Any) -> str | None:
    """``1`` → ``1级`` … ``4`` → ``未达标`` (GB quota grade); None for no grade."""
    if grade is None:
        return None
    return _GRADE.get(int(grade), str(grade))


def status_label(status: Any) -> str | None:
    """Policy status ``1`` → ``达到标杆`` … ``4`` → ``超过限额``."""
    if status is None:
        return None
    return _STATUS.get(int(status), str(status))


def level_name(report: Mapping[str, Any], level: str) -> str:
    """Chinese name of a level (``baseline`` → ``基准``)."""
    return str(report.get("names", {}).get("levels", {}).get(level, level))


def carrier_name(report: Mapping[str, Any], carrier: str) -> str:
    """Chinese name of a carrier (``raw_coal`` → ``原煤``)."""
    return str(report.get("names", {}).get("carriers", {}).get(carrier, carrier))


def meter_name(report: Mapping[str, Any], meter: str) -> str:
    """``熟料产量计量 [clinker_scale]``."""
    name = report.get("names", {}).get("meters", {}).get(meter) or meter
    return str(name) if name == meter else f"{name} [{meter}]"


@dataclass(frozen=True, slots=True)
class Column:
    """One column: header (with unit), the JSON path it comes from (for checks), values, and its kind."""

    header: str
    path: str
    values: list[Any]
    kind: str = "number"  # number | label


@dataclass(frozen=True, slots=True)
class WideTable:
    """Rows keyed by day or month; ``columns`` in display order."""

    key_header: str
    keys: list[str]
    columns: list[Column]

    def rows(self) -> list[list[Any]]:
        """The table as rows, the key first."""
        return [[k, *(c.values[i] for c in self.columns)] for i, k in enumerate(self.keys)]

    @property
    def headers(self) -> list[str]:
        """The key header and every column header."""
        return [self.key_header, *(c.header for c in self.columns)]


def _section(report: Mapping[str, Any], by: str) -> tuple[str, Mapping[str, Any], list[str]]:
    if by == "day":
        daily = report.get("daily", {})
        return "daily", daily, list(daily.get("dates", []))
    monthly = report.get("monthly", {})
    return "monthly", monthly, list(monthly.get("months", []))


def product_table(report: Mapping[str, Any], by: str = "day") -> WideTable:
    """日报/月报 of the enterprise and products: 企业综合能耗, then per product 产量, 综合能耗, indicator, 等级."""
    section, data, keys = _section(report, by)
    cols = [Column("企业综合能耗 (kgce)", f"{section}.enterprise_kgce", list(data.get("enterprise_kgce", [])))]
    names = report.get("names", {}).get("indicators", {})
    for pid, p in data.get("products", {}).items():
        prod = report.get("products", {}).get(pid, {})
        name = prod.get("name") or pid
        unit = prod.get("unit", "")
        base = f"{section}.products.{pid}"
        cols += [
            Column(f"{name} 产量 ({unit})", f"{base}.output", list(p["output"])),
            Column(f"{name} 综合能耗 (kgce)", f"{base}.kgce", list(p["kgce"])),
            Column(f"{names.get(p['indicator'], p['indicator'])} ({p['unit']})", f"{base}.value", list(p["value"])),
            Column(f"{name} 等级", f"{base}.quota_grade", [grade_label(g) for g in p.get("quota_grade", [])],
                   "label"),
        ]
    return WideTable("日期" if by == "day" else "月份", keys, cols)


def meter_table(report: Mapping[str, Any], by: str = "day") -> WideTable:
    """Per meter consumption (or output) by day or month, in the meter's counter unit."""
    section, data, keys = _section(report, by)
    cols = [Column(f"{meter_name(report, m)} ({v['unit']})", f"{section}.meters.{m}.consumed", list(v["consumed"]))
            for m, v in data.get("meters", {}).items()]
    return WideTable("日期" if by == "day" else "月份", keys, cols)


def combined(tables: Sequence[WideTable]) -> WideTable:
    """Tables with the same keys side by side."""
    cols = [c for t in tables for c in t.columns]
    return WideTable(tables[0].key_header, tables[0].keys, cols)
