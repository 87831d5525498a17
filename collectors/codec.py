"""Modbus value codec: raw 16-bit registers ⇄ engineering values.

Pure functions for the poll loop's hot path. Each (data type, word order) pair has two precompiled
:class:`struct.Struct` objects: one that packs the registers as they arrived, one that reads the value from
those bytes. With registers ``r0, r1, ...`` (each already a big-endian 16-bit integer) the four orders are:

=====  ========================  =================  ======================================
order  bytes on the wire          registers packed   value read
=====  ========================  =================  ======================================
ABCD   A B C D                    big-endian         big-endian
CDAB   C D A B                    little-endian      little-endian (words reversed → A B C D)
BADC   B A D C                    little-endian      big-endian (each word's bytes swapped)
DCBA   D C B A                    big-endian         little-endian
=====  ========================  =================  ======================================

The same table covers 64-bit values (``CDAB`` ≙ GHEFCDAB, see :class:`~energymon.config.WordOrder`) and
16-bit values (``BADC`` and ``DCBA`` swap the two bytes, ``ABCD`` and ``CDAB`` do not).

The engineering value is ``raw * scale + offset``. A 64-bit integer is scaled exactly (in decimal, with the
scale and offset as written in the plant file) and rounded to a float once, at the end: converting the raw
value to a float first would round a counter above 2**53 before it is scaled, and scaling in binary floating
point adds a second rounding (``4294967295 * 0.01`` is not ``42949672.95``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from decimal import Decimal

from energymon.config import DataType, Register, RegisterFunction, WordOrder
from energymon.counters import natural_counter_max
from energymon.errors import DecodeError

__all__ = ["decode", "default_counter_max", "encode"]

_VALUE_FORMAT = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.INT64: "q",
    DataType.UINT64: "Q",
    DataType.FLOAT32: "f",
    DataType.FLOAT64: "d",
}
#: endianness of (registers packed, value read) per word order
_ENDIAN = {
    WordOrder.ABCD: (">", ">"),
    WordOrder.CDAB: ("<", "<"),
    WordOrder.BADC: ("<", ">"),
    WordOrder.DCBA: (">", "<"),
}
_STRUCTS: dict[tuple[DataType, WordOrder], tuple[struct.Struct, struct.Struct]] = {
    (dtype, order): (
        struct.Struct(words_end + "H" * dtype.registers),
        struct.Struct(value_end + fmt),
    )
    for dtype, fmt in _VALUE_FORMAT.items()
    for order, (words_end, value_end) in _ENDIAN.items()
}
_FLOATS = (DataType.FLOAT32, DataType.FLOAT64)
_UNSIGNED = (DataType.UINT16, DataType.UINT32, DataType.UINT64)
_INT64 = (DataType.INT64, DataType.UINT64)
_BIT_TABLES = (RegisterFunction.COIL, RegisterFunction.DISCRETE_INPUT)


def decode(register: Register, words: Sequence[int], *, device: str) -> float:
    """Decode the raw registers of one value into its engineering value.

    Args:
        register: the value's definition (type, order, scale, offset).
        words: its registers as read (``register.width`` integers 0..65535); for a coil or a discrete
            input, one item that is the bit (bool or 0/1).
        device: the meter id, named in errors.

    Returns:
        ``raw * scale + offset``.

    Raises:
        DecodeError: wrong number of registers, a register out of 0..65535, or a NaN/infinite float.
    """
    dtype = register.type
    if len(words) != dtype.registers:
        raise DecodeError(
            device,
            f"{register.quantity}: {dtype.value} takes {dtype.registers} register(s), not {len(words)}",
        )
    if dtype is DataType.BIT:
        if register.function in _BIT_TABLES:
            raw = 1 if words[0] else 0
        else:
            raw = (words[0] >> (register.bit or 0)) & 1
        return raw * register.scale + register.offset
    packer, reader = _STRUCTS[dtype, register.order]
    try:
        value: float = reader.unpack(packer.pack(*words))[0]
    except struct.error:
        raise DecodeError(device, f"{register.quantity}: not 16-bit registers: {list(words)}") from None
    if dtype in _FLOATS and not math.isfinite(value):
        raise DecodeError(device, f"{register.quantity}: {dtype.value} is {value}")
    if dtype in _INT64:
        return _exact(int(value), register.scale, register.offset)
    return value * register.scale + register.offset


def _exact(raw: int, scale: float, offset: float) -> float:
    """``raw * scale + offset`` for an integer of any size, rounded once (to the nearest float)."""
    if scale == 1 and offset == 0:
        return float(raw)
    return float(Decimal(raw) * Decimal(repr(scale)) + Decimal(repr(offset)))


def encode(register: Register, value: float) -> list[int]:
    """Encode an engineering value into the registers a device would hold (the inverse of :func:`decode`).

    Integers are rounded to the nearest raw value; a Python ``int`` with scale 1 and offset 0 is encoded
    exactly (a float cannot hold every 64-bit integer). For a bit of a holding or input register, the result
    is the register with only that bit set (or 0): merge it into the other bits yourself.

    Raises:
        ValueError: the raw value does not fit the data type (or is not 0/1 for a bit).
    """
    dtype = register.type
    exact = isinstance(value, int) and register.scale == 1 and register.offset == 0
    raw: float
    if exact:
        raw = value
    elif dtype in _INT64:  # in decimal, so the raw counter comes out exact (the inverse of decode)
        raw = int(((Decimal(repr(value)) - Decimal(repr(register.offset))) / Decimal(repr(register.scale)))
                  .to_integral_value())
    else:
        raw = (value - register.offset) / register.scale
    if dtype is DataType.BIT:
        bit = round(raw)
        if bit not in (0, 1) or not math.isclose(raw, bit, abs_tol=1e-9):
            raise ValueError(f"{register.quantity}: {value} is not a bit (raw {raw})")
        if register.function in _BIT_TABLES:
            return [bit]
        return [bit << (register.bit or 0)]
    packer, reader = _STRUCTS[dtype, register.order]
    number: float = raw if dtype in _FLOATS else round(raw)
    try:
        return list(packer.unpack(reader.pack(number)))
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{register.quantity}: {value} out of range for {dtype.value} ({exc})") from None


def default_counter_max(register: Register) -> float | None:
    """The value at which an unsigned integer counter rolls over: ``2**bits * scale``
    (:func:`energymon.counters.natural_counter_max`, where the counter rules live).

    Returns None for floats, signed integers and bits, which have no natural rollover point.
    """
    return natural_counter_max(register)
