"""HTTP client of the provincial platform: the call sequence, token renewal on 401, retries with backoff and jitter.

Call sequence (each step's path comes from the province profile):

1. working key (``enterpriseInfo/rwk``), once; kept in the ledger;
2. public dictionaries (region, industry, enterprise type);
3. registration (``enterpriseInfo/apply``, later ``…/update`` with the dataIndex), the password sent as an SM4-CBC
   PIN block;
4. access token (``requestAK``): token, expiry, platform URL and the assigned daily upload time;
5. version check (``checkVersion``), and the protected dictionaries when the dictionary version changed;
6. configuration uploads (energy office, contacts, managers, processes, gauges with verification and replacement
   records, data items);
7. data uploads.

A ``responseCode`` (or HTTP status) of 401 renews the token and repeats the call once. A 5xx answer, a timeout or a
dropped connection is retried ``retries`` times after ``min(backoff_max, backoff_initial × 2^n)`` scaled by a
random factor in [0, 1) ("full jitter"); then :class:`~.protocol.PlatformUnavailableError`. Every answer is handed to
``on_receipt`` (the ledger stores it).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import httpx

from energymon.errors import DataError
from energymon.gateway.provincial.crypto import encrypt_password
from energymon.gateway.provincial.profile import DictionarySpec, ProvinceProfile
from energymon.gateway.provincial.protocol import (
    PlatformRefusedError,
    PlatformUnavailableError,
    UploadReceipt,
    UploadValue,
    encode_upload_body,
    parse_upload_receipt,
)

__all__ = ["Exchange", "PlatformClient", "SessionState"]


@dataclass(frozen=True, slots=True)
class Exchange:
    """One HTTP exchange with the platform, as stored in the ledger."""

    operation: str
    at_ms: int
    http_status: int | None
    code: int | None
    message: str
    response: Any


class SessionState(Protocol):
    """Where the client keeps its session (the ledger)."""

    def get_state(self, key: str) -> str | None:
        """Value of a session key."""

    def set_state(self, key: str, value: str | None) -> None:
        """Store (or with None remove) a session key."""


class PlatformClient:
    """Talks to one provincial platform for one unit.

    Args:
        profile: the province profile.
        base_url: the platform's base URL (ends with ``/``).
        uscc: the unit's 统一社会信用代码.
        password: the platform password (from the environment, never from a file).
        state: session storage (working key, dataIndex, token...).
        tz: the plant's time zone (statDates are local).
        now_ms: the clock.
        timeout_s: HTTP timeout.
        retries: extra tries after 5xx, timeouts and dropped connections.
        backoff_initial_s: first retry delay.
        backoff_max_s: longest retry delay.
        on_receipt: called with every exchange.
        sleep: waits between retries (tests pass a recorder).
        seed: seed of the jitter.
        secret_key: a working key obtained out of band.
    """

    def __init__(
        self, profile: ProvinceProfile, base_url: str, uscc: str, password: str, state: SessionState, *,
        tz: ZoneInfo, now_ms: Callable[[], int], timeout_s: float = 30.0, retries: int = 4,
        backoff_initial_s: float = 1.0, backoff_max_s: float = 60.0,
        on_receipt: Callable[[Exchange], None] | None = None, sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None, secret_key: str | None = None,
    ) -> None:
        self.profile = profile
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.uscc = uscc
        self._password = password
        self.state = state
        self.tz = tz
        self.now_ms = now_ms
        self.retries = retries
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.on_receipt = on_receipt
        self.sleep = sleep
        self._rng = random.Random(seed)
        self._http = httpx.Client(timeout=timeout_s, headers={"Content-Type": "application/json; charset=utf-8"})
        if secret_key:
            self.state.set_state("secret_key", secret_key)
        self.retried = 0  # retries done (5xx, timeouts, dropped connections)
        self.renewed = 0  # tokens renewed after a 401

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> PlatformClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport

    def _record(self, operation: str, status: int | None, code: int | None, message: str, response: Any) -> None:
        if self.on_receipt is not None:
            self.on_receipt(Exchange(operation, self.now_ms(), status, code, message, response))

    def _post_once(self, path: str, body: dict[str, Any], auth: bool) -> tuple[int, dict[str, Any]]:
        """One POST with retries on 5xx / timeouts / dropped connections. Returns (HTTP status, envelope)."""
        url = self.base_url + path
        headers: dict[str, str] = {}
        if auth:
            token = self.state.get_state("token")
            if token:
                headers[self.profile.token_header] = token
                if self.profile.token_in_body:
                    body = {**body, self.profile.token_in_body: token}
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempt - 1))
                self.sleep(delay * self._rng.random())
            try:
                resp = self._http.post(url, json=body, headers=headers)
            except httpx.TimeoutException as exc:
                last = f"timeout ({type(exc).__name__})"
                self._record(path, None, None, last, None)
                continue
            except httpx.TransportError as exc:
                last = f"connection failed: {exc or type(exc).__name__}"
                self._record(path, None, None, last, None)
                continue
            if resp.status_code >= 500:
                last = f"HTTP {resp.status_code}"
                self._record(path, resp.status_code, None, last, _json_or_text(resp))
                continue
            envelope = _json_or_text(resp)
            if not isinstance(envelope, dict):
                self._record(path, resp.status_code, None, "answer is not a JSON object", envelope)
                if resp.status_code == self.profile.token_invalid_code:
                    return resp.status_code, {self.profile.response.code: resp.status_code}
                raise PlatformRefusedError(url, resp.status_code, "answer is not a JSON object")
            r = self.profile.response
            code = _int(envelope.get(r.code), resp.status_code)
            self._record(path, resp.status_code, code, str(envelope.get(r.message, "")), envelope)
            return resp.status_code, envelope
        raise PlatformUnavailableError(url, f"no answer after {self.retries + 1} tries: {last}")

    def call(self, path: str, body: dict[str, Any], *, auth: bool = True) -> Any:
        """POST ``body`` to ``path``; renew the token once on 401. Returns the envelope's ``data``.

        Raises:
            PlatformUnavailableError: no usable answer after every retry.
            PlatformRefusedError: the platform answered with a failure code.
        """
        envelope = self._call_envelope(path, body, auth=auth)
        r = self.profile.response
        code = _int(envelope.get(r.code), -1)
        if code != self.profile.ok_code:
            raise PlatformRefusedError(self.base_url + path, code, str(envelope.get(r.message, "")))
        return envelope.get(r.data)

    def _call_envelope(self, path: str, body: dict[str, Any], *, auth: bool) -> dict[str, Any]:
        if auth and not self.state.get_state("token"):
            self.request_token()
        status, envelope = self._post_once(path, body, auth)
        code = _int(envelope.get(self.profile.response.code), status)
        if auth and self.profile.token_invalid_code in (code, status):
            self.renewed += 1
            self.request_token()
            status, envelope = self._post_once(path, body, auth)
        return envelope

    # ------------------------------------------------------------------ the call sequence

    def working_key(self) -> str:
        """The working key (``secretKey``): from the session, or requested once."""
        key = self.state.get_state("secret_key")
        if key:
            return key
        data = self.call(self.profile.endpoints.working_key, {"enterpriseCode": self.uscc}, auth=False)
        key = str((data or {}).get("secretKey", ""))
        if len(key) != 32:
            raise PlatformRefusedError(self.base_url + self.profile.endpoints.working_key, -1,
                                       f"working key of {len(key)} characters, expected 32")
        self.state.set_state("secret_key", key)
        return key

    def pin_block(self) -> str:
        """The password as the platform expects it (SM4-CBC with the working key)."""
        return encrypt_password(self._password, self.working_key(), self.uscc, self.profile.crypto)

    def dictionary(self, spec: DictionarySpec) -> list[dict[str, str]]:
        """Download one dictionary (public ones without a token)."""
        path = self.profile.endpoints.public_dictionaries if spec.public else self.profile.endpoints.dictionaries
        data = self.call(path, {"enterpriseCode": self.uscc, "itemIndex": str(spec.item_index)}, auth=not spec.public)
        entries = (data or {}).get(spec.response_key)
        if not isinstance(entries, list):
            raise DataError(f"{self.base_url}{path}: dictionary itemIndex {spec.item_index} has no "
                            f"{spec.response_key!r} list")
        return [{"code": str(e["code"]), "name": str(e.get("name", ""))} for e in entries
                if isinstance(e, dict) and "code" in e]

    def register(self, fields: dict[str, Any]) -> str:
        """Register the unit (or update its registration); returns the dataIndex."""
        data_index = self.state.get_state("data_index")
        body = {"enterpriseCode": self.uscc, "password": self.pin_block(), **fields}
        if data_index:
            body["dataIndex"] = data_index
            self.call(self.profile.endpoints.registration_update, body, auth=False)
            return data_index
        data = self.call(self.profile.endpoints.registration, body, auth=False)
        data_index = str((data or {}).get("dataIndex", ""))
        if not data_index:
            raise DataError(f"{self.base_url}{self.profile.endpoints.registration}: no dataIndex in the answer")
        self.state.set_state("data_index", data_index)
        return data_index

    def request_token(self) -> str:
        """Request an access token; keeps the token, its expiry, the platform URL and the assigned upload time."""
        data = self.call(self.profile.endpoints.access_token,
                         {"enterpriseCode": self.uscc, "password": self.pin_block()}, auth=False) or {}
        token = str(data.get("token", ""))
        if not token:
            raise DataError(f"{self.base_url}{self.profile.endpoints.access_token}: no token in the answer")
        self.state.set_state("token", token)
        self.state.set_state("token_expires", str(data.get("akExpiresIn", "")))
        self.state.set_state("platform_url", str(data.get("platformURL", "")))
        slot = data.get("enterpriseUploadTime")
        if slot:
            self.state.set_state("upload_time", str(slot))
        return token

    def check_version(self) -> tuple[str, str]:
        """(dicVersion, regVersion) of the platform."""
        data = self.call(self.profile.endpoints.check_version, {"enterpriseCode": self.uscc}) or {}
        return str(data.get("dicVersion", "")), str(data.get("regVersion", ""))

    def configure(self, kind: str, action: str, records: list[dict[str, Any]]) -> None:
        """Upload configuration records of one kind (``add``, ``update`` or ``delete``)."""
        path = f"{self.profile.endpoints.configuration[kind]}/{action}"
        self.call(path, {"enterpriseCode": self.uscc, "records": records})

    def upload(self, values: list[UploadValue], device_id: str) -> UploadReceipt:
        """Upload data values; the receipt says which were accepted.

        Raises:
            PlatformUnavailableError: no answer after every retry (nothing is known to be stored).
            PlatformRefusedError: the platform refused the whole upload.
        """
        body = encode_upload_body(values, uscc=self.uscc, device_id=device_id, tz=self.tz, profile=self.profile,
                                  upload_ms=self.now_ms(), secret_key=self.state.get_state("secret_key"))
        path = self.profile.endpoints.data_upload
        envelope = self._call_envelope(path, body, auth=True)
        receipt = parse_upload_receipt(envelope, tz=self.tz, profile=self.profile, sent=len(values))
        if receipt.code != self.profile.ok_code:
            raise PlatformRefusedError(self.base_url + path, receipt.code, receipt.message)
        return receipt


def _json_or_text(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text[:2000]


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
