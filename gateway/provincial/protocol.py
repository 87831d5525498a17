"""Request and response envelopes of the provincial platform protocol, shared by the client and the simulator.

Every response is ``{responseCode, responseMessage, data}`` (names per profile); a data upload carries
``{deviceId, enterpriseCode, data: [values]}`` where each value has its dataCode, value, inputType, statType,
statDate (start of the period, local time), uploadDate and scope. When a profile encrypts the payload, ``data`` is
the SM4-CBC ciphertext of the JSON list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from energymon.errors import DataError, TransportError
from energymon.gateway.provincial.crypto import (
    decode_text,
    encode_text,
    iv_bytes,
    key_bytes,
    sm4_cbc_decrypt,
    sm4_cbc_encrypt,
)
from energymon.gateway.provincial.profile import ProvinceProfile

__all__ = [
    "STAT_DAY",
    "STAT_MONTH",
    "STAT_NAMES",
    "STAT_REALTIME",
    "PlatformError",
    "PlatformRefusedError",
    "PlatformUnavailableError",
    "RejectedValue",
    "UploadReceipt",
    "UploadValue",
    "build_data_code",
    "decode_upload_body",
    "encode_upload_body",
    "format_stat_date",
    "parse_stat_date",
    "parse_upload_receipt",
    "stat_date_aligned",
]

STAT_REALTIME = 0
STAT_DAY = 1
STAT_MONTH = 2
#: statType → name used in status reports.
STAT_NAMES = {STAT_REALTIME: "15min", STAT_DAY: "day", STAT_MONTH: "month"}


class PlatformError(TransportError):
    """The platform could not be reached or answered with a server error (retriable). Names the URL."""

    def __init__(self, url: str, message: str) -> None:
        self.url = url
        super().__init__(f"{url}: {message}")


class PlatformUnavailableError(PlatformError):
    """Every retry failed: the platform is down or overloaded."""


class PlatformRefusedError(DataError):
    """The platform answered with a non-success responseCode that a retry will not fix."""

    def __init__(self, url: str, code: int, message: str) -> None:
        self.url = url
        self.code = code
        super().__init__(f"{url}: responseCode {code}: {message}")


@dataclass(frozen=True, slots=True)
class UploadValue:
    """One value of a data upload."""

    data_code: str
    stat_type: int
    stat_ms: int
    value: float
    input_type: int = 1
    scope: int = 1

    @property
    def key(self) -> tuple[str, int, int]:
        """(dataCode, statType, statDate ms): what the platform stores a value under."""
        return (self.data_code, self.stat_type, self.stat_ms)


@dataclass(frozen=True, slots=True)
class RejectedValue:
    """A value the platform did not accept, with its reason."""

    data_code: str
    stat_type: int
    stat_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class UploadReceipt:
    """What the platform said about one data upload."""

    code: int
    message: str
    accepted: int
    rejected: tuple[RejectedValue, ...]
    raw: dict[str, Any]


def format_stat_date(ms: int, tz: ZoneInfo, profile: ProvinceProfile) -> str:
    """Local time text of an instant, in the profile's format."""
    return datetime.fromtimestamp(ms / 1000, tz).strftime(profile.datetime_format)


def parse_stat_date(text: str, tz: ZoneInfo, profile: ProvinceProfile) -> int:
    """Epoch ms of a local time text in the profile's format.

    Raises:
        DataError: the text does not match the format.
    """
    try:
        local = datetime.strptime(text, profile.datetime_format)  # noqa: DTZ007 - local time, zone attached below
    except ValueError:
        raise DataError(f"statDate {text!r} does not match {profile.datetime_format!r}") from None
    return int(local.replace(tzinfo=tz).timestamp() * 1000)


def stat_date_aligned(ms: int, stat_type: int, tz: ZoneInfo, profile: ProvinceProfile) -> bool:
    """True when ``ms`` is the start of a period of ``stat_type`` in local time (the platform's timestamp rule)."""
    local = datetime.fromtimestamp(ms / 1000, tz)
    if local.second or local.microsecond:
        return False
    if stat_type == STAT_REALTIME:
        return local.minute % profile.realtime_minutes == 0
    if local.hour or local.minute:
        return False
    return stat_type == STAT_DAY or (stat_type == STAT_MONTH and local.day == 1) or (
        stat_type == 3 and local.day == 1 and local.month == 1)


def build_data_code(parts: dict[str, str], profile: ProvinceProfile) -> str:
    """Join resolved dataCode parts with the profile's format."""
    try:
        return profile.data_code_format.format(**parts)
    except KeyError as exc:
        raise DataError(f"dataCode format {profile.data_code_format!r} needs part {exc}") from None


def _values_json(values: list[UploadValue], tz: ZoneInfo, profile: ProvinceProfile, upload_ms: int) -> list[Any]:
    f = profile.data_fields
    upload = format_stat_date(upload_ms, tz, profile)
    out: list[dict[str, Any]] = []
    for v in values:
        rec: dict[str, Any] = {
            f.data_code: v.data_code, f.value: v.value, f.input_type: v.input_type, f.stat_type: v.stat_type,
            f.stat_date: format_stat_date(v.stat_ms, tz, profile), f.upload_date: upload, f.scope: v.scope,
        }
        if f.valid is not None:
            rec[f.valid] = True
        out.append(rec)
    return out


def encode_upload_body(
    values: list[UploadValue], *, uscc: str, device_id: str, tz: ZoneInfo, profile: ProvinceProfile,
    upload_ms: int, secret_key: str | None,
) -> dict[str, Any]:
    """The JSON body of a data upload (the value list encrypted when the profile says so)."""
    body: dict[str, Any] = {}
    if profile.device_id_field:
        body[profile.device_id_field] = device_id
    body["enterpriseCode"] = uscc
    records = _values_json(values, tz, profile, upload_ms)
    if profile.crypto.payload_encryption == "sm4_cbc":
        if secret_key is None:
            raise DataError("the profile encrypts uploads but there is no working key")
        plain = json.dumps(records, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        cipher = sm4_cbc_encrypt(key_bytes(secret_key, profile.crypto), iv_bytes(uscc, profile.crypto), plain,
                                 profile.crypto.padding)
        body["data"] = encode_text(cipher, profile.crypto)
    else:
        body["data"] = records
    return body


def decode_upload_body(
    body: dict[str, Any], *, tz: ZoneInfo, profile: ProvinceProfile, secret_key: str | None,
) -> tuple[str, list[dict[str, Any]]]:
    """(enterpriseCode, value records) of a data-upload body; the records keep the profile's field names.

    Raises:
        DataError: the body is malformed or cannot be decrypted.
    """
    uscc = body.get("enterpriseCode")
    if not isinstance(uscc, str):
        raise DataError("data upload without enterpriseCode")
    data = body.get("data")
    if profile.crypto.payload_encryption == "sm4_cbc":
        if not isinstance(data, str) or secret_key is None:
            raise DataError("encrypted data upload expected")
        plain = sm4_cbc_decrypt(key_bytes(secret_key, profile.crypto), iv_bytes(uscc, profile.crypto),
                                decode_text(data, profile.crypto), profile.crypto.padding)
        data = json.loads(plain.decode("utf-8"))
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError("data upload: data is not a list of values")
    return uscc, data


def parse_upload_receipt(
    envelope: dict[str, Any], *, tz: ZoneInfo, profile: ProvinceProfile, sent: int,
) -> UploadReceipt:
    """Read a data-upload answer: how many values were accepted and which were not, with reasons."""
    r = profile.response
    code = int(envelope.get(r.code, -1))
    message = str(envelope.get(r.message, ""))
    data = envelope.get(r.data)
    rejected: list[RejectedValue] = []
    accepted = sent if code == profile.ok_code else 0
    if isinstance(data, dict):
        for entry in data.get(r.rejected) or []:
            f = profile.data_fields
            try:
                rejected.append(RejectedValue(
                    str(entry[f.data_code]), int(entry[f.stat_type]), parse_stat_date(str(entry[f.stat_date]), tz,
                                                                                      profile),
                    str(entry.get(r.rejected_reason, ""))))
            except (KeyError, TypeError, ValueError, DataError):
                continue
        if r.accepted_count in data:
            accepted = int(data[r.accepted_count])
        elif code == profile.ok_code:
            accepted = sent - len(rejected)
    return UploadReceipt(code, message, accepted, tuple(rejected), envelope)
