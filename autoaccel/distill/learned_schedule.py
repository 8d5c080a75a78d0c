"""A learned schedule (LD3-style, Tong et al., 2024): the solver is distilled instead of the weights. The ``steps``
timesteps of a DDIM sampler are trained so that, from the same noise, it lands where the teacher's many-step ODE
solution lands; the model is untouched and the result is ``steps`` integers.

The first timestep stays at the top of the schedule (the sampler starts from pure noise, as the ODE solution
does); the gaps below it are a softmax, so the timesteps stay ordered and inside the schedule. Timesteps are
rounded in the forward pass with a straight-through gradient: training runs exactly the integers deployment runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from autoaccel.distill.data import Teacher, ode_endpoints
from autoaccel.distill.diffusion import CLEAN, alpha_sigma, ddim_step, trailing_grid
from autoaccel.distill.students import Continued
from autoaccel.distill.training import (
    Clock,
    TrainSettings,
    draw,
    finished_run,
    keep_checkpoint,
    pause_training,
    resume,
    run_settings,
)

CHECK_EVERY = 5  # iterations between evaluations of the schedule on all the data


class _Schedule(torch.nn.Module):
    """The gap logits being trained and the best schedule seen so far: what a checkpoint keeps."""

    def __init__(self, steps: int, device) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(steps, device=device))  # equal gaps: DDIM's trailing grid
        self.register_buffer("best", torch.zeros(steps, dtype=torch.long))
        self.register_buffer("best_loss", torch.tensor(math.inf))


def _keep_if_better(schedule: _Schedule, teacher, top: int, noise, labels, endpoints) -> None:
    """Straight-through gradients are noisy: the schedule kept is the best seen on all the data."""
    with torch.no_grad():
        loss = _rollout_loss(teacher, schedule.logits, top, noise, labels, endpoints, None)
        if loss < schedule.best_loss:
            schedule.best.copy_(torch.tensor(_timesteps(schedule.logits, top)))
            schedule.best_loss.copy_(loss)


def learned_timesteps(target, steps: int, train: TrainSettings, log: Callable[[str], None] | None = None) -> Continued:
    """The learned ``steps`` integer timesteps (descending) and the minutes they took, as a run that may have
    continued from the checkpoint of an interrupted or shorter one."""
    entered = time.perf_counter()
    device = target.denoiser.device
    teacher = Teacher.of_target(target)
    noise, labels, endpoints = ode_endpoints(target, train.data_samples, train.seed)
    noise, endpoints = noise.to(device), endpoints.to(device).float()
    top = target.num_train_timesteps - 1
    generator = torch.Generator().manual_seed(train.seed * 1_000 + 11)
    schedule = _Schedule(steps, device)
    optimizer = torch.optim.Adam([schedule.logits], lr=train.learning_rate)
    parts = {"schedule": schedule, "optimizer": optimizer}
    run = ("learned_schedule", target.content_hash, steps, run_settings(train))
    first, earlier = resume(run, train.iterations, parts, generator)
    parameters = list(target.denoiser.parameters())
    wanted_grad = [parameter.requires_grad for parameter in parameters]
    for parameter in parameters:
        parameter.requires_grad_(False)
    clock = Clock(train.max_minutes, "learned schedule", earlier, train.iterations, entered)
    try:
        if first == 0:  # the schedule kept is never worse than the trailing grid it starts from
            _keep_if_better(schedule, teacher, top, noise, labels, endpoints)
        for iteration in range(first, train.iterations):
            pause_training(run, iteration, clock, parts, generator)
            rows = draw(generator, len(noise), train.batch_size)
            loss = _rollout_loss(teacher, schedule.logits, top, noise, labels, endpoints, rows)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clock.check(iteration + 1)
            if (iteration + 1) % CHECK_EVERY == 0:
                _keep_if_better(schedule, teacher, top, noise, labels, endpoints)
        # kept before the run's own last check, so a longer run continuing from it checks where an uninterrupted
        # one does
        keep_checkpoint(run, train.iterations, clock.minutes, parts, generator)
        if train.iterations % CHECK_EVERY:
            _keep_if_better(schedule, teacher, top, noise, labels, endpoints)
    finally:
        for parameter, wanted in zip(parameters, wanted_grad):
            parameter.requires_grad_(wanted)
    finished_run(run, train.iterations)
    best = [int(step) for step in schedule.best]
    if log is not None:
        log(f"learned schedule: {best} ({trailing_grid(steps, top + 1)} untrained), {clock.minutes:.1f} min")
    return Continued((best, clock.minutes), earlier)


def _continuous(logits: torch.Tensor, top: int) -> torch.Tensor:
    """Descending timesteps: the top, then the top less the cumulative softmax gaps (the last gap reaches 0)."""
    gaps = torch.softmax(logits, dim=0)
    below = top * (1 - torch.cumsum(gaps, dim=0)[:-1])
    return torch.cat([torch.full((1,), float(top), device=logits.device), below])


def _timesteps(logits: torch.Tensor, top: int) -> list[int]:
    values = [int(round(value)) for value in _continuous(logits.detach(), top).tolist()]
    for index in range(1, len(values)):  # strictly decreasing integers, at least 0
        values[index] = max(0, min(values[index], values[index - 1] - 1))
    return values


def _rollout_loss(teacher, logits, top, noise, labels, endpoints, rows) -> torch.Tensor:
    """Mean squared distance between the DDIM sampler on these timesteps and the ODE end points, same noise."""
    if rows is not None:
        noise, endpoints = noise[rows], endpoints[rows]
        labels = None if labels is None else labels[rows]
    continuous = _continuous(logits, top)
    timesteps = continuous + (continuous.round() - continuous).detach()  # integers forward, gradient through
    sample = noise.float()
    grad = torch.is_grad_enabled() and rows is not None
    for index in range(len(timesteps)):
        t = timesteps[index].expand(len(sample))
        x0 = teacher.x0(sample, t, labels, grad=grad)
        alpha, sigma = _alpha_sigma_continuous(teacher.abar, t)
        if index + 1 < len(timesteps):
            alpha_next, sigma_next = _alpha_sigma_continuous(teacher.abar, timesteps[index + 1].expand(len(sample)))
        else:
            alpha_next, sigma_next = alpha_sigma(teacher.abar, torch.full((len(sample),), CLEAN, device=sample.device))
        sample = ddim_step(sample, x0, alpha, sigma, alpha_next, sigma_next)
    return ((sample - endpoints) ** 2).mean() if grad else ((sample - endpoints) ** 2).mean().detach()


def _alpha_sigma_continuous(abar: torch.Tensor, timestep: torch.Tensor):
    """alpha and sigma at real-valued timesteps: log alphas_cumprod interpolated linearly (exact at integers)."""
    log_abar = abar.to(timestep.device).log()
    low = timestep.detach().floor().long().clamp(0, len(abar) - 1)
    high = (low + 1).clamp_max(len(abar) - 1)
    fraction = (timestep - low.to(timestep.dtype)).to(torch.float64)
    value = (log_abar[low] + fraction * (log_abar[high] - log_abar[low])).exp()
    return value.sqrt().float().view(-1, 1, 1, 1), (1 - value).sqrt().float().view(-1, 1, 1, 1)
