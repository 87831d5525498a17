"""Counter deltas: rollover, resets, zero glitches and spikes never become consumption spikes."""

from __future__ import annotations

from energymon.processors.counters import CounterTracker, DeltaFlag

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
