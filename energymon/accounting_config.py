"""The ``accounting:`` section of the plant file: what the energy accounting needs beyond the meters.

Kept in its own module so the accounting can grow without touching the collection models. Every setting is
optional; an empty section reproduces the defaults (当量值 only, GB/T 2589 default coefficients, every meter
counted as consumption, gaps spread over time, 15-minute data expected). See ``docs/accounting.md`` for what
each rule does and which figure it changes. Example::

    accounting:
      equal_value_kgce_per_kwh: {2025: 0.2996, 2026: 0.2985}
      equal_value_source: 云南省统计局 2025 年火电供电标准煤耗
      coefficient_overrides:
        - {carrier: raw_coal, lhv_kj_per_unit: 22500, unit: kg, effective_from: 2026-01-01,
           source: 煤质化验报告 2026-001}
      replacements:
        - {meter: kiln_drive, at: "2026-03-05T10:30:00+08:00", old_final_value: 123456.7, new_start_value: 0}
      meter_roles: {export_line: export, whr_steam: recovered, gas_to_synthesis: feedstock}
      allocations:
        - {meter: shared_compressor, rule: share, shares: {clinker: 0.7, cement: 0.3}}
      products:
        glass_line: {band_value: 900, corrections: [{id: vc, factors: {a: 1.0, b: 0.95, c: 1.0, d: 1.0}}]}
      budget: {annual_tce: {2026: 180000}}

Cross-object checks (a meter that does not exist, shares that do not sum to 1, a correction the indicator does
not have...) are in :func:`check_accounting`, which :func:`energymon.validators.check_plant` runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import date
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from energymon import (
    _model_docs,  # noqa: F401  # field docstrings read once per module
    units,
)
from energymon.refdata import (
    UNITS,
    QuotaLevelSet,
    ReferenceData,
    ReferenceDataError,
    coefficient_from_lhv,
    load_reference_data,
)

if TYPE_CHECKING:
    from energymon.config import Meter, PlantConfig, Product

__all__ = [
    "REFERENCE_SECTIONS",
    "AccountingConfig",
    "Allocation",
    "BalanceConfig",
    "BalanceGroup",
    "BudgetConfig",
    "Co2Config",
    "Co2FactorOverride",
    "CoefficientOverride",
    "CorrectionInput",
    "DataQualityConfig",
    "ExtraIndicator",
    "GapPolicy",
    "MeterReplacement",
    "MeterRole",
    "ProductAccounting",
    "check_accounting",
]

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Id = Annotated[str, Field(pattern=_ID)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class MeterRole(StrEnum):
    """How a meter's energy enters 综合能耗 (GB/T 2589).

    ``consumption`` is counted; ``export`` (energy sold or sent out of the boundary) is deducted;
    ``recovered`` (waste heat recovered and used inside the boundary) and ``in_house_medium`` (a 耗能工质 made
    on site, already counted through the energy used to make it) are reported but not added a second time;
    ``feedstock`` (原料用能) is counted in 综合能耗 and reported separately, and excluded from the 能耗双控 total.
    """

    CONSUMPTION = "consumption"
    EXPORT = "export"
    RECOVERED = "recovered"
    IN_HOUSE_MEDIUM = "in_house_medium"
    FEEDSTOCK = "feedstock"


class MeterReplacement(_Strict):
    """A recorded meter change: the old meter's last value and the new meter's first, at one time.

    Readings stamped before ``at`` belong to the old meter, readings at or after it to the new one. The interval
    across the change books ``(old_final_value - last old reading) + (first new reading - new_start_value)``:
    no spike, nothing lost.
    """

    meter: Id
    """meter id (the counter keeps its id across the change)"""
    at: AwareDatetime
    """when the new meter started counting, with its UTC offset (e.g. `2026-03-05T10:30:00+08:00`)"""
    old_final_value: float = Field(ge=0)
    """the old meter's final counter value, in the counter's unit"""
    new_start_value: float = Field(ge=0)
    """the new meter's counter value when it started, in the counter's unit"""
    note: str = ""
    """work order, reason (kept with the record)"""


class CoefficientOverride(_Strict):
    """A plant coefficient from a measured net calorific value: kgce/unit = LHV (kJ/unit) / 29,307.6."""

    carrier: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    """carrier id of the reference data (`raw_coal`, `coke_oven_gas`, ...)"""
    lhv_kj_per_unit: float = Field(gt=0)
    """measured net (lower) calorific value in kJ per `unit`"""
    unit: Literal["kg", "t", "m3", "Nm3", "kWh", "MJ", "GJ"]
    """unit the calorific value is given per"""
    effective_from: date
    """first day the measured value applies (local date)"""
    effective_to: date | None = None
    """last day it applies (inclusive); null = until further notice"""
    source: str = Field(min_length=1)
    """where the value comes from (assay report number, gas chromatograph)"""


class Co2FactorOverride(_Strict):
    """A plant CO2 factor for a carrier the reference data has none for (raw coal with a measured carbon
    content) or where the plant's verified factor differs."""

    carrier: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    """carrier id"""
    kg_co2_per_unit: float = Field(ge=0)
    """kg CO2 per `unit` of the carrier"""
    unit: Literal["kg", "t", "m3", "Nm3", "kWh", "MWh", "MJ", "GJ"]
    """unit of the carrier the factor is per"""
    source: str = Field(min_length=1)
    """where the factor comes from"""


class Co2Config(_Strict):
    """Which versioned CO2 factors apply (energymon.refdata ``co2_factors.yaml``)."""

    grid_region: str | None = None
    """region of the grid factor; null = the enterprise's province if the data has it, else `national`"""
    grid_kind: Literal["average", "reporting_default", "average_excluding_market_non_fossil", "fossil"] = (
        "reporting_default"
    )
    """`reporting_default` = the MEE reporting factor (0.5703 from 2022); `average` = the MEE/NBS yearly factor of the region (江西 2023: 0.5836); `average_excluding_market_non_fossil`, `fossil` = national variants"""  # noqa: E501
    grid_year: int | None = Field(default=None, ge=2000, le=2100)
    """year of the factor used for every period (2023 = 公告2025年第47号); null = the period's year, else the latest earlier one"""  # noqa: E501
    overrides: list[Co2FactorOverride] = Field(default_factory=list)
    """plant CO2 factors by carrier (they win over the reference data)"""


class Allocation(_Strict):
    """How a meter shared by several products is split between them.

    ``share``: fixed shares (``shares``, summing to 1). ``output``: in proportion to each product's output on
    the local day (equal parts on a day without output). A shared meter needs no place in the products'
    boundaries; without an allocation, a meter inside several boundaries counts in full for each.
    """

    meter: Id
    """the shared meter"""
    rule: Literal["share", "output"]
    """`share` (fixed shares) or `output` (by each product's output of the day)"""
    shares: dict[str, float] = Field(default_factory=dict)
    """product id → share, for rule `share` (0..1, summing to 1)"""
    products: list[Id] = Field(default_factory=list)
    """the products sharing the meter, for rule `output`"""

    @model_validator(mode="after")
    def _shape(self) -> Allocation:
        if self.rule == "share":
            if not self.shares or self.products:
                raise ValueError("rule share needs shares (product → fraction) and no products list")
            if any(not 0 <= s <= 1 for s in self.shares.values()):
                raise ValueError("each share must be between 0 and 1")
            if not math.isclose(sum(self.shares.values()), 1.0, abs_tol=1e-9):
                raise ValueError(f"shares sum to {sum(self.shares.values()):g}, not 1")
        elif not self.products or self.shares:
            raise ValueError("rule output needs products (at least one) and no shares")
        return self


class CorrectionInput(_Strict):
    """A plant input for one correction of the indicator's limits (benchmarks.yaml ``corrections``)."""

    id: str
    """correction id in the reference data (`clinker_ratio`, `altitude`, `ore_grade`, `vc`...)"""
    units: float | None = None
    """for `additive_per_unit`: how many units (e.g. +3 percentage points of clinker ratio above 75 %)"""
    applies: bool | None = None
    """for a `multiplier` with a published amount (EAF stainless ×1.10): whether its condition holds"""
    factor: float | None = Field(default=None, gt=0)
    """for a `multiplier` whose amount the reference data does not give (cement altitude): the factor"""
    factors: dict[str, float] = Field(default_factory=dict)
    """for `product_of_factors` (flat glass Vc = a·b·c·d): each named factor"""


class ExtraIndicator(_Strict):
    """A further indicator of the same product (e.g. 熟料综合电耗 beside 熟料综合能耗)."""

    indicator: str
    """indicator id in the reference data"""
    carriers: list[str] = Field(default_factory=list)
    """count only these carriers (e.g. `[raw_coal]` for 综合煤耗); empty = all carriers of the boundary"""


class ProductAccounting(_Strict):
    """What grading a product needs beyond its meters: capacity band, correction inputs, energy factor."""

    band_value: float | None = Field(default=None, gt=0)
    """capacity that selects the band row (flat glass t/d, EAF nominal t); required where the indicator has bands"""
    corrections: list[CorrectionInput] = Field(default_factory=list)
    """inputs of the indicator's corrections"""
    energy_factor: float | None = Field(default=None, gt=0)
    """能量因数 of a refinery, for `kgoe/(t*energy_factor)` indicators"""
    extra_indicators: list[ExtraIndicator] = Field(default_factory=list)
    """further indicators computed from the same boundary and output"""


class GapPolicy(_Strict):
    """What happens to the consumption of an interval longer than ``min_gap_secs`` (readings missing)."""

    mode: Literal["spread", "flag"] = "spread"
    """`spread`: over the gap in proportion to time (flag `gap_spread`); `flag`: all in the period where the
    gap ends (flag `gap_at_end`)"""
    min_gap_secs: float | None = Field(default=None, gt=0)
    """an interval longer than this is a gap; null = twice the meter's expected reading interval"""


class BudgetConfig(_Strict):
    """Annual energy budget (用能预算) of the enterprise, tracked year to date."""

    annual_tce: dict[int, float]
    """year → budget in tonnes of standard coal"""
    basis: Literal["equivalent", "equal"] = "equivalent"
    """which value the budget is set in: `equivalent` (当量值) or `equal` (等价值)"""
    scope: Literal["dual_control", "total"] = "dual_control"
    """`dual_control`: 原料用能 excluded (能耗双控 rules); `total`: 综合能耗 with 原料用能"""
    monthly_weights: list[float] | None = Field(default=None, min_length=12, max_length=12)
    """12 weights for pro-rating by month (seasonal plants); null = by calendar days"""
    yellow_above_pct: float = Field(default=100.0, gt=0)
    """year-to-date use above this percent of the pro-rated budget is yellow"""
    red_above_pct: float = Field(default=110.0, gt=0)
    """above this percent it is red (NDRC 晴雨表: more than 10 % over)"""

    @model_validator(mode="after")
    def _order(self) -> BudgetConfig:
        if self.red_above_pct < self.yellow_above_pct:
            raise ValueError("red_above_pct must not be below yellow_above_pct")
        if any(v <= 0 for v in self.annual_tce.values()):
            raise ValueError("annual budgets must be positive")
        if self.monthly_weights is not None and (
            any(w < 0 for w in self.monthly_weights) or sum(self.monthly_weights) <= 0
        ):
            raise ValueError("monthly_weights must be non-negative with a positive sum")
        return self


class BalanceGroup(_Strict):
    """One balance: parent meters (一级) against the child meters (二级) they feed."""

    id: Id
    """group id"""
    parents: list[Id] = Field(min_length=1)
    """meters whose sum is the input"""
    children: list[Id] = Field(min_length=1)
    """meters whose sum should account for it"""
    max_loss_pct: float | None = Field(default=None, ge=0)
    """flag a loss above this share of the input; null = the section's max_loss_pct"""


class BalanceConfig(_Strict):
    """Energy balance checks (一级 vs Σ 二级)."""

    max_loss_pct: float = Field(default=5.0, ge=0)
    """flag a loss (input − Σ children) above this percent of the input, or children above the input by more"""
    auto: bool = True
    """also balance each carrier's level-1 meters against its level-2 meters"""
    groups: list[BalanceGroup] = Field(default_factory=list)
    """explicit balance groups"""


class DataQualityConfig(_Strict):
    """Data-quality rules of the online monitoring system (domain.md §3)."""

    expected_interval_secs: float = Field(default=900, gt=0)
    """expected reading interval of every item (15 min real-time indicators)"""
    meter_interval_secs: dict[str, float] = Field(default_factory=dict)
    """per-meter expected interval, overriding the default"""
    completeness_min_pct: float = Field(default=90.0, ge=0, le=100)
    """a day with fewer readings than this percent of the expected ones is incomplete"""
    daily_vs_monthly_max_pct: float = Field(default=5.0, ge=0)
    """largest difference between the sum of daily values and the month's counter span"""
    day_start_tolerance_secs: float = Field(default=60, ge=0)
    """a reading within this of 00:00 must exist for a day's start to be exact"""
    month_start_tolerance_secs: float = Field(default=86400, ge=0)
    """a reading within this of day 1 00:00 must exist for a month's start to be exact"""


class AccountingConfig(_Strict):
    """Energy-accounting settings of the plant."""

    equal_value_kgce_per_kwh: dict[int, float] = Field(default_factory=dict)
    """year → electricity 等价值 (the year's 供电标准煤耗 of the enterprise's province), kgce/kWh"""
    equal_value_source: str = ""
    """where the 等价值 figures come from (statistical bulletin, provincial notice)"""
    coefficient_overrides: list[CoefficientOverride] = Field(default_factory=list)
    """plant coefficients from measured calorific values (they win over the GB/T 2589 defaults)"""
    replacements: list[MeterReplacement] = Field(default_factory=list)
    """recorded meter changes"""
    meter_roles: dict[str, MeterRole] = Field(default_factory=dict)
    """meter id → role: `consumption` (default), `export`, `recovered`, `in_house_medium`, `feedstock`"""
    allocations: list[Allocation] = Field(default_factory=list)
    """meters shared by several products and how they are split"""
    products: dict[str, ProductAccounting] = Field(default_factory=dict)
    """product id → capacity band, correction inputs, energy factor, extra indicators"""
    gap_policy: GapPolicy = Field(default_factory=GapPolicy)
    """what happens to consumption across missing readings"""
    co2: Co2Config = Field(default_factory=Co2Config)
    """CO2 factor choice and plant factors"""
    budget: BudgetConfig | None = None
    """annual energy budget; null = no budget check"""
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    """energy-balance checks"""
    data_quality: DataQualityConfig = Field(default_factory=DataQualityConfig)
    """completeness, consistency and timestamp rules"""

    @model_validator(mode="after")
    def _equal_values(self) -> AccountingConfig:
        for year, value in self.equal_value_kgce_per_kwh.items():
            if not 1990 <= year <= 2100:
                raise ValueError(f"equal_value_kgce_per_kwh: year {year} out of range")
            if not 0.1 <= value <= 0.6:
                raise ValueError(
                    f"equal_value_kgce_per_kwh[{year}] = {value}: expected kgce/kWh (≈0.28–0.32); "
                    "a figure in tce/万kWh (e.g. 2.85) must be divided by 10"
                )
        return self

    def role(self, meter_id: str) -> MeterRole:
        """The meter's role (``consumption`` unless configured)."""
        return self.meter_roles.get(meter_id, MeterRole.CONSUMPTION)

    def product(self, product_id: str) -> ProductAccounting:
        """The product's accounting inputs (defaults if not configured)."""
        return self.products.get(product_id) or _EMPTY_PRODUCT

    def interval_secs(self, meter_id: str) -> float:
        """Expected reading interval of a meter."""
        return self.data_quality.meter_interval_secs.get(meter_id, self.data_quality.expected_interval_secs)

    def gap_secs(self, meter_id: str) -> float:
        """An interval of this meter longer than this is a gap."""
        if self.gap_policy.min_gap_secs is not None:
            return self.gap_policy.min_gap_secs
        return 2 * self.interval_secs(meter_id)


_EMPTY_PRODUCT = ProductAccounting()

#: The sub-sections for the generated config reference (``energymon.config_reference``).
REFERENCE_SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("accounting", AccountingConfig),
    ("accounting.coefficient_overrides[]", CoefficientOverride),
    ("accounting.replacements[]", MeterReplacement),
    ("accounting.allocations[]", Allocation),
    ("accounting.products.ID", ProductAccounting),
    ("accounting.products.ID.corrections[]", CorrectionInput),
    ("accounting.products.ID.extra_indicators[]", ExtraIndicator),
    ("accounting.gap_policy", GapPolicy),
    ("accounting.co2", Co2Config),
    ("accounting.co2.overrides[]", Co2FactorOverride),
    ("accounting.budget", BudgetConfig),
    ("accounting.balance", BalanceConfig),
    ("accounting.balance.groups[]", BalanceGroup),
    ("accounting.data_quality", DataQualityConfig),
]

# --------------------------------------------------------------------------- cross-object checks

Issue = tuple[str, str]


def check_accounting(plant: PlantConfig) -> Iterator[tuple[str, str]]:
    """Cross-object checks of the accounting section: ``(key path, message)`` for each problem."""
    acc = plant.accounting
    meters = {m.id: m for m in plant.meters}
    products = {p.id: p for p in plant.products}
    base = "accounting"
    yield from _check_replacements(plant, meters)
    for meter_id, role in acc.meter_roles.items():
        m = meters.get(meter_id)
        if m is None:
            yield f"{base}.meter_roles.{meter_id}", f"unknown meter {meter_id!r}"
        elif m.carrier is None:
            yield (
                f"{base}.meter_roles.{meter_id}",
                f"meter {meter_id!r} has no energy carrier; a {role.value} role needs one",
            )
    yield from _check_overrides(plant)
    yield from _check_grid_factor(plant)
    yield from _check_allocations(plant, meters, products)
    yield from _check_products(plant, products)
    for meter_id in acc.data_quality.meter_interval_secs:
        if meter_id not in meters:
            yield f"{base}.data_quality.meter_interval_secs.{meter_id}", f"unknown meter {meter_id!r}"
    for i, group in enumerate(acc.balance.groups):
        where = f"{base}.balance.groups[{i}]"
        carriers: set[str] = set()
        for kind in ("parents", "children"):
            for j, meter_id in enumerate(getattr(group, kind)):
                m = meters.get(meter_id)
                if m is None:
                    yield f"{where}.{kind}[{j}]", f"unknown meter {meter_id!r}"
                elif m.carrier is None:
                    yield f"{where}.{kind}[{j}]", f"meter {meter_id!r} has no energy carrier"
                else:
                    carriers.add(m.carrier)
        if len(carriers) > 1:
            yield where, f"balance group {group.id!r} mixes carriers {sorted(carriers)}; balance one carrier at a time"
        if set(group.parents) & set(group.children):
            yield where, f"balance group {group.id!r}: a meter is both parent and child"
    seen: set[str] = set()
    for i, group in enumerate(acc.balance.groups):
        if group.id in seen:
            yield f"{base}.balance.groups[{i}].id", f"duplicate balance group id {group.id!r}"
        seen.add(group.id)


def _check_replacements(plant: PlantConfig, meters: dict[str, Meter]) -> Iterator[Issue]:
    seen: dict[tuple[str, object], int] = {}
    for i, rep in enumerate(plant.accounting.replacements):
        where = f"accounting.replacements[{i}]"
        m = meters.get(rep.meter)
        if m is None:
            yield f"{where}.meter", f"unknown meter {rep.meter!r}"
            continue
        if m.counter is None:
            yield f"{where}.meter", f"meter {rep.meter!r} has no counter; only counters are replaced with values"
        key = (rep.meter, rep.at)
        if key in seen:
            yield f"{where}.at", f"meter {rep.meter!r} already has a replacement at {rep.at} ([{seen[key]}])"
        seen[key] = i


def _check_grid_factor(plant: PlantConfig) -> Iterator[Issue]:
    """The configured grid region and year must exist in the reference data (never a silent fallback)."""
    co2 = plant.accounting.co2
    if co2.grid_region is None and co2.grid_year is None:
        return
    ref = load_reference_data()
    kind = co2.grid_kind
    series = [g for g in ref.grid_factors if g.kind == kind]
    if co2.grid_region is not None:
        regions = sorted({g.region for g in series})
        if co2.grid_region not in regions:
            yield (
                "accounting.co2.grid_region",
                f"no {kind} grid factor for region {co2.grid_region!r} (regions with one: {', '.join(regions)})",
            )
            return
    if co2.grid_year is not None:
        region = co2.grid_region or plant.enterprise.province or "national"
        in_region = [g for g in series if g.region == region] or [g for g in series if g.region == "national"]
        if not any(g.covers(co2.grid_year) for g in in_region):
            years = sorted({str(g.year_from) for g in in_region})
            yield (
                "accounting.co2.grid_year",
                f"no {kind} grid factor for {region!r} in {co2.grid_year} (years published: {', '.join(years)})",
            )


def _check_overrides(plant: PlantConfig) -> Iterator[Issue]:
    ref = load_reference_data()
    spans: dict[str, list[tuple[int, date, date | None]]] = {}
    for i, ov in enumerate(plant.accounting.coefficient_overrides):
        where = f"accounting.coefficient_overrides[{i}]"
        if ov.effective_to is not None and ov.effective_to < ov.effective_from:
            yield f"{where}.effective_to", "effective_to is before effective_from"
        if ov.carrier not in ref.carriers():
            yield f"{where}.carrier", f"unknown energy carrier {ov.carrier!r} (known: {', '.join(ref.carriers())})"
            continue
        for j, start, end in spans.get(ov.carrier, []):
            if start <= (ov.effective_to or date.max) and ov.effective_from <= (end or date.max):
                yield where, f"carrier {ov.carrier!r}: dates overlap coefficient_overrides[{j}]"
        spans.setdefault(ov.carrier, []).append((i, ov.effective_from, ov.effective_to))
        default_unit, default_kgce = _default_per_unit(ref, ov.carrier, ov.effective_from)
        if default_unit is None:
            continue
        if UNITS[default_unit][0] != UNITS[ov.unit][0]:
            yield (
                f"{where}.unit",
                f"carrier {ov.carrier!r} is measured per {default_unit} ({UNITS[default_unit][0]}), not per {ov.unit}",
            )
            continue
        try:
            measured = coefficient_from_lhv(ov.lhv_kj_per_unit, ov.unit, ov.carrier).to_unit(default_unit)
        except ReferenceDataError as exc:
            yield where, str(exc)
            continue
        if default_kgce is not None and not 0.5 <= measured.kgce_per_unit / default_kgce <= 2.0:
            yield (
                f"{where}.lhv_kj_per_unit",
                f"{ov.lhv_kj_per_unit:g} kJ/{ov.unit} gives {measured.kgce_per_unit:.4g} kgce/{default_unit}, "
                f"more than a factor 2 from the default {default_kgce:.4g}: check the unit",
            )


def _default_per_unit(ref: ReferenceData, carrier: str, on: date) -> tuple[str | None, float | None]:
    """(unit, kgce per unit) of the reference entry for ``carrier`` (a range gives its midpoint)."""
    try:
        coef = ref.coefficient(carrier, on=on)
        return coef.unit, coef.kgce_per_unit
    except ReferenceDataError:
        pass
    for r in ref.coefficient_ranges:
        if r.carrier == carrier:
            return r.unit, (r.kgce_min + r.kgce_max) / 2
    for c in ref.coefficients:
        if c.carrier == carrier:
            return c.unit, c.kgce_per_unit
    return None, None


def _check_allocations(plant: PlantConfig, meters: dict[str, Meter], products: dict[str, Product]) -> Iterator[Issue]:
    seen: dict[str, int] = {}
    for i, alloc in enumerate(plant.accounting.allocations):
        where = f"accounting.allocations[{i}]"
        m = meters.get(alloc.meter)
        if m is None:
            yield f"{where}.meter", f"unknown meter {alloc.meter!r}"
        elif m.carrier is None:
            yield f"{where}.meter", f"meter {alloc.meter!r} has no energy carrier"
        if alloc.meter in seen:
            yield f"{where}.meter", f"meter {alloc.meter!r} is already allocated by allocations[{seen[alloc.meter]}]"
        seen[alloc.meter] = i
        for pid in (*alloc.shares, *alloc.products):
            if pid not in products:
                yield where, f"unknown product {pid!r}"


def _check_products(plant: PlantConfig, products: dict[str, Product]) -> Iterator[Issue]:
    ref = load_reference_data()
    for pid, settings in plant.accounting.products.items():
        where = f"accounting.products.{pid}"
        if pid not in products:
            yield where, f"unknown product {pid!r}"
            continue
        product = products[pid]
        indicators = [(product.indicator, where)] + [
            (x.indicator, f"{where}.extra_indicators[{j}]") for j, x in enumerate(settings.extra_indicators)
        ]
        for indicator_id, loc in indicators:
            try:
                ind = ref.indicator(indicator_id)
            except ReferenceDataError as exc:
                yield f"{loc}.indicator" if loc != where else f"{where}", str(exc)
                continue
            if ind.band is not None and settings.band_value is None:
                yield (
                    f"{where}.band_value",
                    f"indicator {indicator_id!r} has capacity bands ({ind.band.name_zh}, {ind.band.unit}): "
                    "give band_value",
                )
            if ind.unit == "kgoe/(t*energy_factor)" and settings.energy_factor is None:
                yield f"{where}.energy_factor", f"indicator {indicator_id!r} is per energy factor: give energy_factor"
            if ind.unit == "ratio" and units.is_known(product.unit) and units.dimension(product.unit) != "energy":
                yield (
                    f"{where}",
                    f"indicator {indicator_id!r} is a ratio of energies (PUE): the product's output must be the "
                    f"IT energy counter (kWh), not {product.unit}",
                )
        known = {c.id: c for ind_id, _ in indicators[:1] for q in _quota_sets(ref, ind_id) for c in q.corrections}
        for j, corr in enumerate(settings.corrections):
            loc = f"{where}.corrections[{j}]"
            spec = known.get(corr.id)
            if spec is None:
                yield f"{loc}.id", (
                    f"indicator {product.indicator!r} has no correction {corr.id!r}"
                    + (f" (has: {', '.join(sorted(known))})" if known else "")
                )
                continue
            if spec.kind == "additive_per_unit" and corr.units is None:
                yield loc, f"correction {corr.id!r} adds per {spec.per}: give units"
            elif spec.kind == "multiplier" and spec.amount is not None and corr.applies is None:
                yield loc, f"correction {corr.id!r} (×{spec.amount:g} when {spec.condition}): give applies: true|false"
            elif spec.kind == "multiplier" and spec.amount is None and corr.factor is None:
                yield loc, f"correction {corr.id!r} ({spec.condition}): the reference data has no factor, give factor"
            elif spec.kind == "product_of_factors":
                missing = [f for f in spec.factors or () if f not in corr.factors]
                if missing:
                    yield loc, f"correction {corr.id!r} needs factors {', '.join(missing)}"
            elif spec.kind == "unquantified":
                yield loc, f"correction {corr.id!r}: the reference data has no amounts for it, so it cannot be applied"


def _quota_sets(ref: ReferenceData, indicator_id: str) -> tuple[QuotaLevelSet, ...]:
    try:
        return ref.indicator(indicator_id).quota
    except ReferenceDataError:
        return ()
