"""DDPM-family arithmetic shared by the distillation methods: grids, parameterizations and the DDIM step.

Everything is in the model's own discrete time (``alphas_cumprod`` of its saved scheduler); ``-1`` stands for the
clean end of the trajectory (alpha 1, sigma 0), so a step "to -1" is the last step of a sampler.
"""

from __future__ import annotations

import torch

from autoaccel.errors import TechniqueError

CLEAN = -1  # the timestep index of the clean end: alpha 1, sigma 0
STUDENT_TARGETS = ("v", "x")  # what a student's output means: epsilon is unstable at few steps
SCHEDULER_PREDICTION = {"v": "v_prediction", "x": "sample", "epsilon": "epsilon"}


def alphas_cumprod(target) -> torch.Tensor:
    """The target's ``alphas_cumprod`` (float64), from its own saved scheduler config."""
    from diffusers import DDPMScheduler

    if not target.schedule.distillable:
        raise TechniqueError(
            f"distillation runs on DDPM-family models (epsilon or v prediction); {target.name} is a flow-matching model"
        )
    scheduler = DDPMScheduler.from_config(target.scheduler_config)
    return scheduler.alphas_cumprod.to(torch.float64)


def alpha_sigma(abar: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) at integer ``timestep`` (per row, shaped to broadcast over images); -1 is the clean end."""
    index = timestep.long().clamp_min(0)
    a = abar.to(timestep.device)[index]
    a = torch.where(timestep.long() < 0, torch.ones_like(a), a)
    return a.sqrt().float().view(-1, 1, 1, 1), (1 - a).sqrt().float().view(-1, 1, 1, 1)


def trailing_grid(steps: int, train_steps: int) -> list[int]:
    """``steps`` timesteps from the top, evenly spaced and ending one interval above the clean end (diffusers'
    ``trailing`` spacing): the grid of ``2 * steps`` contains this one, which progressive distillation needs."""
    return [round(train_steps * index / steps) - 1 for index in range(steps, 0, -1)]


def prediction_to_x0(output: torch.Tensor, sample: torch.Tensor, alpha, sigma, prediction: str) -> torch.Tensor:
    """The clean image implied by a model output under ``prediction`` (a scheduler's ``prediction_type``)."""
    if prediction == "epsilon":
        return (sample - sigma * output) / alpha
    if prediction == "v_prediction":
        return alpha * sample - sigma * output
    if prediction == "sample":
        return output
    raise TechniqueError(f"prediction_type {prediction!r} is not supported; valid: epsilon, v_prediction, sample")


def ddim_step(sample: torch.Tensor, x0: torch.Tensor, alpha, sigma, alpha_next, sigma_next) -> torch.Tensor:
    """The deterministic DDIM update from (alpha, sigma) to (alpha_next, sigma_next) given the clean estimate."""
    epsilon = (sample - alpha * x0) / sigma
    return alpha_next * x0 + sigma_next * epsilon


def x0_reaching(sample, reached, alpha, sigma, alpha_next, sigma_next) -> torch.Tensor:
    """The clean estimate whose single DDIM step from ``sample`` lands on ``reached`` (progressive distillation's
    target: one student step doing the work of two teacher steps)."""
    ratio = sigma_next / sigma
    return (reached - ratio * sample) / (alpha_next - ratio * alpha)
