"""Modbus value codec: known vectors, round trips for every type and order, errors."""

from __future__ import annotations

import math
import struct
import time
from typing import Any

import pytest

from energymon.collectors.codec import decode, default_counter_max, encode
from energymon.config import DataType, Register, RegisterFunction, WordOrder
from energymon.errors import DecodeError

NUMERIC = [t for t in DataType if t is not DataType.BIT]


def reg(type_: DataType = DataType.FLOAT32, order: WordOrder = WordOrder.ABCD, **kw: Any) -> Register:
    kw.setdefault("unit", "kW")
    return Register(quantity="q", address=0, type=type_, order=order, **kw)


@pytest.mark.parametrize(
    ("order", "words"),
    [
        (WordOrder.ABCD, [0x42F6, 0xE979]),
        (WordOrder.CDAB, [0xE979, 0x42F6]),
        (WordOrder.BADC, [0xF642, 0x79E9]),
        (WordOrder.DCBA, [0x79E9, 0xF642]),
    ],
)
def test_float32_vectors(order: WordOrder, words: list[int]) -> None:
    r = reg(DataType.FLOAT32, order)
    assert decode(r, words, device="m") == pytest.approx(123.456, rel=1e-7)
    assert encode(r, 123.456) == words


@pytest.mark.parametrize(
    ("order", "words"),
    [
        (WordOrder.ABCD, [0x1234, 0x5678]),
        (WordOrder.CDAB, [0x5678, 0x1234]),
        (WordOrder.BADC, [0x3412, 0x7856]),
        (WordOrder.DCBA, [0x7856, 0x3412]),
    ],
)
def test_uint32_vectors(order: WordOrder, words: list[int]) -> None:
    r = reg(DataType.UINT32, order)
    assert decode(r, words, device="m") == 0x12345678
    assert encode(r, 0x12345678) == words


@pytest.mark.parametrize(
    ("order", "words"),
    [
        (WordOrder.ABCD, [0x0102, 0x0304, 0x0506, 0x0708]),
        (WordOrder.CDAB, [0x0708, 0x0506, 0x0304, 0x0102]),  # GHEFCDAB
        (WordOrder.BADC, [0x0201, 0x0403, 0x0605, 0x0807]),  # BADCFEHG
        (WordOrder.DCBA, [0x0807, 0x0605, 0x0403, 0x0201]),  # HGFEDCBA
    ],
)
def test_uint64_vectors(order: WordOrder, words: list[int]) -> None:
    r = reg(DataType.UINT64, order)
    assert encode(r, 0x0102030405060708) == words
    assert decode(r, words, device="m") == float(0x0102030405060708)  # nearest float


def test_float64_and_16_bit_vectors() -> None:
    words = list(struct.unpack(">4H", struct.pack(">d", -1234.5678)))
    assert decode(reg(DataType.FLOAT64), words, device="m") == -1234.5678
    assert decode(reg(DataType.INT16), [0xFFFE], device="m") == -2
    assert decode(reg(DataType.UINT16), [0xFFFE], device="m") == 65534
    assert decode(reg(DataType.INT16, WordOrder.BADC), [0xFEFF], device="m") == -2
    assert decode(reg(DataType.UINT16, WordOrder.DCBA), [0x3412], device="m") == 0x1234
    assert decode(reg(DataType.UINT16, WordOrder.CDAB), [0x1234], device="m") == 0x1234
    assert decode(reg(DataType.INT32), [0xFFFF, 0xFFFF], device="m") == -1


def _sample(dtype: DataType) -> list[float]:
    bits = 16 * dtype.registers
    if dtype in (DataType.FLOAT32, DataType.FLOAT64):
        return [0.0, -1.5, 3.25e8, 123.456]
    if dtype.name.startswith("U"):
        return [0, 1, 2**bits - 1, 2 ** (bits - 1) + 3]
    return [0, -1, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1]


@pytest.mark.parametrize("order", list(WordOrder))
@pytest.mark.parametrize("dtype", NUMERIC)
def test_round_trip_every_type_and_order(dtype: DataType, order: WordOrder) -> None:
    r = reg(dtype, order)
    for value in _sample(dtype):
        words = encode(r, value)
        assert len(words) == dtype.registers
        assert all(0 <= w <= 0xFFFF for w in words)
        back = decode(r, words, device="m")
        if dtype is DataType.FLOAT32:
            assert back == pytest.approx(value, rel=1e-7)
        elif dtype in (DataType.INT64, DataType.UINT64):
            assert back == float(value)  # a float cannot hold every 64-bit integer exactly
        else:
            assert back == value


def test_orders_differ_for_32_bit_values() -> None:
    encodings = {tuple(encode(reg(DataType.INT32, order), -123456)) for order in WordOrder}
    assert len(encodings) == 4


def test_scale_and_offset() -> None:
    r = reg(DataType.UINT32, scale=0.1, offset=-40.0)
    assert decode(r, [0, 1000], device="m") == pytest.approx(60.0)
    assert encode(r, 60.0) == [0, 1000]
    assert encode(r, 60.04) == [0, 1000]  # integers round to the nearest raw value
    assert encode(r, 60.06) == [0, 1001]


def test_bit_of_a_register_and_coils() -> None:
    r = reg(DataType.BIT, function=RegisterFunction.HOLDING, bit=5, unit="1")
    assert decode(r, [0b10_0000], device="m") == 1.0
    assert decode(r, [0xFFFF & ~0b10_0000], device="m") == 0.0
    assert encode(r, 1) == [0b10_0000]
    coil = reg(DataType.BIT, function=RegisterFunction.COIL, unit="1")
    assert decode(coil, [True], device="m") == 1.0
    assert decode(coil, [False], device="m") == 0.0
    assert encode(coil, 1) == [1]
    with pytest.raises(ValueError, match="not a bit"):
        encode(coil, 2)


def test_nan_and_inf_are_decode_errors_naming_the_device() -> None:
    cases = [(DataType.FLOAT32, math.nan), (DataType.FLOAT32, math.inf), (DataType.FLOAT64, -math.inf)]
    for dtype, value in cases:
        words = encode(reg(dtype), value)
        with pytest.raises(DecodeError, match="boiler-2") as info:
            decode(reg(dtype), words, device="boiler-2")
        assert info.value.device == "boiler-2"


def test_wrong_word_count_and_bad_words() -> None:
    with pytest.raises(DecodeError, match="takes 2 register"):
        decode(reg(DataType.FLOAT32), [1], device="m")
    with pytest.raises(DecodeError, match="takes 4 register"):
        decode(reg(DataType.UINT64), [1, 2], device="m")
    with pytest.raises(DecodeError, match="16-bit"):
        decode(reg(DataType.UINT16), [70000], device="m")


def test_encode_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode(reg(DataType.UINT16), 65536)
    with pytest.raises(ValueError, match="out of range"):
        encode(reg(DataType.UINT32), -1)
    with pytest.raises(ValueError, match="out of range"):
        encode(reg(DataType.INT16), 32768)
    with pytest.raises(ValueError, match="out of range"):
        encode(reg(DataType.FLOAT32), 1e39)
    with pytest.raises(ValueError, match="out of range"):
        encode(reg(DataType.UINT16, scale=0.1), 6553.6)


def test_default_counter_max() -> None:
    assert default_counter_max(reg(DataType.UINT32, scale=0.1)) == pytest.approx(2**32 * 0.1)
    assert default_counter_max(reg(DataType.UINT16)) == 65536
    assert default_counter_max(reg(DataType.UINT64)) == 2.0**64
    assert default_counter_max(reg(DataType.INT32)) is None
    assert default_counter_max(reg(DataType.FLOAT32)) is None
    assert default_counter_max(reg(DataType.BIT, bit=0, unit="1")) is None


def test_decode_is_fast_enough_for_25k_tags_per_second() -> None:
    r = reg(DataType.FLOAT32, WordOrder.CDAB, scale=0.001)
    words = encode(r, 42.0)
    n = 25_000
    started = time.perf_counter()
    for _ in range(n):
        decode(r, words, device="m")
    # a loose bound (10x margin on a slow CI core): 25k values in well under a second
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    ("dtype", "raw", "scale"),
    [
        ("uint64", 123456789012345678, 0.001),  # float(raw) * 0.001 gives ...345.69
        ("uint64", 9007199254740993, 0.01),  # 2**53 + 1: float(raw) rounds it before scaling
        ("uint64", 987654321987654321, 0.01),
        ("int64", -987654321987654321, 0.001),
        ("uint64", 2**64 - 1, 1.0),
    ],
)
def test_64_bit_counters_are_scaled_exactly_and_rounded_once(dtype: str, raw: int, scale: float) -> None:
    from decimal import Decimal

    reg = Register(quantity="e", address=0, type=DataType(dtype), scale=scale, unit="kWh", kind="counter")
    words = encode(reg.model_copy(update={"scale": 1.0}), raw)  # the raw counter, exactly
    exact = float(Decimal(raw) * Decimal(repr(scale)))
    assert decode(reg, words, device="m") == exact  # the float nearest to the exact value, not a rounding away


def test_64_bit_counter_round_trips_through_encode() -> None:
    reg = Register(quantity="e", address=0, type=DataType.UINT64, scale=0.01, unit="kWh", kind="counter")
    for value in (123456789012345.67, 0.01, 42949672.95, 184467440737095.51):
        assert decode(reg, encode(reg, value), device="m") == value
