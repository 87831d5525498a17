"""A simulated plant: one meter model per configured meter, and :func:`run_simulator` serving them.

:meth:`PlantModel.from_config` gives every meter of a :class:`~energymon.config.PlantConfig` a load profile
derived from what it measures (carrier, counter, quantities, process, product) and computes each quantity of
its register map or JSON fields at any event time:

* **electricity** meters: active power (kW) from the profile; the energy counter is its exact integral;
  reactive and apparent power from the power factor (~0.9); voltage ``voltage_lN`` is phase-to-neutral
  (``U/√3``) and ``voltage_lNM`` line-to-line of a 10.5 kV system (400 V below 500 kW); current
  ``P / (√3 · U · pf)``; frequency ~50 Hz. Export counters stand still (the plant does not export).
* a level-1 electricity meter (the incoming feeder) reads the **sum** of the level-2 electricity meters plus
  unmetered auxiliaries (1/12 of their full load by default), so its energy equals theirs plus the rest.
* **mass** (weigh feeders, production scales: t/h and a totaliser in t), **volume** (gas flow, Nm3/h and
  Nm3) and **heat** meters likewise.

Meters follow their process: :meth:`PlantModel.stop_process` stops every meter of a process (and its
sub-processes) together, e.g. a kiln stop takes clinker output, coal feed and kiln drive power down at once.
For the example 5,000 t/d cement line the defaults are the line's real figures: clinker ~208 t/h, raw coal
~29 t/h, natural gas ~300 Nm3/h, electricity raw mill 4.2 MW, kiln drive and fans 3.6 MW, coal mill 1.2 MW,
cement mill 9 MW while it runs (it stops 08:00–11:00 and 17:00–21:00 for the peak tariff), auxiliaries
1.5 MW, which puts the clinker's 单位产品综合能耗 near 107 kgce/t (标杆 100, 基准 117). Per-meter
:class:`MeterOverride` reshapes any meter.

Faults (:mod:`energymon.simulators.profiles`) are injected per meter with :meth:`PlantModel.inject`.

Example::

    >>> from datetime import UTC, datetime
    >>> from energymon.clock import ManualClock
    >>> from importlib import resources
    >>> from energymon.config import load_plant
    >>> plant = load_plant(str(resources.files("energymon.examples") / "cement_plant.yaml"))
    >>> clock = ManualClock(datetime(2025, 1, 6, 18, 0, tzinfo=UTC))      # 02:00 in Asia/Shanghai
    >>> model = PlantModel.from_config(plant, clock, seed=1)
    >>> 18_000 < model.value("incoming", "power_active") < 21_000         # cement mill grinding at night
    True
    >>> e0 = model.value("incoming", "energy_active_import")
    >>> clock.advance(3600)
    >>> 18_000 < model.value("incoming", "energy_active_import") - e0 < 21_000   # kWh in one hour
    True
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import time

from energymon import units
from energymon.collectors.codec import default_counter_max
from energymon.config import (
    Meter,
    MeteringLevel,
    ModbusRtuTcpBus,
    ModbusSource,
    ModbusTcpBus,
    MqttJsonSource,
    PlantConfig,
)
from energymon.interfaces import Clock
from energymon.simulators.modbus_server import ModbusPlantServer
from energymon.simulators.mqtt_meter import MqttJsonMeterSimulator, PublishFn
from energymon.simulators.profiles import (
    CounterEventFault,
    CounterReset,
    CounterState,
    DailyStop,
    DroppedConnection,
    ExceptionReply,
    Fault,
    LoadProfile,
    NoAnswer,
    Noise,
    Outage,
    ProtocolFault,
    Replacement,
    Rollover,
    Schedule,
    Spike,
    Stuck,
    WindowFault,
    derive_seed,
)

__all__ = ["MeterOverride", "PlantModel", "SimulatorHandle", "run_simulator"]

log = logging.getLogger(__name__)

_SQRT3 = math.sqrt(3.0)

#: counter dimension → the rate dimension it integrates
_RATE_OF = {
    "energy": "power",
    "reactive_energy": "reactive_power",
    "mass": "mass_rate",
    "volume": "volume_rate",
    "heat": "heat_rate",
    "area": "area_rate",
    "length": "length_rate",
}
#: unit each dimension is computed in before converting to the quantity's unit
_BASE_UNIT = {
    "power": "kW", "reactive_power": "kvar", "apparent_power": "kVA", "mass_rate": "t/h",
    "volume_rate": "m3/h", "heat_rate": "GJ/h", "energy": "kWh", "reactive_energy": "kvarh", "mass": "t",
    "volume": "m3", "heat": "GJ", "voltage": "V", "current": "A", "frequency": "Hz", "power_factor": "pf",
    "temperature": "degC", "pressure": "MPa", "ratio": "%", "count": "1",
    "area_rate": "m2/h", "area": "m2", "length_rate": "m/h", "length": "m",
}
#: full load of a meter nothing else tells us about, in the primary dimension's base unit
_DEFAULT_BASE = {"power": 500.0, "mass_rate": 10.0, "volume_rate": 100.0, "heat_rate": 10.0, "area_rate": 1000.0,
                 "length_rate": 1000.0}
_DEFAULT_NOISE = {"power": 0.03, "mass_rate": 0.02, "volume_rate": 0.04, "heat_rate": 0.03, "area_rate": 0.02,
                  "length_rate": 0.02}
#: rate of another flow dimension per unit of the primary one (steam ~2.8 GJ/t, natural gas ~35.5 MJ/m3)
_CROSS = {
    ("mass_rate", "heat_rate"): 2.8,
    ("heat_rate", "mass_rate"): 1 / 2.8,
    ("volume_rate", "heat_rate"): 0.0355,
    ("heat_rate", "volume_rate"): 1 / 0.0355,
}
_KILN_WORDS = ("kiln", "窑", "烧成")
_PEAK_TARIFF_STOPS = (DailyStop(time(8), time(11)), DailyStop(time(17), time(21)))


@dataclass(frozen=True, slots=True)
class _Archetype:
    base: float
    idle_fraction: float
    noise: float
    daily_stops: tuple[DailyStop, ...] = ()


#: electricity consumers of a cement line, matched on the meter's and its process's id and name (in order)
_ELECTRIC_ARCHETYPES: tuple[tuple[tuple[str, ...], _Archetype], ...] = (
    (("cement_grinding", "cement_mill", "cement mill", "水泥磨", "水泥粉磨"),
     _Archetype(9000.0, 0.02, 0.03, _PEAK_TARIFF_STOPS)),
    (("coal_mill", "coal mill", "煤磨", "煤粉"), _Archetype(1200.0, 0.05, 0.03)),
    (("raw_meal", "raw_mill", "raw mill", "生料"), _Archetype(4200.0, 0.03, 0.03)),
    (_KILN_WORDS, _Archetype(3600.0, 0.15, 0.025)),
)


@dataclass(frozen=True, slots=True)
class MeterOverride:
    """Reshape one simulated meter; every None keeps the default derived from the plant file.

    Attributes:
        base: full-load rate of the meter's primary flow: kW for electricity, t/h, m3/h (Nm3/h) or GJ/h.
            For a summing (level-1) electricity meter, the unmetered auxiliaries it reads on top of its
            sub-meters.
        noise: relative noise amplitude (0.02 = ±2 %).
        schedule: the equipment's own schedule (daily stops, ramps); its time zone should be the plant's.
        idle_fraction: share of ``base`` drawn while stopped.
        follows_process: whether :meth:`PlantModel.stop_process` on its process stops it.
        counter_start: reading of the meter's counter at the model's origin, in the counter's unit.
        power_factor: nominal power factor (electricity).
        voltage_v: nominal line-to-line voltage (electricity).

    >>> MeterOverride(base=100.0, noise=0.0).base
    100.0
    >>> MeterOverride(power_factor=1.5)
    Traceback (most recent call last):
    ...
    ValueError: power_factor must be in (0, 1], got 1.5
    """

    base: float | None = None
    noise: float | None = None
    schedule: Schedule | None = None
    idle_fraction: float | None = None
    follows_process: bool | None = None
    counter_start: float | None = None
    power_factor: float | None = None
    voltage_v: float | None = None

    def __post_init__(self) -> None:
        if self.base is not None and not (math.isfinite(self.base) and self.base >= 0):
            raise ValueError(f"base must be a finite rate >= 0, got {self.base}")
        if self.noise is not None and not 0 <= self.noise < 1:
            raise ValueError(f"noise must be in [0, 1), got {self.noise}")
        if self.idle_fraction is not None and not 0 <= self.idle_fraction <= 1:
            raise ValueError(f"idle_fraction must be in [0, 1], got {self.idle_fraction}")
        start = self.counter_start
        if start is not None and not (math.isfinite(start) and start >= 0):
            raise ValueError(f"counter_start must be a finite reading >= 0, got {self.counter_start}")
        if self.power_factor is not None and not 0 < self.power_factor <= 1:
            raise ValueError(f"power_factor must be in (0, 1], got {self.power_factor}")
        if self.voltage_v is not None and not self.voltage_v > 0:
            raise ValueError(f"voltage_v must be positive, got {self.voltage_v}")


# --------------------------------------------------------------------------- one meter


@dataclass(slots=True, eq=False)
class _Quantity:
    name: str
    unit: str
    kind: str
    true: Callable[[int], float]
    counter: CounterState | None = None


@dataclass(slots=True, eq=False)
class _ActiveFault:
    fault: Fault
    consumed: set[str] = field(default_factory=set)


class _MeterSim:
    """One simulated meter: its profile, its quantities and the faults injected into it."""

    def __init__(
        self,
        model: PlantModel,
        meter: Meter,
        primary: str,
        profile: LoadProfile,
        chain: tuple[str, ...],
        power_factor: float,
        voltage_v: float,
    ) -> None:
        self.model = model
        self.meter = meter
        self.primary = primary
        self.profile = profile
        self.chain = chain
        self.power_factor = power_factor
        self.voltage_v = voltage_v
        self.children: tuple[_MeterSim, ...] = ()
        self.share = 1.0
        self.quantities: dict[str, _Quantity] = {}
        self.faults: list[_ActiveFault] = []

    # rates ------------------------------------------------------------------

    def running(self, ts_ms: int) -> float:
        """Running fraction: the own schedule times that of every process it follows."""
        level: float = self.profile.running(ts_ms, self.model._process_running(self.chain, ts_ms))
        return level

    def primary_rate(self, ts_ms: int) -> float:
        """Rate of the primary flow in its base unit (kW, t/h, m3/h, GJ/h)."""
        own: float = self.profile.rate(ts_ms, self.model._process_running(self.chain, ts_ms))
        if not self.children:
            return own
        return self.share * sum(c.primary_rate(ts_ms) for c in self.children) + own

    def flow(self, dim: str, ts_ms: int) -> float:
        """Rate of flow dimension ``dim`` in its base unit."""
        p = self.primary_rate(ts_ms)
        if dim == self.primary:
            return p
        if self.primary == "power":
            tan_phi = math.tan(math.acos(self.power_factor))
            return {"reactive_power": p * tan_phi, "apparent_power": p / self.power_factor}.get(dim, p)
        return p * _CROSS.get((self.primary, dim), 1.0)

    def base_flow(self, dim: str) -> float:
        """Full-load rate of ``dim``, for counter starting values."""
        base: float = self.profile.base + self.share * sum(c.base_flow(self.primary) for c in self.children)
        if dim == self.primary:
            return base
        if self.primary == "power":
            return base * (math.tan(math.acos(self.power_factor)) if dim == "reactive_power" else 1.0)
        return base * _CROSS.get((self.primary, dim), 1.0)

    # displayed values -------------------------------------------------------

    def display(self, quantity: str, ts_ms: int) -> float:
        q = self.quantities[quantity]
        value = q.true(ts_ms)
        for active in self.faults:
            fault = active.fault
            if isinstance(fault, Stuck) and fault.active(ts_ms) and fault.quantity in (None, quantity):
                value = q.true(fault.start_ms)
            elif isinstance(fault, Spike) and fault.quantity in (None, quantity):
                if fault.duration_secs == 0:
                    if ts_ms >= fault.start_ms and quantity not in active.consumed:
                        active.consumed.add(quantity)
                        value = fault.absurd(value)
                elif fault.active(ts_ms):
                    value = fault.absurd(value)
        return value


def _phase(name: str) -> str | None:
    for suffix in ("_l12", "_l23", "_l31", "_ll"):
        if name.endswith(suffix):
            return "line"
    for suffix in ("_l1", "_l2", "_l3", "_ln"):
        if name.endswith(suffix):
            return "phase"
    if name.endswith("_n"):
        return "neutral"
    return None


# --------------------------------------------------------------------------- the plant


class PlantModel:
    """Every simulated meter of a plant, computed at any event time.

    Thread-safe: :meth:`value`, :meth:`inject` and the others take one lock, so Modbus servers, MQTT meters
    and tests may share a model.

    Args:
        plant: the plant file.
        clock: event-time source; :meth:`value` without a time reads it; counters start at its current time.
        seed: reproducibility seed; the same seed, plant and origin give the same values.
        overrides: per meter id, a :class:`MeterOverride`.
    """

    def __init__(
        self,
        plant: PlantConfig,
        clock: Clock,
        *,
        seed: int = 0,
        overrides: Mapping[str, MeterOverride] | None = None,
        step_secs: float = 10.0,
    ) -> None:
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - {m.id for m in plant.meters})
        if unknown:
            raise KeyError(f"overrides for unknown meter(s): {', '.join(unknown)}")
        self.plant = plant
        self.clock = clock
        self.seed = seed
        self._lock = threading.Lock()
        self._step_secs = step_secs
        step_ms = max(1, round(step_secs * 1000))
        now = clock.now_ms()
        self.origin_ms = now - now % step_ms
        self._tz = plant.enterprise.timezone
        self._parents = {p.id: p.parent for p in plant.processes}
        self._process_schedules: dict[str, Schedule] = {}
        self._meters: dict[str, _MeterSim] = {}
        for meter in plant.meters:
            self._meters[meter.id] = self._build_meter(meter, overrides.get(meter.id, MeterOverride()))
        self._link_sum_meters(overrides)
        for meter in plant.meters:
            self._build_quantities(self._meters[meter.id], overrides.get(meter.id, MeterOverride()))

    @classmethod
    def from_config(
        cls,
        plant: PlantConfig,
        clock: Clock,
        seed: int = 0,
        *,
        overrides: Mapping[str, MeterOverride] | None = None,
    ) -> PlantModel:
        """Build the model of ``plant`` (see the module docstring for the defaults)."""
        return cls(plant, clock, seed=seed, overrides=overrides)

    # building ---------------------------------------------------------------

    def _chain(self, process: str | None) -> tuple[str, ...]:
        chain: list[str] = []
        while process is not None and process not in chain:
            chain.append(process)
            process = self._parents.get(process)
        return tuple(chain)

    def _text(self, meter: Meter, *, with_process: bool) -> str:
        parts = [meter.id, meter.name]
        if with_process:
            names = {p.id: p.name for p in self.plant.processes}
            for pid in self._chain(meter.process):
                parts += [pid, names.get(pid, "")]
        return " ".join(parts).lower()

    def _primary_dim(self, meter: Meter, qty: Mapping[str, tuple[str, str, float | None]]) -> str:
        if meter.carrier == "electricity":
            return "power"
        dims = [units.dimension(unit) for unit, _, _ in qty.values()]
        if meter.counter is not None and meter.counter in qty:
            dim = units.dimension(qty[meter.counter][0])
            if dim in _RATE_OF:
                return _RATE_OF[dim]
        for dim in dims:
            if dim in _RATE_OF:
                return _RATE_OF[dim]
            if dim in _DEFAULT_BASE:
                return dim
        return "power" if {"voltage", "current", "frequency", "power_factor"} & set(dims) else "mass_rate"

    def _archetype(self, meter: Meter, primary: str) -> _Archetype | None:
        carrier = (meter.carrier or "").lower()
        at_kiln = any(w in self._text(meter, with_process=True) for w in _KILN_WORDS)
        if primary == "power":
            text = self._text(meter, with_process=True)
            for words, arch in _ELECTRIC_ARCHETYPES:
                if any(w in text for w in words):
                    return arch
            return None
        if primary == "mass_rate":
            for product in self.plant.products:
                if product.output.meter == meter.id and product.indicator == "cement_clinker":
                    return _Archetype(208.0, 0.0, 0.02)
            if "coal" in carrier and at_kiln:
                return _Archetype(29.0, 0.0, 0.02)
            return None
        if primary == "volume_rate" and "natural_gas" in carrier and at_kiln:
            return _Archetype(300.0, 0.1, 0.04)
        return None

    def _fallback_base(
        self, meter: Meter, primary: str, qty: Mapping[str, tuple[str, str, float | None]]
    ) -> float:
        if meter.max_rate_per_hour is not None and meter.counter is not None and meter.counter in qty:
            unit = qty[meter.counter][0]
            dim = units.dimension(unit)
            if _RATE_OF.get(dim) == primary:
                return 0.5 * units.convert(meter.max_rate_per_hour, unit, _BASE_UNIT[dim])
        return _DEFAULT_BASE.get(primary, 10.0)

    def _build_meter(self, meter: Meter, ov: MeterOverride) -> _MeterSim:
        qty = self.plant.quantities(meter)
        primary = self._primary_dim(meter, qty)
        arch = self._archetype(meter, primary)
        base = arch.base if arch else self._fallback_base(meter, primary, qty)
        idle = arch.idle_fraction if arch else (0.05 if primary == "power" else 0.0)
        noise = arch.noise if arch else _DEFAULT_NOISE.get(primary, 0.03)
        stops = arch.daily_stops if arch else ()
        schedule = ov.schedule or Schedule(timezone=self._tz, daily_stops=stops)
        profile = LoadProfile(
            base=base if ov.base is None else ov.base,
            schedule=schedule,
            idle_fraction=idle if ov.idle_fraction is None else ov.idle_fraction,
            noise=Noise(noise if ov.noise is None else ov.noise, derive_seed(self.seed, meter.id, "load")),
        )
        follows = True if ov.follows_process is None else ov.follows_process
        chain = self._chain(meter.process) if follows else ()
        voltage = ov.voltage_v or (10_500.0 if base >= 500 else 400.0)
        return _MeterSim(self, meter, primary, profile, chain, ov.power_factor or 0.9, voltage)

    def _link_sum_meters(self, overrides: Mapping[str, MeterOverride]) -> None:
        electric = [
            s for s in self._meters.values() if s.primary == "power" and s.meter.carrier == "electricity"
        ]
        sub_levels = sorted({s.meter.level for s in electric if s.meter.level not in (None, 1)})
        if not sub_levels:
            return
        children = tuple(s for s in electric if s.meter.level == sub_levels[0])
        tops = [s for s in electric if s.meter.level is MeteringLevel.ENTERPRISE]
        for top in tops:
            top.children = children
            top.share = 1.0 / len(tops)
            top.chain = ()
            ov = overrides.get(top.meter.id, MeterOverride())
            aux = sum(c.profile.base for c in children) / 12.0 / len(tops)
            profile = top.profile
            top.profile = LoadProfile(
                base=aux if ov.base is None else ov.base,
                schedule=profile.schedule,
                idle_fraction=1.0 if ov.idle_fraction is None else ov.idle_fraction,
                noise=profile.noise,
            )
            if ov.voltage_v is None:
                top.voltage_v = 10_500.0

    def _wrap(self, meter: Meter, quantity: str, counter_max: float | None) -> float | None:
        if counter_max is not None:
            return counter_max
        if isinstance(meter.source, ModbusSource):
            for reg in self.plant.register_map(meter.source).registers:
                if reg.quantity == quantity:
                    natural: float | None = default_counter_max(reg)
                    return natural
        return None

    def _build_quantities(self, sim: _MeterSim, ov: MeterOverride) -> None:
        meter = sim.meter
        rng = random.Random(derive_seed(self.seed, meter.id, "counter_start"))
        hours_in_service = rng.uniform(2000.0, 8000.0)
        for name, (unit, kind, counter_max) in self.plant.quantities(meter).items():
            dim = units.dimension(unit)
            noise_seed = derive_seed(self.seed, meter.id, name)
            if kind == "counter":
                wrap = self._wrap(meter, name, counter_max)
                if dim in _RATE_OF:
                    rate_dim = _RATE_OF[dim]
                    factor = 0.0 if "export" in name else units.convert(1.0, _BASE_UNIT[dim], unit)
                    if _phase(name) == "phase":
                        factor /= 3.0
                    to_unit = units.convert(1.0, _BASE_UNIT[dim], unit)
                    start = sim.base_flow(rate_dim) * hours_in_service * to_unit
                    if "export" in name:
                        start *= 0.001
                    rate = self._counter_rate(sim, rate_dim, factor)
                else:
                    start, rate = hours_in_service, self._hours_rate(sim)
                if wrap is not None:
                    start = min(start, 0.4 * wrap)
                if ov.counter_start is not None and (meter.counter is None or name == meter.counter):
                    start = ov.counter_start
                counter = CounterState(rate, start=start, origin_ms=self.origin_ms, step_secs=self._step_secs,
                                       wrap=wrap)
                sim.quantities[name] = _Quantity(name, unit, kind, counter.value, counter)
            else:
                gauge = self._gauge(sim, name, unit, dim, noise_seed)
                sim.quantities[name] = _Quantity(name, unit, kind, gauge)

    @staticmethod
    def _counter_rate(sim: _MeterSim, rate_dim: str, factor: float) -> Callable[[int], float]:
        def rate(ts_ms: int) -> float:
            return factor * sim.flow(rate_dim, ts_ms) if factor else 0.0

        return rate

    @staticmethod
    def _hours_rate(sim: _MeterSim) -> Callable[[int], float]:
        def rate(ts_ms: int) -> float:
            return 1.0 if sim.running(ts_ms) > 0.5 else 0.0

        return rate

    def _gauge(self, sim: _MeterSim, name: str, unit: str, dim: str, seed: int) -> Callable[[int], float]:
        """The function of event time giving gauge ``name`` of ``sim`` in ``unit``."""
        phase = _phase(name)
        base_unit = _BASE_UNIT.get(dim, unit)
        to_unit = units.convert(1.0, base_unit, unit) if base_unit != unit else 1.0
        small = Noise(0.004, seed)
        wobble = Noise(0.01, seed)
        unit_noise = Noise(0.5, seed)
        electric = sim.primary == "power"
        pf = sim.power_factor

        if dim in ("power", "reactive_power", "apparent_power", "mass_rate", "volume_rate", "heat_rate"):
            share = 0.0 if "export" in name else (1 / 3 if phase == "phase" else 1.0)

            def flow(ts: int) -> float:
                return to_unit * share * sim.flow(dim, ts) * (1.0 + (wobble.value(ts) if share < 1 else 0.0))

            return flow
        if dim == "voltage":
            level = sim.voltage_v if electric else 400.0
            level = level if phase in ("line", None) else level / _SQRT3

            def voltage(ts: int) -> float:
                deviation: float = small.value(ts)
                return to_unit * level * (1.0 + deviation)

            return voltage
        if dim == "current":
            share = 0.05 if phase == "neutral" else 1.0

            def current(ts: int) -> float:
                p_kw = sim.flow("power", ts) if electric else 0.0
                deviation: float = wobble.value(ts)
                return to_unit * share * p_kw * 1000.0 / (_SQRT3 * sim.voltage_v * pf) * (1.0 + deviation)

            return current
        if dim == "frequency":
            return lambda ts: to_unit * 50.0 * (1.0 + 0.0006 * unit_noise.value(ts) / 0.5)
        if dim == "power_factor" or (dim == "ratio" and "factor" in name):
            scale = 100.0 if unit == "%" else 1.0
            return lambda ts: scale * min(0.999, pf + 0.015 * unit_noise.value(ts) / 0.5)
        if dim == "ratio":
            base = max(sim.base_flow(sim.primary), 1e-9)
            return lambda ts: min(150.0, 100.0 * sim.primary_rate(ts) / base)
        if dim == "temperature":
            return lambda ts: to_unit * (45.0 + 3.0 * unit_noise.value(ts) / 0.5)
        if dim == "pressure":
            return lambda ts: to_unit * 0.5 * (1.0 + 0.02 * unit_noise.value(ts) / 0.5)
        if dim == "count":
            return lambda ts: 1.0 if sim.running(ts) > 0.5 else 0.0
        # energy-like gauges (e.g. a "today" register): what was counted since local midnight is not modelled;
        # show the hourly rate in the quantity's unit.
        rate_dim = _RATE_OF.get(dim)
        if rate_dim is not None:
            return lambda ts: to_unit * sim.flow(rate_dim, ts)
        return lambda ts: 0.0

    # process operation ------------------------------------------------------

    def _process_running(self, chain: tuple[str, ...], ts_ms: int) -> float:
        level = 1.0
        for pid in chain:
            schedule = self._process_schedules.get(pid)
            if schedule is not None:
                level *= schedule.running(ts_ms)
        return level

    def stop_process(
        self,
        process: str,
        start_ms: int,
        duration_secs: float,
        *,
        ramp_down_secs: float = 300.0,
        ramp_up_secs: float = 1800.0,
    ) -> None:
        """Stop ``process`` and its sub-processes from ``start_ms`` for ``duration_secs``: every meter in them
        (that follows its process) drops to its idle level, ramping down before and up after the window.
        """
        if process not in self._parents:
            raise KeyError(f"unknown process {process!r}")
        with self._lock:
            current = self._process_schedules.get(process) or Schedule(
                timezone=self._tz, ramp_down_secs=ramp_down_secs, ramp_up_secs=ramp_up_secs
            )
            self._process_schedules[process] = current.with_outage(Outage(start_ms, duration_secs))
            from_ms = int(start_ms - current.ramp_down_secs * 1000) - 1
            for sim in self._meters.values():
                for q in sim.quantities.values():
                    if q.counter is not None:
                        q.counter.invalidate(from_ms)

    # reading ----------------------------------------------------------------

    @property
    def meter_ids(self) -> list[str]:
        """Ids of the simulated meters, in plant-file order."""
        return list(self._meters)

    def quantities(self, meter_id: str) -> list[str]:
        """Quantities the meter provides."""
        return list(self._sim(meter_id).quantities)

    def profile(self, meter_id: str) -> LoadProfile:
        """The meter's own load profile (for a summing meter: its unmetered auxiliaries)."""
        return self._sim(meter_id).profile

    def _sim(self, meter_id: str) -> _MeterSim:
        try:
            return self._meters[meter_id]
        except KeyError:
            raise KeyError(f"no simulated meter {meter_id!r}") from None

    def value(self, meter_id: str, quantity: str, ts_ms: int | None = None) -> float:
        """The value the meter shows for ``quantity`` at ``ts_ms`` (default: the clock's now), with faults."""
        ts = self.clock.now_ms() if ts_ms is None else ts_ms
        sim = self._sim(meter_id)
        if quantity not in sim.quantities:
            raise KeyError(f"meter {meter_id!r} has no quantity {quantity!r}")
        with self._lock:
            return sim.display(quantity, ts)

    def rate(self, meter_id: str, ts_ms: int | None = None) -> float:
        """True rate of the meter's primary flow (kW, t/h, m3/h or GJ/h), no faults applied."""
        ts = self.clock.now_ms() if ts_ms is None else ts_ms
        sim = self._sim(meter_id)
        with self._lock:
            return sim.primary_rate(ts)

    def protocol_fault(self, meter_id: str, ts_ms: int | None = None) -> ProtocolFault | None:
        """The protocol fault (no answer, exception, dropped connection) active at ``ts_ms``, if any."""
        ts = self.clock.now_ms() if ts_ms is None else ts_ms
        sim = self._sim(meter_id)
        with self._lock:
            for active in sim.faults:
                fault = active.fault
                if isinstance(fault, NoAnswer | ExceptionReply | DroppedConnection) and fault.active(ts):
                    return fault
        return None

    # faults -----------------------------------------------------------------

    def inject(self, meter_id: str, fault: Fault) -> None:
        """Apply ``fault`` to a meter.

        Window faults (no answer, exception, dropped connection, stuck, spike) act while active and can be
        cleared with :meth:`clear_faults`. Counter events (reset, rollover, replacement) change the counter
        from their time on, for good.

        Raises:
            KeyError: unknown meter or quantity.
            ValueError: a counter fault on a meter without such a counter, or a rollover of a counter with no
                rollover point (a float register without ``counter_max``).
        """
        sim = self._sim(meter_id)
        quantity = getattr(fault, "quantity", None)
        if quantity is not None and quantity not in sim.quantities:
            raise KeyError(f"meter {meter_id!r} has no quantity {quantity!r}")
        with self._lock:
            if isinstance(fault, WindowFault):
                sim.faults.append(_ActiveFault(fault))
                return
            if not isinstance(fault, CounterEventFault):
                raise TypeError(f"not a fault: {fault!r}")
            targets = [
                q for q in sim.quantities.values()
                if q.counter is not None and (quantity is None or q.name == quantity)
            ]
            if not targets:
                raise ValueError(f"meter {meter_id!r} has no counter {quantity or ''} to apply {fault!r} to")
            for q in targets:
                counter = q.counter
                assert counter is not None
                if isinstance(fault, CounterReset):
                    counter.add_event(fault.start_ms, 0.0)
                elif isinstance(fault, Replacement):
                    counter.add_event(fault.start_ms, fault.new_value)
                elif isinstance(fault, Rollover):
                    if counter.wrap is None:
                        raise ValueError(
                            f"meter {meter_id!r} counter {q.name!r} has no rollover point: give counter_max"
                        )
                    margin = fault.margin
                    if margin is None:
                        margin = counter.rate(fault.start_ms) * fault.wraps_after_secs / 3600.0
                    margin = min(max(margin, counter.wrap * 1e-9), counter.wrap)
                    counter.add_event(fault.start_ms, counter.wrap - margin)

    def clear_faults(self, meter_id: str) -> None:
        """Remove the meter's window faults (counter events stay: they are history)."""
        sim = self._sim(meter_id)
        with self._lock:
            sim.faults.clear()


# --------------------------------------------------------------------------- running everything


@dataclass(eq=False)
class SimulatorHandle:
    """What :func:`run_simulator` started: the model, the Modbus servers and the MQTT meters.

    Attributes:
        model: the shared :class:`PlantModel` (inject faults here).
        modbus: the Modbus servers.
        mqtt_meters: one publisher per MQTT JSON meter (empty without ``publish``).
    """

    model: PlantModel
    modbus: ModbusPlantServer
    mqtt_meters: list[MqttJsonMeterSimulator]
    endpoints: dict[str, tuple[str, int]]

    @property
    def ports(self) -> dict[str, int]:
        """Bound TCP port per Modbus bus id."""
        return {bus_id: port for bus_id, (_, port) in self.endpoints.items()}

    async def stop(self) -> None:
        """Stop the MQTT meters and the Modbus servers."""
        await asyncio.gather(*(m.stop() for m in self.mqtt_meters))
        await self.modbus.stop()


async def run_simulator(
    plant: PlantConfig,
    clock: Clock,
    *,
    bind_host: str = "127.0.0.1",
    port_overrides: Mapping[str, int] | None = None,
    publish: PublishFn | Mapping[str, PublishFn] | None = None,
    seed: int = 0,
    overrides: Mapping[str, MeterOverride] | None = None,
    serial_devices: Mapping[str, str] | None = None,
    mqtt_interval_secs: float = 10.0,
) -> SimulatorHandle:
    """Start every simulated meter of ``plant``: used by ``energymon simulate`` and the demo.

    Args:
        plant: the plant file.
        clock: event time (a :class:`~energymon.clock.ScaledClock` runs the plant faster than real time).
        bind_host: address the Modbus TCP servers listen on.
        port_overrides: per Modbus bus id, the port to listen on instead of the configured one (0: any free).
        publish: how MQTT JSON meters publish: one coroutine function ``publish(topic, payload)`` for all, or
            one per MQTT bus id. Without it, MQTT meters are not started.
        seed: reproducibility seed of the model.
        overrides: per meter, a :class:`MeterOverride`.
        serial_devices: per ``modbus_rtu`` bus id, the serial device the simulator answers on (the far end of
            the gateway's line, e.g. one side of a socat pty pair); other RTU buses are not served.
        mqtt_interval_secs: publishing interval of MQTT meters, in event-time seconds.

    Returns:
        The running simulator; ``await handle.stop()`` ends it.
    """
    model = PlantModel.from_config(plant, clock, seed, overrides=overrides)
    ports: dict[str, int] = {
        b.id: b.port for b in plant.buses if isinstance(b, ModbusTcpBus | ModbusRtuTcpBus)
    }
    ports.update(port_overrides or {})
    server = ModbusPlantServer(model, plant, host=bind_host, port=ports, serial_devices=serial_devices)
    endpoints = await server.start()
    meters: list[MqttJsonMeterSimulator] = []
    try:
        if publish is not None:
            for meter in plant.meters:
                if not isinstance(meter.source, MqttJsonSource):
                    continue
                fn = publish if callable(publish) else publish.get(meter.source.bus)
                if fn is None:
                    log.info("no publisher for MQTT bus %s: %s not simulated", meter.source.bus, meter.id)
                    continue
                sim = MqttJsonMeterSimulator(model, meter, fn, mqtt_interval_secs)
                await sim.start()
                meters.append(sim)
        served = ", ".join(f"{b}={h}:{p}" for b, (h, p) in endpoints.items()) or "none"
        log.info("simulating %d meters: Modbus %s; %d MQTT meter(s)", len(plant.meters), served, len(meters))
    except BaseException:
        await asyncio.gather(*(m.stop() for m in meters))
        await server.stop()
        raise
    return SimulatorHandle(model, server, meters, endpoints)

