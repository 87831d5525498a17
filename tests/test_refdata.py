"""Reference data: coefficients, CO2 factors, 标杆/基准 and 能耗限额 grades (energymon.refdata)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from energymon.refdata import (
    KGCE_KJ,
    KGCE_KJ_ANNEX,
    Coefficient,
    ReferenceData,
    ReferenceDataError,
    coefficient_from_lhv,
    convert_quantity,
    lhv_mismatch,
    load_reference_data,
)

FILES = ("coefficients.yaml", "co2_factors.yaml", "benchmarks.yaml")
DAY = date(2025, 1, 1)


@pytest.fixture(scope="module")
def ref() -> ReferenceData:
    return load_reference_data()


def _copy_with(tmp_path: Path, name: str, mutate: Callable[[dict[str, Any]], None]) -> Path:
    """Copy the packaged YAML files to tmp_path, applying ``mutate`` to the parsed ``name`` file."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    pkg = resources.files("energymon.refdata")
    for f in FILES:
        with resources.as_file(pkg.joinpath(f)) as src:
            shutil.copy(src, tmp_path / f)
    data = yaml.safe_load((tmp_path / name).read_text(encoding="utf-8"))
    mutate(data)
    (tmp_path / name).write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return tmp_path


def _entry(items: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    return next(i for i in items if all(i.get(k) == v for k, v in match.items()))


# ----------------------------------------------------------------------------------- packaging, version


def test_yaml_files_ship_in_the_package() -> None:
    pkg = resources.files("energymon.refdata")
    for name in FILES:
        assert pkg.joinpath(name).is_file(), name


def test_version_is_recorded(ref: ReferenceData) -> None:
    assert set(ref.versions) == {"coefficients", "co2_factors", "benchmarks"}
    assert ref.version == "2026.12.1"
    assert ref.levels("cement_clinker", DAY).ref_version == ref.version


def test_default_load_is_cached_and_a_copy_loads_the_same(ref: ReferenceData, tmp_path: Path) -> None:
    assert load_reference_data() is ref
    copy = load_reference_data(_copy_with(tmp_path, "coefficients.yaml", lambda d: None))
    assert copy == ref


def test_reference_data_is_frozen(ref: ReferenceData) -> None:
    coal = ref.coefficient("raw_coal", DAY)
    with pytest.raises(pydantic.ValidationError):
        coal.kgce_per_unit = 1.0


# ------------------------------------------------------------------------------------------ coefficients


def test_electricity_equivalent_value(ref: ReferenceData) -> None:
    elec = ref.coefficient("electricity", DAY)
    assert elec.kgce_per_unit == 0.1229
    assert elec.unit == "kWh"
    assert elec.basis == "equivalent"
    assert elec.lhv_kj_per_unit == 3600
    # 0.1229 agrees with 3600/29307.6 to within one unit of the 4th decimal ...
    assert abs(elec.kgce_per_unit - 3600 / KGCE_KJ) < 1e-4
    # ... but is 860 kcal/kWh / 7000 rounded; 3600/29307.6 itself rounds to 0.1228.
    assert round(860 / 7000, 4) == 0.1229
    assert round(3600 / KGCE_KJ, 4) == 0.1228


def test_every_calorific_value_matches_its_coefficient(ref: ReferenceData) -> None:
    """coefficient = LHV/29,307.6 (or /29,271.2, the Annex's 4.1816 kJ/kcal) within the published rounding."""
    checked = []
    entries = list(ref.coefficients) + [end for r in ref.coefficient_ranges for end in r.bounds()]
    for c in entries:
        if c.lhv_kj_per_unit is None:
            continue
        allowed = [0.5e-4 + (c.lhv_resolution_kj / 2) / d for d in (KGCE_KJ, 7000 * 4.1816)]
        residuals = [abs(c.kgce_per_unit - c.lhv_kj_per_unit / d) for d in (KGCE_KJ, 7000 * 4.1816)]
        assert any(r <= a for r, a in zip(residuals, allowed, strict=True)), (
            f"{c.carrier} ({c.effective_from}): {c.kgce_per_unit} vs LHV {c.lhv_kj_per_unit} -> "
            f"{c.lhv_kj_per_unit / KGCE_KJ:.5f}"
        )
        assert lhv_mismatch(c) is None
        checked.append(c.carrier)
    must = {"electricity", "raw_coal", "natural_gas", "natural_gas_oilfield", "fresh_water", "heat"}
    assert must <= set(checked)
    assert len(checked) >= 20


def test_natural_gas_pairings_are_the_right_way_round(ref: ReferenceData) -> None:
    gas = ref.coefficient("natural_gas", DAY)
    oil_gas = ref.coefficient("natural_gas_oilfield", DAY)
    assert (gas.kgce_per_unit, gas.lhv_kj_per_unit) == (1.2143, 35544)
    assert (oil_gas.kgce_per_unit, oil_gas.lhv_kj_per_unit) == (1.3300, 38931)
    wrong = gas.model_copy(update={"lhv_kj_per_unit": 38931.0})  # the demo-file mistake
    residual = lhv_mismatch(wrong)
    assert residual is not None and residual > 0.1


def test_loading_rejects_a_wrong_lhv_pairing(tmp_path: Path) -> None:
    def mispair(d: dict[str, Any]) -> None:
        _entry(d["coefficients"], carrier="natural_gas")["lhv_kj_per_unit"] = 38931

    with pytest.raises(ReferenceDataError, match="natural_gas"):
        load_reference_data(_copy_with(tmp_path, "coefficients.yaml", mispair))


def test_fresh_water_edition_is_chosen_by_date(ref: ReferenceData) -> None:
    assert ref.coefficient("fresh_water", date(2020, 6, 1)).kgce_per_unit == 0.2571
    assert ref.coefficient("fresh_water", date(2021, 3, 31)).kgce_per_unit == 0.2571
    assert ref.coefficient("fresh_water", date(2021, 4, 1)).kgce_per_unit == 0.0857
    assert ref.coefficient("fresh_water", DAY).source.startswith("GB/T 2589-2020")
    with pytest.raises(ReferenceDataError, match=r"fresh_water.*2001-01-01"):
        ref.coefficient("fresh_water", date(2001, 1, 1))


def test_unknown_carrier_raises_naming_it(ref: ReferenceData) -> None:
    with pytest.raises(ReferenceDataError, match="unobtainium") as info:
        ref.coefficient("unobtainium", DAY)
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("unknown energy carrier 'unobtainium'")


def test_unit_conversion(ref: ReferenceData) -> None:
    coal_t = ref.coefficient("raw_coal", DAY, unit="t")
    assert coal_t.kgce_per_unit == 714.3
    assert coal_t.unit == "t"
    assert coal_t.lhv_kj_per_unit == 20_908_000
    assert lhv_mismatch(coal_t) is None
    assert ref.coefficient("electricity", DAY, unit="MWh").kgce_per_unit == 122.9
    assert ref.coefficient("heat", DAY, unit="GJ").kgce_per_unit == 34.12
    assert ref.coefficient("fresh_water", DAY, unit="kg").kgce_per_unit == pytest.approx(0.0000857)
    assert ref.coefficient("raw_coal", DAY).kgce(2.0, unit="t") == pytest.approx(1428.6)
    assert convert_quantity(2.5, "t", "kg") == 2500
    with pytest.raises(ReferenceDataError, match="cannot convert"):
        ref.coefficient("raw_coal", DAY, unit="kWh")
    with pytest.raises(ReferenceDataError, match="unknown unit"):
        ref.coefficient("raw_coal", DAY, unit="bushel")


def test_coke_oven_gas_is_only_a_range(ref: ReferenceData) -> None:
    with pytest.raises(ReferenceDataError, match=r"coke_oven_gas.*0\.5714.*0\.6143"):
        ref.coefficient("coke_oven_gas", DAY)
    rng = ref.coefficient_range("coke_oven_gas", DAY)
    assert (rng.kgce_min, rng.kgce_max) == (0.5714, 0.6143)


def test_coefficient_from_measured_lhv() -> None:
    coal = coefficient_from_lhv(23_000, "kg", "raw_coal")
    assert coal.kgce_per_unit == pytest.approx(23_000 / 29_307.6)
    assert coal.confidence == "measured"
    assert coal.basis == "equivalent"
    assert coal.to_unit("t").kgce_per_unit == pytest.approx(784.78, abs=0.01)
    assert lhv_mismatch(coal) is None
    with pytest.raises(ReferenceDataError):
        coefficient_from_lhv(0, "kg", "raw_coal")
    with pytest.raises(ReferenceDataError):
        coefficient_from_lhv(20_000, "bushel", "raw_coal")


def test_every_reference_coefficient_has_source_and_confidence(ref: ReferenceData) -> None:
    for c in ref.coefficients:
        assert c.source and c.confidence in {"verified", "secondary", "unverified"}, c.carrier
        assert c.category is not None, c.carrier
    # the 2008 耗能工质 values carried past 2021-04-01 are flagged as unchecked
    assert ref.coefficient("compressed_air", DAY).confidence == "unverified"
    assert ref.coefficient("nitrogen", DAY).kgce_per_unit == 0.6714
    assert ref.coefficient("nitrogen_byproduct", DAY).kgce_per_unit == 0.4000


def test_electricity_equal_value(ref: ReferenceData) -> None:
    with pytest.raises(ReferenceDataError, match=r"only the range 0\.3.*0\.32"):
        ref.electricity_equal_value(2024)
    prov = ref.electricity_equal_value(2025, "unnamed_province")
    assert prov.kgce_per_unit == 0.28498
    assert prov.basis == "equal"
    assert (prov.effective_from, prov.effective_to) == (date(2025, 1, 1), date(2025, 12, 31))
    with pytest.raises(ReferenceDataError, match="atlantis"):
        ref.electricity_equal_value(2025, "atlantis")


# ------------------------------------------------------------------------------------------ CO2 factors


def test_grid_factors(ref: ReferenceData) -> None:
    assert ref.grid_co2_factor(2021).value == 0.5568
    assert ref.grid_co2_factor(2022).value == 0.5366
    assert ref.grid_co2_factor(2023).value == 0.5306
    assert ref.grid_co2_factor(2024, kind="reporting_default").value == 0.5703
    assert ref.grid_co2_factor(2022, "shandong").value == 0.6410
    assert ref.grid_co2_factor(2022, "hebei").value == 0.7252
    resolved = ref.grid_co2_factor(2021)  # the 2021/2022 swap in some repos is theirs: the MEE PDF says 0.5568
    assert resolved.confidence == "verified" and "2024年第12号" in resolved.source
    assert resolved.note is not None and "swap" in resolved.note
    assert "2024年第33号" in ref.grid_co2_factor(2022).source
    assert "2025年第47号" in ref.grid_co2_factor(2023).source
    with pytest.raises(ReferenceDataError, match="2024"):
        ref.grid_co2_factor(2024)


def test_jiangxi_and_sichuan_grid_factors_by_year(ref: ReferenceData) -> None:
    jiangxi = [ref.grid_co2_factor(y, "jiangxi").value for y in (2021, 2022, 2023)]
    sichuan = [ref.grid_co2_factor(y, "sichuan").value for y in (2021, 2022, 2023)]
    assert jiangxi == [0.5835, 0.5752, 0.5836]
    assert sichuan == [0.1255, 0.1404, 0.1564]
    assert ref.grid_co2_factor(2023, "sichuan").confidence == "verified"  # two transcriptions of the PDF
    assert ref.grid_co2_factor(2022, "jiangxi").confidence == "secondary"  # one source per year
    assert ref.grid_co2_factor(2021, "jiangxi").name_zh == "江西"
    # the national variants of the 2023 announcement are separate series, never mixed into `average`
    assert ref.grid_co2_factor(2023, kind="fossil").value == 0.8273
    assert ref.grid_co2_factor(2023, kind="average_excluding_market_non_fossil").value == 0.6096
    with pytest.raises(ReferenceDataError, match="jiangxi"):
        ref.grid_co2_factor(2024, "jiangxi")


def test_fuel_factors_equal_ncv_times_carbon_times_oxidation(ref: ReferenceData) -> None:
    assert ref.fuel_co2_factor("natural_gas").value == 2.162
    for f in ref.fuel_factors:
        assert abs(f.computed() - f.value) <= 0.5 * 10 ** (-f.published_decimals), f.fuel
    assert ref.heat_co2_factor().value == 0.11
    assert ref.heat_co2_factor("steam_low_pressure").unit == "tCO2/GJ"
    with pytest.raises(ReferenceDataError, match="plutonium"):
        ref.fuel_co2_factor("plutonium")


# ------------------------------------------------------------------------------------------ levels


def test_clinker_levels(ref: ReferenceData) -> None:
    lv = ref.levels("cement_clinker", DAY)
    assert lv.policy is not None and lv.quota is not None
    assert (lv.policy.benchmark, lv.policy.baseline) == (100, 117)
    assert lv.policy.document_no == "发改产业〔2023〕723号"
    assert lv.quota.standard == "GB 16780-2021"
    assert (lv.quota.grade_1, lv.quota.grade_2, lv.quota.grade_3) == (100, 107, 117)
    assert lv.quota_status == "in_force"
    assert [c.id for c in lv.quota.corrections] == ["altitude"]
    # under the 2021 edition the document is 1609号
    old = ref.levels("cement_clinker", date(2022, 6, 1))
    assert old.policy is not None and old.policy.document_no == "发改产业〔2021〕1609号"
    assert old.quota is None and old.quota_status == "not_yet_in_force"  # GB 16780-2021 from 2022-11-01


def test_no_2023_level_is_a_silent_copy_of_2021(ref: ReferenceData) -> None:
    """723号's table was not read: a 2023 set either says whose numbers it carries or has none."""
    for ind in ref.indicators:
        by_edition = {p.edition: p for p in ind.policy}
        p23 = by_edition.get("benchmark_2023")
        if p23 is None:
            continue
        if p23.rows and "benchmark_2021" in by_edition and p23.rows == by_edition["benchmark_2021"].rows:
            assert p23.values_copied and p23.values_document_no == "发改产业〔2021〕1609号", ind.id
        if not p23.values_copied:
            assert p23.missing or not p23.rows, f"{ind.id}: a 2023 figure must have been read from 723号"
    lv = ref.levels("cement_clinker", DAY).policy
    assert lv is not None and lv.document_no == "发改产业〔2023〕723号"
    assert lv.values_copied and lv.values_document_no == "发改产业〔2021〕1609号"
    old = ref.levels("cement_clinker", date(2022, 6, 1)).policy
    assert old is not None and not old.values_copied and old.values_document_no == "发改产业〔2021〕1609号"


def test_a_set_must_not_copy_from_an_edition_it_does_not_have(tmp_path: Path) -> None:
    def bad(d: dict[str, Any]) -> None:
        ind = next(i for i in d["indicators"] if i["id"] == "data_centre_pue")
        ind["policy"] = [{"edition": "benchmark_2023", "values_from": "benchmark_2021", "source": "x",
                          "confidence": "unverified"}]
    with pytest.raises(ReferenceDataError, match="benchmark_2021"):
        load_reference_data(_copy_with(tmp_path, "benchmarks.yaml", bad))


def test_cement_clinker_ratio_correction(ref: ReferenceData) -> None:
    quota = ref.levels("cement", DAY).quota
    assert quota is not None
    corr = next(c for c in quota.corrections if c.id == "clinker_ratio")
    assert corr.kind == "additive_per_unit"
    assert [corr.amount_for(g) for g in ("grade_1", "grade_2", "grade_3")] == [1.10, 1.15, 1.20]


def test_flat_glass_band_selection(ref: ReferenceData) -> None:
    big = ref.levels("flat_glass", DAY, band_value=900)
    mid = ref.levels("flat_glass", DAY, band_value=600)
    small = ref.levels("flat_glass", DAY, band_value=400)
    assert big.quota is not None and mid.quota is not None and small.quota is not None
    assert (big.quota.grade_1, big.quota.grade_2, big.quota.grade_3) == (8.0, 10.0, 12.0)
    assert (mid.quota.grade_1, mid.quota.grade_2, mid.quota.grade_3) == (9.5, 11.5, 13.5)
    assert (small.quota.grade_1, small.quota.grade_2, small.quota.grade_3) == (None, None, 14.0)
    assert big.policy is not None and (big.policy.benchmark, big.policy.baseline) == (8.0, 12.0)
    assert mid.policy is not None and (mid.policy.benchmark, mid.policy.baseline) == (9.5, 13.5)
    assert small.policy is None and small.policy_status == "band_not_covered"
    assert big.indicator.unit == "kgce/weight_case"
    # boundaries: 800 t/d belongs to 500-800, 500 t/d to <=500
    edge_800 = ref.levels("flat_glass", DAY, band_value=800).quota
    edge_500 = ref.levels("flat_glass", DAY, band_value=500).quota
    assert edge_800 is not None and edge_800.grade_3 == 13.5
    assert edge_500 is not None and edge_500.grade_3 == 14.0
    assert [c.factors for c in big.quota.corrections] == [("a", "b", "c", "d")]
    with pytest.raises(ReferenceDataError, match="band_value"):
        ref.levels("flat_glass", DAY)


def test_eaf_band_selection(ref: ReferenceData) -> None:
    on = date(2026, 8, 1)
    mid = ref.levels("eaf", on, band_value=60)
    assert mid.quota is not None
    assert (mid.quota.grade_1, mid.quota.grade_2, mid.quota.grade_3) == (61, None, 72)
    assert mid.policy is not None and (mid.policy.benchmark, mid.policy.baseline) == (61, 72)
    small = ref.levels("eaf", on, band_value=40)
    assert small.policy is not None and (small.policy.benchmark, small.policy.baseline) == (67, 86)
    assert small.quota is not None and small.quota.grade_3 == 86
    tiny = ref.levels("eaf", on, band_value=20)
    assert tiny.policy_status == "band_not_covered" and tiny.quota is not None
    big = ref.levels("eaf", on, band_value=100)
    assert big.quota is not None and big.quota.grade_2 == 64
    hot_metal = next(c for c in big.quota.corrections if c.id == "hot_metal")
    stainless = next(c for c in big.quota.corrections if c.id == "stainless")
    assert (hot_metal.amount, stainless.kind, stainless.amount) == (-0.8, "multiplier", 1.10)


def test_blast_furnace_quota_starts_2026_07_01(ref: ReferenceData) -> None:
    before = ref.levels("blast_furnace", date(2026, 6, 30))
    assert before.quota is None
    assert before.quota_status == "not_yet_in_force"
    assert before.upcoming_quota is not None and before.upcoming_quota.standard == "GB 21256-2025"
    assert before.upcoming_quota.effective_from == date(2026, 7, 1)
    assert before.policy is not None and (before.policy.benchmark, before.policy.baseline) == (361, 435)

    after = ref.levels("blast_furnace", date(2026, 7, 1))
    assert after.quota is not None and after.quota_status == "in_force"
    assert (after.quota.grade_1, after.quota.grade_2, after.quota.grade_3) == (361, 370, 415)
    assert after.upcoming_quota is None
    ore = next(c for c in after.quota.corrections if c.id == "ore_grade")
    assert (ore.kind, ore.amount, ore.max_units) == ("additive_per_unit", 3.61, 5)


def test_coke_quota_starts_2026_05_01(ref: ReferenceData) -> None:
    assert ref.levels("coke_stamp_charged", date(2026, 4, 30)).quota is None
    q = ref.levels("coke_stamp_charged", date(2026, 5, 1)).quota
    assert q is not None and (q.grade_1, q.grade_2, q.grade_3) == (115, 115, 140)
    assert {c.kind for c in q.corrections} == {"unquantified"}


def test_converter_values_are_negative(ref: ReferenceData) -> None:
    lv = ref.levels("converter", date(2026, 7, 1))
    assert lv.indicator.sign_note
    assert lv.policy is not None and lv.quota is not None
    values = [lv.policy.benchmark, lv.policy.baseline, lv.quota.grade_1, lv.quota.grade_2, lv.quota.grade_3]
    assert values == [-30, -10, -30, -28, -12]
    assert all(v is not None and v < 0 for v in values)
    scrap = next(c for c in lv.quota.corrections if c.id == "scrap_ratio")
    assert scrap.amount == 0.23


def test_oil_equivalent_and_pue_units(ref: ReferenceData) -> None:
    refining = ref.levels("oil_refining", date(2025, 6, 1))
    assert refining.indicator.unit == "kgoe/(t*energy_factor)"
    assert refining.quota is not None and refining.quota.grade_1 == 6.85
    assert ref.levels("oil_refining", DAY).quota_status == "not_yet_in_force"  # GB 30251-2024 from 2025-05-01
    pue = ref.levels("data_centre_pue", DAY)
    assert pue.indicator.unit == "ratio"
    assert pue.quota is not None and (pue.quota.grade_1, pue.quota.grade_3) == (1.20, 1.50)
    assert pue.policy is None and pue.policy_status == "not_in_reference_data"
    assert {t.value for t in ref.targets_for("data_centre_pue")} == {1.3, 1.25, 1.5, 1.35}


def test_every_indicator_is_consistent(ref: ReferenceData) -> None:
    for ind in ref.indicators:
        assert ind.direction == "lower_is_better"
        assert ind.policy or ind.quota, ind.id
        for q in ind.quota:
            for row in q.rows:
                grades = [g for g in (row.grade_1, row.grade_2, row.grade_3) if g is not None]
                assert grades == sorted(grades), ind.id
        for p in ind.policy:
            for prow in p.rows:
                if prow.benchmark is not None and prow.baseline is not None:
                    assert prow.benchmark <= prow.baseline, ind.id
        band = 1000.0 if ind.band is not None else None
        ref.levels(ind.id, date(2026, 12, 31), band_value=band)


def test_unknown_indicator(ref: ReferenceData) -> None:
    with pytest.raises(ReferenceDataError, match="unicorn_horn"):
        ref.indicator("unicorn_horn")


# ----------------------------------------------------------------------------------- load-time validation


def test_overlapping_effective_ranges_are_rejected(tmp_path: Path) -> None:
    def overlap(d: dict[str, Any]) -> None:
        old = _entry(d["coefficients"], carrier="fresh_water", kgce_per_unit=0.2571)
        old["effective_to"] = date(2022, 1, 1)

    with pytest.raises(ReferenceDataError, match=r"fresh_water.*overlap"):
        load_reference_data(_copy_with(tmp_path, "coefficients.yaml", overlap))


def test_grade_order_is_enforced(tmp_path: Path) -> None:
    def swap(d: dict[str, Any]) -> None:
        _entry(d["indicators"], id="cement_clinker")["quota"][0]["rows"] = [
            {"grade_1": 117, "grade_2": 107, "grade_3": 100}
        ]

    with pytest.raises(ReferenceDataError, match=r"cement_clinker.*grade_1 117 > grade_2 107"):
        load_reference_data(_copy_with(tmp_path, "benchmarks.yaml", swap))


def test_duplicate_indicator_is_rejected(tmp_path: Path) -> None:
    def dup(d: dict[str, Any]) -> None:
        d["indicators"].append(dict(_entry(d["indicators"], id="sintering")))

    with pytest.raises(ReferenceDataError, match="duplicate indicator 'sintering'"):
        load_reference_data(_copy_with(tmp_path, "benchmarks.yaml", dup))


def test_unknown_units_and_fields_are_rejected(tmp_path: Path) -> None:
    def bad_unit(d: dict[str, Any]) -> None:
        _entry(d["coefficients"], carrier="diesel")["unit"] = "barrel"

    with pytest.raises(ReferenceDataError, match="barrel"):
        load_reference_data(_copy_with(tmp_path, "coefficients.yaml", bad_unit))

    def bad_indicator_unit(d: dict[str, Any]) -> None:
        _entry(d["indicators"], id="sintering")["unit"] = "kgce/furlong"

    with pytest.raises(ReferenceDataError, match="furlong"):
        load_reference_data(_copy_with(tmp_path / "b", "benchmarks.yaml", bad_indicator_unit))


def test_extra_field_is_rejected(tmp_path: Path) -> None:
    def extra(d: dict[str, Any]) -> None:
        _entry(d["grid"], region="tianjin")["colour"] = "blue"

    with pytest.raises(ReferenceDataError, match="colour"):
        load_reference_data(_copy_with(tmp_path, "co2_factors.yaml", extra))


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ReferenceDataError, match=r"coefficients\.yaml"):
        load_reference_data(tmp_path)


def test_measured_coefficient_is_a_coefficient() -> None:
    c = coefficient_from_lhv(35_000, "m3", "natural_gas", category="primary")
    assert isinstance(c, Coefficient)
    assert c.category == "primary" and c.unit == "m3"


def test_overlapping_bands_are_rejected(tmp_path: Path) -> None:
    def widen(d: dict[str, Any]) -> None:
        rows = _entry(d["indicators"], id="flat_glass")["quota"][0]["rows"]
        rows[2]["band"] = {"max": 600, "max_inclusive": True, "unit": "t/d"}  # <=600 overlaps 500-800

    with pytest.raises(ReferenceDataError, match=r"'flat_glass' GB 21340-2019: bands .* overlap"):
        load_reference_data(_copy_with(tmp_path, "benchmarks.yaml", widen))


def test_a_banded_indicator_needs_a_band_on_every_row(tmp_path: Path) -> None:
    def drop(d: dict[str, Any]) -> None:
        del _entry(d["indicators"], id="eaf")["quota"][0]["rows"][0]["band"]

    with pytest.raises(ReferenceDataError, match=r"eaf.*every row needs a band"):
        load_reference_data(_copy_with(tmp_path, "benchmarks.yaml", drop))


def test_carriers_listed(ref: ReferenceData) -> None:
    carriers = set(ref.carriers())
    expected = {
        "electricity", "raw_coal", "washed_coal", "coke", "crude_oil", "fuel_oil", "gasoline", "kerosene",
        "diesel", "lpg", "refinery_dry_gas", "natural_gas", "natural_gas_oilfield", "coke_oven_gas",
        "blast_furnace_gas", "methanol", "heat", "steam_low_pressure", "fresh_water", "softened_water",
        "deaerated_water", "compressed_air", "blast_air", "oxygen", "nitrogen", "nitrogen_byproduct",
    }  # fmt: skip
    assert expected <= carriers


# ------------------------------------------------------------------------- provenance of every figure


def _figures(ref: ReferenceData) -> list[tuple[str, object, object, object]]:
    """(what, source, effective date, confidence) of every figure in the packaged reference data."""
    out: list[tuple[str, object, object, object]] = []
    for c in ref.coefficients:
        out.append((f"coefficient {c.carrier} {c.effective_from}", c.source, c.effective_from, c.confidence))
    for r in ref.coefficient_ranges:
        out.append((f"range {r.carrier}", r.source, r.effective_from, r.confidence))
    for e in ref.electricity_equal_values:
        # the sources give no year for these two entries; the key is present and the note says so
        out.append((f"等价值 {e.region}", e.source, e.year_from or ("undated" if e.note else None), e.confidence))
    for o in ref.oil_equivalent_sets:
        for f in o.factors:
            out.append((f"{o.id} {f.carrier}", f.source, f.effective_from, f.confidence))
    for g in ref.grid_factors:
        out.append((f"grid {g.region}/{g.kind}/{g.year_from}", g.source, g.year_from, g.confidence))
    for fu in ref.fuel_factors:
        out.append((f"fuel {fu.fuel}", fu.source, fu.effective_from, fu.confidence))
    for h in ref.heat_factors:
        out.append((f"heat {h.id}", h.source, h.effective_from, h.confidence))
    for ind in ref.indicators:
        for p in ind.policy:
            out.append((f"{ind.id} {p.edition}", p.source, p.effective_from, p.confidence))
        for q in ind.quota:
            out.append((f"{ind.id} {q.standard}", q.source, q.effective_from, q.confidence))
    for t in ref.targets:
        out.append((f"target {t.id}", t.source, t.effective_from or t.deadline, t.confidence))
    return out


def test_every_figure_has_source_effective_date_and_confidence() -> None:
    ref = load_reference_data()
    figures = _figures(ref)
    assert len(figures) > 100
    missing = [what for what, source, when, conf in figures
               if not (isinstance(source, str) and source.strip()) or when is None
               or conf not in ("verified", "secondary", "unverified")]
    assert not missing, missing


def test_every_carrier_and_co2_figure_records_its_second_source() -> None:
    ref = load_reference_data()
    entries = [*ref.coefficients, *ref.coefficient_ranges, *ref.grid_factors, *ref.fuel_factors, *ref.heat_factors,
               *(f for o in ref.oil_equivalent_sets for f in o.factors)]
    lacking = [e for e in entries if not (e.second_source and e.second_source.strip())]
    assert not lacking, lacking
    # an unverified figure never claims an independent confirmation
    assert all(e.second_source == "not found" or e.confidence != "unverified" or "not found" in (e.second_source or "")
               for e in entries)


def test_converter_gas_and_steel_gases() -> None:
    ref = load_reference_data()
    on = date(2026, 1, 1)
    assert ref.coefficient("converter_gas", on).kgce_per_unit == pytest.approx(7945 / KGCE_KJ_ANNEX, abs=1e-4)
    assert ref.coefficient("blast_furnace_gas", on).kgce_per_unit == 0.1286
    assert ref.coefficient_range("coke_oven_gas", on).kgce_min == 0.5714
    assert ref.fuel_co2_factor("converter_gas").computed() == pytest.approx(1.51, abs=0.005)
    assert ref.fuel_co2_factor("blast_furnace_gas").computed() == pytest.approx(0.85, abs=0.005)


def test_gb30251_oil_equivalent_set_applies_to_refining_and_ethylene_only() -> None:
    ref = load_reference_data()
    for indicator in ("oil_refining", "ethylene"):
        oil = ref.oil_equivalent_set(indicator)
        assert oil is not None and oil.standard == "GB 30251-2024"
        power = oil.factor("electricity", date(2025, 6, 1))
        assert power is not None and power.kgoe_per_unit == 0.21 and power.basis == "equal"
        assert oil.factor("electricity", date(2025, 4, 30)) is None  # before GB 30251-2024 is in force
    assert ref.oil_equivalent_set("paraxylene") is None  # other GB 30251 products use electricity's 当量值
    assert ref.oil_equivalent_set("cement_clinker") is None
    steam = ref.oil_equivalent_set("ethylene").factor("steam_saturated_0_8_1_0mpa", date(2026, 1, 1))  # type: ignore[union-attr]
    assert steam is not None and steam.per("kg") == pytest.approx(0.076)
    # fuels: the GB 30251 value equals the GB/T 2589 coefficient x 0.7 where both are by net calorific value
    for carrier, unit in (("fuel_oil", "kg"), ("lpg", "kg"), ("natural_gas", "m3")):
        f = ref.oil_equivalent_set("oil_refining").factor(carrier, date(2026, 1, 1))  # type: ignore[union-attr]
        assert f is not None
        assert f.per(unit) == pytest.approx(ref.coefficient(carrier, date(2026, 1, 1), unit).kgce_per_unit * 0.7,
                                            abs=2e-3)


def test_oil_equivalent_set_with_unknown_carrier_or_indicator_is_rejected(tmp_path: Path) -> None:
    src = resources.files("energymon.refdata")
    for name in ("coefficients.yaml", "co2_factors.yaml", "benchmarks.yaml"):
        (tmp_path / name).write_text(src.joinpath(name).read_text(encoding="utf-8"), encoding="utf-8")
    text = (tmp_path / "coefficients.yaml").read_text(encoding="utf-8")
    bad = text.replace("indicators: [oil_refining, ethylene]", "indicators: [oil_refining, no_such_indicator]")
    (tmp_path / "coefficients.yaml").write_text(bad, encoding="utf-8")
    with pytest.raises(ReferenceDataError, match="no_such_indicator"):
        load_reference_data(tmp_path)
    entry = "      - carrier: softened_water\n        name_zh: 软化水\n        unit: {}\n        kgoe_per_unit"
    bad = text.replace(entry.format("t"), entry.format("kWh"))
    (tmp_path / "coefficients.yaml").write_text(bad, encoding="utf-8")
    with pytest.raises(ReferenceDataError, match="softened_water per kWh"):
        load_reference_data(tmp_path)


AREAS_2021 = {"炼油", "煤制焦炭", "煤制甲醇", "煤制烯烃", "煤制乙二醇", "烧碱", "纯碱", "电石", "乙烯",
              "对二甲苯", "黄磷", "合成氨", "磷酸一铵", "磷酸二铵", "水泥熟料", "平板玻璃", "建筑陶瓷", "卫生陶瓷",
              "炼铁", "炼钢", "铁合金", "铜冶炼", "铅冶炼", "锌冶炼", "电解铝"}
AREAS_2023 = {"乙二醇", "尿素", "钛白粉", "聚氯乙烯", "精对苯二甲酸", "子午线轮胎", "工业硅", "卫生纸原纸", "纸巾原纸",
              "印染（机织物）", "印染（针织物）", "印染（纱线）", "粘胶短纤维"}


def test_every_area_of_both_editions_has_an_indicator_under_its_edition(ref: ReferenceData) -> None:
    areas: dict[str, set[str]] = {}
    for ind in ref.indicators:
        editions = {p.edition for p in ind.policy}
        if ind.area_zh and editions:  # quota-only variants (褐煤合成氨) carry no policy set
            areas.setdefault(ind.area_zh, set()).add(ind.id)
            if ind.added_in == "benchmark_2023":
                assert editions == {"benchmark_2023"}, ind.id  # not in force before 2023-07-04
            else:
                assert editions == {"benchmark_2021", "benchmark_2023"}, ind.id
    assert set(areas) == AREAS_2021 | AREAS_2023
    assert len(AREAS_2021) == 25
    assert {ind.area_zh for ind in ref.indicators if ind.added_in == "benchmark_2023"} == AREAS_2023
    # product variants where the area has them
    assert len(areas["建筑陶瓷"]) == 3 and len(areas["钛白粉"]) == 2 and len(areas["子午线轮胎"]) == 2


def test_an_area_without_a_figure_says_so_and_is_never_graded(ref: ReferenceData) -> None:
    from energymon.processors.grading import levels_for

    on = date(2026, 3, 1)
    lv = ref.levels("copper_smelting", on)
    assert lv.policy_status == "no_figure" and lv.policy is not None
    assert lv.policy.benchmark is None and lv.policy.baseline is None
    assert lv.policy.missing and "1609号" in lv.policy.missing
    graded = levels_for(ref, "copper_smelting", on)
    assert graded is not None and not graded.has_figures
    assert "no transcription" in graded.missing and graded.rule()["missing"] == graded.missing
    # a 2023 area before the 2023 edition: not yet in force
    assert ref.levels("viscose_staple_fibre", date(2023, 1, 1)).policy_status == "not_yet_in_force"
    viscose = ref.levels("viscose_staple_fibre", on).policy
    assert viscose is not None and viscose.document_no == "发改产业〔2023〕723号"
    assert viscose.retrofit_deadline == date(2026, 12, 31)  # the 11 new areas: end-2026; the original 25: end-2025
    assert lv.policy.retrofit_deadline == date(2025, 12, 31)
    # an area with a quota but no policy figure: graded on the quota, the missing policy figure named
    eg = levels_for(ref, "coal_to_ethylene_glycol", on)
    assert eg is not None and eg.has_figures and (eg.grade_1, eg.grade_2, eg.grade_3) == (2450, 2850, 3100)
    assert eg.benchmark is None and "标杆/基准" in eg.missing
