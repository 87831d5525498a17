"""Every configured rule kind, built from a plant file by ``build_rules`` and driven through the engine:
indicator, budget, offline (meters, gateways, repair clock), completeness, range, counter_backwards,
calibration_due; plus the cross-object checks of the alerts section."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from energymon.alerts.engine import Alert, AlertEngine, AlertState
from energymon.alerts.rules import ReplacementLog, ReplacementRecord, build_rules
from energymon.alerts.state import AlertStore
from energymon.alerts.workdays import add_working_days, is_working_day
from energymon.clock import ManualClock
from energymon.config import PlantConfig, parse_plant
from energymon.errors import ConfigError
from energymon.interfaces import Row, series_key
from energymon.schema import Point, Quality, datetime_to_ms

TZ = ZoneInfo("Asia/Shanghai")
USCC = "91530102MA6K7LQ8RH"
S = 1000
T0 = datetime_to_ms(datetime(2025, 3, 3, 8, 0, tzinfo=TZ))  # Monday 08:00 local

BASE: dict[str, Any] = {
    "version": 1,
    "enterprise": {"uscc": USCC, "name": "示例水泥有限公司", "industry_code": "C3011", "timezone": "Asia/Shanghai"},
    "processes": [{"id": "kiln"}],
    "buses": [{"type": "modbus_tcp", "id": "plant_tcp", "host": "127.0.0.1", "port": 502}],
    "meters": [
        {"id": "kiln_drive", "carrier": "electricity", "level": 2, "process": "kiln",
         "counter": "energy_active_import", "calibration_due": "2025-04-01",
         "source": {"type": "modbus", "bus": "plant_tcp", "unit_id": 3, "poll_group": "fast", "registers": [
             {"quantity": "energy_active_import", "address": 0, "type": "uint32", "scale": 0.1, "unit": "kWh",
              "kind": "counter", "counter_max": 429496729.5},
             {"quantity": "power_active", "address": 2, "type": "float32", "unit": "kW"}]}},
        {"id": "clinker_scale", "level": 2, "process": "kiln", "counter": "mass_total",
         "source": {"type": "modbus", "bus": "plant_tcp", "unit_id": 11, "registers": [
             {"quantity": "mass_total", "address": 0, "type": "uint32", "scale": 0.001, "unit": "t",
              "kind": "counter"}]}},
    ],
    "products": [{"id": "clinker", "unit": "t", "indicator": "cement_clinker",
                  "output": {"meter": "clinker_scale", "quantity": "mass_total"},
                  "boundary": {"processes": ["kiln"]}}],
    "gateway": {"id": "gw1", "poll_groups": [{"id": "default", "interval_secs": 60},
                                             {"id": "fast", "interval_secs": 15}]},
}


def plant(*rules: dict[str, Any], **extra: Any) -> PlantConfig:
    data = copy.deepcopy(BASE)
    data["alerts"] = {"rules": list(rules)}
    data.update(extra)
    return parse_plant(yaml.safe_dump(data, allow_unicode=True), "test-plant.yaml")


class Recorder:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def __call__(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def events(self) -> list[tuple[str, str]]:
        return [(a.id, a.event) for a in self.alerts]


def engine_for(p: PlantConfig, *, store: AlertStore | None = None, **kw: Any) -> tuple[AlertEngine, Recorder]:
    rec = Recorder()
    engine = AlertEngine(build_rules(p, **kw), notify=rec, clock=ManualClock(datetime(2030, 1, 1, tzinfo=UTC)),
                         store=store)
    return engine, rec


def point(meter: str, quantity: str, value: float | None, ts_ms: int, quality: Quality | None = None) -> Point:
    q = quality or (Quality.BAD if value is None else Quality.GOOD)
    return Point(meter=meter, quantity=quantity, value=value, unit="kWh", ts_ms=ts_ms, quality=q)


# --------------------------------------------------------------------------- indicator


def indicator_row(fields: dict[str, float], ts_ms: int, *, period: str = "month", product: str = "clinker") -> Row:
    key = series_key("indicator", enterprise=USCC, product=product, indicator="cement_clinker", period=period)
    return (key, fields, ts_ms)


MARCH = datetime_to_ms(datetime(2025, 3, 1, tzinfo=TZ))
APRIL = datetime_to_ms(datetime(2025, 4, 1, tzinfo=TZ))


def test_indicator_over_limit_on_the_monthly_value() -> None:
    engine, rec = engine_for(plant({"kind": "indicator", "id": "clinker_limit_month", "period": "month"}))
    over = {"value": 121.0, "status": 4, "quota_grade": 4, "limit": 117.0, "baseline": 117.0, "output": 5000}
    fine = {"value": 108.0, "status": 2, "quota_grade": 2, "limit": 117.0, "baseline": 117.0, "output": 9000}
    other = series_key("energy", enterprise=USCC, meter="kiln_drive")
    engine.observe_rows([(other, {"kgce": 5.0}, MARCH), indicator_row(over, MARCH, period="day")])
    assert rec.alerts == []  # other measurements and other periods say nothing
    engine.observe_rows([indicator_row(over, MARCH)])
    assert rec.events() == [("clinker_limit_month:clinker", "firing")]
    alert = rec.alerts[0]
    assert (alert.value, alert.threshold, alert.started_ms) == (121.0, 117.0, MARCH)
    assert "clinker" in alert.summary and "限额" in alert.summary
    engine.observe_rows([indicator_row(over, MARCH)])  # the same month again: no news
    engine.observe_rows([indicator_row(fine, MARCH)])
    assert rec.events()[-1] == ("clinker_limit_month:clinker", "resolved")
    engine.observe_rows([indicator_row(over, APRIL)])
    engine.observe_rows([indicator_row(fine, MARCH)])  # a late row of March does not clear April's alert
    assert [a.event for a in rec.alerts] == ["firing", "resolved", "firing"]


def test_indicator_below_baseline_yearly_with_min_output_and_as_of() -> None:
    rule = {"kind": "indicator", "id": "clinker_baseline_year", "condition": "below_baseline", "period": "year",
            "product": "clinker", "min_output": 1000, "severity": "critical", "audience": ["regulator"]}
    engine, rec = engine_for(plant(rule))
    year = datetime_to_ms(datetime(2025, 1, 1, tzinfo=TZ))
    worse = {"value": 118.0, "status": 3, "quota_grade": 2, "baseline": 117.0, "output": 500}
    engine.observe_rows([indicator_row(worse, year, period="year")])
    assert rec.alerts == []  # too little output yet
    worse["output"] = 200_000
    worse["as_of_ms"] = float(MARCH)
    engine.observe_rows([indicator_row(worse, year, period="year"),
                         indicator_row(worse, year, period="year", product="cement")])  # another product
    assert rec.events() == [("clinker_baseline_year:clinker", "firing")]
    assert rec.alerts[0].started_ms == MARCH and rec.alerts[0].threshold == 117.0
    assert rec.alerts[0].severity == "critical" and rec.alerts[0].audience == ("regulator",)
    ungraded = {"value": 100.0, "output": 300_000}  # no levels in force: says nothing
    engine.observe_rows([indicator_row(ungraded, year, period="year")])
    assert len(rec.alerts) == 1


# --------------------------------------------------------------------------- budget


def budget_row(share: float, ts_ms: int, scope: str = "enterprise") -> Row:
    return (series_key("budget", enterprise=USCC, scope=scope), {"ytd_share": share}, ts_ms)


def test_budget_climbs_80_90_100_and_resolves_below_the_margin() -> None:
    engine, rec = engine_for(plant({"kind": "budget", "id": "budget"}))
    t = MARCH
    for share in (0.5, 0.79):
        t += 86_400_000
        engine.observe_rows([budget_row(share, t)])
    assert rec.alerts == []
    steps = [0.81, 0.85, 0.91, 0.89, 1.02, 0.95, 0.79, 0.78, 0.77]
    for share in steps:
        t += 86_400_000
        engine.observe_rows([budget_row(share, t)])
    assert [(a.event, a.severity, a.threshold) for a in rec.alerts] == [
        ("firing", "info", 80.0),
        ("escalated", "warning", 90.0),
        ("escalated", "critical", 100.0),
        ("resolved", "critical", 100.0),
    ]
    assert rec.alerts[2].audience == ("energy_manager", "regulator")
    assert rec.alerts[2].value == pytest.approx(102.0)
    assert rec.alerts[3].value == pytest.approx(77.0)  # 78 % is inside the 2-point margin


def test_budget_scope_filter() -> None:
    engine, rec = engine_for(plant({"kind": "budget", "id": "kiln_budget", "scope": "kiln"}))
    engine.observe_rows([budget_row(0.95, MARCH), budget_row(0.95, MARCH, scope="kiln")])
    assert rec.events() == [("kiln_budget:kiln", "firing")]


# --------------------------------------------------------------------------- offline


def test_meter_offline_after_n_intervals_by_event_time() -> None:
    # kiln_drive polls every 15 s, clinker_scale every 60 s: 3 intervals = 45 s and 180 s
    engine, rec = engine_for(plant({"kind": "offline", "id": "meter_offline"}))
    engine.tick(T0)  # the watch starts
    engine.observe([point("kiln_drive", "power_active", 10.0, T0 + 10 * S),
                    point("clinker_scale", "mass_total", 1.0, T0 + 10 * S)])
    engine.observe([point("kiln_drive", "power_active", None, T0 + 25 * S)])  # bad: not data
    engine.tick(T0 + 54 * S)
    assert rec.alerts == []
    engine.tick(T0 + 55 * S)
    assert rec.events() == [("meter_offline:kiln_drive", "firing")]
    assert rec.alerts[0].started_ms == T0 + 55 * S  # last good point + 3 intervals
    engine.tick(T0 + 120 * S)
    assert len(rec.alerts) == 1
    engine.observe([point("kiln_drive", "power_active", 11.0, T0 + 130 * S)])
    assert rec.events()[-1] == ("meter_offline:kiln_drive", "resolved")
    engine.tick(T0 + 190 * S)
    assert rec.events()[-1] == ("meter_offline:clinker_scale", "firing")


def test_meter_never_heard_from_counts_from_the_first_tick() -> None:
    engine, rec = engine_for(plant({"kind": "offline", "id": "meter_offline", "ids": ["kiln_drive"]}))
    engine.tick(T0)
    engine.tick(T0 + 44 * S)
    assert rec.alerts == []
    engine.tick(T0 + 45 * S)
    assert rec.events() == [("meter_offline:kiln_drive", "firing")]


def test_offline_escalates_after_three_working_days_local_time() -> None:
    friday_3pm = datetime_to_ms(datetime(2025, 3, 7, 15, 0, tzinfo=TZ))
    rule = {"kind": "offline", "id": "meter_offline", "ids": ["kiln_drive"], "intervals": 4, "interval_secs": 900}
    engine, rec = engine_for(plant(rule))
    engine.tick(friday_3pm - 3600 * S)  # silent since 14:00: offline at 15:00
    engine.tick(friday_3pm)
    assert [(a.event, a.severity) for a in rec.alerts] == [("firing", "warning")]
    wednesday_3pm = datetime_to_ms(datetime(2025, 3, 12, 15, 0, tzinfo=TZ))
    engine.tick(wednesday_3pm - 60 * S)
    assert len(rec.alerts) == 1  # weekends do not count: Fri→Mon→Tue→Wed 15:00
    engine.tick(wednesday_3pm)
    escalated = rec.alerts[-1]
    assert (escalated.event, escalated.severity, escalated.audience) == (
        "escalated", "critical", ("energy_manager", "regulator"))
    engine.tick(wednesday_3pm + 86_400_000)
    assert len(rec.alerts) == 2


def test_gateway_offline_from_the_status_topic() -> None:
    rule = {"kind": "offline", "id": "gateway_offline", "target": "gateway", "intervals": 3}
    engine, rec = engine_for(plant(rule))  # shortest poll group 15 s: 45 s
    engine.observe_status("gw1", False, T0)
    engine.observe_status("other-gw", False, T0)
    engine.tick(T0 + 44 * S)
    assert rec.alerts == []
    engine.tick(T0 + 45 * S)
    assert rec.events() == [("gateway_offline:gw1", "firing")]
    engine.observe_status("gw1", True, T0 + 60 * S)
    assert rec.events()[-1] == ("gateway_offline:gw1", "resolved")
    engine.observe_status("gw1", False, T0 + 70 * S)
    engine.observe_status("gw1", True, T0 + 80 * S)  # a blip shorter than the timeout
    engine.tick(T0 + 200 * S)
    assert len(rec.alerts) == 2


def test_working_days_with_holidays_and_make_up_days() -> None:
    start = datetime_to_ms(datetime(2025, 9, 30, 9, 0, tzinfo=TZ))  # Tuesday before 国庆
    holidays = [date(2025, 10, d) for d in (1, 2, 3, 6, 7, 8)]
    workdays = [date(2025, 9, 28), date(2025, 10, 11)]  # the make-up Saturday after the holiday
    due = add_working_days(start, 3, TZ, holidays, workdays)
    # 15 h of Tuesday, then nothing until Thursday 9 Oct (24 h) and Friday (24 h): 63 h; the last 9 h fall on
    # the make-up Saturday
    assert datetime.fromtimestamp(due / 1000, TZ) == datetime(2025, 10, 11, 9, 0, tzinfo=TZ)
    assert is_working_day(date(2025, 10, 11), holidays, workdays)
    assert not is_working_day(date(2025, 10, 1), holidays, workdays)
    with pytest.raises(ValueError):
        add_working_days(start, -1, TZ)


# --------------------------------------------------------------------------- completeness


def day_ms(d: date, hour: int = 0) -> int:
    return datetime_to_ms(datetime(d.year, d.month, d.day, hour, tzinfo=TZ))


def test_daily_completeness_under_90_percent() -> None:
    rule = {"kind": "completeness", "id": "completeness", "meters": ["clinker_scale"], "grace_secs": 600}
    engine, rec = engine_for(plant(rule))  # clinker_scale: 60 s → 1440 points a local day
    d1 = date(2025, 3, 3)
    engine.tick(day_ms(d1))
    pts = [point("clinker_scale", "mass_total", float(i), day_ms(d1) + i * 60 * S) for i in range(1440)
           if not 300 <= i < 500]  # 200 minutes missing: 86.1 %
    engine.observe(pts)
    engine.observe(pts[:100])  # a redelivered batch does not count twice
    engine.observe([point("clinker_scale", "mass_total", None, day_ms(d1) + 301 * 60 * S)])  # bad: no count
    end = day_ms(d1 + timedelta(days=1))
    engine.tick(end + 599 * S)
    assert rec.alerts == []
    engine.tick(end + 600 * S)
    assert rec.events() == [("completeness:clinker_scale.mass_total", "firing")]
    alert = rec.alerts[0]
    assert alert.value == pytest.approx(100 * 1240 / 1440, abs=0.01) and alert.threshold == 90
    assert alert.started_ms == end and "2025-03-03" in alert.summary
    d2 = d1 + timedelta(days=1)
    engine.observe([point("clinker_scale", "mass_total", 2000.0 + i, day_ms(d2) + i * 60 * S)
                    for i in range(1300)])  # 90.3 %
    engine.tick(day_ms(d2 + timedelta(days=1)) + 600 * S)
    assert rec.events()[-1] == ("completeness:clinker_scale.mass_total", "resolved")


def test_completeness_first_day_counts_from_the_start_of_watching() -> None:
    rule = {"kind": "completeness", "id": "completeness", "meters": ["kiln_drive"], "quantities": ["power_active"]}
    engine, rec = engine_for(plant(rule))  # 15 s polling
    d1 = date(2025, 3, 3)
    noon = day_ms(d1, 12)
    engine.tick(noon)
    engine.observe([point("kiln_drive", "power_active", 1.0, noon + i * 15 * S) for i in range(2880)])
    engine.tick(day_ms(d1 + timedelta(days=1)) + 600 * S)
    assert rec.alerts == []  # 12 h watched, 2880 of 2880 points
    engine.tick(day_ms(d1 + timedelta(days=2)) + 600 * S)
    assert rec.events() == [("completeness:kiln_drive.power_active", "firing")]
    assert rec.alerts[0].value == 0


def test_completeness_counts_survive_a_restart(tmp_path: Path) -> None:
    rule = {"kind": "completeness", "id": "completeness", "meters": ["clinker_scale"]}
    p = plant(rule)
    path = tmp_path / "alerts.sqlite"
    d1 = date(2025, 3, 3)
    engine, rec = engine_for(p, store=AlertStore(path))
    engine.tick(day_ms(d1))
    engine.observe([point("clinker_scale", "mass_total", float(i), day_ms(d1) + i * 60 * S) for i in range(700)])
    engine.close()
    engine2, rec2 = engine_for(p, store=AlertStore(path))
    engine2.observe([point("clinker_scale", "mass_total", float(i), day_ms(d1) + i * 60 * S)
                     for i in range(650, 1440)])  # overlap: redelivered after the restart
    engine2.tick(day_ms(d1 + timedelta(days=1)) + 600 * S)
    assert rec.alerts == rec2.alerts == []  # 1440 of 1440
    engine2.close()


def test_completeness_counts_the_counter_readings_the_rules_accept() -> None:
    rule = {"kind": "completeness", "id": "completeness", "meters": ["clinker_scale"], "min_pct": 99.95}
    engine, rec = engine_for(plant(rule))  # clinker_scale: 60 s polling, 1440 readings a day
    d1 = date(2025, 3, 3)
    engine.tick(day_ms(d1))
    values = [100.0 + i for i in range(1440)]
    values[700] = 0.0  # read once as 0.0: a glitch the counter rules reject, so a missing reading
    engine.observe([point("clinker_scale", "mass_total", v, day_ms(d1) + i * 60 * S) for i, v in enumerate(values)])
    engine.tick(day_ms(d1 + timedelta(days=1)) + 600 * S)
    assert rec.events() == [("completeness:clinker_scale.mass_total", "firing")]
    assert rec.alerts[0].value == pytest.approx(100 * 1439 / 1440, abs=1e-3)


# --------------------------------------------------------------------------- range


def test_range_outside_registered_min_max() -> None:
    rule = {"kind": "range", "id": "value_range", "items": [
        {"meter": "kiln_drive", "quantity": "power_active", "min": 0, "max": 5000},
        {"meter": "clinker_scale", "quantity": "mass_total", "max": 1e7}]}
    engine, rec = engine_for(plant(rule))
    engine.observe([point("kiln_drive", "power_active", 4000.0, T0), point("kiln_drive", "power_active", None, T0 + S)])
    assert rec.alerts == []
    engine.observe([point("kiln_drive", "power_active", 6200.0, T0 + 2 * S)])
    assert rec.events() == [("value_range:kiln_drive.power_active", "firing")]
    assert (rec.alerts[0].value, rec.alerts[0].threshold) == (6200.0, 5000.0)
    engine.observe([point("kiln_drive", "power_active", -3.0, T0 + 3 * S)])  # still abnormal, other side
    engine.observe([point("kiln_drive", "power_active", 10.0, T0 + 4 * S)])
    assert [a.event for a in rec.alerts] == ["firing", "resolved"]
    engine.observe([point("clinker_scale", "mass_total", 2e7, T0, quality=Quality.UNCERTAIN)])
    assert rec.events()[-1] == ("value_range:clinker_scale.mass_total", "firing")


def test_range_item_needs_a_bound() -> None:
    with pytest.raises(ConfigError, match="give min, max or both"):
        plant({"kind": "range", "id": "r", "items": [{"meter": "kiln_drive", "quantity": "power_active"}]})
    with pytest.raises(ConfigError, match="above max"):
        plant({"kind": "range", "id": "r", "items": [{"meter": "kiln_drive", "quantity": "power_active",
                                                     "min": 5, "max": 1}]})


# --------------------------------------------------------------------------- counter backwards


def counter(value: float, t_secs: float, meter: str = "kiln_drive") -> Point:
    quantity = "energy_active_import" if meter == "kiln_drive" else "mass_total"
    return point(meter, quantity, value, T0 + round(t_secs * S))


def test_counter_backwards_without_a_replacement_record() -> None:
    engine, rec = engine_for(plant({"kind": "counter_backwards", "id": "counter_backwards", "tolerance": 0.5}))
    engine.observe([counter(1000.0, 0), counter(1010.0, 15), counter(1009.7, 30)])  # within tolerance
    assert rec.alerts == []
    engine.observe([counter(12.0, 45)])
    assert rec.events() == [("counter_backwards:kiln_drive", "firing")]
    assert (rec.alerts[0].value, rec.alerts[0].threshold) == (12.0, 1010.0)
    engine.observe([counter(20.0, 60), counter(1000.0, 75)])
    assert len(rec.alerts) == 1
    engine.observe([counter(1010.0, 90)])  # back at the value before the drop: a glitch
    assert rec.events()[-1] == ("counter_backwards:kiln_drive", "resolved")
    engine.observe([counter(1020.0, 105)])
    assert len(rec.alerts) == 2


def test_counter_rollover_is_not_backwards() -> None:
    engine, rec = engine_for(plant({"kind": "counter_backwards", "id": "counter_backwards"}))
    engine.observe([counter(429496700.0, 0), counter(25.0, 15)])  # wrapped at counter_max 429496729.5
    assert rec.alerts == []


def test_recorded_replacement_explains_the_drop() -> None:
    at = datetime(2025, 3, 3, 8, 0, 20, tzinfo=TZ).isoformat()
    rule = {"kind": "counter_backwards", "id": "counter_backwards"}
    p = plant(rule, accounting={"replacements": [
        {"meter": "kiln_drive", "at": at, "old_final_value": 1011.0, "new_start_value": 0}]})
    engine, rec = engine_for(p)
    engine.observe([counter(1010.0, 15), counter(3.0, 30)])
    assert rec.alerts == []


def test_replacement_fed_later_resolves_the_alert() -> None:
    log = ReplacementLog([ReplacementRecord("clinker_scale", T0 - 86_400_000)])  # an old, unrelated record
    rule = {"kind": "counter_backwards", "id": "counter_backwards", "replacement_window_secs": 60}
    engine, rec = engine_for(plant(rule), replacements=log)
    engine.observe([counter(500.0, 0, "clinker_scale"), counter(2.0, 60, "clinker_scale")])
    assert rec.events() == [("counter_backwards:clinker_scale", "firing")]
    engine.tick(T0 + 120 * S)
    assert len(rec.alerts) == 1
    log.add("clinker_scale", T0 + 50 * S)  # the operator records the swap afterwards
    engine.tick(T0 + 130 * S)
    assert rec.events()[-1] == ("counter_backwards:clinker_scale", "resolved")
    engine.observe([counter(5.0, 120, "clinker_scale")])
    assert len(rec.alerts) == 2


def test_replacements_as_a_callable() -> None:
    calls: list[tuple[str, int, int]] = []

    def replaced(meter: str, from_ms: int, to_ms: int) -> bool:
        calls.append((meter, from_ms, to_ms))
        return True

    engine, rec = engine_for(plant({"kind": "counter_backwards", "id": "cb", "replacement_window_secs": 0}),
                             replacements=replaced)
    engine.observe([counter(500.0, 0), counter(2.0, 60)])
    assert rec.alerts == [] and calls == [("kiln_drive", T0, T0 + 60 * S)]


# --------------------------------------------------------------------------- counter reset


def test_counter_reset_fires_when_a_counter_stays_down_and_not_for_a_glitch() -> None:
    engine, rec = engine_for(plant({"kind": "counter_reset", "id": "counter_reset", "resolve_after_secs": 600}))
    # kiln_drive has no max_rate_per_hour: its bound is learned from its own readings
    engine.observe([counter(1000.0 + 10 * k, 15 * k) for k in range(5)])  # 1000 … 1040
    engine.observe([counter(0.0, 75), counter(1060.0, 90)])  # a single 0.0: a glitch, no reset
    assert rec.alerts == []
    engine.observe([counter(2.0, 105), counter(12.0, 120), counter(22.0, 135)])  # down, and it stays down
    assert rec.events() == [("counter_reset:kiln_drive", "firing")]
    assert rec.alerts[0].summary.startswith("kiln_drive 的计数器 energy_active_import 于 2025-03-03 08:01 复位")
    engine.observe([counter(32.0, 150)])
    assert len(rec.alerts) == 1
    engine.observe([counter(100.0, 105 + 600)])  # resolve_after_secs after the jump
    assert rec.events()[-1] == ("counter_reset:kiln_drive", "resolved")


def test_counter_reset_takes_the_edge_verdict_and_a_recorded_replacement_resolves_it() -> None:
    from energymon.schema import Interval

    log = ReplacementLog()
    engine, rec = engine_for(plant({"kind": "counter_reset", "id": "counter_reset"}), replacements=log)
    edge = point("kiln_drive", "energy_active_import", 30.0, T0 + 60 * S).model_copy(
        update={"interval": Interval(start_ms=T0 + 30 * S, amount=20.0, flag="rebased")})
    engine.observe([edge])
    assert rec.events() == [("counter_reset:kiln_drive", "firing")]
    log.add("kiln_drive", T0 + 25 * S)  # the energy manager records the swap afterwards
    engine.tick(T0 + 120 * S)
    assert rec.events()[-1] == ("counter_reset:kiln_drive", "resolved")


def test_counter_reset_needs_a_meter_with_a_counter() -> None:
    with pytest.raises(ConfigError, match="unknown meter"):
        plant({"kind": "counter_reset", "id": "cr", "meters": ["nope"]})


# --------------------------------------------------------------------------- calibration


def test_calibration_due_fires_n_days_before_and_escalates_when_overdue(tmp_path: Path) -> None:
    rule = {"kind": "calibration_due", "id": "calibration", "days_before": 30}
    path = tmp_path / "alerts.sqlite"
    engine, rec = engine_for(plant(rule), store=AlertStore(path))
    warn = datetime_to_ms(datetime(2025, 3, 2, tzinfo=TZ))  # 2025-04-01 minus 30 days, local midnight
    engine.tick(warn - S)
    assert rec.alerts == []
    engine.tick(warn)
    engine.tick(warn + 86_400_000)
    assert [(a.id, a.event, a.severity) for a in rec.alerts] == [("calibration:kiln_drive", "firing", "warning")]
    assert "2025-04-01" in rec.alerts[0].summary
    due = datetime_to_ms(datetime(2025, 4, 1, tzinfo=TZ))
    engine.tick(due)
    assert [(a.event, a.severity) for a in rec.alerts[1:]] == [("escalated", "critical")]
    engine.close()
    # the meter was calibrated: the plant file gets the next date, the processor restarts
    data = copy.deepcopy(BASE)
    data["meters"][0]["calibration_due"] = "2026-04-01"
    data["alerts"] = {"rules": [rule]}
    p2 = parse_plant(yaml.safe_dump(data, allow_unicode=True))
    engine2, rec2 = engine_for(p2, store=AlertStore(path))
    engine2.tick(due + 86_400_000)
    assert rec2.events() == [("calibration:kiln_drive", "resolved")]
    engine2.close()


# --------------------------------------------------------------------------- every kind at once, checks


def test_build_rules_builds_every_kind_in_order() -> None:
    rules: Sequence[dict[str, Any]] = [
        {"kind": "threshold", "id": "t", "meter": "kiln_drive", "quantity": "power_active", "above": 1},
        {"kind": "indicator", "id": "i"},
        {"kind": "offline", "id": "o"},
        {"kind": "completeness", "id": "c"},
        {"kind": "range", "id": "r", "items": [{"meter": "kiln_drive", "quantity": "power_active", "max": 1}]},
        {"kind": "counter_backwards", "id": "cb"},
        {"kind": "budget", "id": "b"},
        {"kind": "calibration_due", "id": "cal"},
    ]
    built = build_rules(plant(*rules))
    assert [r.id for r in built] == ["t", "i", "o", "c", "r", "cb", "b", "cal"]
    engine = AlertEngine(built, notify=lambda a: None, clock=ManualClock(datetime(2030, 1, 1, tzinfo=UTC)))
    engine.tick(T0)
    engine.observe([counter(1.0, 0)])
    engine.observe_rows([budget_row(0.1, T0)])
    assert all(a.state is not AlertState.FIRING or a.rule_id == "cal" for a in engine.active())


def test_configured_kinds_need_build_rules() -> None:
    p = plant({"kind": "budget", "id": "b"})
    with pytest.raises(TypeError, match="build_rules"):
        AlertEngine(list(p.alerts.rules), notify=lambda a: None,  # type: ignore[arg-type]
                    clock=ManualClock(datetime(2030, 1, 1, tzinfo=UTC)))


@pytest.mark.parametrize(("rule", "message"), [
    ({"kind": "threshold", "id": "t", "meter": "nope", "quantity": "power_active", "above": 1}, "unknown meter"),
    ({"kind": "threshold", "id": "t", "meter": "kiln_drive", "quantity": "nope", "above": 1}, "has no quantity"),
    ({"kind": "range", "id": "r", "items": [{"meter": "nope", "quantity": "x", "max": 1}]}, "unknown meter"),
    ({"kind": "indicator", "id": "i", "product": "cement"}, "unknown product"),
    ({"kind": "offline", "id": "o", "ids": ["nope"]}, "unknown meter"),
    ({"kind": "offline", "id": "o", "target": "gateway", "ids": ["gw9"]}, "unknown gateway"),
    ({"kind": "counter_backwards", "id": "cb", "meters": ["nope"]}, "unknown meter"),
    ({"kind": "calibration_due", "id": "cal", "meters": ["clinker_scale"]}, "has no calibration_due"),
    ({"kind": "completeness", "id": "c", "meters": ["clinker_scale"], "quantities": ["power_active"]},
     "has quantity 'power_active'"),
    ({"kind": "budget", "id": "b", "notifiers": ["nobody"]}, "unknown notifier"),
    ({"kind": "budget", "id": "b", "levels": [{"at_pct": 90, "severity": "info"},
                                               {"at_pct": 80, "severity": "warning"}]}, "ascending"),
])
def test_cross_object_checks(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plant(rule)
