"""A provincial 重点用能单位能耗在线监测 platform over HTTP, for tests and for trying the uplink without a province.

It implements the protocol of a province profile (:mod:`energymon.gateway.provincial.profile`): working key,
public and protected dictionaries with a version, registration (the password PIN block checked with SM4-CBC),
access tokens that expire, configuration uploads (add/update/delete per kind) and data uploads that are validated
value by value (registered dataCode and statType, statDate at the start of its period, plausibility band, not in
the future) and stored under (enterprise, dataCode, statType, statDate): a re-post replaces, never doubles.

Realistic failures can be injected while it runs: expired tokens (401), 5xx answers, slow answers, partial
acceptance, and down periods (by the platform's clock, which tests replace with a manual one) during which every
connection is dropped without an answer.

    energymon simulate-platform --port 18080 --profile yunnan --token-ttl-s 3600 --error-rate 0.05

The dictionaries' codes are the simulator's own illustrative values, not a province's published lists; that is
the point: the client takes every code from the downloaded dictionaries.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from zoneinfo import ZoneInfo

from energymon.errors import DataError
from energymon.gateway.provincial.crypto import CryptoError, encrypt_password
from energymon.gateway.provincial.profile import CONFIGURATION_KINDS, ProvinceProfile, load_profile
from energymon.gateway.provincial.protocol import decode_upload_body, parse_stat_date, stat_date_aligned

__all__ = ["DEFAULT_DICTIONARIES", "ProvincialPlatform", "add_parser", "main"]

#: role → entries; the codes are illustrative.
DEFAULT_DICTIONARIES: dict[str, list[dict[str, str]]] = {
    "region": [{"code": "530000", "name": "云南省"}, {"code": "530100", "name": "昆明市"},
               {"code": "530102", "name": "五华区"}, {"code": "510000", "name": "四川省"},
               {"code": "510100", "name": "成都市"}, {"code": "511700", "name": "达州市"},
               {"code": "360000", "name": "江西省"}, {"code": "360100", "name": "南昌市"},
               {"code": "360102", "name": "东湖区"}, {"code": "360400", "name": "九江市"}],
    "industry": [{"code": "C", "name": "制造业"}, {"code": "C30", "name": "非金属矿物制品业"},
                 {"code": "C301", "name": "水泥、石灰和石膏制造"}, {"code": "C3011", "name": "水泥制造"},
                 {"code": "C31", "name": "黑色金属冶炼和压延加工业"}, {"code": "C3071", "name": "建筑陶瓷制品制造"},
                 {"code": "C3072", "name": "卫生陶瓷制品制造"}, {"code": "C3211", "name": "铜冶炼"}],
    "enterprise_type": [{"code": "110", "name": "国有企业"}, {"code": "159", "name": "其他有限责任公司"},
                        {"code": "190", "name": "其他企业"}],
    "process": [{"code": "00", "name": "全厂"}, {"code": "01", "name": "生料制备"},
                {"code": "02", "name": "熟料烧成"}, {"code": "03", "name": "水泥粉磨"},
                {"code": "04", "name": "煤粉制备"}, {"code": "05", "name": "辅助生产"}],
    "equipment": [{"code": "00", "name": "无"}, {"code": "01", "name": "回转窑"}, {"code": "02", "name": "生料磨"},
                  {"code": "03", "name": "水泥磨"}, {"code": "04", "name": "煤磨"}, {"code": "05", "name": "进线"}],
    "energy_class": [{"code": "01", "name": "一次能源"}, {"code": "02", "name": "二次能源"},
                     {"code": "03", "name": "耗能工质"}, {"code": "04", "name": "产品产量"},
                     {"code": "08", "name": "能效指标"}, {"code": "10", "name": "综合能耗"}],
    "energy_type": [{"code": "0100", "name": "原煤"}, {"code": "1100", "name": "天然气"},
                    {"code": "3300", "name": "热力"}, {"code": "3400", "name": "电力"},
                    {"code": "4000", "name": "新水"},
                    {"code": "9000", "name": "综合能源消费量"}, {"code": "9100", "name": "熟料产量"},
                    {"code": "9200", "name": "单位产品综合能耗"}],
    "data_usage": [{"code": "10", "name": "生产"}, {"code": "20", "name": "辅助生产"}, {"code": "80", "name": "消费量"},
                   {"code": "90", "name": "产量"}],
    "input_type": [{"code": "1", "name": "自动采集"}, {"code": "2", "name": "手工填报"}],
}


@dataclass
class _Faults:
    fail_next: list[int] = field(default_factory=list)  # HTTP statuses for the next requests
    slow_next: list[float] = field(default_factory=list)  # delays (s) before the next answers
    partial_next: list[float] = field(default_factory=list)  # share of values refused in the next uploads
    down: list[tuple[int, int]] = field(default_factory=list)  # [start, end) ms on the platform clock
    error_rate: float = 0.0
    slow_rate: float = 0.0
    slow_s: float = 0.0
    partial_rate: float = 0.0


@dataclass
class _Unit:
    uscc: str
    secret_key: str
    pin: str | None = None
    data_index: str | None = None
    registration: dict[str, Any] = field(default_factory=dict)
    configuration: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # kind → key → record


class ProvincialPlatform:
    """The simulated platform: an HTTP server on ``host:port`` in a background thread.

    Args:
        profile: the province profile it speaks.
        host: address to bind.
        port: TCP port (0: a free one).
        tz: local time zone of statDates.
        now_ms: the platform's clock (token expiry, down periods, the future check).
        token_ttl_s: life of an access token.
        upload_time: the daily slot assigned to every unit (HH:MM:SS).
        seed: seed of the random faults.
    """

    def __init__(
        self, profile: ProvinceProfile, *, host: str = "127.0.0.1", port: int = 0, tz: str = "Asia/Shanghai",
        now_ms: Callable[[], int] | None = None, token_ttl_s: float = 7200.0, upload_time: str = "01:30:00",
        seed: int = 1,
    ) -> None:
        self.profile = profile
        self.tz = ZoneInfo(tz)
        self.now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        self.token_ttl_s = token_ttl_s
        self.upload_time = upload_time
        self.faults = _Faults()
        self.dictionaries = {k: list(v) for k, v in DEFAULT_DICTIONARIES.items()}
        self.dic_version = 1
        self.reg_version = 1
        self.units: dict[str, _Unit] = {}
        self.tokens: dict[str, tuple[str, int]] = {}  # token → (uscc, expires ms)
        #: (uscc, dataCode, statType) → registered data-item record
        self.items: dict[tuple[str, str, int], dict[str, Any]] = {}
        #: (uscc, dataCode, statType, statDate ms) → value
        self.values: dict[tuple[str, str, int, int], float] = {}
        #: how often each key was accepted (more than once = a re-post of an accepted value)
        self.accepted_times: Counter[tuple[str, str, int, int]] = Counter()
        self.requests: Counter[str] = Counter()  # path → requests answered
        self.dropped = 0  # connections dropped while down
        self.uploads = 0  # data uploads answered 200
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        platform = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body leave at once, without waiting for a delayed ACK

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                platform._handle(self)

            def do_GET(self) -> None:
                platform._handle(self)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle

    @property
    def port(self) -> int:
        """The bound port."""
        port: int = self._server.server_address[1]
        return port

    @property
    def url(self) -> str:
        """Base URL the client uses (ends with ``/``)."""
        return f"http://127.0.0.1:{self.port}/platform/"

    def start(self) -> ProvincialPlatform:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="provincial-platform", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> ProvincialPlatform:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ fault injection and inspection

    def expire_tokens(self) -> None:
        """Every issued access token becomes invalid (the next call gets responseCode 401)."""
        with self._lock:
            self.tokens.clear()

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` requests with HTTP ``status``."""
        with self._lock:
            self.faults.fail_next += [status] * n

    def slow_next(self, n: int, seconds: float) -> None:
        """Delay the next ``n`` answers by ``seconds``."""
        with self._lock:
            self.faults.slow_next += [seconds] * n

    def partial_next(self, n: int, share: float = 0.3) -> None:
        """In the next ``n`` data uploads, refuse about ``share`` of the values (reason: busy, re-send)."""
        with self._lock:
            self.faults.partial_next += [share] * n

    def down_between(self, start_ms: int, end_ms: int) -> None:
        """Drop every connection while the platform clock is in ``[start_ms, end_ms)``."""
        with self._lock:
            self.faults.down.append((start_ms, end_ms))

    def set_dictionary(self, role: str, entries: list[dict[str, str]]) -> None:
        """Replace a dictionary and bump the dictionary version."""
        with self._lock:
            self.dictionaries[role] = list(entries)
            self.dic_version += 1

    def stored(self, uscc: str) -> dict[tuple[str, int, int], float]:
        """(dataCode, statType, statDate ms) → value held for a unit."""
        with self._lock:
            return {(c, s, d): v for (u, c, s, d), v in self.values.items() if u == uscc}

    def configuration(self, uscc: str, kind: str) -> dict[str, dict[str, Any]]:
        """Configuration records of one kind for a unit."""
        with self._lock:
            return dict(self.units[uscc].configuration.get(kind, {}))

    # ------------------------------------------------------------------ HTTP

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        now = self.now_ms()
        with self._lock:
            down = any(a <= now < b for a, b in self.faults.down)
            fail = self.faults.fail_next.pop(0) if self.faults.fail_next else None
            if fail is None and self.faults.error_rate and self._rng.random() < self.faults.error_rate:
                fail = 503
            delay = self.faults.slow_next.pop(0) if self.faults.slow_next else 0.0
            if not delay and self.faults.slow_rate and self._rng.random() < self.faults.slow_rate:
                delay = self.faults.slow_s
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        if down:
            with self._lock:
                self.dropped += 1
            h.close_connection = True  # no answer at all: the client sees the connection dropped
            return
        if delay:
            time.sleep(delay)
        if fail is not None:
            self._send(h, fail, {"error": "injected failure"})
            return
        path = h.path.split("?", 1)[0]
        prefix = "/platform/"
        op = path[len(prefix):] if path.startswith(prefix) else path.lstrip("/")
        try:
            body = json.loads(raw.decode("utf-8")) if raw else {}
            if not isinstance(body, dict):
                raise DataError("body is not a JSON object")
            envelope = self._dispatch(op, body, h.headers.get(self.profile.token_header))
        except (DataError, CryptoError, ValueError) as exc:
            envelope = self._envelope(400, f"bad request: {exc}", None)
        with self._lock:
            self.requests[op] += 1
        self._send(h, 200, envelope)

    def _send(self, h: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json; charset=utf-8")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
            h.close_connection = True

    def _envelope(self, code: int, message: str, data: Any) -> dict[str, Any]:
        r = self.profile.response
        return {r.code: code, r.message: message, r.data: data}

    # ------------------------------------------------------------------ operations

    def _dispatch(self, op: str, body: dict[str, Any], token: str | None) -> dict[str, Any]:
        e = self.profile.endpoints
        uscc = body.get("enterpriseCode")
        if not isinstance(uscc, str) or not uscc:
            return self._envelope(400, "enterpriseCode missing", None)
        if op == e.working_key:
            return self._working_key(uscc)
        if op == e.public_dictionaries:
            return self._dictionary(body, public=True)
        if op in (e.registration, e.registration_update):
            return self._register(uscc, body, update=op == e.registration_update)
        if op == e.access_token:
            return self._access_token(uscc, body)
        if self.profile.token_in_body and token is None:
            token = body.get(self.profile.token_in_body)
        with self._lock:
            owner = self.tokens.get(token or "")
            if owner is None or owner[0] != uscc or owner[1] <= self.now_ms():
                self.tokens.pop(token or "", None)
                return self._envelope(self.profile.token_invalid_code, "AK invalid or expired", None)
        if op == e.check_version:
            return self._envelope(200, "OK", {"dicVersion": str(self.dic_version), "regVersion": str(self.reg_version),
                                              "loadPlatformDataURL": self.url + e.dictionaries})
        if op == e.dictionaries:
            return self._dictionary(body, public=False)
        if op == e.data_upload:
            return self._upload(uscc, body)
        for kind in CONFIGURATION_KINDS:
            base = e.configuration[kind]
            for action in ("add", "update", "delete"):
                if op == f"{base}/{action}":
                    return self._configure(uscc, kind, action, body)
        return self._envelope(404, f"unknown operation {op!r}", None)

    def _working_key(self, uscc: str) -> dict[str, Any]:
        with self._lock:
            unit = self.units.get(uscc)
            if unit is None:
                unit = self.units[uscc] = _Unit(uscc, secrets.token_hex(16).upper())
            return self._envelope(200, "OK", {"secretKey": unit.secret_key})

    def _dictionary(self, body: dict[str, Any], *, public: bool) -> dict[str, Any]:
        try:
            index = int(body.get("itemIndex", -1))
        except (TypeError, ValueError):
            index = -1
        for spec in self.profile.dictionaries:
            if spec.item_index == index:
                if public and not spec.public:
                    return self._envelope(self.profile.token_invalid_code, "this dictionary needs an AK", None)
                with self._lock:
                    entries = list(self.dictionaries.get(spec.role, []))
                return self._envelope(200, "OK", {spec.response_key: entries, "version": str(self.dic_version)})
        return self._envelope(404, f"no dictionary with itemIndex {index}", None)

    def _register(self, uscc: str, body: dict[str, Any], *, update: bool) -> dict[str, Any]:
        with self._lock:
            unit = self.units.get(uscc)
            if unit is None:
                return self._envelope(403, "request a working key first", None)
            pin = body.get("password")
            if not isinstance(pin, str) or len(pin) < 16:
                return self._envelope(400, "password PIN block missing", None)
            for key in ("cmpName", "address", "industryCode", "regionCode", "typeCode"):
                if not body.get(key):
                    return self._envelope(400, f"{key} missing", None)
            region_codes = {d["code"] for d in self.dictionaries["region"]}
            if body["regionCode"] not in region_codes:
                return self._envelope(400, f"regionCode {body['regionCode']} not in the region dictionary", None)
            if update:
                if body.get("dataIndex") != unit.data_index:
                    return self._envelope(400, "dataIndex does not match the registration", None)
            elif unit.data_index is None:
                unit.data_index = secrets.token_hex(8)
            unit.pin = pin
            unit.registration = dict(body)
            return self._envelope(200, "OK", {"dataIndex": unit.data_index})

    def _access_token(self, uscc: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            unit = self.units.get(uscc)
            if unit is None or unit.pin is None:
                return self._envelope(403, "not registered", None)
            if body.get("password") != unit.pin:
                return self._envelope(403, "wrong password", None)
            token = secrets.token_urlsafe(24)
            now = self.now_ms()
            expires = now + int(self.token_ttl_s * 1000)
            self.tokens[token] = (uscc, expires)
            fmt = "%Y-%m-%d %H:%M:%S"
            return self._envelope(200, "OK", {
                "token": token,
                "akValidAt": datetime.fromtimestamp(now / 1000, self.tz).strftime(fmt) + " 000",
                "akExpiresIn": datetime.fromtimestamp(expires / 1000, self.tz).strftime(fmt) + " 000",
                "platformURL": self.url,
                "enterpriseUploadTime": self.upload_time,
            })

    def _configure(self, uscc: str, kind: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        records = body.get("records")
        if not isinstance(records, list):
            return self._envelope(400, "records missing", None)
        with self._lock:
            store = self.units[uscc].configuration.setdefault(kind, {})
            for rec in records:
                if not isinstance(rec, dict) or not rec.get("code"):
                    return self._envelope(400, f"{kind}: every record needs a code", None)
                if kind == "data_items":
                    problem = self._check_item(rec)
                    if problem:
                        return self._envelope(400, f"data item {rec.get('code')}: {problem}", None)
            for rec in records:
                code = str(rec["code"])
                if action == "delete":
                    store.pop(code, None)
                    if kind == "data_items":
                        self.items.pop((uscc, str(rec["dataCode"]), int(rec["statType"])), None)
                    continue
                store[code] = dict(rec)
                if kind == "data_items":
                    self.items[(uscc, str(rec["dataCode"]), int(rec["statType"]))] = dict(rec)
            return self._envelope(200, "OK", {"count": len(records)})

    def _check_item(self, rec: dict[str, Any]) -> str | None:
        """A data item's dataCode parts must be codes of the current dictionaries."""
        for role, key in (("process", "processCode"), ("equipment", "equipmentCode"),
                          ("energy_class", "energyClassCode"), ("energy_type", "energyTypeCode"),
                          ("data_usage", "dataUsageCode")):
            if rec.get(key) not in {d["code"] for d in self.dictionaries[role]}:
                return f"{key} {rec.get(key)!r} is not in the {role} dictionary (version {self.dic_version})"
        if int(rec.get("statType", -1)) not in (0, 1, 2, 3):
            return "statType must be 0, 1, 2 or 3"
        return None

    def _upload(self, uscc: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            unit = self.units[uscc]
            share = self.faults.partial_next.pop(0) if self.faults.partial_next else (
                self.faults.partial_rate if self._rng.random() < 0.5 else 0.0)
        _, records = decode_upload_body(body, tz=self.tz, profile=self.profile, secret_key=unit.secret_key)
        f = self.profile.data_fields
        r = self.profile.response
        now = self.now_ms()
        rejected: list[dict[str, Any]] = []
        accepted = 0
        with self._lock:
            for rec in records:
                reason = None
                try:
                    code = str(rec[f.data_code])
                    stat_type = int(rec[f.stat_type])
                    stat_ms = parse_stat_date(str(rec[f.stat_date]), self.tz, self.profile)
                    value = float(rec[f.value])
                except (KeyError, TypeError, ValueError, DataError) as exc:
                    rejected.append({f.data_code: rec.get(f.data_code), f.stat_type: rec.get(f.stat_type),
                                     f.stat_date: rec.get(f.stat_date), r.rejected_reason: f"malformed: {exc}"})
                    continue
                item = self.items.get((uscc, code, stat_type))
                if item is None:
                    reason = "dataCode not registered for this statType"
                elif not stat_date_aligned(stat_ms, stat_type, self.tz, self.profile):
                    reason = "statDate is not the start of its period"
                elif stat_ms > now:
                    reason = "statDate in the future"
                elif not float(item["dataValueMin"]) <= value <= float(item["dataValueMax"]):
                    reason = f"dataValue {value} outside [{item['dataValueMin']}, {item['dataValueMax']}]"
                elif share and self._rng.random() < share:
                    reason = "busy, re-send later"
                if reason is not None:
                    rejected.append({f.data_code: code, f.stat_type: stat_type, f.stat_date: rec[f.stat_date],
                                     r.rejected_reason: reason})
                    continue
                key = (uscc, code, stat_type, stat_ms)
                self.values[key] = value
                self.accepted_times[key] += 1
                accepted += 1
            self.uploads += 1
        message = self.profile.success_message if not rejected else "PARTIAL SUCCESS"
        return self._envelope(200, message, {r.accepted_count: accepted, r.rejected: rejected})

    # ------------------------------------------------------------------ helpers for tests and tools

    def expected_pin(self, uscc: str, password: str) -> str:
        """The PIN block the platform expects for ``password`` (for checks)."""
        return encrypt_password(password, self.units[uscc].secret_key, uscc, self.profile.crypto)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``simulate-platform`` to an argparse subparsers object."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "simulate-platform",
        help="运行模拟的省级在线监测平台 HTTP 服务 (run a simulated provincial platform over HTTP)",
        description="A provincial platform speaking a province profile's protocol, with injectable failures.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=18080, help="TCP port (default 18080)")
    p.add_argument("--profile", default="yunnan", help="province profile name or YAML path (default yunnan)")
    p.add_argument("--timezone", default="Asia/Shanghai", help="local time zone of statDates")
    p.add_argument("--token-ttl-s", type=float, default=7200.0, help="access-token life in seconds")
    p.add_argument("--upload-time", default="01:30:00", help="daily slot assigned to units (HH:MM:SS)")
    p.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered 503")
    p.add_argument("--slow-rate", type=float, default=0.0, help="share of answers delayed by --slow-s")
    p.add_argument("--slow-s", type=float, default=2.0, help="delay of a slow answer")
    p.add_argument("--partial-rate", type=float, default=0.0,
                   help="share of values refused as busy, in half the uploads")
    p.add_argument("--seed", type=int, default=1, help="seed of the random faults")
    return p


def main(args: argparse.Namespace, *, ready: Callable[[ProvincialPlatform], None] | None = None,
         stop: threading.Event | None = None) -> int:
    """Run the simulator until interrupted (or until ``stop`` is set). Returns the exit code."""
    platform = ProvincialPlatform(load_profile(args.profile), host=args.host, port=args.port, tz=args.timezone,
                                  token_ttl_s=args.token_ttl_s, upload_time=args.upload_time, seed=args.seed)
    platform.faults.error_rate = args.error_rate
    platform.faults.slow_rate = args.slow_rate
    platform.faults.slow_s = args.slow_s
    platform.faults.partial_rate = args.partial_rate
    platform.start()
    print(f"provincial platform ({platform.profile.title}) at http://{args.host}:{platform.port}/platform/",
          flush=True)
    if ready is not None:
        ready(platform)
    event = stop or threading.Event()
    try:
        while not event.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        platform.stop()
    return 0
