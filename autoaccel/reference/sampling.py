"""The reference sampling that scoring, calibration and recovery start from: the model's default call (or the
reference a user names), and a deterministic many-step ODE solution from the same noise. Neither measures
anything nor compresses anything, so both ``measure/`` and ``techniques/`` use them without depending on each other.

A reference is ``default`` (the pipeline's own scheduler at the step count and guidance its ``__call__`` uses by
default: what users run) or ``<solver>-<steps>`` (a solver of ``autoaccel.techniques.solver`` on evenly spaced
steps, e.g. ``ddpm-1000`` or ``dpmsolver++-100``), always at the default call's guidance scale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from autoaccel.errors import ConfigError
from autoaccel.pipeline.sampling import sampler_pipeline
from autoaccel.schedules.solvers import all_solver_names
from autoaccel.targets.base import Target
from autoaccel.techniques.solver import SOLVER, SolverConfig
from autoaccel.techniques.timesteps import TIMESTEPS, TimestepsConfig

ODE_REFERENCE_STEPS = 200
DEFAULT_REFERENCE = "default"
MAX_REFERENCE_STEPS = 1000


@dataclass(frozen=True)
class ReferenceSpec:
    """A parsed ``target.reference``: ``solver`` None means the pipeline's own scheduler."""

    solver: str | None
    steps: int | None

    @property
    def name(self) -> str:
        return DEFAULT_REFERENCE if self.solver is None else f"{self.solver}-{self.steps}"


def parse_reference(text: str | None) -> ReferenceSpec:
    """``default`` or ``<solver>-<steps>``; a one-line error naming what is valid otherwise."""
    if text in (None, "", DEFAULT_REFERENCE):
        return ReferenceSpec(None, None)
    matched = re.fullmatch(r"(.+)-(\d+)", str(text))
    valid = (
        f"valid: default (the pipeline's own call), or SOLVER-STEPS with SOLVER one of {', '.join(all_solver_names())} "
        f"and STEPS in [1, {MAX_REFERENCE_STEPS}], e.g. ddpm-1000 or dpmsolver++-100"
    )
    if not matched or matched.group(1) not in all_solver_names():
        raise ConfigError(f"target.reference={text!r} is not valid; {valid}")
    steps = int(matched.group(2))
    if not 1 <= steps <= MAX_REFERENCE_STEPS:
        raise ConfigError(f"target.reference={text!r} is not valid; {valid}")
    return ReferenceSpec(matched.group(1), steps)


def reference_steps(target: Target, spec: ReferenceSpec | None = None) -> int:
    """Denoising steps of the reference call."""
    spec = spec or parse_reference(target.reference)
    return spec.steps if spec.solver is not None else target.reference_call.steps


def describe_reference(target: Target) -> str:
    """What the reference call runs, in words: ``default call: PNDMScheduler, 50 steps, guidance 7.5``."""
    spec = parse_reference(target.reference)
    guidance = target.reference_guidance
    shown = f", guidance {guidance:g}" if guidance != 1.0 else ""
    if spec.solver is None:
        return f"default call: {target.scheduler_class}, {target.reference_call.steps} steps{shown}"
    return f"{spec.name}: {spec.solver} on {spec.steps} evenly spaced steps{shown}"


def reference_pipeline(target: Target):
    """The run's reference: the pipeline's default call unless ``target.reference`` names another."""
    spec = parse_reference(target.reference)
    guidance = target.reference_guidance
    if spec.solver is None:
        pipeline = sampler_pipeline(target)
        pipeline.plan.native_steps = target.reference_call.steps
        pipeline.plan.guidance_scale = guidance
        return pipeline
    return _solver_pipeline(target, SolverConfig(name=spec.solver, guidance=guidance), spec.steps)


def ode_reference_pipeline(target: Target):
    """A deterministic second-order solution over many steps at the reference's guidance: what a plan's images
    are compared with pair by pair (a stochastic default call cannot be matched image by image)."""
    guidance = target.reference_guidance
    steps = min(target.ode_steps, target.num_train_timesteps)
    return _solver_pipeline(target, SolverConfig(name="dpmsolver++", order=2, guidance=guidance), steps)


def _solver_pipeline(target: Target, solver: SolverConfig, steps: int):
    """The target's own model on ``solver`` over ``steps`` evenly spaced steps: the sampler techniques applied in
    their declared order and recorded, as a plan of those two steps is (the reference is a sampler setting, so it
    needs nothing of the plan builder, which sits above the techniques that calibrate on it)."""
    pipeline = sampler_pipeline(target)
    steps_config = TimestepsConfig(steps=steps)
    for technique, config in sorted(((SOLVER, solver), (TIMESTEPS, steps_config)), key=lambda step: step[0].order):
        technique.apply(pipeline, config, target)
        pipeline.plan.techniques.append((technique, config))
    return pipeline
