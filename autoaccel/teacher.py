"""The teacher's own sampling, which scoring, calibration and recovery all start from: the model's full-step
sampler, and a deterministic many-step ODE solution from the same noise. Neither measures anything nor
compresses anything, so both ``measure/`` and ``techniques/`` use them without depending on each other.
"""

from __future__ import annotations

from autoaccel.targets.base import Target

ODE_REFERENCE_STEPS = 200


def teacher_pipeline(target: Target):
    """The model's own scheduler run over every trained timestep."""
    pipeline = target.make_pipeline()
    pipeline.plan.timesteps = list(range(target.num_train_timesteps - 1, -1, -1))
    return pipeline


def ode_reference_pipeline(target: Target):
    from autoaccel.techniques.solver import SolverConfig, build_scheduler
    from autoaccel.techniques.timesteps import TimestepsConfig, build_timesteps

    pipeline = target.make_pipeline()
    pipeline.scheduler = build_scheduler(SolverConfig(name="dpmsolver++", order=2), target.scheduler_config)
    steps = min(ODE_REFERENCE_STEPS, target.num_train_timesteps)
    pipeline.plan.timesteps = build_timesteps(TimestepsConfig(steps=steps), pipeline.scheduler.alphas_cumprod)
    return pipeline
