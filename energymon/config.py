"""The plant configuration: one strict YAML format for the whole pipeline.

A plant file describes the enterprise, its processes (工序), the buses and meters the gateway reads, the products
and their energy boundaries, and how the stages connect (uplink broker, store, alert rules and notifiers).
Every model forbids unknown keys; units are part of field names (``timeout_ms``, ``interval_secs``).
Field checks live on the models; checks that span objects (duplicate ids, dangling references, register
overlaps) live in :mod:`energymon.validators`. :func:`load_plant` runs both and raises one
:class:`~energymon.errors.ConfigError` listing every problem with its file, line and key path.

Loading opens no connection.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterator
from datetime import date
from enum import IntEnum, StrEnum
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from energymon import (
    _model_docs,  # noqa: F401  # field docstrings read once per module
    units,
)
from energymon.accounting_config import AccountingConfig
from energymon.alerts_config import AlertsConfig, ThresholdRule, WebhookNotifier
from energymon.building_config import BuildingConfig
from energymon.errors import ConfigError, ConfigIssue
from energymon.provincial_config import ProvincialConfig
from energymon.schema import ID_PATTERN

__all__ = [
    "AlertsConfig",
    "Bus",
    "BusPolling",
    "DataType",
    "Dlt645Item",
    "Dlt645SerialBus",
    "Dlt645Source",
    "Dlt645TcpBus",
    "Enterprise",
    "GatewayConfig",
    "InfluxStoreConfig",
    "Meter",
    "MeteringLevel",
    "ModbusRtuBus",
    "ModbusRtuTcpBus",
    "ModbusSource",
    "ModbusTcpBus",
    "MqttBus",
    "MqttJsonField",
    "MqttJsonSource",
    "PlantConfig",
    "PollGroup",
    "Process",
    "ProcessorConfig",
    "ProcessorLimits",
    "Product",
    "Register",
    "RegisterFunction",
    "RegisterMap",
    "SqliteStoreConfig",
    "ThresholdRule",
    "UplinkConfig",
    "WebhookNotifier",
    "WordOrder",
    "load_plant",
    "parse_plant",
    "uscc_is_valid",
]

Id = Annotated[str, Field(pattern=ID_PATTERN)]
QuantityName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _known_unit(value: str) -> str:
    if not units.is_known(value):
        raise ValueError(f"unknown unit {value!r}; known units: {', '.join(units.UNITS)}")
    return value


Unit = Annotated[str, Field(min_length=1)]


def _check_scale(scale: float, kind: str) -> None:
    if not math.isfinite(scale) or scale == 0:
        raise ValueError(f"scale must be a finite number other than 0, not {scale}")
    if kind == "counter" and scale < 0:
        raise ValueError(f"a counter's scale must be positive, not {scale}: a negative scale turns every rise of "
                         "the counter into a fall")

# --------------------------------------------------------------------------- enterprise and structure

_USCC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def uscc_is_valid(code: str) -> bool:
    """Check an 18-character 统一社会信用代码 including its GB 32100-2015 check character."""
    if len(code) != 18 or any(c not in _USCC_CHARS for c in code):
        return False
    total = sum(_USCC_CHARS.index(c) * w for c, w in zip(code[:17], _USCC_WEIGHTS, strict=True))
    check = (31 - total % 31) % 31
    return _USCC_CHARS[check] == code[17]


class Enterprise(Strict):
    """The key energy-consuming unit (重点用能单位)."""

    uscc: str = Field(description="统一社会信用代码, 18 characters with a valid check character")
    name: str = Field(min_length=1)
    """registered name"""
    industry_code: str = Field(pattern=r"^[A-T]\d{2,4}$", description="GB/T 4754 code, e.g. C3011")
    timezone: str = "Asia/Shanghai"
    """IANA time zone; days, months and years are cut in it"""
    province: str | None = None
    """province key (selects the provincial 等价值 and grid factors)"""
    kind: Literal["industrial", "public_building", "public_institution"] = "industrial"
    """`industrial` (graded per unit of product), `public_building` (公共建筑) or `public_institution` (公共机构)"""

    @field_validator("uscc")
    @classmethod
    def _uscc(cls, value: str) -> str:
        if not uscc_is_valid(value):
            raise ValueError(f"{value!r} is not a valid 统一社会信用代码 (GB 32100-2015 check failed)")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @property
    def tz(self) -> ZoneInfo:
        """The plant's local time zone; periods (day, month, year) are cut in it."""
        return ZoneInfo(self.timezone)


class Process(Strict):
    """A process (工序) or a unit inside one; ``parent`` builds the enterprise → process → equipment tree."""

    id: Id
    """process id, used by meters and product boundaries"""
    name: str = ""
    """display name, e.g. 熟料烧成"""
    parent: Id | None = None
    """id of the enclosing process, for equipment inside a process"""


# --------------------------------------------------------------------------- register maps


class DataType(StrEnum):
    """Data type of a Modbus value."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BIT = "bit"

    @property
    def registers(self) -> int:
        """Number of 16-bit registers the type occupies (a bit occupies one register or one coil)."""
        return _REGISTERS[self]


_REGISTERS = {
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
    DataType.BIT: 1,
}


class WordOrder(StrEnum):
    """Byte and word order of multi-register values, named as the bytes of a 32-bit value arrive.

    ``ABCD`` big-endian (Modbus default); ``CDAB`` words swapped; ``BADC`` bytes swapped in each word;
    ``DCBA`` little-endian. For 64-bit values the same four orders apply to the four registers
    (``ABCD`` ≙ ABCDEFGH, ``CDAB`` ≙ GHEFCDAB, ``BADC`` ≙ BADCFEHG, ``DCBA`` ≙ HGFEDCBA).
    """

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


class RegisterFunction(StrEnum):
    """Modbus table a value is read from (function codes 1–4)."""

    COIL = "coil"  # FC 1
    DISCRETE_INPUT = "discrete_input"  # FC 2
    HOLDING = "holding"  # FC 3
    INPUT = "input"  # FC 4

    @property
    def function_code(self) -> int:
        """Modbus function code used to read this table."""
        return {"coil": 1, "discrete_input": 2, "holding": 3, "input": 4}[self.value]


class Register(Strict):
    """One value in a register map."""

    quantity: QuantityName
    """what the value measures, snake_case (e.g. `energy_active_import`, `power_active`)"""
    address: int = Field(ge=0, le=65535)
    """register (or coil) address as the map numbers it"""
    function: RegisterFunction = RegisterFunction.HOLDING
    """table read: coil (FC1), discrete_input (FC2), holding (FC3), input (FC4)"""
    type: DataType = DataType.FLOAT32
    """data type"""
    count: int | None = Field(default=None, description="registers occupied; must fit the type if given")
    bit: int | None = Field(default=None, ge=0, le=15, description="bit of a register, for type bit")
    order: WordOrder = WordOrder.ABCD
    """byte/word order: `ABCD` big-endian, `CDAB` word-swapped, `BADC` byte-swapped, `DCBA` little-endian"""
    scale: float = 1.0
    """engineering value = raw × scale + offset"""
    offset: float = 0.0
    """added after scaling"""
    unit: Unit
    """unit of the engineering value (see units)"""
    kind: Literal["counter", "gauge"] = "gauge"
    """`counter` for cumulative totals (energy, volume, mass), `gauge` for instantaneous values"""
    counter_max: float | None = Field(default=None, gt=0, description="value after which a counter rolls over")

    _check_unit = field_validator("unit")(classmethod(lambda cls, v: _known_unit(v)))

    @field_validator("count")
    @classmethod
    def _count_fits(cls, value: int | None, info: ValidationInfo) -> int | None:
        dtype = info.data.get("type")
        if value is not None and isinstance(dtype, DataType) and value != dtype.registers:
            raise ValueError(
                f"count {value} does not fit type {dtype.value}, which occupies {dtype.registers} register(s)"
            )
        return value

    @model_validator(mode="after")
    def _fits(self) -> Register:
        bit_table = self.function in (RegisterFunction.COIL, RegisterFunction.DISCRETE_INPUT)
        if bit_table and self.type is not DataType.BIT:
            raise ValueError(f"function {self.function.value} reads single bits: type must be bit")
        if self.bit is not None and (self.type is not DataType.BIT or bit_table):
            raise ValueError("bit applies only to type bit on holding or input registers")
        if self.type is DataType.BIT and not bit_table and self.bit is None:
            raise ValueError("type bit on a register needs bit: 0..15")
        _check_scale(self.scale, self.kind)
        if self.address + self.type.registers - 1 > 65535:
            raise ValueError("value runs past register 65535")
        return self

    @property
    def width(self) -> int:
        """Registers (or coils) occupied."""
        return self.type.registers


class RegisterMap(Strict):
    """A named register map: a meter model from the library or defined in the plant file."""

    name: str = ""
    """meter model name"""
    manufacturer: str = ""
    """manufacturer"""
    source: str = Field(default="", description="where the map comes from (manual, document, URL)")
    addressing: Literal["zero_based", "one_based"] = "zero_based"
    """`one_based` when the manual numbers registers from 1"""
    registers: list[Register] = Field(min_length=1)
    """the values to read"""


# --------------------------------------------------------------------------- buses


class BusPolling(Strict):
    """How a polled bus schedules meters that fail (the same for Modbus and DL/T 645 buses).

    On every tick the meters that answer are read first; a meter whose last poll failed is read after them, in
    the time left before the bus's next tick, so a dead meter never delays a healthy one. After
    ``fail_threshold`` failed polls in a row a meter is offline: it is probed (one request, no retries) every
    ``probe_interval_secs``, between ticks as well, whenever the bus has the time, so a meter that answers
    again is read within ``probe_interval_secs`` plus one probe. A bus that cannot be reached is connected
    again after a back-off that starts at ``reconnect_backoff_first_secs`` and doubles (with jitter) up to
    ``reconnect_backoff_max_secs``.
    """

    fail_threshold: int = Field(default=3, ge=1, le=100)
    """failed polls in a row after which a meter is offline and only probed"""
    probe_interval_secs: float = Field(default=10.0, gt=0, le=3600)
    """how often an offline meter is probed (in the bus's spare time)"""
    reconnect_backoff_first_secs: float = Field(default=1.0, gt=0, le=3600)
    """wait before reconnecting to a bus that could not be reached"""
    reconnect_backoff_max_secs: float = Field(default=15.0, gt=0, le=3600)
    """cap of the reconnect wait, which doubles on each failed connect"""

    @model_validator(mode="after")
    def _ordered(self) -> BusPolling:
        if self.reconnect_backoff_first_secs > self.reconnect_backoff_max_secs:
            raise ValueError("reconnect_backoff_first_secs must not exceed reconnect_backoff_max_secs")
        return self


class ModbusTcpBus(Strict):
    """A Modbus TCP server or TCP gateway; several unit ids may sit behind it."""

    type: Literal["modbus_tcp"]
    id: Id
    """bus id"""
    host: str
    """host name or address"""
    port: int = Field(default=502, ge=1, le=65535)
    """TCP port"""
    timeout_ms: int = Field(default=1000, ge=10, le=60000)
    """time to wait for one answer"""
    retries: int = Field(default=1, ge=0, le=5)
    """extra tries after a timeout"""
    max_hole_registers: int = Field(
        default=10, ge=0, le=120,
        description="unused registers read to join two values into one request (0: only registers in the map, "
        "for devices that refuse reads across undefined ones); a meter's source can override it",
    )
    polling: BusPolling = Field(default_factory=lambda: BusPolling())
    """how meters that fail are scheduled and probed"""


class ModbusRtuTcpBus(Strict):
    """RTU frames over a transparent TCP link (serial device server)."""

    type: Literal["modbus_rtu_tcp"]
    id: Id
    """bus id"""
    host: str
    """serial server host"""
    port: int = Field(default=502, ge=1, le=65535)
    """TCP port"""
    timeout_ms: int = Field(default=1000, ge=10, le=60000)
    """time to wait for one answer"""
    retries: int = Field(default=1, ge=0, le=5)
    """extra tries after a timeout"""
    max_hole_registers: int = Field(
        default=10, ge=0, le=120,
        description="unused registers read to join two values into one request (0: only registers in the map, "
        "for devices that refuse reads across undefined ones); a meter's source can override it",
    )
    polling: BusPolling = Field(default_factory=lambda: BusPolling())
    """how meters that fail are scheduled and probed"""


class ModbusRtuBus(Strict):
    """RTU over a serial line (RS-485)."""

    type: Literal["modbus_rtu"]
    id: Id
    """bus id"""
    device: str = Field(description="serial device path, e.g. /dev/ttyUSB0")
    baudrate: int = 9600
    """line speed"""
    parity: Literal["N", "E", "O"] = "N"
    """parity"""
    stopbits: Literal[1, 2] = 1
    """stop bits"""
    bytesize: Literal[7, 8] = 8
    """data bits"""
    timeout_ms: int = Field(default=1000, ge=10, le=60000)
    """time to wait for one answer"""
    retries: int = Field(default=1, ge=0, le=5)
    """extra tries after a timeout"""
    max_hole_registers: int = Field(
        default=10, ge=0, le=120,
        description="unused registers read to join two values into one request (0: only registers in the map, "
        "for devices that refuse reads across undefined ones); a meter's source can override it",
    )
    polling: BusPolling = Field(default_factory=lambda: BusPolling())
    """how meters that fail are scheduled and probed"""


class TlsConfig(Strict):
    """TLS for an MQTT connection; paths are read when the connection starts.

    By default the broker's certificate chain is verified against ``ca_file`` (or the system's CA store) and
    its name against the host in the URL. ``check_hostname: false`` keeps the chain check and skips only the
    name; ``insecure_disable_verification: true`` verifies nothing (anyone on the path can pose as the broker)
    and is logged as a warning at every start.
    """

    ca_file: Path | None = None
    """CA certificate (PEM) that signed the broker's certificate"""
    cert_file: Path | None = None
    """client certificate (PEM)"""
    key_file: Path | None = None
    """client private key (PEM)"""
    check_hostname: bool = True
    """check that the broker's certificate names the host in the URL (false: the chain is still verified)"""
    insecure_disable_verification: bool = False
    """verify neither the certificate chain nor the host name (test set-ups only; logged as a warning)"""

    @model_validator(mode="before")
    @classmethod
    def _old_skip_verify(cls, data: Any) -> Any:
        if isinstance(data, dict) and "insecure_skip_verify" in data:
            raise ValueError(
                "insecure_skip_verify is no longer accepted (it disabled all certificate checks, not only the "
                "host name): use check_hostname: false to skip only the host-name check (the chain is still "
                "verified), or insecure_disable_verification: true to verify nothing"
            )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TlsConfig:
        if self.insecure_disable_verification and self.ca_file is not None:
            raise ValueError("insecure_disable_verification: true ignores ca_file: remove one of them")
        return self


def _check_mqtt_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("mqtt", "mqtts", "inproc"):
        raise ValueError(f"url {value!r}: scheme must be mqtt://, mqtts:// or inproc://")
    if parts.scheme != "inproc" and not parts.hostname:
        raise ValueError(f"url {value!r} has no host")
    return value


class MqttBus(Strict):
    """An MQTT broker that field devices publish to (``inproc://name`` for an in-process bus)."""

    type: Literal["mqtt"]
    id: Id
    """bus id"""
    url: str
    """`mqtt://host:port`, `mqtts://host:port` or `inproc://name`"""
    username: str | None = None
    """user name"""
    password_env: str | None = Field(default=None, description="name of the environment variable with the password")
    tls: TlsConfig | None = None
    """TLS settings (`mqtts://`)"""

    _url = field_validator("url")(classmethod(lambda cls, v: _check_mqtt_url(v)))


class Dlt645SerialBus(Strict):
    """DL/T 645-2007 meters on an RS-485 line (default 2400 baud, 8E1, as the standard specifies)."""

    type: Literal["dlt645_serial"]
    id: Id
    """bus id"""
    device: str = Field(description="serial device path, e.g. /dev/ttyUSB1")
    baudrate: int = 2400
    """line speed"""
    parity: Literal["N", "E", "O"] = "E"
    """parity"""
    stopbits: Literal[1, 2] = 1
    """stop bits"""
    bytesize: Literal[7, 8] = 8
    """data bits"""
    timeout_ms: int = Field(default=1500, ge=10, le=60000)
    """time to wait for one answer"""
    retries: int = Field(default=1, ge=0, le=5)
    """extra tries after a timeout"""
    polling: BusPolling = Field(default_factory=lambda: BusPolling())
    """how meters that fail are scheduled and probed"""


class Dlt645TcpBus(Strict):
    """DL/T 645-2007 frames over a transparent TCP link (serial device server)."""

    type: Literal["dlt645_tcp"]
    id: Id
    """bus id"""
    host: str
    """serial server host"""
    port: int = Field(ge=1, le=65535)
    """TCP port"""
    timeout_ms: int = Field(default=1500, ge=10, le=60000)
    """time to wait for one answer"""
    retries: int = Field(default=1, ge=0, le=5)
    """extra tries after a timeout"""
    polling: BusPolling = Field(default_factory=lambda: BusPolling())
    """how meters that fail are scheduled and probed"""


Bus = Annotated[
    ModbusTcpBus | ModbusRtuTcpBus | ModbusRtuBus | MqttBus | Dlt645SerialBus | Dlt645TcpBus,
    Field(discriminator="type"),
]

# --------------------------------------------------------------------------- meters


class MeteringLevel(IntEnum):
    """GB 17167 metering level: 1 = enterprise boundary, 2 = process, 3 = main equipment."""

    ENTERPRISE = 1
    PROCESS = 2
    EQUIPMENT = 3


class ModbusSource(Strict):
    """Read a meter over Modbus: a map from the library or the plant file (``model``) or inline registers."""

    type: Literal["modbus"]
    bus: Id
    """id of a Modbus bus"""
    unit_id: int = Field(default=1, ge=0, le=255)
    """Modbus unit (slave) id"""
    model: str | None = None
    """register map name: in `register_maps` or the meter library"""
    registers: list[Register] | None = None
    """inline register map (instead of `model`)"""
    addressing: Literal["zero_based", "one_based"] | None = None
    """overrides the map's addressing"""
    max_hole_registers: int | None = Field(default=None, ge=0, le=120)
    """overrides the bus's `max_hole_registers` for this meter (0: read only registers in the map)"""
    poll_group: Id = "default"
    """poll group id"""

    @model_validator(mode="after")
    def _one_map(self) -> ModbusSource:
        if (self.model is None) == (self.registers is None):
            raise ValueError("give exactly one of model (a register map name) or registers")
        return self


class MqttJsonField(Strict):
    """Where one quantity stands in a JSON payload (dotted path, e.g. ``data.flow_total``)."""

    path: str = Field(min_length=1)
    """dotted path of the value in the JSON payload"""
    quantity: QuantityName
    """quantity name"""
    unit: Unit
    """unit"""
    kind: Literal["counter", "gauge"] = "gauge"
    """`counter` or `gauge`"""
    scale: float = 1.0
    """multiplier"""
    counter_max: float | None = Field(default=None, gt=0)
    """value after which the counter rolls over"""

    _check_unit = field_validator("unit")(classmethod(lambda cls, v: _known_unit(v)))

    @model_validator(mode="after")
    def _scale_ok(self) -> MqttJsonField:
        _check_scale(self.scale, self.kind)
        return self


class MqttJsonSource(Strict):
    """A meter that publishes JSON on an MQTT topic."""

    type: Literal["mqtt_json"]
    bus: Id
    """id of an MQTT bus"""
    topic: str = Field(min_length=1)
    """topic the meter publishes on"""
    fields: list[MqttJsonField] = Field(min_length=1)
    """values to take from each payload"""
    timestamp_path: str | None = Field(default=None, description="dotted path of the event time; None = arrival")
    timestamp_format: Literal["epoch_ms", "epoch_s", "iso8601"] = "iso8601"
    """format of the event time"""

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if any(c in value for c in "+#") or "\x00" in value:
            raise ValueError("topic must be a concrete topic, without wildcards")
        return value


class Dlt645Item(Strict):
    """One DL/T 645-2007 data item: its data identifier (DI3..DI0 as 8 hex digits) and what it measures."""

    quantity: QuantityName
    """quantity name"""
    di: str = Field(pattern=r"^[0-9A-Fa-f]{8}$", description="data identifier, e.g. 00010000 = 正向有功总电能")
    unit: Unit
    """unit"""
    kind: Literal["counter", "gauge"] = "gauge"
    """`counter` or `gauge`"""
    scale: float = 1.0
    """multiplier (e.g. CT ratio)"""
    counter_max: float | None = Field(default=None, gt=0)
    """value after which the counter rolls over"""

    _check_unit = field_validator("unit")(classmethod(lambda cls, v: _known_unit(v)))

    @model_validator(mode="after")
    def _scale_ok(self) -> Dlt645Item:
        _check_scale(self.scale, self.kind)
        return self


class Dlt645Source(Strict):
    """Read a DL/T 645-2007 meter by its 12-digit address."""

    type: Literal["dlt645"]
    bus: Id
    """id of a DL/T 645 bus"""
    address: str = Field(pattern=r"^\d{12}$", description="meter address, 12 decimal digits as printed on the meter")
    items: list[Dlt645Item] = Field(min_length=1)
    """data items to read"""
    poll_group: Id = "default"
    """poll group id"""


Source = Annotated[ModbusSource | MqttJsonSource | Dlt645Source, Field(discriminator="type")]


class Meter(Strict):
    """An energy meter or a production counter.

    ``carrier`` names the energy carrier (a key of the standard-coal coefficient table); a production counter has
    no carrier. ``counter`` names the cumulative quantity the accounting turns into interval energy or output.
    """

    id: Id
    """meter id, unique in the plant"""
    name: str = ""
    """display name"""
    carrier: str | None = None
    """energy carrier, a key of the standard-coal table (`electricity`, `raw_coal`, ...); none for output"""
    level: MeteringLevel | None = None
    """GB 17167 metering level: 1 enterprise boundary, 2 process, 3 main equipment"""
    process: Id | None = None
    """process the meter belongs to"""
    counter: QuantityName | None = None
    """the cumulative quantity turned into interval consumption (or output)"""
    max_rate_per_hour: float | None = Field(
        default=None, gt=0, description="plausibility bound: largest counter increase per hour, in the counter's unit"
    )
    calibration_due: date | None = None
    """next calibration date"""
    source: Source
    """how the meter is read: one of the `meters[].source` types below"""


# --------------------------------------------------------------------------- products


class OutputRef(Strict):
    """The counter that measures a product's output."""

    meter: Id
    """meter id"""
    quantity: QuantityName
    """its cumulative quantity"""


class Boundary(Strict):
    """Which meters count toward a product: all meters of the listed processes, or an explicit list."""

    processes: list[Id] = Field(default_factory=list)
    """processes inside the boundary (per process and carrier, only the top metering level present counts)"""
    meters: list[Id] = Field(default_factory=list)
    """meters inside the boundary, in addition"""

    @model_validator(mode="after")
    def _not_empty(self) -> Boundary:
        if not self.processes and not self.meters:
            raise ValueError("a boundary lists processes or meters")
        return self


class Product(Strict):
    """A product whose 单位产品综合能耗 is computed and graded."""

    id: Id
    """product id"""
    name: str = ""
    """display name, e.g. 水泥熟料"""
    unit: Unit = "t"
    """unit of output"""
    output: OutputRef
    """the counter measuring output"""
    indicator: str = Field(description="indicator id in the benchmark reference data, e.g. cement_clinker")
    boundary: Boundary
    """the meters whose energy counts toward the product"""

    _check_unit = field_validator("unit")(classmethod(lambda cls, v: _known_unit(v)))


# --------------------------------------------------------------------------- stages


class PollGroup(Strict):
    """Meters polled together, aligned to the wall clock every ``interval_secs``."""

    id: Id
    """group id"""
    interval_secs: float = Field(gt=0, le=86400)
    """poll interval; polls are aligned to multiples of it"""


class UplinkConfig(Strict):
    """The broker a gateway publishes to and processors subscribe from."""

    url: str = "mqtt://127.0.0.1:1883"
    """`mqtt://host:port`, `mqtts://host:port` or `inproc://name`"""
    username: str | None = None
    """user name"""
    password_env: str | None = None
    """environment variable holding the password"""
    tls: TlsConfig | None = None
    """TLS settings"""
    keepalive_secs: int = Field(default=30, ge=5, le=3600)
    """MQTT keep-alive"""
    compress: bool = False
    """zlib-deflate batches (weak links)"""

    _url = field_validator("url")(classmethod(lambda cls, v: _check_mqtt_url(v)))


class GatewayConfig(Strict):
    """The edge gateway: what it polls, how it batches, how its outbox is bounded, what it keeps locally.

    The outbox defaults hold six months of 15-minute data for 1,000 data items: 1,000 × 96/day × 183 days
    ≈ 17.6 M points at a measured 9.4 bytes per point stored (zlib-deflated 1,000-point batches) ≈ 165 MB;
    256 MiB leaves room for smaller batches (13.8 bytes a point in 100-point batches: 242 MB). Measured in
    tests/test_gateway_outbox.py; see docs/ARCHITECTURE.md, section Gateway.
    """

    id: Id = "gw1"
    """gateway id, part of every topic"""
    poll_groups: list[PollGroup] = Field(default_factory=lambda: [PollGroup(id="default", interval_secs=15)])
    """poll groups"""
    batch_max_points: int = Field(default=2000, ge=1, le=100000)
    """largest number of points in one published batch"""
    outbox_max_bytes: int = Field(default=268_435_456, ge=65_536)
    """bound on the outbox's used bytes (256 MiB: six months of 15-minute data for 1,000 items)"""
    outbox_max_age_days: float = Field(default=183, gt=0, le=3660)
    """batches older than this are dropped (reason `max_age`), whatever the policy"""
    overflow_policy: Literal["drop_oldest", "reduce_fidelity", "refuse_new"] = "reduce_fidelity"
    """at `outbox_max_bytes`: `drop_oldest`, `reduce_fidelity` (thin old gauges, keep counters) or `refuse_new`"""
    time_tolerance_secs: float = Field(default=300, gt=0, le=86400 * 366)
    """readings further than this (real time) from the gateway's clock go to the outbox's quarantine, not the uplink"""
    outbox_on_corrupt: Literal["stop", "move_aside"] = "stop"
    """a corrupt outbox or history file: `stop` with an error, or `move_aside` to `<file>.corrupt-<time>`"""
    history_retention_days: int = Field(default=183, ge=0, le=3660)
    """days of 15-minute, hourly, daily and monthly values kept in the edge history (0: none)"""


class InfluxStoreConfig(Strict):
    """InfluxDB (1.x, 2.x) or VictoriaMetrics: line protocol in, InfluxQL or VictoriaMetrics' query API out."""

    type: Literal["influxdb"]
    url: str
    """base URL of InfluxDB or VictoriaMetrics"""
    api: Literal["v2", "v1"] = "v2"
    """write API: `v2` posts to `/api/v2/write` (InfluxDB 2.x, 1.8+, VictoriaMetrics); `v1` to `/write?db=` (InfluxDB
    1.x, whose 1.7 and older have no `/api/v2/write`)"""
    server: Literal["auto", "influxdb", "victoriametrics"] = "auto"
    """how reads go: `influxdb` is InfluxQL over `/query` (InfluxDB 1.x, 2.x through a DBRP mapping, 3);
    `victoriametrics` its `/api/v1/export` and query API; `auto` tells them apart by `/ping`"""
    org: str = "energymon"
    """organisation (`api: v2`)"""
    bucket: str = "energymon"
    """bucket (`api: v2`)"""
    database: str | None = Field(default=None, min_length=1)
    """InfluxQL database: the `/write` target with `api: v1`, and what `/query` reads (on InfluxDB 2 the database
    of the bucket's DBRP mapping); default: the bucket name"""
    retention_policy: str | None = Field(default=None, min_length=1)
    """retention policy written and read (`api: v1` and InfluxQL); default: the database's default policy"""
    token_env: str | None = Field(
        default=None,
        description="environment variable holding the API token (InfluxDB 1.x with auth: `user:password`)",
    )
    batch_max_points: int = Field(default=5000, ge=1, le=100000)
    """lines per HTTP write"""
    flush_interval_ms: int = Field(default=50, ge=1, le=60000)
    """longest time rows wait before a write"""
    timeout_ms: int = Field(default=10000, ge=100, le=120000)
    """HTTP timeout"""
    retention_days: float | None = Field(default=None, gt=0)
    """how long the store keeps samples, when it cannot be read from the store (VictoriaMetrics' retention is
    read from its `/metrics`, InfluxDB 2's from the bucket, 1.x's from the retention policy); points older are set
    aside, not written"""


class SqliteStoreConfig(Strict):
    """The embedded store: one SQLite file (the demo and plants without a TSDB)."""

    type: Literal["sqlite"]
    path: Path
    """database file"""

    @field_validator("path", mode="before")
    @classmethod
    def _a_file(cls, value: Any) -> Any:
        if not isinstance(value, str | Path):
            return value
        text = str(value)
        path = Path(text)
        if not text.strip():
            raise ValueError("path is empty: give the database file, e.g. /var/lib/energymon/energymon.sqlite")
        if text.endswith(("/", "\\")) or path.name in ("", ".", "..") or path.is_dir():
            raise ValueError(f"path {text!r} is a directory, not a database file: give e.g. "
                             "/var/lib/energymon/energymon.sqlite")
        return value


Store = Annotated[InfluxStoreConfig | SqliteStoreConfig, Field(discriminator="type")]


class ProcessorLimits(Strict):
    """Bounds on what the processor takes in from the broker (docs/ARCHITECTURE.md, "Trust boundary").

    The defaults fit batches of up to 20,000 points (about 2.3 MB of JSON at 116 bytes a point, 6 MB with the
    longest ids) and the broker limit shipped in deploy/mosquitto and deploy/emqx (8 MiB).
    """

    max_payload_bytes: int = Field(default=8_388_608, ge=1024, le=268_435_456)
    """largest batch taken in, as received and after decompression (decompression stops at this size); keep it
    at or above the broker's message size limit (8 MiB in the shipped broker configs)"""
    max_batch_points: int = Field(default=20_000, ge=1, le=1_000_000)
    """most points in one batch; a larger batch is set aside whole (at least `gateway.batch_max_points`)"""
    future_tolerance_secs: float = Field(default=3600, gt=0, le=172_800)
    """points stamped further ahead of the processor's clock are set aside (reason `future_timestamp`); at most
    2 days, the limit beyond which VictoriaMetrics drops samples without an error"""
    dead_letter_max_bytes: int = Field(default=67_108_864, ge=65_536)
    """the dead-letter file (`rejected-messages.jsonl`) is rotated when it would grow beyond this size"""
    dead_letter_files: int = Field(default=5, ge=1, le=100)
    """rotated dead-letter files kept (`.1` the newest); older ones are deleted"""
    payload_prefix_bytes: int = Field(default=4096, ge=64, le=1_048_576)
    """bytes of an unreadable payload kept in its dead-letter record and in memory (the rest is counted)"""


class ProcessorConfig(Strict):
    """The processor: where it reads batches from and writes points to."""

    share_group: Id | None = Field(default=None, description="MQTT v5 shared-subscription group for scale-out")
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    """MQTT client id of this processor instance (default `energymon-proc-{uscc}`, plus the host name with a
    `share_group`); keep it stable: the broker queues messages for it while it is down"""
    store: Store | None = None
    """where rows are written: one of the `processor.store` types below"""
    recompute_interval_s: int = Field(default=300, ge=0)
    """how often the running processor recomputes today, this month and this year from the stored readings (the
    `indicator` day/month/ytd/year rows, `acct_*` and `budget` rows the indicator and budget alert rules watch);
    0 turns the schedule off"""
    recompute_lookback_hours: float = Field(default=48.0, gt=0, le=24 * 31)
    """readings read before each recomputed period, so the intervals that cross its start are split correctly"""
    limits: ProcessorLimits = Field(default_factory=ProcessorLimits)
    """bounds on batches taken in, the accepted time window and the dead-letter file"""


# --------------------------------------------------------------------------- the plant


class PlantConfig(Strict):
    """The whole plant file."""

    version: Literal[1] = 1
    """format version of the plant file"""
    enterprise: Enterprise
    """the unit itself"""
    processes: list[Process] = Field(default_factory=list)
    """processes (工序) and their units"""
    register_maps: dict[Id, RegisterMap] = Field(default_factory=dict)
    """register maps defined in this file, by name (they take precedence over the meter library)"""
    buses: list[Bus] = Field(default_factory=list)
    """connections the gateway reads meters through (one of the `buses[]` types below)"""
    meters: list[Meter] = Field(default_factory=list)
    """energy meters and production counters"""
    products: list[Product] = Field(default_factory=list)
    """products whose 单位产品综合能耗 is computed and graded"""
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    """the edge gateway"""
    uplink: UplinkConfig = Field(default_factory=UplinkConfig)
    """the MQTT broker between gateway and processors"""
    processor: ProcessorConfig = Field(default_factory=ProcessorConfig)
    """the processor and its store"""
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    """alert rules and notifiers"""
    accounting: AccountingConfig = Field(default_factory=AccountingConfig)
    """energy-accounting settings (see the `accounting` sections below)"""
    provincial: ProvincialConfig | None = None
    """upload to the provincial online-monitoring platform (see the `provincial` sections below); none = off"""
    building: BuildingConfig | None = None
    """the building of a public building or public institution (see the `building` sections below)"""

    def meter(self, meter_id: str) -> Meter:
        """Return a meter by id (KeyError if absent)."""
        for m in self.meters:
            if m.id == meter_id:
                return m
        raise KeyError(meter_id)

    def bus(
        self, bus_id: str
    ) -> ModbusTcpBus | ModbusRtuTcpBus | ModbusRtuBus | MqttBus | Dlt645SerialBus | Dlt645TcpBus:
        """Return a bus by id (KeyError if absent)."""
        for b in self.buses:
            if b.id == bus_id:
                return b
        raise KeyError(bus_id)

    def register_map(self, source: ModbusSource) -> RegisterMap:
        """Resolve a Modbus source's registers: inline, a map in this file, or the meter library."""
        if source.registers is not None:
            return RegisterMap(registers=source.registers, addressing=source.addressing or "zero_based")
        assert source.model is not None
        found = self.register_maps.get(source.model)
        if found is None:
            from energymon.collectors.library import library_map

            found = library_map(source.model)
        if source.addressing and source.addressing != found.addressing:
            return found.model_copy(update={"addressing": source.addressing})
        return found

    def quantities(self, meter: Meter) -> dict[str, tuple[str, str, float | None]]:
        """Map quantity → (unit, kind, counter_max) for a meter."""
        src = meter.source
        if isinstance(src, MqttJsonSource):
            return {f.quantity: (f.unit, f.kind, f.counter_max) for f in src.fields}
        if isinstance(src, Dlt645Source):
            return {i.quantity: (i.unit, i.kind, i.counter_max) for i in src.items}
        regmap = self.register_map(src)
        return {r.quantity: (r.unit, r.kind, r.counter_max) for r in regmap.registers}


# --------------------------------------------------------------------------- loading


class _LineIndex:
    """Maps key paths of a YAML document to the line they start on."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line(self, loc: tuple[int | str, ...]) -> int | None:
        node = self.root
        best: int | None = node.start_mark.line + 1 if node is not None else None
        for part in loc:
            if node is None:
                break
            nxt: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                        nxt = value
                        best = key.start_mark.line + 1
                        break
                else:
                    continue  # a discriminator tag or model name in the loc: skip it
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                nxt = node.value[part]
                best = nxt.start_mark.line + 1
            else:
                continue
            node = nxt
        return best


def _render_loc(loc: tuple[int | str, ...], data: Any) -> str:
    """Render a pydantic loc as ``meters[2].source.registers[0].count``, dropping union tags."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
        else:
            if isinstance(node, dict) and part not in node:
                continue  # a union tag (e.g. 'modbus') pydantic inserts into the loc
            out += f".{part}" if out else part
            node = node.get(part) if isinstance(node, dict) else None
    return out


def _strip_type(tp: Any) -> Any:
    """``Annotated[X, ...]`` → X; ``X | None`` → X."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _type_at(loc: tuple[int | str, ...]) -> Any:
    """The model (or type) a pydantic loc points into, for "did you mean" on unknown keys; None if unknown."""
    tp: Any = PlantConfig
    for part in loc:
        tp = _strip_type(tp)
        origin = get_origin(tp)
        if origin in (Union, UnionType):  # a tagged union: the loc names the member by its tag
            match = None
            for member in get_args(tp):
                member = _strip_type(member)
                tagged = isinstance(member, type) and issubclass(member, BaseModel) and "type" in member.model_fields
                if tagged and part in get_args(member.model_fields["type"].annotation):
                    match = member
            if match is None:
                return None
            tp = match
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return None
            tp = field.annotation
        elif origin is list and isinstance(part, int):
            tp = get_args(tp)[0]
        elif origin is dict:
            tp = get_args(tp)[1]
        else:
            return None
    return _strip_type(tp)


def _did_you_mean(word: str, candidates: Iterator[str] | list[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _issues_from_validation(errors: list[Any], data: Any, index: _LineIndex) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for err in errors:
        loc = tuple(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent = _type_at(loc[:-1])
            known = list(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
            msg = "unknown key" + _did_you_mean(str(loc[-1]), known)
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif err["type"] == "union_tag_invalid":
            ctx = err.get("ctx") or {}
            tags = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
            msg = f"{msg}{_did_you_mean(str(ctx.get('tag', '')), tags)}"
        issues.append(ConfigIssue(_render_loc(loc, data), msg, index.line(loc)))
    return issues


#: Nesting deeper than this is refused before anything recurses into it (a plant file needs about 8).
MAX_YAML_DEPTH = 64
#: Nodes after expanding aliases, at most (a plant file of 10,000 meters has about 200,000).
MAX_YAML_NODES = 2_000_000
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: libyaml's loader when PyYAML was built with it (same results, several times faster).
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: Stand-ins for invalid required enterprise fields, so the cross-reference checks still run.
_STAND_INS: dict[tuple[str, str], str] = {
    ("enterprise", "uscc"): "91530102MA6K7LQ8RH", ("enterprise", "name"): "-",
    ("enterprise", "industry_code"): "C3011", ("enterprise", "timezone"): "Asia/Shanghai",
}


def _depth_issue(text: str) -> ConfigIssue | None:
    """Nesting deeper than :data:`MAX_YAML_DEPTH`, found from the event stream (no recursion)."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                mark = event.start_mark
                return ConfigIssue("", f"nested deeper than {MAX_YAML_DEPTH} levels: not a plant file",
                                   mark.line + 1 if mark is not None else None)
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1
    return None


def _node_issues(root: yaml.Node) -> list[ConfigIssue]:
    """Duplicate keys (naming both lines), control characters in any text, alias bombs and recursive aliases."""
    issues: list[ConfigIssue] = []
    sizes: dict[int, int] = {}
    busy: set[int] = set()
    stack: list[tuple[yaml.Node, str, bool]] = [(root, "", False)]
    while stack:
        node, path, done = stack.pop()
        key = id(node)
        children: list[tuple[yaml.Node, str]] = []
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                name = k.value if isinstance(k, yaml.ScalarNode) else "?"
                children.append((k, path))
                children.append((v, f"{path}.{name}" if path else str(name)))
        elif isinstance(node, yaml.SequenceNode):
            children = [(v, f"{path}[{i}]") for i, v in enumerate(node.value)]
        if done:
            busy.discard(key)
            sizes[key] = 1 + sum(sizes.get(id(c), 1) for c, _ in children)
            if sizes[key] > MAX_YAML_NODES:
                return [ConfigIssue(path, f"expands to more than {MAX_YAML_NODES:,} values through aliases",
                                    node.start_mark.line + 1)]
            continue
        if key in sizes:
            continue
        if key in busy:
            return [ConfigIssue(path, "an alias refers to its own anchor (a recursive structure)",
                                node.start_mark.line + 1)]
        busy.add(key)
        stack.append((node, path, True))
        if isinstance(node, yaml.ScalarNode):
            bad = _CONTROL.search(node.value)
            if bad:
                issues.append(ConfigIssue(path, f"contains the control character U+{ord(bad.group()):04X}",
                                          node.start_mark.line + 1))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for k, _ in node.value:
                if not isinstance(k, yaml.ScalarNode) or k.value == "<<":
                    continue
                line = k.start_mark.line + 1
                if k.value in first:
                    where = f"{path}.{k.value}" if path else k.value
                    issues.append(ConfigIssue(where, f"key {k.value!r} appears twice (lines {first[k.value]} and "
                                                     f"{line}): keep one", line))
                else:
                    first[k.value] = line
        for child, child_path in children:
            if id(child) not in sizes:
                stack.append((child, child_path, False))
    return issues


def _compose(text: str, file: str) -> tuple[yaml.Node | None, Any, list[ConfigIssue]]:
    """The YAML node tree, the plain data of ``text`` and its structural issues (duplicate keys, control
    characters); what cannot be loaded safely at all (bad YAML, too deep, alias bombs) raises ConfigError."""
    issues: list[ConfigIssue] = []
    try:
        deep = _depth_issue(text)
        if deep is not None:
            raise ConfigError(file, [deep])
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            if root is not None:
                issues = _node_issues(root)
                fatal = [i for i in issues if "alias" in i.message]
                if fatal:
                    raise ConfigError(file, fatal)
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(file, [ConfigIssue("", f"not valid YAML: {getattr(exc, 'problem', exc)}", line)]) from None
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise ConfigError(file, [ConfigIssue("", "nested too deeply: not a plant file")]) from None
    return root, data, issues


def _data_path(data: Any, loc: tuple[int | str, ...]) -> list[int | str]:
    """The keys of ``loc`` that exist in ``data`` (union tags pydantic adds are left out)."""
    out: list[int | str] = []
    node = data
    for part in loc:
        found = (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node))
        if found:
            out.append(part)
            node = node[part]
        elif isinstance(node, dict | list):
            continue
        else:
            break
    return out


class _Pruner:
    """Takes invalid parts out of a copy of the data so the rest can be validated and cross-checked.

    An element of a list is removed whole (its original index is remembered, so later paths are renumbered and
    references to its id are not reported as dangling); an invalid key elsewhere is removed (or, for required
    enterprise fields, given a stand-in), and issues inside removed parts are not reported again.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        import copy

        self.data = copy.deepcopy(data)
        self.alive: dict[tuple[int | str, ...], list[int]] = {}
        self.removed_ids: set[str] = set()
        self.removed_paths: list[str] = []

    def prune(self, locs: list[tuple[int | str, ...]]) -> bool:
        """Remove what ``locs`` point at; False when nothing could be removed."""
        by_list: dict[tuple[int | str, ...], set[int]] = {}
        keys: list[list[int | str]] = []
        for loc in locs:
            path = _data_path(self.data, loc)
            k = next((i for i, part in enumerate(path) if isinstance(part, int)), None)
            if k is not None:
                by_list.setdefault(tuple(path[:k]), set()).add(int(path[k]))
            elif path:
                keys.append(path)
        changed = False
        for prefix, indices in by_list.items():
            container = self._get(list(prefix))
            if not isinstance(container, list):
                continue
            alive = self.alive.setdefault(prefix, list(range(len(container))))
            for i in sorted(indices, reverse=True):
                item = container.pop(i)
                for name in ("id", "quantity"):  # what others refer to it by
                    if isinstance(item, dict) and isinstance(item.get(name), str):
                        self.removed_ids.add(item[name])
                self.removed_paths.append(_render_loc((*prefix, alive.pop(i)), {}))
                changed = True
        for path in keys:
            parent = self._get(path[:-1])
            stand_in = _STAND_INS.get((str(path[0]), str(path[-1]))) if len(path) == 2 else None
            if isinstance(parent, dict) and path[-1] in parent:
                if stand_in is not None and parent[path[-1]] != stand_in:
                    parent[path[-1]] = stand_in
                elif stand_in is None:
                    del parent[path[-1]]
                else:
                    continue
                self.removed_paths.append(self.original(_render_loc(tuple(path), {})))
                changed = True
        return changed

    def missing(self, locs: list[tuple[int | str, ...]]) -> list[tuple[int | str, ...]]:
        """For "missing" errors: the container that lacks the key (removing it is the next step)."""
        out = []
        for loc in locs:
            path = _data_path(self.data, loc)
            stand_in = _STAND_INS.get((str(loc[0]), str(loc[1]))) if len(loc) == 2 else None
            parent = self._get(path)
            if stand_in is not None and isinstance(parent, dict):
                parent[str(loc[1])] = stand_in
                continue
            if path:
                out.append(tuple(path))
        return out

    def _get(self, path: list[int | str]) -> Any:
        node: Any = self.data
        for part in path:
            node = node[part]
        return node

    def original(self, path: str) -> str:
        """``path`` (of the pruned data) with list indices as in the file."""
        for prefix, alive in self.alive.items():
            head = _render_loc(prefix, {})
            m = re.match(rf"^{re.escape(head)}\[(\d+)\]", path)
            if m and int(m.group(1)) < len(alive):
                path = f"{head}[{alive[int(m.group(1))]}]{path[m.end():]}"
        return path

    def hides(self, issue: ConfigIssue) -> bool:
        """True for an issue inside a removed part, or one about the id of a removed element."""
        if any(issue.path == p or issue.path.startswith((p + ".", p + "[")) for p in self.removed_paths):
            return True
        own = issue.message.split("; did you mean", 1)[0]
        return any(f"{i!r}" in own for i in self.removed_ids)


def parse_plant(text: str, file: str = "<plant>", *, check_references: bool = True) -> PlantConfig:
    """Parse and validate plant YAML text.

    Every problem is reported in one pass: the YAML structure (duplicate keys naming both lines, control
    characters, nesting depth, alias bombs), each field, and the cross-object checks of
    :mod:`energymon.validators`, which still run over the valid part of a file with field errors. Issues are
    sorted by line; unknown keys and ids get a "did you mean" when one is close.

    Raises:
        ConfigError: listing every problem with ``file:line: key.path: why``.
    """
    root, data, issues = _compose(text, file)
    index = _LineIndex(root)
    if not isinstance(data, dict):
        raise ConfigError(file, [*issues, ConfigIssue("", "a plant file is a YAML mapping", 1)])
    pruner: _Pruner | None = None
    plant: PlantConfig | None = None
    work: Any = data
    for _round in range(12):
        try:
            plant = PlantConfig.model_validate(work)
            break
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            if pruner is not None:  # a key missing now is one taken out: its own issue is already listed
                errors = [e for e in errors if e["type"] != "missing"]
            found = _issues_from_validation(errors, work, index if pruner is None else _LineIndex(None))
            if pruner is not None:  # renumber to the file's indices; lines from the paths
                found = [ConfigIssue(pruner.original(i.path), i.message,
                                     index.line(_parse_path(pruner.original(i.path)))) for i in found]
                found = [i for i in found if not pruner.hides(i)]
            issues += found
            if pruner is None:
                pruner = _Pruner(data)
            locs = [tuple(e["loc"]) for e in exc.errors() if e["type"] != "missing"]
            locs += pruner.missing([tuple(e["loc"]) for e in exc.errors() if e["type"] == "missing"])
            if not pruner.prune(locs):
                break
            work = pruner.data
    if plant is not None and check_references:
        from energymon.validators import check_plant

        for path, message in check_plant(plant, extra_ids=pruner.removed_ids if pruner else ()):
            if pruner is not None:
                path = pruner.original(path)
            issue = ConfigIssue(path, message, index.line(_parse_path(path)))
            if pruner is None or not pruner.hides(issue):
                issues.append(issue)
    if issues or plant is None:
        unique = list(dict.fromkeys(issues))
        raise ConfigError(file, sorted(unique, key=lambda i: (i.line if i.line is not None else 1 << 30, i.path)))
    return plant


def _parse_path(path: str) -> tuple[int | str, ...]:
    out: list[int | str] = []
    for token in path.replace("]", "").replace("[", ".").split("."):
        if token:
            out.append(int(token) if token.isdigit() else token)
    return tuple(out)


def load_plant(path: str | os.PathLike[str]) -> PlantConfig:
    """Read and validate a plant file.

    Raises:
        ConfigError: the file is missing, unreadable, not YAML or invalid; every message names the file.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, [ConfigIssue("", f"cannot read file: {exc}")]) from None
    return parse_plant(text, file)


def iter_registers(plant: PlantConfig) -> Iterator[tuple[Meter, ModbusSource, RegisterMap]]:
    """Yield every Modbus meter with its resolved register map."""
    for meter in plant.meters:
        if isinstance(meter.source, ModbusSource):
            yield meter, meter.source, plant.register_map(meter.source)
