"""Grade an indicator value against 标杆/基准 policy levels and the quota standard's 1/2/3级.

Every indicator is lower-is-better, including the negative ones (converter steelmaking: −30 beats −10). Gaps
are ``value − level`` in the indicator's unit (positive = worse than the level) and, in percent, relative to
the level's magnitude, so a negative level never flips the sign of the percentage.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import IntEnum
from typing import Any

__all__ = ["Grade", "Levels", "Status", "grade_value", "levels_for"]


class Status(IntEnum):
    """Where a value stands; the integer is stored as ``status`` so dashboards can colour it."""

    BENCHMARK = 1  # reaches 标杆
    BETWEEN = 2  # between 标杆 and 基准
    BELOW_BASELINE = 3  # worse than 基准
    OVER_LIMIT = 4  # over the mandatory 限额 (worse than 3级)


@dataclass(frozen=True, slots=True)
class Levels:
    """The levels in force for one indicator on one day, and where they come from."""

    indicator: str
    unit: str
    benchmark: float | None  # 标杆
    baseline: float | None  # 基准
    grade_1: float | None
    grade_2: float | None
    grade_3: float | None  # 限定值
    policy_source: str
    quota_source: str
    version: str


@dataclass(frozen=True, slots=True)
class Grade:
    """The result of grading one value."""

    value: float
    status: Status
    quota_grade: int | None  # 1, 2, 3, or 4 for "fails 3级"; None when no quota applies
    gap_to_benchmark: float | None
    gap_to_baseline: float | None
    gap_to_limit: float | None
    levels: Levels

    @staticmethod
    def _pct(gap: float | None, level: float | None) -> float | None:
        if gap is None or level is None or level == 0:
            return None
        return 100.0 * gap / abs(level)

    @property
    def gap_to_benchmark_pct(self) -> float | None:
        """Gap to 标杆 in percent of |标杆|."""
        return self._pct(self.gap_to_benchmark, self.levels.benchmark)

    @property
    def gap_to_baseline_pct(self) -> float | None:
        """Gap to 基准 in percent of |基准|."""
        return self._pct(self.gap_to_baseline, self.levels.baseline)

    def fields(self) -> dict[str, float]:
        """Numeric fields for the store (``indicator`` measurement)."""
        out: dict[str, float] = {"status": float(self.status)}
        if self.quota_grade is not None:
            out["quota_grade"] = float(self.quota_grade)
        for name, val in (
            ("benchmark", self.levels.benchmark),
            ("baseline", self.levels.baseline),
            ("limit", self.levels.grade_3),
            ("gap_to_benchmark", self.gap_to_benchmark),
            ("gap_to_baseline", self.gap_to_baseline),
            ("gap_to_benchmark_pct", self.gap_to_benchmark_pct),
            ("gap_to_baseline_pct", self.gap_to_baseline_pct),
        ):
            if val is not None:
                out[name] = float(val)
        return out

    def describe(self) -> str:
        """Short Chinese label of the status."""
        return {
            Status.BENCHMARK: "达到标杆",
            Status.BETWEEN: "标杆与基准之间",
            Status.BELOW_BASELINE: "未达基准",
            Status.OVER_LIMIT: "超过限额",
        }[self.status]


def grade_value(value: float, levels: Levels) -> Grade:
    """Grade ``value`` (full precision, no rounding) against ``levels``."""
    gap_b = None if levels.benchmark is None else value - levels.benchmark
    gap_base = None if levels.baseline is None else value - levels.baseline
    gap_lim = None if levels.grade_3 is None else value - levels.grade_3
    quota: int | None = None
    if levels.grade_3 is not None:
        quota = 4
        for n, lvl in ((1, levels.grade_1), (2, levels.grade_2), (3, levels.grade_3)):
            if lvl is not None and value <= lvl:
                quota = n
                break
    if gap_lim is not None and gap_lim > 0:
        status = Status.OVER_LIMIT
    elif gap_base is not None and gap_base > 0:
        status = Status.BELOW_BASELINE
    elif gap_b is not None and gap_b <= 0:
        status = Status.BENCHMARK
    else:
        status = Status.BETWEEN
    return Grade(value, status, quota, gap_b, gap_base, gap_lim, levels)


def levels_for(ref: Any, indicator: str, day: date, band_value: float | None = None) -> Levels | None:
    """Read the levels in force on ``day`` from the reference data; None if the indicator has none."""
    from energymon.refdata import ReferenceDataError  # noqa: PLC0415

    try:
        found = ref.levels(indicator, on=day, band_value=band_value)
    except ReferenceDataError:
        return None
    return _to_levels(ref, indicator, found)


def _to_levels(ref: Any, indicator: str, found: Any) -> Levels:
    policy, quota = found.policy, found.quota
    return Levels(
        indicator=indicator,
        unit=found.indicator.unit,
        benchmark=None if policy is None else policy.benchmark,
        baseline=None if policy is None else policy.baseline,
        grade_1=None if quota is None else quota.grade_1,
        grade_2=None if quota is None else quota.grade_2,
        grade_3=None if quota is None else quota.grade_3,
        policy_source="" if policy is None else policy.document_no,
        quota_source="" if quota is None else quota.standard,
        version=str(found.ref_version),
    )
