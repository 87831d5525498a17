"""Accounting: periods in local time, standard coal, product boundaries, indicators and grades; the processor's
intake (de-duplication, malformed payloads, acknowledgement only after a durable write); the plant rules
(roles, allocations, measured coefficients, 等价值, CO2, gap policy, process tree, bands and corrections, the
accounting section's cross-checks) and the agreement of the live path with the recompute."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from energymon.accounting_config import CorrectionInput, check_accounting
from energymon.config import PlantConfig, load_plant, parse_plant
from energymon.demo import example_plant_path
from energymon.errors import ConfigError, StoreError
from energymon.interfaces import Message, Row
from energymon.processors.accounting import (
    Accounting,
    next_period_start,
    period_start,
    period_starts,
    split_by_period,
)
from energymon.processors.grading import Status, grade_value, levels_for
from energymon.processors.processor import Processor
from energymon.processors.recompute import MeterReadings, recompute
from energymon.processors.rules import PlantRules, indicator_value
from energymon.refdata import load_reference_data
from energymon.schema import Batch, Point, Quality, datetime_to_ms, encode_batch
from energymon.topics import readings_topic

SH = ZoneInfo("Asia/Shanghai")


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return datetime_to_ms(datetime(year, month, day, hour, minute, tzinfo=SH))


def test_period_start_in_local_time() -> None:
    assert period_start(ms(2026, 11, 23, 0, 30), "day", SH) == ms(2026, 11, 23)
    assert period_start(ms(2026, 11, 23, 0, 30), "hour", SH) == ms(2026, 11, 23, 0)
    assert period_start(ms(2026, 11, 23, 0, 30), "month", SH) == ms(2026, 11, 1)


def test_consumption_spread_over_periods_in_proportion_to_time() -> None:
    # 23:45 → 00:15 local: half before midnight, half after
    parts = list(split_by_period(ms(2026, 11, 22, 23, 45), ms(2026, 11, 23, 0, 15), 10.0, "day", SH))
    assert parts == [(ms(2026, 11, 22), 5.0), (ms(2026, 11, 23), 5.0)]
    parts = list(split_by_period(ms(2026, 11, 23, 9, 50), ms(2026, 11, 23, 11, 10), 80.0, "hour", SH))
    assert [round(a, 9) for _, a in parts] == [10.0, 60.0, 10.0]
    assert list(split_by_period(ms(2026, 11, 23, 9, 0), ms(2026, 11, 23, 9, 15), 3.0, "hour", SH)) == [
        (ms(2026, 11, 23, 9), 3.0)
    ]


@pytest.fixture
def accounting() -> Accounting:
    return Accounting(load_plant(example_plant_path()), load_reference_data())


def test_standard_coal_and_clinker_indicator(accounting: Accounting) -> None:
    t0, t1 = ms(2026, 11, 23, 9, 0), ms(2026, 11, 23, 9, 15)
    rows = accounting.book("kiln_drive", t0, t1, 1000.0, "ok")  # kWh
    (key, fields, ts) = rows[0]
    assert key.measurement == "energy" and ts == t1
    assert fields["kgce"] == pytest.approx(122.9)  # 当量值 0.1229 kgce/kWh
    accounting.book("coal_feeder", t0, t1, 1.0, "ok")  # t of raw coal: 714.3 kgce
    accounting.book("gas_main", t0, t1, 100.0, "ok")  # Nm3 of natural gas: 121.43 kgce
    accounting.book("incoming", t0, t1, 5000.0, "ok")  # level-1 meter: outside the clinker boundary
    accounting.book("cement_mill", t0, t1, 3000.0, "ok")  # cement grinding: outside the clinker boundary
    accounting.book("clinker_scale", t0, t1, 9.0, "ok")
    by_key = {(k.tags, ts): f for k, f, ts in accounting.indicator_rows()}
    hour = next(f for (tags, ts), f in by_key.items() if ("period", "hour") in tags and ts == ms(2026, 11, 23, 9))
    assert hour["energy_kgce"] == pytest.approx(122.9 + 714.3 + 121.43)
    assert hour["output"] == pytest.approx(9.0)
    assert hour["value"] == pytest.approx((122.9 + 714.3 + 121.43) / 9.0)  # 106.5 kgce/t
    assert hour["status"] == Status.BETWEEN
    assert hour["benchmark"] == 100.0 and hour["baseline"] == 117.0 and hour["quota_grade"] == 2
    assert accounting.indicator_rows() == []  # nothing changed since


class ListStore:
    """In-memory store for unit tests of the processor's logic."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.fail = False

    def write(self, rows: Sequence[Row]) -> None:
        if self.fail:
            raise StoreError("store down")
        self.rows.extend(rows)

    def close(self) -> None:
        pass


TOPIC = readings_topic("91530102MA6K7LQ8RH", "gw-line1")  # the example plant's gateway


def make_batch(seq: int, values: list[float], t0: int) -> bytes:
    pts = [
        Point(meter="kiln_drive", quantity="energy_active_import", value=v, unit="kWh", ts_ms=t0 + i * 60_000)
        for i, v in enumerate(values)
    ]
    pts.append(Point(meter="raw_mill", quantity="power_active", value=None, unit="kW", ts_ms=t0, quality=Quality.BAD))
    return encode_batch(Batch(enterprise="91530102MA6K7LQ8RH", gateway="gw-line1", seq=seq, sent_ms=t0, points=pts))


def test_processor_dedupes_sets_aside_and_acks_after_write() -> None:
    store = ListStore()
    seen: list[int] = []
    proc = Processor(load_plant(example_plant_path()), store, observers=[lambda pts: seen.append(len(pts))])
    acks: list[str] = []
    t0 = ms(2026, 11, 23, 9, 0)
    proc.handle(Message(TOPIC, make_batch(1, [100.0, 110.0, 125.0], t0), lambda: acks.append("1")))
    proc.handle(Message(TOPIC, make_batch(1, [100.0, 110.0, 125.0], t0), lambda: acks.append("1-again")))
    proc.handle(Message(TOPIC, b"garbage", lambda: acks.append("bad")))
    assert acks == ["1-again", "bad"]  # duplicate and malformed acked at once; the real one not yet written
    assert proc.duplicates == 1 and "neither JSON" in proc.rejected[0].detail
    assert proc.flush() > 0
    assert acks == ["1-again", "bad", "1"] and seen == [4]
    energy = [f for k, f, _ in store.rows if k.measurement == "energy"]
    assert sum(f["consumed"] for f in energy) == pytest.approx(25.0)
    unavailable = [k for k, f, _ in store.rows if k.measurement == "reading_unavailable"]
    assert len(unavailable) == 1 and ("meter", "raw_mill") in unavailable[0].tags
    assert not any(("meter", "raw_mill") in k.tags for k, _, _ in store.rows if k.measurement == "reading")

    # store down: nothing is acknowledged, rows are kept and written on the next flush
    store.fail = True
    proc.handle(Message(TOPIC, make_batch(2, [130.0], t0 + 4 * 60_000), lambda: acks.append("2")))
    with pytest.raises(StoreError):
        proc.flush()
    assert acks[-1] == "1"
    store.fail = False
    proc.flush()
    assert acks[-1] == "2"
    assert sum(f["consumed"] for k, f, _ in store.rows if k.measurement == "energy") == pytest.approx(30.0)


# ====================================================================== plant rules

REF = load_reference_data()


def meter(mid: str, carrier: str | None, unit: str, *, level: int = 2, process: str = "p", rate: int = 100000) -> str:
    c = f"carrier: {carrier}, " if carrier else ""
    return (
        f"  - {{id: {mid}, {c}level: {level}, process: {process}, counter: q, max_rate_per_hour: {rate},\n"
        f"     source: {{type: mqtt_json, bus: f, topic: t/{mid}, fields: [{{path: v, quantity: q, unit: '{unit}', "
        f"kind: counter}}]}}}}\n"
    )


def make_plant(
    meters: str, products: str = "", accounting: str = "", processes: str = "[{id: p}, {id: r}]"
) -> PlantConfig:
    text = (
        "version: 1\n"
        "enterprise: {uscc: 91530102MA6K7LQ8RH, name: t, industry_code: C3011, timezone: Asia/Shanghai}\n"
        f"processes: {processes}\n"
        "buses: [{type: mqtt, id: f, url: 'inproc://f'}]\n"
        "meters:\n" + meters + (f"products:\n{products}" if products else "")
        + (f"accounting:\n{accounting}" if accounting else "")
    )
    return parse_plant(text, "test.yaml")


def rows_of(acc: Accounting, period: str = "day") -> dict[tuple[str, str], dict[str, float]]:
    out = {}
    for key, fields, _ts in acc.indicator_rows():
        tags = dict(key.tags)
        if tags["period"] == period:
            out[(tags["product"], tags["indicator"])] = fields
    return out


def test_periods_15min_month_and_year_in_local_time() -> None:
    t = ms(2026, 11, 23, 9, 37)
    assert period_start(t, "15min", SH) == ms(2026, 11, 23, 9, 30)
    assert period_start(t, "year", SH) == ms(2026, 1, 1)
    assert next_period_start(ms(2026, 12, 1), "month", SH) == ms(2027, 1, 1)
    assert next_period_start(ms(2026, 1, 1), "year", SH) == ms(2027, 1, 1)
    berlin = ZoneInfo("Europe/Berlin")  # 29 March 2026 has 23 hours
    day = int(datetime(2026, 3, 29, tzinfo=berlin).timestamp() * 1000)
    assert len(period_starts(day, next_period_start(day, "day", berlin), "hour", berlin)) == 23


def test_roles_export_deducted_feedstock_separate_recovered_not_added() -> None:
    plant = make_plant(
        meter("gas", "natural_gas", "m3", level=1) + meter("feed", "natural_gas", "m3", level=2)
        + meter("power", "electricity", "kWh") + meter("sold", "electricity", "kWh")
        + meter("whr", "steam_low_pressure", "t") + meter("out", None, "t"),
        "  - {id: nh3, unit: t, output: {meter: out, quantity: q}, indicator: ammonia_natural_gas,"
        " boundary: {processes: [p]}}\n",
        "  meter_roles: {feed: feedstock, sold: export, whr: recovered}\n",
    )
    acc = Accounting(plant, REF)
    t0, t1 = ms(2026, 3, 2, 9), ms(2026, 3, 2, 9, 15)
    for m, amount in (("gas", 1000.0), ("feed", 600.0), ("power", 1000.0), ("sold", 200.0), ("whr", 1.0),
                      ("out", 1.0)):
        acc.book(m, t0, t1, amount, "ok")
    f = rows_of(acc, "hour")[("nh3", "ammonia_natural_gas")]
    assert f["energy_kgce"] == pytest.approx(1000 * 1.2143 + 1000 * 0.1229 - 200 * 0.1229)
    assert f["energy_kgce_feedstock"] == pytest.approx(600 * 1.2143)
    assert f["energy_kgce_exported"] == pytest.approx(200 * 0.1229)
    assert f["electricity_kwh"] == pytest.approx(800.0)
    rules = PlantRules(plant, REF)
    assert rules.enterprise_meters["feed"].total == 0 and rules.enterprise_meters["feed"].feedstock == 1
    assert rules.enterprise_meters["sold"].total == -1 and rules.enterprise_meters["whr"].recovered == 1
    assert rules.top_meters() == {"natural_gas": ["gas"], "electricity": ["power"]}


def test_shared_meter_split_by_share_and_by_output() -> None:
    meters = (meter("shared", "electricity", "kWh", process="r") + meter("a_out", None, "t")
              + meter("b_out", None, "t"))
    products = (
        "  - {id: a, unit: t, output: {meter: a_out, quantity: q}, indicator: cement_clinker,"
        " boundary: {processes: [p]}}\n"
        "  - {id: b, unit: t, output: {meter: b_out, quantity: q}, indicator: cement, boundary: {processes: [p]}}\n"
    )
    plant = make_plant(meters, products, "  allocations: [{meter: shared, rule: share, shares: {a: 0.7, b: 0.3}}]\n")
    acc = Accounting(plant, REF)
    t0, t1 = ms(2026, 3, 2, 9), ms(2026, 3, 2, 9, 15)
    acc.book("shared", t0, t1, 1000.0, "ok")
    acc.book("a_out", t0, t1, 1.0, "ok")
    acc.book("b_out", t0, t1, 1.0, "ok")
    got = rows_of(acc, "hour")
    assert got[("a", "cement_clinker")]["energy_kgce"] == pytest.approx(700 * 0.1229)
    assert got[("b", "cement")]["energy_kgce"] == pytest.approx(300 * 0.1229)

    # by output: the recompute uses each product's output of the local day (3:1 here)
    plant = make_plant(meters, products, "  allocations: [{meter: shared, rule: output, products: [a, b]}]\n")
    rules = PlantRules(plant, REF)
    day0, day1 = ms(2026, 3, 2), ms(2026, 3, 3)
    ts = np.array([day0, day1], dtype=np.int64)
    readings = {"shared": MeterReadings.of(ts, [0.0, 4000.0]), "a_out": MeterReadings.of(ts, [0.0, 30.0]),
                "b_out": MeterReadings.of(ts, [0.0, 10.0])}
    rc = recompute(rules, readings, day0, day1)
    day = rc.products[rc.products["period"] == "day"].set_index("product")
    assert day.loc["a", "kgce"] == pytest.approx(3000 * 0.1229)
    assert day.loc["b", "kgce"] == pytest.approx(1000 * 0.1229)


def test_coefficient_override_from_measured_lhv_by_date() -> None:
    plant = make_plant(
        meter("coal", "raw_coal", "t"),
        accounting="  coefficient_overrides:\n"
        "    - {carrier: raw_coal, lhv_kj_per_unit: 22500, unit: kg, effective_from: 2026-03-01, source: assay 7}\n",
    )
    rules = PlantRules(plant, REF)
    assert rules.factors("coal", date(2026, 3, 1)).kgce == pytest.approx(22500 / 29307.6 * 1000)
    assert "assay 7" in rules.factors("coal", date(2026, 3, 1)).kgce_source
    assert rules.factors("coal", date(2026, 2, 28)).kgce == pytest.approx(714.3)  # the GB/T 2589 default before


def test_equal_value_from_plant_file_then_reference_data_then_missing() -> None:
    m = meter("e", "electricity", "MWh")
    rules = PlantRules(make_plant(m, accounting="  equal_value_kgce_per_kwh: {2026: 0.3}\n"), REF)
    assert rules.factors("e", date(2026, 5, 1)).kgce_equal == pytest.approx(300.0)  # per MWh
    assert rules.factors("e", date(2025, 5, 1)).kgce_equal is None  # no figure for 2025, national is a range
    text = make_plant(m).model_dump()
    text["enterprise"]["province"] = "unnamed_province"
    rules = PlantRules(PlantConfig.model_validate(text), REF)
    assert rules.factors("e", date(2025, 5, 1)).kgce_equal == pytest.approx(284.98)


def test_co2_factors_grid_fuel_heat_medium_and_fallback_year() -> None:
    plant = make_plant(meter("e", "electricity", "kWh") + meter("g", "natural_gas", "m3")
                       + meter("s", "steam_low_pressure", "t") + meter("w", "fresh_water", "t")
                       + meter("c", "raw_coal", "t"))
    rules = PlantRules(plant, REF)
    day = date(2026, 3, 2)
    assert rules.factors("e", day).co2_kg == pytest.approx(0.5703)
    assert rules.factors("g", day).co2_kg == pytest.approx(2.162)
    assert rules.factors("s", day).co2_kg == pytest.approx(0.11 * 1000 * 3.763)  # per t of steam
    assert rules.factors("w", day).co2_kg == 0.0
    assert rules.factors("c", day).co2_kg is None
    avg = make_plant(meter("e", "electricity", "kWh"), accounting="  co2: {grid_kind: average}\n")
    f = PlantRules(avg, REF).factors("e", day)
    assert f.co2_kg == pytest.approx(0.5306) and "latest earlier year" in f.co2_source


def test_grid_factor_follows_the_province_and_the_year_the_plant_file_selects() -> None:
    e = meter("e", "electricity", "MWh")
    text = make_plant(e, accounting="  co2: {grid_kind: average}\n").model_dump()
    text["enterprise"]["province"] = "jiangxi"
    jiangxi = PlantRules(PlantConfig.model_validate(text), REF)
    assert jiangxi.factors("e", date(2022, 6, 1)).co2_kg == pytest.approx(575.2)  # 0.5752 kgCO2/kWh per MWh
    f2023 = jiangxi.factors("e", date(2023, 6, 1))
    assert f2023.co2_kg == pytest.approx(583.6)
    assert "jiangxi/average 2023" in f2023.co2_source and "2025年第47号" in f2023.co2_source
    later = jiangxi.factors("e", date(2026, 3, 2))  # 2026 not published: the latest earlier year, said so
    assert later.co2_kg == pytest.approx(583.6) and "latest earlier year 2023" in later.co2_source
    # the plant file fixes the factor's year and region
    text["accounting"]["co2"] = {"grid_kind": "average", "grid_year": 2021, "grid_region": "sichuan"}
    fixed = PlantRules(PlantConfig.model_validate(text), REF)
    f = fixed.factors("e", date(2026, 3, 2))
    assert f.co2_kg == pytest.approx(125.5)
    assert "sichuan/average factor year 2021 set in the plant file" in f.co2_source
    assert "四川" in fixed.grid_factor_text(2026)
    # a region or year the data does not have is a config error, not a silent national fallback
    text["accounting"]["co2"] = {"grid_kind": "average", "grid_year": 2019, "grid_region": "atlantis"}
    issues = list(check_accounting(PlantConfig.model_validate(text)))
    assert any(k == "accounting.co2.grid_region" and "atlantis" in m for k, m in issues)
    text["accounting"]["co2"] = {"grid_kind": "average", "grid_year": 2019, "grid_region": "jiangxi"}
    issues = list(check_accounting(PlantConfig.model_validate(text)))
    assert any(k == "accounting.co2.grid_year" and "2021, 2022, 2023" in m for k, m in issues)


def test_per_100_m_and_per_m2_indicators_agree_on_both_paths() -> None:
    from energymon.processors.recompute import _values

    one = np.ones(1)
    for unit, expected in (("kgce/100m", 1250.0 / 5000.0 * 100), ("kgce/m2", 1250.0 / 5000.0)):
        assert indicator_value(unit, 1250.0, 0.0, 5000.0) == pytest.approx(expected)
        vec = _values(unit, one * 1250.0, one * 0.0, one * 5000.0, one * 0.0, None)
        assert vec[0] == pytest.approx(expected), unit


def test_gap_policy_on_the_live_path() -> None:
    m = meter("e", "electricity", "kWh") + meter("o", None, "t")
    prod = ("  - {id: x, unit: t, output: {meter: o, quantity: q}, indicator: cement_clinker,"
            " boundary: {processes: [p]}}\n")
    t0, t1 = ms(2026, 3, 2, 22), ms(2026, 3, 3, 2)  # 4 h: a gap with 15-minute readings expected
    for mode, day2_share in (("spread", 0.5), ("flag", 1.0)):
        acc = Accounting(make_plant(m, prod, f"  gap_policy: {{mode: {mode}}}\n"), REF)
        rows = acc.book("e", t0, t1, 400.0, "ok")
        assert rows[0][1][f"flag_gap_{'spread' if mode == 'spread' else 'at_end'}"] == 1.0
        acc.book("o", t1 - 60_000, t1, 1.0, "ok")
        day = {ts: f for k, f, ts in acc.indicator_rows() if ("period", "day") in k.tags}
        assert day[ms(2026, 3, 3)]["energy_kgce"] == pytest.approx(400 * day2_share * 0.1229)


def test_extra_indicator_and_pue_on_the_live_path() -> None:
    plant = make_plant(
        meter("kiln", "electricity", "kWh") + meter("coal", "raw_coal", "t") + meter("o", None, "t"),
        "  - {id: c, unit: t, output: {meter: o, quantity: q}, indicator: cement_clinker,"
        " boundary: {processes: [p]}}\n",
        "  products: {c: {extra_indicators: [{indicator: cement_clinker_electricity},"
        " {indicator: cement_clinker_coal, carriers: [raw_coal]}]}}\n",
    )
    acc = Accounting(plant, REF)
    t0, t1 = ms(2026, 3, 2, 9), ms(2026, 3, 2, 9, 15)
    acc.book("kiln", t0, t1, 500.0, "ok")
    acc.book("coal", t0, t1, 1.0, "ok")
    acc.book("o", t0, t1, 10.0, "ok")
    got = rows_of(acc, "hour")
    assert got[("c", "cement_clinker_electricity")]["value"] == pytest.approx(50.0)
    assert got[("c", "cement_clinker_coal")]["value"] == pytest.approx(71.43)
    assert got[("c", "cement_clinker")]["value"] == pytest.approx((500 * 0.1229 + 714.3) / 10)
    assert indicator_value("ratio", 0.0, 1200.0, 1000.0) == pytest.approx(1.2)
    assert indicator_value("kgoe/t", 1000.0, 0.0, 2.0) == pytest.approx(350.0)
    assert indicator_value("kgoe/(t*energy_factor)", 1000.0, 0.0, 2.0, energy_factor=10) == pytest.approx(35.0)
    assert indicator_value("kgce/t", 1.0, 0.0, 0.0) is None


def test_grading_band_corrections_and_negative_gaps() -> None:
    glass = levels_for(REF, "flat_glass", date(2026, 3, 2), 600,
                       [CorrectionInput(id="vc", factors={"a": 1.0, "b": 1.1, "c": 1.0, "d": 1.0})])
    assert glass is not None and glass.band == "500<x<=800 t/d"
    assert glass.grade_3 == pytest.approx(13.5 * 1.1) and glass.baseline == 13.5
    assert levels_for(REF, "flat_glass", date(2026, 3, 2)) is None  # the band value is required
    inputs = [CorrectionInput(id="clinker_ratio", units=-5), CorrectionInput(id="altitude", factor=1.05)]
    cement = levels_for(REF, "cement", date(2026, 3, 2), None, inputs)
    assert cement is not None
    assert cement.grade_1 == pytest.approx(80 - 5 * 1.10) and cement.grade_2 == pytest.approx(87 - 5 * 1.15)
    assert cement.grade_3 == pytest.approx((94 - 5 * 1.20) * 1.05)
    bf = levels_for(REF, "blast_furnace", date(2026, 8, 1), None, [CorrectionInput(id="ore_grade", units=8)])
    assert bf is not None and bf.grade_3 == pytest.approx(415 + 5 * 3.61)  # capped at 5 points
    eaf = levels_for(REF, "eaf", date(2026, 8, 1), 80, [CorrectionInput(id="stainless", applies=False)])
    assert eaf is not None and eaf.grade_3 == 72 and any("does not hold" in n for n in eaf.notes)
    conv = levels_for(REF, "converter", date(2026, 8, 1))
    assert conv is not None
    g = grade_value(-25.0, conv)  # worse than 标杆 −30: positive gap, positive percent
    assert g.gaps()["benchmark"] == pytest.approx((5.0, 100 * 5 / 30))
    assert g.gaps()["grade_3"] == pytest.approx((-13.0, -100 * 13 / 12))
    assert g.quota_grade == 3 and g.quota_label == "3级"
    assert grade_value(-5.0, conv).quota_label == "未达标"
    assert any(n.startswith("steel_grade: not applied") for n in conv.notes)


def test_accounting_cross_checks() -> None:
    base = meter("e", "electricity", "kWh") + meter("o", None, "t")
    prod = "  - {id: g, unit: t, output: {meter: o, quantity: q}, indicator: flat_glass, boundary: {processes: [p]}}\n"
    bad = (
        "  meter_roles: {nope: export, o: feedstock}\n"
        "  allocations: [{meter: e, rule: share, shares: {g: 0.5, zz: 0.5}}]\n"
        "  replacements: [{meter: o2, at: '2026-03-02T10:00:00+08:00', old_final_value: 1, new_start_value: 0}]\n"
        "  coefficient_overrides:\n"
        "    - {carrier: raw_coal, lhv_kj_per_unit: 22500, unit: t, effective_from: 2026-01-01, source: x}\n"
        "    - {carrier: raw_coal, lhv_kj_per_unit: 22000000, unit: t, effective_from: 2026-06-01, source: y}\n"
        "  products: {g: {corrections: [{id: nope}]}}\n"
        "  balance: {groups: [{id: b, parents: [e], children: [o]}]}\n"
    )
    with pytest.raises(ConfigError) as err:
        make_plant(base, prod, bad)
    text = str(err.value)
    for expected in (
        "meter_roles.nope: unknown meter 'nope'",
        "meter 'o' has no energy carrier",
        "unknown product 'zz'",
        "replacements[0].meter: unknown meter 'o2'",
        "more than a factor 2 from the default",
        "dates overlap",
        "has capacity bands",
        "has no correction 'nope'",
        "balance.groups[0].children[0]",
    ):
        assert expected in text, (expected, text)
    with pytest.raises(ConfigError, match=r"shares sum to 0\.9"):
        make_plant(base, accounting="  allocations: [{meter: e, rule: share, shares: {x: 0.9}}]\n")
    with pytest.raises(ConfigError, match="tce/万kWh"):
        make_plant(base, accounting="  equal_value_kgce_per_kwh: {2026: 2.85}\n")


def test_live_path_and_recompute_agree() -> None:
    plant = load_plant(example_plant_path())
    store = ListStore()
    proc = Processor(plant, store)
    t0 = ms(2026, 3, 2)
    rates = {"kiln_drive": 900.0, "raw_mill": 800.0, "coal_mill": 300.0, "coal_feeder": 5.0, "clinker_scale": 40.0,
             "incoming": 3000.0}
    units = {"coal_feeder": ("mass_total", "t"), "clinker_scale": ("mass_total", "t")}
    readings: dict[str, list[tuple[int, float]]] = {m: [] for m in rates}
    for k in range(0, 24 * 4 + 1):
        ts = t0 + k * 900_000
        pts = []
        for m, rate in rates.items():
            q, u = units.get(m, ("energy_active_import", "kWh"))
            value = 1000.0 + rate * k / 4
            readings[m].append((ts, value))
            pts.append(Point(meter=m, quantity=q, value=value, unit=u, ts_ms=ts))
        proc.handle_batch(Batch(enterprise="91530102MA6K7LQ8RH", gateway="gw-line1", seq=k + 1, sent_ms=ts,
                                points=pts))
    live = [f for k, f, ts in store.rows if k.measurement == "indicator" and ("period", "day") in k.tags and ts == t0]
    rules = PlantRules(plant, REF)
    rc = recompute(rules, {m: MeterReadings.of([t for t, _ in r], [v for _, v in r]) for m, r in readings.items()},
                   t0, ms(2026, 3, 3))
    day = rc.products[(rc.products["period"] == "day") & (rc.products["indicator"] == "cement_clinker")]
    assert live[-1]["value"] == pytest.approx(float(day["value"].iloc[0]))
    assert live[-1]["energy_kgce"] == pytest.approx(float(day["kgce"].iloc[0]))


def test_boundary_includes_child_processes_levelled_with_their_parent() -> None:
    processes = "[{id: kiln}, {id: kiln_fan, parent: kiln}, {id: cooler, parent: kiln}, {id: mill}]"
    meters = (meter("kiln_main", "electricity", "kWh", level=2, process="kiln")
              + meter("fan", "electricity", "kWh", level=3, process="kiln_fan")
              + meter("cooler_gas", "natural_gas", "m3", level=3, process="cooler")
              + meter("mill", "electricity", "kWh", level=2, process="mill") + meter("o", None, "t", process="kiln"))
    prod = ("  - {id: c, unit: t, output: {meter: o, quantity: q}, indicator: cement_clinker,"
            " boundary: {processes: [kiln]}}\n")
    rules = PlantRules(make_plant(meters, prod, processes=processes), REF)
    # the fan (level 3, inside kiln) is covered by kiln_main (level 2); the cooler's gas is the only gas meter
    assert set(rules.product_meters["c"]) == {"kiln_main", "cooler_gas"}


def test_counter_baselines_survive_a_processor_restart(tmp_path: Path) -> None:
    """The consumption between the last reading before a restart and the first after it is booked once."""
    plant = load_plant(example_plant_path())
    state = tmp_path / "counters.sqlite"
    t0 = ms(2026, 11, 23, 9, 0)
    store = ListStore()
    first = Processor(plant, store, counter_state_path=state)
    first.handle(Message(TOPIC, make_batch(1, [100.0, 110.0, 125.0], t0)))
    first.flush()
    first.close()
    second = Processor(plant, store, counter_state_path=state)  # a restarted processor
    second.handle(Message(TOPIC, make_batch(2, [140.0, 150.0], t0 + 5 * 60_000)))
    # a redelivered batch from before the restart books nothing again
    second.handle(Message(TOPIC, make_batch(1, [100.0, 110.0, 125.0], t0)))
    second.flush()
    second.close()
    consumed = sum(f["consumed"] for k, f, _ in store.rows if k.measurement == "energy")
    assert consumed == pytest.approx(150.0 - 100.0)

    forgetful = ListStore()
    a = Processor(plant, forgetful)
    a.handle(Message(TOPIC, make_batch(1, [100.0, 110.0, 125.0], t0)))
    a.flush()
    b = Processor(plant, forgetful)
    b.handle(Message(TOPIC, make_batch(2, [140.0, 150.0], t0 + 5 * 60_000)))
    b.flush()
    lost = sum(f["consumed"] for k, f, _ in forgetful.rows if k.measurement == "energy")
    assert lost == pytest.approx(25.0 + 10.0)  # without the state file the 125 → 140 step is lost


def test_live_path_uses_the_gb30251_factors_like_the_recompute() -> None:
    """炼油 and 乙烯 in kgoe: the live day indicator equals the recompute's (GB 30251 能源折算值, not kgce × 0.7)."""
    from energymon.processors.report import load_readings_csv

    case = Path(__file__).resolve().parent / "cases" / "kgoe_refining_ethylene"
    plant = load_plant(case / "plant.yaml")
    readings = load_readings_csv(case / "readings.csv", plant)
    store = ListStore()
    proc = Processor(plant, store)
    stamps = sorted({int(t) for r in readings.values() for t in r.ts})
    for seq, ts in enumerate(stamps, 1):
        pts = []
        for meter_id, r in readings.items():
            meter = plant.meter(meter_id)
            assert meter.counter is not None
            hit = np.flatnonzero(r.ts == ts)
            if hit.size:
                unit = plant.quantities(meter)[meter.counter][0]
                pts.append(Point(meter=meter_id, quantity=meter.counter, value=float(r.value[hit[0]]), unit=unit,
                                 ts_ms=ts))
        proc.handle_batch(Batch(enterprise=plant.enterprise.uscc, gateway=plant.gateway.id, seq=seq, sent_ms=ts,
                                    points=pts))
    day0 = stamps[0]
    rc = recompute(PlantRules(plant, REF), readings, day0, day0 + 86_400_000)
    checked = 0
    for product in ("ethylene", "refinery"):
        want = rc.products[(rc.products["period"] == "day") & (rc.products["product"] == product)
                           & (rc.products["start"] == day0)]["value"].iloc[0]
        live = [f for k, f, ts in store.rows if k.measurement == "indicator" and ("period", "day") in k.tags
                and ("product", product) in k.tags and ts == day0]
        assert live[-1]["value"] == pytest.approx(float(want), rel=1e-9)
        assert live[-1]["value"] != pytest.approx(live[-1]["energy_kgce"] * 0.7 / live[-1]["output"], rel=1e-3)
        checked += 1
    assert checked == 2
