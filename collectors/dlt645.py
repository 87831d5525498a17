"""DL/T 645-2007 collector: one bus (an RS-485 line, or a serial device server over TCP) and its meters.

The frame codec is here too; the simulator (:mod:`energymon.simulators.dlt645_meter`) uses it as well.

Frame format (DL/T 645-2007 §4, all multi-byte fields least significant byte first)::

    [FE FE FE FE]  68  A0 A1 A2 A3 A4 A5  68  C  L  DATA(L bytes, each +33H)  CS  16

* ``FE`` × 0–4: wake-up preamble, sent before a frame and skipped by receivers;
* ``A0..A5``: the meter address, 12 BCD digits, low byte first (``123456789012`` → ``12 90 78 56 34 12``);
* ``C``: control code. Bit 7 is the direction (1 = reply), bit 6 an abnormal reply, bit 5 "follow-up frames",
  bits 4–0 the function: ``11H`` read data. Replies: ``91H`` normal, ``B1H`` normal with follow-up frames,
  ``D1H`` abnormal, whose one data byte is the error word (bit 0 other error, bit 1 no requested data,
  bit 2 password error / unauthorised, bit 3 baud rate cannot change, bit 4–6 too many year zones / day
  periods / tariffs);
* ``CS``: the sum of every byte from the first ``68H`` through DATA, modulo 256.

A read request carries the data identifier DI0 DI1 DI2 DI3 (the DI ``00010000`` is sent ``00 00 01 00``);
the reply carries the DI followed by the value in BCD, least significant byte first. A signed value has its
sign in the top bit of its most significant byte. :data:`ITEM_FORMATS` lists the items this collector reads,
with their length, decimals and sign; an item outside it is refused when the collector is built, never in the
poll loop.

Failure handling mirrors :mod:`energymon.collectors.modbus` (the shared part is in
:mod:`energymon.collectors.polling`):

* each item is one request (DL/T 645 reads one DI per request), answered within ``bus.timeout_ms`` and sent
  again up to ``bus.retries`` times when nothing (or a reply with a bad checksum) came back;
* a meter that does not answer an item has failed this poll: its remaining items are not requested, and the
  items not read are quality-bad points (items already read keep their values);
* an abnormal reply (``D1H``) or a value that is not BCD concerns one item: that point is bad, the meter stays
  up; the item's failure is logged once at WARNING, its recovery once at INFO;
* a meter whose last poll failed is read after the meters that answer, only in the time left before the
  bus's next tick; after ``fail_threshold`` failed polls in a row it is probed with one request and no retries
  every ``polling.probe_interval_secs`` (between ticks too);
* a socket or serial error closes the link; the next read reopens it, and a failed open waits a capped
  exponential back-off with jitter, during which the meters fail at once, without a request.

Stray frames are ignored: our own request echoed on the line, replies from another address, and late replies
for another DI (sent after we had given up on them). Input waiting before a request is discarded.

A serial line is driven through pyserial with the file descriptor registered on the event loop (POSIX only);
a TCP link through an asyncio connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from energymon import units
from energymon.collectors.polling import DeviceHealth, OpenFailedError, PollingCollector, PollPolicy, bad_points
from energymon.config import Dlt645SerialBus, Dlt645Source, Dlt645TcpBus, Meter
from energymon.errors import (
    DecodeError,
    DeviceExceptionError,
    DeviceTimeoutError,
    SourceError,
)
from energymon.interfaces import Clock
from energymon.metrics import PipelineMetrics
from energymon.schema import Point, Quality

__all__ = [
    "BROADCAST_ADDRESS",
    "CONTROL_READ",
    "CONTROL_READ_ABNORMAL",
    "CONTROL_READ_REPLY",
    "CONTROL_READ_REPLY_MORE",
    "ERR_NO_DATA",
    "ERR_OTHER",
    "ERR_UNAUTHORISED",
    "ITEM_FORMATS",
    "Dlt645Bus",
    "Dlt645Collector",
    "Dlt645Policy",
    "Frame",
    "FrameBuffer",
    "FrameError",
    "ItemFormat",
    "build_frame",
    "build_read_request",
    "check_source",
    "decode_frame",
    "decode_value",
    "di_bytes",
    "encode_address",
    "encode_value",
    "error_text",
    "parse_read_reply",
]

log = logging.getLogger(__name__)

Dlt645Bus = Dlt645SerialBus | Dlt645TcpBus

START = 0x68
END = 0x16
PREAMBLE = b"\xfe\xfe\xfe\xfe"
OFFSET = 0x33
#: Broadcast address; DL/T 645 allows it for time sync and similar commands, not for reads.
BROADCAST_ADDRESS = "999999999999"

CONTROL_READ = 0x11
CONTROL_READ_REPLY = 0x91
CONTROL_READ_REPLY_MORE = 0xB1
CONTROL_READ_ABNORMAL = 0xD1

ERR_OTHER = 0x01
ERR_NO_DATA = 0x02
ERR_UNAUTHORISED = 0x04

_ERROR_BITS = (
    (0x01, "other error"),
    (0x02, "no requested data"),
    (0x04, "password error or unauthorised"),
    (0x08, "baud rate cannot be changed"),
    (0x10, "too many year time zones"),
    (0x20, "too many day time periods"),
    (0x40, "too many tariffs"),
)

_MIN_FRAME = 12  # 68 A0..A5 68 C L CS 16 with no data
_MAX_BUFFER = 1024


def error_text(error: int) -> str:
    """Describe an abnormal reply's error word (several bits may be set)."""
    names = [name for bit, name in _ERROR_BITS if error & bit]
    return ", ".join(names) if names else "unknown error"


# --------------------------------------------------------------------------------------------- data items


@dataclass(frozen=True, slots=True)
class ItemFormat:
    """How one data item is encoded.

    Attributes:
        name: the item's name in the standard (正向有功总电能).
        length: bytes of the value (after the 4 DI bytes).
        decimals: implied decimal places (``XXXXXX.XX`` → 2).
        signed: the top bit of the most significant byte is the sign (1 = negative).
        unit: the unit the standard gives the value in.
    """

    name: str
    length: int
    decimals: int
    signed: bool
    unit: str

    @property
    def max_raw(self) -> int:
        """Largest magnitude as an integer of the BCD digits (the sign bit leaves 0–7 for the top digit)."""
        digits = 2 * self.length
        return int(8 * 10 ** (digits - 1) - 1 if self.signed else 10**digits - 1)

    @property
    def max_value(self) -> float:
        """Largest magnitude the item can show."""
        return float(self.max_raw / 10**self.decimals)


def _item_table() -> dict[str, ItemFormat]:
    table: dict[str, ItemFormat] = {}
    # energy, XXXXXX.XX in 4 bytes; combined (组合) totals may be negative, the others may not
    for code, name, unit, signed in (
        ("00", "组合有功", "kWh", True),
        ("01", "正向有功", "kWh", False),
        ("02", "反向有功", "kWh", False),
        ("03", "组合无功1", "kvarh", True),
        ("04", "组合无功2", "kvarh", True),
    ):
        table[f"00{code}0000"] = ItemFormat(f"{name}总电能", 4, 2, signed, unit)
        for tariff in range(1, 5):
            table[f"00{code}{tariff:02X}00"] = ItemFormat(f"{name}费率{tariff}电能", 4, 2, signed, unit)
    for code, quadrant in (("05", "第一"), ("06", "第二"), ("07", "第三"), ("08", "第四")):
        table[f"00{code}0000"] = ItemFormat(f"{quadrant}象限无功总电能", 4, 2, False, "kvarh")
    # instantaneous values
    for phase, pcode in (("A", 1), ("B", 2), ("C", 3)):
        table[f"0201{pcode:02X}00"] = ItemFormat(f"{phase}相电压", 2, 1, False, "V")
        table[f"0202{pcode:02X}00"] = ItemFormat(f"{phase}相电流", 3, 3, True, "A")
    for code, what, unit in (("03", "有功功率", "kW"), ("04", "无功功率", "kvar"), ("05", "视在功率", "kVA")):
        table[f"02{code}0000"] = ItemFormat(f"瞬时总{what}", 3, 4, True, unit)
        for phase, pcode in (("A", 1), ("B", 2), ("C", 3)):
            table[f"02{code}{pcode:02X}00"] = ItemFormat(f"瞬时{phase}相{what}", 3, 4, True, unit)
    table["02060000"] = ItemFormat("总功率因数", 2, 3, True, "pf")
    for phase, pcode in (("A", 1), ("B", 2), ("C", 3)):
        table[f"0206{pcode:02X}00"] = ItemFormat(f"{phase}相功率因数", 2, 3, True, "pf")
    table["02800001"] = ItemFormat("零线电流", 3, 3, True, "A")
    table["02800002"] = ItemFormat("电网频率", 2, 2, False, "Hz")
    table["02800003"] = ItemFormat("一分钟有功总平均功率", 3, 4, True, "kW")
    table["02800004"] = ItemFormat("当前有功需量", 3, 4, True, "kW")
    table["02800005"] = ItemFormat("当前无功需量", 3, 4, True, "kvar")
    table["02800006"] = ItemFormat("当前视在需量", 3, 4, True, "kVA")
    table["02800007"] = ItemFormat("表内温度", 2, 1, True, "degC")
    return table


#: The data items this collector reads: DI (DI3..DI0 as 8 upper-case hex digits) → format.
ITEM_FORMATS: dict[str, ItemFormat] = _item_table()


def check_source(source: Dlt645Source) -> list[tuple[str, str]]:
    """Check a DL/T 645 source against what this collector can read.

    Returns:
        ``(key path below the source, message)`` for each problem: a broadcast address, a DI that is not in
        :data:`ITEM_FORMATS`, a unit of another dimension than the item's (``V`` for an energy).
    """
    issues: list[tuple[str, str]] = []
    if source.address == BROADCAST_ADDRESS:
        issues.append(("address", f"{BROADCAST_ADDRESS} is the broadcast address; reads need the meter's"))
    for j, item in enumerate(source.items):
        di = item.di.upper()
        fmt = ITEM_FORMATS.get(di)
        if fmt is None:
            issues.append((
                f"items[{j}].di",
                f"DI {di} ({item.quantity}) is not a supported DL/T 645-2007 item "
                "(see ITEM_FORMATS in energymon.collectors.dlt645 and collectors/dlt645.md)",
            ))
            continue
        have, want = units.dimension(item.unit), units.dimension(fmt.unit)
        if have != want:
            issues.append((
                f"items[{j}].unit",
                f"DI {di} ({fmt.name}) is a {want} in {fmt.unit}; unit {item.unit!r} is a {have}",
            ))
    return issues


# --------------------------------------------------------------------------------------------- codec


class FrameError(ValueError):
    """Bytes that are not a valid DL/T 645 frame (bad checksum, missing end mark, wrong length)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame.

    Attributes:
        address: the address as printed on the meter (A5 first), 12 hex digits.
        control: the control code C.
        data: the data field with the 33H offset removed.
    """

    address: str
    control: int
    data: bytes

    @property
    def is_reply(self) -> bool:
        """Sent by a meter (direction bit 7 set)."""
        return bool(self.control & 0x80)

    @property
    def abnormal(self) -> bool:
        """An abnormal reply (bit 6): the data is the error word."""
        return bool(self.control & 0x40)

    @property
    def follow_up(self) -> bool:
        """More frames follow (bit 5)."""
        return bool(self.control & 0x20)

    @property
    def function(self) -> int:
        """The function code (bits 4–0): 11H read data."""
        return self.control & 0x1F


def encode_address(address: str) -> bytes:
    """``"123456789012"`` → ``12 90 78 56 34 12`` (low byte first).

    Raises:
        ValueError: not 12 hex digits.
    """
    if len(address) != 12:
        raise ValueError(f"address {address!r} is not 12 digits")
    try:
        return bytes.fromhex(address)[::-1]
    except ValueError:
        raise ValueError(f"address {address!r} is not 12 digits") from None


def di_bytes(di: str) -> bytes:
    """``"00010000"`` → ``00 00 01 00`` (DI0 first), without the 33H offset.

    Raises:
        ValueError: not 8 hex digits.
    """
    if len(di) != 8:
        raise ValueError(f"DI {di!r} is not 8 hex digits")
    try:
        return bytes.fromhex(di)[::-1]
    except ValueError:
        raise ValueError(f"DI {di!r} is not 8 hex digits") from None


def build_frame(address: str, control: int, data: bytes = b"", *, preamble: bool = True) -> bytes:
    """Encode a frame; ``data`` is given without the 33H offset, which is added here.

    Raises:
        ValueError: bad address, control code out of range or data longer than 255 bytes.
    """
    if not 0 <= control <= 0xFF:
        raise ValueError(f"control code {control} out of range")
    if len(data) > 0xFF:
        raise ValueError(f"data of {len(data)} bytes does not fit a frame")
    body = bytearray((START, *encode_address(address), START, control, len(data)))
    body += bytes((b + OFFSET) & 0xFF for b in data)
    body += bytes((sum(body) & 0xFF, END))
    return (PREAMBLE if preamble else b"") + bytes(body)


def build_read_request(address: str, di: str, *, preamble: bool = True) -> bytes:
    """The read-data request (control 11H) for one item of one meter."""
    return build_frame(address, CONTROL_READ, di_bytes(di), preamble=preamble)


class FrameBuffer:
    """Reassembles frames from a byte stream: skips preambles and noise, waits for frames split across reads.

    Example::

        >>> buf = FrameBuffer()
        >>> raw = build_read_request("123456789012", "00010000")
        >>> buf.feed(b"noise" + raw[:7])
        >>> buf.next_frame() is None
        True
        >>> buf.feed(raw[7:])
        >>> buf.next_frame()
        Frame(address='123456789012', control=17, data=b'\\x00\\x00\\x01\\x00')
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data
        if len(self._buf) > _MAX_BUFFER:  # noise with no frame in it: keep the tail, where a frame may start
            del self._buf[: len(self._buf) - _MAX_BUFFER // 2]

    def clear(self) -> None:
        """Forget everything received so far."""
        self._buf.clear()

    def next_frame(self) -> Frame | None:
        """Take the first complete frame out of the buffer.

        Bytes before it are dropped. A candidate that is still incomplete is kept, unless a complete frame
        follows it (then it was noise).

        Returns:
            The frame, or None while no complete frame has arrived.

        Raises:
            FrameError: a complete frame (start marks, length and end mark in place) has a bad checksum; it is
                removed from the buffer.
        """
        buf = self._buf
        keep_from: int | None = None
        pos = buf.find(START)
        while pos >= 0:
            if len(buf) - pos < _MIN_FRAME:
                keep_from = pos if keep_from is None else keep_from
                break
            if buf[pos + 7] == START:
                end = pos + _MIN_FRAME + buf[pos + 9]
                if end > len(buf):
                    keep_from = pos if keep_from is None else keep_from
                elif buf[end - 1] == END:
                    checksum = sum(buf[pos : end - 2]) & 0xFF
                    frame_bytes = bytes(buf[pos:end])
                    del buf[:end]
                    if checksum != frame_bytes[-2]:
                        got, hexed = frame_bytes[-2], frame_bytes.hex(" ")
                        raise FrameError(f"checksum {got:02X}H, computed {checksum:02X}H in {hexed}")
                    return Frame(
                        address=frame_bytes[6:0:-1].hex().upper(),
                        control=frame_bytes[8],
                        data=bytes((b - OFFSET) & 0xFF for b in frame_bytes[10:-2]),
                    )
            pos = buf.find(START, pos + 1)
        del buf[: len(buf) if keep_from is None else keep_from]
        return None


def decode_frame(raw: bytes) -> Frame:
    """Decode one complete frame (a preamble and leading noise are skipped).

    Raises:
        FrameError: no complete frame, a bad checksum, or bytes after the frame.
    """
    buf = FrameBuffer()
    buf.feed(raw)
    frame = buf.next_frame()
    if frame is None:
        raise FrameError(f"no complete frame in {raw.hex(' ')}")
    if len(buf):
        raise FrameError(f"{len(buf)} byte(s) after the frame in {raw.hex(' ')}")
    return frame


def decode_value(raw: bytes, fmt: ItemFormat) -> float:
    """BCD value bytes (low byte first, offset already removed) → number.

    Raises:
        ValueError: wrong length, or a digit that is not BCD (meters send EE/FF for "no value").
    """
    if len(raw) != fmt.length:
        raise ValueError(f"{len(raw)} value byte(s), {fmt.name} has {fmt.length}")
    body = bytearray(raw)
    negative = bool(fmt.signed and body[-1] & 0x80)
    if negative:
        body[-1] &= 0x7F
    digits = body[::-1].hex()
    if not digits.isdigit():
        raise ValueError(f"value bytes {raw.hex(' ')} are not BCD")
    magnitude: float = int(digits) / 10**fmt.decimals  # one correctly rounded division: 1234567 → 12345.67
    return -magnitude if negative else magnitude


def encode_value(value: float, fmt: ItemFormat) -> bytes:
    """Number → BCD value bytes (low byte first, without the offset), rounded to the item's decimals.

    Raises:
        ValueError: the value does not fit (too large, negative for an unsigned item, not finite).
    """
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{fmt.name} cannot show {value}")
    raw = round(abs(value) * 10**fmt.decimals)
    negative = value < 0 and raw != 0
    if negative and not fmt.signed:
        raise ValueError(f"{fmt.name} is unsigned; cannot show {value}")
    if raw > fmt.max_raw:
        raise ValueError(f"{value} exceeds {fmt.name}'s range ±{fmt.max_value}")
    body = bytearray(bytes.fromhex(f"{raw:0{2 * fmt.length}d}")[::-1])
    if negative:
        body[-1] |= 0x80
    return bytes(body)


def parse_read_reply(frame: Frame, *, address: str, di: str, device: str) -> float:
    """Check a reply to a read of ``di`` from ``address`` and decode its value (without any scale).

    Raises:
        DeviceExceptionError: an abnormal reply; ``code`` is the error word.
        DecodeError: not a read reply from that meter for that DI, a wrong length or a value that is not BCD.
    """
    if not frame.is_reply or frame.function != CONTROL_READ:
        raise DecodeError(device, f"frame with control code {frame.control:02X}H is not a read reply")
    if frame.address != address:
        raise DecodeError(device, f"reply from address {frame.address}, expected {address}")
    if frame.abnormal:
        code = frame.data[0] if frame.data else 0
        raise DeviceExceptionError(
            device, code, f"abnormal reply to read of DI {di}: error {code:02X}H ({error_text(code)})"
        )
    fmt = ITEM_FORMATS.get(di)
    if fmt is None:
        raise DecodeError(device, f"DI {di} is not a supported item")
    if frame.data[:4] != di_bytes(di):
        raise DecodeError(device, f"reply is for DI {frame.data[3::-1].hex().upper()}, expected {di}")
    try:
        return decode_value(frame.data[4:], fmt)
    except ValueError as exc:
        raise DecodeError(device, f"reply to read of DI {di} ({fmt.name}): {exc}") from None


# --------------------------------------------------------------------------------------------- links


class _Link:
    """A byte pipe to the bus; received bytes accumulate in :attr:`frames`."""

    def __init__(self) -> None:
        self.frames = FrameBuffer()
        self.error: str | None = None  # set once the link broke
        self._arrived = asyncio.Event()

    def received(self, data: bytes) -> None:
        self.frames.feed(data)
        self._arrived.set()

    def broken(self, why: str) -> None:
        if self.error is None:
            self.error = why
        self._arrived.set()

    async def wait(self) -> None:
        """Wait until more bytes arrive or the link breaks (callers bound it with a timeout)."""
        self._arrived.clear()
        await self._arrived.wait()

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, link: _TcpLink) -> None:
        self._link = link

    def data_received(self, data: bytes) -> None:
        self._link.received(data)

    def eof_received(self) -> bool | None:
        self._link.broken("connection closed by the peer")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._link.broken(f"connection lost ({exc})" if exc else "connection closed")


class _TcpLink(_Link):
    """A TCP connection to a serial device server (transparent mode)."""

    def __init__(self) -> None:
        super().__init__()
        self._transport: asyncio.BaseTransport | None = None

    @classmethod
    async def open(cls, host: str, port: int, timeout: float) -> _TcpLink:
        link = cls()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            link._transport, _ = await loop.create_connection(lambda: _TcpProtocol(link), host, port)
        return link

    async def send(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or not isinstance(transport, asyncio.WriteTransport):
            raise ConnectionError(self.error or "connection closed")
        transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class _SerialLink(_Link):
    """A serial line opened with pyserial (settings) and driven by the event loop (non-blocking fd)."""

    def __init__(self, port: object, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._port = port
        self._fd = fd
        self._loop = loop
        self._reading = True
        loop.add_reader(fd, self._on_readable)

    @classmethod
    def open(cls, bus: Dlt645SerialBus) -> _SerialLink:
        import serial  # pyserial comes with pymodbus[serial]; imported here, as only serial buses need it

        port = serial.Serial(
            port=bus.device, baudrate=bus.baudrate, bytesize=bus.bytesize, parity=bus.parity,
            stopbits=bus.stopbits, timeout=0, exclusive=True,
        )
        try:
            port.reset_input_buffer()
            fd = port.fileno()
            os.set_blocking(fd, False)
            return cls(port, fd, asyncio.get_running_loop())
        except BaseException:
            port.close()
            raise

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 512)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._stop_reading()
            self.broken(f"serial read failed ({exc})")
            return
        if not data:
            self._stop_reading()
            self.broken("serial device closed")
            return
        self.received(data)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    async def send(self, data: bytes) -> None:
        if self.error is not None:
            raise ConnectionError(self.error)
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except (BlockingIOError, InterruptedError):
                written = 0
            except OSError as exc:
                self.broken(f"serial write failed ({exc})")
                raise ConnectionError(self.error) from None
            view = view[written:]
            if view:  # output buffer full (flow control, slow line): wait until the fd takes more
                await self._writable()

    async def _writable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_writer(self._fd, wake)
        try:
            await ready
        finally:
            self._loop.remove_writer(self._fd)

    def close(self) -> None:
        self._stop_reading()
        self._port.close()  # type: ignore[attr-defined]  # a serial.Serial (pyserial has no type hints)


# --------------------------------------------------------------------------------------------- collector


@dataclass(frozen=True, slots=True)
class Dlt645Policy(PollPolicy):
    """How a DL/T 645 bus reacts to failures: exactly :class:`~energymon.collectors.polling.PollPolicy`.

    The collector builds it from the bus's ``polling`` block; tests shorten the windows. ``reconnect_min_secs`` and
    ``reconnect_max_secs`` bound
    the wait between attempts to open the serial line or the TCP connection; ``timeouts_before_reconnect``
    applies to TCP links only.
    """


@dataclass(slots=True, eq=False)
class _Item:
    """One data item of a meter, with its request frame built once."""

    quantity: str
    unit: str
    di: str
    fmt: ItemFormat
    scale: float
    request: bytes
    di_raw: bytes
    failing: bool = False


@dataclass(slots=True, eq=False)
class _Device:
    """A meter on the bus: its address, items and failure state."""

    meter: Meter
    address: str
    items: list[_Item]
    health: DeviceHealth


class Dlt645Collector(PollingCollector[_Device, _Link]):
    """Collector for one DL/T 645-2007 bus.

    Lifecycle: :meth:`start` once (opens nothing; the first poll connects), :meth:`poll` once per tick of each
    poll group (requests are serialised by a lock), :meth:`stop` once at the end. Failure handling per meter and
    per bus is :class:`~energymon.collectors.polling.PollingCollector`'s; this class owns the DL/T 645 side:
    the link, one request per item, frames, abnormal replies and per-item failures.

    Args:
        bus: the bus configuration (serial line or TCP serial server).
        meters: the meters on this bus (``Dlt645Source`` meters of ``bus``).
        metrics: self-metrics, optional: ``device_up`` per meter, ``poll_duration`` per group, and for stage
            ``collector`` the points read with a value (``received``) and each failed read by error class.
        clock: event-time source; a point's ``ts_ms`` is the time its reply arrived.
        policy: failure handling (default: from the bus's ``polling`` block); see :class:`Dlt645Policy`.

    Raises:
        ValueError: a meter is not a DL/T 645 meter of this bus, two meters share an address, or a meter
            uses the broadcast address, an unsupported DI or a unit that does not fit its item; the message
            names the meter and the DI.
    """

    def __init__(
        self,
        bus: Dlt645Bus,
        meters: list[Meter],
        *,
        metrics: PipelineMetrics | None = None,
        clock: Clock | None = None,
        policy: Dlt645Policy | None = None,
    ) -> None:
        where = bus.device if isinstance(bus, Dlt645SerialBus) else f"{bus.host}:{bus.port}"
        super().__init__(
            bus.id, where, policy=policy or Dlt645Policy.for_bus(bus.polling), log=log, metrics=metrics,
            clock=clock, rebuild_on_timeouts=isinstance(bus, Dlt645TcpBus), timeout_ms=bus.timeout_ms,
            retries=bus.retries,
        )
        self._bus = bus
        self._timeout = bus.timeout_ms / 1000
        addresses: dict[str, str] = {}
        problems: list[str] = []
        for meter in meters:
            src = meter.source
            if not isinstance(src, Dlt645Source) or src.bus != bus.id:
                raise ValueError(f"meter {meter.id}: not a DL/T 645 meter of bus {bus.id}")
            issues = check_source(src)
            problems += [f"meter {meter.id}: source.{path}: {message}" for path, message in issues]
            if src.address in addresses:
                problems.append(
                    f"meter {meter.id}: address {src.address} on bus {bus.id} is already used by meter "
                    f"{addresses[src.address]}"
                )
            addresses.setdefault(src.address, meter.id)
            if issues:
                continue
            items = [
                _Item(
                    quantity=item.quantity,
                    unit=item.unit,
                    di=item.di.upper(),
                    fmt=ITEM_FORMATS[item.di.upper()],
                    scale=item.scale,
                    request=build_read_request(src.address, item.di.upper()),
                    di_raw=di_bytes(item.di.upper()),
                )
                for item in src.items
            ]
            health = self._new_health(meter.id, f"meter {meter.id} (address {src.address})")
            self._add_device(src.poll_group, _Device(meter=meter, address=src.address, items=items, health=health))
        if problems:
            raise ValueError("\n".join(problems))

    # ----------------------------------------------------------------------------------- one meter

    async def _query_device(self, dev: _Device) -> list[Point]:
        retries = dev.health.retries(self._bus.retries)
        points: list[Point] = []
        for pos, item in enumerate(dev.items):
            try:
                points.append(await self._read_item(dev, item, retries))
            except SourceError as exc:  # no answer, or the link failed: the meter failed this poll
                self._device_error(dev, exc)
                return points + self._bad_points(dev, dev.items[pos:])
        dev.health.ok()
        return points

    async def _read_item(self, dev: _Device, item: _Item, retries: int) -> Point:
        """Read one item. An abnormal reply or an undecodable value gives a bad point; no answer raises.

        Raises:
            DeviceTimeoutError: no answer after the retries.
            ConnectionLostError: the link failed.
        """
        meter_id = dev.meter.id
        value: float | None = None
        try:
            frame = await self._request(dev, item, retries)
            value = parse_read_reply(frame, address=dev.address, di=item.di, device=meter_id) * item.scale
        except (DeviceExceptionError, DecodeError) as exc:
            self._count_error(exc)
            if not item.failing:
                log.warning("%s on bus %s: item %s (DI %s) unavailable: %s", dev.health.label, self._bus.id,
                            item.quantity, item.di, exc)
                item.failing = True
        else:
            if item.failing:
                log.info("%s on bus %s: item %s (DI %s) recovered", dev.health.label, self._bus.id, item.quantity,
                         item.di)
                item.failing = False
        quality = Quality.BAD if value is None else Quality.GOOD
        return Point(meter=meter_id, quantity=item.quantity, value=value, unit=item.unit,
                     ts_ms=self._clock.now_ms(), quality=quality)

    async def _request(self, dev: _Device, item: _Item, retries: int) -> Frame:
        """Send one read with the retry policy; return the meter's reply frame (normal or abnormal).

        Raises:
            DeviceTimeoutError: no answer after the retries.
            DecodeError: only replies with a bad checksum came back.
            ConnectionLostError: the link failed.
        """
        what = f"read of DI {item.di} ({item.fmt.name})"
        attempts = 0
        while True:
            link = await self._connected()
            attempts += 1
            try:
                frame = await self._transact(link, dev, item, what)
            except FrameError as exc:  # noise on the line garbled the reply: ask again
                self._bus_health.answered()
                if attempts <= retries:
                    continue
                raise DecodeError(dev.meter.id, f"corrupt reply to {what}: {exc}") from None
            except TimeoutError:
                if not self._timed_out() and attempts <= retries:  # past the bus's limit it was dropped
                    continue
                within = f"within {self._bus.timeout_ms} ms ({attempts} attempt(s))"
                raise DeviceTimeoutError(dev.meter.id, f"no answer to {what} {within}") from None
            self._bus_health.answered()
            return frame

    async def _transact(self, link: _Link, dev: _Device, item: _Item, what: str) -> Frame:
        """One request and its reply, within the bus timeout (raises TimeoutError)."""
        link.frames.clear()  # a late reply to an earlier request must not be taken for this one
        async with asyncio.timeout(self._timeout):
            try:
                await link.send(item.request)
            except ConnectionError as exc:
                raise self._connection_broken(f"{what}: {exc}") from None
            while True:
                frame = link.frames.next_frame()
                if frame is None:
                    if link.error is not None:
                        raise self._connection_broken(f"{link.error} during {what} to {dev.address}")
                    await link.wait()
                    continue
                if (
                    frame.is_reply
                    and frame.function == CONTROL_READ
                    and frame.address == dev.address
                    and (frame.abnormal or frame.data[:4] == item.di_raw)
                ):
                    return frame
                log.debug("bus %s: ignoring a frame (address %s, control %02XH) while waiting for %s",
                          self._bus.id, frame.address, frame.control, dev.health.label)

    def _bad_points(self, dev: _Device, items: Sequence[_Item] | None = None) -> list[Point]:
        """Quality-bad points for ``items`` of ``dev`` (all of them by default)."""
        chosen = dev.items if items is None else items
        return bad_points(dev.meter.id, ((i.quantity, i.unit) for i in chosen), self._clock.now_ms())

    # ----------------------------------------------------------------------------------- the link

    async def _open(self) -> _Link:
        bus = self._bus
        try:
            if isinstance(bus, Dlt645TcpBus):
                return await _TcpLink.open(bus.host, bus.port, self._timeout)
            return _SerialLink.open(bus)
        except (OSError, TimeoutError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            raise OpenFailedError(f"cannot connect to {self._bus_health.where}: {reason}") from None

    def _alive(self, conn: _Link) -> bool:
        return conn.error is None

    def _close(self, conn: _Link) -> None:
        conn.close()
