"""Read planner: merging values into the fewest requests within the protocol limits."""

from __future__ import annotations

from typing import Any

import pytest

from energymon.collectors.planner import ReadRequest, plan
from energymon.config import DataType, Register, RegisterFunction


def r(quantity: str, address: int, type_: DataType = DataType.FLOAT32, **kw: Any) -> Register:
    kw.setdefault("unit", "kW")
    return Register(quantity=quantity, address=address, type=type_, **kw)


def spans(requests: list[ReadRequest]) -> list[tuple[int, int, int]]:
    return [(q.function_code, q.start, q.count) for q in requests]


def test_contiguous_map_is_one_request() -> None:
    regs = [r("a", 0, DataType.UINT32), r("b", 2), r("c", 4), r("d", 6, DataType.INT16), r("e", 7)]
    (req,) = plan(regs)
    assert (req.function_code, req.start, req.count) == (3, 0, 9)
    offsets = [(reg.quantity, off) for reg, off in req.values]
    assert offsets == [("a", 0), ("b", 2), ("c", 4), ("d", 6), ("e", 7)]


def test_hole_of_max_hole_merges_and_one_more_splits() -> None:
    # a occupies 0-1; b at 12 leaves a hole of 10 registers (2..11); c at 25 leaves 11 after b (14..24)
    regs = [r("a", 0), r("b", 12), r("c", 25)]
    assert spans(plan(regs, max_hole=10)) == [(3, 0, 14), (3, 25, 2)]
    assert spans(plan(regs, max_hole=11)) == [(3, 0, 27)]
    assert spans(plan(regs, max_hole=0)) == [(3, 0, 2), (3, 12, 2), (3, 25, 2)]


def test_130_contiguous_registers_split_at_125() -> None:
    regs = [r(f"v{i}", i, DataType.UINT16) for i in range(130)]
    reqs = plan(regs)
    assert spans(reqs) == [(3, 0, 125), (3, 125, 5)]
    assert reqs[1].values[0] == (regs[125], 0)
    assert sum(len(q.values) for q in reqs) == 130


def test_a_value_never_straddles_the_limit() -> None:
    regs = [r(f"v{i}", 2 * i) for i in range(63)]  # 126 registers of float32
    reqs = plan(regs)
    assert spans(reqs) == [(3, 0, 124), (3, 124, 2)]
    assert plan(regs, max_registers=80)[0].count == 80


def test_mixed_functions_are_separate_and_ordered() -> None:
    regs = [
        r("hold", 0),
        r("inp", 0, function=RegisterFunction.INPUT),
        r("coil", 3, DataType.BIT, function=RegisterFunction.COIL, unit="1"),
        r("hold2", 2),
        r("di", 7, DataType.BIT, function=RegisterFunction.DISCRETE_INPUT, unit="1"),
    ]
    assert spans(plan(regs)) == [(1, 3, 1), (2, 7, 1), (3, 0, 4), (4, 0, 2)]


def test_one_based_addresses_shift_to_protocol_addresses() -> None:
    regs = [r("v", 1), r("e", 73)]  # 30001-style numbering minus 30000
    assert spans(plan(regs, "one_based")) == [(3, 0, 2), (3, 72, 2)]
    assert spans(plan(regs, "zero_based")) == [(3, 1, 2), (3, 73, 2)]
    with pytest.raises(ValueError, match="address 0"):
        plan([r("z", 0)], "one_based")


def test_coils_and_discrete_inputs_merge_up_to_2000() -> None:
    coils = [r(f"c{i}", i * 100, DataType.BIT, function=RegisterFunction.COIL, unit="1") for i in range(3)]
    assert spans(plan(coils, max_hole=100)) == [(1, 0, 201)]
    di = RegisterFunction.DISCRETE_INPUT
    many = [r(f"d{i}", i, DataType.BIT, function=di, unit="1") for i in range(2100)]
    assert spans(plan(many)) == [(2, 0, 2000), (2, 2000, 100)]


def test_bits_of_one_register_share_it() -> None:
    regs = [r(f"b{i}", 10, DataType.BIT, bit=i, unit="1") for i in (3, 0, 15)] + [r("x", 11, DataType.UINT16)]
    (req,) = plan(regs)
    assert (req.start, req.count) == (10, 2)
    bits = sorted((reg.bit, off) for reg, off in req.values if reg.bit is not None)
    assert bits == [(0, 0), (3, 0), (15, 0)]


def test_plan_is_deterministic_whatever_the_input_order() -> None:
    regs = [r("a", 40), r("b", 0), r("c", 20, DataType.UINT16), r("d", 100, function=RegisterFunction.INPUT)]
    assert plan(regs) == plan(list(reversed(regs)))


def test_eastron_sdm630_library_map_plans_to_two_reads() -> None:
    from energymon.collectors.library import library_map

    regmap = library_map("eastron_sdm630")
    reqs = plan(regmap.registers, regmap.addressing)
    assert spans(reqs) == [(4, 0, 18), (4, 52, 28)]  # within the meter's 80-register limit, even counts
    assert all(q.start % 2 == 0 and q.count % 2 == 0 for q in reqs)


def test_library_names_and_unknown_name() -> None:
    from energymon.collectors.library import library_map, library_names

    assert "eastron_sdm630" in library_names()
    regmap = library_map("eastron_sdm630")
    assert regmap.manufacturer == "Eastron" and "Protocol Implementation" in regmap.source
    by_quantity = {r.quantity: r for r in regmap.registers}
    assert by_quantity["energy_active_import"].address == 0x48  # 30073
    assert by_quantity["energy_active_import"].kind == "counter"
    with pytest.raises(KeyError, match=r"available: .*eastron_sdm630"):
        library_map("no_such_meter")
    with pytest.raises(KeyError):
        library_map("../meter_library/eastron_sdm630")
