"""Counter deltas: rollover, resets, zero glitches and spikes never become consumption spikes; recorded meter
replacements are bridged without a spike or a loss."""

from __future__ import annotations

from typing import Any

import pytest

from energymon.counters import CounterTracker, DeltaFlag, Replacement

MIN = 60_000


def feed(t: CounterTracker, values: list[float], step_ms: int = MIN) -> list[tuple[float, DeltaFlag]]:
    out = []
    for i, v in enumerate(values):
        d = t.update(v, i * step_ms)
        if d is not None:
            out.append((round(d.amount, 6), d.flag))
    return out


def test_normal_growth() -> None:
    t = CounterTracker(max_rate_per_hour=600)  # 10 per minute
    assert feed(t, [100, 105, 112]) == [(5, DeltaFlag.OK), (7, DeltaFlag.OK)]


def test_zero_glitch_is_not_a_spike() -> None:
    t = CounterTracker(max_rate_per_hour=600)
    got = feed(t, [1000, 1005, 0, 1012, 1015])
    assert got == [(5, DeltaFlag.OK), (7, DeltaFlag.OK), (3, DeltaFlag.OK)]
    assert sum(a for a, _ in got) == 15
    assert t.rejected == 1


def test_spike_is_rejected_and_baseline_kept() -> None:
    t = CounterTracker(max_rate_per_hour=600)
    assert feed(t, [1000, 1005, 9_000_000, 1010]) == [(5, DeltaFlag.OK), (5, DeltaFlag.OK)]


def test_rollover_at_counter_max() -> None:
    t = CounterTracker(max_rate_per_hour=600, counter_max=2**32 * 0.1)
    top = 2**32 * 0.1
    got = feed(t, [top - 4, top - 1, 2.5])
    assert got[0] == (3, DeltaFlag.OK)
    assert got[1][1] is DeltaFlag.ROLLOVER and abs(got[1][0] - 3.5) < 1e-6


def test_persistent_reset_becomes_new_baseline_without_spike() -> None:
    t = CounterTracker(max_rate_per_hour=600, confirm_readings=3)
    got = feed(t, [5000, 5004, 10, 14, 19, 25])
    # the drop to 10 is rejected twice, confirmed on the third reading at the new level; only growth
    # since the new level appeared (10 → 19) is booked, and never the jump itself
    assert got == [(4, DeltaFlag.OK), (9, DeltaFlag.REBASED), (6, DeltaFlag.OK)]


def test_replayed_and_late_readings_book_nothing() -> None:
    t = CounterTracker(max_rate_per_hour=600)
    assert t.update(100, 0) is None
    assert t.update(105, MIN) is not None
    assert t.update(105, MIN) is None  # replay
    assert t.update(102, MIN // 2) is None  # late
    d = t.update(110, 2 * MIN)
    assert d is not None and d.amount == 5 and d.start_ms == MIN


# ---------------------------------------------------------------- recorded replacements

HOUR = 3_600_000


def feed_at(t: CounterTracker, readings: list[tuple[int, float]]) -> list[tuple[int, int, float, DeltaFlag]]:
    out = []
    for ts, v in readings:
        d = t.update(v, ts)
        if d is not None:
            out.append((d.start_ms, d.end_ms, round(d.amount, 6), d.flag))
    return out


def test_recorded_replacement_books_both_parts_without_spike() -> None:
    # old meter 10,000 at 10:00, final 10,250 at 10:30; new meter starts at 0 and reads 250 at 11:00
    t = CounterTracker(max_rate_per_hour=1000, replacements=[Replacement(10 * HOUR + HOUR // 2, 10_250, 0)])
    got = feed_at(t, [(9 * HOUR, 9_500), (10 * HOUR, 10_000), (11 * HOUR, 250), (12 * HOUR, 750)])
    assert got == [
        (9 * HOUR, 10 * HOUR, 500, DeltaFlag.OK),
        (10 * HOUR, 11 * HOUR, 500, DeltaFlag.REPLACED),  # (10,250 - 10,000) + (250 - 0)
        (11 * HOUR, 12 * HOUR, 500, DeltaFlag.OK),
    ]
    assert t.rejected == 0 and t.replacement_mismatches == 0


def test_without_the_record_the_change_is_rebased_and_energy_is_lost() -> None:
    t = CounterTracker(max_rate_per_hour=1000)
    got = feed_at(t, [(k * HOUR, 5_000 + 500 * k if k <= 10 else 250 + 500 * (k - 11)) for k in range(15)])
    total = sum(a for _, _, a, _ in got)
    assert DeltaFlag.REBASED in {f for *_, f in got}
    assert total == 14 * 500 - 500  # the changeover hour (10:00-11:00) is lost


def test_replacement_at_a_reading_time_belongs_to_the_new_meter() -> None:
    t = CounterTracker(max_rate_per_hour=1000, replacements=[Replacement(11 * HOUR, 10_400, 100)])
    got = feed_at(t, [(10 * HOUR, 10_000), (11 * HOUR, 300)])
    assert got == [(10 * HOUR, 11 * HOUR, 600, DeltaFlag.REPLACED)]  # 400 + 200


def test_two_replacements_between_readings_and_a_mismatching_record() -> None:
    reps = [Replacement(HOUR + 1, 1_100, 0), Replacement(HOUR + 2, 50, 10)]
    t = CounterTracker(max_rate_per_hour=10_000, replacements=reps)
    got = feed_at(t, [(0, 1_000), (2 * HOUR, 40)])
    assert got == [(0, 2 * HOUR, 100 + 50 + 30, DeltaFlag.REPLACED)]
    t = CounterTracker(max_rate_per_hour=10_000, replacements=[Replacement(HOUR, 900, 0)])
    got = feed_at(t, [(0, 1_000), (2 * HOUR, 40)])  # the record's final value is below the last reading
    assert got == [(0, 2 * HOUR, 40, DeltaFlag.REPLACED)] and t.replacement_mismatches == 1


def test_replacement_before_the_first_reading_is_ignored() -> None:
    t = CounterTracker(max_rate_per_hour=1000, replacements=[Replacement(HOUR, 10_000, 0)])
    assert feed_at(t, [(2 * HOUR, 100), (3 * HOUR, 600)]) == [(2 * HOUR, 3 * HOUR, 500, DeltaFlag.OK)]
    assert not t.has_pending_replacement(10 * HOUR)


def test_state_undoes_updates_whose_output_was_not_kept() -> None:
    t = CounterTracker(max_rate_per_hour=1000, replacements=[Replacement(3 * HOUR, 10_000, 0)])
    feed_at(t, [(HOUR, 9_000), (2 * HOUR, 9_500), (2 * HOUR + 1, 1e9)])  # a spike starts a candidate level
    saved = t.state()
    reference = CounterTracker(max_rate_per_hour=1000, replacements=[Replacement(3 * HOUR, 10_000, 0)])
    reference.set_state(saved)
    # updates whose batch was then refused: a replacement bridged, the candidate dropped
    assert feed_at(t, [(4 * HOUR, 600)]) == [(2 * HOUR, 4 * HOUR, 1_100, DeltaFlag.REPLACED)]
    t.set_state(saved)
    assert t.state() == saved
    # the same readings again give the same result as a tracker that never saw the undone ones
    later = [(4 * HOUR, 700), (5 * HOUR, 1_200)]
    assert feed_at(t, later) == feed_at(reference, later) == [
        (2 * HOUR, 4 * HOUR, 1_200, DeltaFlag.REPLACED), (4 * HOUR, 5 * HOUR, 500, DeltaFlag.OK)]


def test_restore_from_a_saved_baseline_does_not_bridge_a_replacement_twice() -> None:
    reps = [Replacement(10 * HOUR + HOUR // 2, 10_250, 0)]
    live = CounterTracker(max_rate_per_hour=1000, replacements=reps)
    feed_at(live, [(10 * HOUR, 10_000), (11 * HOUR, 250)])  # bridged: 500, flag replaced
    restarted = CounterTracker(max_rate_per_hour=1000, replacements=reps)
    assert live.last_value is not None
    restarted.restore(live.last_value, live.last_ms)
    assert feed_at(restarted, [(12 * HOUR, 750)]) == [(11 * HOUR, 12 * HOUR, 500, DeltaFlag.OK)]
    assert restarted.replacement_mismatches == 0


# ---------------------------------------------------------------- the rules without and with a bound

from energymon.config import DataType, Register, parse_plant  # noqa: E402
from energymon.counters import (  # noqa: E402
    LEARNED_BOUND_FACTOR,
    CounterRules,
    check_interval,
    counter_rules,
    natural_counter_max,
    wrap_position,
)

UINT32_X001 = 2**32 * 0.01  # 42,949,672.96 kWh: a uint32 register with scale 0.01


def total(got: list[tuple[int, int, float, DeltaFlag]]) -> float:
    return round(sum(a for _, _, a, _ in got), 6)


def minutes(values: list[float], start: int = 0) -> list[tuple[int, float]]:
    return [((start + i) * MIN, v) for i, v in enumerate(values)]


def test_the_rollover_point_of_a_register_type() -> None:
    assert natural_counter_max(Register(quantity="e", address=0, type=DataType.UINT32, scale=0.01, unit="kWh",
                                        kind="counter")) == pytest.approx(UINT32_X001)
    assert natural_counter_max(Register(quantity="e", address=0, type=DataType.UINT16, unit="kWh",
                                        kind="counter")) == 65536
    assert natural_counter_max(Register(quantity="e", address=0, type=DataType.UINT64, unit="kWh",
                                        kind="counter")) == 2.0**64
    for signed_or_float in (DataType.INT64, DataType.INT32, DataType.FLOAT32, DataType.FLOAT64):
        assert natural_counter_max(Register(quantity="e", address=0, type=signed_or_float, unit="kWh",
                                            kind="counter")) is None


def test_a_zero_from_a_uint32_x001_counter_at_30_million_is_no_wrap_without_a_bound() -> None:
    # 240,000 kWh a day (10,000 kWh/h) read every minute; one reading of 0.0 at 08:00
    t = CounterTracker(counter_max=UINT32_X001)
    per_min = 10_000 / 60
    values = [30_000_000 + per_min * i for i in range(24 * 60 + 1)]
    values[8 * 60] = 0.0
    got = feed_at(t, minutes(values))
    assert total(got) == pytest.approx(values[-1] - values[0], rel=1e-8)
    assert total(got) == pytest.approx(240_000)
    assert {f for *_, f in got} == {DeltaFlag.OK}
    assert t.rejected == 1 and t.resets == 0


def test_a_zero_near_the_top_is_no_wrap_when_the_bound_refuses_it() -> None:
    top = UINT32_X001
    for rate in (None, 600.0):
        t = CounterTracker(max_rate_per_hour=rate, counter_max=top)
        start = top * 0.95  # in the top 10 %: a wrap position, but 5 % of the range is no minute's use
        got = feed_at(t, minutes([start, start + 10, start + 20, 0.0, start + 40, start + 50]))
        assert total(got) == pytest.approx(50) and t.rejected == 1, rate


@pytest.mark.parametrize("top", [65_536.0, 2.0**32, 2**32 * 0.1, UINT32_X001, 1_000_000.0])
@pytest.mark.parametrize("rate", [600.0, None])
def test_a_real_wrap_near_the_top_is_booked(top: float, rate: float | None) -> None:
    t = CounterTracker(max_rate_per_hour=rate, counter_max=top)
    step = 5.0  # a minute's use; 600/h allows 11
    before = [top - 4 * step - 1, top - 3 * step - 1, top - 2 * step - 1, top - step - 1]
    got = feed_at(t, minutes([*before, step - 1, 2 * step - 1]))
    assert [f for *_, f in got].count(DeltaFlag.ROLLOVER) == 1 and t.rejected == 0
    assert total(got) == pytest.approx(6 * step, rel=1e-6)


def test_wrap_position_is_the_top_and_bottom_tenth() -> None:
    assert wrap_position(95.0, 3.0, 100.0)
    assert not wrap_position(85.0, 3.0, 100.0)  # the old value is not near the top
    assert not wrap_position(95.0, 15.0, 100.0)  # the new value is not near the bottom


def test_a_single_spike_is_never_consumption_without_a_bound() -> None:
    # the first rise after a start waits for the next reading; the spike is refused by it
    # (30,000,100 is still a first rise, so it waits for 30,000,200 in turn)
    t = CounterTracker(counter_max=UINT32_X001)
    got = feed_at(t, minutes([30_000_000, 99_999_999, 30_000_100, 30_000_200, 30_000_300]))
    assert got == [(0, 3 * MIN, 200, DeltaFlag.OK), (3 * MIN, 4 * MIN, 100, DeltaFlag.OK)]
    assert t.rejected == 1
    # once a rate is known, the learned bound refuses it
    t = CounterTracker()
    got = feed_at(t, minutes([1000, 1010, 1020, 1_000_000, 1030, 1040]))
    assert total(got) == 40 and t.rejected == 1


def test_the_first_rise_waits_for_the_next_reading_and_is_then_booked_whole() -> None:
    t = CounterTracker()
    assert t.update(100, 0) is None
    assert t.update(110, MIN) is None  # held: no bound to judge it by yet
    d = t.update(120, 2 * MIN)
    assert d is not None and (d.start_ms, d.end_ms, d.amount) == (0, 2 * MIN, 20)
    d = t.update(130, 3 * MIN)  # judged at once from now on
    assert d is not None and d.amount == 10


def test_without_a_bound_a_jump_beyond_the_learned_bound_that_goes_on_at_the_old_pace_is_no_consumption() -> None:
    t = CounterTracker(track_rejected=True)
    feed_at(t, minutes([0, 10, 20, 30]))  # learned: 10 a minute, so the bound is 100 a minute
    jump = 30 + 100 * LEARNED_BOUND_FACTOR  # a swap to a meter showing 1,000 more
    assert t.update(jump, 4 * MIN) is None and t.rejected == 0  # held: a jump, or a speed-up?
    got = feed_at(t, [(5 * MIN, jump + 10), (6 * MIN, jump + 20), (7 * MIN, jump + 30)])
    # on at the old pace: a jump; the level stays, so it is a reset: only the growth since the jump is booked
    assert got == [(4 * MIN, 6 * MIN, 20, DeltaFlag.REBASED), (6 * MIN, 7 * MIN, 10, DeltaFlag.OK)]
    assert t.resets == 1 and t.rejected == 0


def test_without_a_bound_a_counter_that_speeds_up_is_booked() -> None:
    # standby at 1 a minute, then the plant starts: 200 a minute, 200 × the learned rate
    t = CounterTracker(track_rejected=True)
    got = feed_at(t, minutes([0, 1, 2, 3, 203, 403, 603, 803]))
    assert total(got) == 803 and t.rejected == 0 and t.resets == 0
    assert got[2] == (3 * MIN, 5 * MIN, 400, DeltaFlag.OK)  # the first fast minute waited for the second


def test_a_zero_glitch_without_a_bound() -> None:
    t = CounterTracker(track_rejected=True)
    got = feed_at(t, minutes([1000, 1005, 0, 1012, 1015]))  # the zero right after the first rise
    assert total(got) == 15 and t.rejected_ms == [2 * MIN]
    t = CounterTracker(track_rejected=True)
    got = feed_at(t, minutes([1000, 1005, 1010, 0, 1020, 1025]))
    assert total(got) == 25 and t.rejected_ms == [3 * MIN]


def test_a_float_counter_without_a_rollover_point_never_wraps() -> None:
    t = CounterTracker(max_rate_per_hour=600)
    got = feed_at(t, minutes([5_000.25, 5_004.5, 0.0, 5_010.75, 5_012.0]))
    assert total(got) == pytest.approx(11.75) and t.rejected == 1


def test_an_int64_counter_far_beyond_float_precision_stays_exact_enough() -> None:
    base = float(2**53)  # int64 counters are decoded exactly; deltas of whole units survive as floats here
    t = CounterTracker(max_rate_per_hour=6_000)
    got = feed_at(t, minutes([base, base + 64, base + 128, 0.0, base + 192]))
    assert total(got) == 192 and t.rejected == 1


@pytest.mark.parametrize("rate", [600.0, None])
def test_a_reset_that_stays_down_books_nothing_across_it_and_counts_a_reset(rate: float | None) -> None:
    t = CounterTracker(max_rate_per_hour=rate, counter_max=UINT32_X001)
    got = feed_at(t, minutes([30_000_000, 30_000_005, 30_000_010, 0, 5, 10, 15, 20]))
    # 10 before the reset, the growth since the new level appeared (0 → 10) flagged, then 5 + 5
    assert [f for *_, f in got].count(DeltaFlag.REBASED) == 1
    assert total(got) == 10 + 10 + 10 and t.resets == 1 and t.rejected == 0
    # the readings at the new level were not glitches in the end
    t = CounterTracker(max_rate_per_hour=rate, track_rejected=True)
    feed_at(t, minutes([1000, 1005, 0, 5, 10]))
    assert t.rejected_ms == []


def test_a_glitch_that_does_not_stay_down_is_no_reset() -> None:
    t = CounterTracker(max_rate_per_hour=600, track_rejected=True)
    got = feed_at(t, minutes([1000, 1005, 0, 0, 1020, 1025]))
    assert total(got) == 25 and t.resets == 0 and t.rejected_ms == [2 * MIN, 3 * MIN]


PLANT = """\
version: 1
enterprise: {uscc: 91530102MA6K7LQ8RH, name: 测试厂, industry_code: C3011}
processes: [{id: p}]
register_maps:
  m:
    registers:
      - {quantity: e, address: 0, type: uint32, scale: 0.01, unit: kWh, kind: counter}
      - {quantity: e2, address: 2, type: uint16, unit: kWh, kind: counter}
buses:
  - {type: modbus_tcp, id: b, host: 127.0.0.1, port: 5020}
meters:
  - {id: fan, carrier: electricity, level: 2, process: p, counter: e, RATE
     source: {type: modbus, bus: b, unit_id: 1, model: m}}
accounting:
  replacements:
    - {meter: fan, at: "2026-03-02T10:30:00+08:00", old_final_value: 30000250, new_start_value: 0}
"""


def test_counter_rules_of_a_plant_meter() -> None:
    plant = parse_plant(PLANT.replace("RATE", "max_rate_per_hour: 1000,"))
    rules = counter_rules(plant, plant.meter("fan"))
    assert rules.max_rate_per_hour == 1000 and rules.counter_max == pytest.approx(UINT32_X001)
    assert len(rules.replacements) == 1
    other = counter_rules(plant, plant.meter("fan"), "e2")  # another counter of the meter: its range only
    assert other.counter_max == 65536 and other.max_rate_per_hour is None and other.replacements == ()
    # the recorded replacement is bridged: (30,000,250 - 30,000,000) + (250 - 0)
    at = rules.replacements[0].at_ms
    t = rules.tracker()
    got = feed_at(t, [(at - HOUR // 2, 30_000_000), (at + HOUR // 2, 250), (at + HOUR, 750)])
    assert got == [(at - HOUR // 2, at + HOUR // 2, 500, DeltaFlag.REPLACED), (at + HOUR // 2, at + HOUR, 500,
                                                                                 DeltaFlag.OK)]
    assert t.resets == 0 and t.rejected == 0


def test_check_interval_applies_the_bound_and_the_wrap_rule() -> None:
    bound = CounterRules(max_rate_per_hour=40_000, counter_max=UINT32_X001)
    assert check_interval(bound, 0, HOUR, 40_000, "ok") is None
    assert "bound" in (check_interval(bound, 0, HOUR, 614_500 / 0.1229, "ok") or "")
    assert "bound" in (check_interval(bound, 0, HOUR, 1e9, "replaced") or "")  # whatever the flag
    assert "non-negative" in (check_interval(bound, 0, HOUR, -1, "ok") or "")
    assert "non-negative" in (check_interval(bound, 0, HOUR, float("nan"), "ok") or "")
    assert "flag" in (check_interval(bound, 0, HOUR, 1, "bogus") or "")
    none = CounterRules()
    assert "rollover point" in (check_interval(none, 0, HOUR, 1, "rollover") or "")
    wraps = CounterRules(counter_max=1_000_000)
    assert check_interval(wraps, 0, MIN, 150_000, "rollover") is None
    assert "wrap" in (check_interval(wraps, 0, MIN, 300_000, "rollover") or "")
    assert "range" in (check_interval(wraps, 0, MIN, 2_000_000, "ok") or "")
    # agreement with the readings where the checker saw the start
    assert check_interval(none, MIN, 2 * MIN, 5, "ok", value=105, last=(100, MIN)) is None
    assert "disagrees" in (check_interval(none, MIN, 2 * MIN, 500, "ok", value=105, last=(100, MIN)) or "")
    assert check_interval(none, MIN, 2 * MIN, 500, "ok", value=105, last=(100, 0)) is None  # another start
    assert check_interval(wraps, MIN, 2 * MIN, 15, "rollover", value=5, last=(999_990, MIN)) is None


@pytest.mark.parametrize("seed", range(40))
def test_the_recompute_fast_path_books_exactly_what_the_tracker_books(seed: int) -> None:
    import numpy as np

    from energymon.processors.recompute import _monotone

    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    ts = np.cumsum(rng.integers(1, 4, size=n) * MIN).astype(np.int64)
    steps = rng.choice([0.0, 1.0, 3.5, 20.0, 400.0], size=n - 1, p=[0.3, 0.3, 0.2, 0.15, 0.05])
    v = np.concatenate(([1000.0], 1000.0 + np.cumsum(steps)))
    answered: set[float | None] = set()
    for rate in (None, 600.0):
        rules = CounterRules(max_rate_per_hour=rate)
        t = rules.tracker()
        expected = [(d.start_ms, d.end_ms, d.amount) for x, y in zip(ts.tolist(), v.tolist(), strict=True)
                    if (d := t.update(y, x)) is not None]
        fast = _monotone(ts, v, rules.max_rate_per_ms)
        if fast is not None:  # when it answers, it answers exactly as the tracker
            assert list(zip(*(a.tolist() for a in fast), strict=True)) == expected
            answered.add(rate)
    # and it does answer: the series of small steps stay within either bound
    if float(steps.max()) <= 3.5:
        assert answered == {None, 600.0}


def test_validate_warns_about_a_rollover_counter_without_a_bound(tmp_path: Any, capsys: Any) -> None:
    from energymon.cli import main
    from energymon.validators import plant_warnings

    assert plant_warnings(parse_plant(PLANT.replace("RATE", "max_rate_per_hour: 1000,"))) == []
    unbounded = PLANT.replace("RATE", "")
    (key, message), = plant_warnings(parse_plant(unbounded))
    assert key == "meters[0].max_rate_per_hour" and "'fan'" in message and "42949672.96" in message
    path = tmp_path / "plant.yaml"
    path.write_text(unbounded, encoding="utf-8")
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert ": OK" in out and "warning: meters[0].max_rate_per_hour" in out
