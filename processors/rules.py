"""The accounting rules of one plant, resolved once and shared by the live path and the recompute.

:class:`PlantRules` answers, for a plant file and the reference data:

* **factors** of a meter on a local day, per unit of its counter: kgce 当量值 (GB/T 2589 default, or the plant's
  coefficient from a measured calorific value), kgce 等价值 (electricity: the plant file's figure for the year,
  else the reference data for the province; other carriers: the same as 当量值, since their coefficients are
  already primary energy or, for 耗能工质, 等价值), and kg CO2 (grid factor by year and region, fuel factor,
  purchased-heat factor, or the plant's own);
* **contributions**: how much of each meter counts toward each product and the enterprise, split into the
  综合能耗 total (consumption and 原料用能 counted, export deducted), the 原料用能 part, the exported part and the
  recovered part (reported, never added again). A boundary's process includes its units (child processes, the
  enterprise → process → equipment tree); per listed process and carrier only the highest metering level present
  counts, so a process meter and the equipment meters below it are not added twice; shared meters are split by
  their allocation;
* **levels** of an indicator on a day with the product's band and corrections (:func:`grading.levels_for`);
* the indicator value from period sums (:func:`indicator_value`): kgce/t, kgoe/t (1 kgoe = 10,000 kcal =
  kgce × 0.7), kgoe/(t·能量因数), kWh/t (electricity only), and ratios (PUE = facility energy ÷ IT energy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from energymon import units
from energymon.accounting_config import AccountingConfig, MeterRole
from energymon.config import Meter, MeteringLevel, PlantConfig, Product
from energymon.counters import CounterRules, CounterTracker, Replacement, counter_rules
from energymon.processors.grading import Levels, levels_for
from energymon.refdata import KGCE_KJ, ReferenceData, ReferenceDataError, coefficient_from_lhv

__all__ = [
    "KGOE_PER_KGCE",
    "KWH_PER_KGCE",
    "Contribution",
    "Factors",
    "MeterInfo",
    "PlantRules",
    "indicator_value",
]

#: 1 kgce = 7,000 kcal, 1 kgoe = 10,000 kcal.
KGOE_PER_KGCE = 0.7
#: kWh (heat content, 3,600 kJ) per kgce, to put non-electric energy into a PUE numerator.
KWH_PER_KGCE = KGCE_KJ / 3600.0

_IN_ROLES = (MeterRole.CONSUMPTION, MeterRole.FEEDSTOCK)
_SILENT_ROLES = (MeterRole.RECOVERED, MeterRole.IN_HOUSE_MEDIUM)


@dataclass(frozen=True, slots=True)
class Factors:
    """Per unit of a meter's counter on one day."""

    kgce: float  # 当量值
    kgce_equal: float | None  # 等价值 (None: electricity without a published supply coal rate)
    co2_kg: float | None  # None: no factor for the carrier
    kgce_source: str
    equal_source: str
    co2_source: str


@dataclass(frozen=True, slots=True)
class Contribution:
    """Weights of one meter's energy in one product (or the enterprise).

    ``total`` enters 综合能耗 (+share counted, −share exported, 0 reported only); ``feedstock``, ``exported`` and
    ``recovered`` are the shares reported in those columns (all ≥ 0).
    """

    total: float
    feedstock: float = 0.0
    exported: float = 0.0
    recovered: float = 0.0


@dataclass(slots=True)
class MeterInfo:
    """A counter meter as the accounting sees it."""

    meter: Meter
    unit: str  # counter unit
    role: MeterRole
    kwh_per_unit: float | None  # electricity: counter unit → kWh; None for other carriers
    factors: dict[date, Factors] = field(default_factory=dict)


def indicator_value(
    unit: str,
    kgce: float,
    kwh: float,
    output: float,
    *,
    energy_factor: float | None = None,
    kgce_other: float = 0.0,
    kgoe: float | None = None,
) -> float | None:
    """The indicator value of a period from its sums; None without output.

    Args:
        unit: indicator unit (``kgce/t``, ``kgoe/t``, ``kgoe/(t*energy_factor)``, ``kWh/t``, ``ratio``,
            ``kgce/weight_case``, ``kgce/m2``, ``kgce/100m`` with output in metres).
        kgce: 综合能耗 of the boundary (当量值, export deducted).
        kwh: electricity of the boundary in kWh (export deducted).
        output: output in the product's unit (for ``ratio``: the IT energy in kWh).
        energy_factor: 能量因数 (refining).
        kgce_other: kgce of non-electric carriers, added to a ratio's numerator at 3,600 kJ/kWh.
        kgoe: the boundary's energy in kgoe for ``kgoe`` units (:meth:`PlantRules.kgoe`); None: kgce × 0.7.
    """
    if output == 0 or not math.isfinite(output):
        return None
    if unit == "kWh/t":
        return kwh / output
    if unit == "ratio":
        return (kwh + kgce_other * KWH_PER_KGCE) / output
    oil = kgce * KGOE_PER_KGCE if kgoe is None else kgoe
    if unit == "kgoe/t":
        return oil / output
    if unit == "kgoe/(t*energy_factor)":
        if not energy_factor:
            return None
        return oil / (output * energy_factor)
    if unit == "kgce/100m":  # output in metres of fabric
        return kgce / output * 100.0
    return kgce / output


class PlantRules:
    """Everything the accounting needs to know about one plant, resolved once.

    Args:
        plant: the validated plant configuration.
        ref: the reference data.
    """

    def __init__(self, plant: PlantConfig, ref: ReferenceData) -> None:
        self.plant = plant
        self.ref = ref
        self.acc: AccountingConfig = plant.accounting
        self.tz: ZoneInfo = plant.enterprise.tz
        self.enterprise = plant.enterprise.uscc
        self.region = plant.enterprise.province or "national"
        self.meters: dict[str, MeterInfo] = {}
        for meter in plant.meters:
            if meter.counter is None:
                continue
            unit = plant.quantities(meter)[meter.counter][0]
            kwh = units.convert(1.0, unit, "kWh") if meter.carrier == "electricity" else None
            self.meters[meter.id] = MeterInfo(meter, unit, self.acc.role(meter.id), kwh)
        self.products: dict[str, Product] = {p.id: p for p in plant.products}
        self.output_meters: dict[str, list[str]] = {}  # meter → products it counts the output of
        for p in plant.products:
            self.output_meters.setdefault(p.output.meter, []).append(p.id)
        self.output_factor: dict[str, float] = {}  # product → output counter unit → product unit
        for p in plant.products:
            info = self.meters.get(p.output.meter)
            if info is not None:
                self.output_factor[p.id] = units.convert(1.0, info.unit, p.unit)
        self.allocations = {a.meter: a for a in self.acc.allocations}
        self.product_meters: dict[str, dict[str, Contribution]] = {
            p.id: self._product_contributions(p) for p in plant.products
        }
        self.enterprise_meters: dict[str, Contribution] = self._enterprise_contributions()
        self._levels: dict[tuple[str, str, date], Levels | None] = {}
        self._counter_rules: dict[str, CounterRules] = {}
        self._shared_factors: dict[tuple[str | None, str, date], Factors] = {}

    # ------------------------------------------------------------------ meters and trackers

    def counter_rules(self, meter_id: str) -> CounterRules:
        """The counter rules of a meter (:mod:`energymon.counters`): bound, rollover point, replacements."""
        rules = self._counter_rules.get(meter_id)
        if rules is None:
            rules = self._counter_rules[meter_id] = counter_rules(self.plant, self.meters[meter_id].meter)
        return rules

    def replacements(self, meter_id: str) -> list[Replacement]:
        """Recorded replacements of a meter, in time order."""
        return list(self.counter_rules(meter_id).replacements)

    def tracker(self, meter_id: str, *, track_rejected: bool = False) -> CounterTracker:
        """A fresh counter tracker for a meter, following :meth:`counter_rules`."""
        return self.counter_rules(meter_id).tracker(track_rejected=track_rejected)

    # ------------------------------------------------------------------ boundaries

    def _roots(self, listed: list[str]) -> dict[str, str]:
        """Process → the top-most listed process it belongs to (itself, or an ancestor through ``parent``)."""
        parent = {p.id: p.parent for p in self.plant.processes}
        chosen = set(listed)
        out: dict[str, str] = {}
        for proc in parent:
            root: str | None = None
            cur: str | None = proc
            seen: set[str] = set()
            while cur is not None and cur not in seen:
                seen.add(cur)
                if cur in chosen:
                    root = cur
                cur = parent.get(cur)
            if root is not None:
                out[proc] = root
        for proc in listed:
            out.setdefault(proc, proc)
        return out

    def _product_contributions(self, product: Product) -> dict[str, Contribution]:
        out: dict[str, Contribution] = {}
        if product.boundary.processes:
            # a listed process includes its units (child processes); meters are levelled per listed process
            roots = self._roots(list(product.boundary.processes))
            inside = [
                i for i in self.meters.values()
                if i.meter.carrier is not None and i.meter.process in roots and i.meter.id not in self.allocations
            ]
            out.update(_levelled(inside, per_process=True, group_of=lambda m: roots.get(m or "", m)))
        for meter_id in product.boundary.meters:  # listed explicitly: counted as listed
            info = self.meters.get(meter_id)
            if info is not None and meter_id not in self.allocations:
                out[meter_id] = _contribution(info.role, 1.0)
        for meter_id, alloc in self.allocations.items():
            info = self.meters.get(meter_id)
            if info is None:
                continue
            if alloc.rule == "share":
                share = alloc.shares.get(product.id)
            else:
                share = 1.0 if product.id in alloc.products else None  # the day's output share applies later
            if share is not None:
                out[meter_id] = _contribution(info.role, share)
        return dict(sorted(out.items()))

    def output_allocated(self, meter_id: str) -> list[str]:
        """Products sharing ``meter_id`` by output (empty if the meter is not allocated by output)."""
        alloc = self.allocations.get(meter_id)
        return list(alloc.products) if alloc is not None and alloc.rule == "output" else []

    def _enterprise_contributions(self) -> dict[str, Contribution]:
        """Per carrier, the top metering level present among counted meters (一级 where there is one)."""
        return _levelled([i for i in self.meters.values() if i.meter.carrier is not None], per_process=False)

    def top_meters(self) -> dict[str, list[str]]:
        """Carrier → the enterprise-level meters counted in 综合能耗 (consumption and 原料用能)."""
        out: dict[str, list[str]] = {}
        for meter_id, c in self.enterprise_meters.items():
            info = self.meters[meter_id]
            if c.total > 0 and info.meter.carrier is not None:
                out.setdefault(info.meter.carrier, []).append(meter_id)
        return out

    # ------------------------------------------------------------------ factors

    def factors(self, meter_id: str, day: date) -> Factors:
        """kgce (当量值), kgce (等价值) and kg CO2 per unit of the meter's counter on a local day (cached).

        Raises:
            ReferenceDataError: the carrier has no coefficient on that day and no plant override.
        """
        info = self.meters[meter_id]
        cached = info.factors.get(day)
        if cached is None:
            key = (info.meter.carrier, info.unit, day)  # meters of one carrier and unit share their factors
            cached = self._shared_factors.get(key)
            if cached is None:
                cached = self._shared_factors[key] = self._resolve(info, day)
            info.factors[day] = cached
        return cached

    def _coefficient(self, carrier: str, day: date) -> tuple[float, str, str, str | None]:
        """(kgce per unit, unit, source, category) of a carrier on a day, plant overrides first."""
        for ov in self.acc.coefficient_overrides:
            if ov.carrier == carrier and ov.effective_from <= day <= (ov.effective_to or date.max):
                coef = coefficient_from_lhv(ov.lhv_kj_per_unit, _ref_unit(ov.unit), carrier, source=ov.source)
                cat = self._category(carrier, day)
                text = f"measured LHV {ov.lhv_kj_per_unit:g} kJ/{ov.unit}: {ov.source}"
                return coef.kgce_per_unit, coef.unit, text, cat
        c = self.ref.coefficient(carrier, on=day)
        return c.kgce_per_unit, c.unit, f"{c.source} ({c.confidence})", c.category

    def _category(self, carrier: str, day: date) -> str | None:
        for c in self.ref.coefficients:
            if c.carrier == carrier and c.in_force(day):
                return c.category
        for r in self.ref.coefficient_ranges:
            if r.carrier == carrier:
                return r.category
        return None

    def _resolve(self, info: MeterInfo, day: date) -> Factors:
        carrier = info.meter.carrier
        assert carrier is not None
        kgce_per_unit, unit, source, category = self._coefficient(carrier, day)
        per_counter = kgce_per_unit * units.convert(1.0, info.unit, _energymon_unit(unit))
        equal: float | None = per_counter
        equal_source = "same as 当量值"
        if carrier == "electricity":
            equal, equal_source = self._equal_value(day.year)
            if equal is not None:
                equal *= units.convert(1.0, info.unit, "kWh")
        co2, co2_source = self._co2(info, carrier, day, category, unit)
        return Factors(per_counter, equal, co2, source, equal_source, co2_source)

    def _equal_value(self, year: int) -> tuple[float | None, str]:
        configured = self.acc.equal_value_kgce_per_kwh.get(year)
        if configured is not None:
            source = self.acc.equal_value_source or "accounting.equal_value_kgce_per_kwh"
            return configured, f"plant file {year}: {source}"
        for region in dict.fromkeys((self.region, "national")):
            try:
                eq = self.ref.electricity_equal_value(year, region)
            except ReferenceDataError:
                continue
            return eq.kgce_per_unit, f"{eq.source} ({eq.confidence})"
        return None, f"no 等价值 for {year}: set accounting.equal_value_kgce_per_kwh"

    def _co2(
        self, info: MeterInfo, carrier: str, day: date, category: str | None, unit: str
    ) -> tuple[float | None, str]:
        for ov in self.acc.co2.overrides:
            if ov.carrier == carrier:
                return ov.kg_co2_per_unit * units.convert(1.0, info.unit, ov.unit), f"plant: {ov.source}"
        if carrier == "electricity":
            grid = self._grid_factor(day.year)
            if grid is None:
                return None, f"no grid factor for {day.year}"
            value, text = grid
            return value * units.convert(1.0, info.unit, "kWh"), text
        try:
            fuel = self.ref.fuel_co2_factor(carrier)
        except ReferenceDataError:
            fuel = None
        if fuel is not None:
            if fuel.unit == "tCO2/t":  # = kg CO2 per kg
                return fuel.value * 1000 * units.convert(1.0, info.unit, "t"), f"{fuel.source} ({fuel.confidence})"
            return fuel.value * units.convert(1.0, info.unit, "m3"), f"{fuel.source} ({fuel.confidence})"
        try:
            heat = self.ref.heat_co2_factor(carrier)
        except ReferenceDataError:
            heat = None
        if heat is not None:
            gj_per_unit = self._gj_per_counter_unit(info, carrier, day, unit)
            if gj_per_unit is not None:
                return heat.value * 1000 * gj_per_unit, f"{heat.source} ({heat.confidence})"
        if category == "energy_medium":
            return 0.0, "耗能工质: emissions are those of the energy used to make it"
        return None, f"no CO2 factor for {carrier!r}: set accounting.co2.overrides"

    def _gj_per_counter_unit(self, info: MeterInfo, carrier: str, day: date, unit: str) -> float | None:
        if units.is_known(info.unit) and units.dimension(info.unit) == "heat":
            return units.convert(1.0, info.unit, "GJ")
        try:
            coef = self.ref.coefficient(carrier, on=day)
        except ReferenceDataError:
            return None
        if coef.lhv_kj_per_unit is None:
            return None
        return coef.lhv_kj_per_unit / 1e6 * units.convert(1.0, info.unit, _energymon_unit(coef.unit))

    def _grid_factor(self, year: int) -> tuple[float, str] | None:
        """(kgCO2/kWh, which factor was used) for a period of ``year``.

        The plant file may fix the region (``accounting.co2.grid_region``) and the factor's year
        (``grid_year``); otherwise the enterprise's province is tried, then ``national``, with the period's own
        year or, if that year is not published yet, the latest earlier one. The text names region, series,
        year, value, source and confidence, so a report says which factor it used.
        """
        co2 = self.acc.co2
        kind = co2.grid_kind
        wanted = co2.grid_year if co2.grid_year is not None else year
        regions = [co2.grid_region] if co2.grid_region else [self.region, "national"]
        for region in dict.fromkeys(regions):
            candidates = [g for g in self.ref.grid_factors if g.region == region and g.kind == kind]
            exact = [g for g in candidates if g.covers(wanted)]
            if exact:
                g = exact[0]
                how = f"factor year {wanted} set in the plant file" if co2.grid_year is not None else f"{year}"
                return g.value, (
                    f"grid {region}/{kind} {how}: {g.value} kgCO2/kWh, {g.name_zh}"
                    f" ({_short_source(g.source)}; {g.confidence})"
                )
            earlier = sorted((g for g in candidates if g.year_from <= wanted), key=lambda g: g.year_from)
            if earlier and co2.grid_year is None:
                g = earlier[-1]
                return g.value, (
                    f"grid {region}/{kind}: {year} not published, latest earlier year {g.year_to or g.year_from} "
                    f"used: {g.value} kgCO2/kWh, {g.name_zh} ({_short_source(g.source)}; {g.confidence})"
                )
        return None

    def grid_factor_text(self, year: int) -> str:
        """Which grid CO2 factor applies to a period of ``year`` (for a report's rule block)."""
        found = self._grid_factor(year)
        return f"no grid factor for {year}" if found is None else found[1]

    # ------------------------------------------------------------------ indicators

    def indicators(self, product_id: str) -> list[tuple[str, tuple[str, ...]]]:
        """(indicator id, carriers counted; empty = all) of a product: its own and the extra ones."""
        product = self.products[product_id]
        settings = self.acc.product(product_id)
        return [(product.indicator, ())] + [(x.indicator, tuple(x.carriers)) for x in settings.extra_indicators]

    def indicator_unit(self, indicator: str) -> str:
        """Unit of an indicator (``kgce/t`` if unknown)."""
        try:
            return self.ref.indicator(indicator).unit
        except ReferenceDataError:
            return "kgce/t"

    def levels(self, product_id: str, indicator: str, day: date) -> Levels | None:
        """Levels of a product's indicator in force on ``day``, with its band and corrections (cached)."""
        key = (product_id, indicator, day)
        if key not in self._levels:
            settings = self.acc.product(product_id)
            corrections = settings.corrections if indicator == self.products[product_id].indicator else ()
            self._levels[key] = levels_for(self.ref, indicator, day, settings.band_value, corrections)
        return self._levels[key]

    def kgoe(self, indicator: str, on: date, kgce: Any, carriers: Mapping[str, tuple[Any, Any, str]]) -> Any:
        """Energy of a boundary in kgoe for a ``kgoe`` indicator, on the rules in force on ``on``.

        An indicator with a GB 30251 factor set (``ReferenceData.oil_equivalent_set``: 炼油, 乙烯) converts each
        carrier with the standard's 能源折算值 (electricity 等价值 0.21 kgoe/kWh, steam by pressure grade, water…):
        ``consumed × kgoe_per_unit``. A carrier the set does not list, or one with a measured calorific value in
        ``accounting.coefficient_overrides``, is converted from its kgce × 0.7 (= LHV / 41,868 kJ). Any other
        indicator: ``kgce × 0.7``.

        Args:
            indicator: indicator id.
            on: local date whose factors apply (the last day of the period).
            kgce: the boundary's 综合能耗 in kgce (a number or a numpy array; the result has the same shape).
            carriers: carrier → (its kgce, its net consumed quantity, the unit of that quantity).
        """
        oil_set = self.ref.oil_equivalent_set(indicator)
        if oil_set is None:
            return kgce * KGOE_PER_KGCE
        measured = {ov.carrier for ov in self.acc.coefficient_overrides}
        total: Any = 0.0
        for carrier, (carrier_kgce, consumed, unit) in carriers.items():
            factor = None if carrier in measured else oil_set.factor(carrier, on)
            total = total + (carrier_kgce * KGOE_PER_KGCE if factor is None else consumed * factor.per(_ref_unit(unit)))
        return total

    def kgoe_source(self, indicator: str) -> str:
        """How :meth:`kgoe` converts an indicator's energy (for a report's rule block)."""
        oil_set = self.ref.oil_equivalent_set(indicator)
        if oil_set is None:
            return "kgce × 0.7 (1 kgoe = 10,000 kcal)"
        return f"{oil_set.title} ({oil_set.standard}); carriers not listed or measured: kgce × 0.7"

    def local_date(self, ts_ms: int) -> date:
        """Local calendar date of an instant."""
        return datetime.fromtimestamp(ts_ms / 1000, self.tz).date()

    def describe(self) -> dict[str, Any]:
        """The rules in force, for a report's header."""
        return {
            "enterprise": self.enterprise,
            "timezone": self.tz.key,
            "region": self.region,
            "ref_version": self.ref.version,
            "gap_policy": self.acc.gap_policy.model_dump(),
            "equal_value_kgce_per_kwh": {str(k): v for k, v in sorted(self.acc.equal_value_kgce_per_kwh.items())},
            "coefficient_overrides": [o.model_dump(mode="json") for o in self.acc.coefficient_overrides],
            "meter_roles": {k: v.value for k, v in sorted(self.acc.meter_roles.items())},
            "generated_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def _short_source(source: str) -> str:
    """The document part of a source text (before the first comma or semicolon)."""
    for sep in (";", ",", "("):
        source = source.split(sep, 1)[0]
    return source.strip()


def _contribution(role: MeterRole, share: float) -> Contribution:
    if role is MeterRole.EXPORT:
        return Contribution(-share, exported=share)
    if role is MeterRole.FEEDSTOCK:
        return Contribution(share, feedstock=share)
    if role in _SILENT_ROLES:
        return Contribution(0.0, recovered=share)
    return Contribution(share)


def _level(info: MeterInfo, default: int) -> int:
    return int(info.meter.level) if info.meter.level else default


def _levelled(
    infos: list[MeterInfo], *, per_process: bool, group_of: Callable[[str | None], str | None] = lambda p: p
) -> dict[str, Contribution]:
    """Contributions of meters levelled against each other (GB 17167 levels).

    Per (process,) carrier and flow direction only the highest metering level present counts: counted meters
    (consumption, 原料用能) and exported ones are levelled separately, so an export meter is never hidden by a
    consumption meter above it. A 原料用能 meter below the top level is reported as 原料用能 only (its energy is
    inside the meter above it); recovered energy and in-house media are reported, never added.
    """
    default = int(MeteringLevel.PROCESS) if per_process else int(MeteringLevel.ENTERPRISE)

    def key(i: MeterInfo) -> tuple[str | None, str | None, bool]:
        return (group_of(i.meter.process) if per_process else None, i.meter.carrier, i.role is MeterRole.EXPORT)

    pool = [i for i in infos if i.role not in _SILENT_ROLES]
    best: dict[tuple[str | None, str | None, bool], int] = {}
    for i in pool:
        best[key(i)] = min(best.get(key(i), 99), _level(i, default))
    out: dict[str, Contribution] = {}
    for i in infos:
        c = _contribution(i.role, 1.0)
        if i.role in _SILENT_ROLES or _level(i, default) == best[key(i)]:
            out[i.meter.id] = c
        elif i.role is MeterRole.FEEDSTOCK:
            out[i.meter.id] = Contribution(0.0, feedstock=c.feedstock)
    return out


def _ref_unit(unit: str) -> str:
    """energymon unit name → reference-data unit name (they agree except Nm3, which refdata also knows)."""
    return unit


def _energymon_unit(unit: str) -> str:
    """Reference-data unit → energymon.units name."""
    return unit
