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

import os
from collections.abc import Iterator
from datetime import date
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from energymon import units
from energymon.accounting_config import AccountingConfig
from energymon.alerts_config import AlertsConfig, ThresholdRule, WebhookNotifier
from energymon.errors import ConfigError, ConfigIssue
from energymon.provincial_config import ProvincialConfig
from energymon.schema import ID_PATTERN

__all__ = [
    "AlertsConfig",
    "Bus",
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
        if self.scale == 0:
            raise ValueError("scale must not be 0")
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
    """readings further than this from the gateway's clock go to the outbox's quarantine, not the uplink"""
    outbox_on_corrupt: Literal["stop", "move_aside"] = "stop"
    """a corrupt outbox or history file: `stop` with an error, or `move_aside` to `<file>.corrupt-<time>`"""
    history_retention_days: int = Field(default=183, ge=0, le=3660)
    """days of 15-minute, hourly, daily and monthly values kept in the edge history (0: none)"""


class InfluxStoreConfig(Strict):
    """InfluxDB v2 write API (InfluxDB 2.x, or VictoriaMetrics which speaks it)."""

    type: Literal["influxdb"]
    url: str
    """base URL of InfluxDB 2 or VictoriaMetrics"""
    org: str = "energymon"
    """organisation"""
    bucket: str = "energymon"
    """bucket"""
    token_env: str | None = Field(default=None, description="environment variable holding the API token")
    batch_max_points: int = Field(default=5000, ge=1, le=100000)
    """lines per HTTP write"""
    flush_interval_ms: int = Field(default=50, ge=1, le=60000)
    """longest time rows wait before a write"""
    timeout_ms: int = Field(default=10000, ge=100, le=120000)
    """HTTP timeout"""


class SqliteStoreConfig(Strict):
    """The embedded store: one SQLite file (the demo and plants without a TSDB)."""

    type: Literal["sqlite"]
    path: Path
    """database file"""


Store = Annotated[InfluxStoreConfig | SqliteStoreConfig, Field(discriminator="type")]


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


def _issues_from_validation(exc: ValidationError, data: Any, index: _LineIndex) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif err["type"] == "union_tag_invalid":
            msg = f"{msg}"
        issues.append(ConfigIssue(_render_loc(loc, data), msg, index.line(loc)))
    return issues


def parse_plant(text: str, file: str = "<plant>", *, check_references: bool = True) -> PlantConfig:
    """Parse and validate plant YAML text.

    Raises:
        ConfigError: listing every problem with ``file:line: key.path: why``.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(file, [ConfigIssue("", f"not valid YAML: {getattr(exc, 'problem', exc)}", line)]) from None
    index = _LineIndex(root)
    if not isinstance(data, dict):
        raise ConfigError(file, [ConfigIssue("", "a plant file is a YAML mapping", 1)])
    try:
        plant = PlantConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(file, _issues_from_validation(exc, data, index)) from None
    if check_references:
        from energymon.validators import check_plant

        issues = [ConfigIssue(path, message, index.line(_parse_path(path))) for path, message in check_plant(plant)]
        if issues:
            raise ConfigError(file, issues)
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
