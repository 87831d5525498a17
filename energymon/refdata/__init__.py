"""Versioned reference data: standard-coal coefficients, CO2 factors, 标杆/基准 levels and 能耗限额 grades.

The data lives in three YAML files next to this module (``coefficients.yaml``, ``co2_factors.yaml``,
``benchmarks.yaml``); see ``README.md`` here for the fields and the confidence levels. Every figure carries
its source, its effective dates and how sure it is, so a result can record which rule was applied::

    ref = load_reference_data()
    coal = ref.coefficient("raw_coal", on=date(2025, 1, 1), unit="t")      # 714.3 kgce/t
    lv = ref.levels("flat_glass", on=date(2025, 1, 1), band_value=900)     # >800 t/d row
    lv.quota.grade_3, lv.policy.baseline, lv.ref_version

Loading validates the data: no duplicate ids, no overlapping effective ranges for one item, grades in order
(1级 <= 2级 <= 3级, lower is better), known units, and every calorific value consistent with its coefficient.
"""

from __future__ import annotations

__all__ = [
    "KGCE_KJ",
    "KGCE_KJ_ANNEX",
    "UNITS",
    "Band",
    "BandSpec",
    "Coefficient",
    "CoefficientRange",
    "Correction",
    "ElectricityEqualValue",
    "FuelCo2Factor",
    "GridCo2Factor",
    "HeatCo2Factor",
    "IndicatorDef",
    "Levels",
    "OilEquivalentFactor",
    "OilEquivalentSet",
    "PolicyEdition",
    "PolicyLevelSet",
    "PolicyLevels",
    "PolicyRow",
    "QuotaLevelSet",
    "QuotaLevels",
    "QuotaRow",
    "QuotaStandard",
    "ReferenceData",
    "ReferenceDataError",
    "Target",
    "coefficient_from_lhv",
    "convert_quantity",
    "lhv_mismatch",
    "load_reference_data",
]

import functools
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from energymon.errors import EnergymonError

#: 1 kgce = 7,000 kcal x 4.1868 kJ/kcal (GB/T 2589).
KGCE_KJ = 29307.6
#: 7,000 x 4.1816 kJ/kcal: the kcal-to-kJ factor behind the kJ column of GB/T 2589 Annex A. Most published
#: coefficients equal kcal/7000 = LHV/KGCE_KJ_ANNEX rather than LHV/KGCE_KJ (raw coal: 0.7143, not 0.7134).
KGCE_KJ_ANNEX = 7000 * 4.1816

#: unit -> (dimension, size in the dimension's base unit). Coefficients convert only within a dimension.
#: Names and dimensions follow energymon.units (electric energy and heat are separate dimensions there).
UNITS: dict[str, tuple[str, Decimal]] = {
    "Wh": ("energy", Decimal("0.001")),
    "kWh": ("energy", Decimal(1)),
    "MWh": ("energy", Decimal(1000)),
    "GWh": ("energy", Decimal(1000000)),
    "kJ": ("heat", Decimal("0.001")),
    "MJ": ("heat", Decimal(1)),
    "GJ": ("heat", Decimal(1000)),
    "TJ": ("heat", Decimal(1000000)),
    "kg": ("mass", Decimal(1)),
    "t": ("mass", Decimal(1000)),
    "m3": ("volume", Decimal(1)),
    "Nm3": ("volume", Decimal(1)),
}

#: Units of indicator values (benchmarks.yaml).
INDICATOR_UNITS = frozenset(
    {"kgce/t", "kgoe/t", "kWh/t", "kgce/weight_case", "kgoe/(t*energy_factor)", "ratio", "kgce/m2", "kgce/100m"}
)
#: Units of capacity bands.
BAND_UNITS = frozenset({"t/d", "t"})
#: CO2 factor units.
GRID_UNITS = frozenset({"kgCO2/kWh"})
#: (NCV unit, factor unit) -> factor in `unit` per (GJ/... x tC/TJ x oxidation x 44/12 / 1000).
_FUEL_UNIT_SCALE: dict[tuple[str, str], float] = {
    ("GJ/t", "tCO2/t"): 1.0,  # GJ/t x tC/TJ / 1000 -> tC/t
    ("GJ/10^4 m3", "kgCO2/m3"): 0.1,  # per 10^4 m3 in t -> per m3 in kg: x 1000 / 10^4
}
HEAT_UNITS = frozenset({"tCO2/GJ"})

Confidence = Literal["verified", "secondary", "unverified", "measured"]
Category = Literal["primary", "secondary", "energy_medium"]
Basis = Literal["equivalent", "equal"]
Level = Literal["grade_1", "grade_2", "grade_3", "benchmark", "baseline"]
#: Grid factor series: MEE/NBS yearly average; the national reporting factor; the national average without
#: market-traded non-fossil power; fossil-fired power only.
GridKind = Literal["average", "reporting_default", "average_excluding_market_non_fossil", "fossil"]
LevelStatus = Literal["in_force", "not_yet_in_force", "not_in_reference_data", "band_not_covered", "no_figure"]

_SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
_GRADES: tuple[Literal["grade_1", "grade_2", "grade_3"], ...] = ("grade_1", "grade_2", "grade_3")


class ReferenceDataError(EnergymonError, KeyError, ValueError):
    """Reference data is missing, ambiguous or invalid. Names the item (carrier, indicator, date...)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Sourced(_Frozen):
    """Where a figure comes from: the source it was taken from, the independent check, how sure it is."""

    source: str
    #: an independent reproduction that was checked against ``source`` ("not found" when none was found)
    second_source: str | None = None
    confidence: Confidence


class _Dates(_Frozen):
    """An effective date range (``effective_to`` inclusive; None = open)."""

    effective_from: date
    effective_to: date | None = None

    @model_validator(mode="after")
    def _dates_in_order(self) -> _Dates:
        if self.effective_to is not None and self.effective_to < self.effective_from:
            raise ValueError(f"effective_to {self.effective_to} before effective_from {self.effective_from}")
        return self

    def in_force(self, on: date) -> bool:
        """True if the entry applies on ``on``."""
        return _in_force(on, self.effective_from, self.effective_to)


def _check_unit(unit: str) -> str:
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r} (known: {', '.join(UNITS)})")
    return unit


def _per_unit_scale(from_unit: str, to_unit: str) -> Decimal:
    """Factor that turns a value 'per from_unit' into 'per to_unit' (per kg -> per t: 1000)."""
    try:
        dim_a, size_a = UNITS[from_unit]
        dim_b, size_b = UNITS[to_unit]
    except KeyError as exc:
        raise ReferenceDataError(f"unknown unit {exc.args[0]!r} (known: {', '.join(UNITS)})") from None
    if dim_a != dim_b:
        raise ReferenceDataError(f"cannot convert per-{from_unit} ({dim_a}) to per-{to_unit} ({dim_b})")
    return size_b / size_a


def _scaled(value: float, scale: Decimal) -> float:
    return float(Decimal(repr(value)) * scale)


def convert_quantity(value: float, from_unit: str, to_unit: str) -> float:
    """Convert a quantity between units of one dimension (2.5 t -> 2500 kg). Raises ReferenceDataError."""
    return _scaled(value, 1 / _per_unit_scale(from_unit, to_unit))


def _overlaps(a_from: date, a_to: date | None, b_from: date, b_to: date | None) -> bool:
    return a_from <= (b_to or date.max) and b_from <= (a_to or date.max)


def _in_force(on: date, start: date, end: date | None) -> bool:
    return start <= on and (end is None or on <= end)


# ----------------------------------------------------------------------------------------- coefficients


class _CarrierEntry(_Dates, _Sourced):
    """A figure for one energy carrier per one ``unit``, in force over a date range."""

    carrier: str
    name_zh: str
    unit: str
    #: equivalent = 当量值 (heat content), equal = 等价值 (primary energy used to make it); None: not stated
    basis: Basis | None = None
    note: str | None = None

    @field_validator("carrier")
    @classmethod
    def _carrier_id(cls, v: str) -> str:
        if not _SNAKE.match(v):
            raise ValueError(f"carrier {v!r} must be snake_case")
        return v

    @field_validator("unit")
    @classmethod
    def _unit_known(cls, v: str) -> str:
        return _check_unit(v)


class Coefficient(_CarrierEntry):
    """One standard-coal coefficient: kgce per one ``unit`` of ``carrier``, in force over a date range."""

    kgce_per_unit: float = Field(gt=0)
    lhv_kj_per_unit: float | None = Field(default=None, gt=0)
    #: step of the published LHV figure in kJ per unit ("2.51 MJ/t" -> 10)
    lhv_resolution_kj: float = Field(default=1.0, gt=0)
    lhv_confidence: Confidence | None = None
    category: Category | None = None

    def to_unit(self, unit: str) -> Coefficient:
        """The same coefficient per another unit of the same dimension (raw coal per t: 714.3)."""
        if unit == self.unit:
            return self
        scale = _per_unit_scale(self.unit, unit)
        update: dict[str, Any] = {
            "unit": unit,
            "kgce_per_unit": _scaled(self.kgce_per_unit, scale),
            "lhv_resolution_kj": _scaled(self.lhv_resolution_kj, scale),
        }
        if self.lhv_kj_per_unit is not None:
            update["lhv_kj_per_unit"] = _scaled(self.lhv_kj_per_unit, scale)
        return self.model_copy(update=update)

    def kgce(self, quantity: float, unit: str | None = None) -> float:
        """Standard coal (kgce) of ``quantity`` (in ``unit``, default the coefficient's unit)."""
        coef = self if unit is None else self.to_unit(unit)
        return quantity * coef.kgce_per_unit


class CoefficientRange(_CarrierEntry):
    """A carrier the standard gives only as a range (焦炉煤气); a measured LHV is needed for a value."""

    kgce_min: float = Field(gt=0)
    kgce_max: float = Field(gt=0)
    lhv_min_kj_per_unit: float | None = Field(default=None, gt=0)
    lhv_max_kj_per_unit: float | None = Field(default=None, gt=0)
    category: Category

    @model_validator(mode="after")
    def _order(self) -> CoefficientRange:
        if self.kgce_min > self.kgce_max:
            raise ValueError(f"{self.carrier}: kgce_min > kgce_max")
        return self

    def bounds(self) -> tuple[Coefficient, Coefficient]:
        """The two ends of the range as coefficients (for the LHV check and for display)."""
        common: dict[str, Any] = {**_fields_of(self, _CarrierEntry), "category": self.category}
        return (
            Coefficient(kgce_per_unit=self.kgce_min, lhv_kj_per_unit=self.lhv_min_kj_per_unit, **common),
            Coefficient(kgce_per_unit=self.kgce_max, lhv_kj_per_unit=self.lhv_max_kj_per_unit, **common),
        )


class OilEquivalentFactor(_CarrierEntry):
    """A GB 30251 能源折算值: kilograms of oil equivalent (1 kgoe = 41,868 kJ) per one ``unit`` of a carrier."""

    kgoe_per_unit: float = Field(gt=0)

    def per(self, unit: str) -> float:
        """kgoe per one ``unit`` (same dimension as the factor's unit)."""
        return _scaled(self.kgoe_per_unit, _per_unit_scale(self.unit, unit))


class OilEquivalentSet(_Frozen):
    """The oil-equivalent factors a quota standard prescribes for some of its indicators (GB 30251: 炼油, 乙烯)."""

    id: str
    standard: str
    title: str
    #: indicators computed with these factors instead of GB/T 2589 kgce x 0.7
    indicators: tuple[str, ...] = Field(min_length=1)
    factors: tuple[OilEquivalentFactor, ...] = Field(min_length=1)
    note: str | None = None

    def factor(self, carrier: str, on: date) -> OilEquivalentFactor | None:
        """The factor of ``carrier`` in force on ``on``; None: not listed (convert its kgce x 0.7)."""
        return next((f for f in self.factors if f.carrier == carrier and f.in_force(on)), None)


class ElectricityEqualValue(_Sourced):
    """Electricity 等价值 (the year's 供电标准煤耗) for a region; a point value or only a range."""

    region: str
    name_zh: str
    year_from: int | None = None
    year_to: int | None = None
    kgce_per_kwh: float | None = Field(default=None, gt=0)
    kgce_per_kwh_min: float | None = Field(default=None, gt=0)
    kgce_per_kwh_max: float | None = Field(default=None, gt=0)
    note: str | None = None

    @model_validator(mode="after")
    def _value_or_range(self) -> ElectricityEqualValue:
        if self.kgce_per_kwh is None and (self.kgce_per_kwh_min is None or self.kgce_per_kwh_max is None):
            raise ValueError(f"{self.region}: needs kgce_per_kwh or both kgce_per_kwh_min/max")
        if self.year_from is not None and self.year_to is not None and self.year_to < self.year_from:
            raise ValueError(f"{self.region}: year_to before year_from")
        return self

    def covers(self, year: int) -> bool:
        return (self.year_from is None or self.year_from <= year) and (
            self.year_to is None or year <= self.year_to
        )


def lhv_mismatch(coef: Coefficient) -> float | None:
    """Residual (kgce per unit) if ``coef`` disagrees with its LHV, else None (also None without an LHV).

    The published coefficient must equal LHV/29,307.6 or LHV/29,271.2 (the Annex's 4.1816 kJ/kcal) within
    half a unit of its 4th decimal plus half the resolution of the published LHV. This catches a wrong pairing
    such as 38,931 kJ/m3 (oilfield gas, 1.3300) with 1.2143 (gas-field gas).
    """
    if coef.lhv_kj_per_unit is None:
        return None
    residuals = []
    for divisor in (KGCE_KJ, KGCE_KJ_ANNEX):
        residual = abs(coef.kgce_per_unit - coef.lhv_kj_per_unit / divisor)
        allowed = 0.5e-4 + (coef.lhv_resolution_kj / 2) / divisor
        if residual <= allowed:
            return None
        residuals.append(residual)
    return min(residuals)


def coefficient_from_lhv(
    lhv_kj_per_unit: float,
    unit: str,
    carrier: str,
    *,
    name_zh: str | None = None,
    category: Category | None = None,
    effective_from: date = date.min,
    effective_to: date | None = None,
    source: str = "plant measurement of the net calorific value (LHV)",
    note: str | None = None,
) -> Coefficient:
    """Coefficient from a measured net calorific value: kgce/unit = LHV_measured (kJ/unit) / 29,307.6.

    Used when a plant overrides the GB/T 2589 default (e.g. a coal assay). The result has confidence
    ``measured`` and basis ``equivalent`` (当量值).

    Raises:
        ReferenceDataError: the LHV is not positive, the unit is unknown or the carrier id is not snake_case.
    """
    if not lhv_kj_per_unit > 0:
        raise ReferenceDataError(f"{carrier}: measured LHV must be > 0 kJ/{unit}, got {lhv_kj_per_unit}")
    try:
        return Coefficient(
            carrier=carrier,
            name_zh=name_zh or carrier,
            unit=unit,
            kgce_per_unit=lhv_kj_per_unit / KGCE_KJ,
            lhv_kj_per_unit=lhv_kj_per_unit,
            category=category,
            basis="equivalent",
            source=source,
            effective_from=effective_from,
            effective_to=effective_to,
            confidence="measured",
            note=note,
        )
    except ValidationError as exc:
        raise ReferenceDataError(f"{carrier}: invalid measured coefficient: {exc}") from None


# ----------------------------------------------------------------------------------------- CO2 factors


class _Co2Factor(_Sourced):
    """A published CO2 factor: its value in ``unit`` and where it comes from."""

    allowed_units: ClassVar[frozenset[str]] = frozenset()

    name_zh: str
    value: float = Field(gt=0)
    unit: str
    note: str | None = None

    @model_validator(mode="after")
    def _unit_known(self) -> _Co2Factor:
        if self.allowed_units and self.unit not in self.allowed_units:
            known = ", ".join(sorted(self.allowed_units))
            raise ValueError(f"unknown {type(self).__name__} unit {self.unit!r} (known: {known})")
        return self


class GridCo2Factor(_Co2Factor):
    """Grid electricity CO2 factor for a region and a range of years (kgCO2/kWh = tCO2/MWh)."""

    allowed_units: ClassVar[frozenset[str]] = GRID_UNITS

    region: str
    kind: GridKind
    year_from: int
    year_to: int | None = None

    def covers(self, year: int) -> bool:
        return self.year_from <= year and (self.year_to is None or year <= self.year_to)

    @property
    def t_co2_per_mwh(self) -> float:
        return self.value


class FuelCo2Factor(_Co2Factor):
    """Fuel combustion CO2 factor: NCV x carbon content x oxidation x 44/12, with the published value."""

    fuel: str
    ncv: float = Field(gt=0)
    ncv_unit: str
    carbon_content_tc_per_tj: float = Field(gt=0)
    oxidation_rate: float = Field(gt=0, le=1)
    published_decimals: int = Field(ge=0, le=6)
    #: date of the guideline the defaults come from
    effective_from: date | None = None

    @model_validator(mode="after")
    def _units(self) -> FuelCo2Factor:
        if (self.ncv_unit, self.unit) not in _FUEL_UNIT_SCALE:
            raise ValueError(f"{self.fuel}: unsupported unit pair {self.ncv_unit!r} -> {self.unit!r}")
        return self

    def computed(self) -> float:
        """NCV x carbon content x oxidation x 44/12, in ``unit`` (unrounded)."""
        scale = _FUEL_UNIT_SCALE[(self.ncv_unit, self.unit)]
        return self.ncv * self.carbon_content_tc_per_tj / 1000 * self.oxidation_rate * 44 / 12 * scale


class HeatCo2Factor(_Co2Factor):
    """CO2 factor of purchased heat/steam."""

    allowed_units: ClassVar[frozenset[str]] = HEAT_UNITS

    id: str
    applies_to: tuple[str, ...]
    effective_from: date | None = None


# ----------------------------------------------------------------------------------------- benchmarks


class _BandUnit(_Frozen):
    """A capacity unit (t/d, t)."""

    unit: str

    @field_validator("unit")
    @classmethod
    def _unit_known(cls, v: str) -> str:
        if v not in BAND_UNITS:
            raise ValueError(f"unknown band unit {v!r} (known: {', '.join(sorted(BAND_UNITS))})")
        return v


class Band(_BandUnit):
    """A capacity band (flat glass t/d, EAF tonnage); None bounds are open."""

    min: float | None = None
    max: float | None = None
    min_inclusive: bool = True
    max_inclusive: bool = False

    @model_validator(mode="after")
    def _order(self) -> Band:
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"band min {self.min} must be below max {self.max}")
        return self

    def contains(self, value: float) -> bool:
        if self.min is not None and (value < self.min or (value == self.min and not self.min_inclusive)):
            return False
        return not (
            self.max is not None and (value > self.max or (value == self.max and not self.max_inclusive))
        )

    def overlaps(self, other: Band) -> bool:
        """True if some value lies in both bands."""
        lo_self = self.min if self.min is not None else float("-inf")
        lo_other = other.min if other.min is not None else float("-inf")
        hi_self = self.max if self.max is not None else float("inf")
        hi_other = other.max if other.max is not None else float("inf")
        lo, hi = max(lo_self, lo_other), min(hi_self, hi_other)
        if lo < hi:
            return True
        if lo > hi:
            return False
        return self.contains(lo) and other.contains(lo)

    def label(self) -> str:
        lo = "" if self.min is None else f"{self.min:g}{'<=' if self.min_inclusive else '<'}"
        hi = "" if self.max is None else f"{'<=' if self.max_inclusive else '<'}{self.max:g}"
        return f"{lo}x{hi} {self.unit}"


class BandSpec(_BandUnit):
    """What the band value of an indicator measures."""

    name_zh: str


class Correction(_Frozen):
    """A correction to the limits, described as data; applying it needs plant inputs.

    kinds: ``additive_per_unit`` (limit += amount x units, units capped at max_units), ``multiplier``
    (limit x amount, when ``condition``), ``product_of_factors`` (limit x product of ``factors``),
    ``unquantified`` (the standard has it; the amounts are not in the reference data).
    """

    id: str
    kind: Literal["additive_per_unit", "multiplier", "product_of_factors", "unquantified"]
    applies_to: tuple[Level, ...] = _GRADES
    per: str | None = None
    amount: float | None = None
    amount_by_grade: dict[Level, float] | None = None
    max_units: float | None = Field(default=None, gt=0)
    factors: tuple[str, ...] | None = None
    condition: str | None = None
    confidence: Confidence
    note: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Correction:
        if self.kind == "additive_per_unit" and (
            self.per is None or (self.amount is None) == (self.amount_by_grade is None)
        ):
            raise ValueError(
                f"correction {self.id}: additive_per_unit needs per and amount or amount_by_grade"
            )
        if self.kind == "product_of_factors" and not self.factors:
            raise ValueError(f"correction {self.id}: product_of_factors needs factors")
        if self.kind == "unquantified" and (self.amount is not None or self.amount_by_grade is not None):
            raise ValueError(f"correction {self.id}: unquantified must not carry an amount")
        return self

    def amount_for(self, level: Level) -> float | None:
        """The amount that applies to ``level`` (None if the correction does not apply or is unquantified)."""
        if level not in self.applies_to:
            return None
        if self.amount_by_grade is not None:
            return self.amount_by_grade.get(level)
        return self.amount


class PolicyRow(_Frozen):
    band: Band | None = None
    benchmark: float | None = None  # 标杆
    baseline: float | None = None  # 基准
    confidence: Confidence | None = None
    note: str | None = None


class QuotaRow(_Frozen):
    band: Band | None = None
    grade_1: float | None = None
    grade_2: float | None = None
    grade_3: float | None = None
    confidence: Confidence | None = None
    note: str | None = None


class PolicyEdition(_Dates):
    """One edition of the 标杆/基准 notice."""

    id: str
    title: str
    document_no: str
    retrofit_deadline: date | None = None
    #: deadline for the areas this edition adds (2023 edition: the 11 new areas, end-2026)
    retrofit_deadline_new_areas: date | None = None
    source: str
    confidence: Confidence
    date_confidence: Confidence
    note: str | None = None


class QuotaStandard(_Dates):
    """One mandatory 能耗限额 standard."""

    id: str
    title: str
    published: date | None = None
    source: str
    date_confidence: Confidence
    note: str | None = None


class _PolicySetIn(_Sourced):
    """A 标杆/基准 level set as written in benchmarks.yaml (names its edition).

    Exactly one of: ``rows`` (numbers read from this edition), ``values_from`` (this edition is in force but
    its table was not read: the numbers are those of the named earlier edition, and every result says so), or
    ``missing`` (the edition covers the area but no figure was found: the reason).
    """

    edition: str
    rows: tuple[PolicyRow, ...] = ()
    values_from: str | None = None
    missing: str | None = None
    note: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> _PolicySetIn:
        given = [k for k in ("rows", "values_from", "missing") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"policy set {self.edition}: give exactly one of rows, values_from, missing (got {given or 'none'})"
            )
        if self.values_from == self.edition:
            raise ValueError(f"policy set {self.edition}: values_from names its own edition")
        return self


class _QuotaSetIn(_Frozen):
    """A 能耗限额 level set as written in benchmarks.yaml (names its standard; source defaults to the standard's)."""

    standard: str
    source: str | None = None
    second_source: str | None = None
    confidence: Confidence
    rows: tuple[QuotaRow, ...] = Field(min_length=1)
    corrections: tuple[Correction, ...] = ()
    note: str | None = None


class _IndicatorBase(_Frozen):
    """What an indicator is, without its level sets."""

    id: str
    name_zh: str
    unit: str
    direction: Literal["lower_is_better"] = "lower_is_better"
    sign_note: str | None = None
    band: BandSpec | None = None
    #: the area of the 标杆/基准 list the indicator belongs to (铜冶炼, 建筑陶瓷...), as the notice names it
    area_zh: str | None = None
    #: the policy edition that added the area (benchmark_2023 for its 11 new areas); None = in the 2021 list
    added_in: str | None = None
    note: str | None = None


class _IndicatorIn(_IndicatorBase):
    policy: tuple[_PolicySetIn, ...] = ()
    quota: tuple[_QuotaSetIn, ...] = ()


class _PolicyDocument(_Dates, _Sourced):
    """The policy edition behind a level set or a resolved row.

    ``values_edition``/``values_document_no`` name the edition the numbers were read from: the same edition
    normally; the earlier one when this edition's table was not read (``values_from`` in benchmarks.yaml).
    ``missing`` is the reason when the edition covers the area but no figure was found.
    """

    edition: str
    document_no: str
    values_edition: str = ""
    values_document_no: str = ""
    missing: str | None = None
    retrofit_deadline: date | None = None
    note: str | None = None

    @property
    def values_copied(self) -> bool:
        """True when the numbers are another edition's (this edition's table was not read)."""
        return bool(self.values_edition) and self.values_edition != self.edition


class _QuotaDocument(_Dates, _Sourced):
    """The 能耗限额 standard behind a level set or a resolved row, with its corrections."""

    standard: str
    title: str
    document_no: str
    corrections: tuple[Correction, ...] = ()
    note: str | None = None


class PolicyLevelSet(_PolicyDocument):
    """标杆/基准 of one indicator under one policy edition (document data attached)."""

    title: str
    rows: tuple[PolicyRow, ...]


class QuotaLevelSet(_QuotaDocument):
    """1级/2级/3级 of one indicator under one 能耗限额 standard (document data attached)."""

    rows: tuple[QuotaRow, ...]


class IndicatorDef(_IndicatorBase):
    """An indicator with all its level sets. All indicators are lower-is-better."""

    policy: tuple[PolicyLevelSet, ...] = ()
    quota: tuple[QuotaLevelSet, ...] = ()


class PolicyLevels(_PolicyDocument):
    """The 标杆/基准 row that applies (one edition, one band)."""

    band: Band | None
    benchmark: float | None
    baseline: float | None


class QuotaLevels(_QuotaDocument):
    """The 能耗限额 row that applies (one standard, one band), with its corrections."""

    band: Band | None
    grade_1: float | None
    grade_2: float | None
    grade_3: float | None


class Levels(_Frozen):
    """What :meth:`ReferenceData.levels` returns: policy levels and quota grades in force on ``on``.

    A status says why a part is None: ``not_yet_in_force`` (a set exists but starts later; for the quota the
    next one is in ``upcoming_quota``), ``not_in_reference_data`` (nothing stored for that date), or
    ``band_not_covered`` (a set is in force but has no row for ``band_value``).
    """

    indicator: IndicatorDef
    on: date
    band_value: float | None
    policy: PolicyLevels | None
    policy_status: LevelStatus
    quota: QuotaLevels | None
    quota_status: LevelStatus
    upcoming_quota: QuotaLevels | None = None
    ref_version: str


class Target(_Sourced):
    """A policy target or trigger on an indicator that is not a grade table (e.g. PUE < 1.3)."""

    id: str
    indicator: str
    kind: Literal["target", "trigger"]
    comparison: Literal["lt", "le", "gt", "ge"]
    value: float
    scope: str
    effective_from: date | None = None
    deadline: date | None = None
    note: str | None = None


# ----------------------------------------------------------------------------------------- files


class _CoefficientsFile(_Frozen):
    version: str
    coefficients: tuple[Coefficient, ...]
    coefficient_ranges: tuple[CoefficientRange, ...] = ()
    electricity_equal_values: tuple[ElectricityEqualValue, ...] = ()
    oil_equivalent_sets: tuple[OilEquivalentSet, ...] = ()


class _Co2File(_Frozen):
    version: str
    grid: tuple[GridCo2Factor, ...]
    fuels: tuple[FuelCo2Factor, ...] = ()
    heat: tuple[HeatCo2Factor, ...] = ()


class _BenchmarksFile(_Frozen):
    version: str
    policy_editions: tuple[PolicyEdition, ...]
    quota_standards: tuple[QuotaStandard, ...]
    indicators: tuple[_IndicatorIn, ...]
    targets: tuple[Target, ...] = ()


def _duplicates(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    dups: list[str] = []
    for item in items:
        if item in seen and item not in dups:
            dups.append(item)
        seen.add(item)
    return dups


def _check_no_overlap(what: str, key: str, spans: Sequence[tuple[date, date | None]]) -> list[str]:
    problems = []
    for i, (a_from, a_to) in enumerate(spans):
        for b_from, b_to in spans[i + 1 :]:
            if _overlaps(a_from, a_to, b_from, b_to):
                problems.append(
                    f"{what} {key!r}: effective ranges {a_from}..{a_to or 'open'}"
                    f" and {b_from}..{b_to or 'open'} overlap"
                )
    return problems


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:g}"


class ReferenceData(_Frozen):
    """All reference data, validated. Build it with :func:`load_reference_data`."""

    versions: dict[str, str]
    coefficients: tuple[Coefficient, ...]
    coefficient_ranges: tuple[CoefficientRange, ...] = ()
    electricity_equal_values: tuple[ElectricityEqualValue, ...] = ()
    oil_equivalent_sets: tuple[OilEquivalentSet, ...] = ()
    grid_factors: tuple[GridCo2Factor, ...] = ()
    fuel_factors: tuple[FuelCo2Factor, ...] = ()
    heat_factors: tuple[HeatCo2Factor, ...] = ()
    policy_editions: tuple[PolicyEdition, ...] = ()
    quota_standards: tuple[QuotaStandard, ...] = ()
    indicators: tuple[IndicatorDef, ...] = ()
    targets: tuple[Target, ...] = ()

    # ---------------------------------------------------------------- validation
    @model_validator(mode="after")
    def _validate(self) -> ReferenceData:
        problems: list[str] = []
        problems += self._validate_coefficients()
        problems += self._validate_co2()
        problems += self._validate_benchmarks()
        problems += self._validate_oil_equivalent()
        if problems:
            raise ValueError("invalid reference data:\n  " + "\n  ".join(problems))
        return self

    def _validate_coefficients(self) -> list[str]:
        problems: list[str] = []
        spans: dict[str, list[tuple[date, date | None]]] = {}
        for c in self.coefficients:
            spans.setdefault(c.carrier, []).append((c.effective_from, c.effective_to))
            if c.category is None:
                problems.append(f"coefficient {c.carrier!r} ({c.effective_from}): category is required")
            if c.confidence == "measured":
                problems.append(
                    f"coefficient {c.carrier!r}: 'measured' is for plant overrides, not reference data"
                )
            residual = lhv_mismatch(c)
            if residual is not None:
                problems.append(
                    f"coefficient {c.carrier!r} ({c.effective_from}): {c.kgce_per_unit} kgce/{c.unit}"
                    f" does not match LHV {c.lhv_kj_per_unit:g} kJ/{c.unit}"
                    f" (off by {residual:.4f}; expected LHV/{KGCE_KJ})"
                )
        for r in self.coefficient_ranges:
            spans.setdefault(r.carrier, []).append((r.effective_from, r.effective_to))
            for end in r.bounds():
                residual = lhv_mismatch(end)
                if residual is not None:
                    problems.append(
                        f"coefficient range {r.carrier!r}: {end.kgce_per_unit} does not match its LHV"
                    )
        for carrier, carrier_spans in spans.items():
            problems += _check_no_overlap("carrier", carrier, carrier_spans)
        by_region: dict[str, list[ElectricityEqualValue]] = {}
        for e in self.electricity_equal_values:
            by_region.setdefault(e.region, []).append(e)
        for region, entries in by_region.items():
            for i, a in enumerate(entries):
                for b in entries[i + 1 :]:
                    if (a.year_from or 0) <= (b.year_to or 9999) and (b.year_from or 0) <= (
                        a.year_to or 9999
                    ):
                        problems.append(f"electricity 等价值 {region!r}: year ranges overlap")
        return problems

    def _validate_oil_equivalent(self) -> list[str]:
        problems: list[str] = []
        for dup in _duplicates(o.id for o in self.oil_equivalent_sets):
            problems.append(f"duplicate oil-equivalent set {dup!r}")
        indicators = {i.id for i in self.indicators}
        known = {c.carrier: c.unit for c in self.coefficients}
        claimed: dict[str, str] = {}
        for o in self.oil_equivalent_sets:
            for ind in o.indicators:
                if ind not in indicators:
                    problems.append(f"oil-equivalent set {o.id!r}: unknown indicator {ind!r}")
                elif ind in claimed:
                    problems.append(f"indicator {ind!r} is in oil-equivalent sets {claimed[ind]!r} and {o.id!r}")
                claimed[ind] = o.id
            spans: dict[str, list[tuple[date, date | None]]] = {}
            for f in o.factors:
                spans.setdefault(f.carrier, []).append((f.effective_from, f.effective_to))
                if f.carrier not in known:
                    problems.append(f"oil-equivalent set {o.id!r}: unknown carrier {f.carrier!r}")
                elif UNITS[f.unit][0] != UNITS[known[f.carrier]][0]:
                    problems.append(
                        f"oil-equivalent set {o.id!r}: {f.carrier} per {f.unit} but its coefficient is per"
                        f" {known[f.carrier]}"
                    )
            for carrier, carrier_spans in spans.items():
                problems += _check_no_overlap(f"oil-equivalent set {o.id!r} carrier", carrier, carrier_spans)
        return problems

    def oil_equivalent_set(self, indicator_id: str) -> OilEquivalentSet | None:
        """The oil-equivalent factor set an indicator is computed with (GB 30251: 炼油, 乙烯), or None."""
        return next((o for o in self.oil_equivalent_sets if indicator_id in o.indicators), None)

    def _validate_co2(self) -> list[str]:
        problems: list[str] = []
        groups: dict[tuple[str, str], list[GridCo2Factor]] = {}
        for g in self.grid_factors:
            groups.setdefault((g.region, g.kind), []).append(g)
        for (region, kind), entries in groups.items():
            for i, a in enumerate(entries):
                for b in entries[i + 1 :]:
                    if a.year_from <= (b.year_to or 9999) and b.year_from <= (a.year_to or 9999):
                        problems.append(f"grid factor {region!r}/{kind}: year ranges overlap")
        for dup in _duplicates(f.fuel for f in self.fuel_factors):
            problems.append(f"duplicate fuel CO2 factor {dup!r}")
        for dup in _duplicates(h.id for h in self.heat_factors):
            problems.append(f"duplicate heat CO2 factor {dup!r}")
        for f in self.fuel_factors:
            allowed = 0.5 * 10 ** (-f.published_decimals) + 1e-9
            if abs(f.computed() - f.value) > allowed:
                problems.append(
                    f"fuel CO2 factor {f.fuel!r}: published {f.value} {f.unit} but NCV x CC x OX x 44/12 = "
                    f"{f.computed():.4f}"
                )
        return problems

    def _validate_benchmarks(self) -> list[str]:
        problems: list[str] = []
        for dup in _duplicates(e.id for e in self.policy_editions):
            problems.append(f"duplicate policy edition {dup!r}")
        for dup in _duplicates(s.id for s in self.quota_standards):
            problems.append(f"duplicate quota standard {dup!r}")
        for dup in _duplicates(i.id for i in self.indicators):
            problems.append(f"duplicate indicator {dup!r}")
        for dup in _duplicates(t.id for t in self.targets):
            problems.append(f"duplicate target {dup!r}")
        ids = {i.id for i in self.indicators}
        for t in self.targets:
            if t.indicator not in ids:
                problems.append(f"target {t.id!r}: unknown indicator {t.indicator!r}")
        for ind in self.indicators:
            problems += _validate_indicator(ind)
        return problems

    # ---------------------------------------------------------------- versions
    @property
    def version(self) -> str:
        """The reference-data version to record with a result: one version if all files agree."""
        distinct = set(self.versions.values())
        if len(distinct) == 1:
            return next(iter(distinct))
        return "+".join(f"{name}@{v}" for name, v in sorted(self.versions.items()))

    # ---------------------------------------------------------------- coefficients
    def carriers(self) -> tuple[str, ...]:
        """Every carrier id with a coefficient or a range, sorted."""
        return tuple(
            sorted({c.carrier for c in self.coefficients} | {r.carrier for r in self.coefficient_ranges})
        )

    def coefficient(self, carrier: str, on: date, unit: str | None = None) -> Coefficient:
        """The coefficient of ``carrier`` in force on ``on``, optionally converted to ``unit``.

        Raises:
            ReferenceDataError: unknown carrier, nothing in force on that date, a carrier given only as a
                range (use a measured LHV), or a unit of another dimension.
        """
        entries = [c for c in self.coefficients if c.carrier == carrier]
        ranges = [r for r in self.coefficient_ranges if r.carrier == carrier]
        if not entries and not ranges:
            raise ReferenceDataError(
                f"unknown energy carrier {carrier!r} (known: {', '.join(self.carriers())})"
            )
        for c in entries:
            if c.in_force(on):
                return c if unit is None else c.to_unit(unit)
        for r in ranges:
            if r.in_force(on):
                raise ReferenceDataError(
                    f"carrier {carrier!r} has no single default on {on}: {r.source} gives only the range "
                    f"{r.kgce_min}–{r.kgce_max} kgce/{r.unit}; configure a measured LHV "
                    f"(coefficient = LHV / {KGCE_KJ} kJ/kgce)"
                )
        dates = [(c.effective_from, c.effective_to) for c in entries]
        dates += [(r.effective_from, r.effective_to) for r in ranges]
        spans = ", ".join(f"{start}..{end or 'open'}" for start, end in dates)
        raise ReferenceDataError(
            f"no coefficient for carrier {carrier!r} in force on {on} (entries: {spans})"
        )

    def coefficient_range(self, carrier: str, on: date) -> CoefficientRange:
        """The published range of a carrier given only as a range (焦炉煤气)."""
        for r in self.coefficient_ranges:
            if r.carrier == carrier and r.in_force(on):
                return r
        raise ReferenceDataError(f"no coefficient range for carrier {carrier!r} in force on {on}")

    def electricity_equal_value(self, year: int, region: str = "national") -> Coefficient:
        """Electricity 等价值 (kgce/kWh) for ``year`` and ``region`` as a coefficient valid for that year.

        Raises:
            ReferenceDataError: unknown region, no entry for the year, or only a range is known (national).
        """
        entries = [e for e in self.electricity_equal_values if e.region == region]
        if not entries:
            known = ", ".join(sorted({e.region for e in self.electricity_equal_values}))
            raise ReferenceDataError(f"no electricity 等价值 for region {region!r} (known: {known})")
        dated = [e for e in entries if e.covers(year)]
        exact = [e for e in dated if e.year_from is not None or e.year_to is not None]
        candidates = exact or dated
        if not candidates:
            raise ReferenceDataError(f"no electricity 等价值 for region {region!r} in {year}")
        entry = candidates[0]
        if entry.kgce_per_kwh is None:
            raise ReferenceDataError(
                f"electricity 等价值 for {region!r} in {year}: only the range {entry.kgce_per_kwh_min}–"
                f"{entry.kgce_per_kwh_max} kgce/kWh is known ({entry.source}); configure the year's 供电煤耗"
            )
        return Coefficient(
            carrier="electricity",
            name_zh=f"电力（等价值，{entry.name_zh}）",
            unit="kWh",
            kgce_per_unit=entry.kgce_per_kwh,
            category="secondary",
            basis="equal",
            source=entry.source,
            effective_from=date(year, 1, 1),
            effective_to=date(year, 12, 31),
            confidence=entry.confidence,
            note=entry.note,
        )

    # ---------------------------------------------------------------- CO2
    def grid_co2_factor(self, year: int, region: str = "national", kind: str = "average") -> GridCo2Factor:
        """Grid CO2 factor for ``year`` and ``region``; ``kind`` is ``average`` or ``reporting_default``.

        Raises:
            ReferenceDataError: nothing stored for that year, region and kind (the message lists what is).
        """
        for g in self.grid_factors:
            if g.region == region and g.kind == kind and g.covers(year):
                return g
        have = ", ".join(
            f"{g.region}/{g.kind}/{g.year_from}..{g.year_to or 'open'}" for g in self.grid_factors
        )
        raise ReferenceDataError(
            f"no grid CO2 factor for region {region!r}, kind {kind!r}, year {year} (have: {have})"
        )

    def fuel_co2_factor(self, fuel: str) -> FuelCo2Factor:
        """Combustion CO2 factor of ``fuel``."""
        for f in self.fuel_factors:
            if f.fuel == fuel:
                return f
        known = ", ".join(f.fuel for f in self.fuel_factors)
        raise ReferenceDataError(f"no fuel CO2 factor for {fuel!r} (known: {known})")

    def heat_co2_factor(self, carrier: str = "heat") -> HeatCo2Factor:
        """CO2 factor of purchased heat or steam (tCO2/GJ)."""
        for h in self.heat_factors:
            if carrier in h.applies_to or h.id == carrier:
                return h
        raise ReferenceDataError(f"no heat CO2 factor for {carrier!r}")

    # ---------------------------------------------------------------- benchmarks
    def indicator(self, indicator_id: str) -> IndicatorDef:
        """The indicator definition with all its level sets.

        Raises:
            ReferenceDataError: unknown indicator id.
        """
        for ind in self.indicators:
            if ind.id == indicator_id:
                return ind
        known = ", ".join(i.id for i in self.indicators)
        raise ReferenceDataError(f"unknown indicator {indicator_id!r} (known: {known})")

    def targets_for(self, indicator_id: str) -> tuple[Target, ...]:
        """Policy targets/triggers on an indicator (e.g. PUE)."""
        self.indicator(indicator_id)
        return tuple(t for t in self.targets if t.indicator == indicator_id)

    def levels(self, indicator_id: str, on: date, band_value: float | None = None) -> Levels:
        """The 标杆/基准 and the 能耗限额 grades of an indicator in force on ``on``.

        ``band_value`` chooses the capacity row (flat glass t/d, EAF nominal tonnes); it is required for an
        indicator with a band (see ``IndicatorDef.band``) and ignored otherwise.

        Raises:
            ReferenceDataError: unknown indicator, or a band value is needed but missing.
        """
        ind = self.indicator(indicator_id)
        if ind.band is not None and band_value is None:
            raise ReferenceDataError(
                f"indicator {indicator_id!r} has capacity bands:"
                f" pass band_value ({ind.band.name_zh}, {ind.band.unit})"
            )
        value = band_value if ind.band is not None else None

        policy: PolicyLevels | None = None
        policy_status: LevelStatus = "not_in_reference_data"
        pset = next((p for p in ind.policy if _in_force(on, p.effective_from, p.effective_to)), None)
        if pset is not None and pset.missing is not None:
            policy = PolicyLevels(**_fields_of(pset, _PolicyDocument), band=None, benchmark=None, baseline=None)
            policy_status = "no_figure"
        elif pset is not None:
            prow = _pick_row(pset.rows, value)
            if prow is None:
                policy_status = "band_not_covered"
            else:
                policy = PolicyLevels(
                    **_fields_of(pset, _PolicyDocument),
                    band=prow.band,
                    benchmark=prow.benchmark,
                    baseline=prow.baseline,
                ).model_copy(
                    update={"confidence": prow.confidence or pset.confidence, "note": prow.note or pset.note}
                )
                policy_status = "in_force"
        elif any(p.effective_from > on for p in ind.policy):
            policy_status = "not_yet_in_force"

        quota: QuotaLevels | None = None
        quota_status: LevelStatus = "not_in_reference_data"
        qset = next((q for q in ind.quota if _in_force(on, q.effective_from, q.effective_to)), None)
        if qset is not None:
            quota = _quota_levels(qset, value)
            quota_status = "in_force" if quota is not None else "band_not_covered"
        elif any(q.effective_from > on for q in ind.quota):
            quota_status = "not_yet_in_force"
        later = sorted((q for q in ind.quota if q.effective_from > on), key=lambda q: q.effective_from)
        upcoming = _quota_levels(later[0], value) if later else None

        return Levels(
            indicator=ind,
            on=on,
            band_value=value,
            policy=policy,
            policy_status=policy_status,
            quota=quota,
            quota_status=quota_status,
            upcoming_quota=upcoming,
            ref_version=self.version,
        )


_R = TypeVar("_R", PolicyRow, QuotaRow)


def _fields_of(model: BaseModel, kind: type[BaseModel], only: Sequence[str] | None = None) -> dict[str, Any]:
    """The fields of ``model`` that ``kind`` declares, or just ``only`` (shallow: nested models are kept)."""
    names = only if only is not None else [n for n in kind.model_fields if n in type(model).model_fields]
    return {name: getattr(model, name) for name in names}


def _pick_row(rows: Sequence[_R], band_value: float | None) -> _R | None:
    if band_value is None:
        return rows[0] if rows and rows[0].band is None else None
    for row in rows:
        if row.band is not None and row.band.contains(band_value):
            return row
    return None


def _quota_levels(qset: QuotaLevelSet, band_value: float | None) -> QuotaLevels | None:
    row = _pick_row(qset.rows, band_value)
    if row is None:
        return None
    return QuotaLevels(
        **_fields_of(qset, _QuotaDocument), band=row.band, grade_1=row.grade_1, grade_2=row.grade_2, grade_3=row.grade_3
    ).model_copy(update={"confidence": row.confidence or qset.confidence, "note": row.note or qset.note})


def _validate_indicator(ind: IndicatorDef) -> list[str]:
    problems: list[str] = []
    where = f"indicator {ind.id!r}"
    if not _SNAKE.match(ind.id):
        problems.append(f"{where}: id must be snake_case")
    if ind.unit not in INDICATOR_UNITS:
        problems.append(f"{where}: unknown unit {ind.unit!r} (known: {', '.join(sorted(INDICATOR_UNITS))})")
    problems += _check_no_overlap(
        "policy levels of", ind.id, [(p.effective_from, p.effective_to) for p in ind.policy]
    )
    problems += _check_no_overlap(
        "quota levels of", ind.id, [(q.effective_from, q.effective_to) for q in ind.quota]
    )
    for dup in _duplicates(p.edition for p in ind.policy):
        problems.append(f"{where}: edition {dup!r} listed twice")
    for dup in _duplicates(q.standard for q in ind.quota):
        problems.append(f"{where}: standard {dup!r} listed twice")

    def bands(label: str, row_bands: list[Band | None]) -> None:
        if ind.band is None:
            if any(b is not None for b in row_bands):
                problems.append(f"{where} {label}: rows have bands but the indicator declares none")
            elif len(row_bands) > 1:
                problems.append(f"{where} {label}: several rows without bands")
            return
        if any(b is None for b in row_bands):
            problems.append(f"{where} {label}: every row needs a band ({ind.band.unit})")
            return
        present = [b for b in row_bands if b is not None]
        for b in present:
            if b.unit != ind.band.unit:
                problems.append(f"{where} {label}: band unit {b.unit!r} is not {ind.band.unit!r}")
        for i, a in enumerate(present):
            for b in present[i + 1 :]:
                if a.overlaps(b):
                    problems.append(f"{where} {label}: bands {a.label()} and {b.label()} overlap")

    for p in ind.policy:
        bands(p.edition, [r.band for r in p.rows])
        for prow in p.rows:
            if prow.benchmark is not None and prow.baseline is not None and prow.benchmark > prow.baseline:
                problems.append(
                    f"{where} {p.edition}: 标杆 {prow.benchmark} is worse than 基准 {prow.baseline}"
                    " (lower is better)"
                )
    for q in ind.quota:
        bands(q.standard, [r.band for r in q.rows])
        for dup in _duplicates(c.id for c in q.corrections):
            problems.append(f"{where} {q.standard}: correction {dup!r} listed twice")
        for qrow in q.rows:
            present = [(g, v) for g in _GRADES if (v := getattr(qrow, g)) is not None]
            if not present:
                problems.append(f"{where} {q.standard}: a row has no grade at all")
            for (ga, va), (gb, vb) in itertools.pairwise(present):
                if va > vb:
                    problems.append(
                        f"{where} {q.standard}: {ga} {_fmt(va)} > {gb} {_fmt(vb)}"
                        " (lower is better: 1级 <= 2级 <= 3级)"
                    )
    return problems


_Doc = TypeVar("_Doc", PolicyEdition, QuotaStandard)


def _document(docs: Mapping[str, _Doc], name: str, what: str, indicator: str) -> _Doc:
    doc = docs.get(name)
    if doc is None:
        raise ValueError(f"indicator {indicator!r}: unknown {what} {name!r}")
    return doc


def _resolve_indicator(
    raw: _IndicatorIn, editions: Mapping[str, PolicyEdition], standards: Mapping[str, QuotaStandard]
) -> IndicatorDef:
    own = {p.edition: p for p in raw.policy}
    policy = []
    for p in raw.policy:
        ed = _document(editions, p.edition, "policy edition", raw.id)
        fields = {k: v for k, v in _fields_of(p, _PolicySetIn).items() if k != "values_from"}
        values_edition = p.edition
        if p.values_from is not None:
            origin = own.get(p.values_from)
            if origin is None:
                raise ValueError(
                    f"indicator {raw.id!r}: {p.edition} takes its values from {p.values_from!r},"
                    " which has no level set for this indicator"
                )
            if origin.values_from is not None:
                raise ValueError(f"indicator {raw.id!r}: {p.edition} values_from {p.values_from!r} is itself a copy")
            fields["rows"] = origin.rows
            fields["missing"] = origin.missing
            values_edition = p.values_from
        values_doc = _document(editions, values_edition, "policy edition", raw.id)
        document = _fields_of(ed, PolicyEdition, ("title", "document_no", "effective_from", "effective_to",
                                                  "retrofit_deadline"))
        if raw.added_in == p.edition and ed.retrofit_deadline_new_areas is not None:
            document["retrofit_deadline"] = ed.retrofit_deadline_new_areas  # the areas this edition adds
        policy.append(
            PolicyLevelSet(
                **fields, values_edition=values_edition, values_document_no=values_doc.document_no, **document
            )
        )
    quota = [
        QuotaLevelSet(
            **{**_fields_of(q, _QuotaSetIn), "source": q.source or std.source, "document_no": std.id},
            **_fields_of(std, QuotaStandard, ("title", "effective_from", "effective_to")),
        )
        for q in raw.quota
        if (std := _document(standards, q.standard, "quota standard", raw.id))
    ]
    return IndicatorDef(
        **_fields_of(raw, _IndicatorBase),
        policy=tuple(sorted(policy, key=lambda s: s.effective_from)),
        quota=tuple(sorted(quota, key=lambda s: s.effective_from)),
    )


# ----------------------------------------------------------------------------------------- loading

_FILES = ("coefficients.yaml", "co2_factors.yaml", "benchmarks.yaml")


#: libyaml's loader where PyYAML was built with it: the packaged tables parse several times faster
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse(name: str, text: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_LOADER)  # a safe loader (C or Python)
    except yaml.YAMLError as exc:
        raise ReferenceDataError(f"{name}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ReferenceDataError(f"{name}: top level must be a mapping")
    if not isinstance(data.get("version"), str):
        raise ReferenceDataError(f"{name}: needs a top-level string 'version'")
    return data


def _errors(exc: ValidationError) -> str:
    """Pydantic errors as ``location: message`` lines, without echoing the input."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "\n  ".join(lines)


_M = TypeVar("_M", bound=BaseModel)


def _validate_file(model: type[_M], name: str, text: str) -> _M:
    try:
        return model.model_validate(_parse(name, text))
    except ValidationError as exc:
        raise ReferenceDataError(f"{name} does not match its schema:\n  {_errors(exc)}") from None


def _build(texts: Mapping[str, str]) -> ReferenceData:
    coef = _validate_file(_CoefficientsFile, "coefficients.yaml", texts["coefficients.yaml"])
    co2 = _validate_file(_Co2File, "co2_factors.yaml", texts["co2_factors.yaml"])
    bench = _validate_file(_BenchmarksFile, "benchmarks.yaml", texts["benchmarks.yaml"])
    editions = {e.id: e for e in bench.policy_editions}
    standards = {s.id: s for s in bench.quota_standards}
    try:
        indicators = tuple(_resolve_indicator(i, editions, standards) for i in bench.indicators)
        return ReferenceData(
            versions={
                "coefficients": coef.version,
                "co2_factors": co2.version,
                "benchmarks": bench.version,
            },
            coefficients=coef.coefficients,
            coefficient_ranges=coef.coefficient_ranges,
            electricity_equal_values=coef.electricity_equal_values,
            oil_equivalent_sets=coef.oil_equivalent_sets,
            grid_factors=co2.grid,
            fuel_factors=co2.fuels,
            heat_factors=co2.heat,
            policy_editions=bench.policy_editions,
            quota_standards=bench.quota_standards,
            indicators=indicators,
            targets=bench.targets,
        )
    except ValidationError as exc:
        raise ReferenceDataError(_errors(exc)) from None
    except ValueError as exc:  # an unknown edition/standard reference
        raise ReferenceDataError(str(exc)) from None


@functools.cache
def _load_packaged() -> ReferenceData:
    pkg = resources.files(__name__)
    return _build({name: pkg.joinpath(name).read_text(encoding="utf-8") for name in _FILES})


def load_reference_data(path: Path | None = None) -> ReferenceData:
    """Load and validate the reference data.

    Args:
        path: a directory holding ``coefficients.yaml``, ``co2_factors.yaml`` and ``benchmarks.yaml``.
            None (the default) reads the files shipped in this package (cached: loaded once per process).

    Raises:
        ReferenceDataError: a file is missing, malformed, or fails validation (the message lists every
            problem).
    """
    if path is None:
        return _load_packaged()
    texts: dict[str, str] = {}
    for name in _FILES:
        try:
            texts[name] = (path / name).read_text(encoding="utf-8")
        except OSError as exc:
            raise ReferenceDataError(f"cannot read reference data file {path / name}: {exc}") from None
    return _build(texts)
