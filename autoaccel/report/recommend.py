"""The answer a report opens with: which front plan to deploy for a given loss of quality.

For each bound (FID within 1.1x, 1.25x and 1.5x of the teacher's) the fastest front plan that meets it, and the
knee point; each compared with the teacher and with the best standard configuration (the solvers a user would
try first), so the speed-up shown is what the search gained, not only what fewer steps gave.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from autoaccel.limits import Limit
from autoaccel.pareto import choose_within

FID_RATIOS = (1.1, 1.25, 1.5)
REFERENCE_FID = 1e-6  # a teacher FID at most this is the teacher scored against its own samples
TEACHER_SAMPLES = "teacher-samples"  # a target whose FID reference is its teacher's own samples


@dataclass(frozen=True)
class Recommendation:
    """One recommended plan, or (``plan`` None) why there is none for this goal."""

    goal: str  # what was asked, e.g. "fastest with FID within 1.25x of the teacher's (FID <= 12.5)"
    plan: pd.Series | None  # the front row
    standard: pd.Series | None  # the standard configuration it is compared with
    speedup_vs_teacher: float | None
    speedup_vs_standard: float | None
    note: str = ""  # why plan or standard is missing
    ratio: float | None = None  # the FID ratio to the teacher this goal allows; None for the knee point

    @property
    def trial(self) -> int | None:
        return None if self.plan is None else int(self.plan["trial"])


def _number(value) -> float | None:
    """A measured figure as a float; None where it was not measured (None, NaN, text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def speedup(reference_ms, plan_ms) -> float | None:
    """How many times faster the plan is than the reference (reference latency / plan latency)."""
    reference, plan = _number(reference_ms), _number(plan_ms)
    if reference is None or plan is None or plan <= 0:
        return None
    return reference / plan


def fastest_within(frame: pd.DataFrame, max_fid: float) -> pd.Series | None:
    """The fastest row whose FID is at most ``max_fid`` (ties go to the better FID); None if none is."""
    return choose_within(frame, [Limit("max_fid", "fid", max_fid)], "latency_ms").row


def best_fid(frame: pd.DataFrame) -> pd.Series | None:
    """The row with the lowest FID (ties go to the faster); None if no row was measured."""
    row = choose_within(frame, [], "fid").row
    return None if row is None or _number(row.get("fid")) is None else row


def ratio_goal(ratios: list[float]) -> str:
    return f"fastest with FID within {', '.join(f'{ratio:g}x' for ratio in ratios)} of the reference's"


def _no_ratio_reason(teacher_fid: float | None, quality_reference: str | None) -> str:
    """Why no plan can be within a ratio of the teacher's FID, or "" when one can."""
    if teacher_fid is None:
        return "the reference's FID was not measured"
    if quality_reference == TEACHER_SAMPLES or teacher_fid <= REFERENCE_FID:
        return (
            "FID is measured against the reference's own samples here (the reference's is 0 by construction), so no "
            "ratio to it selects a plan; compare the front's FIDs and psnr_vs_ode in trials.csv instead"
        )
    return ""


def _within_ratio(
    front: pd.DataFrame, standards: pd.DataFrame, teacher: dict, ratio: float, teacher_fid: float
) -> Recommendation:
    max_fid = ratio * teacher_fid
    goal = f"{ratio_goal([ratio])} (FID <= {max_fid:.4g})"
    plan = fastest_within(front, max_fid)
    standard = fastest_within(standards, max_fid)
    notes = []
    if plan is None:
        best = best_fid(front)
        closest = f"; the front's best FID is {float(best['fid']):.4g}" if best is not None else ""
        notes.append(f"no front plan reaches FID <= {max_fid:.4g}{closest}")
    if standard is None:
        notes.append(f"no standard configuration reaches FID <= {max_fid:.4g}")
    return Recommendation(
        goal,
        plan,
        standard,
        None if plan is None else speedup(teacher.get("latency_ms"), plan["latency_ms"]),
        None if plan is None or standard is None else speedup(standard["latency_ms"], plan["latency_ms"]),
        "; ".join(notes),
        ratio,
    )


def _knee(front: pd.DataFrame, standards: pd.DataFrame, teacher: dict, knee: int | None) -> Recommendation:
    goal = "knee point: the balanced plan, closest to the ideal of every objective"
    if knee is None or front.empty:
        return Recommendation(goal, None, None, None, None, "the front is empty")
    plan = front.iloc[knee]
    standard = best_fid(standards)
    return Recommendation(
        goal,
        plan,
        standard,
        speedup(teacher.get("latency_ms"), plan["latency_ms"]),
        None if standard is None else speedup(standard["latency_ms"], plan["latency_ms"]),
        "" if standard is not None else "no standard configuration was measured",
    )


def recommended_plans(
    front: pd.DataFrame,
    standards: pd.DataFrame,
    teacher: dict | None,
    knee: int | None = None,
    quality_reference: str | None = None,
    ratios: tuple[float, ...] = FID_RATIOS,
) -> list[Recommendation]:
    """One recommendation per FID ratio to the teacher (the fastest front plan within it, compared with the
    fastest standard configuration within it), then the knee point (row ``knee`` of ``front``, compared with
    the standard configuration of best FID). ``standards`` are the complete standard-configuration trials;
    ``quality_reference`` is the target's reference kind (no ratio applies where it is the teacher's samples)."""
    teacher = teacher or {}
    teacher_fid = _number(teacher.get("fid"))
    recommendations = []
    for ratio in ratios:
        missing = _no_ratio_reason(teacher_fid, quality_reference)
        if missing:
            goal = ratio_goal([ratio])
            recommendations.append(Recommendation(goal, None, None, None, None, missing, ratio))
        else:
            recommendations.append(_within_ratio(front, standards, teacher, ratio, teacher_fid))
    recommendations.append(_knee(front, standards, teacher, knee))
    return recommendations
