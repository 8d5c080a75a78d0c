"""Candidates whose parameters differ but whose computation does not are one plan: measured once, shown once."""

from __future__ import annotations

import pytest
import yaml

from autoaccel.config import compose_config
from autoaccel.plan.identity import plan_key
from autoaccel.techniques.base import get_technique

SOLVER, TIMESTEPS = get_technique("solver"), get_technique("timesteps")


@pytest.fixture(scope="module")
def target(tiny_pipeline_dir):
    from autoaccel.targets.loader import load_pipeline_folder

    return load_pipeline_folder(tiny_pipeline_dir, device="cpu")


def _key(target, steps: int, **solver) -> str:
    return plan_key(target, [(SOLVER, SOLVER.config_cls(**solver)), (TIMESTEPS, TIMESTEPS.config_cls(steps=steps))])


def test_a_solver_order_the_schedule_cannot_use_is_the_same_plan(target):
    # DPM-Solver singlestep over 3 steps runs orders [1, 2, 1] whether asked for order 2 or 3
    assert _key(target, 3, name="dpmsolver_single", order=2) == _key(target, 3, name="dpmsolver_single", order=3)
    assert _key(target, 6, name="dpmsolver_single", order=2) != _key(target, 6, name="dpmsolver_single", order=3)
    # DDIM is DPM-Solver++ of order 1: the same update
    assert _key(target, 5, name="ddim") == _key(target, 5, name="dpmsolver++", order=1)


def test_anything_that_changes_the_computation_changes_the_plan(target):
    base = _key(target, 5, name="dpmsolver++", order=2)
    assert base != _key(target, 5, name="dpmsolver++", order=2, guidance=1.5)
    assert base != _key(target, 6, name="dpmsolver++", order=2)
    assert base != _key(target, 5, name="unipc", order=2)
    assert _key(target, 5, name="ddpm") == _key(target, 5, name="ddpm")  # stochastic steps on a fixed generator
    pruning = get_technique("pruning")
    pruned = [
        (pruning, pruning.config_cls(ratio=0.2)),
        (SOLVER, SOLVER.config_cls()),
        (TIMESTEPS, TIMESTEPS.config_cls()),
    ]
    assert plan_key(target, pruned) != plan_key(target, pruned[1:])


@pytest.mark.slow
@pytest.mark.integration
def test_a_search_measures_one_plan_once_and_shows_it_once(fast_overrides, tmp_path):
    from autoaccel.front.pareto import front_frame
    from autoaccel.search.loop import LoopBudget, run_search
    from autoaccel.search.run import ensure_reference, prepare_run

    space = tmp_path / "orders.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "techniques": ["solver", "timesteps"],
                "fixed": {
                    "timesteps.family": "uniform_trailing",
                    "timesteps.steps": 3,
                    "solver.name": "dpmsolver_single",
                },
                "dimensions": {"solver.order": {"type": "int", "low": 2, "high": 3}},
            }
        )
    )
    context = prepare_run(compose_config([*fast_overrides, f"space={space}", "budget.warm_start_steps=[]"]))
    try:
        ensure_reference(context, lambda message: None)
        for order in (2, 3):
            context.ledger.study.enqueue_trial({"solver.order": order})
        budget = LoopBudget(trials=2, max_minutes=None, limits=[])
        run_search(context.ledger, context.backend, context.evaluator, context.space, context.objectives, budget)
    finally:
        context.lock.release()
    trials = context.ledger.trials_frame()
    assert trials["param.solver.order"].tolist() == [2, 3]
    assert trials["plan_key"].nunique() == 1
    assert trials.loc[1, "duplicate_of"] == 0  # the second candidate reused the first one's measurement
    front = front_frame(trials, trials["trial"].tolist())
    assert len(front) == 1 and int(front.iloc[0]["trial"]) == 0
