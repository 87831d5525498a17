"""DL/T 645-2007: the frame codec against frames written out by hand from the standard, and the collector
against the simulated meters over TCP (a serial device server) and over a real pseudo-terminal pair (socat).
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from prometheus_client import CollectorRegistry
from services import free_port, require_binary

from energymon.clock import ManualClock
from energymon.collectors.dlt645 import (
    ITEM_FORMATS,
    Dlt645Collector,
    Dlt645Policy,
    Frame,
    FrameBuffer,
    FrameError,
    build_frame,
    build_read_request,
    decode_frame,
    decode_value,
    encode_value,
    parse_read_reply,
)
from energymon.config import Dlt645Item, Dlt645SerialBus, Dlt645Source, Dlt645TcpBus, Meter, parse_plant
from energymon.errors import DecodeError, DeviceExceptionError
from energymon.metrics import PipelineMetrics
from energymon.runtime import build_collectors
from energymon.schema import Point, Quality
from energymon.simulators.dlt645_meter import Dlt645MeterServer, MeterFault

LOGGER = "energymon.collectors.dlt645"
TIMEOUT_MS = 200
DOC = Path(__file__).resolve().parent.parent / "collectors" / "dlt645.md"
T = TypeVar("T")

A1, A2, A3 = "123456789012", "000000000002", "000000000003"

# quantity → (DI, unit, kind)
ITEMS: dict[str, tuple[str, str, str]] = {
    "energy_active_import": ("00010000", "kWh", "counter"),
    "energy_active_export": ("00020000", "kWh", "counter"),
    "energy_reactive_combined": ("00030000", "kvarh", "counter"),
    "voltage_l1": ("02010100", "V", "gauge"),
    "current_l1": ("02020100", "A", "gauge"),
    "power_active": ("02030000", "kW", "gauge"),
    "power_reactive": ("02040000", "kvar", "gauge"),
    "power_factor": ("02060000", "pf", "gauge"),
    "frequency": ("02800002", "Hz", "gauge"),
}
READINGS: dict[str, dict[str, float]] = {
    A1: {
        "energy_active_import": 12345.67, "energy_active_export": 1.5, "energy_reactive_combined": -42.17,
        "voltage_l1": 220.1, "current_l1": -1.234, "power_active": 12.3456, "power_reactive": -3.21,
        "power_factor": 0.967, "frequency": 49.98,
    },
    A2: {
        "energy_active_import": 654321.09, "energy_active_export": 0.0, "energy_reactive_combined": 7.0,
        "voltage_l1": 231.7, "current_l1": 5.125, "power_active": -0.5, "power_reactive": 0.0123,
        "power_factor": -0.5, "frequency": 50.02,
    },
}
READINGS[A3] = READINGS[A1]


def run(main: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
    """Run an async test body in a fresh event loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)

    return asyncio.run(bounded())


class Values:
    """The simulator's value callback: a table per address, KeyError for an item a meter lacks."""

    def __init__(self, readings: dict[str, dict[str, float]] = READINGS) -> None:
        self.by_di = {
            address: {ITEMS[q][0]: v for q, v in values.items()} for address, values in readings.items()
        }
        self.times: list[int] = []

    def __call__(self, address: str, di: str, ts_ms: int) -> float:
        self.times.append(ts_ms)
        return self.by_di[address][di]


def meter(meter_id: str, address: str, bus: str = "b1", *, scale: dict[str, float] | None = None,
          group: str = "default") -> Meter:
    items = [
        Dlt645Item(quantity=q, di=di, unit=unit, kind=kind, scale=(scale or {}).get(q, 1.0))  # type: ignore[arg-type]
        for q, (di, unit, kind) in ITEMS.items()
    ]
    source = Dlt645Source(type="dlt645", bus=bus, address=address, items=items, poll_group=group)
    return Meter(id=meter_id, source=source)


def tcp_bus(port: int, timeout_ms: int = TIMEOUT_MS, **kw: Any) -> Dlt645TcpBus:
    return Dlt645TcpBus(type="dlt645_tcp", id="b1", host="127.0.0.1", port=port, timeout_ms=timeout_ms, **kw)


def by_meter(points: list[Point]) -> dict[str, dict[str, Point]]:
    out: dict[str, dict[str, Point]] = {}
    for p in points:
        out.setdefault(p.meter, {})[p.quantity] = p
    return out


def assert_good(points: dict[str, Point], values: dict[str, float]) -> None:
    assert set(points) == set(values)
    for quantity, expected in values.items():
        assert points[quantity].quality is Quality.GOOD, points[quantity]
        assert points[quantity].value == expected, quantity  # BCD decodes exactly: no approx
        assert points[quantity].unit == ITEMS[quantity][1]


def assert_bad(points: dict[str, Point]) -> None:
    assert set(points) == set(ITEMS)
    for p in points.values():
        assert p.quality is Quality.BAD
        assert p.value is None


def log_lines(caplog: pytest.LogCaptureFixture, text: str, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level
            and text in r.getMessage()]


# --------------------------------------------------------------------------------------------- codec


def test_read_request_for_123456789012_energy_byte_by_byte() -> None:
    expected = bytes([
        0xFE, 0xFE, 0xFE, 0xFE,  # wake-up preamble
        0x68,
        0x12, 0x90, 0x78, 0x56, 0x34, 0x12,  # address 12 34 56 78 90 12 printed, sent low byte first
        0x68,
        0x11,  # read data
        0x04,  # L: the 4 DI bytes
        0x33, 0x33, 0x34, 0x33,  # DI0..DI3 = 00 00 01 00, each +33H
        0x68,  # CS: (68+12+90+78+56+34+12+68+11+04+33+33+34+33) mod 256 = 872 mod 256 = 104 = 68H
        0x16,
    ])
    assert build_read_request("123456789012", "00010000") == expected
    assert build_read_request("123456789012", "00010000", preamble=False) == expected[4:]


# energy 12345.67 kWh: BCD 01 23 45 67, low byte first 67 45 23 01, +33H → 9A 78 56 34;
# CS = (68+12+90+78+56+34+12+68 + 91+08 + 33+33+34+33 + 9A+78+56+34) mod 256 = 1416 mod 256 = 88H
ENERGY_REPLY = bytes.fromhex("68 12 90 78 56 34 12 68 91 08 33 33 34 33 9A 78 56 34 88 16")
# abnormal reply, error word 02H (no requested data) + 33H = 35H; CS = (646 + D1 + 01 + 35) mod 256 = 8DH
ABNORMAL_REPLY = bytes.fromhex("68 12 90 78 56 34 12 68 D1 01 35 8D 16")


def test_reply_built_by_hand_decodes_to_the_exact_value() -> None:
    frame = decode_frame(b"\xfe\xfe\xfe\xfe" + ENERGY_REPLY)
    assert frame == Frame(address="123456789012", control=0x91, data=bytes.fromhex("00 00 01 00 67 45 23 01"))
    assert frame.is_reply and not frame.abnormal and not frame.follow_up and frame.function == 0x11
    assert parse_read_reply(frame, address="123456789012", di="00010000", device="m1") == 12345.67
    # the codec builds the same bytes
    assert build_frame("123456789012", 0x91, bytes.fromhex("00 00 01 00 67 45 23 01"), preamble=False) == (
        ENERGY_REPLY
    )


def test_reply_with_follow_up_frames_is_a_normal_reply() -> None:
    raw = build_frame("123456789012", 0xB1, bytes.fromhex("00 00 01 00 67 45 23 01"))
    frame = decode_frame(raw)
    assert frame.follow_up
    assert parse_read_reply(frame, address="123456789012", di="00010000", device="m1") == 12345.67


@pytest.mark.parametrize(
    ("di", "raw", "value"),
    [
        ("02010100", "01 22", 220.1),  # A相电压 XXX.X
        ("02020100", "34 12 00", 1.234),  # A相电流 XXX.XXX
        ("02020100", "34 12 80", -1.234),  # sign bit in the top byte
        ("02030000", "56 34 92", -12.3456),  # 瞬时总有功功率 XX.XXXX, signed
        ("02060000", "67 89", -0.967),  # 总功率因数 X.XXX: 09 67 with the sign bit → 89 67
        ("02060000", "00 10", 1.0),
        ("02800002", "98 49", 49.98),  # 电网频率 XX.XX
        ("00030000", "17 42 00 80", -42.17),  # 组合无功1 may be negative
        ("00010000", "99 99 99 99", 999999.99),
        ("02800007", "05 80", -0.5),  # 表内温度
    ],
)
def test_bcd_values(di: str, raw: str, value: float) -> None:
    fmt = ITEM_FORMATS[di]
    assert decode_value(bytes.fromhex(raw), fmt) == value
    if value != 1.0:  # 1.000 is the only value above written with a leading zero digit
        assert encode_value(value, fmt) == bytes.fromhex(raw)


def test_every_item_encodes_and_decodes_back() -> None:
    for di, fmt in ITEM_FORMATS.items():
        for value in (0.0, fmt.max_value, 1 / 10**fmt.decimals, *((-fmt.max_value,) if fmt.signed else ())):
            assert decode_value(encode_value(value, fmt), fmt) == value, di
        with pytest.raises(ValueError):
            encode_value(fmt.max_value * 10, fmt)
        if not fmt.signed:
            with pytest.raises(ValueError, match="unsigned"):
                encode_value(-1.0, fmt)


def test_value_that_is_not_bcd_is_a_decode_error() -> None:
    with pytest.raises(ValueError, match="not BCD"):
        decode_value(bytes.fromhex("FF FF"), ITEM_FORMATS["02010100"])
    frame = Frame(address="123456789012", control=0x91, data=bytes.fromhex("00 01 01 02 EE EE"))
    with pytest.raises(DecodeError, match=r"m1: .*DI 02010100.*not BCD"):
        parse_read_reply(frame, address="123456789012", di="02010100", device="m1")


def test_checksum_failure() -> None:
    corrupt = ENERGY_REPLY[:-2] + b"\x89\x16"
    with pytest.raises(FrameError, match="checksum 89H, computed 88H"):
        decode_frame(corrupt)
    # in a stream, the corrupt frame is reported once and the next frame still comes out
    buf = FrameBuffer()
    buf.feed(corrupt + ENERGY_REPLY)
    with pytest.raises(FrameError):
        buf.next_frame()
    frame = buf.next_frame()
    assert frame is not None and frame.control == 0x91
    assert buf.next_frame() is None and len(buf) == 0


def test_wrong_address_wrong_di_and_wrong_length_are_refused() -> None:
    frame = decode_frame(ENERGY_REPLY)
    with pytest.raises(DecodeError, match="reply from address 123456789012, expected 123456789013"):
        parse_read_reply(frame, address="123456789013", di="00010000", device="m1")
    with pytest.raises(DecodeError, match="reply is for DI 00010000, expected 00020000"):
        parse_read_reply(frame, address="123456789012", di="00020000", device="m1")
    short = decode_frame(build_frame("123456789012", 0x91, bytes.fromhex("00 00 01 00 67 45 23")))
    with pytest.raises(DecodeError, match="3 value byte"):
        parse_read_reply(short, address="123456789012", di="00010000", device="m1")
    request = decode_frame(build_read_request("123456789012", "00010000"))
    with pytest.raises(DecodeError, match="not a read reply"):
        parse_read_reply(request, address="123456789012", di="00010000", device="m1")


def test_abnormal_reply_is_a_device_exception() -> None:
    frame = decode_frame(ABNORMAL_REPLY)
    assert frame.abnormal and frame.data == b"\x02"
    with pytest.raises(DeviceExceptionError, match="error 02H \\(no requested data\\)") as info:
        parse_read_reply(frame, address="123456789012", di="02800007", device="m1")
    assert info.value.code == 2 and info.value.device == "m1"


def test_garbage_before_the_preamble_is_skipped() -> None:
    # noise including a lone 68H, and a false start (68 .. 68 with no end mark) before the real frame
    noise = bytes.fromhex("00 13 68 AA FF 68 01 02 03 04 05 06 68 00 00 00 00")
    frame = decode_frame(noise + b"\xfe\xfe\xfe\xfe" + ENERGY_REPLY)
    assert parse_read_reply(frame, address="123456789012", di="00010000", device="m1") == 12345.67


def test_frame_split_across_reads() -> None:
    buf = FrameBuffer()
    raw = b"\xfe\xfe" + ENERGY_REPLY
    for byte in raw[:-1]:
        buf.feed(bytes([byte]))
        assert buf.next_frame() is None
    buf.feed(raw[-1:])
    frame = buf.next_frame()
    assert frame is not None
    assert parse_read_reply(frame, address="123456789012", di="00010000", device="m1") == 12345.67
    # two frames in one read come out one after the other
    buf.feed(ABNORMAL_REPLY + ENERGY_REPLY)
    first, second = buf.next_frame(), buf.next_frame()
    assert first is not None and first.abnormal
    assert second is not None and second.control == 0x91
    assert buf.next_frame() is None


# --------------------------------------------------------------------------------------------- simulator


def test_simulated_meter_answers_like_a_meter() -> None:
    shown = {"00010000": 1_000_012.346, "02030000": 100.0, "02020100": -900.0, "02010100": -5.0}

    def value(address: str, di: str, ts_ms: int) -> float:
        return shown[di]  # KeyError for the others: the meter lacks them

    sim = Dlt645MeterServer([A1], value)

    def ask(address: str, di: str) -> float:
        reply = sim.answer(decode_frame(build_read_request(address, di)))
        assert reply is not None and reply.startswith(b"\xfe\xfe\xfe\xfe")
        return parse_read_reply(decode_frame(reply), address=address, di=di, device="sim")

    assert ask(A1, "00010000") == 12.35  # the XXXXXX.XX register rolled over at 1,000,000 kWh
    assert ask(A1, "02030000") == 79.9999  # XX.XXXX saturates
    assert ask(A1, "02020100") == -799.999
    assert ask(A1, "02010100") == 0.0  # unsigned: a negative value shows as 0
    for di in ("02800002", "04000101"):  # an item the meter lacks; a DI outside the table
        with pytest.raises(DeviceExceptionError, match="no requested data"):
            ask(A1, di)
    assert sim.answer(decode_frame(build_read_request(A2, "00010000"))) is None  # not its address
    assert sim.answer(decode_frame(build_read_request("999999999999", "00010000"))) is None  # broadcast
    assert sim.answer(decode_frame(ENERGY_REPLY)) is None  # a reply is not a request
    other = sim.answer(decode_frame(build_frame(A1, 0x14, b"")))  # write data: refused
    assert other is not None and decode_frame(other) == Frame(address=A1, control=0xD4, data=b"\x01")
    assert sim.requests == [(A1, "00010000"), (A1, "02030000"), (A1, "02020100"), (A1, "02010100"),
                            (A1, "02800002"), (A1, "04000101")]
    sim.set_fault(A1, MeterFault("bad_checksum"))
    corrupt = sim.answer(decode_frame(build_read_request(A1, "00010000")))
    assert corrupt is not None
    with pytest.raises(FrameError, match="checksum"):
        decode_frame(corrupt)
    with pytest.raises(KeyError):
        sim.set_fault(A2, None)
    with pytest.raises(ValueError, match="broadcast"):
        Dlt645MeterServer(["999999999999"], value)


# --------------------------------------------------------------------------------------------- construction


def test_unknown_di_is_refused_at_construction_naming_meter_and_di() -> None:
    bad = Dlt645Source(type="dlt645", bus="b1", address=A1, items=[
        Dlt645Item(quantity="energy_active_import", di="00010000", unit="kWh"),
        Dlt645Item(quantity="battery", di="0280000a", unit="1"),
    ])
    with pytest.raises(ValueError, match=r"meter m9: source\.items\[1\]\.di: DI 0280000A \(battery\) is not"):
        Dlt645Collector(tcp_bus(1), [Meter(id="m9", source=bad)])


def test_unit_of_another_dimension_broadcast_and_duplicate_addresses_are_refused() -> None:
    wrong_unit = Dlt645Source(type="dlt645", bus="b1", address=A1, items=[
        Dlt645Item(quantity="voltage_l1", di="02010100", unit="A"),
    ])
    with pytest.raises(ValueError, match=r"m1: source\.items\[0\]\.unit: DI 02010100 \(A相电压\) is a volt"):
        Dlt645Collector(tcp_bus(1), [Meter(id="m1", source=wrong_unit)])
    with pytest.raises(ValueError, match=r"m1: source\.address: 999999999999 is the broadcast address"):
        Dlt645Collector(tcp_bus(1), [meter("m1", "999999999999")])
    with pytest.raises(ValueError, match="m2: address 123456789012 on bus b1 is already used by meter m1"):
        Dlt645Collector(tcp_bus(1), [meter("m1", A1), meter("m2", A1)])
    with pytest.raises(ValueError, match="m1: not a DL/T 645 meter of bus b1"):
        Dlt645Collector(tcp_bus(1), [meter("m1", A1, bus="other")])
    # scaled units of the same dimension are fine (MWh from a kWh register)
    mwh = Dlt645Source(type="dlt645", bus="b1", address=A1, items=[
        Dlt645Item(quantity="energy_active_import", di="00010000", unit="MWh", scale=0.001),
    ])
    assert Dlt645Collector(tcp_bus(1), [Meter(id="m1", source=mwh)]).groups == ["default"]


# --------------------------------------------------------------------------------------------- over TCP


def test_two_meters_over_tcp_decode_exactly_one_request_per_item() -> None:
    clock = ManualClock(datetime(2025, 3, 1, 8, 0, tzinfo=UTC))
    values = Values()

    async def main() -> None:
        sim = Dlt645MeterServer([A1, A2], values, clock=clock)
        _, port = await sim.start_tcp()
        ct = 40.0  # a 200/5 A current transformer on m2: energy and power read on the secondary side
        meters = [meter("m1", A1), meter("m2", A2, scale={"energy_active_import": ct, "power_active": ct})]
        collector = Dlt645Collector(tcp_bus(port), meters, clock=clock)
        await collector.start()
        try:
            points = by_meter(await collector.poll("default", clock.now_ms()))
            assert_good(points["m1"], READINGS[A1])
            m2 = points["m2"]
            assert m2["energy_active_import"].value == pytest.approx(654321.09 * ct)
            assert m2["power_active"].value == pytest.approx(-0.5 * ct)
            scaled = ("energy_active_import", "power_active")
            assert_good({q: p for q, p in m2.items() if q not in scaled},
                        {q: v for q, v in READINGS[A2].items() if q not in scaled})
            assert all(p.ts_ms == clock.now_ms() for p in points["m1"].values())
            assert sim.requests == [(A1, di) for di, _, _ in ITEMS.values()] + [
                (A2, di) for di, _, _ in ITEMS.values()
            ]
            clock.advance(15)
            again = await collector.poll("default", clock.now_ms())
            assert {p.ts_ms for p in again} == {clock.now_ms()}
            assert values.times[-1] == clock.now_ms()  # the meter is read at the clock's time
            assert await collector.poll("other_group", clock.now_ms()) == []
        finally:
            await collector.stop()
            await sim.stop()

    run(main)


def test_dead_meter_beside_healthy_ones_then_fast_polls(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    metrics = PipelineMetrics(CollectorRegistry())
    policy = Dlt645Policy(fail_threshold=2, probe_interval_secs=60)

    async def main() -> None:
        sim = Dlt645MeterServer([A1, A2, A3], Values())
        sim.set_fault(A2, MeterFault("no_answer"))
        _, port = await sim.start_tcp()
        meters = [meter("m1", A1), meter("m2", A2), meter("m3", A3)]
        timeout = 0.5
        collector = Dlt645Collector(tcp_bus(port, timeout_ms=500, retries=1), meters, metrics=metrics,
                                    policy=policy)
        try:
            for _ in range(2):
                started = time.monotonic()
                points = by_meter(await collector.poll("default", 0))
                # the dead meter costs one timeout per try of its first item, and no more (the tries are
                # counted below: a loaded machine lengthens a poll, it cannot shorten one)
                assert 2 * timeout <= time.monotonic() - started
                assert_good(points["m1"], READINGS[A1])
                assert_bad(points["m2"])
                assert_good(points["m3"], READINGS[A3])
            # 2 polls x (1 + 1 retry) of the first item only
            assert [r for r in sim.requests if r[0] == A2] == [(A2, "00010000")] * 4
            # m2 is offline and probed only every 60 s: no request, no delay for the others
            for _ in range(3):
                points = by_meter(await collector.poll("default", 0))
                assert_good(points["m1"], READINGS[A1])
                assert_bad(points["m2"])
                assert_good(points["m3"], READINGS[A3])
            assert len([r for r in sim.requests if r[0] == A2]) == 4
        finally:
            await collector.stop()
            await sim.stop()

    run(main)
    sample = metrics.registry.get_sample_value
    assert {m: sample("energymon_device_up", {"meter": m}) for m in ("m1", "m2", "m3")} == {
        "m1": 1.0, "m2": 0.0, "m3": 1.0
    }
    assert sample("energymon_errors_total", {"stage": "collector", "error_type": "DeviceTimeoutError"}) == 2
    assert sample("energymon_received_total", {"stage": "collector"}) == 5 * 2 * len(ITEMS)
    assert sample("energymon_poll_duration_seconds_count", {"group": "default"}) == 5
    drops = log_lines(caplog, "unavailable", logging.WARNING)
    assert drops == [
        f"meter m2 (address {A2}) on bus b1 unavailable: m2: no answer to read of DI 00010000 "
        f"(正向有功总电能) within 500 ms (2 attempt(s))"
    ]


def test_dead_meter_is_probed_after_its_probe_interval_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    policy = Dlt645Policy(fail_threshold=1, probe_interval_secs=0.1)

    async def main() -> None:
        sim = Dlt645MeterServer([A1], Values())
        sim.set_fault(A1, MeterFault("no_answer"))
        _, port = await sim.start_tcp()
        collector = Dlt645Collector(tcp_bus(port, retries=2), [meter("m1", A1)], policy=policy)
        try:
            assert_bad(by_meter(await collector.poll("default", 0))["m1"])
            assert len(sim.requests) == 3  # 1 + 2 retries
            assert_bad(by_meter(await collector.poll("default", 0))["m1"])  # before the probe interval ends: no request
            assert len(sim.requests) == 3
            deadline = time.monotonic() + 5
            while len(sim.requests) == 3:  # the probe interval ends: one probe, without retries, which fails
                assert time.monotonic() < deadline
                assert_bad(by_meter(await collector.poll("default", 0))["m1"])
                await asyncio.sleep(0.01)
            assert len(sim.requests) == 4
            sim.set_fault(A1, None)
            while True:  # the next probe succeeds
                assert time.monotonic() < deadline
                points = by_meter(await collector.poll("default", 0))["m1"]
                if points["power_active"].quality is Quality.GOOD:
                    break
                await asyncio.sleep(0.01)
            assert_good(points, READINGS[A1])
        finally:
            await collector.stop()
            await sim.stop()

    run(main)
    assert len(log_lines(caplog, f"meter m1 (address {A1}) on bus b1 unavailable", logging.WARNING)) == 1
    assert len(log_lines(caplog, f"meter m1 (address {A1}) on bus b1 recovered", logging.INFO)) == 1


def test_abnormal_reply_and_bad_checksum_fail_one_item_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    metrics = PipelineMetrics(CollectorRegistry())

    async def main() -> None:
        sim = Dlt645MeterServer([A1, A2], Values())
        sim.set_fault(A1, MeterFault("abnormal", error=0x04, di="02060000"))
        sim.set_fault(A2, MeterFault("bad_checksum", di="02800002"))
        _, port = await sim.start_tcp()
        collector = Dlt645Collector(tcp_bus(port, retries=1), [meter("m1", A1), meter("m2", A2)],
                                    metrics=metrics)
        try:
            for _ in range(2):
                points = by_meter(await collector.poll("default", 0))
                assert points["m1"]["power_factor"].quality is Quality.BAD
                assert points["m1"]["power_factor"].value is None
                assert_good({q: p for q, p in points["m1"].items() if q != "power_factor"},
                            {q: v for q, v in READINGS[A1].items() if q != "power_factor"})
                assert points["m2"]["frequency"].value is None
                assert_good({q: p for q, p in points["m2"].items() if q != "frequency"},
                            {q: v for q, v in READINGS[A2].items() if q != "frequency"})
            assert sim.requests.count((A1, "02060000")) == 2  # an abnormal reply is an answer: no retry
            assert sim.requests.count((A2, "02800002")) == 4  # a garbled reply is asked again
            sim.set_fault(A1, None)
            sim.set_fault(A2, None)
            points = by_meter(await collector.poll("default", 0))
            assert_good(points["m1"], READINGS[A1])
            assert_good(points["m2"], READINGS[A2])
        finally:
            await collector.stop()
            await sim.stop()

    run(main)
    assert metrics.registry.get_sample_value("energymon_device_up", {"meter": "m1"}) == 1.0
    sample = metrics.registry.get_sample_value
    errors = {
        kind: sample("energymon_errors_total", {"stage": "collector", "error_type": kind})
        for kind in ("DeviceExceptionError", "DecodeError")
    }
    assert errors == {"DeviceExceptionError": 2.0, "DecodeError": 2.0}
    warnings = log_lines(caplog, "unavailable", logging.WARNING)
    assert len(warnings) == 2
    assert any("m1" in w and "power_factor (DI 02060000)" in w and "password error or unauthorised" in w
               for w in warnings)
    assert any("m2" in w and "frequency (DI 02800002)" in w and "corrupt reply" in w for w in warnings)
    assert len(log_lines(caplog, "recovered", logging.INFO)) == 2


def test_stray_frames_echo_and_a_byte_by_byte_reply_are_handled() -> None:
    """A scripted line: our echo, noise, another meter's reply, a late reply for another DI, then ours."""

    async def main() -> None:
        ours = build_frame(A1, 0x91, bytes.fromhex("00 00 01 00 67 45 23 01"))

        async def line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await reader.readexactly(20)
            writer.write(request)  # a 2-wire RS-485 converter echoes what the master sent
            writer.write(bytes.fromhex("00 68 13 FF"))
            writer.write(build_frame(A2, 0x91, bytes.fromhex("00 00 01 00 11 11 11 11")))
            writer.write(build_frame(A1, 0x91, bytes.fromhex("00 00 02 00 11 11 11 11")))
            await writer.drain()
            for byte in ours:
                writer.write(bytes([byte]))
                await writer.drain()
            await reader.read()  # until the collector closes
            writer.close()

        server = await asyncio.start_server(line, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        only_energy = Dlt645Source(type="dlt645", bus="b1", address=A1, items=[
            Dlt645Item(quantity="energy_active_import", di="00010000", unit="kWh", kind="counter"),
        ])
        collector = Dlt645Collector(tcp_bus(port, retries=0), [Meter(id="m1", source=only_energy)])
        try:
            points = await collector.poll("default", 0)
            assert [(p.quantity, p.value, p.quality) for p in points] == [
                ("energy_active_import", 12345.67, Quality.GOOD)
            ]
        finally:
            await collector.stop()
            server.close()
            await server.wait_closed()

    run(main)


def test_late_reply_between_polls_is_not_taken_for_the_next_answer() -> None:
    """The meter answers after the timeout; that stale reply waits on the link until the next poll."""

    async def main() -> None:
        late_sent = asyncio.Event()
        stale = build_frame(A1, 0x91, bytes.fromhex("00 00 01 00 00 01 00 00"))  # 1.00 kWh, an old value
        fresh = build_frame(A1, 0x91, bytes.fromhex("00 00 01 00 67 45 23 01"))

        async def slow_meter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(20)
            await asyncio.sleep(1.5 * TIMEOUT_MS / 1000)  # the meter's own slowness, not the test waiting
            writer.write(stale)
            await writer.drain()
            late_sent.set()
            while await reader.read(20):
                writer.write(fresh)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(slow_meter, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        only_energy = Dlt645Source(type="dlt645", bus="b1", address=A1, items=[
            Dlt645Item(quantity="energy_active_import", di="00010000", unit="kWh", kind="counter"),
        ])
        collector = Dlt645Collector(tcp_bus(port, retries=0), [Meter(id="m1", source=only_energy)])
        try:
            first = await collector.poll("default", 0)
            assert [p.quality for p in first] == [Quality.BAD]
            await late_sent.wait()
            link = collector._conn  # white box: wait until the stale bytes are in the collector's buffer
            deadline = time.monotonic() + 5
            while link is not None and not len(link.frames):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.005)
            second = await collector.poll("default", 0)
            assert [(p.value, p.quality) for p in second] == [(12345.67, Quality.GOOD)]
        finally:
            await collector.stop()
            server.close()
            await server.wait_closed()

    run(main)


def test_bus_down_at_start_then_the_server_appears(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    policy = Dlt645Policy(reconnect_min_secs=0.05, reconnect_max_secs=0.1)

    async def main() -> None:
        port = free_port()  # nothing listens there yet
        collector = Dlt645Collector(tcp_bus(port, timeout_ms=30_000), [meter("m1", A1), meter("m2", A2)],
                                    policy=policy)
        await collector.start()
        sim = Dlt645MeterServer([A1, A2], Values())
        try:
            for _ in range(3):
                started = time.monotonic()
                points = by_meter(await collector.poll("default", 0))
                assert time.monotonic() - started < 15  # refused at once: the 30 s timeout is not waited
                assert_bad(points["m1"])
                assert_bad(points["m2"])
            await sim.start_tcp(port=port)
            deadline = time.monotonic() + 10
            while True:
                points = by_meter(await collector.poll("default", 0))
                if points["m2"]["frequency"].quality is Quality.GOOD:
                    break
                assert time.monotonic() < deadline, "the collector did not reconnect"
                await asyncio.sleep(0.02)
            assert_good(points["m1"], READINGS[A1])
            assert_good(points["m2"], READINGS[A2])
        finally:
            await collector.stop()
            await sim.stop()

    run(main)
    assert len(log_lines(caplog, "bus b1: cannot connect to 127.0.0.1", logging.WARNING)) == 1
    assert len(log_lines(caplog, "bus b1: connected to 127.0.0.1", logging.INFO)) == 1
    for m in ("m1", "m2"):
        assert len(log_lines(caplog, f"meter {m} (address", logging.WARNING)) == 1
        assert len(log_lines(caplog, f"meter {m} (address", logging.INFO)) == 1


# --------------------------------------------------------------------------------------------- serial line


@pytest.fixture
def pty_pair() -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals made by socat (a null-modem cable)."""
    socat = require_binary("socat")
    proc = subprocess.Popen(
        [socat, "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"], stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        paths: list[str] = []
        deadline = time.monotonic() + 10
        while len(paths) < 2 and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            if found := re.search(r"PTY is (/dev/\S+)", line):
                paths.append(found.group(1))
        if len(paths) < 2:
            pytest.fail(f"socat did not report two pseudo-terminals (got {paths}, exit code {proc.poll()})")
        yield paths[0], paths[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_serial_line_good_dead_and_recovered_meters(
    pty_pair: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    meters_end, gateway_end = pty_pair
    clock = ManualClock(datetime(2025, 3, 1, 8, 0, tzinfo=UTC))
    metrics = PipelineMetrics(CollectorRegistry())

    async def main() -> None:
        sim = Dlt645MeterServer([A1, A2, A3], Values(), clock=clock)
        sim.set_fault(A2, MeterFault("no_answer"))
        await sim.start_serial(meters_end)
        bus = Dlt645SerialBus(type="dlt645_serial", id="rs485", device=gateway_end, timeout_ms=TIMEOUT_MS,
                              retries=0)
        meters = [meter("s1", A1, bus="rs485"), meter("s2", A2, bus="rs485"), meter("s3", A3, bus="rs485")]
        collector = Dlt645Collector(bus, meters, clock=clock, metrics=metrics,
                                    policy=Dlt645Policy(fail_threshold=10))
        try:
            for _ in range(2):
                points = by_meter(await collector.poll("default", clock.now_ms()))
                assert_good(points["s1"], READINGS[A1])
                assert_bad(points["s2"])
                assert_good(points["s3"], READINGS[A3])
            assert sim.requests.count((A1, "00010000")) == 2
            sim.set_fault(A2, None)
            points = by_meter(await collector.poll("default", clock.now_ms()))
            assert_good(points["s2"], READINGS[A2])
        finally:
            await collector.stop()
            await sim.stop()

    run(main)
    assert metrics.registry.get_sample_value("energymon_device_up", {"meter": "s2"}) == 1.0
    assert len(log_lines(caplog, f"meter s2 (address {A2}) on bus rs485 unavailable", logging.WARNING)) == 1
    assert len(log_lines(caplog, f"meter s2 (address {A2}) on bus rs485 recovered", logging.INFO)) == 1
    assert not log_lines(caplog, "bus rs485:", logging.WARNING)


def test_missing_serial_device_gives_bad_points_not_an_exception(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main() -> None:
        bus = Dlt645SerialBus(type="dlt645_serial", id="rs485", device="/dev/does-not-exist-645",
                              timeout_ms=TIMEOUT_MS)
        collector = Dlt645Collector(bus, [meter("s1", A1, bus="rs485")])
        for _ in range(2):
            assert_bad(by_meter(await collector.poll("default", 0))["s1"])
        await collector.stop()

    run(main)
    lost = log_lines(caplog, "bus rs485: cannot connect to /dev/does-not-exist-645", logging.WARNING)
    assert len(lost) == 1


# --------------------------------------------------------------------------------------------- documentation


def test_doc_table_lists_exactly_the_supported_items() -> None:
    text = DOC.read_text(encoding="utf-8")
    table = text.split("## Supported data items", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`([0-9A-F]{8})`", table))
    assert listed == set(ITEM_FORMATS)


def test_doc_plant_snippets_load_and_build_collectors() -> None:
    text = DOC.read_text(encoding="utf-8")
    snippets = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(snippets) >= 2
    for snippet in snippets:
        doc = yaml.safe_load(snippet)
        plant_text = yaml.safe_dump({
            "enterprise": {"uscc": "91530102MA6K7LQ8RH", "name": "doc plant", "industry_code": "C3011"},
            "gateway": {"poll_groups": [{"id": "default", "interval_secs": 15},
                                        {"id": "fast", "interval_secs": 5}]},
            **doc,
        }, allow_unicode=True)
        plant = parse_plant(plant_text, "collectors/dlt645.md")
        polled, pushed = build_collectors(plant, clock=ManualClock(datetime(2025, 1, 1, tzinfo=UTC)),
                                          metrics=PipelineMetrics(CollectorRegistry()))
        assert pushed == []
        assert [type(c) for c in polled] == [Dlt645Collector]
