"""The Pareto front of a study and the choices made on it: the knee point and the best plan within a budget.

A front is built from the measured figures and the limits in force when it is built (the ``feasible`` column
of ``Ledger.trials_frame(limits)``), never from a feasibility fixed when a trial was recorded: a limit that
changes between runs gives the front of the question asked now. Dominance is pymoo's non-dominated sort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from autoaccel.objectives import DIRECTIONS


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
    """The front's rows, cheapest first; a candidate evaluated twice (a re-proposed duplicate) appears once."""
    front = trials[trials["trial"].isin(front_numbers)]
    if "candidate_key" in front:
        front = front.drop_duplicates(subset="candidate_key", keep="first")
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
    """The best front point within the limits, or (``row`` None) the closest one and what it misses by."""

    row: pd.Series | None
    closest: pd.Series | None
    misses: dict[str, float]


def choose_within(front: pd.DataFrame, quality_metric: str, limits: dict[str, float | None]) -> BudgetChoice:
    """Best quality among front points meeting every limit (``{"latency_ms": 50, "nfe": 8}``, None = no limit)."""
    active = {metric: limit for metric, limit in limits.items() if limit is not None}
    if front.empty:
        return BudgetChoice(None, None, {})
    fits = np.ones(len(front), dtype=bool)
    relative_excess = np.zeros(len(front))
    for metric, limit in active.items():
        values = front[metric].to_numpy(dtype=float)
        fits &= values <= limit
        relative_excess += np.maximum(values - limit, 0) / max(abs(limit), 1e-9)
    ascending = DIRECTIONS[quality_metric] == "minimize"
    if fits.any():
        best = front[fits].sort_values(quality_metric, ascending=ascending).iloc[0]
        return BudgetChoice(best, None, {})
    closest = front.iloc[int(np.argmin(relative_excess))]
    misses = {
        metric: float(closest[metric]) - limit
        for metric, limit in active.items()
        if not math.isnan(float(closest[metric])) and float(closest[metric]) > limit
    }
    return BudgetChoice(None, closest, misses)


def hypervolume_history(trials: pd.DataFrame, objectives: list[str]) -> list[float]:
    """Hypervolume of the feasible complete trials seen so far, after each trial (pymoo's HV).

    Objectives are scaled to [0, 1] by the best and worst values over the whole run (maximised ones
    negated), with the reference point at 1.1 in every objective, so values compare within one run.
    """
    from pymoo.indicators.hv import HV

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
    indicator = HV(ref_point=np.full(len(objectives), 1.1))
    history, seen = [], []
    for row, ok in zip(scaled, valid):
        if ok:
            seen.append(row)
        history.append(float(indicator(np.array(seen))) if seen else 0.0)
    return history
