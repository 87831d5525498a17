"""The provincial uplink against the simulated platform over real HTTP on loopback.

The plant is the cement example with a ``provincial`` section; counter readings of every meter are written into an
SQLite store (15-minute readings at constant rates, so every expected value is known by hand). Time is a manual
clock shared by the client and the platform (token expiry and down periods run on it).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry
from services import free_port

from energymon.clock import ManualClock
from energymon.config import PlantConfig, parse_plant
from energymon.demo import example_plant_path
from energymon.gateway.provincial.profile import load_profile
from energymon.gateway.provincial.protocol import STAT_DAY, STAT_MONTH, STAT_REALTIME
from energymon.gateway.provincial.service import SendReport, UplinkService
from energymon.interfaces import Row, series_key
from energymon.metrics import PipelineMetrics
from energymon.processors.store import SqliteStore
from energymon.simulators.provincial_platform import ProvincialPlatform

SH = ZoneInfo("Asia/Shanghai")
USCC = "91530102MA6K7LQ8RH"
PASSWORD = "Yn#2026pass"
#: counter rises per hour (kWh, t, Nm3) of the example plant's meters
RATES = {"incoming": 3000.0, "raw_mill": 800.0, "kiln_drive": 900.0, "coal_mill": 300.0, "cement_mill": 900.0,
         "coal_feeder": 5.0, "clinker_scale": 40.0, "gas_main": 50.0}
ELEC_CODE = "00-00-0000023400-80"  # 全厂 / 无 / 二次能源 / 电力 / 消费量 in the simulator's dictionaries

PROVINCIAL = """
provincial:
  profile: yunnan
  base_url: "{url}"
  allow_insecure_http: true
  device_id: EDGE-0001
  password_env: ENERGYMON_TEST_PROVINCIAL_PASSWORD
  ledger_path: "{ledger}"
  timeout_s: {timeout}
  retries: 3
  backoff_initial_s: 0.01
  backoff_max_s: 0.05
  settle_min: 20
  backfill_days: {backfill}
  registration:
    address: 昆明市五华区示例路1号
    zip_code: "650000"
    corporation_name: 张三
    register_date: 2010-05-01
    region_code: 五华区
    type_code: 其他有限责任公司
    energy_consume_level: 4
  energy_office: {{name: 能源管理科, head: 李四, phone: "0871-0000000"}}
  contacts: [{{name: 王五, role: 能源管理员, phone: "13800000000"}}]
  energy_managers: [{{name: 李四, certificate: NY-2020-001}}]
  processes: [{{process: plant, code: 全厂}}, {{process: kiln, code: 熟料烧成}}]
  gauges:
    - id: G-incoming
      meter: incoming
      model: DTSD341
      accuracy_class: 0.5S
      verifications: [{{date: 2025-06-01, next_due: 2026-06-01, organisation: 云南省计量院, certificate: JD-1}}]
      replacements: [{{at: "2025-01-10T10:00:00+08:00", old_serial: A1, new_serial: A2, reason: 故障}}]
  items:
    - id: elec_total
      name: 全厂用电量
      source: {{kind: meter, meter: incoming}}
      code: {{energy_class: 二次能源, energy_type: 电力, usage: 消费量}}
      gauge: G-incoming
      max_value: {elec_max}
    - id: total_energy
      name: 综合能源消费量
      source: {{kind: enterprise, field: kgce}}
      code: {{energy_class: 综合能耗, energy_type: 综合能源消费量, usage: 消费量}}
      scale: 0.001
      max_value: 10
    - id: coal
      name: 原煤消费量
      source: {{kind: carrier, carrier: raw_coal}}
      code: {{process: 熟料烧成, energy_class: 一次能源, energy_type: 原煤, usage: 消费量}}
      stat_types: [1, 2]
      max_value: 5
    - id: clinker
      name: 熟料产量
      source: {{kind: product, product: clinker}}
      code: {{process: 熟料烧成, energy_class: 产品产量, energy_type: 熟料产量, usage: 产量}}
      max_value: 50
  gate: {{mode: {gate_mode}}}
"""


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=SH).timestamp() * 1000)


def plant_text(tmp: Path, url: str, *, timeout: float = 5.0, backfill: int = 12, elec_max: float = 2000,
               gate_mode: str = "block", profile: str = "yunnan") -> str:
    """The example plant file with its store in ``tmp`` and a provincial section pointing at ``url``."""
    base = example_plant_path().read_text(encoding="utf-8")
    base = base.replace("path: energymon-demo.sqlite", f'path: "{tmp / "store.sqlite"}"')
    extra = PROVINCIAL.format(url=url, ledger=tmp / "ledger.sqlite", timeout=timeout, backfill=backfill,
                              elec_max=elec_max, gate_mode=gate_mode)
    if profile == "jiangxi":  # a unit in 南昌市东湖区 on the Jiangxi platform
        extra = extra.replace("profile: yunnan", "profile: jiangxi")
        extra = extra.replace("region_code: 五华区", "region_code: 东湖区")
        extra = extra.replace("昆明市五华区示例路1号", "南昌市东湖区示例路1号").replace('"650000"', '"330000"')
    return base + textwrap.dedent(extra)


def make_plant(tmp: Path, url: str, **kw: Any) -> PlantConfig:
    return parse_plant(plant_text(tmp, url, **kw), "plant.yaml")


def write_readings(plant: PlantConfig, start: int, end: int, *, skip: dict[str, tuple[int, int]] | None = None) -> None:
    """15-minute counter readings at the constant RATES over [start, end]; ``skip`` leaves a meter's span out."""
    rows: list[Row] = []
    for meter_id, rate in RATES.items():
        meter = plant.meter(meter_id)
        assert meter.counter is not None
        unit = plant.quantities(meter)[meter.counter][0]
        key = series_key("reading", enterprise=USCC, gateway="gw-line1", meter=meter_id, quantity=meter.counter,
                         unit=unit)
        gap = (skip or {}).get(meter_id)
        t = start
        while t <= end:
            if gap is None or not gap[0] < t < gap[1]:
                rows.append((key, {"value": 1000.0 + rate * (t - start) / 3_600_000}, t))
            t += 900_000
    store = plant.processor.store
    assert store is not None
    with SqliteStore(store) as s:  # type: ignore[arg-type]
        s.write(rows)


class Env:
    """A platform, a plant file pointing at it, and a factory for uplink services sharing one manual clock."""

    def __init__(self, tmp: Path, clock: ManualClock, profile: str = "yunnan", **plant_kw: Any) -> None:
        self.tmp = tmp
        self.clock = clock
        self.platform = ProvincialPlatform(load_profile(profile), port=free_port(), now_ms=clock.now_ms,
                                           token_ttl_s=2 * 3600).start()
        self.plant = make_plant(tmp, self.platform.url, profile=profile, **plant_kw)
        self.sleeps: list[float] = []
        self.metrics = PipelineMetrics(CollectorRegistry())

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, {"stage": "uplink", **labels}) or 0.0

    def service(self) -> UplinkService:
        return UplinkService(self.plant, clock=self.clock, password=PASSWORD, sleep=self.sleeps.append, seed=3,
                             metrics=self.metrics)

    def close(self) -> None:
        self.platform.stop()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    clock = ManualClock(datetime(2026, 3, 16, 1, 30, tzinfo=SH))
    e = Env(tmp_path, clock)
    write_readings(e.plant, ms(2026, 3, 1) - 86_400_000, ms(2026, 3, 20))
    yield e
    e.close()


def acked(service: UplinkService, start: int, end: int) -> dict[tuple[str, int, int], float | None]:
    return {(r.item, r.stat_type, r.stat_ms): r.value for r in service.ledger.periods(start, end)
            if r.state == "acknowledged"}


# --------------------------------------------------------------------------- the call sequence


def test_full_call_sequence_registers_configures_and_uploads(env: Env) -> None:
    with env.service() as svc:
        sent = svc.sync()
        ops = [e.operation for e in svc.ledger.exchanges()]
        assert ops[:4] == ["enterpriseInfo/rwk", "dataDownload/public", "dataDownload/public", "dataDownload/public"]
        assert ops.index("enterpriseInfo/apply") < ops.index("requestAK") < ops.index("checkVersion")
        assert ops.index("checkVersion") < ops.index("dataDownload") < ops.index("companyEnergySys/add")
        assert ops.index("gaugeConfigure/add") < ops.index("dataCollectConfigure/add")
        assert sent == {"energy_office": 1, "contacts": 1, "energy_managers": 1, "processes": 2, "gauges": 1,
                        "gauge_verifications": 1, "gauge_replacements": 1, "data_items": 11}
        # the password went as the SM4-CBC PIN block of the working key the platform issued
        unit = env.platform.units[USCC]
        assert unit.pin == env.platform.expected_pin(USCC, PASSWORD)
        assert unit.registration["regionCode"] == "530102" and unit.registration["typeCode"] == "159"
        assert svc.upload_time().isoformat() == "01:30:00"  # assigned by the platform
        items = env.platform.configuration(USCC, "data_items")
        assert items["elec_total:0"]["dataCode"] == ELEC_CODE
        assert (items["elec_total:0"]["dataValueMax"], items["elec_total:1"]["dataValueMax"]) == (2000, 2000 * 96)
        assert items["clinker:2"]["processCode"] == "02"
        assert env.platform.configuration(USCC, "gauge_replacements")["G-incoming:2025-01-10T10:00:00+08:00"][
            "replaceTime"] == "2025-01-10 10:00:00"
        assert svc.sync() == {}  # nothing changed: nothing re-sent

        report = svc.send_due(start_ms=ms(2026, 3, 15), end_ms=ms(2026, 3, 16))
        assert report.failed == report.rejected == report.blocked == 0
        assert report.acknowledged == report.due == 96 * 3 + 4  # three 15-minute items, four day values
    stored = env.platform.stored(USCC)
    assert stored[(ELEC_CODE, STAT_REALTIME, ms(2026, 3, 15, 10, 15))] == pytest.approx(750.0)
    assert stored[(ELEC_CODE, STAT_DAY, ms(2026, 3, 15))] == pytest.approx(72000.0)
    # statDate is the local period start: 2026-03-15 00:00 Beijing time = 2026-03-14 16:00 UTC
    assert ms(2026, 3, 15) == int(datetime(2026, 3, 14, 16, tzinfo=ZoneInfo("UTC")).timestamp() * 1000)
    day_keys = sorted(k[2] for k in stored if k[1] == STAT_DAY)
    assert set(day_keys) == {ms(2026, 3, 15)}
    coal = [v for (c, st, _), v in stored.items() if st == STAT_DAY and c.endswith("0100-80")]
    assert coal == [pytest.approx(5.0 * 24)]
    assert all(n == 1 for n in env.platform.accepted_times.values())
    receipts = [e for e in svc_exchanges(env) if e.operation == "dataUpload"]
    assert receipts and all(e.code == 200 and e.message == "RECEIVE SUCCESS" for e in receipts)


def svc_exchanges(env: Env) -> list[Any]:
    with env.service() as svc:
        return svc.ledger.exchanges()


def test_jiangxi_profile_registers_configures_and_uploads_to_the_simulated_platform(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 3, 16, 1, 30, tzinfo=SH))
    env = Env(tmp_path, clock, profile="jiangxi")
    try:
        write_readings(env.plant, ms(2026, 3, 1) - 86_400_000, ms(2026, 3, 20))
        with env.service() as svc:
            assert svc.profile.name == "jiangxi" and svc.profile.title == "江西省重点用能单位能耗在线监测系统"
            sent = svc.sync()
            assert sent["data_items"] == 11 and sent["gauges"] == 1
            unit = env.platform.units[USCC]
            assert unit.pin == env.platform.expected_pin(USCC, PASSWORD)
            assert unit.registration["regionCode"] == "360102"  # 东湖区 from the platform's dictionary
            report = svc.send_due(start_ms=ms(2026, 3, 15), end_ms=ms(2026, 3, 16))
            assert report.failed == report.rejected == report.blocked == 0
            assert report.acknowledged == report.due == 96 * 3 + 4
        stored = env.platform.stored(USCC)
        assert stored[(ELEC_CODE, STAT_DAY, ms(2026, 3, 15))] == pytest.approx(72000.0)
        assert stored[(ELEC_CODE, STAT_REALTIME, ms(2026, 3, 15, 10, 15))] == pytest.approx(750.0)
        # every protocol detail is an assumption until a Jiangxi source is found, and the profile says so
        profile = load_profile("jiangxi")
        assert {"endpoints", "crypto", "data_fields", "dictionaries"} <= set(profile.unverified())
        assert profile.provenance["realtime_minutes"].confidence == "V"
    finally:
        env.close()


def test_expired_token_is_renewed_and_the_call_repeated(env: Env) -> None:
    with env.service() as svc:
        svc.sync()
        env.platform.expire_tokens()
        report = svc.send_due(start_ms=ms(2026, 3, 15), end_ms=ms(2026, 3, 16))
        assert report.acknowledged == report.due and report.failed == 0
        assert svc.client.renewed == 1
        codes = [(e.operation, e.code) for e in svc.ledger.exchanges()]
        i = codes.index(("checkVersion", 401))
        assert codes[i + 1] == ("requestAK", 200) and codes[i + 2] == ("checkVersion", 200)
        # the token also runs out by the clock
        env.clock.advance(3 * 3600)
        assert svc.send_due(start_ms=ms(2026, 3, 14), end_ms=ms(2026, 3, 15)).failed == 0
        assert svc.client.renewed == 2


def test_5xx_answers_are_retried_with_backoff(env: Env) -> None:
    with env.service() as svc:
        svc.sync()
        env.platform.fail_next(2, 503)
        report = svc.send_due(start_ms=ms(2026, 3, 15), end_ms=ms(2026, 3, 16))
        assert report.acknowledged == report.due and report.failed == 0
        assert svc.client.retried == 2
        assert len(env.sleeps) == 2 and all(0 <= s <= 0.05 for s in env.sleeps)
        statuses = [e.http_status for e in svc.ledger.exchanges("checkVersion")]
        assert statuses[-3:] == [503, 503, 200]


def test_slow_answers_within_the_timeout_need_no_retry(env: Env) -> None:
    with env.service() as svc:
        svc.sync()
        env.platform.slow_next(3, 1.0)
        report = svc.send_due(start_ms=ms(2026, 3, 15), end_ms=ms(2026, 3, 16))
        assert report.acknowledged == report.due
        assert svc.client.retried == 0


def test_answers_slower_than_the_timeout_are_retried(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 3, 16, 1, 30, tzinfo=SH))
    e = Env(tmp_path, clock, timeout=0.5)
    try:
        write_readings(e.plant, ms(2026, 3, 14), ms(2026, 3, 17))
        with e.service() as svc:
            svc.sync()
            e.platform.slow_next(1, 2.0)
            report = svc.send_due(start_ms=ms(2026, 3, 15), end_ms=ms(2026, 3, 16))
            assert report.acknowledged == report.due and svc.client.retried == 1
            assert any(x.message.startswith("timeout") for x in svc.ledger.exchanges("checkVersion"))
    finally:
        e.close()


def test_partial_acceptance_is_recorded_per_value_and_resent(env: Env) -> None:
    with env.service() as svc:
        svc.sync()
        env.platform.partial_next(1, 0.3)
        first = svc.send_due(start_ms=ms(2026, 3, 15), end_ms=ms(2026, 3, 16))
        assert first.rejected > 0 and first.acknowledged + first.rejected == first.due
        rejected = {(r.item, r.stat_type, r.stat_ms) for r in svc.ledger.periods(ms(2026, 3, 15), ms(2026, 3, 16))
                    if r.state == "rejected"}
        assert len(rejected) == first.rejected
        assert all(r.message == "busy, re-send later" for r in svc.ledger.periods(ms(2026, 3, 15), ms(2026, 3, 16))
                   if r.state == "rejected")
        status = svc.status(ms(2026, 3, 15), ms(2026, 3, 16))
        assert sum(r["rejected"] for r in status) == first.rejected
        second = svc.send_due(start_ms=ms(2026, 3, 15), end_ms=ms(2026, 3, 16))
        assert second.due == first.rejected and second.acknowledged == first.rejected
        attempts = svc.ledger.attempts()
        for key in rejected:
            assert [a[6] for a in attempts if (a[1], a[2], a[3]) == key] == ["rejected", "acknowledged"]
    assert all(n == 1 for n in env.platform.accepted_times.values())
    # the same self-metrics as every stage: values taken in, acknowledged, set aside by reason
    assert env.sample("energymon_received_total") == first.due + second.due
    assert env.sample("energymon_sent_total") == first.acknowledged + second.acknowledged
    assert env.sample("energymon_dropped_total", reason="rejected_by_platform") == first.rejected


def test_dictionary_version_change_triggers_download_and_new_datacodes(env: Env) -> None:
    with env.service() as svc:
        svc.sync()
        downloads = len(svc.ledger.exchanges("dataDownload"))
        assert svc.sync() == {} and len(svc.ledger.exchanges("dataDownload")) == downloads  # same version
        entries = [dict(d, code="3401") if d["name"] == "电力" else d for d in env.platform.dictionaries["energy_type"]]
        env.platform.set_dictionary("energy_type", entries)
        sent = svc.sync()
        assert len(svc.ledger.exchanges("dataDownload")) > downloads
        assert sent == {"data_items": 3}  # elec_total for statTypes 0, 1 and 2, updated with the new dataCode
        assert env.platform.configuration(USCC, "data_items")["elec_total:1"]["dataCode"] == "00-00-0000023401-80"
        svc.send_due(start_ms=ms(2026, 3, 15), end_ms=ms(2026, 3, 16))
    assert (("00-00-0000023401-80", STAT_DAY, ms(2026, 3, 15))) in env.platform.stored(USCC)


def test_quality_gate_blocks_incomplete_days_and_reports_them(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 3, 16, 1, 30, tzinfo=SH))
    e = Env(tmp_path, clock, elec_max=700)  # 750 kWh per 15 minutes is outside the band: range problems too
    try:
        # the incoming meter sent nothing from 06:00 to 12:00 on 15 March: 75% of the day's readings
        write_readings(e.plant, ms(2026, 3, 13), ms(2026, 3, 17),
                       skip={"clinker_scale": (ms(2026, 3, 15, 6), ms(2026, 3, 15, 12))})
        with e.service() as svc:
            svc.sync()
            report = svc.send_due(start_ms=ms(2026, 3, 14), end_ms=ms(2026, 3, 16))
            problems = svc.ledger.problems(ms(2026, 3, 14), ms(2026, 3, 16))
            by_check = {(p[0], p[3]) for p in problems}
            assert ("clinker", "completeness") in by_check and ("elec_total", "range") in by_check
            assert not any(p[0] == "clinker" and p[2] < ms(2026, 3, 15) and p[3] == "completeness" for p in problems)
            blocked = {(r.item, r.stat_type, r.stat_ms) for r in svc.ledger.periods(ms(2026, 3, 14), ms(2026, 3, 16))
                       if r.state == "blocked"}
            assert ("clinker", STAT_DAY, ms(2026, 3, 15)) in blocked
            assert ("clinker", STAT_DAY, ms(2026, 3, 14)) not in blocked
            assert all(k[0] in ("clinker", "total_energy", "elec_total") for k in blocked)
            assert report.blocked == len(blocked)
            # nothing blocked reached the platform
            stored = env_stored_items(e, svc)
            assert not blocked & stored
            rows = {(r["item"], r["period"], r["date"]): r for r in svc.status(ms(2026, 3, 14), ms(2026, 3, 16))}
            assert rows[("clinker", "day", "2026-03-15")]["blocked"] == 1
            assert rows[("coal", "day", "2026-03-15")]["acknowledged"] == 1
    finally:
        e.close()


def env_stored_items(e: Env, svc: UplinkService) -> set[tuple[str, int, int]]:
    by_code = {ri.data_code: ri.id for ri in svc.items()}
    return {(by_code[c], st, t) for (c, st, t) in e.platform.stored(USCC)}


def test_report_mode_sends_and_reports(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 3, 16, 1, 30, tzinfo=SH))
    e = Env(tmp_path, clock, gate_mode="report")
    try:
        write_readings(e.plant, ms(2026, 3, 13), ms(2026, 3, 17),
                       skip={"incoming": (ms(2026, 3, 15, 6), ms(2026, 3, 15, 12))})
        with e.service() as svc:
            report = svc.send_due(start_ms=ms(2026, 3, 15), end_ms=ms(2026, 3, 16))
            assert report.blocked == 0 and report.acknowledged == report.due
            assert any(p[3] == "completeness" and not p[5] for p in svc.ledger.problems(ms(2026, 3, 15),
                                                                                        ms(2026, 3, 16)))
    finally:
        e.close()


# --------------------------------------------------------------------------- 补传 over a week-long outage


def test_week_long_outage_is_filled_by_resend_with_nothing_missing_or_doubled(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 3, 14, 1, 0, tzinfo=SH))
    e = Env(tmp_path, clock, backfill=14)
    try:
        write_readings(e.plant, ms(2026, 2, 27), ms(2026, 4, 4))
        e.platform.down_between(ms(2026, 3, 20, 0, 0), ms(2026, 3, 27, 0, 0))
        with e.service() as svc:
            while clock.now_ms() < ms(2026, 4, 3, 2, 0):
                clock.advance(6 * 3600)  # the daily slot at 01:30 (run at 07:00), real-time pushes in between
                report = svc.run_once()
                if clock.now_ms() == ms(2026, 3, 24, 7, 0):
                    rows = svc.status(ms(2026, 3, 20), ms(2026, 3, 24))
                    assert rows and all(r["acknowledged"] == 0 for r in rows)
                    assert sum(r["failed"] for r in rows) > 0  # tried and recorded, not silently dropped
                    assert report is not None and report.errors
            now = clock.now_ms()
            horizon = svc.horizon_start(now)
            expected = set(svc.expected(horizon, now, now))
            got = acked(svc, ms(2026, 3, 1), now)
            assert expected and expected <= set(got)  # every 15-minute, day and month value acknowledged
            rows = svc.status(horizon, now)
            assert all(r["missing"] == r["failed"] == r["rejected"] == r["blocked"] == 0 for r in rows)
            assert ("elec_total", STAT_MONTH, ms(2026, 3, 1)) in expected
            platform = env_stored_items(e, svc)
            assert expected <= platform
        assert e.platform.dropped > 0
        assert all(n == 1 for n in e.platform.accepted_times.values())  # nothing accepted twice
        stored = e.platform.stored(USCC)
        assert stored[(ELEC_CODE, STAT_MONTH, ms(2026, 3, 1))] == pytest.approx(3000.0 * 24 * 31)
        outage = [v for (c, st, t), v in stored.items()
                  if c == ELEC_CODE and st == STAT_REALTIME and ms(2026, 3, 20) <= t < ms(2026, 3, 27)]
        assert len(outage) == 7 * 96 and all(v == pytest.approx(750.0) for v in outage)
    finally:
        e.close()


def test_a_profile_that_encrypts_uploads_sends_sm4_ciphertext_the_platform_decrypts(tmp_path: Path) -> None:
    """``crypto.payload_encryption: sm4_cbc``: the value list travels as SM4-CBC ciphertext under the working key."""
    from energymon.gateway.provincial.protocol import UploadValue, decode_upload_body, encode_upload_body

    base = load_profile("yunnan")
    profile = base.model_copy(update={"crypto": base.crypto.model_copy(update={"payload_encryption": "sm4_cbc"})})
    clock = ManualClock(datetime(2026, 3, 16, 1, 30, tzinfo=SH))
    platform = ProvincialPlatform(profile, port=free_port(), now_ms=clock.now_ms, token_ttl_s=2 * 3600).start()
    try:
        plant = make_plant(tmp_path, platform.url)
        write_readings(plant, ms(2026, 3, 1) - 86_400_000, ms(2026, 3, 20))
        with UplinkService(plant, clock=clock, password=PASSWORD, profile=profile, sleep=lambda s: None,
                           seed=3) as svc:
            svc.sync()
            report = svc.send_due(start_ms=ms(2026, 3, 15), end_ms=ms(2026, 3, 16))
            assert report.acknowledged == report.due > 0 and report.failed == 0
            key = svc.client.state.get_state("secret_key")
        assert key is not None
        stored = platform.stored(USCC)
        assert stored[(ELEC_CODE, STAT_DAY, ms(2026, 3, 15))] == pytest.approx(72000.0)
        # on the wire: a string, not the value list; only the working key opens it
        value = UploadValue(ELEC_CODE, STAT_DAY, ms(2026, 3, 15), 72000.0)
        body = encode_upload_body([value], uscc=USCC, device_id="dev", tz=SH, profile=profile,
                                  upload_ms=clock.now_ms(), secret_key=key)
        assert isinstance(body["data"], str) and "72000" not in body["data"]
        _, records = decode_upload_body(body, tz=SH, profile=profile, secret_key=key)
        assert float(records[0][profile.data_fields.value]) == 72000.0
        wrong = "0" * len(key) if key != "0" * len(key) else "1" * len(key)
        with pytest.raises(Exception):  # noqa: B017 - any failure to open it will do: padding or JSON
            decode_upload_body(body, tz=SH, profile=profile, secret_key=wrong)
    finally:
        platform.stop()


def test_the_scheduler_runs_the_daily_upload_at_the_assigned_slot(tmp_path: Path) -> None:
    """``run`` on a fast clock: real-time pushes before the slot, the daily run once the slot (01:30) passes.

    The clock stands at 01:20 through the setup and the first real-time push, and runs at ×600 (1 s = 10
    simulated minutes) only once that push is reported, so a slow machine cannot move the push past the slot.
    """
    import threading

    from clocks import HeldClock

    clock = HeldClock(datetime(2026, 3, 16, 1, 20, tzinfo=SH), 600.0)
    env = Env(tmp_path, clock)  # type: ignore[arg-type]
    try:
        write_readings(env.plant, ms(2026, 3, 1) - 86_400_000, ms(2026, 3, 20))
        reports: list[tuple[int, SendReport]] = []
        done = threading.Event()
        stop = threading.Event()

        def on_report(report: SendReport) -> None:
            reports.append((clock.now_ms(), report))
            clock.release()  # the first push is in: let the clock run towards the slot
            if any(r.acknowledged and t >= ms(2026, 3, 16, 1, 30) for t, r in reports[1:]):
                done.set()

        with env.service() as svc:
            svc.sync()  # the platform assigns the 01:30 slot
            assert svc.upload_time().isoformat() == "01:30:00"
            worker = threading.Thread(target=svc.run, args=(stop, on_report), daemon=True)
            worker.start()
            assert done.wait(300), reports
            stop.set()
            worker.join(120)
            assert not worker.is_alive()
            assert svc.ledger.get_state("last_daily") == "2026-03-16"
        first_t, first = reports[0]
        assert first_t < ms(2026, 3, 16, 1, 30) and first.acknowledged > 0  # a real-time push before the slot
        stored = env.platform.stored(USCC)
        assert stored[(ELEC_CODE, STAT_DAY, ms(2026, 3, 15))] == pytest.approx(72000.0)  # yesterday, by the daily run
    finally:
        env.close()
