"""Energy accounting on the live path: interval consumption → standard coal → per-product indicators by period.

For each energy meter the processor books interval consumption (:mod:`energymon.counters`) and
converts it with the factors in force on the local day of the interval's end (:class:`~.rules.PlantRules`):
kgce 当量值, kgce 等价值 (electricity at the year's supply coal rate) and kg CO2. Consumption that spans a period
boundary is spread over the periods in proportion to time; an interval longer than the gap policy's
``min_gap_secs`` (default: twice the meter's expected reading interval) is either spread the same way (flag
``gap_spread``) or booked whole in the period where it ends (flag ``gap_at_end``).

Each product sums the contributions of the meters inside its boundary (consumption and 原料用能 counted, export
deducted, recovered energy reported only, shared meters split by their allocation) and its output per local
hour and day; its indicator (kgce/t, kgoe/t, kWh/t, PUE...) is graded against the levels in force that day
with its band and corrections.

The live path books forward only: a reading older than the counter's last one books nothing here. Reports
recompute any period from the stored readings (:mod:`energymon.processors.recompute`), so late, replayed or
corrected data land in the period they belong to; see ``docs/accounting.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from energymon import units
from energymon.config import PlantConfig
from energymon.counters import CounterTracker
from energymon.interfaces import Row, SeriesKey, series_key
from energymon.periods import ALL_PERIODS, next_period_start, period_start, period_starts, split_by_period
from energymon.processors.grading import Grade, Levels, grade_value
from energymon.processors.rules import Contribution, Factors, PlantRules, indicator_value

__all__ = [
    "ALL_PERIODS",
    "PERIODS",
    "Accounting",
    "PeriodCache",
    "next_period_start",
    "period_start",
    "period_starts",
    "split_by_period",
]

#: Periods the live path keeps (reports add 15min, month, ytd and year).
PERIODS = ("hour", "day")
class PeriodCache:
    """Boundaries of the local period last asked for: most readings fall in the current hour and day, so the
    time-zone arithmetic runs once per period instead of once per reading."""

    __slots__ = ("end", "period", "start", "tz")

    def __init__(self, period: str, tz: ZoneInfo) -> None:
        self.period, self.tz = period, tz
        self.start, self.end = 0, 0

    def bounds(self, ts_ms: int) -> tuple[int, int]:
        """[start, end) of the period containing ``ts_ms``."""
        if self.start <= ts_ms < self.end:
            return self.start, self.end
        start = period_start(ts_ms, self.period, self.tz)
        self.start, self.end = start, next_period_start(start, self.period, self.tz)
        return self.start, self.end

    def split(self, start_ms: int, end_ms: int, amount: float) -> list[tuple[int, float]]:
        """Like :func:`split_by_period`, with the fast path for an interval inside one period."""
        lo, _ = self.bounds(end_ms - 1)
        if start_ms >= lo or end_ms <= start_ms:
            return [(lo, amount)]
        return list(split_by_period(start_ms, end_ms, amount, self.period, self.tz))


@dataclass(slots=True)
class _MeterInfo:
    meter_id: str
    gap_ms: float  # an interval longer than this is a gap
    carrier: str | None
    kwh_per_unit: float | None
    energy_key: SeriesKey | None
    production_key: SeriesKey | None
    products_energy: list[tuple[str, Contribution]]  # products whose boundary includes this meter
    products_output: list[str]  # products this meter counts the output of
    output_allocated: list[str]  # products sharing this meter by their output
    factors: dict[int, Factors] = field(default_factory=dict)  # by local day start (ms)


@dataclass(slots=True)
class _Bucket:
    kgce: float = 0.0  # 综合能耗 当量值 (export deducted)
    kgce_equal: float = 0.0  # 等价值
    equal_missing: bool = False  # an electricity share had no 等价值
    kgce_feedstock: float = 0.0
    kgce_exported: float = 0.0
    kwh: float = 0.0  # electricity (export deducted)
    output: float = 0.0
    carrier_kgce: dict[str, float] = field(default_factory=dict)
    carrier_kwh: dict[str, float] = field(default_factory=dict)
    carrier_consumed: dict[str, float] = field(default_factory=dict)  # net, in carrier_unit (GB 30251 kgoe)
    carrier_unit: dict[str, str] = field(default_factory=dict)
    # the output meter's intervals that touched the period: earliest start, latest end (coverage of the period)
    output_from_ms: int | None = None
    output_to_ms: int | None = None


class Accounting:
    """Turns interval deltas into energy, production and indicator rows. Owned by one processor thread.

    Args:
        plant: the validated plant configuration.
        ref: the reference data (``energymon.refdata.ReferenceData``).
        rules: the plant's resolved rules (built from ``plant`` and ``ref`` if omitted).
        indicators: keep the live hour/day sums per product for :meth:`indicator_rows`. False books energy and
            production rows only (a processor that sees a share of the readings has partial sums; the
            indicator rows are then recomputed from the store).
    """

    def __init__(self, plant: PlantConfig, ref: Any, rules: PlantRules | None = None, *,
                 indicators: bool = True) -> None:
        self.plant = plant
        self.ref = ref
        self.rules = rules or PlantRules(plant, ref)
        self.tz = plant.enterprise.tz
        self.enterprise = plant.enterprise.uscc
        self.region = self.rules.region
        self._gap_at_end = plant.accounting.gap_policy.mode == "flag"
        self._meters: dict[str, _MeterInfo] = {}
        self._products = {p.id: p for p in plant.products}
        self._buckets: dict[tuple[str, str, int], _Bucket] = {}
        self._dirty: set[tuple[str, str, int]] = set()
        self._indicator_keys: dict[tuple[str, str, str], SeriesKey] = {}
        self.indicators = indicators
        self._periods = {p: PeriodCache(p, self.tz) for p in PERIODS} if indicators else {}
        self._day_of = PeriodCache("day", self.tz)
        self._dates: dict[int, date] = {}
        # each carrier's consumed quantity is needed only by indicators with GB 30251 factors (炼油, 乙烯)
        self._track_consumed = any(
            self.ref.oil_equivalent_set(indicator) is not None
            for pid in self.rules.products for indicator, _ in self.rules.indicators(pid)
        )
        by_meter: dict[str, list[tuple[str, Contribution]]] = {}
        for pid, contributions in self.rules.product_meters.items():
            for meter_id, c in contributions.items():
                by_meter.setdefault(meter_id, []).append((pid, c))
        for meter_id, info in self.rules.meters.items():
            meter = info.meter
            energy_key = production_key = None
            if meter.carrier is not None:
                energy_key = series_key(
                    "energy", enterprise=self.enterprise, meter=meter.id, carrier=meter.carrier,
                    process=meter.process or "", level=str(int(meter.level)) if meter.level else "", unit=info.unit,
                    role="" if info.role.value == "consumption" else info.role.value,
                )
            outputs = self.rules.output_meters.get(meter_id, [])
            if outputs:
                production_key = series_key(
                    "production", enterprise=self.enterprise, meter=meter.id, product=",".join(outputs),
                    unit=info.unit,
                )
            self._meters[meter_id] = _MeterInfo(
                meter_id, plant.accounting.gap_secs(meter_id) * 1000, meter.carrier, info.kwh_per_unit, energy_key,
                production_key, by_meter.get(meter_id, []), outputs, self.rules.output_allocated(meter_id),
            )
        for product in plant.products:
            for indicator, _ in self.rules.indicators(product.id):
                for period in PERIODS:
                    self._indicator_keys[(product.id, indicator, period)] = series_key(
                        "indicator", enterprise=self.enterprise, product=product.id, indicator=indicator,
                        period=period,
                    )

    def counter_trackers(self) -> dict[str, tuple[str, CounterTracker]]:
        """Per accounted meter, its counter quantity and a fresh tracker (:meth:`PlantRules.counter_rules`)."""
        return {meter.id: (meter.counter, self.rules.tracker(meter.id))
                for meter in self.plant.meters if meter.counter is not None}

    def enterprise_meters(self) -> dict[str, list[str]]:
        """Per carrier, the meters that measure the enterprise's intake: those at the top metering level
        present for that carrier (一级 where there is one), so sub-meters are not added to their parent."""
        return self.rules.top_meters()

    def is_counter(self, meter_id: str, quantity: str) -> bool:
        """True if (meter, quantity) is an accounted counter."""
        info = self.rules.meters.get(meter_id)
        return info is not None and info.meter.counter == quantity

    def _day(self, end_ms: int) -> date:
        day_start = self._day_of.bounds(end_ms - 1)[0]
        day = self._dates.get(day_start)
        if day is None:
            day = self._dates[day_start] = datetime.fromtimestamp(day_start / 1000, self.tz).date()
        return day

    def book(self, meter_id: str, start_ms: int, end_ms: int, amount: float, flag: str) -> list[Row]:
        """Book one interval delta of a counter; return the energy / production rows it produces."""
        info = self._meters[meter_id]
        rows: list[Row] = []
        interval_s = (end_ms - start_ms) / 1000
        gap = end_ms - start_ms > info.gap_ms
        split_from = start_ms
        if gap and self._gap_at_end:
            split_from = end_ms - 1  # the whole interval lands in the period where the gap ends
        if info.energy_key is not None:
            day_start = self._day_of.bounds(end_ms - 1)[0]
            f = info.factors.get(day_start)
            if f is None:
                f = info.factors[day_start] = self.rules.factors(meter_id, self._day(end_ms))
            fields = {"consumed": amount, "kgce": amount * f.kgce, "interval_s": interval_s}
            if f.kgce_equal is not None and info.carrier == "electricity":
                fields["kgce_equal"] = amount * f.kgce_equal
            if f.co2_kg is not None:
                fields["co2_kg"] = amount * f.co2_kg
            if flag != "ok":
                fields["flag_" + flag] = 1.0
            if gap:
                fields["flag_gap_at_end" if self._gap_at_end else "flag_gap_spread"] = 1.0
            rows.append((info.energy_key, fields, end_ms))
            if info.products_energy:
                carrier = info.carrier or ""
                kwh_unit = info.kwh_per_unit
                unit = self.rules.meters[info.meter_id].unit
                shared = bool(info.output_allocated)
                for period, cache in self._periods.items():
                    for pstart, share in cache.split(split_from, end_ms, amount):
                        weights = self._output_shares(info, period, pstart) if shared else None
                        for pid, c in info.products_energy:
                            w = weights.get(pid, 1.0) if weights else 1.0
                            self._add_energy(pid, period, pstart, c, share * w, f.kgce, f.kgce_equal, carrier, kwh_unit,
                                             unit)
        if info.production_key is not None:
            rows.append((info.production_key, {"output": amount, "interval_s": interval_s}, end_ms))
            for pid in info.products_output:
                factor = self.rules.output_factor.get(pid, 1.0)
                for period, cache in self._periods.items():
                    for pstart, share in cache.split(split_from, end_ms, amount):
                        b = self._bucket(pid, period, pstart)
                        b.output += share * factor
                        if b.output_from_ms is None or start_ms < b.output_from_ms:
                            b.output_from_ms = start_ms
                        if b.output_to_ms is None or end_ms > b.output_to_ms:
                            b.output_to_ms = end_ms
        return rows

    def _output_shares(self, info: _MeterInfo, period: str, pstart: int) -> dict[str, float] | None:
        """Live approximation of an output allocation: each product's output so far in the same period."""
        if not info.output_allocated:
            return None
        outs = {pid: (b.output if (b := self._buckets.get((pid, period, pstart))) else 0.0)
                for pid in info.output_allocated}
        total = sum(outs.values())
        if total <= 0:
            return {pid: 1.0 / len(outs) for pid in outs}
        return {pid: v / total for pid, v in outs.items()}

    def _bucket(self, product: str, period: str, start: int) -> _Bucket:
        key = (product, period, start)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket()
        self._dirty.add(key)
        return bucket

    def _add_energy(
        self, pid: str, period: str, pstart: int, c: Contribution, amount: float, kgce_per: float,
        equal_per: float | None, carrier: str, kwh_per: float | None, unit: str,
    ) -> None:
        b = self._bucket(pid, period, pstart)
        if self._track_consumed:
            ref_unit = b.carrier_unit.setdefault(carrier, unit)
            consumed = c.total * amount * (1.0 if unit == ref_unit else units.convert(1.0, unit, ref_unit))
            b.carrier_consumed[carrier] = b.carrier_consumed.get(carrier, 0.0) + consumed
        kgce = amount * kgce_per
        b.kgce += c.total * kgce
        if equal_per is None:
            b.equal_missing = b.equal_missing or c.total != 0
        else:
            b.kgce_equal += c.total * amount * equal_per
        b.kgce_feedstock += c.feedstock * kgce
        b.kgce_exported += c.exported * kgce
        b.carrier_kgce[carrier] = b.carrier_kgce.get(carrier, 0.0) + c.total * kgce
        if kwh_per is not None:
            b.kwh += c.total * amount * kwh_per
            b.carrier_kwh[carrier] = b.carrier_kwh.get(carrier, 0.0) + c.total * amount * kwh_per

    def indicator_rows(self) -> list[Row]:
        """Rows for every (product, indicator, period) changed since the last call, graded."""
        rows: list[Row] = []
        for key in sorted(self._dirty):
            product_id, period, start = key
            bucket = self._buckets[key]
            day = datetime.fromtimestamp(start / 1000, self.tz).date()
            provisional = 1.0 if self.provisional(product_id, period, start) else 0.0
            for indicator, carriers in self.rules.indicators(product_id):
                fields = self._indicator_fields(product_id, indicator, carriers, bucket, day)
                fields["provisional"] = provisional
                rows.append((self._indicator_keys[(product_id, indicator, period)], fields, start))
        self._dirty.clear()
        self._evict()
        return rows

    def _indicator_fields(
        self, product_id: str, indicator: str, carriers: tuple[str, ...], b: _Bucket, day: date
    ) -> dict[str, float]:
        if carriers:
            kgce = sum(v for c, v in b.carrier_kgce.items() if c in carriers)
            kwh = sum(v for c, v in b.carrier_kwh.items() if c in carriers)
        else:
            kgce, kwh = b.kgce, b.kwh
        fields: dict[str, float] = {"energy_kgce": kgce, "output": b.output}
        if not carriers:
            if not b.equal_missing:
                fields["energy_kgce_equal"] = b.kgce_equal
            if b.kgce_feedstock:
                fields["energy_kgce_feedstock"] = b.kgce_feedstock
            if b.kgce_exported:
                fields["energy_kgce_exported"] = b.kgce_exported
        if kwh:
            fields["electricity_kwh"] = kwh
        electric = b.carrier_kgce.get("electricity", 0.0) if not carriers or "electricity" in carriers else 0.0
        kgce_other = kgce - electric
        unit = self.rules.indicator_unit(indicator)
        value = indicator_value(
            unit, kgce, kwh, b.output,
            energy_factor=self.plant.accounting.product(product_id).energy_factor, kgce_other=kgce_other,
            kgoe=self._kgoe(indicator, unit, carriers, b, day, kgce),
        )
        if value is not None:
            fields["value"] = value
            levels = self.rules.levels(product_id, indicator, day)
            if levels is not None and levels.has_figures:
                fields.update(grade_value(value, levels).fields())
        return fields

    def _kgoe(
        self, indicator: str, unit: str, carriers: tuple[str, ...], b: _Bucket, day: date, kgce: float
    ) -> float | None:
        """The boundary's kgoe for a ``kgoe`` indicator (GB 30251 factors where they apply), else None."""
        if not unit.startswith("kgoe"):
            return None
        parts = {c: (v, b.carrier_consumed.get(c, 0.0), b.carrier_unit.get(c, "")) for c, v in b.carrier_kgce.items()
                 if not carriers or c in carriers}
        return float(self.rules.kgoe(indicator, day, kgce, parts))

    def _evict(self) -> None:
        """Keep buckets of the last few days only; older periods are recomputed from the store by reports."""
        if len(self._buckets) < 512:
            return
        newest = max(k[2] for k in self._buckets)
        horizon = newest - 3 * 86_400_000
        for key in [k for k in self._buckets if k[2] < horizon]:
            del self._buckets[key]

    def provisional(self, product: str, period: str, start_ms: int) -> bool:
        """True while the live sums of a product period do not cover the whole period, so its indicator is an
        estimate, not a result: the product's output meter has no interval reaching back to the period's start
        (the pipeline started, or the output meter's data resumed after a gap booked at its end, inside the
        period: the first hour after start-up) or none reaching its end yet (the period is still running).

        A period that is covered end to end is final; its grade is never marked provisional.
        """
        b = self._buckets.get((product, period, start_ms))
        if b is None or b.output_from_ms is None or b.output_to_ms is None:
            return True
        return b.output_from_ms > start_ms or b.output_to_ms < next_period_start(start_ms, period, self.tz)

    def bucket(self, product: str, period: str, start_ms: int) -> tuple[float, float] | None:
        """(kgce, output) of one product period, if held."""
        b = self._buckets.get((product, period, start_ms))
        return None if b is None else (b.kgce, b.output)

    def _levels(self, product: str, day: date) -> Levels | None:
        return self.rules.levels(product, self._products[product].indicator, day)

    def latest(
        self, product: str, period: str = "hour", *, final: bool = False
    ) -> tuple[int, float, float, Grade | None] | None:
        """Latest period with output: (start_ms, kgce, output, grade of the product's indicator).

        ``final``: the latest period that is not :meth:`provisional` (covered end to end) instead.
        """
        found = [(k[2], b) for k, b in self._buckets.items() if k[0] == product and k[1] == period and b.output > 0
                 and not (final and self.provisional(product, period, k[2]))]
        if not found:
            return None
        start, b = max(found, key=lambda x: x[0])
        prod = self._products[product]
        levels = self._levels(product, datetime.fromtimestamp(start / 1000, self.tz).date())
        unit = self.rules.indicator_unit(prod.indicator)
        day = datetime.fromtimestamp(start / 1000, self.tz).date()
        value = indicator_value(
            unit, b.kgce, b.kwh, b.output,
            energy_factor=self.plant.accounting.product(product).energy_factor,
            kgce_other=b.kgce - b.carrier_kgce.get("electricity", 0.0),
            kgoe=self._kgoe(prod.indicator, unit, (), b, day, b.kgce),
        )
        grade = grade_value(value, levels) if levels is not None and levels.has_figures and value is not None else None
        return start, b.kgce, b.output, grade
