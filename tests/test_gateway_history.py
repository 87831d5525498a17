"""Edge history: 15-minute, hourly, daily and monthly values per item, cut in plant local time, kept six months,
printed by ``energymon history``."""

from __future__ import annotations

import csv
import io
import itertools
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from test_gateway import RecordingTransport
from test_gateway_outbox import corrupt_middle, plant_with, poll

from energymon.cli import main
from energymon.clock import ManualClock
from energymon.demo import example_plant_path
from energymon.gateway.gateway import Gateway
from energymon.gateway.history import EdgeHistory, HistoryValue, history_path, period_start
from energymon.gateway.queue import OutboxCorruptError
from energymon.schema import Point, Quality

SHANGHAI = ZoneInfo("Asia/Shanghai")
MIN = 60_000
COUNTER_MAX = 2**32 * 0.1  # demo_power_meter: uint32 × 0.1 kWh


def local_ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, tz: ZoneInfo = SHANGHAI) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=tz).timestamp() * 1000)


def energy(meter: str, ts: int, value: float) -> Point:
    return Point(meter=meter, quantity="energy_active_import", value=value, unit="kWh", ts_ms=ts)


def values(
    h: EdgeHistory, period: str, quantity: str = "energy_active_import", meter: str = "incoming"
) -> list[HistoryValue]:
    return h.query(meter, quantity, period, 0, 2**62)


def test_counter_periods_in_local_time_with_start_values_and_consumption(tmp_path: Path) -> None:
    h = EdgeHistory(tmp_path / "history.sqlite", plant_with())
    start = local_ms(2025, 3, 31, 22, 0)  # two hours before a local day and month boundary
    rnd = random.Random(1)
    readings: dict[int, float] = {}
    value = 1_234_567.0
    for k in range(4 * 12 + 1):  # every 5 min for 4 h, up to 02:00 on 1 April
        ts = start + k * 5 * MIN
        readings[ts] = round(value, 1)
        h.record([energy("incoming", ts, readings[ts])], ts)
        value += rnd.uniform(500, 2500)  # kWh per 5 min, under the meter's 40,000 kWh/h bound
    quarters = values(h, "15min")
    assert [q.start_ms for q in quarters] == [start + i * 15 * MIN for i in range(17)]
    for q, nxt in itertools.pairwise(quarters):
        assert q.start_value == readings[q.start_ms]  # the reading at the period start
        assert q.consumption == pytest.approx(readings[nxt.start_ms] - readings[q.start_ms])
        assert q.readings == 3 and q.kind == "counter" and q.unit == "kWh" and q.flags == ""
    total = readings[max(readings)] - readings[start]
    assert sum(q.consumption or 0 for q in quarters) == pytest.approx(total)
    hours = values(h, "hour")
    assert [x.start_ms for x in hours] == [start + i * 60 * MIN for i in range(5)]
    assert hours[0].consumption == pytest.approx(sum(q.consumption or 0 for q in quarters[:4]))
    days = values(h, "day")
    assert [d.start_ms for d in days] == [local_ms(2025, 3, 31), local_ms(2025, 4, 1)]  # local midnight, not UTC
    midnight = local_ms(2025, 4, 1)
    assert days[0].consumption == pytest.approx(readings[midnight] - readings[start])
    assert days[1].start_value == readings[midnight]
    months = values(h, "month")
    assert [m.start_ms for m in months] == [local_ms(2025, 3, 1), local_ms(2025, 4, 1)]
    assert months[1].consumption == pytest.approx(readings[max(readings)] - readings[midnight])
    h.close()


def test_rollover_and_a_glitch_are_handled_like_the_processor(tmp_path: Path) -> None:
    h = EdgeHistory(tmp_path / "history.sqlite", plant_with())
    t = local_ms(2025, 5, 6, 10, 0)
    series = [COUNTER_MAX - 2000, COUNTER_MAX - 1000, 0.0, 500.0, 1500.0, 0.0, 2500.0]
    # it wraps between the 2nd and 3rd reading; the 6th is a glitch (0 on the bus) that must book nothing
    for k, v in enumerate(series):
        ts = t + k * 5 * MIN
        h.record([energy("incoming", ts, round(v, 1))], ts)
    quarters = values(h, "15min")
    assert sum(q.consumption or 0 for q in quarters) == pytest.approx(1000 + 1000 + 500 + 1000 + 1000, abs=0.1)
    assert "rollover" in quarters[0].flags
    h.close()


def test_gauges_keep_min_avg_max_and_count(tmp_path: Path) -> None:
    h = EdgeHistory(tmp_path / "history.sqlite", plant_with())
    t = local_ms(2025, 5, 6, 10, 0)
    for k, v in enumerate([10.0, 30.0, 20.0, 50.0]):  # two in each of two quarters
        ts = t + k * 7 * MIN + MIN
        h.record([Point(meter="incoming", quantity="power_active", value=v, unit="kW", ts_ms=ts)], ts)
    ts = t + 5 * MIN
    h.record([Point(meter="incoming", quantity="power_active", value=None, unit="kW", ts_ms=ts, quality=Quality.BAD)],
             ts)  # unavailable: not a reading
    quarters = values(h, "15min", "power_active")
    assert [(q.min, q.avg, q.max, q.readings) for q in quarters] == [(10.0, 20.0, 30.0, 2), (20.0, 35.0, 50.0, 2)]
    assert quarters[0].start_value is None and quarters[0].consumption is None
    hour = values(h, "hour", "power_active")[0]
    assert (hour.min, hour.avg, hour.max, hour.readings) == (10.0, 27.5, 50.0, 4)
    h.close()


def test_a_restart_does_not_lose_the_consumption_across_it(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    t = local_ms(2025, 5, 6, 10, 0)
    h = EdgeHistory(path, plant_with())
    h.record([energy("incoming", t, 1000.0)], t)
    h.record([energy("incoming", t + 5 * MIN, 1500.0)], t + 5 * MIN)
    h.close()
    h = EdgeHistory(path, plant_with())  # the gateway restarted
    h.record([energy("incoming", t + 20 * MIN, 3000.0)], t + 20 * MIN)
    total = sum(q.consumption or 0 for q in values(h, "15min"))
    assert total == pytest.approx(2000.0)
    h.close()


def test_a_crash_loses_at_most_the_unwritten_minute_of_gauges_and_no_consumption(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    t = local_ms(2025, 5, 6, 10, 0)
    h = EdgeHistory(path, plant_with(), flush_every_ms=60_000)
    for k in range(10):  # a reading every 15 s; written at 0 s and 60 s
        ts = t + k * 15_000
        h.record([energy("incoming", ts, 1000.0 + 10 * k),
                  Point(meter="incoming", quantity="power_active", value=1.0, unit="kW", ts_ms=ts)], ts)
    crashed = EdgeHistory(path, plant_with())  # what a restart after a kill -9 finds: written data only
    gauges = values(crashed, "hour", "power_active")
    assert 0 < gauges[0].readings < 10
    crashed.record([energy("incoming", t + 300_000, 1200.0)], t + 300_000)  # next reading after the restart
    assert sum(q.consumption or 0 for q in values(crashed, "15min")) == pytest.approx(200.0)  # all of it booked
    crashed.close()
    del h


def test_rows_older_than_the_retention_are_pruned(tmp_path: Path) -> None:
    h = EdgeHistory(tmp_path / "history.sqlite", plant_with(), retention_days=2)
    t = local_ms(2025, 5, 1, 0, 0)
    for day in range(6):
        ts = t + day * 86_400_000
        h.record([Point(meter="incoming", quantity="power_active", value=1.0, unit="kW", ts_ms=ts)], ts)
        h.prune(ts)
    days = values(h, "day", "power_active")
    assert [d.start_ms for d in days] == [t + d * 86_400_000 for d in (3, 4, 5)]  # 2 days back from day 5, incl.
    h.close()


def test_periods_are_cut_in_the_plant_time_zone() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")  # +05:30: local hours start at :30 UTC
    ts = int(datetime(2025, 1, 1, 10, 50, tzinfo=UTC).timestamp() * 1000)  # 16:20 local
    assert period_start(ts, "hour", kolkata) == int(datetime(2025, 1, 1, 10, 30, tzinfo=UTC).timestamp() * 1000)
    assert period_start(ts, "15min", kolkata) == int(datetime(2025, 1, 1, 10, 45, tzinfo=UTC).timestamp() * 1000)
    assert period_start(ts, "day", kolkata) == int(datetime(2024, 12, 31, 18, 30, tzinfo=UTC).timestamp() * 1000)


def test_the_gateway_records_good_readings_in_the_history_beside_the_outbox(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2025, 5, 6, 2, 0, tzinfo=UTC))
    gw = Gateway(plant_with(overflow_policy="refuse_new", outbox_max_bytes=65_536), RecordingTransport(), [],
                 queue_path=tmp_path / "outbox-gw-line1.sqlite", clock=clock)
    assert gw.history is not None and Path(gw.history.path) == history_path(tmp_path, "gw-line1")
    rnd = random.Random(3)
    for _ in range(400):  # the outbox fills and refuses; the history keeps recording
        clock.advance(15)
        skewed = Point(meter="kiln_drive", quantity="power_active", value=1.0, unit="kW",
                       ts_ms=clock.now_ms() + 3_600_000)
        gw.enqueue([*poll(clock.now_ms(), rnd, ("incoming",)), skewed])
    assert gw.metrics.registry.get_sample_value("energymon_dropped_total", {"stage": "gateway", "reason": "refused"})
    hours = gw.history.query("incoming", "power_active", "hour", 0, 2**62)
    assert sum(x.readings for x in hours) == 400
    assert gw.history.query("kiln_drive", "power_active", "hour", 0, 2**62) == []  # quarantined: not history
    gw.queue.close()
    gw.history.close()


def test_a_corrupt_history_file_stops_the_gateway_with_a_clear_error(tmp_path: Path) -> None:
    path = history_path(tmp_path, "gw-line1")
    h = EdgeHistory(path, plant_with())
    t = local_ms(2025, 5, 6, 0, 0)
    rnd = random.Random(4)
    for k in range(2000):
        h.record(poll(t + k * 60_000, rnd, ("incoming", "raw_mill")), t + k * 60_000)
    h.close()
    corrupt_middle(path)
    with pytest.raises(OutboxCorruptError, match=r"history file .*history-gw-line1\.sqlite is corrupt"):
        Gateway(plant_with(), RecordingTransport(), [], queue_path=tmp_path / "outbox-gw-line1.sqlite")
    gw = Gateway(plant_with(outbox_on_corrupt="move_aside"), RecordingTransport(), [],
                 queue_path=tmp_path / "outbox-gw-line1.sqlite")
    assert gw.history is not None and gw.history.moved_aside is not None and gw.history.moved_aside.exists()
    gw.queue.close()
    gw.history.close()


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[Path, Path]:
    """A plant file and a data directory whose history holds two local days of a counter and a gauge."""
    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(example_plant_path().read_text(encoding="utf-8"), encoding="utf-8")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    plant = yaml.safe_load(plant_file.read_text(encoding="utf-8"))
    h = EdgeHistory(history_path(data_dir, plant["gateway"]["id"]), plant_with())
    t = local_ms(2025, 5, 6, 0, 0)
    for k in range(2 * 96 + 1):  # 15-minute readings over two local days
        ts = t + k * 15 * MIN
        h.record([energy("incoming", ts, 1000.0 + 250 * k),
                  Point(meter="incoming", quantity="power_active", value=900.0 + k % 4, unit="kW", ts_ms=ts)], ts)
    h.close()
    return plant_file, data_dir


def test_history_command_prints_a_table(recorded: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    plant_file, data_dir = recorded
    code = main(["history", "--config", str(plant_file), "--data-dir", str(data_dir), "--meter", "incoming",
                 "--quantity", "energy_active_import", "--period", "day", "--from", "2025-05-06", "--to", "2025-05-07"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].split() == ["start", "start_value", "consumption", "unit", "readings", "flags"]
    assert out[1].split() == ["2025-05-06T00:00:00+08:00", "1000", "24000", "kWh", "96"]
    assert out[2].split() == ["2025-05-07T00:00:00+08:00", "25000", "24000", "kWh", "96"]
    assert len(out) == 3  # --from and --to are both included
    # the same command as a gateway subcommand
    assert main(["gateway", "history", "--config", str(plant_file), "--data-dir", str(data_dir), "--meter", "incoming",
                 "--quantity", "energy_active_import", "--period", "day", "--from", "2025-05-06",
                 "--to", "2025-05-07"]) == 0
    assert capsys.readouterr().out.splitlines() == out


def test_history_command_prints_csv_and_json(recorded: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    plant_file, data_dir = recorded
    base = ["history", "--config", str(plant_file), "--data-dir", str(data_dir), "--meter", "incoming",
            "--from", "2025-05-06T08:00", "--to", "2025-05-06T09:45"]
    assert main([*base, "--quantity", "power_active", "--period", "hour", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["start"] for r in rows] == ["2025-05-06T08:00:00+08:00", "2025-05-06T09:00:00+08:00"]
    assert rows[0] == {"start": "2025-05-06T08:00:00+08:00", "min": "900", "avg": "901.5", "max": "903",
                       "unit": "kW", "readings": "4"}
    assert main([*base, "--quantity", "energy_active_import", "--period", "15min", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 8 and data[0]["start"] == "2025-05-06T08:00:00+08:00"
    assert data[0]["consumption"] == 250.0 and data[0]["start_value"] == 1000.0 + 250 * 32


def test_history_command_errors_name_what_is_wrong(
    recorded: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plant_file, data_dir = recorded
    base = ["history", "--config", str(plant_file), "--quantity", "power_active"]
    assert main([*base, "--data-dir", str(data_dir), "--meter", "nope"]) == 2
    assert "no meter 'nope'" in capsys.readouterr().err
    assert main([*base, "--data-dir", str(tmp_path / "empty"), "--meter", "incoming"]) == 2  # a flag at fault
    assert not (tmp_path / "empty").exists()  # and nothing created
    assert "no edge history at" in capsys.readouterr().err
    assert main([*base, "--data-dir", str(data_dir), "--meter", "incoming", "--from", "yesterday"]) == 2
    assert "ISO 8601" in capsys.readouterr().err


def test_history_gateway_and_recompute_book_the_same_with_a_replacement_glitch_and_reset(tmp_path: Path) -> None:
    """One set of counter rules: the edge history, the gateway's edge intervals and the recompute agree, a recorded
    replacement included (the history used to leave replacements out)."""
    import numpy as np

    from energymon.config import parse_plant
    from energymon.processors.recompute import MeterReadings, recompute
    from energymon.processors.rules import PlantRules
    from energymon.refdata import load_reference_data
    from energymon.schema import decode_batch

    data = yaml.safe_load(example_plant_path().read_text(encoding="utf-8"))
    at = datetime(2025, 3, 3, 10, 30, tzinfo=SHANGHAI)  # the meter is changed at 10:30
    data.setdefault("accounting", {})["replacements"] = [
        {"meter": "incoming", "at": at.isoformat(), "old_final_value": 1_014_750.0, "new_start_value": 100.0}]
    plant = parse_plant(yaml.safe_dump(data, allow_unicode=True), "test-plant.yaml")
    start = local_ms(2025, 3, 3, 8)
    series: list[tuple[int, float]] = []
    for k in range(60):  # every 5 minutes from 08:00 to 12:55, 500 kWh each
        old, new = 1_000_000.0 + 500 * k, 600.0 + 500 * (k - 30)
        series.append((start + k * 5 * MIN, old if k < 30 else new))
    series[5] = (series[5][0], 0.0)  # a zero glitch
    base = series[49][1]  # at 12:10 the new meter is cleared and counts on from 3 kWh: an unrecorded reset
    series[50:] = [(ts, v - base - 500 + 3) for ts, v in series[50:]]

    clock = ManualClock(datetime.fromtimestamp(start / 1000, UTC))
    gw = Gateway(plant, RecordingTransport(), [], queue_path=tmp_path / "outbox.sqlite", clock=clock)
    for ts, v in series:
        gw.enqueue([energy("incoming", ts, v)])
        clock.advance(300)
    edge = sum(p.interval.amount for _, _, payload in gw.queue.peek(10**9) for p in decode_batch(payload).points
               if p.interval is not None)
    assert gw.history is not None
    hist = sum(v.consumption or 0 for v in gw.history.query("incoming", "energy_active_import", "day", 0, 2**62))
    rules = PlantRules(plant, load_reference_data())
    readings = MeterReadings.of(np.array([t for t, _ in series]), np.array([v for _, v in series]))
    rc = recompute(rules, {"incoming": readings}, local_ms(2025, 3, 3), local_ms(2025, 3, 4), with_ytd=False)
    row = rc.meters[(rc.meters["meter"] == "incoming") & (rc.meters["period"] == "day")].iloc[0]
    # 08:00-10:25: 14,500 (the glitch not booked); across the change (1,014,750 - 1,014,500) + (600 - 100) = 750;
    # 10:30-12:05: 9,500; nothing across the reset; the 4,500 counted from 3 kWh since
    assert edge == pytest.approx(29_250) and hist == pytest.approx(29_250)
    assert float(row["consumed"]) == pytest.approx(29_250)
    assert int(row["n_replaced"]) == 1 and int(row["n_rebased"]) == 1
    gw.history.close()
    gw.queue.close()
