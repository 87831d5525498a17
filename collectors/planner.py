"""Read planner: the fewest Modbus read requests that cover a device's registers.

Values of one table (function code) are sorted by address and merged into one read while the hole between
them is at most ``max_hole`` registers and the read stays within the protocol limit (125 registers, 2000 coils
or discrete inputs). Reading a few unused registers costs far less than another round trip on a serial line.

The plan is pure and deterministic; collectors compute it once when they start, never in the poll loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from energymon.config import Register, RegisterFunction

__all__ = ["MAX_BITS", "MAX_REGISTERS", "ReadRequest", "plan"]

#: Largest read of holding or input registers the Modbus specification allows (FC 3 and 4).
MAX_REGISTERS = 125
#: Largest read of coils or discrete inputs (FC 1 and 2).
MAX_BITS = 2000

_BIT_FUNCTIONS = (RegisterFunction.COIL, RegisterFunction.DISCRETE_INPUT)


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read: ``count`` registers (or bits) from protocol address ``start`` with ``function_code``.

    Attributes:
        function_code: 1 coils, 2 discrete inputs, 3 holding registers, 4 input registers.
        start: first protocol (0-based) address read.
        count: registers or bits read.
        values: each value this read covers, with the offset of its first register in the response.
    """

    function_code: int
    start: int
    count: int
    values: tuple[tuple[Register, int], ...]


def plan(
    registers: Sequence[Register],
    addressing: Literal["zero_based", "one_based"] = "zero_based",
    *,
    max_hole: int = 10,
    max_registers: int = MAX_REGISTERS,
    max_bits: int = MAX_BITS,
) -> list[ReadRequest]:
    """Plan the reads for one device.

    Args:
        registers: the device's register map entries.
        addressing: ``one_based`` maps register address N to protocol address N-1.
        max_hole: largest number of unused registers read to join two values into one request.
        max_registers: largest register read (lower it for devices that accept fewer than 125).
        max_bits: largest coil or discrete-input read.

    Returns:
        Requests ordered by function code, then address.

    Raises:
        ValueError: a one-based address is 0, or a limit is not positive.
    """
    if max_hole < 0 or max_registers < 4 or max_bits < 1:
        raise ValueError("max_hole must be >= 0, max_registers >= 4 and max_bits >= 1")
    shift = 1 if addressing == "one_based" else 0
    located: list[tuple[int, int, Register]] = []
    for reg in registers:
        if reg.address < shift:
            raise ValueError(f"{reg.quantity}: address 0 does not exist with one_based addressing")
        located.append((reg.function.function_code, reg.address - shift, reg))
    located.sort(key=lambda item: (item[0], item[1], item[2].width, item[2].quantity))

    requests: list[ReadRequest] = []
    fc = start = end = -1
    members: list[tuple[Register, int]] = []

    def close() -> None:
        if members:
            requests.append(ReadRequest(fc, start, end - start, tuple(members)))

    for code, address, reg in located:
        limit = max_bits if reg.function in _BIT_FUNCTIONS else max_registers
        new_end = max(end, address + reg.width)
        if code != fc or address - end > max_hole or new_end - start > limit:
            close()
            fc, start, new_end, members = code, address, address + reg.width, []
        end = new_end
        members.append((reg, address - start))
    close()
    return requests
