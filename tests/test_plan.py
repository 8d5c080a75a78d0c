"""A plan (autoaccel/plan/steps.py) and its one builder (autoaccel.plan.apply.build_pipeline)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from autoaccel.plan.apply import build_pipeline
from autoaccel.plan.steps import Plan, Step
from autoaccel.targets.base import DefaultCall
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.techniques.distillation import DISTILLATION, DistillationConfig
from autoaccel.techniques.pruning import PRUNING, PruningConfig
from autoaccel.techniques.solver import SOLVER, SolverConfig
from autoaccel.techniques.timesteps import TIMESTEPS, TimestepsConfig

SAMPLER = [(TIMESTEPS, TimestepsConfig(steps=4)), (SOLVER, SolverConfig(name="unipc"))]


@pytest.fixture(scope="module")
def tiny_target(tiny_pipeline_dir):
    return load_pipeline_folder(tiny_pipeline_dir, device="cpu")


def test_a_plan_applies_in_declared_order_and_splits_model_from_sampler_steps():
    plan = Plan.of([*SAMPLER, (PRUNING, PruningConfig(ratio=0.5)), (DISTILLATION, DistillationConfig())])
    assert plan.names == ("distillation", "pruning", "solver", "timesteps")
    assert plan.model_steps.names == ("distillation", "pruning")
    assert plan.sampler_steps.names == ("solver", "timesteps")
    assert not plan.prescribing  # method none: the model is sampled by the plan's solver and timesteps
    assert plan.sampling_part.names == ("solver", "timesteps")
    assert plan.decides == {"scheduler", "schedule"}
    assert all(isinstance(step, Step) for step in plan) and isinstance(plan[1:], Plan)
    technique, config = plan[1]
    assert (technique, config) == (PRUNING, PruningConfig(ratio=0.5))
    assert Plan.of(plan) is plan


def test_a_distilled_model_prescribes_the_whole_sampler():
    student = (DISTILLATION, DistillationConfig(method="progressive", steps=2))
    plan = Plan.of([*SAMPLER, (PRUNING, PruningConfig(ratio=0.5)), student])
    assert plan.prescribing.names == ("distillation",)
    assert plan.sampling_part.names == ("distillation", "solver", "timesteps")  # not the pruning: no sampler there
    assert Plan.of([student]).decides == {"scheduler", "schedule"}


def test_a_plan_decides_only_what_its_sampler_techniques_declare():
    assert Plan.of([(SOLVER, SolverConfig(name="unipc"))]).decides == {"scheduler"}
    assert Plan.of([(TIMESTEPS, TimestepsConfig(steps=3))]).decides == {"schedule"}
    assert Plan.of([(PRUNING, PruningConfig(ratio=0.5))]).decides == frozenset()


def test_the_builder_records_the_whole_plan_and_lets_the_model_come_from_elsewhere(tiny_target):
    plan = Plan.of([*SAMPLER, (PRUNING, PruningConfig(ratio=0.5))])
    built = build_pipeline(tiny_target, plan)
    assert built.plan.techniques == list(plan)
    assert built.denoiser is not tiny_target.denoiser  # pruned

    handed = []

    def kept_model(pipeline, model_steps: Plan) -> dict[str, str]:  # a model kept from an earlier trial
        handed.append(model_steps)
        pipeline.denoiser = built.denoiser
        return {"pruning": "0" * 64}

    again = build_pipeline(tiny_target, plan, model_steps=kept_model)
    assert handed == [plan.model_steps]
    assert again.denoiser is built.denoiser and again.plan.artifacts == {"pruning": "0" * 64}
    assert again.plan.techniques == list(plan)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1])
    torch.testing.assert_close(again(noise, labels).images, built(noise, labels).images, atol=0, rtol=0)


def test_what_no_technique_decides_runs_the_models_default_call(tiny_target):
    """A plan deciding no schedule (only pruning) samples at the default call's steps, one deciding no scheduler
    runs the model's own at the default call's guidance; what a technique decides wins."""
    target = replace(tiny_target, default_call=DefaultCall(steps=6, guidance_scale=2.0))
    pruned = build_pipeline(target, Plan.of([(PRUNING, PruningConfig(ratio=0.3, recovery_steps=0))]))
    assert type(pruned.scheduler).__name__ == target.scheduler_class
    assert (pruned.plan.native_steps, pruned.plan.guidance_scale) == (6, 2.0)
    pruned(torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1]))
    assert pruned.model_calls == 12  # six steps, guided
    scheduled = build_pipeline(target, Plan.of([(TIMESTEPS, TimestepsConfig(steps=4))]))
    assert (len(scheduled.plan.schedule()), scheduled.plan.guidance_scale) == (4, 2.0)
    solved = build_pipeline(target, Plan.of(SAMPLER))
    assert (len(solved.plan.schedule()), solved.plan.guidance_scale) == (4, 1.0)
