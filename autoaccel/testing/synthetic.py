"""A cheap two-objective problem with a known Pareto front, shaped like autoaccel's sampler space: an int step
count, categorical families with conditional floats, a per-step schedule, and solvers with conditional orders.

quality = 1/steps + family penalty + schedule penalty + solver penalty, every penalty zero at one known
setting; cost = steps / 10. The front is therefore {(1/s, s/10) : s = 3..10}, reached only when every
penalty is zero, so an optimizer has to solve the conditional parts, not only pick a step count.
"""

from __future__ import annotations

import time

import numpy as np

from autoaccel.measure.measurement import COMPLETE, Measurement
from autoaccel.plan.candidate import Candidate
from autoaccel.space.spaces import SearchSpace, parse_space

STEPS = (3, 10)

SPACE_DOCUMENT = {
    "name": "synthetic",
    "techniques": ["solver", "timesteps"],
    "dimensions": {
        "timesteps.steps": {"type": "int", "low": STEPS[0], "high": STEPS[1]},
        "timesteps.family": {"type": "categorical", "choices": ["power", "karras", "free"]},
        "timesteps.rho": {
            "type": "float",
            "low": 0.5,
            "high": 8.0,
            "log": True,
            "when": {"timesteps.family": ["power", "karras"]},
        },
        "timesteps.gap": {
            "type": "schedule",
            "count_from": "timesteps.steps",
            "low": 0.1,
            "high": 1.0,
            "when": {"timesteps.family": ["free"]},
        },
        "solver.name": {"type": "categorical", "choices": ["ddim", "dpmsolver++", "unipc", "heun"]},
        "solver.order": {"type": "int", "low": 1, "high": 3, "when": {"solver.name": ["dpmsolver++", "unipc"]}},
    },
}


def synthetic_space() -> SearchSpace:
    return parse_space(SPACE_DOCUMENT, source="<synthetic>")


def synthetic_objectives(params: dict) -> tuple[float, float]:
    steps = int(params["timesteps.steps"])
    family = params["timesteps.family"]
    if family == "free":  # best: equal gaps
        gaps = np.array([params[f"timesteps.gap_{index}"] for index in range(steps - 1)], dtype=float)
        family_penalty = 2.0 * float(np.std(gaps / gaps.mean()))
    elif family == "karras":  # best: rho = 3
        family_penalty = 0.3 * abs(np.log(params["timesteps.rho"] / 3.0))
    else:
        family_penalty = 0.15 + 0.3 * abs(np.log(params["timesteps.rho"] / 2.0))
    solver = params["solver.name"]
    solver_penalty = {"ddim": 0.2, "heun": 0.1}.get(solver, 0.0)
    if solver == "dpmsolver++":
        solver_penalty = 0.05 * abs(int(params["solver.order"]) - 2)
    elif solver == "unipc":
        solver_penalty = 0.02 + 0.05 * abs(int(params["solver.order"]) - 3)
    quality = 1.0 / steps + family_penalty + solver_penalty
    return quality, steps / 10.0


def true_front() -> np.ndarray:
    return np.array([(1.0 / steps, steps / 10.0) for steps in range(STEPS[0], STEPS[1] + 1)])


class SyntheticEvaluator:
    """The evaluator interface of autoaccel.measure.evaluator.Evaluator, for the synthetic problem.

    ``work_s`` stands in for the time a real evaluation takes (a sleep, labelled so where it is reported).
    """

    def __init__(self, work_s: float = 0.0) -> None:
        self.work_s = work_s

    def evaluate(self, candidate: Candidate, samples: int | None = None) -> Measurement:
        if self.work_s:
            time.sleep(self.work_s)
        quality, cost = synthetic_objectives(candidate.as_dict)
        return Measurement(COMPLETE, metrics={"fid": quality, "nfe": cost}, details={"candidate_key": candidate.key})
