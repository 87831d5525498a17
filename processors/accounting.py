"""Energy accounting: interval consumption → standard coal → per-product indicators by local period.

For each energy meter the processor books interval consumption (:mod:`energymon.processors.counters`) and
converts it with the GB/T 2589 coefficient in force on the day of the reading: 当量值 (``kgce``) for every
carrier, and for electricity also 等价值 (``kgce_equal``, the year's and province's supply coal rate).
Consumption that spans a period boundary is spread over the periods in proportion to time.

Each product sums the standard coal of the meters inside its energy boundary and its output counter per
hour and per day in the plant's local time, and its 单位产品综合能耗 = kgce ÷ output is graded against the
indicator's 标杆/基准 levels and quota grades in force on that day.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from energymon import units
from energymon.config import Meter, MeteringLevel, PlantConfig, Product
from energymon.interfaces import Row, SeriesKey, series_key
from energymon.processors.grading import Grade, Levels, grade_value, levels_for

__all__ = ["Accounting", "PERIODS", "period_start", "split_by_period"]

PERIODS = ("hour", "day")


def period_start(ts_ms: int, period: str, tz: ZoneInfo) -> int:
    """Start (ms) of the local hour / day / month containing ``ts_ms``."""
    local = datetime.fromtimestamp(ts_ms / 1000, tz)
    if period == "hour":
        floor = local.replace(minute=0, second=0, microsecond=0)
    elif period == "day":
        floor = local.replace(hour=0, minute=0, second=0, microsecond=0)
    elif period == "month":
        floor = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        raise ValueError(f"unknown period {period!r}")
    # re-attach the zone so a DST fold picks the right offset
    return int(floor.replace(tzinfo=tz).timestamp() * 1000)


def _next_start(start_ms: int, period: str, tz: ZoneInfo) -> int:
    local = datetime.fromtimestamp(start_ms / 1000, tz)
    if period == "hour":
        return start_ms + 3_600_000
    if period == "day":
        nxt = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        nxt = (local.replace(day=28) + timedelta(days=4)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return int(nxt.replace(tzinfo=tz).timestamp() * 1000)


def split_by_period(
    start_ms: int, end_ms: int, amount: float, period: str, tz: ZoneInfo
) -> Iterator[tuple[int, float]]:
    """Spread ``amount`` consumed over [start, end) across local periods, in proportion to time."""
    last = period_start(end_ms - 1, period, tz)
    if end_ms <= start_ms or period_start(start_ms, period, tz) == last:
        yield last, amount
        return
    cur = period_start(start_ms, period, tz)
    span = end_ms - start_ms
    while cur < end_ms:
        nxt = _next_start(cur, period, tz)
        lo, hi = max(cur, start_ms), min(nxt, end_ms)
        if hi > lo:
            yield cur, amount * (hi - lo) / span
        cur = nxt


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
        self.start, self.end = start, _next_start(start, self.period, self.tz)
        return self.start, self.end

    def split(self, start_ms: int, end_ms: int, amount: float) -> list[tuple[int, float]]:
        """Like :func:`split_by_period`, with the fast path for an interval inside one period."""
        lo, _ = self.bounds(end_ms - 1)
        if start_ms >= lo or end_ms <= start_ms:
            return [(lo, amount)]
        return list(split_by_period(start_ms, end_ms, amount, self.period, self.tz))


@dataclass(slots=True)
class _MeterInfo:
    meter: Meter
    unit: str
    energy_key: SeriesKey | None
    production_key: SeriesKey | None
    products_energy: list[str]  # products whose boundary includes this meter
    products_output: list[str]  # products this meter counts the output of
    factors: dict[date, tuple[float, float | None]] = field(default_factory=dict)


@dataclass(slots=True)
class _Bucket:
    kgce: float = 0.0
    output: float = 0.0


class Accounting:
    """Turns interval deltas into energy, production and indicator rows. Owned by one processor thread."""

    def __init__(self, plant: PlantConfig, ref: Any) -> None:
        self.plant = plant
        self.ref = ref
        self.tz = plant.enterprise.tz
        self.enterprise = plant.enterprise.uscc
        self.region = plant.enterprise.province or "national"
        self._meters: dict[str, _MeterInfo] = {}
        self._products = {p.id: p for p in plant.products}
        self._buckets: dict[tuple[str, str, int], _Bucket] = {}
        self._dirty: set[tuple[str, str, int]] = set()
        self._indicator_keys: dict[tuple[str, str], SeriesKey] = {}
        self._level_cache: dict[tuple[str, date], Levels | None] = {}
        self._periods = {p: PeriodCache(p, self.tz) for p in PERIODS}
        self._day_of = PeriodCache("day", self.tz)
        self._dates: dict[int, date] = {}
        boundary = {p.id: self._boundary_meters(p) for p in plant.products}
        for meter in plant.meters:
            if meter.counter is None:
                continue
            unit = plant.quantities(meter)[meter.counter][0]
            energy_key = production_key = None
            if meter.carrier is not None:
                energy_key = series_key(
                    "energy", enterprise=self.enterprise, meter=meter.id, carrier=meter.carrier,
                    process=meter.process or "", level=str(int(meter.level)) if meter.level else "", unit=unit,
                )
            outputs = [p.id for p in plant.products if p.output.meter == meter.id]
            if outputs:
                production_key = series_key(
                    "production", enterprise=self.enterprise, meter=meter.id, product=",".join(outputs), unit=unit
                )
            self._meters[meter.id] = _MeterInfo(
                meter, unit, energy_key, production_key,
                [pid for pid, ids in boundary.items() if meter.id in ids], outputs,
            )
        for product in plant.products:
            for period in PERIODS:
                self._indicator_keys[(product.id, period)] = series_key(
                    "indicator", enterprise=self.enterprise, product=product.id, indicator=product.indicator,
                    period=period,
                )

    def _boundary_meters(self, product: Product) -> set[str]:
        chosen = set(product.boundary.meters)
        if product.boundary.processes:
            procs = set(product.boundary.processes)
            inside = [m for m in self.plant.meters if m.carrier is not None and m.process in procs]
            # Per process and carrier, count only the highest metering level present (2 before 3), so a
            # process meter and the equipment meters below it are not added twice.
            best: dict[tuple[str | None, str | None], int] = {}
            for m in inside:
                lvl = int(m.level) if m.level else int(MeteringLevel.PROCESS)
                key = (m.process, m.carrier)
                best[key] = min(best.get(key, 99), lvl)
            chosen |= {
                m.id for m in inside
                if (int(m.level) if m.level else int(MeteringLevel.PROCESS)) == best[(m.process, m.carrier)]
            }
        return chosen

    def enterprise_meters(self) -> dict[str, list[str]]:
        """Per carrier, the meters that measure the enterprise's intake: those at the top metering level
        present for that carrier (一级 where there is one), so sub-meters are not added to their parent."""
        top: dict[str, int] = {}
        for m in self.plant.meters:
            if m.carrier is not None and m.counter is not None:
                top[m.carrier] = min(top.get(m.carrier, 99), int(m.level) if m.level else 1)
        out: dict[str, list[str]] = {}
        for m in self.plant.meters:
            if m.carrier is not None and m.counter is not None and (int(m.level) if m.level else 1) == top[m.carrier]:
                out.setdefault(m.carrier, []).append(m.id)
        return out

    def is_counter(self, meter_id: str, quantity: str) -> bool:
        """True if (meter, quantity) is an accounted counter."""
        info = self._meters.get(meter_id)
        return info is not None and info.meter.counter == quantity

    def _factors(self, info: _MeterInfo, day: date) -> tuple[float, float | None]:
        cached = info.factors.get(day)
        if cached is not None:
            return cached
        carrier = info.meter.carrier
        assert carrier is not None
        coef = self.ref.coefficient(carrier, on=day)
        per_counter_unit = coef.kgce_per_unit * units.convert(1.0, info.unit, coef.unit)
        equal: float | None = None
        if carrier == "electricity":
            for region in (self.region, "national"):
                try:
                    eq = self.ref.electricity_equal_value(day.year, region)
                except (KeyError, ValueError):
                    continue  # no published supply coal rate for that year and region: 等价值 is left out
                equal = eq.kgce_per_unit * units.convert(1.0, info.unit, eq.unit)
                break
        info.factors[day] = (per_counter_unit, equal)
        return per_counter_unit, equal

    def book(self, meter_id: str, start_ms: int, end_ms: int, amount: float, flag: str) -> list[Row]:
        """Book one interval delta of a counter; return the energy / production rows it produces."""
        info = self._meters[meter_id]
        rows: list[Row] = []
        interval_s = (end_ms - start_ms) / 1000
        if info.energy_key is not None:
            day_start = self._day_of.bounds(end_ms - 1)[0]
            day = self._dates.get(day_start)
            if day is None:
                day = self._dates[day_start] = datetime.fromtimestamp(day_start / 1000, self.tz).date()
            kgce_per_unit, equal_per_unit = self._factors(info, day)
            fields = {"consumed": amount, "kgce": amount * kgce_per_unit, "interval_s": interval_s}
            if equal_per_unit is not None:
                fields["kgce_equal"] = amount * equal_per_unit
            if flag != "ok":
                fields["flag_" + flag] = 1.0
            rows.append((info.energy_key, fields, end_ms))
            if info.products_energy:
                for period, cache in self._periods.items():
                    for pstart, share in cache.split(start_ms, end_ms, amount):
                        for pid in info.products_energy:
                            self._add(pid, period, pstart, kgce=share * kgce_per_unit)
        if info.production_key is not None:
            fields = {"output": amount, "interval_s": interval_s}
            rows.append((info.production_key, fields, end_ms))
            for pid in info.products_output:
                product = self._products[pid]
                factor = units.convert(1.0, info.unit, product.unit)
                for period, cache in self._periods.items():
                    for pstart, share in cache.split(start_ms, end_ms, amount):
                        self._add(pid, period, pstart, output=share * factor)
        return rows

    def _add(self, product: str, period: str, start: int, *, kgce: float = 0.0, output: float = 0.0) -> None:
        key = (product, period, start)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket()
        bucket.kgce += kgce
        bucket.output += output
        self._dirty.add(key)

    def indicator_rows(self) -> list[Row]:
        """Rows for every (product, period) changed since the last call, graded."""
        rows: list[Row] = []
        for key in sorted(self._dirty):
            product_id, period, start = key
            bucket = self._buckets[key]
            fields: dict[str, float] = {"energy_kgce": bucket.kgce, "output": bucket.output}
            if bucket.output > 0:
                value = bucket.kgce / bucket.output
                fields["value"] = value
                product = self._products[product_id]
                day = datetime.fromtimestamp(start / 1000, self.tz).date()
                levels = self._levels(product.indicator, day)
                if levels is not None:
                    result = grade_value(value, levels)
                    fields.update(result.fields())
            rows.append((self._indicator_keys[(product_id, period)], fields, start))
        self._dirty.clear()
        self._evict()
        return rows

    def _levels(self, indicator: str, day: date) -> Levels | None:
        key = (indicator, day)
        if key not in self._level_cache:
            self._level_cache[key] = levels_for(self.ref, indicator, day)
        return self._level_cache[key]

    def _evict(self) -> None:
        """Keep buckets of the last few days only; older periods are recomputed from the store by reports."""
        if len(self._buckets) < 512:
            return
        newest = max(k[2] for k in self._buckets)
        horizon = newest - 3 * 86_400_000
        for key in [k for k in self._buckets if k[2] < horizon]:
            del self._buckets[key]

    def bucket(self, product: str, period: str, start_ms: int) -> tuple[float, float] | None:
        """(kgce, output) of one product period, if held."""
        b = self._buckets.get((product, period, start_ms))
        return None if b is None else (b.kgce, b.output)

    def latest(self, product: str, period: str = "hour") -> tuple[int, float, float, Grade | None] | None:
        """Latest period with output: (start_ms, kgce, output, grade)."""
        found = [(k[2], b) for k, b in self._buckets.items() if k[0] == product and k[1] == period and b.output > 0]
        if not found:
            return None
        start, b = max(found, key=lambda x: x[0])
        prod = self._products[product]
        levels = self._levels(prod.indicator, datetime.fromtimestamp(start / 1000, self.tz).date())
        grade = grade_value(b.kgce / b.output, levels) if levels is not None else None
        return start, b.kgce, b.output, grade
