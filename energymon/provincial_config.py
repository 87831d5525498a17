"""The ``provincial`` section of the plant file: upload to the provincial 重点用能单位能耗在线监测 platform.

What differs between provinces (paths, field names, encryption) lives in a province profile
(:mod:`energymon.gateway.provincial.profile`); this section names the profile and holds what is the unit's own:
credentials (by environment-variable name, never the secret itself), registration details, the configuration
uploaded to the platform (energy office, contacts, processes, gauges) and the data items with their dataCode
parts, statTypes and plausibility bands. Everything is checked when the plant file loads.
"""

from __future__ import annotations

import datetime as dt
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from energymon import _model_docs  # noqa: F401  # field docstrings read once per module
from energymon.schema import ID_PATTERN

__all__ = [
    "REFERENCE_SECTIONS",
    "CarrierItemSource",
    "Contact",
    "DataCodeParts",
    "DataItem",
    "EnergyManager",
    "EnergyOffice",
    "EnterpriseItemSource",
    "Gauge",
    "GaugeReplacement",
    "GaugeVerification",
    "MeterItemSource",
    "ProductItemSource",
    "ProvincialConfig",
    "ProvincialProcess",
    "QualityGate",
    "Registration",
]

Id = Annotated[str, Field(pattern=ID_PATTERN)]
_ENV = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Strict(BaseModel):
    """Unknown keys are errors; instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Registration(Strict):
    """Registration details sent with ``enterpriseInfo/apply`` (name, USCC and industry come from `enterprise`)."""

    address: str = Field(min_length=1)
    """registered address"""
    zip_code: str = Field(default="", pattern=r"^(\d{6})?$")
    """postal code"""
    corporation_name: str = Field(min_length=1)
    """legal representative"""
    register_date: date
    """date of business registration"""
    region_code: str = Field(min_length=1, description="行政区划代码, from the region dictionary (code or name)")
    type_code: str = Field(min_length=1, description="enterprise type: code or name in the enterprise-type dictionary")
    field_code: str = ""
    """领域代码, where the province asks for one"""
    energy_consume_level: int | None = Field(default=None, ge=1, le=6, description=(
        "1–6 (<5k, 5k–10k, 10k–100k, 100k–500k, 500k–3M, >3M tce/yr); none = not sent"))
    center: bool = False
    """a central state-owned enterprise (央企)"""
    jgzh: bool = False
    """an energy-conversion enterprise (加工转换)"""
    latitude: float | None = Field(default=None, ge=-90, le=90)
    """latitude, degrees"""
    longitude: float | None = Field(default=None, ge=-180, le=180)
    """longitude, degrees"""
    production_line: str = ""
    """production lines, free text"""
    leading_product: str = ""
    """leading products, free text"""
    group_name: str = ""
    """parent group, if any"""
    phone: str = ""
    """contact phone"""
    email: str = ""
    """contact e-mail"""
    license_file: Path | None = None
    """scan of the business licence, sent base64-encoded"""


class EnergyOffice(Strict):
    """The unit's energy-management office (能源管理机构)."""

    name: str = Field(min_length=1)
    """office name"""
    head: str = Field(min_length=1)
    """person in charge"""
    phone: str = ""
    """phone"""
    staff: int = Field(default=1, ge=1)
    """number of staff"""


class Contact(Strict):
    """A contact person registered with the platform."""

    name: str = Field(min_length=1)
    """name"""
    role: str = ""
    """position"""
    phone: str = ""
    """phone"""
    email: str = ""
    """e-mail"""


class EnergyManager(Strict):
    """A certified energy manager (能源管理负责人)."""

    name: str = Field(min_length=1)
    """name"""
    certificate: str = ""
    """certificate number"""
    phone: str = ""
    """phone"""


class ProvincialProcess(Strict):
    """A process (工序) as registered with the platform."""

    process: Id | Literal["plant"]
    """a process id of the plant file, or `plant` for the whole plant"""
    code: str = Field(min_length=1, description="process code or name in the province's process dictionary")
    unit_code: str = Field(default="00", pattern=r"^\d{2}$")
    """number of the process unit (工序单元)"""
    name: str = ""
    """display name (default: the plant file's process name)"""


class GaugeVerification(Strict):
    """One verification or calibration record of a gauge (检定/校准)."""

    date: dt.date
    """date of verification"""
    next_due: dt.date | None = None
    """next verification due"""
    organisation: str = ""
    """verifying body"""
    certificate: str = ""
    """certificate number"""
    result: Literal["pass", "fail"] = "pass"
    """outcome"""


class GaugeReplacement(Strict):
    """One replacement of a gauge (更换记录)."""

    at: datetime
    """time of the swap, with its UTC offset"""
    old_serial: str = ""
    """serial number removed"""
    new_serial: str = ""
    """serial number installed"""
    reason: str = ""
    """why"""

    @field_validator("at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("give the replacement time with its UTC offset, e.g. 2026-03-05T10:00:00+08:00")
        return value


class Gauge(Strict):
    """A measuring instrument (计量器具) registered with the platform, usually one of the plant's meters."""

    id: Id
    """gauge id (sent as the gauge code)"""
    meter: Id | None = None
    """the plant-file meter it is"""
    name: str = ""
    """display name (default: the meter's name)"""
    model: str = ""
    """model"""
    manufacturer: str = ""
    """manufacturer"""
    serial: str = ""
    """serial number"""
    accuracy_class: str = ""
    """accuracy class, e.g. 0.5S"""
    level: Literal[1, 2, 3] | None = None
    """GB 17167 metering level (default: the meter's level)"""
    installed: date | None = None
    """installation date"""
    verifications: list[GaugeVerification] = Field(default_factory=list)
    """verification records"""
    replacements: list[GaugeReplacement] = Field(default_factory=list)
    """replacement records"""


class DataCodeParts(Strict):
    """The parts of a dataCode. Dictionary parts take a code or a name of the downloaded dictionary; the codes
    are looked up when the dictionaries are downloaded, never written into the program."""

    process: str = Field(default="00", min_length=1)
    """process code or name (process dictionary; `00` = whole plant where the dictionary has it)"""
    process_unit: str = Field(default="00", pattern=r"^\d{2}$")
    """process-unit number"""
    equipment: str = Field(default="00", min_length=1)
    """equipment type code or name (equipment dictionary)"""
    equipment_unit: str = Field(default="00", pattern=r"^\d{2}$")
    """equipment number"""
    energy_class: str = Field(min_length=1, description="采集对象类型: code or name (energy-class dictionary)")
    energy_type: str = Field(min_length=1, description="能源分类+分项: code or name (energy-type dictionary)")
    usage: str = Field(min_length=1, description="数据用途: code or name (data-usage dictionary)")


class EnterpriseItemSource(Strict):
    """The enterprise's totals (综合能耗 and CO2) from the recompute."""

    kind: Literal["enterprise"]
    field: Literal["kgce", "kgce_equal", "kgce_dual_control", "kgce_dual_control_equal", "co2_kg"] = "kgce"
    """`kgce` 当量值, `kgce_equal` 等价值, `kgce_dual_control` without 原料用能, `co2_kg`"""


class CarrierItemSource(Strict):
    """The enterprise's consumption of one energy carrier (day and month values only)."""

    kind: Literal["carrier"]
    carrier: str = Field(min_length=1)
    """carrier key, e.g. `electricity`, `raw_coal`"""
    field: Literal["consumed", "kgce"] = "consumed"
    """`consumed` in the carrier's unit, or `kgce`"""


class MeterItemSource(Strict):
    """One meter's consumption (or output) per period."""

    kind: Literal["meter"]
    meter: Id
    """meter id"""


class ProductItemSource(Strict):
    """A product's output, energy or indicator value."""

    kind: Literal["product"]
    product: Id
    """product id"""
    field: Literal["output", "kgce", "value"] = "output"
    """`output`, `kgce` within the product boundary, or `value` (单位产品综合能耗, day and month)"""


ItemSource = Annotated[
    EnterpriseItemSource | CarrierItemSource | MeterItemSource | ProductItemSource, Field(discriminator="kind")
]


def _all_stat_types() -> list[Literal[0, 1, 2]]:
    return [0, 1, 2]


class DataItem(Strict):
    """A 数据采集项: one value series uploaded to the platform."""

    id: Id
    """item id (local)"""
    name: str = Field(min_length=1)
    """name registered with the platform"""
    source: ItemSource
    """where the value comes from: one of the `items[].source` kinds"""
    code: DataCodeParts
    """dataCode parts"""
    stat_types: list[Literal[0, 1, 2]] = Field(default_factory=_all_stat_types, min_length=1)
    """0 real time (15 min), 1 day, 2 month"""
    scope: Literal[1, 2, 3, 4] = 1
    """1 plant, 2 process, 3 process unit, 4 key equipment"""
    input_type: int = Field(default=1, ge=0, le=9)
    """数据采集来源 (1 = automatic collection in the common coding)"""
    scale: float = 1.0
    """the uploaded value is the computed one times this (e.g. 0.001 for kgce → tce)"""
    decimals: int = Field(default=4, ge=0, le=8)
    """decimals kept in the uploaded value"""
    min_value: float = 0.0
    """plausibility band: lowest value (registered as dataValueMin; checked per statType 0 value, scaled by the
    number of 15-minute slots for day and month values)"""
    max_value: float
    """plausibility band: highest 15-minute value (registered as dataValueMax, scaled like min_value)"""
    gauge: Id | None = None
    """gauge the item is measured by"""
    collect_system_name: str = "energymon"
    """collecting system's name"""

    @model_validator(mode="after")
    def _checks(self) -> DataItem:
        if len(set(self.stat_types)) != len(self.stat_types):
            raise ValueError("stat_types lists a type twice")
        if isinstance(self.source, CarrierItemSource) and 0 in self.stat_types:
            raise ValueError("a carrier item has day and month values only: use a meter item for 15-minute values")
        if isinstance(self.source, ProductItemSource) and self.source.field == "value" and 0 in self.stat_types:
            raise ValueError("an indicator value (单位产品综合能耗) is uploaded per day and month, not per 15 minutes")
        if self.max_value <= self.min_value:
            raise ValueError("max_value must be above min_value")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        return self


class QualityGate(Strict):
    """Checks run on every value before it is uploaded (the platform's own data-quality rules)."""

    mode: Literal["block", "report"] = "block"
    """`block` withholds failing values until they pass; `report` uploads them and reports the problem"""
    completeness_min_pct: float = Field(default=90.0, ge=0, le=100)
    """readings received ÷ expected per meter and day"""
    consistency_max_pct: float = Field(default=5.0, ge=0, le=100)
    """largest difference between Σ 15-minute values and the day value, Σ day values and the month value"""
    check_range: bool = True
    """withhold values outside an item's plausibility band"""


def check_platform_url(url: str, *, allow_insecure_http: bool) -> None:
    """Refuse a platform URL that would carry the password and token in clear text.

    Raises:
        ValueError: ``url`` is ``http://`` and ``allow_insecure_http`` is false.
    """
    if url.lower().startswith("http://") and not allow_insecure_http:
        raise ValueError(
            f"platform URL {url!r} is plain http://: the password, working key and token would be sent in clear "
            "text; use https://, or set provincial.allow_insecure_http: true for a test platform"
        )


class ProvincialConfig(Strict):
    """Upload to the provincial online-monitoring platform (接入端), with 补传 of missing periods."""

    profile: str = Field(min_length=1, description="province profile: a shipped name (yunnan, sichuan) or a YAML path")
    base_url: str | None = Field(default=None, pattern=r"^https?://", description=(
        "the platform's base URL, e.g. https://host/YNEnergy/ (overrides the profile's)"))
    allow_insecure_http: bool = False
    """accept an `http://` platform URL; password, working key and token then travel in clear text (test only)"""
    device_id: str = Field(min_length=1, description="端设备 id sent with every data upload")
    password_env: str = Field(default="ENERGYMON_PROVINCIAL_PASSWORD", pattern=_ENV, description=(
        "environment variable holding the platform password"))
    secret_key_env: str | None = Field(default=None, pattern=_ENV, description=(
        "environment variable with a working key obtained out of band (otherwise requested from the platform)"))
    ledger_path: Path = Path("provincial-ledger.sqlite")
    """SQLite file with every upload attempt and receipt, the session (working key, token) and dictionaries"""
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    """HTTP timeout of one request"""
    retries: int = Field(default=4, ge=0, le=20)
    """extra tries after a 5xx answer, a timeout or a broken connection"""
    backoff_initial_s: float = Field(default=1.0, ge=0, le=600)
    """first retry delay; doubled each try, with full jitter"""
    backoff_max_s: float = Field(default=60.0, ge=0, le=3600)
    """longest retry delay"""
    upload_time: time | None = None
    """daily upload time when the platform assigned none (local time)"""
    realtime_interval_min: int = Field(default=15, ge=0, le=1440)
    """how often 15-minute values are pushed between daily uploads (0: only at the daily slot)"""
    settle_min: int = Field(default=20, ge=0, le=1440)
    """a period is uploaded this many minutes after it ends, so late readings are in"""
    backfill_days: int = Field(default=35, ge=1, le=400)
    """补传 horizon: missing periods this far back are re-sent"""
    lookback_hours: float = Field(default=6.0, gt=0, le=24 * 31)
    """readings read around each recomputed window to split the intervals crossing its ends"""
    max_resend_rejected: int = Field(default=3, ge=0, le=100)
    """times a value the platform rejected is sent again (partial acceptance) before it is left as rejected"""
    registration: Registration
    """registration details"""
    energy_office: EnergyOffice | None = None
    """energy-management office"""
    contacts: list[Contact] = Field(default_factory=list)
    """contact persons"""
    energy_managers: list[EnergyManager] = Field(default_factory=list)
    """energy managers"""
    processes: list[ProvincialProcess] = Field(default_factory=list)
    """processes registered with the platform"""
    gauges: list[Gauge] = Field(default_factory=list)
    """gauges with their verification and replacement records"""
    items: list[DataItem] = Field(min_length=1)
    """data items uploaded"""
    gate: QualityGate = Field(default_factory=QualityGate)
    """quality gate before upload"""

    @model_validator(mode="after")
    def _clear_text(self) -> ProvincialConfig:
        if self.base_url is not None and not self.allow_insecure_http:
            check_platform_url(self.base_url, allow_insecure_http=False)
        return self

    @model_validator(mode="after")
    def _unique(self) -> ProvincialConfig:
        for label, ids in (("items", [i.id for i in self.items]), ("gauges", [g.id for g in self.gauges]),
                           ("processes", [p.process for p in self.processes])):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            if dup:
                raise ValueError(f"{label}: id(s) listed twice: {', '.join(dup)}")
        gauges = {g.id for g in self.gauges}
        for item in self.items:
            if item.gauge is not None and item.gauge not in gauges:
                raise ValueError(f"items[{item.id}].gauge {item.gauge!r} is not in gauges")
        return self


REFERENCE_SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("provincial", ProvincialConfig),
    ("provincial.registration", Registration),
    ("provincial.energy_office", EnergyOffice),
    ("provincial.contacts[]", Contact),
    ("provincial.energy_managers[]", EnergyManager),
    ("provincial.processes[]", ProvincialProcess),
    ("provincial.gauges[]", Gauge),
    ("provincial.gauges[].verifications[]", GaugeVerification),
    ("provincial.gauges[].replacements[]", GaugeReplacement),
    ("provincial.items[]", DataItem),
    ("provincial.items[].source kind: enterprise", EnterpriseItemSource),
    ("provincial.items[].source kind: carrier", CarrierItemSource),
    ("provincial.items[].source kind: meter", MeterItemSource),
    ("provincial.items[].source kind: product", ProductItemSource),
    ("provincial.items[].code", DataCodeParts),
    ("provincial.gate", QualityGate),
]
