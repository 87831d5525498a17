"""Simulators: profiles, exact counters, the plant model, Modbus servers (TCP, RTU, serial), MQTT meters."""

from __future__ import annotations

import asyncio
import doctest
import itertools
import json
import math
import shutil
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from datetime import time as dtime
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerType

from energymon.clock import ManualClock, ScaledClock
from energymon.collectors.codec import decode
from energymon.config import MqttJsonSource, PlantConfig, Register, load_plant, parse_plant
from energymon.schema import datetime_to_ms
from energymon.simulators import modbus_server, mqtt_meter, plant, profiles
from energymon.simulators.modbus_server import ModbusPlantServer
from energymon.simulators.mqtt_meter import MqttJsonMeterSimulator
from energymon.simulators.plant import MeterOverride, PlantModel, run_simulator
from energymon.simulators.profiles import (
    CounterReset,
    CounterState,
    DailyStop,
    DroppedConnection,
    ExceptionReply,
    NoAnswer,
    Noise,
    Replacement,
    Rollover,
    Schedule,
    Spike,
    Stuck,
)

HOUR_MS = 3_600_000
SHANGHAI = ZoneInfo("Asia/Shanghai")
USCC = "91530102MA6K7LQ8RH"


def local_ms(day: int, hour: int, minute: int = 0) -> int:
    """Event time of a plant-local (Asia/Shanghai) wall-clock time in January 2025."""
    return datetime_to_ms(datetime(2025, 1, day, hour, minute, tzinfo=SHANGHAI))


@pytest.fixture(scope="module")
def demo() -> PlantConfig:
    return load_plant(str(resources.files("energymon.examples") / "cement_plant.yaml"))


def model_at(plant_cfg: PlantConfig, ts_ms: int, seed: int = 0, **kw: Any) -> tuple[PlantModel, ManualClock]:
    clock = ManualClock(datetime.fromtimestamp(ts_ms / 1000, UTC))
    return PlantModel.from_config(plant_cfg, clock, seed, **kw), clock


def integrate(
    model: PlantModel, meter: str, quantity: str, start: int, end: int, step_ms: int = 5000
) -> float:
    """Trapezoid integral of a rate (per hour) sampled every ``step_ms``."""
    total = 0.0
    prev = model.value(meter, quantity, start)
    for ts in range(start + step_ms, end + 1, step_ms):
        cur = model.value(meter, quantity, ts)
        total += (prev + cur) / 2 * step_ms / HOUR_MS
        prev = cur
    return total


# --------------------------------------------------------------------------- docstring examples


@pytest.mark.parametrize("module", [profiles, plant, mqtt_meter, modbus_server], ids=lambda m: m.__name__)
def test_docstring_examples_run(module: Any) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


# --------------------------------------------------------------------------- profiles and counters


@pytest.mark.parametrize(
    ("meter", "power", "counter", "start"),
    [
        ("incoming", "power_active", "energy_active_import", local_ms(6, 2)),
        ("cement_mill", "power_active", "energy_active_import", local_ms(6, 7, 30)),  # shuts down at 08:00
        ("cement_mill", "power_active", "energy_active_import", local_ms(6, 10, 45)),  # starts at 11:00
        ("coal_feeder", "feed_rate", "mass_total", local_ms(6, 14)),
        ("gas_main", "volume_flow", "volume_total", local_ms(6, 14)),
    ],
)
def test_counter_matches_integrated_rate(
    demo: PlantConfig, meter: str, power: str, counter: str, start: int
) -> None:
    model, _ = model_at(demo, start - HOUR_MS)
    energy = integrate(model, meter, power, start, start + HOUR_MS)
    delta = model.value(meter, counter, start + HOUR_MS) - model.value(meter, counter, start)
    assert energy > 0
    assert delta == pytest.approx(energy, rel=1e-3)


def test_counter_does_not_depend_on_sampling(demo: PlantConfig) -> None:
    start = local_ms(6, 7)
    end = start + 3 * HOUR_MS
    dense, _ = model_at(demo, start, seed=3)
    sparse, _ = model_at(demo, start, seed=3)
    for ts in range(start, end, 7_000):
        dense.value("cement_mill", "energy_active_import", ts)
    backwards = [
        sparse.value("cement_mill", "energy_active_import", ts) for ts in range(end, start, -HOUR_MS)
    ]
    assert backwards[0] == pytest.approx(dense.value("cement_mill", "energy_active_import", end), rel=1e-12)
    assert sparse.value("cement_mill", "energy_active_import", end) == dense.value(
        "cement_mill", "energy_active_import", end
    )


def test_counters_are_monotonic(demo: PlantConfig) -> None:
    start = local_ms(6, 0)
    model, _ = model_at(demo, start)
    counters = [
        ("incoming", "energy_active_import"),
        ("cement_mill", "energy_active_import"),
        ("coal_feeder", "mass_total"),
        ("clinker_scale", "mass_total"),
        ("gas_main", "volume_total"),
    ]
    for meter, quantity in counters:
        values = [model.value(meter, quantity, ts) for ts in range(start, start + 24 * HOUR_MS, 37_000)]
        assert all(b >= a for a, b in itertools.pairwise(values)), meter
        assert values[-1] > values[0]


def test_counter_state_events_and_wrap() -> None:
    counter = CounterState(lambda ts: 36.0, start=0.0, origin_ms=0, wrap=100.0)  # 0.01 per second
    assert counter.value(1_000_000) == pytest.approx(10.0)
    counter.add_event(2_000_000, 99.0)  # a jump to just below the rollover point
    assert counter.value(2_050_000) == pytest.approx(99.5)
    assert counter.value(2_200_000) == pytest.approx(1.0)  # wrapped: 99 + 2 - 100
    assert counter.total(2_200_000) == pytest.approx(101.0)
    counter.invalidate(0)
    assert counter.value(1_000_000) == pytest.approx(10.0)


def test_same_seed_reproduces_and_other_seed_differs(demo: PlantConfig) -> None:
    start = local_ms(6, 2)
    a, _ = model_at(demo, start, seed=11)
    b, _ = model_at(demo, start, seed=11)
    c, _ = model_at(demo, start, seed=12)
    probes = [(m, q, start + k * 61_000) for m in a.meter_ids for q in a.quantities(m) for k in range(5)]
    assert [a.value(*p) for p in probes] == [b.value(*p) for p in probes]
    assert [a.value(*p) for p in probes] != [c.value(*p) for p in probes]


def test_noise_is_bounded_and_continuous() -> None:
    noise = Noise(amplitude=0.03, seed=5)
    values = [noise.value(1_736_000_000_000 + k * 1000) for k in range(20_000)]
    assert max(abs(v) for v in values) <= 0.03
    assert max(abs(b - a) for a, b in itertools.pairwise(values)) < 0.001  # no jumps second to second
    assert max(values) - min(values) > 0.02  # but it does move


def test_cement_mill_follows_peak_tariff_schedule(demo: PlantConfig) -> None:
    model, _ = model_at(demo, local_ms(6, 0))
    assert model.value("cement_mill", "power_active", local_ms(6, 9)) < 300  # stopped for the morning peak
    assert model.value("cement_mill", "power_active", local_ms(6, 19)) < 300  # and the evening peak
    assert 8_000 < model.value("cement_mill", "power_active", local_ms(6, 2)) < 10_000  # grinding at night
    assert 8_000 < model.value("cement_mill", "power_active", local_ms(6, 14)) < 10_000
    ramp = model.value("cement_mill", "power_active", local_ms(6, 11, 5))  # starting up after 11:00
    assert 300 < ramp < 8_000
    night = model.value("incoming", "power_active", local_ms(6, 2))
    peak = model.value("incoming", "power_active", local_ms(6, 9))
    assert 18_000 < night < 21_000 and 9_500 < peak < 12_000


def test_incoming_is_sum_of_submeters_plus_auxiliaries(demo: PlantConfig) -> None:
    model, _ = model_at(demo, local_ms(6, 0))
    subs = ("raw_mill", "kiln_drive", "coal_mill", "cement_mill")
    for hour in (2, 9, 15):
        ts = local_ms(6, hour)
        rest = model.value("incoming", "power_active", ts) - sum(
            model.value(m, "power_active", ts) for m in subs
        )
        assert 1_350 < rest < 1_650  # unmetered auxiliaries ~1.5 MW


def test_clinker_intensity_within_benchmark_band(demo: PlantConfig) -> None:
    """Hourly 单位产品综合能耗 of clinker from the counters: between 标杆 100 and 基准 117 kgce/t."""
    start = local_ms(6, 0)
    model, _ = model_at(demo, start)
    kgce_per_unit = {
        "raw_mill": 0.1229,
        "kiln_drive": 0.1229,
        "coal_mill": 0.1229,
        "coal_feeder": 714.3,
        "gas_main": 1.2143,
    }
    counter = {"coal_feeder": "mass_total", "gas_main": "volume_total"}
    values = []
    for h in range(48):
        a, b = start + h * HOUR_MS, start + (h + 1) * HOUR_MS
        kgce = sum(
            k
            * (
                model.value(m, counter.get(m, "energy_active_import"), b)
                - model.value(m, counter.get(m, "energy_active_import"), a)
            )
            for m, k in kgce_per_unit.items()
        )
        clinker = model.value("clinker_scale", "mass_total", b) - model.value(
            "clinker_scale", "mass_total", a
        )
        assert 190 < clinker < 225
        values.append(kgce / clinker)
    assert all(100 < v < 117 for v in values), (min(values), max(values))


def test_kiln_stop_takes_clinker_coal_and_kiln_power_down_together(demo: PlantConfig) -> None:
    model, _ = model_at(demo, local_ms(6, 0))
    stop = local_ms(6, 12)
    before = {
        m: model.rate(m, stop - HOUR_MS) for m in ("clinker_scale", "coal_feeder", "kiln_drive", "raw_mill")
    }
    model.stop_process("kiln", stop, 2 * 3600)
    during = stop + HOUR_MS
    assert model.value("clinker_scale", "feed_rate", during) == 0.0
    assert model.value("coal_feeder", "feed_rate", during) == 0.0
    assert model.value("kiln_drive", "power_active", during) < 0.2 * before["kiln_drive"]
    assert model.value("raw_mill", "power_active", during) == pytest.approx(before["raw_mill"], rel=0.1)
    assert model.value("gas_main", "volume_flow", during) < 0.2 * 300
    # counters stand still during the stop and stay consistent with the new rates
    c0 = model.value("clinker_scale", "mass_total", stop)
    assert model.value("clinker_scale", "mass_total", stop + 2 * HOUR_MS) == pytest.approx(c0, abs=1e-9)
    later = stop + 5 * HOUR_MS
    assert model.value("clinker_scale", "feed_rate", later) > 190  # running again after the start-up ramp
    delta = model.value("kiln_drive", "energy_active_import", later) - model.value(
        "kiln_drive", "energy_active_import", stop - HOUR_MS
    )
    assert delta == pytest.approx(
        integrate(model, "kiln_drive", "power_active", stop - HOUR_MS, later), rel=1e-3
    )


def test_overrides_shape_a_meter(demo: PlantConfig) -> None:
    stop = Schedule(daily_stops=(DailyStop(dtime(1), dtime(2)),))
    flat = MeterOverride(base=1000.0, noise=0.0, schedule=stop, counter_start=5.0)
    model, _ = model_at(demo, local_ms(6, 0), overrides={"raw_mill": flat})
    assert model.value("raw_mill", "power_active", local_ms(6, 0)) == pytest.approx(1000.0)
    assert model.value("raw_mill", "energy_active_import", local_ms(6, 0)) == pytest.approx(5.0)
    assert model.value("raw_mill", "power_active", local_ms(6, 1, 30)) == pytest.approx(30.0)  # idle 3 %
    with pytest.raises(KeyError):
        model_at(demo, local_ms(6, 0), overrides={"nope": flat})


def test_value_faults_stuck_spike_and_counter_events(demo: PlantConfig) -> None:
    t0 = local_ms(6, 2)
    model, _ = model_at(demo, t0)
    frozen = model.value("raw_mill", "power_active", t0)
    model.inject("raw_mill", Stuck(t0, 600, quantity="power_active"))
    assert model.value("raw_mill", "power_active", t0 + 300_000) == frozen
    assert model.value("raw_mill", "power_active", t0 + 700_000) != frozen

    model.inject("kiln_drive", Spike(t0 + 1000, quantity="power_active"))
    normal = model.value("kiln_drive", "power_active", t0)
    assert model.value("kiln_drive", "power_active", t0 + 2000) > 100 * normal  # the one absurd value
    assert model.value("kiln_drive", "power_active", t0 + 7000) < 2 * normal  # then normal again

    model.inject("coal_mill", CounterReset(t0 + 60_000))
    assert model.value("coal_mill", "energy_active_import", t0 + 60_000) == 0.0
    assert 0 < model.value("coal_mill", "energy_active_import", t0 + 120_000) < 30  # 1.2 MW for a minute
    model.inject("coal_mill", Replacement(t0 + 600_000, new_value=1234.0))
    assert model.value("coal_mill", "energy_active_import", t0 + 600_000) == 1234.0
    with pytest.raises(ValueError, match="no rollover point"):
        model.inject("gas_main", Rollover(t0))  # float totaliser without counter_max
    with pytest.raises(KeyError):
        model.inject("gas_main", Stuck(t0, quantity="nope"))
    with pytest.raises(ValueError):
        ExceptionReply(t0, code=99)


# --------------------------------------------------------------------------- Modbus TCP


def regmap(plant_cfg: PlantConfig, meter: str) -> dict[str, Register]:
    src = plant_cfg.meter(meter).source
    assert not isinstance(src, MqttJsonSource)
    return {r.quantity: r for r in plant_cfg.register_map(src).registers}


async def read_meter(
    client: AsyncModbusTcpClient | AsyncModbusSerialClient,
    plant_cfg: PlantConfig,
    meter: str,
    unit: int,
    count: int = 10,
) -> dict[str, float]:
    reply = await client.read_holding_registers(0, count=count, device_id=unit)
    assert not reply.isError(), reply
    return {
        q: decode(r, reply.registers[r.address : r.address + r.width], device=meter)
        for q, r in regmap(plant_cfg, meter).items()
    }


Runner = Callable[[Callable[[AsyncModbusTcpClient, ModbusPlantServer], Awaitable[None]]], None]


@pytest.fixture
def demo_server(demo: PlantConfig) -> Iterator[tuple[PlantModel, ManualClock, Runner]]:
    """A demo-plant model at 02:00 local and a runner serving it on a free port to a TCP client."""
    model, clock = model_at(demo, local_ms(6, 2))

    def run(body: Callable[[AsyncModbusTcpClient, ModbusPlantServer], Awaitable[None]]) -> None:
        async def main() -> None:
            server = ModbusPlantServer(model, demo)
            endpoints = await server.start()
            host, port = endpoints["plant_tcp"]
            assert host == "127.0.0.1" and port > 0
            client = AsyncModbusTcpClient(host, port=port, timeout=0.3, retries=0, reconnect_delay=0)
            try:
                assert await client.connect()
                await asyncio.wait_for(body(client, server), timeout=20)
            finally:
                client.close()
                await server.stop()

        asyncio.run(main())

    yield model, clock, run


def test_tcp_read_of_incoming_meter_decodes_to_plausible_values(
    demo: PlantConfig, demo_server: tuple[PlantModel, ManualClock, Runner]
) -> None:
    model, clock, run = demo_server

    async def body(client: AsyncModbusTcpClient, server: ModbusPlantServer) -> None:
        values = await read_meter(client, demo, "incoming", 1)
        assert 18_000 < values["power_active"] < 21_000
        assert 6_000 < values["voltage_l1"] < 6_130  # 10.5 kV system, phase to neutral
        assert values["current_l1"] == pytest.approx(
            values["power_active"] * 1000 / (math.sqrt(3) * 10_500 * 0.9), rel=0.03
        )
        assert 0.85 < values["power_factor"] < 0.95
        expected = model.value("incoming", "energy_active_import")
        assert values["energy_active_import"] == pytest.approx(expected, abs=0.051)  # uint32 × 0.1 kWh
        assert values["power_active"] == pytest.approx(model.value("incoming", "power_active"), rel=1e-6)
        clock.advance(3600)
        later = await read_meter(client, demo, "incoming", 1)
        assert 18_000 < later["energy_active_import"] - values["energy_active_import"] < 21_000
        feeder = await read_meter(client, demo, "coal_feeder", 10, count=4)
        assert 25 < feeder["feed_rate"] < 33 and feeder["mass_total"] > 0
        # a unit id nobody owns: a TCP gateway answers exception 11
        reply = await client.read_holding_registers(0, count=2, device_id=99)
        assert reply.isError() and reply.exception_code == 11
        # outside the map: exception 2; meters are read-only: exception 1
        reply = await client.read_holding_registers(40, count=2, device_id=1)
        assert reply.isError() and reply.exception_code == 2
        reply = await client.read_input_registers(0, count=2, device_id=1)
        assert reply.isError() and reply.exception_code == 2
        reply = await client.write_register(0, 5, device_id=1)
        assert reply.isError() and reply.exception_code == 1
        assert server.requests("plant_tcp") == 7

    run(body)


def test_tcp_exception_fault_returns_the_code(
    demo: PlantConfig, demo_server: tuple[PlantModel, ManualClock, Runner]
) -> None:
    model, clock, run = demo_server

    async def body(client: AsyncModbusTcpClient, _: ModbusPlantServer) -> None:
        model.inject("raw_mill", ExceptionReply(clock.now_ms(), 60, code=6))
        reply = await client.read_holding_registers(0, count=10, device_id=2)
        assert reply.isError() and reply.exception_code == 6
        assert (await read_meter(client, demo, "kiln_drive", 3))["power_active"] > 0  # the others answer
        clock.advance(61)
        assert (await read_meter(client, demo, "raw_mill", 2))["power_active"] > 0  # fault over

    run(body)


def test_tcp_no_answer_times_out_the_client(
    demo: PlantConfig, demo_server: tuple[PlantModel, ManualClock, Runner]
) -> None:
    model, clock, run = demo_server

    async def body(client: AsyncModbusTcpClient, _: ModbusPlantServer) -> None:
        model.inject("raw_mill", NoAnswer(clock.now_ms(), 30))
        started = time.monotonic()
        with pytest.raises(ModbusIOException):
            await client.read_holding_registers(0, count=10, device_id=2)
        assert time.monotonic() - started > 0.25  # the client's 0.3 s timeout, not an answer (load only adds)
        assert (await read_meter(client, demo, "kiln_drive", 3))["power_active"] > 0  # the bus still works
        clock.advance(31)
        assert (await read_meter(client, demo, "raw_mill", 2))["power_active"] > 0

    run(body)


def test_tcp_dropped_connection_closes_the_socket(
    demo: PlantConfig, demo_server: tuple[PlantModel, ManualClock, Runner]
) -> None:
    model, clock, run = demo_server

    async def body(client: AsyncModbusTcpClient, _: ModbusPlantServer) -> None:
        model.inject("coal_mill", DroppedConnection(clock.now_ms(), 10))
        with pytest.raises((ConnectionException, ModbusIOException)):
            await client.read_holding_registers(0, count=10, device_id=4)
        for _ in range(100):
            if not client.connected:
                break
            await asyncio.sleep(0.01)
        assert not client.connected  # noticed by the client, whatever the machine's speed (body is bounded at 20 s)
        clock.advance(11)
        assert await client.connect()
        assert (await read_meter(client, demo, "coal_mill", 4))["power_active"] > 0

    run(body)


def test_tcp_counter_reset_rollover_and_replacement_are_visible(
    demo: PlantConfig, demo_server: tuple[PlantModel, ManualClock, Runner]
) -> None:
    model, clock, run = demo_server
    wrap = 2**32 * 0.1  # uint32 × 0.1 kWh

    async def energy(client: AsyncModbusTcpClient, unit: int, meter: str) -> float:
        return (await read_meter(client, demo, meter, unit))["energy_active_import"]

    async def body(client: AsyncModbusTcpClient, _: ModbusPlantServer) -> None:
        before = await energy(client, 4, "coal_mill")
        assert before > 1000
        model.inject("coal_mill", CounterReset(clock.now_ms()))
        clock.advance(60)
        assert 0 < await energy(client, 4, "coal_mill") < 30  # counting again from 0

        model.inject("kiln_drive", Rollover(clock.now_ms(), wraps_after_secs=60))
        near = await energy(client, 3, "kiln_drive")
        assert wrap - 100 < near < wrap
        clock.advance(120)
        wrapped = await energy(client, 3, "kiln_drive")
        assert 0 < wrapped < 100  # rolled over: about one more minute of 3.6 MW past the wrap point

        model.inject("raw_mill", Replacement(clock.now_ms(), new_value=250.0))
        clock.advance(60)
        assert 250 < await energy(client, 2, "raw_mill") < 330  # new meter: 250 kWh + a minute of 4.2 MW

    run(body)


def test_tcp_stuck_and_spike_are_visible(
    demo: PlantConfig, demo_server: tuple[PlantModel, ManualClock, Runner]
) -> None:
    model, clock, run = demo_server

    async def body(client: AsyncModbusTcpClient, _: ModbusPlantServer) -> None:
        first = await read_meter(client, demo, "raw_mill", 2)
        model.inject("raw_mill", Stuck(clock.now_ms(), 600))
        clock.advance(300)
        assert await read_meter(client, demo, "raw_mill", 2) == first  # every register frozen
        model.inject("kiln_drive", Spike(clock.now_ms(), quantity="power_active", value=1e9))
        assert (await read_meter(client, demo, "kiln_drive", 3))["power_active"] == pytest.approx(1e9)
        assert (await read_meter(client, demo, "kiln_drive", 3))["power_active"] < 5000
        model.inject("coal_mill", Spike(clock.now_ms(), quantity="energy_active_import", factor=1e6))
        spiked = (await read_meter(client, demo, "coal_mill", 4))["energy_active_import"]
        assert spiked == pytest.approx((2**32 - 1) * 0.1)  # saturated at the register's maximum

    run(body)


def test_scaled_clock_advances_an_hour_of_energy_per_second(demo: PlantConfig) -> None:
    async def main() -> None:
        clock = ScaledClock(datetime(2025, 1, 5, 18, tzinfo=UTC), 3600.0)  # 02:00 local
        sim = await run_simulator(demo, clock, port_overrides={"plant_tcp": 0})
        client = AsyncModbusTcpClient("127.0.0.1", port=sim.ports["plant_tcp"], timeout=1, retries=0)
        try:
            assert await client.connect()
            t0, e0 = clock.now_ms(), (await read_meter(client, demo, "incoming", 1))["energy_active_import"]
            started = time.monotonic()
            while time.monotonic() - started < 1.0:
                await asyncio.sleep(0.05)
            t1, e1 = clock.now_ms(), (await read_meter(client, demo, "incoming", 1))["energy_active_import"]
        finally:
            client.close()
            await sim.stop()
        hours = (t1 - t0) / HOUR_MS
        assert 1.0 <= hours < 2.0
        assert 18_000 * hours < e1 - e0 < 21_000 * hours

    asyncio.run(main())


# --------------------------------------------------------------------------- RTU over TCP and serial

RTU_PLANT = f"""\
version: 1
enterprise: {{uscc: {USCC}, name: 测试厂, industry_code: C3011}}
processes: [{{id: boiler}}]
register_maps:
  mixed:
    addressing: one_based
    registers:
      - {{quantity: energy_active_import, address: 1, function: input, type: uint32, order: CDAB, scale: 0.01,
         unit: kWh, kind: counter}}
      - {{quantity: power_active, address: 3, function: input, type: float32, order: DCBA, unit: W}}
      - {{quantity: running, address: 10, function: holding, type: bit, bit: 3, unit: "1"}}
      - {{quantity: voltage_l12, address: 11, function: holding, type: uint16, unit: V}}
      - {{quantity: alarm_free, address: 21, function: coil, type: bit, unit: "1"}}
buses:
  - {{type: modbus_rtu_tcp, id: rtu_tcp, host: 127.0.0.1, port: 1502}}
  - {{type: modbus_rtu, id: rtu_line, device: /dev/ttyUSB0, baudrate: 19200}}
meters:
  - {{id: pump, carrier: electricity, level: 2, process: boiler, counter: energy_active_import,
     source: {{type: modbus, bus: rtu_tcp, unit_id: 7, model: mixed}}}}
  - {{id: fan, carrier: electricity, level: 2, process: boiler, counter: energy_active_import,
     source: {{type: modbus, bus: rtu_line, unit_id: 3, model: mixed}}}}
"""


async def read_mixed(
    client: AsyncModbusTcpClient | AsyncModbusSerialClient, cfg: PlantConfig, meter: str, unit: int
) -> dict[str, float]:
    regs = regmap(cfg, meter)
    inputs = await client.read_input_registers(0, count=4, device_id=unit)  # one-based 1..4 → wire 0..3
    holding = await client.read_holding_registers(9, count=2, device_id=unit)
    coils = await client.read_coils(20, count=1, device_id=unit)
    for reply in (inputs, holding, coils):
        assert not reply.isError(), reply
    return {
        "energy_active_import": decode(regs["energy_active_import"], inputs.registers[0:2], device=meter),
        "power_active": decode(regs["power_active"], inputs.registers[2:4], device=meter),
        "running": decode(regs["running"], holding.registers[0:1], device=meter),
        "voltage_l12": decode(regs["voltage_l12"], holding.registers[1:2], device=meter),
        "alarm_free": decode(regs["alarm_free"], coils.bits[0:1], device=meter),
    }


def test_rtu_over_tcp_serves_every_table_with_one_based_addresses() -> None:
    cfg = parse_plant(RTU_PLANT)
    model, clock = model_at(cfg, local_ms(6, 10))

    async def main() -> None:
        server = ModbusPlantServer(model, cfg, port={"rtu_tcp": 0})
        host, port = (await server.start())["rtu_tcp"]
        client = AsyncModbusTcpClient(host, port=port, framer=FramerType.RTU, timeout=0.3, retries=0)
        try:
            assert await client.connect()
            values = await read_mixed(client, cfg, "pump", 7)
            assert values["power_active"] == pytest.approx(model.value("pump", "power_active"), rel=1e-6)
            assert 400_000 < values["power_active"] < 600_000  # 500 kW default, in W
            assert values["energy_active_import"] == pytest.approx(
                model.value("pump", "energy_active_import"), abs=0.006
            )
            assert values["running"] == 1.0 and values["alarm_free"] == 1.0
            assert values["voltage_l12"] == pytest.approx(10_500, rel=0.01)
            with pytest.raises(ModbusIOException):  # RTU: a unit nobody owns stays silent
                await client.read_input_registers(0, count=2, device_id=8)
            model.stop_process("boiler", clock.now_ms(), 3600, ramp_down_secs=1)
            clock.advance(60)
            stopped = await read_mixed(client, cfg, "pump", 7)
            assert stopped["running"] == 0.0 and stopped["power_active"] < 0.1 * values["power_active"]
        finally:
            client.close()
            await server.stop()

    asyncio.run(main())


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("socat is not installed")
    a, b = tmp_path / "sim", tmp_path / "gw"
    proc = subprocess.Popen(
        [socat, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while not (a.exists() and b.exists()):
            assert proc.poll() is None and time.monotonic() < deadline, "socat did not create the pty pair"
            time.sleep(0.01)
        yield str(a), str(b)
    finally:
        proc.terminate()
        proc.wait(5)


def test_serial_rtu_over_a_pty_pair(pty_pair: tuple[str, str]) -> None:
    sim_end, gw_end = pty_pair
    cfg = parse_plant(RTU_PLANT)
    model, clock = model_at(cfg, local_ms(6, 10))

    async def main() -> None:
        server = ModbusPlantServer(model, cfg, port={"rtu_tcp": 0}, serial_devices={"rtu_line": sim_end})
        await server.start()
        assert server.serial_endpoints == {"rtu_line": sim_end}
        client = AsyncModbusSerialClient(gw_end, baudrate=19200, timeout=0.5, retries=0)
        try:
            assert await client.connect()
            values = await read_mixed(client, cfg, "fan", 3)
            assert values["power_active"] == pytest.approx(model.value("fan", "power_active"), rel=1e-6)
            model.inject("fan", ExceptionReply(clock.now_ms(), 10, code=2))
            reply = await client.read_input_registers(0, count=4, device_id=3)
            assert reply.isError() and reply.exception_code == 2
            model.clear_faults("fan")
            model.inject("fan", DroppedConnection(clock.now_ms(), 10))  # no connection on a line: silence
            with pytest.raises(ModbusIOException):
                await client.read_input_registers(0, count=4, device_id=3)
            model.clear_faults("fan")
            assert (await read_mixed(client, cfg, "fan", 3))["running"] == 1.0
        finally:
            client.close()
            await server.stop()

    asyncio.run(main())


# --------------------------------------------------------------------------- MQTT JSON meters


def get_path(body: dict[str, Any], path: str) -> Any:
    node: Any = body
    for part in path.split("."):
        node = node[part]
    return node


def test_mqtt_gas_meter_payload_matches_its_config(demo: PlantConfig) -> None:
    model, clock = model_at(demo, local_ms(6, 3))
    meter = demo.meter("gas_main")
    src = meter.source
    assert isinstance(src, MqttJsonSource)
    sent: list[tuple[str, bytes]] = []

    async def publish(topic: str, payload: bytes) -> None:
        sent.append((topic, payload))

    sim = MqttJsonMeterSimulator(model, meter, publish, interval_secs=10)
    assert asyncio.run(sim.publish_once())
    topic, payload = sent[-1]
    assert topic == src.topic
    body = json.loads(payload)
    assert src.timestamp_path is not None and src.timestamp_format == "epoch_ms"
    assert get_path(body, src.timestamp_path) == clock.now_ms()
    parsed = {f.quantity: get_path(body, f.path) * f.scale for f in src.fields}
    assert parsed == {q: model.value("gas_main", q) for q in parsed}
    assert 250 < parsed["volume_flow"] < 350 and parsed["volume_total"] > 0

    model.inject("gas_main", NoAnswer(clock.now_ms(), 60))
    assert not asyncio.run(sim.publish_once())
    assert len(sent) == 1
    clock.advance(61)
    model.inject("gas_main", Spike(clock.now_ms(), quantity="volume_flow", value=99_999.0))
    assert asyncio.run(sim.publish_once())
    assert json.loads(sent[-1][1])["flow_nm3_h"] == 99_999.0


def test_mqtt_nested_paths_scale_and_iso_timestamps() -> None:
    text = RTU_PLANT.replace(
        "meters:\n",
        "  - {type: mqtt, id: field, url: 'inproc://field'}\nmeters:\n"
        "  - {id: steam, carrier: steam, level: 2, process: boiler, counter: heat_total,"
        " source: {type: mqtt_json, bus: field, topic: site/steam, timestamp_path: meta.time,"
        " timestamp_format: iso8601, fields: ["
        "{path: data.heat.total, quantity: heat_total, unit: MJ, kind: counter, scale: 0.001},"
        "{path: data.mass.flow, quantity: mass_flow, unit: kg/h}]}}\n",
    )
    cfg = parse_plant(text, check_references=False)
    model, clock = model_at(cfg, local_ms(6, 10))
    sent: list[bytes] = []

    async def publish(topic: str, payload: bytes) -> None:
        sent.append(payload)

    sim = MqttJsonMeterSimulator(model, cfg.meter("steam"), publish)
    asyncio.run(sim.publish_once())
    body = json.loads(sent[0])
    assert datetime.fromisoformat(body["meta"]["time"]) == datetime.fromtimestamp(clock.now_ms() / 1000, UTC)
    assert body["meta"]["time"].endswith("+08:00")
    assert body["data"]["heat"]["total"] * 0.001 == pytest.approx(model.value("steam", "heat_total"))
    assert body["data"]["mass"]["flow"] == pytest.approx(model.value("steam", "mass_flow"))


def test_mqtt_meter_publishes_every_interval_of_event_time(demo: PlantConfig) -> None:
    async def main() -> list[dict[str, Any]]:
        clock = ScaledClock(datetime(2025, 1, 5, 18, tzinfo=UTC), 60.0)  # 10 simulated s = 167 ms
        model = PlantModel.from_config(demo, clock)
        bodies: list[dict[str, Any]] = []
        got = asyncio.Event()

        async def publish(topic: str, payload: bytes) -> None:
            bodies.append(json.loads(payload))
            if len(bodies) >= 6:
                got.set()

        sim = MqttJsonMeterSimulator(model, demo.meter("gas_main"), publish, interval_secs=10)
        await sim.start()
        try:
            await asyncio.wait_for(got.wait(), timeout=10)
        finally:
            await sim.stop()
        count = len(bodies)
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(bodies) == count  # nothing after stop
        return bodies

    bodies = asyncio.run(main())
    stamps = [b["ts"] for b in bodies]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # never early, never twice in an interval; a busy machine may only delay a publish (so no upper bound on one
    # gap, but most are one interval)
    assert all(g >= 9_000 for g in gaps), gaps
    assert statistics.median(gaps) <= 15_000, gaps
    totals = [b["totalizer_nm3"] for b in bodies]
    assert all(b > a for a, b in itertools.pairwise(totals))


def test_run_simulator_serves_modbus_and_publishes_mqtt(demo: PlantConfig) -> None:
    async def main() -> None:
        clock = ScaledClock(datetime(2025, 1, 5, 18, tzinfo=UTC), 60.0)
        seen: list[str] = []

        async def publish(topic: str, payload: bytes) -> None:
            seen.append(topic)

        sim = await run_simulator(
            demo, clock, port_overrides={"plant_tcp": 0}, publish={"field_mqtt": publish}
        )
        client = AsyncModbusTcpClient("127.0.0.1", port=sim.ports["plant_tcp"], timeout=1, retries=0)
        try:
            assert await client.connect()
            assert (await read_meter(client, demo, "clinker_scale", 11, count=4))["feed_rate"] > 150
            for _ in range(200):
                if seen:
                    break
                await asyncio.sleep(0.01)
            assert seen and seen[0] == "plant/kiln/gas_flowmeter"
            assert [m.meter.id for m in sim.mqtt_meters] == ["gas_main"]
        finally:
            client.close()
            await sim.stop()
        assert sim.modbus.endpoints == {}

    asyncio.run(main())
