"""The alert payload (schema 2) from real records of every rule kind: category, quantity and unit, the rule's
duration, local time beside UTC, the enterprise's name and code, the meter's name, the provincial gauge and
data-item codes where the plant maps them; and alerts/README.md's examples match what is really emitted."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from test_provincial_uplink import plant_text

from energymon.alerts.engine import Alert, AlertEngine
from energymon.alerts.payload import CATEGORIES, SCHEMA_VERSION, alert_payload, payload_context
from energymon.alerts.rules import build_rules
from energymon.clock import ManualClock
from energymon.config import PlantConfig, parse_plant
from energymon.interfaces import series_key
from energymon.schema import Point, datetime_to_ms

README = (Path(__file__).resolve().parent.parent / "alerts" / "README.md").read_text(encoding="utf-8")
SH = ZoneInfo("Asia/Shanghai")
USCC = "91530102MA6K7LQ8RH"
S = 1000
T0 = datetime_to_ms(datetime(2025, 3, 3, 9, 0, tzinfo=SH))  # a Monday morning, local time

RULES: list[dict[str, Any]] = [
    {"kind": "threshold", "id": "demand_over_contract", "meter": "incoming", "quantity": "power_active",
     "above": 4500, "clear_above": 4300, "for_secs": 60, "summary": "进线有功功率超过合同需量"},
    {"kind": "offline", "id": "meter_offline", "ids": ["incoming"]},
    {"kind": "indicator", "id": "clinker_limit_month", "condition": "over_limit", "period": "month"},
    {"kind": "indicator", "id": "clinker_below_baseline", "condition": "below_baseline", "period": "ytd"},
    {"kind": "completeness", "id": "daily_completeness", "meters": ["clinker_scale"]},
    {"kind": "budget", "id": "energy_budget"},
    {"kind": "counter_backwards", "id": "counter_backwards", "meters": ["incoming"]},
    {"kind": "calibration_due", "id": "calibration_due", "days_before": 30},
]


def plant(tmp_path: Path) -> PlantConfig:
    data = yaml.safe_load(plant_text(tmp_path, "https://platform.example/api"))
    data["alerts"] = {"rules": RULES}
    data["meters"][0]["calibration_due"] = "2025-04-01"
    return parse_plant(yaml.safe_dump(data, allow_unicode=True), "plant.yaml")


def pt(meter: str, quantity: str, value: float, ts_ms: int, unit: str = "kW") -> Point:
    return Point(meter=meter, quantity=quantity, value=value, unit=unit, ts_ms=ts_ms)


def records(p: PlantConfig) -> dict[str, list[Alert]]:
    """Drive the real rules until each category has fired (and some resolved): category → records."""
    got: list[Alert] = []
    engine = AlertEngine(build_rules(p), notify=got.append, clock=ManualClock(datetime(2030, 1, 1, tzinfo=UTC)))
    engine.tick(T0)
    # 超限: 4,632.5 kW held for a minute, then back under the clear threshold
    engine.observe([pt("incoming", "power_active", 4632.5, T0 + 1 * S)])
    engine.observe([pt("incoming", "power_active", 4700.0, T0 + 61 * S)])
    engine.observe([pt("incoming", "power_active", 4100.0, T0 + 120 * S)])
    # 数据中断: incoming silent after its last good reading (5 s polling: 3 intervals = 15 s)
    engine.observe([pt("incoming", "energy_active_import", 1000.0, T0 + 121 * S, "kWh")])
    engine.tick(T0 + 200 * S)
    engine.observe([pt("incoming", "energy_active_import", 1001.0, T0 + 260 * S, "kWh")])
    # 计量异常: the counter goes back without a replacement record
    engine.observe([pt("incoming", "energy_active_import", 900.0, T0 + 265 * S, "kWh")])
    # 超限额 and 未达基准值: the accounting's indicator rows
    march = datetime_to_ms(datetime(2025, 3, 1, tzinfo=SH))
    key = series_key("indicator", enterprise=USCC, product="clinker", indicator="cement_clinker", period="month")
    engine.observe_rows([(key, {"value": 121.0, "status": 4, "quota_grade": 4, "limit": 117.0, "baseline": 117.0,
                                "output": 5000}, march)])
    ytd = series_key("indicator", enterprise=USCC, product="clinker", indicator="cement_clinker", period="ytd")
    engine.observe_rows([(ytd, {"value": 118.0, "status": 3, "quota_grade": 2, "baseline": 117.0,
                                "output": 200_000}, march)])
    # 超预算
    budget = series_key("budget", enterprise=USCC, scope="enterprise")
    engine.observe_rows([(budget, {"ytd_share": 0.85}, march + 2 * 86_400_000)])
    # 完整率: clinker_scale (5 s polling) sends one point in ten on 2025-03-04
    day = date(2025, 3, 4)
    start = datetime_to_ms(datetime(day.year, day.month, day.day, tzinfo=SH))
    engine.tick(start)
    engine.observe([pt("clinker_scale", "mass_total", float(i), start + i * 50 * S, "t") for i in range(1728)])
    end = datetime_to_ms(datetime.combine(day + timedelta(days=1), datetime.min.time(), SH))
    engine.tick(end + 600 * S)
    # 检定到期: 30 days before 2025-04-01 (local midnight)
    engine.tick(datetime_to_ms(datetime(2025, 3, 2, tzinfo=SH)) + 86_400_000 * 5)
    out: dict[str, list[Alert]] = {}
    context = payload_context(p)
    for a in got:
        out.setdefault(context.rules[a.rule_id].category, []).append(a)
    return out


def test_every_category_is_emitted_with_quantity_unit_names_and_local_time(tmp_path: Path) -> None:
    p = plant(tmp_path)
    context = payload_context(p)
    by_category = records(p)
    assert set(by_category) == set(CATEGORIES) - {"other"}
    over = [alert_payload(a, delivery_id="d", context=context) for a in by_category["over_limit"]]
    firing = next(x for x in over if x["event"] == "firing")
    assert firing["schema_version"] == SCHEMA_VERSION and firing["category_name"] == "超限"
    assert (firing["value"], firing["unit"], firing["threshold"], firing["threshold_unit"]) == (4700.0, "kW", 4500.0,
                                                                                                 "kW")
    assert firing["quantity"] == "power_active" and firing["for_secs"] == 60
    assert firing["enterprise"] == USCC and firing["enterprise_name"] == "示例水泥有限公司"
    assert firing["meter"] == "incoming" and firing["meter_name"] == "110 kV 进线总表"
    assert firing["provincial"] == {"gauges": ["G-incoming"], "data_items": [{"id": "elec_total",
                                                                              "name": "全厂用电量"}]}
    assert firing["fired_at"] == "2025-03-03T01:01:01.000Z"
    assert firing["fired_local"] == "2025-03-03T09:01:01.000+08:00" and firing["timezone"] == "Asia/Shanghai"
    assert firing["handling"] == "open" and firing["delivery_id"] == "d"
    off = alert_payload(by_category["data_interruption"][0], delivery_id="d", context=context)
    assert off["category_name"] == "数据中断" and off["unit"] == "s" and off["threshold"] == 15.0
    assert off["outage_began_ms"] == T0 + 121 * S  # the last good reading
    assert off["outage_began_local"] == "2025-03-03T09:02:01.000+08:00"
    quota = alert_payload(by_category["over_quota"][0], delivery_id="d", context=context)
    assert quota["category_name"] == "超限额" and quota["unit"] == "kgce/t" and quota["source_name"] == "水泥熟料"
    comp = alert_payload(by_category["completeness"][0], delivery_id="d", context=context)
    assert comp["category_name"] == "完整率" and comp["unit"] == "%" and comp["value"] < 90
    assert comp["meter_name"] == "熟料产量计量" and comp["source_kind"] == "item"
    fault = alert_payload(by_category["metering_fault"][0], delivery_id="d", context=context)
    assert fault["unit"] == "kWh" and fault["value"] == 900.0 and fault["threshold"] == 1001.0
    cal = alert_payload(by_category["calibration_due"][0], delivery_id="d", context=context)
    assert cal["unit"] == "d" and cal["category_name"] == "检定到期"


def readme_examples() -> dict[str, dict[str, Any]]:
    found = re.findall(r"<!-- payload: (\w+) -->\s*```json\n(.*?)```", README, re.S)
    return {category: json.loads(text) for category, text in found}


def test_the_readme_has_an_example_per_category_that_matches_a_real_record(tmp_path: Path) -> None:
    examples = readme_examples()
    assert set(examples) == set(CATEGORIES) - {"other"}
    p = plant(tmp_path)
    context = payload_context(p)
    by_category = records(p)
    fixed = ("schema_version", "category", "category_name", "rule_kind", "quantity", "unit", "threshold_unit",
             "source_kind", "timezone", "enterprise", "enterprise_name")
    for category, example in examples.items():
        real = alert_payload(by_category[category][0], delivery_id="x", context=context)
        real["sent_at"] = "2025-03-03T01:01:01.123Z"
        extra = set(example) - set(real)
        assert not extra, f"{category}: the README shows fields no record has: {extra}"
        for key, value in example.items():
            if key in fixed:
                assert value == real[key], f"{category}.{key}: README {value!r}, real {real[key]!r}"
            elif value is not None and real[key] is not None:
                assert isinstance(value, type(real[key])) or (
                    isinstance(value, int | float) and isinstance(real[key], int | float)), f"{category}.{key}"
    full = examples["over_limit"]
    real = alert_payload(by_category["over_limit"][0], delivery_id="x", context=context)
    assert set(full) == set(real) | {"sent_at"}, "the full example lists every field"
