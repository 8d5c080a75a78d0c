"""Units that whole searches exercise only indirectly: the latency cache key, the fidelity ladder, the baselines
of each bundled space, hypervolume, constraints in the ledger, and a report rebuilt from a ledger alone."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from autoaccel.errors import ConfigError
from autoaccel.front.limits import resolve_limits
from autoaccel.front.pareto import front_numbers, hypervolume_history
from autoaccel.measure.measurement import COMPLETE, FAILED, Measurement
from autoaccel.plan.candidate import Candidate, cost_key
from autoaccel.search.fidelity import FidelityLadder
from autoaccel.search.ledger import Ledger
from autoaccel.search.loop import evaluate_with_fidelity, standard_configurations
from autoaccel.space.spaces import bundled_spaces, load_space
from autoaccel.techniques.base import Technique, get_technique

# ---------------------------------------------------------------- the latency cache key


@dataclass(frozen=True)
class CacheConfig:
    """A stand-in for a technique that changes cost without changing parameters or unet calls (a feature cache)."""

    interval: int = 1
    warmup: int = 0


def _noop(pipeline, config, target) -> None:
    return None


MEASURED = {"params": 1000, "scheduler": "UniPCMultistepScheduler", "nfe": 8, "batch": 16, "kernels": ""}


def test_a_technique_that_changes_cost_but_not_size_or_calls_gets_its_own_timing():
    cache = Technique("cache", 30, CacheConfig, _noop, cost_key=lambda config: {"interval": config.interval})
    every_step = cost_key(MEASURED, [(cache, CacheConfig(interval=1))])
    every_other = cost_key(MEASURED, [(cache, CacheConfig(interval=2))])
    assert every_step != every_other
    assert cost_key(MEASURED, [(cache, CacheConfig(interval=2, warmup=3))]) == every_other  # warmup: not a cost


def test_a_technique_without_a_cost_key_is_timed_per_config():
    undeclared = Technique("cache", 30, CacheConfig, _noop)
    assert undeclared.cost_settings(CacheConfig(interval=2, warmup=3)) == {"interval": 2, "warmup": 3}
    default = cost_key(MEASURED, [(undeclared, CacheConfig())])
    assert cost_key(MEASURED, [(undeclared, CacheConfig(warmup=1))]) != default


def test_a_plan_that_leaves_the_model_as_it_is_shares_the_plain_pipelines_timing():
    pruning, quantization, timesteps = (get_technique(name) for name in ("pruning", "quantization", "timesteps"))
    steps = timesteps.config_cls(steps=6)
    plain = cost_key(MEASURED, [(timesteps, steps)])
    unchanged = [(pruning, pruning.config_cls()), (quantization, quantization.config_cls(enabled=False))]
    assert cost_key(MEASURED, [*unchanged, (timesteps, steps)]) == plain
    assert cost_key(MEASURED, [(quantization, quantization.config_cls()), (timesteps, steps)]) != plain


def test_the_cost_key_is_stable_json_whatever_the_order_settings_were_given_in():
    solver = get_technique("solver")
    key = cost_key(dict(reversed(MEASURED.items())), [(solver, solver.config_cls(name="unipc", guidance=1.5))])
    assert key == cost_key(MEASURED, [(solver, solver.config_cls(guidance=1.5, name="unipc"))])
    assert json.loads(key)["techniques"] == {"solver": {"scheduler": "UniPCMultistepScheduler", "guided": True}}
    assert list(json.loads(key)) == sorted(json.loads(key))


# ---------------------------------------------------------------- the fidelity ladder

OBJECTIVES = ["fid", "latency_ms"]


def test_ladder_levels_must_be_increasing_sample_counts():
    for levels in ([], [32, 8], [8, 8], [1, 8]):
        with pytest.raises(ConfigError, match="fidelity.levels"):
            FidelityLadder(levels, OBJECTIVES)
    with pytest.raises(ConfigError, match="fidelity.z"):
        FidelityLadder([8, 32], OBJECTIVES, z=-1.0)


def test_a_candidate_dominated_even_at_its_optimistic_quality_is_not_promoted():
    ladder = FidelityLadder([8, 32], OBJECTIVES, z=1.0, rule="interval")
    ladder.remember(8, {"fid": 10.0, "fid_std": 1.0, "latency_ms": 5.0})
    assert not ladder.promotable(8, {"fid": 20.0, "fid_std": 1.0, "latency_ms": 6.0})
    assert ladder.promotable(8, {"fid": 11.0, "fid_std": 2.0, "latency_ms": 6.0})  # within its interval: 9 < 10
    assert ladder.promotable(8, {"fid": 30.0, "fid_std": 0.0, "latency_ms": 1.0})  # faster: on the front
    assert ladder.promotable(32, {"fid": 20.0, "fid_std": 1.0, "latency_ms": 6.0})  # each level on its own


def test_without_optimism_only_the_measured_quality_counts():
    ladder = FidelityLadder([8, 32], OBJECTIVES, z=0.0, rule="interval")
    ladder.remember(8, {"fid": 10.0, "fid_std": 1.0, "latency_ms": 5.0})
    assert not ladder.promotable(8, {"fid": 11.0, "fid_std": 2.0, "latency_ms": 6.0})


def test_promotion_follows_each_objectives_direction():
    ladder = FidelityLadder([8, 32], ["psnr_vs_ode", "latency_ms"], rule="interval")
    ladder.remember(8, {"psnr_vs_ode": 30.0, "latency_ms": 5.0})
    assert not ladder.promotable(8, {"psnr_vs_ode": 25.0, "latency_ms": 6.0})
    assert ladder.promotable(8, {"psnr_vs_ode": 31.0, "latency_ms": 6.0})


def test_every_scored_candidate_joins_its_levels_population():
    ladder = FidelityLadder([8, 32], OBJECTIVES, rule="interval")
    first = {"fid": 10.0, "latency_ms": 5.0}
    assert ladder.promote_and_remember(8, first)
    assert ladder.promote_and_remember(8, dict(first))  # an equal point is not dominated
    assert not ladder.promote_and_remember(8, {"fid": 12.0, "latency_ms": 6.0})
    assert len(ladder.populations[8]) == 3
    assert (ladder.next_level(8), ladder.next_level(32), ladder.top) == (32, None, 32)


class ScriptedEvaluator:
    """Returns fixed figures per (candidate, samples) and records what was asked."""

    def __init__(self, figures: dict[tuple[str, int | None], dict[str, float] | None]) -> None:
        self.figures = figures
        self.asked: list[tuple[str, int | None]] = []

    def evaluate(self, candidate: Candidate, samples: int | None = None) -> Measurement:
        self.asked.append((candidate.key, samples))
        metrics = self.figures[(candidate.key, samples)]
        if metrics is None:
            return Measurement(FAILED, details={"seconds": 1.0}, failure="images contain NaN")
        return Measurement(COMPLETE, {**metrics, "quality_samples": float(samples or 0)}, {"seconds": 1.5})


def test_a_promising_candidate_climbs_to_the_top_level_and_a_dominated_one_stops():
    good, poor, broken = (Candidate.from_params({"timesteps.steps": steps}) for steps in (4, 5, 6))
    evaluator = ScriptedEvaluator(
        {
            (good.key, 8): {"fid": 10.0, "fid_std": 0.5, "latency_ms": 5.0},
            (good.key, 32): {"fid": 9.0, "fid_std": 0.2, "latency_ms": 5.0},
            (poor.key, 8): {"fid": 20.0, "fid_std": 1.0, "latency_ms": 6.0},
            (broken.key, 8): None,
        }
    )
    ladder = FidelityLadder([8, 32], OBJECTIVES, rule="interval")

    measurement, per_level = evaluate_with_fidelity(evaluator, good, ladder)
    assert sorted(per_level) == [8, 32] and measurement.metrics["quality_samples"] == 32
    assert measurement.details["seconds"] == 3.0  # every level's time: what the candidate cost

    measurement, per_level = evaluate_with_fidelity(evaluator, poor, ladder)
    assert sorted(per_level) == [8] and measurement.metrics["quality_samples"] == 8

    measurement, per_level = evaluate_with_fidelity(evaluator, broken, ladder)
    assert not measurement.ok and per_level == {}
    assert evaluator.asked == [(good.key, 8), (good.key, 32), (poor.key, 8), (broken.key, 8)]


def test_without_a_ladder_a_candidate_is_scored_once_at_the_runs_samples():
    candidate = Candidate.from_params({"timesteps.steps": 4})
    evaluator = ScriptedEvaluator({(candidate.key, None): {"fid": 10.0, "latency_ms": 5.0}})
    measurement, per_level = evaluate_with_fidelity(evaluator, candidate, None)
    assert measurement.ok and per_level == {} and evaluator.asked == [(candidate.key, None)]


# ---------------------------------------------------------------- the baselines of every bundled space

SOLVER_OF = {
    "ddim": ("ddim", 1),
    "flow_euler": ("flow_euler", 1),
    "dpmsolver++2m": ("dpmsolver++", 2),
    "unipc": ("unipc", 2),
}
# flow-matching spaces start from Euler, what their pipelines run; DDPM-family spaces from DDIM
FIRST_OF = {"flow_sampler": "flow_euler", "flow_cached": "flow_euler"}
BASELINES_OF = {"timesteps": ["dpmsolver++2m"]}  # the timesteps space fixes DPM-Solver++ 2M; others have all three


@pytest.mark.parametrize("capabilities", [set(), {"guidance"}], ids=["unguided", "guided"])
@pytest.mark.parametrize("name", bundled_spaces())
def test_standard_configurations_are_valid_unchanged_model_baselines_of_each_space(name, capabilities):
    space = load_space(name).for_target(capabilities, num_train_timesteps=100)
    family = "flow" if name in FIRST_OF else "ddpm"
    configurations = standard_configurations(space, [3, 6], family=family)
    if "solver" not in space.techniques:  # deployment settings alone: the model's default call, once
        assert [tag for tag, _ in configurations] == ["default-call"]
        plan = Candidate.from_params(space.complete(configurations[0][1])).plan(space.techniques)
        assert all(
            {key: getattr(config, key) for key in tech.unchanged_params} == as_loaded(tech, space)
            for tech, config in plan
        )
        return
    solvers = [FIRST_OF.get(name, "ddim"), "dpmsolver++2m", "unipc"]
    expected = [f"{label}-{steps}" for steps in (3, 6) for label in BASELINES_OF.get(name, solvers)]
    assert [tag for tag, _ in configurations] == expected
    for tag, searched in configurations:
        label, steps = tag.rsplit("-", 1)
        plan = Candidate.from_params(space.complete(searched)).plan(space.techniques)
        configs = {technique.name: config for technique, config in plan}
        assert (configs["timesteps"].steps, configs["timesteps"].family) == (int(steps), "uniform_trailing")
        assert (configs["solver"].name, configs["solver"].order, configs["solver"].guidance) == (*SOLVER_OF[label], 1.0)
        for technique, config in plan:
            unchanged = {key: getattr(config, key) for key in technique.unchanged_params}
            assert unchanged == as_loaded(technique, space), f"{tag} changes the model through {technique.name}"


def as_loaded(technique, space) -> dict:
    """The technique's settings that leave a float32 model as loaded, as a baseline of ``space`` names them: its
    unchanged values, with the loaded model's own where the space searches a setting whose unchanged value it
    cannot take (the runtime precision: float32, not None)."""
    loaded = technique.loaded_params(None) if technique.loaded_params is not None else {}
    searched = {key: value for key, value in loaded.items() if f"{technique.name}.{key}" in space.names}
    return {**technique.unchanged_params, **searched}


# ---------------------------------------------------------------- hypervolume and the front


def _trials(objectives: dict[str, list[float]]) -> pd.DataFrame:
    """Three feasible points, one infeasible point that would dominate them all, and one failed trial."""
    return pd.DataFrame(
        {
            "trial": [0, 1, 2, 3, 4],
            "state": ["COMPLETE", "COMPLETE", "COMPLETE", "COMPLETE", "FAIL"],
            "feasible": [True, True, True, False, True],
            **objectives,
        }
    )


FID = [1.0, 3.0, 2.0, 0.0, math.nan]
LATENCY = [3.0, 1.0, 2.0, 0.0, math.nan]
# Scaled to [0, 1] over the feasible points: (0, 1), (1, 0), (0.5, 0.5), reference point (1.1, 1.1).
HYPERVOLUMES = [0.11, 0.21, 0.46, 0.46, 0.46]


def test_hypervolume_after_each_trial_counts_only_feasible_complete_points():
    trials = _trials({"fid": FID, "latency_ms": LATENCY})
    assert hypervolume_history(trials, ["fid", "latency_ms"]) == pytest.approx(HYPERVOLUMES)
    assert front_numbers(trials, ["fid", "latency_ms"]) == [0, 1, 2]


def test_hypervolume_negates_maximised_objectives():
    trials = _trials({"fid": FID, "psnr_vs_ode": [-value for value in LATENCY]})
    assert hypervolume_history(trials, ["fid", "psnr_vs_ode"]) == pytest.approx(HYPERVOLUMES)


def test_hypervolume_is_zero_until_a_feasible_trial_completes():
    trials = _trials({"fid": FID, "latency_ms": LATENCY}).assign(feasible=False)
    assert hypervolume_history(trials, ["fid", "latency_ms"]) == [0.0] * 5
    assert hypervolume_history(pd.DataFrame(), ["fid", "latency_ms"]) == []


# ---------------------------------------------------------------- constraints in the ledger

LEDGER_OBJECTIVES = ["fid", "latency_ms"]


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", "units", ["minimize", "minimize"])


def _record(ledger: Ledger, steps: int, metrics: dict[str, float] | None, **options: Any):
    trial = ledger.study.ask()
    candidate = Candidate.from_params({"timesteps.steps": steps})
    if metrics is None:
        measurement = Measurement(FAILED, failure="out of memory")
    else:
        measurement = Measurement(COMPLETE, {"nfe": float(steps), **metrics})
    return ledger.record(trial, candidate, measurement, LEDGER_OBJECTIVES, options.pop("limits", []), **options)


def test_limits_are_stored_as_constraints_for_optimizers(ledger):
    limits = resolve_limits({"max_latency_ms": 40.0}, None)
    frozen = _record(ledger, 4, {"fid": 10.0, "latency_ms": 50.0, "quality_samples": 32.0}, limits=limits)
    assert frozen.constraints == {"max_latency_ms": pytest.approx(10.0)}


def test_feasibility_follows_the_limits_given_now_not_the_stored_ones(ledger):
    stored = resolve_limits({"max_latency_ms": 40.0}, None)
    _record(ledger, 4, {"fid": 10.0, "latency_ms": 50.0, "quality_samples": 32.0}, limits=stored)
    _record(ledger, 6, {"fid": 8.0, "latency_ms": 70.0, "quality_samples": 32.0}, limits=stored)
    assert ledger.trials_frame()["feasible"].tolist() == [True, True]
    assert ledger.trials_frame(resolve_limits({"max_latency_ms": 60.0}, None))["feasible"].tolist() == [True, False]
    assert ledger.trials_frame(resolve_limits({"max_latency_ms": 30.0}, None))["feasible"].tolist() == [False, False]
    assert front_numbers(ledger.trials_frame(resolve_limits({"max_latency_ms": 60.0}, None)), LEDGER_OBJECTIVES) == [0]
    assert front_numbers(ledger.trials_frame(), LEDGER_OBJECTIVES) == [0, 1]


def test_a_trial_stopped_below_the_top_fidelity_is_never_feasible(ledger):
    low = {"fid": 5.0, "fid_std": 1.0, "latency_ms": 10.0, "quality_samples": 8.0}
    stopped = _record(ledger, 4, low, per_level={8: low}, top_level=32)
    assert stopped.constraints == {"fidelity": pytest.approx(24.0)}
    full = {"fid": 9.0, "latency_ms": 20.0, "quality_samples": 32.0}
    _record(ledger, 6, full, per_level={8: {**full, "quality_samples": 8.0}, 32: full}, top_level=32)
    for limits in ([], resolve_limits({"max_latency_ms": 1000.0}, None)):
        frame = ledger.trials_frame(limits)
        assert frame["feasible"].tolist() == [False, True]
        assert front_numbers(frame, LEDGER_OBJECTIVES) == [1]  # the stopped trial would dominate: it is no plan
    assert ledger.trials_frame()["fid@8"].tolist() == [5.0, 9.0]


def test_a_failed_trial_keeps_its_reason_and_never_reaches_the_front(ledger):
    _record(ledger, 4, None)
    frame = ledger.trials_frame()
    assert frame["state"].tolist() == ["FAIL"] and frame["failure"].tolist() == ["out of memory"]
    assert front_numbers(frame, LEDGER_OBJECTIVES) == []


# ---------------------------------------------------------------- a report from the ledger alone


@pytest.mark.slow
@pytest.mark.integration
def test_report_command_rebuilds_the_report_from_the_ledger_alone(fast_overrides):
    from autoaccel.cli.main import main
    from autoaccel.plan.recipe import load_recipe

    report_dir = Path(next(option.split("=", 1)[1] for option in fast_overrides if option.startswith("report.dir=")))
    run_dir = report_dir / "ledger-only"
    overrides = [*fast_overrides, "study_name=ledger-only", "report.build=false", "budget.trials=3"]
    assert main(["search", *overrides]) == 0
    assert (run_dir / "ledger.db").exists() and not (run_dir / "index.html").exists()

    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "index.html").exists()
    assert len(pd.read_csv(run_dir / "trials.csv")) == 3
    front = pd.read_csv(run_dir / "pareto.csv")
    recipes = sorted((run_dir / "recipes").glob("trial-*.yaml"))
    assert len(front) >= 1 and len(recipes) == len(front)
    assert sorted(front["recipe"]) == [str(path.relative_to(run_dir)) for path in recipes]
    for path in recipes:  # budget.warm_start_steps=[4]: the front is made of 4-step standard configurations
        recipe = load_recipe(path)
        assert recipe["techniques"]["timesteps"]["config"]["steps"] == len(recipe["derived"]["timesteps"]) == 4
