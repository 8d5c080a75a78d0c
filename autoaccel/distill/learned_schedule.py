"""A learned schedule (LD3-style, Tong et al., 2024): the solver is distilled instead of the weights. The ``steps``
timesteps of a DDIM sampler are trained so that, from the same noise, it lands where the teacher's many-step ODE
solution lands; the model is untouched and the result is ``steps`` integers.

The first timestep stays at the top of the schedule (the sampler starts from pure noise, as the ODE solution
does); the gaps below it are a softmax, so the timesteps stay ordered and inside the schedule. Timesteps are
rounded in the forward pass with a straight-through gradient: training runs exactly the integers deployment runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from autoaccel.distill.data import Teacher, ode_endpoints
from autoaccel.distill.diffusion import CLEAN, alpha_sigma, ddim_step, trailing_grid
from autoaccel.distill.training import Clock, TrainSettings, draw
from autoaccel.util.interrupts import pause_point

CHECK_EVERY = 5  # iterations between evaluations of the schedule on all the data


def learned_timesteps(
    target, steps: int, train: TrainSettings, log: Callable[[str], None] | None = None
) -> tuple[list[int], float]:
    """The learned ``steps`` integer timesteps (descending) and the minutes it took."""
    device = target.denoiser.device
    teacher = Teacher.of_target(target)
    noise, labels, endpoints = ode_endpoints(target, train.data_samples, train.seed)
    noise, endpoints = noise.to(device), endpoints.to(device).float()
    top = target.num_train_timesteps - 1
    generator = torch.Generator().manual_seed(train.seed * 1_000 + 11)
    logits = torch.zeros(steps, device=device, requires_grad=True)  # equal gaps: DDIM's trailing grid
    optimizer = torch.optim.Adam([logits], lr=train.learning_rate)
    parameters = list(target.denoiser.parameters())
    wanted_grad = [parameter.requires_grad for parameter in parameters]
    for parameter in parameters:
        parameter.requires_grad_(False)
    clock = Clock(train.max_minutes, "learned schedule", total=train.iterations)
    best, best_loss = _timesteps(logits, top), _rollout_loss(teacher, logits, top, noise, labels, endpoints, None)
    try:
        for iteration in range(train.iterations):
            pause_point()  # a few timesteps: an interrupted run starts again, it keeps no checkpoint
            rows = draw(generator, len(noise), train.batch_size)
            loss = _rollout_loss(teacher, logits, top, noise, labels, endpoints, rows)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clock.check(iteration + 1)
            if (iteration + 1) % CHECK_EVERY == 0 or iteration + 1 == train.iterations:
                # straight-through gradients are noisy: the schedule kept is the best seen on all the data,
                # never worse than the trailing grid it started from
                full = _rollout_loss(teacher, logits, top, noise, labels, endpoints, None)
                if full < best_loss:
                    best, best_loss = _timesteps(logits, top), full
    finally:
        for parameter, wanted in zip(parameters, wanted_grad):
            parameter.requires_grad_(wanted)
    if log is not None:
        log(f"learned schedule: {best} ({trailing_grid(steps, top + 1)} untrained), {clock.minutes:.1f} min")
    return best, clock.minutes


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
