"""The answer a report opens with: which front plan to deploy for a given loss of quality.

For each bound (FID within 1.1x, 1.25x and 1.5x of the reference's) the fastest front plan that meets it, and the
knee point; each compared with the reference and with the best standard configuration (the solvers a user would
try first), so the speed-up shown is what the search gained, not only what fewer steps gave. With the run's
paired intervals (``autoaccel.report.noise``) a plan whose FID ratio cannot be told from a bound meets it, a tie
goes to the faster plan, and every comparison says whether it is a tie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pandas as pd

from autoaccel.front.limits import REFERENCE_SAMPLES, Limit
from autoaccel.metrics.bootstrap import Interval
from autoaccel.report.noise import Noise, choose_with_noise
from autoaccel.report.speedup import SpeedUp, plan_speedup

FID_RATIOS = (1.1, 1.25, 1.5)
REFERENCE_FID = 1e-6  # a reference FID at most this is the reference scored against its own samples


@dataclass(frozen=True)
class Recommendation:
    """One recommended plan, or (``plan`` None) why there is none for this goal."""

    goal: str  # what was asked, e.g. "fastest with FID within 1.25x of the reference's (FID <= 12.5)"
    plan: pd.Series | None  # the front row
    standard: pd.Series | None  # the standard configuration it is compared with
    speedup_vs_reference: float | None
    speedup_vs_standard: float | None
    note: str = ""  # why plan or standard is missing
    ratio: float | None = None  # the FID ratio to the reference this goal allows; None for the knee point
    ties: tuple[str, ...] = ()  # where the data could not tell the plan from the bound or a better plan
    fid_interval: Interval | None = None  # the plan's FID with its paired interval
    ratio_interval: Interval | None = None  # the plan's FID over the reference's, with its interval
    versus_standard: Interval | None = None  # the plan's FID minus the standard configuration's, paired
    speedup: SpeedUp | None = None  # the speed-up over the reference with its rounds' interval and its split

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


def best_fid(frame: pd.DataFrame, noise: Noise | None = None) -> pd.Series | None:
    """The row with the lowest FID (with intervals: the fastest of those that cannot be told from it); None if no
    row was measured."""
    row = choose_with_noise(frame, [], "fid", noise).row
    return None if row is None or _number(row.get("fid")) is None else row


def _intervals(plan: pd.Series | None, standard: pd.Series | None, noise: Noise | None) -> dict:
    """The plan's FID and ratio intervals and its paired difference from the standard configuration (none where the
    plan is that standard configuration)."""
    if plan is None or noise is None:
        return {}
    same = standard is not None and int(standard["trial"]) == int(plan["trial"])
    return {
        "fid_interval": noise.fid(plan),
        "ratio_interval": noise.ratio(plan),
        "versus_standard": None if standard is None or same else noise.difference(plan, standard),
    }


def ratio_goal(ratios: list[float]) -> str:
    return f"fastest with FID within {', '.join(f'{ratio:g}x' for ratio in ratios)} of the reference's"


def _no_ratio_reason(reference_fid: float | None, quality_reference: str | None) -> str:
    """Why no plan can be within a ratio of the reference's FID, or "" when one can."""
    if reference_fid is None:
        return "the reference's FID was not measured"
    if quality_reference == REFERENCE_SAMPLES or reference_fid <= REFERENCE_FID:
        return (
            "FID is measured against the reference's own samples here (the reference's is 0 by construction), so no "
            "ratio to it selects a plan; compare the front's FIDs and psnr_vs_ode in trials.csv instead"
        )
    return ""


def _within_ratio(
    front: pd.DataFrame,
    standards: pd.DataFrame,
    reference: dict,
    ratio: float,
    reference_fid: float,
    noise: Noise | None,
) -> Recommendation:
    max_fid = ratio * reference_fid
    goal = f"{ratio_goal([ratio])} (FID <= {max_fid:.4g})"
    limits = [Limit("max_fid_ratio", "fid", max_fid, ratio=ratio)]
    choice = choose_with_noise(front, limits, "latency_ms", noise)
    plan = choice.row
    standard = choose_with_noise(standards, limits, "latency_ms", noise).row
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
        None if plan is None else speedup(reference.get("latency_ms"), plan["latency_ms"]),
        None if plan is None or standard is None else speedup(standard["latency_ms"], plan["latency_ms"]),
        "; ".join(notes),
        ratio,
        choice.ties,
        **_intervals(plan, standard, noise),
    )


def _knee(
    front: pd.DataFrame, standards: pd.DataFrame, reference: dict, knee: int | None, noise: Noise | None
) -> Recommendation:
    goal = "knee point: the balanced plan, closest to the ideal of every objective"
    if knee is None or front.empty:
        return Recommendation(goal, None, None, None, None, "the front is empty")
    plan = front.iloc[knee]
    standard = best_fid(standards, noise)
    return Recommendation(
        goal,
        plan,
        standard,
        speedup(reference.get("latency_ms"), plan["latency_ms"]),
        None if standard is None else speedup(standard["latency_ms"], plan["latency_ms"]),
        "" if standard is not None else "no standard configuration was measured",
        **_intervals(plan, standard, noise),
    )


def recommended_plans(
    front: pd.DataFrame,
    standards: pd.DataFrame,
    reference: dict | None,
    knee: int | None = None,
    quality_reference: str | None = None,
    ratios: tuple[float, ...] = FID_RATIOS,
    noise: Noise | None = None,
    confirmation: dict | None = None,
) -> list[Recommendation]:
    """One recommendation per FID ratio to the reference (the fastest front plan within it, compared with the
    fastest standard configuration within it), then the knee point (row ``knee`` of ``front``, compared with
    the standard configuration of best FID). ``standards`` are the complete standard-configuration trials;
    ``quality_reference`` is the target's reference kind (no ratio applies where it is the reference call's samples);
    ``noise``: the run's paired intervals, which make differences inside them ties; ``confirmation``: the
    front's latencies timed side by side, which give each speed-up its interval and its runtime split."""
    reference = reference or {}
    reference_fid = _number(reference.get("fid"))
    recommendations = []
    for ratio in ratios:
        missing = _no_ratio_reason(reference_fid, quality_reference)
        if missing:
            goal = ratio_goal([ratio])
            recommendations.append(Recommendation(goal, None, None, None, None, missing, ratio))
        else:
            recommendations.append(_within_ratio(front, standards, reference, ratio, reference_fid, noise))
    recommendations.append(_knee(front, standards, reference, knee, noise))
    return [
        replace(item, speedup=plan_speedup(item.plan, reference, confirmation)) if item.plan is not None else item
        for item in recommendations
    ]


def recommendation_line(item: Recommendation) -> str:
    """One recommendation in a line: the goal, the plan's trial, FID, latency and speed-up, or why there is none."""
    if item.plan is None:
        return f"{item.goal}: none ({item.note})" if item.note else f"{item.goal}: none"
    figures = [f"trial {int(item.plan['trial'])}"]
    fid, latency = _number(item.plan.get("fid")), _number(item.plan.get("latency_ms"))
    figures += [f"FID {fid:.3g}"] if fid is not None else []
    figures += [f"{latency:.3g} ms"] if latency is not None else []
    figures += [f"{item.speedup_vs_reference:.2f}x faster than the reference"] if item.speedup_vs_reference else []
    return f"{item.goal}: " + ", ".join(figures)


def recommendation_ties(recommendations: list[Recommendation], noise: Noise | None) -> list[str]:
    """Pairs of different recommended plans whose FIDs the data cannot tell apart: the faster serves both goals."""
    if noise is None:
        return []
    plans = {}
    for recommendation in recommendations:
        if recommendation.plan is not None:
            plans.setdefault(int(recommendation.plan["trial"]), recommendation.plan)
    ordered = sorted(plans.values(), key=lambda plan: float(plan["latency_ms"]))
    sentences = []
    for index, faster in enumerate(ordered):
        for slower in ordered[index + 1 :]:
            difference = noise.difference(slower, faster)
            if difference is not None and difference.covers(0.0):
                sentences.append(
                    f"trials {int(faster['trial'])} and {int(slower['trial'])} cannot be told apart in FID at "
                    f"{noise.samples} samples (difference {difference.text(signed=True)}): trial "
                    f"{int(faster['trial'])} is the faster"
                )
    return sentences
