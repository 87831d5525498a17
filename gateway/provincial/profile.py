"""Province profiles: what differs between the provincial 重点用能单位能耗在线监测 platforms.

Provinces implement the same call sequence (working key, registration, access token, dictionaries, configuration
uploads, data upload) with different base URLs, paths, field names and encryption details. A profile holds every
such difference as data, together with where each value comes from and how sure it is (``provenance``), so the
client and the simulator never hard-code a province.

Profiles ship as ``profiles/<name>.yaml`` next to this module; :func:`load_profile` reads one by name or path.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from energymon.errors import ConfigError, ConfigIssue

__all__ = [
    "CONFIGURATION_KINDS",
    "DICTIONARY_ROLES",
    "CryptoProfile",
    "DataFields",
    "DictionarySpec",
    "Endpoints",
    "Provenance",
    "ProvinceProfile",
    "ResponseFields",
    "available_profiles",
    "load_profile",
]

#: Configuration uploads, in the order the client sends them (data items last: they name processes and gauges).
CONFIGURATION_KINDS = (
    "energy_office",
    "contacts",
    "energy_managers",
    "processes",
    "gauges",
    "gauge_verifications",
    "gauge_replacements",
    "data_items",
)

#: What a downloaded dictionary is used for; the parts of a dataCode come from these.
DICTIONARY_ROLES = (
    "region",
    "industry",
    "enterprise_type",
    "process",
    "equipment",
    "energy_class",
    "energy_type",
    "data_usage",
    "input_type",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Provenance(_Strict):
    """Where a profile value comes from and how sure it is."""

    source: str
    """document, code or page the value was taken from"""
    confidence: Literal["V", "V-code", "M", "unverified"]
    """`V` confirmed in the source; `V-code` from public code; `M` not checked against a source; `unverified` an
    assumption"""


class Endpoints(_Strict):
    """Paths below the base URL, per operation."""

    working_key: str = "enterpriseInfo/rwk"
    """obtain the working key (secretKey)"""
    public_dictionaries: str = "dataDownload/public"
    """dictionaries that need no access token"""
    registration: str = "enterpriseInfo/apply"
    """registration (first time)"""
    registration_update: str = "enterpriseInfo/update"
    """registration update (with the dataIndex of the first registration)"""
    access_token: str = "requestAK"
    """request an access token (AK)"""
    check_version: str = "checkVersion"
    """dictionary and registration versions"""
    dictionaries: str = "dataDownload"
    """dictionaries that need an access token"""
    configuration: dict[str, str] = Field(default_factory=dict)
    """configuration kind (see CONFIGURATION_KINDS) → path"""
    data_upload: str = "dataUpload"
    """upload of data values"""

    @model_validator(mode="after")
    def _kinds(self) -> Endpoints:
        unknown = set(self.configuration) - set(CONFIGURATION_KINDS)
        if unknown:
            raise ValueError(f"unknown configuration kind(s) {sorted(unknown)}; known: {list(CONFIGURATION_KINDS)}")
        missing = set(CONFIGURATION_KINDS) - set(self.configuration)
        if missing:
            raise ValueError(f"configuration paths missing for {sorted(missing)}")
        return self


class DictionarySpec(_Strict):
    """One downloadable dictionary."""

    role: str
    """what it is used for (one of DICTIONARY_ROLES)"""
    item_index: int = Field(ge=1)
    """`itemIndex` asked for in the download request"""
    response_key: str
    """key in the response's `data` holding the list of {code, name} entries"""
    public: bool = False
    """downloadable without an access token"""
    code_length: int | None = Field(default=None, ge=1, le=8)
    """length of a code, when fixed (dataCode parts are)"""

    @model_validator(mode="after")
    def _role(self) -> DictionarySpec:
        if self.role not in DICTIONARY_ROLES:
            raise ValueError(f"unknown dictionary role {self.role!r}; known: {list(DICTIONARY_ROLES)}")
        return self


class CryptoProfile(_Strict):
    """How the password PIN block (and, where a province requires it, the upload payload) is encrypted."""

    key_encoding: Literal["hex", "ascii"] = "hex"
    """how the 32-character secretKey becomes 16 key bytes: `hex` digits, or the first 16 characters as ASCII"""
    iv_source: Literal["uscc_first16", "zero"] = "uscc_first16"
    """CBC IV: the first 16 characters of the 统一社会信用代码 as ASCII, or 16 zero bytes"""
    padding: Literal["pkcs7", "zero", "none"] = "pkcs7"
    """block padding of the plaintext"""
    output: Literal["hex_upper", "hex_lower", "base64"] = "hex_upper"
    """text encoding of the ciphertext"""
    password_hex_chars: int | None = Field(default=32, ge=32)
    """the encrypted password is cut to this many hex characters (None: whole ciphertext)"""
    payload_encryption: Literal["none", "sm4_cbc"] = "none"
    """`sm4_cbc`: the data-upload body's `data` is the encrypted JSON list, encoded as `output`"""


class DataFields(_Strict):
    """Field names of one value in a data upload (canonical name → the province's name)."""

    data_code: str = "dataCode"
    """data item code"""
    value: str = "dataValue"
    """the value"""
    input_type: str = "inputType"
    """数据采集来源"""
    stat_type: str = "statType"
    """0 real time, 1 day, 2 month, 3 year"""
    stat_date: str = "statDate"
    """start of the period, local time"""
    upload_date: str = "uploadDate"
    """time of upload, local time"""
    scope: str = "scope"
    """1 plant, 2 process, 3 process unit, 4 key equipment"""
    valid: str | None = "valid"
    """validity flag (None: the province has no such field)"""


class ResponseFields(_Strict):
    """Names in the response envelope and in a data-upload receipt."""

    code: str = "responseCode"
    """status code in the body"""
    message: str = "responseMessage"
    """status text"""
    data: str = "data"
    """payload"""
    rejected: str = "failList"
    """in a data-upload receipt's data: the values not accepted"""
    rejected_reason: str = "reason"
    """in a rejected entry: why"""
    accepted_count: str = "successCount"
    """in a data-upload receipt's data: how many values were accepted"""


class ProvinceProfile(_Strict):
    """Everything that differs between provincial platforms."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,31}$")
    """profile name (the province key, as in `enterprise.province`)"""
    title: str
    """the platform's name"""
    base_url: str | None = None
    """the platform's base URL when public; the plant file's `provincial.base_url` overrides it"""
    token_header: str = "ak"
    """HTTP header carrying the access token"""
    token_in_body: str | None = None
    """also put the access token in the JSON body under this key"""
    ok_code: int = 200
    """`responseCode` of success"""
    token_invalid_code: int = 401
    """`responseCode` (or HTTP status) meaning the access token is invalid or expired"""
    success_message: str = "RECEIVE SUCCESS"
    """`responseMessage` of a fully accepted data upload"""
    datetime_format: str = "%Y-%m-%d %H:%M:%S"
    """format of statDate and uploadDate"""
    upload_time_format: str = "%H:%M:%S"
    """format of the assigned `enterpriseUploadTime`"""
    max_values_per_upload: int = Field(default=500, ge=1, le=100000)
    """largest number of values in one data upload"""
    realtime_minutes: Literal[15, 30, 60] = 15
    """period of statType 0 values"""
    data_code_format: str = "{process}-{process_unit}-{equipment}{equipment_unit}{energy_class}{energy_type}-{usage}"
    """how the parts of a dataCode are joined"""
    device_id_field: str | None = "deviceId"
    """data-upload body key of the 端设备 id (None: not sent)"""
    endpoints: Endpoints
    """paths of the operations"""
    dictionaries: list[DictionarySpec]
    """the dictionaries the platform serves"""
    crypto: CryptoProfile = Field(default_factory=CryptoProfile)
    """encryption details"""
    data_fields: DataFields = Field(default_factory=DataFields)
    """field names of one uploaded value"""
    response: ResponseFields = Field(default_factory=ResponseFields)
    """field names of the response envelope"""
    provenance: dict[str, Provenance] = Field(default_factory=dict)
    """profile key (dotted) → where it comes from and how sure it is"""

    @model_validator(mode="after")
    def _checks(self) -> ProvinceProfile:
        roles = [d.role for d in self.dictionaries]
        dup = {r for r in roles if roles.count(r) > 1}
        if dup:
            raise ValueError(f"dictionary role(s) listed twice: {sorted(dup)}")
        for needed in ("process", "equipment", "energy_class", "energy_type", "data_usage"):
            if needed not in roles:
                raise ValueError(f"no dictionary for role {needed!r}: dataCodes are built from it")
        top = set(type(self).model_fields)
        for key in self.provenance:
            if key.split(".")[0] not in top:
                raise ValueError(f"provenance names {key!r}, which is not a profile key")
        return self

    def dictionary(self, role: str) -> DictionarySpec:
        """The dictionary used for ``role`` (KeyError if the platform has none)."""
        for d in self.dictionaries:
            if d.role == role:
                return d
        raise KeyError(role)

    def unverified(self) -> list[str]:
        """Profile keys whose value is not confirmed (confidence `M` or `unverified`)."""
        return sorted(k for k, p in self.provenance.items() if p.confidence in ("M", "unverified"))


def available_profiles() -> list[str]:
    """Names of the profiles shipped with energymon."""
    folder = resources.files("energymon.gateway.provincial").joinpath("profiles")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_profile(name_or_path: str | Path) -> ProvinceProfile:
    """Load a shipped profile by name, or a profile file by path.

    Raises:
        ConfigError: unknown profile, unreadable file or invalid content; the message names the file.
    """
    text_path = str(name_or_path)
    if isinstance(name_or_path, Path) or text_path.endswith((".yaml", ".yml")):
        file = text_path
        try:
            text = Path(name_or_path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(file, [ConfigIssue("", f"cannot read profile: {exc}")]) from None
    else:
        names = available_profiles()
        if text_path not in names:
            raise ConfigError("provincial.profile", [ConfigIssue(
                "profile", f"unknown province profile {text_path!r}; shipped profiles: {', '.join(names)}")])
        res = resources.files("energymon.gateway.provincial").joinpath("profiles", f"{text_path}.yaml")
        file = str(res)
        text = res.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(file, [ConfigIssue("", f"not valid YAML: {exc}")]) from None
    try:
        return ProvinceProfile.model_validate(data)
    except ValidationError as exc:
        issues = [ConfigIssue(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors(include_url=False)]
        raise ConfigError(file, issues) from None
