"""The Pareto front of a study and the choices made on it: the knee point and the best plan within limits.

A front is built from the measured figures and the limits in force when it is built (the ``feasible`` column
of ``Ledger.trials_frame(limits)``), never from a feasibility fixed when a trial was recorded: a limit that
changes between runs gives the front of the question asked now. Dominance is pymoo's non-dominated sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from autoaccel.front.limits import Limit, within_limits
from autoaccel.front.objectives import DIRECTIONS


def front_numbers(trials: pd.DataFrame, objectives: list[str]) -> list[int]:
    """Trials on the Pareto front: complete, feasible under the limits in force, and non-dominated."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    if trials.empty or any(name not in trials for name in objectives):
        return []
    usable = trials[(trials["state"] == "COMPLETE") & trials["feasible"].astype(bool)]
    matrix = _minimised(usable, objectives)
    finite = np.isfinite(matrix).all(axis=1)
    usable, matrix = usable[finite], matrix[finite]
    if usable.empty:
        return []
    on_front = NonDominatedSorting().do(matrix, only_non_dominated_front=True)
    return sorted(int(number) for number in usable["trial"].to_numpy()[on_front])


def _minimised(trials: pd.DataFrame, objectives: list[str]) -> np.ndarray:
    """The objectives as a matrix to minimise (maximised ones negated)."""
    matrix = np.array(trials[list(objectives)].to_numpy(dtype=float), copy=True).reshape(len(trials), len(objectives))
    for column, name in enumerate(objectives):
        if DIRECTIONS[name] == "maximize":
            matrix[:, column] = -matrix[:, column]
    return matrix


def front_frame(trials: pd.DataFrame, front_numbers: list[int], cost_metric: str = "latency_ms") -> pd.DataFrame:
    """The front's rows, cheapest first; a plan that several candidates ran (re-proposed parameters, or other
    parameters doing the same computation) appears once, as its first trial."""
    front = trials[trials["trial"].isin(front_numbers)].sort_values("trial")
    for identity in ("candidate_key", "plan_key"):  # one row per plan, however many candidates ran it
        if identity in front:
            known = front[identity].notna() & (front[identity] != "")
            front = front[~known | ~front[identity].duplicated(keep="first")]
    return front.sort_values(cost_metric).reset_index(drop=True)


def knee_point(front: pd.DataFrame, objectives: list[str]) -> int | None:
    """Row index of the front point closest to the ideal point after scaling each objective to [0, 1]."""
    if front.empty:
        return None
    scaled = []
    for name in objectives:
        values = front[name].to_numpy(dtype=float)
        if DIRECTIONS[name] == "maximize":
            values = -values
        span = values.max() - values.min()
        scaled.append((values - values.min()) / span if span > 0 else np.zeros_like(values))
    distance = np.sqrt(np.sum(np.square(np.stack(scaled)), axis=0))
    return int(np.argmin(distance))


@dataclass(frozen=True)
class BudgetChoice:
    """The best front point within the limits, or (``row`` None) the closest one and what it misses each by."""

    row: pd.Series | None
    closest: pd.Series | None
    misses: dict[str, float]  # limit option -> how far the closest point is beyond its bound
    ties: tuple[str, ...] = ()  # where the data could not tell the choice from a bound or a better plan, and why


def choose_within(front: pd.DataFrame, limits: list[Limit], optimize: str) -> BudgetChoice:
    """The front point best in ``optimize`` (in that metric's direction) among those meeting every limit; when none
    does, the closest: the one whose misses, each relative to its bound, sum smallest. Ties go to better quality
    (FID), or to the faster plan when FID is what is optimised."""
    if front.empty:
        return BudgetChoice(None, None, {})
    records = front.to_dict("records")
    fits = np.array([within_limits(record, limits) for record in records], dtype=bool)
    if fits.any():
        tie_break = "latency_ms" if optimize == "fid" else "fid"
        keys = [optimize] + ([tie_break] if tie_break in front else [])
        ascending = [DIRECTIONS.get(key, "minimize") == "minimize" for key in keys]
        return BudgetChoice(front[fits].sort_values(keys, ascending=ascending).iloc[0], None, {})
    relative = [
        sum(limit.miss(record.get(limit.metric)) / max(abs(limit.bound), 1e-9) for limit in limits)
        for record in records
    ]
    closest = front.iloc[int(np.argmin(relative))]
    misses = {
        limit.option: limit.miss(closest.get(limit.metric))
        for limit in limits
        if limit.miss(closest.get(limit.metric)) > 0
    }
    return BudgetChoice(None, closest, misses)


def dominates(first, second) -> bool:
    """``first`` is no worse than ``second`` in every objective and better in one (both minimised: negate a
    maximised objective first). The one dominance test: fronts, fidelity promotion and benchmarks use it."""
    first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    return bool(np.all(first <= second) and np.any(first < second))


def hypervolume(points, reference) -> float:
    """pymoo's hypervolume of minimised ``points`` (rows) up to ``reference``; 0 without a point. The one
    hypervolume: the report and the benchmarks use it."""
    from pymoo.indicators.hv import HV

    points = np.asarray(points, dtype=float).reshape(-1, len(reference))
    return float(HV(ref_point=np.asarray(reference, dtype=float))(points)) if len(points) else 0.0


def hypervolume_history(trials: pd.DataFrame, objectives: list[str]) -> list[float]:
    """Hypervolume of the feasible complete trials seen so far, after each trial (pymoo's HV).

    Objectives are scaled to [0, 1] by the best and worst values over the whole run (maximised ones
    negated), with the reference point at 1.1 in every objective, so values compare within one run.
    """
    if trials.empty:
        return []
    ordered = trials.sort_values("trial")
    if any(name not in ordered for name in objectives):  # no trial measured anything
        return [0.0] * len(ordered)
    usable = (ordered["state"] == "COMPLETE") & ordered["feasible"].astype(bool)
    matrix = _minimised(ordered, objectives)
    valid = usable.to_numpy() & np.isfinite(matrix).all(axis=1)
    if not valid.any():
        return [0.0] * len(ordered)
    low, high = matrix[valid].min(axis=0), matrix[valid].max(axis=0)
    scaled = (matrix - low) / np.where(high > low, high - low, 1.0)
    reference = np.full(len(objectives), 1.1)
    history, seen = [], []
    for row, ok in zip(scaled, valid):
        if ok:
            seen.append(row)
        history.append(hypervolume(np.array(seen), reference) if seen else 0.0)
    return history
