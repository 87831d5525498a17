"""The meter library and the collectors README.

* Every library map loads, names its source, has no overlapping registers, counts in cumulative units and
  gives each quantity a unit that fits its name; each validates inside a plant file and matches the worked
  examples and rules of the manual it cites.
* Every map is read end to end: a plant with one meter per map on one Modbus TCP bus is served by the plant
  simulator, polled twice by the Modbus collector some simulated minutes apart, and every quantity decodes to
  a good value equal to what the simulated meter shows; counters grow.
* Every ``yaml`` snippet of ``collectors/README.md`` marked ``# plant-snippet`` is a valid part of a plant
  file, and the README's table lists every library map.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from energymon import units
from energymon.clock import ScaledClock
from energymon.collectors.codec import decode
from energymon.collectors.library import library_map, library_names
from energymon.collectors.modbus import ModbusCollector
from energymon.collectors.planner import plan
from energymon.config import (
    DataType,
    ModbusSource,
    ModbusTcpBus,
    PlantConfig,
    Register,
    RegisterFunction,
    RegisterMap,
    parse_plant,
)
from energymon.errors import ConfigError
from energymon.schema import Point, Quality
from energymon.simulators.plant import MeterOverride, PlantModel, run_simulator

T = TypeVar("T")

USCC = "91530102MA6K7LQ8RH"
BUS = "library_tcp"
README = Path(__file__).resolve().parent.parent / "collectors" / "README.md"

#: what a cumulative quantity may count
COUNTER_DIMENSIONS = {"energy", "reactive_energy", "volume", "mass", "heat"}
#: quantity-name prefix -> the dimension its unit must have (longest prefix wins)
PREFIX_DIMENSION = {
    "energy_active": "energy",
    "energy_reactive": "reactive_energy",
    "power_active": "power",
    "power_reactive": "reactive_power",
    "power_apparent": "apparent_power",
    "power_factor": "power_factor",
    "voltage": "voltage",
    "current": "current",
    "frequency": "frequency",
    "volume_total": "volume",
    "volume_flow": "volume_rate",
    "mass_total": "mass",
    "mass_flow": "mass_rate",
    "feed_rate": "mass_rate",
    "heat_total": "heat",
    "heat_rate": "heat_rate",
    "temperature": "temperature",
    "pressure": "pressure",
}
#: realistic loads for the small meters (a single-phase meter does not carry the default 500 kW)
OVERRIDES = {
    "eastron_sdm120": MeterOverride(base=4.0, voltage_v=400.0),
    "acrel_ddsy1352": MeterOverride(base=4.0, voltage_v=400.0),
    "abb_b23": MeterOverride(base=60.0, voltage_v=400.0),
}
SPEED = 120.0  # simulated seconds per real second: 5 simulated minutes take 2.5 s
GAP_SIM_SECS = 300.0  # simulated time between the two polls


def run(main: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)

    return asyncio.run(bounded())


def slots(regmap: RegisterMap) -> list[tuple[Register, set[tuple[RegisterFunction, int, int | None]]]]:
    """Each register with the protocol slots (table, 0-based address, bit) it occupies."""
    shift = 1 if regmap.addressing == "one_based" else 0
    out = []
    for reg in regmap.registers:
        bit = reg.bit if reg.type is DataType.BIT else None
        out.append((reg, {(reg.function, reg.address - shift + k, bit) for k in range(reg.width)}))
    return out


def expected_dimension(quantity: str) -> str | None:
    best = max((p for p in PREFIX_DIMENSION if quantity.startswith(p)), key=len, default=None)
    return PREFIX_DIMENSION[best] if best is not None else None


def main_counter(regmap: RegisterMap) -> Register:
    """The counter a plant would account with: the first one that is not an export counter."""
    return next(r for r in regmap.registers if r.kind == "counter" and "export" not in r.quantity)


def minimal_plant(body: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {"version": 1, "enterprise": {"uscc": USCC, "name": "测试厂", "industry_code": "C3011"}, **body},
        allow_unicode=True,
        sort_keys=False,
    )


def library_plant(names: list[str]) -> PlantConfig:
    """One meter per library map, unit ids 1.., all on one Modbus TCP bus."""
    meters = []
    for unit_id, name in enumerate(names, start=1):
        counter = main_counter(library_map(name))
        meter: dict[str, Any] = {
            "id": name,
            "counter": counter.quantity,
            "source": {"type": "modbus", "bus": BUS, "unit_id": unit_id, "model": name},
        }
        if units.dimension(counter.unit) == "energy":
            meter["carrier"] = "electricity"
        meters.append(meter)
    body = {
        "buses": [{"type": "modbus_tcp", "id": BUS, "host": "127.0.0.1", "port": 1502, "timeout_ms": 1000,
                   "retries": 0}],
        "meters": meters,
    }
    return parse_plant(minimal_plant(body), "library-plant")


# --------------------------------------------------------------------------------------------- the maps


def test_library_has_at_least_eight_maps() -> None:
    names = library_names()
    assert len(names) >= 8, names
    assert names == sorted(names)
    assert all(re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)+", n) for n in names), "name files manufacturer_model"


@pytest.mark.parametrize("name", library_names())
def test_map_loads_and_names_its_source(name: str) -> None:
    regmap = library_map(name)
    assert regmap.name and regmap.manufacturer
    assert len(regmap.source) > 40, f"{name}: source must cite the manufacturer document"
    assert len({r.quantity for r in regmap.registers}) == len(regmap.registers), "duplicate quantity"
    assert any(r.kind == "counter" for r in regmap.registers), "a library map meters something cumulative"
    if regmap.addressing == "one_based":
        assert min(r.address for r in regmap.registers) >= 1


@pytest.mark.parametrize("name", library_names())
def test_registers_do_not_overlap(name: str) -> None:
    seen: dict[tuple[RegisterFunction, int, int | None], str] = {}
    for reg, occupied in slots(library_map(name)):
        for slot in occupied:
            assert slot not in seen, f"{name}: {reg.quantity} overlaps {seen[slot]} at {slot}"
            seen[slot] = reg.quantity


@pytest.mark.parametrize("name", library_names())
def test_counters_count_cumulative_units(name: str) -> None:
    for reg in library_map(name).registers:
        if reg.kind == "counter":
            assert units.dimension(reg.unit) in COUNTER_DIMENSIONS, f"{reg.quantity}: {reg.unit}"
            assert reg.scale > 0, f"{reg.quantity}: a counter must not count backwards"
        else:
            assert units.dimension(reg.unit) not in COUNTER_DIMENSIONS, f"{reg.quantity} looks cumulative"


@pytest.mark.parametrize("name", library_names())
def test_quantity_names_fit_their_units(name: str) -> None:
    for reg in library_map(name).registers:
        dim = expected_dimension(reg.quantity)
        assert dim is not None, f"{name}: {reg.quantity} is not a quantity name the library uses"
        assert units.dimension(reg.unit) == dim, f"{name}: {reg.quantity} in {reg.unit}"


@pytest.mark.parametrize("name", library_names())
def test_map_validates_in_a_plant_file(name: str) -> None:
    plant = library_plant([name])
    meter = plant.meters[0]
    assert isinstance(meter.source, ModbusSource)
    assert plant.register_map(meter.source) is library_map(name)


def test_overlap_in_a_plant_copy_is_caught() -> None:
    """A copy of a library map edited into overlapping registers is rejected when the plant file loads."""
    regmap = library_map("chint_dtsu666").model_dump(mode="json")
    regmap["registers"][1]["address"] = regmap["registers"][0]["address"] + 1
    body = {
        "register_maps": {"dtsu_copy": regmap},
        "buses": [{"type": "modbus_tcp", "id": BUS, "host": "127.0.0.1"}],
        "meters": [{"id": "m1", "source": {"type": "modbus", "bus": BUS, "model": "dtsu_copy"}}],
    }
    with pytest.raises(ConfigError, match="overlaps"):
        parse_plant(minimal_plant(body))


#: (map, quantity, function code, protocol address in the frame, registers as they arrive, engineering value):
#: each row restates an example or rule of the manual the map cites, so a transcription slip fails here.
MANUAL_EXAMPLES = [
    # DTSU666 Table 11: Ua at 2006H, FC 03, IEEE 754 ABCD, factor x0.1 V: 2300.0f -> 230.0 V
    ("chint_dtsu666", "voltage_l1", 3, 0x2006, [0x450F, 0xC000], 230.0),
    ("chint_dtsu666", "energy_active_import", 3, 0x101E, [0x447A, 0x0000], 1000.0),
    # SDM120: 30001 = input register 0x0000, float volts
    ("eastron_sdm120", "voltage_l1", 4, 0x0000, [0x4366, 0x0000], 230.0),
    # ABB B23: 5000h active import, unsigned 64-bit, 0.01 kWh; 5B14h total power, signed 32-bit, 0.01 W
    ("abb_b23", "energy_active_import", 3, 0x5000, [0, 0, 0x0001, 0x86A0], 1000.0),
    ("abb_b23", "power_active", 3, 0x5B14, [0xFFFF, 0xD8F0], -0.1),
    # iEM3000: register 3028 is read at frame address 3027 (0x0BD3); 3204 Int64 Wh
    ("schneider_iem3255", "voltage_l1", 3, 0x0BD3, [0x4366, 0x0000], 230.0),
    ("schneider_iem3255", "energy_active_import", 3, 3203, [0, 0, 0x000F, 0x4240], 1000.0),
    # UMG 96RM manual: L1-N voltage at 19000 = 4A38h, FC 03
    ("janitza_umg96rm", "voltage_l1", 3, 0x4A38, [0x4366, 0x0000], 230.0),
    ("janitza_umg96rm", "energy_active_import", 3, 19068, [0x4974, 0x2400], 1000.0),
    # DDSY1352: 0000H UINT32 x0.01 kWh, 000BH UINT16 x0.1 V, 000DH INT16 x0.001 kW
    ("acrel_ddsy1352", "energy_active_total", 3, 0x0000, [0x0001, 0x86A0], 1000.0),
    ("acrel_ddsy1352", "voltage_l1", 3, 0x000B, [2200], 220.0),
    ("acrel_ddsy1352", "power_active", 3, 0x000D, [0xFFFF], -0.001),
    # BW500: R41,010 is frame address 1009; "a value of 7345 represents 7.345", MSW first
    ("siemens_milltronics_bw500", "feed_rate", 3, 1009, [0x0000, 7345], 7.345),
    ("siemens_milltronics_bw500", "mass_total", 3, 1015, [0x0001, 0x0000], 65.536),
    # TVA: 40001 is address 0; "Total = (Total high x 65536) + Total low", low word at 40001, kg -> t
    ("spirax_sarco_tva", "mass_total", 3, 0, [0x86A0, 0x0001], 100.0),
    ("spirax_sarco_tva", "pressure", 3, 3, [1000], 1.0),  # 10.00 bar g = 1.0 MPa g
    ("spirax_sarco_tva", "heat_total", 3, 7, [0x86A0, 0x0001], 360.0),  # 100,000 kWh = 360 GJ
    # SITRANS F appendix H: 40 C3 52 93 = 6.10383 (per second); volume flow at address 3002, m3/s -> m3/h
    ("siemens_sitrans_mag6000", "volume_flow", 3, 3002, [0x40C3, 0x5293], 6.10383 * 3600),
    ("siemens_sitrans_mag6000", "volume_total", 3, 3014, [0x4059, 0, 0, 0], 100.0),
]


@pytest.mark.parametrize(("name", "quantity", "fc", "address", "words", "value"), MANUAL_EXAMPLES,
                         ids=[f"{row[0]}-{row[1]}" for row in MANUAL_EXAMPLES])
def test_map_matches_the_manual(
    name: str, quantity: str, fc: int, address: int, words: list[int], value: float
) -> None:
    regmap = library_map(name)
    located = {
        reg.quantity: (req.function_code, req.start + offset, reg)
        for req in plan(regmap.registers, regmap.addressing)
        for reg, offset in req.values
    }
    got_fc, got_address, reg = located[quantity]
    assert (got_fc, got_address) == (fc, address)
    assert decode(reg, words, device=name) == pytest.approx(value, rel=1e-6)


def test_unknown_model_lists_the_library() -> None:
    with pytest.raises(KeyError, match="chint_dtsu666"):
        library_map("no_such_meter")


# --------------------------------------------------------------------------------------------- end to end


def by_meter(points: list[Point]) -> dict[str, dict[str, Point]]:
    out: dict[str, dict[str, Point]] = {}
    for p in points:
        out.setdefault(p.meter, {})[p.quantity] = p
    return out


def test_every_map_is_read_from_a_simulated_meter() -> None:
    names = library_names()
    plant = library_plant(names)
    clock = ScaledClock(datetime(2025, 3, 3, 2, 0, tzinfo=UTC), SPEED)  # 10:00 in Asia/Shanghai
    polls: list[dict[str, dict[str, Point]]] = []
    models: list[PlantModel] = []

    async def main() -> None:
        sim = await run_simulator(plant, clock, port_overrides={BUS: 0}, overrides=OVERRIDES, seed=11)
        models.append(sim.model)
        try:
            configured = plant.bus(BUS)
            assert isinstance(configured, ModbusTcpBus)
            bus = configured.model_copy(update={"port": sim.ports[BUS]})
            pairs = [
                (m, plant.register_map(m.source)) for m in plant.meters if isinstance(m.source, ModbusSource)
            ]
            collector = ModbusCollector(bus, pairs, clock=clock)
            await collector.start()
            try:
                polls.append(by_meter(await collector.poll("default", clock.now_ms())))
                t0 = clock.now_ms()
                while clock.now_ms() - t0 < GAP_SIM_SECS * 1000:
                    await asyncio.sleep(0.05)
                polls.append(by_meter(await collector.poll("default", clock.now_ms())))
            finally:
                await collector.stop()
        finally:
            await sim.stop()

    run(main)
    model = models[0]
    first, second = polls
    assert set(first) == set(second) == set(names)
    for name in names:
        regmap = library_map(name)
        for reg in regmap.registers:
            for points in (first, second):
                p = points[name][reg.quantity]
                assert p.quality is Quality.GOOD, p
                assert p.value is not None and math.isfinite(p.value), p
                assert p.unit == reg.unit
                # the value the simulated meter showed at that moment, as the map's type can carry it
                shown = model.value(name, reg.quantity, p.ts_ms)
                step = abs(reg.scale) if reg.type not in (DataType.FLOAT32, DataType.FLOAT64) else 0.0
                assert p.value == pytest.approx(shown, rel=0.02, abs=2 * step + 1e-9), (name, reg.quantity)
            if reg.kind == "counter":
                before, after = first[name][reg.quantity].value, second[name][reg.quantity].value
                assert before is not None and after is not None
                assert before >= 0
                if "export" in reg.quantity:  # the simulated plant does not export: the counter stands
                    assert after >= before, (name, reg.quantity)
                else:
                    assert after > before, (name, reg.quantity, before, after)
        # the main counter grew by what the simulated meter's rate gives over the time between the reads
        total = main_counter(regmap)
        p0, p1 = first[name][total.quantity], second[name][total.quantity]
        assert p0.value is not None and p1.value is not None
        elapsed_h = (p1.ts_ms - p0.ts_ms) / 3_600_000
        rate = model.rate(name, p0.ts_ms)  # primary flow in its base unit (kW, t/h, m3/h)
        base_unit = {"energy": "kWh", "mass": "t", "volume": "m3"}[units.dimension(total.unit)]
        counted = units.convert(p1.value - p0.value, total.unit, base_unit)
        assert counted == pytest.approx(rate * elapsed_h, rel=0.1), (name, counted, rate, elapsed_h)


# --------------------------------------------------------------------------------------------- the README


def readme_snippets() -> list[str]:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    return [b for b in blocks if b.lstrip().startswith("# plant-snippet")]


def test_readme_has_a_snippet_per_collector() -> None:
    text = "\n".join(readme_snippets())
    for bus_type in ("modbus_tcp", "modbus_rtu_tcp", "modbus_rtu", "mqtt", "dlt645_serial"):
        assert f"type: {bus_type}" in text, bus_type
    assert "register_maps:" in text and "model: chint_dtsu666" in text


def snippet_id(snippet: str) -> str:
    return snippet.lstrip().splitlines()[0].removeprefix("# plant-snippet").strip()


@pytest.mark.parametrize("snippet", readme_snippets(), ids=snippet_id)
def test_readme_snippet_is_a_valid_plant_part(snippet: str) -> None:
    body = yaml.safe_load(snippet)
    assert isinstance(body, dict) and body, "a snippet is a mapping of plant-file sections"
    plant = parse_plant(minimal_plant(body), "README snippet")
    assert plant.meters or plant.register_maps


def test_readme_lists_every_library_map() -> None:
    text = README.read_text(encoding="utf-8")
    for name in library_names():
        assert f"`{name}`" in text, f"README table misses {name}"
    assert "dlt645.md" in text
