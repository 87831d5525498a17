"""Grade an indicator value against 标杆/基准 policy levels and the quota standard's 1/2/3级.

Every indicator is lower-is-better, including the negative ones (converter steelmaking: −30 beats −10). Gaps
are ``value − level`` in the indicator's unit (positive = worse than the level) and, in percent, relative to
the level's magnitude (``100 × gap / |level|``), so a negative level never flips the sign of the percentage;
a level of exactly 0 has no percentage. Values are compared at full precision, never rounded first.

Levels come from the reference data in force on a day (``ReferenceData.levels``), with the capacity band
chosen by the plant's band value and the corrections the plant gives inputs for applied
(``additive_per_unit``, ``multiplier``, ``product_of_factors``); a correction without an input, or one the
reference data has no amounts for, is listed in ``Levels.notes`` and not applied. ``Levels`` keeps which
policy edition, quota standard, band, corrections and reference-data version were used, so a stored result
says which rule it was judged by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from enum import IntEnum
from typing import Any

from energymon.accounting_config import CorrectionInput

__all__ = ["LEVEL_NAMES", "Grade", "Levels", "Status", "grade_value", "levels_for"]

#: The five levels, in the order reports show them.
LEVEL_NAMES = ("grade_1", "grade_2", "grade_3", "benchmark", "baseline")


class Status(IntEnum):
    """Where a value stands; the integer is stored as ``status`` so dashboards can colour it."""

    BENCHMARK = 1  # reaches 标杆
    BETWEEN = 2  # between 标杆 and 基准
    BELOW_BASELINE = 3  # worse than 基准
    OVER_LIMIT = 4  # over the mandatory 限额 (worse than 3级)


@dataclass(frozen=True, slots=True)
class Levels:
    """The levels in force for one indicator on one day (band chosen, corrections applied), and their source."""

    indicator: str
    unit: str
    benchmark: float | None  # 标杆
    baseline: float | None  # 基准
    grade_1: float | None
    grade_2: float | None
    grade_3: float | None  # 限定值
    policy_source: str  # document number of the 标杆/基准 edition
    quota_source: str  # the 能耗限额 standard
    version: str  # reference-data version
    policy_edition: str = ""
    #: document number of the edition the 标杆/基准 numbers were read from; differs from ``policy_source``
    #: when the edition in force (723号) was not read and the earlier edition's numbers (1609号) are used
    policy_values_source: str = ""
    #: why an edition or standard in force has no figure for this indicator ("" = figures present)
    missing: str = ""
    band: str = ""  # the capacity band row used ("" = no bands)
    corrections: tuple[str, ...] = ()  # corrections applied, e.g. "clinker_ratio: +1.2 x 3"
    notes: tuple[str, ...] = ()  # corrections not applied, and why

    def level(self, name: str) -> float | None:
        """A level by name (``grade_1`` … ``baseline``)."""
        value: float | None = getattr(self, name)
        return value

    @property
    def has_figures(self) -> bool:
        """True if at least one level has a number (otherwise a value gets "no figure", never a grade)."""
        return any(self.level(name) is not None for name in LEVEL_NAMES)

    def rule(self) -> dict[str, Any]:
        """The rule snapshot stored with a result."""
        return {
            "indicator": self.indicator,
            "unit": self.unit,
            "policy": self.policy_source,
            "policy_edition": self.policy_edition,
            "policy_values_from": self.policy_values_source,
            "missing": self.missing,
            "quota": self.quota_source,
            "band": self.band,
            "corrections": list(self.corrections),
            "notes": list(self.notes),
            "ref_version": self.version,
        }


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

    def gaps(self) -> dict[str, tuple[float, float | None]]:
        """Level name → (gap in the indicator's unit, gap in percent of |level|), for every level present."""
        out: dict[str, tuple[float, float | None]] = {}
        for name in LEVEL_NAMES:
            level = self.levels.level(name)
            if level is not None:
                gap = self.value - level
                out[name] = (gap, self._pct(gap, level))
        return out

    @property
    def quota_label(self) -> str:
        """1级 / 2级 / 3级 / 未达标 (fails 3级) / 不适用 (no quota standard applies)."""
        if self.quota_grade is None:
            return "不适用"
        return "未达标" if self.quota_grade == 4 else f"{self.quota_grade}级"

    def fields(self) -> dict[str, float]:
        """Numeric fields for the store (``indicator`` and ``acct_product`` measurements)."""
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
    """Grade ``value`` (full precision, no rounding) against ``levels``.

    Callers check :attr:`Levels.has_figures` first: levels without any number give "no figure" (无数值), not a
    grade.
    """
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


def levels_for(
    ref: Any,
    indicator: str,
    day: date,
    band_value: float | None = None,
    corrections: Sequence[CorrectionInput] = (),
) -> Levels | None:
    """Read the levels in force on ``day`` from the reference data, band chosen and corrections applied.

    Returns None if the indicator is unknown, needs a band value that was not given, or has no level at all
    on that day.
    """
    from energymon.refdata import ReferenceDataError

    try:
        found = ref.levels(indicator, on=day, band_value=band_value)
    except ReferenceDataError:
        return None
    if found.policy is None and found.quota is None:
        return None
    return _to_levels(found, corrections)


def _to_levels(found: Any, inputs: Sequence[CorrectionInput]) -> Levels:
    policy, quota = found.policy, found.quota
    values: dict[str, float | None] = {
        "benchmark": None if policy is None else policy.benchmark,
        "baseline": None if policy is None else policy.baseline,
        "grade_1": None if quota is None else quota.grade_1,
        "grade_2": None if quota is None else quota.grade_2,
        "grade_3": None if quota is None else quota.grade_3,
    }
    applied: list[str] = []
    notes: list[str] = []
    by_id = {c.id: c for c in inputs}
    for corr in () if quota is None else quota.corrections:
        given = by_id.pop(corr.id, None)
        text = _apply(corr, given, values)
        if text.startswith("not applied"):
            notes.append(f"{corr.id}: {text}")
        else:
            applied.append(f"{corr.id}: {text}")
    notes += [f"{cid}: input given but the quota standard has no such correction" for cid in by_id]
    missing = ""
    if policy is not None and policy.missing:
        missing = f"标杆/基准 ({policy.document_no}): {policy.missing}"
        if policy.values_copied:
            missing = (f"标杆/基准: {policy.document_no} in force, its table not read; {policy.values_document_no} is"
                       f" used instead and has no figure either: {policy.missing}")
    elif policy is not None and policy.values_copied:
        notes.insert(0, f"标杆/基准: {policy.document_no} in force; its table was not read, so the numbers are those of"
                        f" {policy.values_document_no}")
    band = policy.band if policy is not None and policy.band is not None else None
    if band is None and quota is not None:
        band = quota.band
    return Levels(
        indicator=found.indicator.id,
        unit=found.indicator.unit,
        benchmark=values["benchmark"],
        baseline=values["baseline"],
        grade_1=values["grade_1"],
        grade_2=values["grade_2"],
        grade_3=values["grade_3"],
        policy_source="" if policy is None else policy.document_no,
        quota_source="" if quota is None else quota.standard,
        version=str(found.ref_version),
        policy_edition="" if policy is None else policy.edition,
        policy_values_source="" if policy is None else policy.values_document_no,
        missing=missing,
        band="" if band is None else band.label(),
        corrections=tuple(applied),
        notes=tuple(notes),
    )


def _apply(corr: Any, given: CorrectionInput | None, values: dict[str, float | None]) -> str:
    """Apply one correction to ``values`` in place; return what was done (or why not)."""
    if corr.kind == "unquantified":
        return "not applied: the reference data has no amounts for it"
    if given is None:
        return "not applied: no plant input"
    targets = [name for name in corr.applies_to if values.get(name) is not None]
    if corr.kind == "additive_per_unit":
        if given.units is None:
            return "not applied: no units given"
        units = given.units
        if corr.max_units is not None:
            units = max(-corr.max_units, min(corr.max_units, units))
        parts = []
        for name in targets:
            amount = corr.amount_for(name)
            if amount is None:
                continue
            values[name] = float(values[name] or 0.0) + amount * units
            parts.append(f"{name} {amount:+g} x {units:g}")
        return "; ".join(parts) or "not applied: no level it applies to"
    if corr.kind == "multiplier":
        if corr.amount is not None:
            if not given.applies:
                return f"not applied: condition ({corr.condition}) does not hold"
            factor = corr.amount
        elif given.factor is not None:
            factor = given.factor
        else:
            return "not applied: no factor given"
        for name in targets:
            values[name] = float(values[name] or 0.0) * factor
        return f"x {factor:g} on {', '.join(targets)}"
    if corr.kind == "product_of_factors":
        missing = [f for f in corr.factors or () if f not in given.factors]
        if missing:
            return f"not applied: factors {', '.join(missing)} missing"
        product = 1.0
        for f in corr.factors or ():
            product *= given.factors[f]
        for name in targets:
            values[name] = float(values[name] or 0.0) * product
        return f"x {product:g} ({'·'.join(corr.factors or ())}) on {', '.join(targets)}"
    return f"not applied: unknown kind {corr.kind}"
