"""Counter deltas: rollover, resets, zero glitches and spikes never become consumption spikes; recorded meter
replacements are bridged without a spike or a loss."""

from __future__ import annotations

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
