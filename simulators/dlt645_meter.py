"""Simulated DL/T 645-2007 meters: one server answers read requests for several meters, by address.

:class:`Dlt645MeterServer` speaks the frames of :mod:`energymon.collectors.dlt645` over TCP (a serial device
server in transparent mode: an asyncio server on ``127.0.0.1``, port 0 picks a free one) and over a serial
device (the far end of the gateway's line, e.g. one side of a ``socat`` pty pair). Both may run at once.

Each read request (control ``11H``) addressed to one of its meters is answered with the value of
``value(address, di, ts_ms)`` at the clock's current event time, encoded in the item's BCD format
(:data:`~energymon.collectors.dlt645.ITEM_FORMATS`): energies roll over as a meter's register does
(``XXXXXX.XX`` kWh wraps at 1,000,000), other values are clamped to what the item can show (a saturated
display), and an unsigned item shows a negative value as 0. Replies start with the ``FE FE FE FE`` preamble.

* a DI outside the table, or one the callback has no value for (it raises ``LookupError``), is answered
  with an abnormal reply (``D1H``), error word 02H "no requested data";
* another function than read data is answered abnormal with error 01H "other error";
* a request to an address it does not serve, to the broadcast address, or with a bad checksum gets no answer,
  as on a real line.

Faults, per meter and optionally per item (:meth:`Dlt645MeterServer.set_fault`): :class:`MeterFault` with kind
``no_answer`` (the request is swallowed), ``abnormal`` (an abnormal reply with ``error``) or ``bad_checksum``
(the right reply with its checksum off by one).

Example::

    >>> import asyncio
    >>> from energymon.collectors.dlt645 import build_read_request, decode_frame, parse_read_reply
    >>> async def read_energy() -> float:
    ...     server = Dlt645MeterServer(["123456789012"], lambda address, di, ts_ms: 12345.67)
    ...     host, port = await server.start_tcp()
    ...     reader, writer = await asyncio.open_connection(host, port)
    ...     try:
    ...         writer.write(build_read_request("123456789012", "00010000"))
    ...         reply = await reader.readexactly(4 + 20)
    ...     finally:
    ...         writer.close()
    ...         await server.stop()
    ...     frame = decode_frame(reply)
    ...     return parse_read_reply(frame, address="123456789012", di="00010000", device="doc")
    >>> asyncio.run(read_energy())
    12345.67
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from energymon.clock import WallClock
from energymon.collectors.dlt645 import (
    BROADCAST_ADDRESS,
    CONTROL_READ,
    CONTROL_READ_ABNORMAL,
    CONTROL_READ_REPLY,
    ERR_NO_DATA,
    ERR_OTHER,
    ITEM_FORMATS,
    Frame,
    FrameBuffer,
    FrameError,
    ItemFormat,
    build_frame,
    encode_value,
)
from energymon.interfaces import Clock

__all__ = ["Dlt645MeterServer", "MeterFault", "ValueFn"]

log = logging.getLogger(__name__)

#: ``value(address, di, ts_ms) -> float``: what a meter shows for an item at an event time. ``di`` is 8
#: upper-case hex digits (DI3..DI0). Raise ``LookupError`` for an item the meter does not have.
ValueFn = Callable[[str, str, int], float]


@dataclass(frozen=True, slots=True)
class MeterFault:
    """A fault of a simulated meter.

    Attributes:
        kind: ``no_answer`` (silent), ``abnormal`` (abnormal reply ``D1H`` with ``error``), ``bad_checksum``
            (the right reply, its checksum off by one).
        error: the error word of an abnormal reply (bit 0 other error, bit 1 no requested data, bit 2
            unauthorised...).
        di: the item affected (8 hex digits); None affects every item of the meter.
    """

    kind: Literal["no_answer", "abnormal", "bad_checksum"]
    error: int = ERR_NO_DATA
    di: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.error <= 0xFF:
            raise ValueError(f"error word must be 01H..FFH, got {self.error}")
        if self.di is not None:
            object.__setattr__(self, "di", self.di.upper())


def _frame(address: str, control: int, data: bytes) -> bytes:
    raw: bytes = build_frame(address, control, data)
    return raw


def _fit(value: float, fmt: ItemFormat, *, counter: bool) -> float:
    """What the meter can show of ``value``: counters roll over, other values saturate."""
    if math.isnan(value):
        value = 0.0
    limit = fmt.max_value
    if counter and math.isfinite(value):
        span = (fmt.max_raw + 1) / 10**fmt.decimals  # 1,000,000 kWh for XXXXXX.XX
        value = math.copysign(math.fmod(abs(value), span), value)
        if round(abs(value) * 10**fmt.decimals) > fmt.max_raw:  # rounds up to the span itself: shows 0
            value = 0.0
    value = min(max(value, -limit if fmt.signed else 0.0), limit)
    return value


class Dlt645MeterServer:
    """Simulated DL/T 645-2007 meters behind one TCP port and/or one serial device.

    Args:
        addresses: the meters' 12-digit addresses.
        value: ``value(address, di, ts_ms)`` of an item at an event time (see :data:`ValueFn`).
        clock: event time of each read (default: the wall clock).

    Attributes:
        requests: ``(address, DI)`` of every read request addressed to one of the meters, in arrival order
            (also those a fault left unanswered).

    Raises:
        ValueError: an address is not 12 digits, or is the broadcast address.
    """

    def __init__(self, addresses: Iterable[str], value: ValueFn, *, clock: Clock | None = None) -> None:
        self._addresses: set[str] = set()
        for address in addresses:
            if len(address) != 12 or not address.isdigit():
                raise ValueError(f"meter address {address!r} is not 12 digits")
            if address == BROADCAST_ADDRESS:
                raise ValueError(f"{BROADCAST_ADDRESS} is the broadcast address, not a meter's")
            self._addresses.add(address)
        self._value = value
        self._clock: Clock = clock or WallClock()
        self._faults: dict[str, MeterFault] = {}
        self.requests: list[tuple[str, str]] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._serial: _SerialEnd | None = None

    # ------------------------------------------------------------------------------------------- faults

    def set_fault(self, address: str, fault: MeterFault | None) -> None:
        """Give a meter a fault, or clear it with None.

        Raises:
            KeyError: no meter with that address.
        """
        if address not in self._addresses:
            raise KeyError(f"no simulated meter with address {address}")
        if fault is None:
            self._faults.pop(address, None)
        else:
            self._faults[address] = fault

    # ------------------------------------------------------------------------------------------- answers

    def answer(self, request: Frame) -> bytes | None:
        """The bytes a meter sends back for ``request`` (None: no meter answers it)."""
        if request.is_reply or request.address not in self._addresses:
            return None
        address = request.address
        if request.function != CONTROL_READ:
            return _frame(address, 0xC0 | request.function, bytes([ERR_OTHER]))
        di = request.data[3::-1].hex().upper() if len(request.data) >= 4 else ""
        self.requests.append((address, di))
        fault = self._faults.get(address)
        if fault is not None and fault.di not in (None, di):
            fault = None
        if fault is not None and fault.kind == "no_answer":
            return None
        if fault is not None and fault.kind == "abnormal":
            return _frame(address, CONTROL_READ_ABNORMAL, bytes([fault.error]))
        fmt = ITEM_FORMATS.get(di)
        if fmt is None or len(request.data) != 4:
            return _frame(address, CONTROL_READ_ABNORMAL, bytes([ERR_NO_DATA]))
        try:
            value = self._value(address, di, self._clock.now_ms())
        except LookupError:
            return _frame(address, CONTROL_READ_ABNORMAL, bytes([ERR_NO_DATA]))
        shown = _fit(value, fmt, counter=di.startswith("00"))
        value_bytes: bytes = encode_value(shown, fmt)
        reply = _frame(address, CONTROL_READ_REPLY, request.data[:4] + value_bytes)
        if fault is not None and fault.kind == "bad_checksum":
            reply = reply[:-2] + bytes(((reply[-2] + 1) & 0xFF, reply[-1]))
        return reply

    def _answers(self, frames: FrameBuffer) -> list[bytes]:
        replies: list[bytes] = []
        while True:
            try:
                frame = frames.next_frame()
            except FrameError as exc:  # a meter ignores a garbled request
                log.debug("ignoring a garbled request: %s", exc)
                continue
            if frame is None:
                return replies
            reply = self.answer(frame)
            if reply is not None:
                replies.append(reply)

    # ------------------------------------------------------------------------------------------- TCP

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on ``host:port`` (0: a free port) and return the address bound."""
        if self._server is not None:
            raise RuntimeError("the TCP server is already running")
        self._server = await asyncio.start_server(self._serve_connection, host, port)
        bound: tuple[str, int] = self._server.sockets[0].getsockname()[:2]
        return bound

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        frames = FrameBuffer()
        try:
            while data := await reader.read(512):
                frames.feed(data)
                for reply in self._answers(frames):
                    writer.write(reply)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    # ------------------------------------------------------------------------------------------- serial

    async def start_serial(
        self,
        device: str,
        *,
        baudrate: int = 2400,
        bytesize: Literal[7, 8] = 8,
        parity: Literal["N", "E", "O"] = "E",
        stopbits: Literal[1, 2] = 1,
    ) -> None:
        """Answer on a serial device (the meters' end of the line).

        Raises:
            OSError: the device cannot be opened.
        """
        if self._serial is not None:
            raise RuntimeError("the serial end is already open")
        import serial  # pyserial comes with pymodbus[serial]; imported here, as only serial lines need it

        port = serial.Serial(
            port=device, baudrate=baudrate, bytesize=bytesize, parity=parity, stopbits=stopbits, timeout=0
        )
        self._serial = _SerialEnd(port, self, asyncio.get_running_loop())

    # ------------------------------------------------------------------------------------------- stop

    async def stop(self) -> None:
        """Stop listening, close every connection and the serial device."""
        if self._serial is not None:
            self._serial.close()
            self._serial = None
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None


class _SerialEnd:
    """The meters' side of a serial line, driven by the event loop."""

    def __init__(self, port: object, server: Dlt645MeterServer, loop: asyncio.AbstractEventLoop) -> None:
        self._port = port
        self._server = server
        self._loop = loop
        self._fd: int = port.fileno()  # type: ignore[attr-defined]  # a serial.Serial (pyserial is untyped)
        os.set_blocking(self._fd, False)
        self._frames = FrameBuffer()
        self._reading = True
        loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 512)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # the other end went away
            log.debug("serial end closed: %s", exc)
            self._stop_reading()
            return
        self._frames.feed(data)
        for reply in self._server._answers(self._frames):
            with contextlib.suppress(BlockingIOError):  # a full output buffer loses the reply, as on a line
                os.write(self._fd, reply)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def close(self) -> None:
        self._stop_reading()
        self._port.close()  # type: ignore[attr-defined]
