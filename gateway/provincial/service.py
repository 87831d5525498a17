"""The uplink service: session, configuration sync, uploads at the assigned slot and on demand, and 补传.

* **Session.** Working key, public dictionaries, registration, access token, version check; the protected
  dictionaries are downloaded again whenever the platform's dictionary version changes, and the dataCodes rebuilt.
* **Configuration sync.** Registration and each configuration kind are uploaded when their content changed since
  the last accepted upload (``add`` for new records, ``update`` for changed ones, ``delete`` for removed ones).
* **What is due.** Every (item, statType, statDate) whose period ended at least ``settle_min`` ago, within the
  ``backfill_days`` horizon, and not acknowledged by the platform. A value the platform rejected is sent again up
  to ``max_resend_rejected`` times (or at once when its value changed).
* **补传.** Nothing distinguishes a late value from a current one except its statDate: a missing or failed period is
  re-sent, with its original statDate, the next time uploads run, so an outage of any length within the horizon
  is filled without anything sent twice once acknowledged.
* **Schedule.** At the platform's assigned ``enterpriseUploadTime`` every day, everything due is sent (day and month
  values, and any 15-minute values still missing); between the daily runs, due 15-minute values are sent every
  ``realtime_interval_min`` minutes. ``send`` does the same on demand for a day, a range, or everything missing.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as dtime
from typing import Any

from energymon.config import InfluxStoreConfig, PlantConfig, SqliteStoreConfig
from energymon.errors import ConfigError, ConfigIssue, EnergymonError
from energymon.gateway.provincial import gate as quality_gate
from energymon.gateway.provincial.client import PlatformClient
from energymon.gateway.provincial.items import (
    Dictionaries,
    ResolvedItem,
    check_references,
    configuration_records,
    fingerprint,
    registration_fields,
    resolve_items,
)
from energymon.gateway.provincial.ledger import Ledger, SentValue
from energymon.gateway.provincial.profile import CONFIGURATION_KINDS, ProvinceProfile, load_profile
from energymon.gateway.provincial.protocol import (
    STAT_DAY,
    STAT_MONTH,
    STAT_NAMES,
    STAT_REALTIME,
    PlatformRefusedError,
    PlatformUnavailableError,
    UploadValue,
)
from energymon.gateway.provincial.values import MonthValues, compute_month
from energymon.interfaces import Clock
from energymon.metrics import PipelineMetrics, private_metrics
from energymon.periods import next_period_start, period_start
from energymon.processors.recompute import MeterReadings
from energymon.processors.rules import PlantRules
from energymon.provincial_config import ProvincialConfig, check_platform_url

__all__ = ["SendReport", "UplinkService", "open_store"]

ReadingsLoader = Callable[[int, int], Mapping[str, MeterReadings]]
_PERIOD = {STAT_REALTIME: "15min", STAT_DAY: "day", STAT_MONTH: "month"}


@dataclass(slots=True)
class SendReport:
    """What one upload run did."""

    due: int = 0
    acknowledged: int = 0
    rejected: int = 0
    failed: int = 0
    blocked: int = 0
    no_value: int = 0
    uploads: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: SendReport) -> None:
        """Add another run's counts."""
        for name in ("due", "acknowledged", "rejected", "failed", "blocked", "no_value", "uploads"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors += other.errors


def open_store(plant: PlantConfig) -> Any:
    """The plant's store (SQLite file or InfluxDB / VictoriaMetrics), for reading counter readings."""
    from energymon.processors.store import InfluxStore, SqliteStore

    cfg = plant.processor.store
    if cfg is None:
        raise ConfigError("plant", [ConfigIssue("processor.store", "the uplink reads values from the store: set one")])
    if isinstance(cfg, SqliteStoreConfig):
        return SqliteStore(cfg)
    assert isinstance(cfg, InfluxStoreConfig)
    return InfluxStore(cfg)


class UplinkService:
    """The provincial uplink of one plant.

    Args:
        plant: the plant configuration (with a ``provincial`` section).
        clock: event time (a manual clock in tests).
        readings: loads counter readings for ``[start_ms, end_ms)``; default: the plant's store.
        password: the platform password; default: the environment variable ``provincial.password_env``.
        ledger: the ledger; default: ``provincial.ledger_path``.
        profile: the province profile; default: ``provincial.profile``.
        sleep: waits between retries.
        ref: reference data (default: the shipped tables).
        metrics: self-metrics, stage ``uplink``: received = values due, sent = values acknowledged, dropped by
            reason (``rejected_by_platform``, ``quality_gate``, ``upload_failed``: all kept in the ledger and
            sent again), errors per failed exchange; a period without a value yet only stays due.
    """

    def __init__(
        self, plant: PlantConfig, *, clock: Clock, readings: ReadingsLoader | None = None,
        password: str | None = None, ledger: Ledger | None = None, profile: ProvinceProfile | None = None,
        sleep: Callable[[float], None] = time.sleep, ref: Any = None, seed: int | None = None,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        if plant.provincial is None:
            raise ConfigError("plant", [ConfigIssue("provincial", "the plant file has no provincial section")])
        self.plant = plant
        self.cfg: ProvincialConfig = plant.provincial
        check_references(plant, self.cfg)
        self.profile = profile or load_profile(self.cfg.profile)
        base_url = self.cfg.base_url or self.profile.base_url
        if not base_url:
            raise ConfigError("plant", [ConfigIssue("provincial.base_url",
                                                    f"profile {self.profile.name} has no public base URL: set one")])
        try:
            check_platform_url(base_url, allow_insecure_http=self.cfg.allow_insecure_http)
        except ValueError as exc:  # the profile's URL (the plant file's is checked at load)
            raise ConfigError("plant", [ConfigIssue("provincial.base_url", str(exc))]) from None
        if password is None:
            password = os.environ.get(self.cfg.password_env)
            if not password:
                raise ConfigError("plant", [ConfigIssue(
                    "provincial.password_env", f"environment variable {self.cfg.password_env} is not set")])
        secret_key = os.environ.get(self.cfg.secret_key_env) if self.cfg.secret_key_env else None
        self.clock = clock
        self.tz = plant.enterprise.tz
        self.ledger = ledger or Ledger(self.cfg.ledger_path)
        self.client = PlatformClient(
            self.profile, base_url, plant.enterprise.uscc, password, self.ledger, tz=self.tz, now_ms=clock.now_ms,
            timeout_s=self.cfg.timeout_s, retries=self.cfg.retries, backoff_initial_s=self.cfg.backoff_initial_s,
            backoff_max_s=self.cfg.backoff_max_s, on_receipt=self.ledger.record_exchange, sleep=sleep, seed=seed,
            secret_key=secret_key)
        if ref is None:
            from energymon.refdata import load_reference_data

            ref = load_reference_data()
        self.rules = PlantRules(plant, ref)
        self._store: Any = None
        self._readings = readings or self._store_readings
        self._items: list[ResolvedItem] | None = None
        self._lock = threading.Lock()
        self.stage = (metrics or private_metrics()).stage("uplink")

    def close(self) -> None:
        """Close the client, the ledger and the store."""
        self.client.close()
        self.ledger.close()
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> UplinkService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _store_readings(self, start_ms: int, end_ms: int) -> Mapping[str, MeterReadings]:
        from energymon.processors.report import load_readings_store

        if self._store is None:
            self._store = open_store(self.plant)
        return load_readings_store(self._store, self.plant, start_ms, end_ms)

    # ------------------------------------------------------------------ session and configuration

    def dictionaries(self) -> Dictionaries:
        """The dictionaries last downloaded (role → entries)."""
        found = self.ledger.get_json("dictionaries")
        return dict(found) if isinstance(found, dict) else {}

    def _download(self, public_only: bool) -> None:
        dicts = self.dictionaries()
        for spec in self.profile.dictionaries:
            if spec.public or not public_only:
                dicts[spec.role] = self.client.dictionary(spec)
        self.ledger.set_json("dictionaries", dicts)
        self._items = None

    def connect(self) -> None:
        """Working key, registration, token and dictionary version; downloads dictionaries that changed."""
        self.client.working_key()
        if not self.ledger.get_state("data_index"):
            self._download(public_only=True)
            self.client.register(registration_fields(self.plant, self.cfg, self.dictionaries()))
            self.ledger.set_state("registration", fingerprint(
                registration_fields(self.plant, self.cfg, self.dictionaries())))
        if not self.ledger.get_state("token"):
            self.client.request_token()
        dic_version, reg_version = self.client.check_version()
        if dic_version != self.ledger.get_state("dic_version") or not self.dictionaries():
            self._download(public_only=False)
            self.ledger.set_state("dic_version", dic_version)
        self.ledger.set_state("reg_version", reg_version)

    def items(self) -> list[ResolvedItem]:
        """The data items with their dataCodes from the current dictionaries."""
        if self._items is None:
            self._items = resolve_items(self.cfg, self.profile, self.dictionaries())
        return self._items

    def sync(self) -> dict[str, int]:
        """Connect, then upload the registration and configuration that changed. Returns records sent per kind."""
        self.connect()
        sent: dict[str, int] = {}
        fields = registration_fields(self.plant, self.cfg, self.dictionaries())
        if fingerprint(fields) != self.ledger.get_state("registration"):
            self.client.register(fields)
            self.ledger.set_state("registration", fingerprint(fields))
            sent["registration"] = 1
        records = configuration_records(self.plant, self.cfg, self.profile, self.dictionaries(), self.items())
        for kind in CONFIGURATION_KINDS:
            previous: dict[str, str] = self.ledger.get_json(f"config:{kind}") or {}
            current = {str(r["code"]): r for r in records[kind]}
            added = [r for c, r in current.items() if c not in previous]
            changed = [r for c, r in current.items() if c in previous and previous[c] != fingerprint(r)]
            removed = [{"code": c} for c in previous if c not in current]
            if kind == "data_items":  # a removed data item is named by its dataCode and statType
                old = self.ledger.get_json("config:data_items:records") or {}
                removed = [old.get(c, {"code": c}) for c in previous if c not in current]
            for action, batch in (("delete", removed), ("add", added), ("update", changed)):
                if batch:
                    self.client.configure(kind, action, batch)
                    sent[kind] = sent.get(kind, 0) + len(batch)
            self.ledger.set_json(f"config:{kind}", {c: fingerprint(r) for c, r in current.items()})
            if kind == "data_items":
                self.ledger.set_json("config:data_items:records", current)
        return sent

    # ------------------------------------------------------------------ what is due

    def horizon_start(self, now_ms: int) -> int:
        """Start of the 补传 horizon: the local day ``backfill_days`` before now."""
        return period_start(now_ms - self.cfg.backfill_days * 86_400_000, "day", self.tz)

    def expected(self, start_ms: int, end_ms: int, now_ms: int,
                 stat_types: Iterable[int] = (0, 1, 2)) -> list[tuple[str, int, int]]:
        """(item, statType, statDate) of every period overlapping ``[start_ms, end_ms)`` that has ended, with the
        settle delay, by ``now_ms`` (a month value is due for the whole month its last days fall in)."""
        settle = self.cfg.settle_min * 60_000
        wanted = set(stat_types)
        out: list[tuple[str, int, int]] = []
        for st in (STAT_REALTIME, STAT_DAY, STAT_MONTH):
            if st not in wanted:
                continue
            period = _PERIOD[st]
            starts: list[int] = []
            cur = period_start(start_ms, period, self.tz)  # a month that began before start_ms is included
            while cur < end_ms:
                nxt = next_period_start(cur, period, self.tz)
                if nxt + settle > now_ms:
                    break
                starts.append(cur)
                cur = nxt
            for item in self.cfg.items:
                if st in item.stat_types:
                    out += [(item.id, st, s) for s in starts]
        return out

    def due(self, now_ms: int, *, start_ms: int | None = None, end_ms: int | None = None,
            stat_types: Iterable[int] = (0, 1, 2)) -> list[tuple[str, int, int]]:
        """Expected periods not acknowledged by the platform (missing, failed, rejected or blocked)."""
        lo = self.horizon_start(now_ms) if start_ms is None else start_ms
        hi = now_ms if end_ms is None else end_ms
        known = self.ledger.period_map(period_start(lo, "month", self.tz), hi)
        out = []
        for key in self.expected(lo, hi, now_ms, stat_types):
            row = known.get(key)
            if row is None or row.state != "acknowledged":
                out.append(key)
        return out

    # ------------------------------------------------------------------ sending

    def send(self, keys: list[tuple[str, int, int]]) -> SendReport:
        """Compute, gate and upload the given periods (statDates kept as they are: 补传 is the same call)."""
        report = SendReport(due=len(keys))
        if not keys:
            return report
        self.stage.received(len(keys))
        try:
            return self._send(keys, report)
        finally:
            self.stage.sent(report.acknowledged)
            # a due period without a value yet is neither sent nor set aside: it stays due
            for reason, n in (("rejected_by_platform", report.rejected), ("quality_gate", report.blocked),
                              ("upload_failed", report.failed)):
                if n:
                    self.stage.dropped(reason, n)

    def _send(self, keys: list[tuple[str, int, int]], report: SendReport) -> SendReport:
        now = self.clock.now_ms()
        items = self.items()
        by_id = {ri.id: ri for ri in items}
        by_month: dict[int, set[tuple[str, int, int]]] = {}
        for key in keys:
            by_month.setdefault(period_start(key[2], "month", self.tz), set()).add(key)
        pad = int(self.cfg.lookback_hours * 3_600_000)
        for month in sorted(by_month):
            wanted = by_month[month]
            until = min(now, next_period_start(month, "month", self.tz))
            readings = self._readings(month - pad, until + pad)
            mv = compute_month(self.rules, readings, items, month, until)
            sendable = self._gate(mv, wanted, report, now)
            known = self.ledger.period_map(min(k[2] for k in wanted), max(k[2] for k in wanted) + 1)
            values: list[tuple[SentValue, UploadValue]] = []
            for key in sorted(sendable):
                item_id, st, ms = key
                value = mv.values[key]
                row = known.get(key)
                if (row is not None and row.state == "rejected" and row.rejects > self.cfg.max_resend_rejected
                        and row.value == value):
                    continue  # rejected too often with this value: left for the status report
                ri = by_id[item_id]
                values.append((SentValue(item_id, st, ms, ri.data_code, value),
                               UploadValue(ri.data_code, st, ms, value, ri.item.input_type, ri.item.scope)))
            if not self._upload(values, report, now):
                break  # the platform is unreachable: the rest stays due
        return report

    def _gate(self, mv: MonthValues, wanted: set[tuple[str, int, int]], report: SendReport,
              now: int) -> set[tuple[str, int, int]]:
        present = {k for k in wanted if k in mv.values}
        report.no_value += len(wanted) - len(present)
        problems = quality_gate.check(self.cfg.gate, self.rules, self.profile, self.items(), mv)
        relevant = [p for p in problems if (p.item, p.stat_type, p.stat_ms) in present]
        self.ledger.clear_problems(present)
        self.ledger.record_problems(now, [(p.item, p.stat_type, p.stat_ms, p.check, p.detail, p.blocking)
                                          for p in relevant])
        blocked: dict[tuple[str, int, int], str] = {}
        for p in relevant:
            if p.blocking:
                blocked.setdefault((p.item, p.stat_type, p.stat_ms), f"{p.check}: {p.detail}")
        if blocked:
            codes = {ri.id: ri.data_code for ri in self.items()}
            self.ledger.mark_blocked(now, [(SentValue(k[0], k[1], k[2], codes[k[0]], mv.values[k]), why)
                                           for k, why in blocked.items()])
            report.blocked += len(blocked)
        return present - set(blocked)

    def _upload(self, values: list[tuple[SentValue, UploadValue]], report: SendReport, now: int) -> bool:
        size = self.profile.max_values_per_upload
        for i in range(0, len(values), size):
            chunk = values[i : i + size]
            try:
                receipt = self.client.upload([u for _, u in chunk], self.cfg.device_id)
            except PlatformUnavailableError as exc:
                self.stage.error(exc)
                self.ledger.record_outcomes(now, [(s, "failed", str(exc)) for s, _ in values[i:]])
                report.failed += len(values) - i
                report.errors.append(str(exc))
                return False
            except (PlatformRefusedError, EnergymonError) as exc:
                self.stage.error(exc)
                self.ledger.record_outcomes(now, [(s, "failed", str(exc)) for s, _ in chunk])
                report.failed += len(chunk)
                report.errors.append(str(exc))
                continue
            report.uploads += 1
            rejected = {(r.data_code, r.stat_type, r.stat_ms): r.reason for r in receipt.rejected}
            outcomes: list[tuple[SentValue, str, str]] = []
            for s, u in chunk:
                why = rejected.get(u.key)
                if why is None:
                    outcomes.append((s, "acknowledged", receipt.message))
                    report.acknowledged += 1
                else:
                    outcomes.append((s, "rejected", why))
                    report.rejected += 1
            self.ledger.record_outcomes(now, outcomes)
        return True

    def send_due(self, *, start_ms: int | None = None, end_ms: int | None = None,
                 stat_types: Iterable[int] = (0, 1, 2)) -> SendReport:
        """Sync, then send every due period in the range (default: the whole 补传 horizon).

        When the platform cannot be reached for the sync but a session and dictionaries are known, the values are
        still computed and tried, so every due period is recorded (``failed``) rather than silently left out.
        """
        errors: list[str] = []
        try:
            self.sync()
        except PlatformUnavailableError as exc:
            if not (self.ledger.get_state("token") and self.dictionaries()):
                raise
            errors.append(str(exc))
        now = self.clock.now_ms()
        report = self.send(self.due(now, start_ms=start_ms, end_ms=end_ms, stat_types=stat_types))
        report.errors[:0] = errors
        return report

    # ------------------------------------------------------------------ schedule

    def upload_time(self) -> dtime:
        """The daily upload slot: assigned by the platform, else ``provincial.upload_time``, else 01:00."""
        text = self.ledger.get_state("upload_time")
        if text:
            try:
                return datetime.strptime(text, self.profile.upload_time_format).time()  # noqa: DTZ007
            except ValueError:
                pass
        return self.cfg.upload_time or dtime(1, 0)

    def next_slot_ms(self, now_ms: int) -> int:
        """Start of the next daily slot at or after now."""
        local = datetime.fromtimestamp(now_ms / 1000, self.tz)
        slot = self.upload_time()
        at = datetime.combine(local.date(), slot, tzinfo=self.tz)
        if at.timestamp() * 1000 < now_ms and self.ledger.get_state("last_daily") == local.date().isoformat():
            at = datetime.combine(local.date() + timedelta(days=1), slot, tzinfo=self.tz)
        return int(at.timestamp() * 1000)

    def run_once(self) -> SendReport | None:
        """Do what the schedule says at the clock's now: the daily run at the slot, real-time pushes between."""
        now = self.clock.now_ms()
        local = datetime.fromtimestamp(now / 1000, self.tz)
        slot_ms = int(datetime.combine(local.date(), self.upload_time(), tzinfo=self.tz).timestamp() * 1000)
        today = local.date().isoformat()
        if now >= slot_ms and self.ledger.get_state("last_daily") != today:
            report = self.send_due()
            if not report.errors:
                self.ledger.set_state("last_daily", today)
            self.ledger.set_state("last_realtime", str(now))
            return report
        interval = self.cfg.realtime_interval_min * 60_000
        last = int(self.ledger.get_state("last_realtime") or 0)
        if interval and now - last >= interval:
            report = self.send_due(stat_types=(STAT_REALTIME,))
            self.ledger.set_state("last_realtime", str(now))
            return report
        return None

    def run(self, stop: threading.Event, on_report: Callable[[SendReport], None] | None = None) -> None:
        """Run the schedule until ``stop`` is set (wall-clock waits; errors are reported and retried later)."""
        while not stop.is_set():
            try:
                report = self.run_once()
                if report is not None and on_report is not None:
                    on_report(report)
            except EnergymonError as exc:
                if on_report is not None:
                    on_report(SendReport(errors=[str(exc)]))
            now = self.clock.now_ms()
            wake = self.next_slot_ms(now)
            if self.cfg.realtime_interval_min:
                wake = min(wake, int(self.ledger.get_state("last_realtime") or now)
                           + self.cfg.realtime_interval_min * 60_000)
            stop.wait(max(1.0, min(60.0, (wake - now) / 1000 / max(self.clock.speed(), 1e-9))))

    # ------------------------------------------------------------------ status

    def status(self, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
        """Per item, statType and local day (month values per month): counts of acknowledged, rejected, failed,
        blocked and missing periods among those expected by now, from the ledger."""
        now = self.clock.now_ms()
        known = self.ledger.period_map(period_start(start_ms, "month", self.tz), end_ms)
        rows: dict[tuple[str, int, int], dict[str, Any]] = {}
        for key in self.expected(start_ms, end_ms, now):
            item_id, st, ms = key
            bucket = ms if st == STAT_MONTH else period_start(ms, "day", self.tz)
            row = rows.setdefault((item_id, st, bucket), {
                "item": item_id, "stat_type": st, "period": STAT_NAMES[st],
                "date": datetime.fromtimestamp(bucket / 1000, self.tz).strftime("%Y-%m" if st == STAT_MONTH
                                                                                 else "%Y-%m-%d"),
                "expected": 0, "acknowledged": 0, "rejected": 0, "failed": 0, "blocked": 0, "missing": 0,
                "messages": []})
            row["expected"] += 1
            found = known.get(key)
            state = "missing" if found is None else found.state
            row[state] += 1
            if found is not None and state != "acknowledged" and found.message and \
                    found.message not in row["messages"] and len(row["messages"]) < 3:
                row["messages"].append(found.message)
        return [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[2], k[1]))]
