"""Consistency distillation in the LCM style (Luo et al., 2023): a student whose one call maps any point of the
teacher's ODE trajectory to its clean end, sampled with diffusers' ``LCMScheduler`` at 1, 2, 4 ... steps.

Training pairs a noised teacher sample at ``t`` with one deterministic DDIM step of the teacher (at its default
guidance, which the student thereby learns) to ``t - k`` (``k = T / original_steps``, the skipping interval);
the student at ``t`` is pulled towards the target network (an EMA of the student, decay ``target_ema``) at
``t - k``. The boundary condition is ``LCMScheduler``'s own (``c_skip``, ``c_out`` at ``timestep_scaling``), so
the student is trained on exactly what its scheduler computes. L2 or pseudo-Huber loss with constant ``c``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from autoaccel.distill.adapters import checkpointed, trainable, training_precision
from autoaccel.distill.data import Teacher, clean_samples
from autoaccel.distill.diffusion import SCHEDULER_PREDICTION, alpha_sigma, ddim_step, prediction_to_x0
from autoaccel.distill.students import Continued, kept_student
from autoaccel.distill.training import (
    Clock,
    TrainSettings,
    draw,
    finished,
    finished_run,
    frozen_copy,
    keep_checkpoint,
    pause_training,
    resume,
    run_settings,
    student_copy,
)
from autoaccel.schedules.schedulers import scheduler_from_settings
from autoaccel.targets.denoisers import predict
from autoaccel.util.training import clipped_step, ema_update

LOSSES = ("l2", "huber")


@dataclass(frozen=True)
class ConsistencySettings:
    original_steps: int = 50
    loss: str = "huber"
    huber_c: float = 0.001
    target_ema: float = 0.95
    student_target: str = "v"


def lcm_settings(settings: ConsistencySettings) -> dict:
    """The LCMScheduler settings the student is trained for and sampled with (over the model's saved config)."""
    return {
        "prediction_type": SCHEDULER_PREDICTION[settings.student_target],
        "original_inference_steps": settings.original_steps,
        "timestep_scaling": 10.0,
        "clip_sample": False,
        "thresholding": False,
        "set_alpha_to_one": True,
        "timestep_spacing": "leading",
        "steps_offset": 0,
    }


def lcm_scheduler(target, settings: ConsistencySettings):

    base = {key: value for key, value in target.scheduler_config.items() if not key.startswith("_")}
    return scheduler_from_settings("LCMScheduler", base, lcm_settings(settings), "consistency")


def boundary_output(network, conditions, scheduler, abar, prediction: str, sample, timestep, labels) -> torch.Tensor:
    """What ``LCMScheduler`` makes of the network's output at ``timestep``: its clean estimate under the
    scheduler's boundary condition (``c_skip * sample + c_out * x0``). Students sampled with it train on this."""
    keywords = conditions.keywords(labels, False, sample.device)
    alpha, sigma = alpha_sigma(abar, timestep)
    estimate = prediction_to_x0(predict(network, sample, timestep, keywords).float(), sample, alpha, sigma, prediction)
    c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(timestep)
    return c_skip.view(-1, 1, 1, 1) * sample + c_out.view(-1, 1, 1, 1) * estimate


def consistency_student(
    target, settings: ConsistencySettings, train: TrainSettings, log: Callable[[str], None] | None = None
) -> tuple[torch.nn.Module, float]:
    """The consistency student of these settings (trained once per process) and the minutes it took now."""
    key = ("consistency", target.content_hash, settings, train)
    return kept_student(key, lambda: _train(target, settings, train, log))


def _train(target, settings: ConsistencySettings, train: TrainSettings, log) -> Continued:
    entered = time.perf_counter()
    device = target.denoiser.device
    teacher = Teacher.of_target(target)
    scheduler = lcm_scheduler(target, settings)
    clean, labels = clean_samples(target, train.data_samples, train.seed)
    clean = clean.to(device).float()
    skip = target.num_train_timesteps // settings.original_steps
    grid = torch.arange(1, settings.original_steps + 1, device=device) * skip - 1  # LCMScheduler's own grid
    generator = torch.Generator().manual_seed(train.seed * 1_000 + 7)
    torch.manual_seed(train.seed * 1_000 + 7)
    student = student_copy(target.denoiser, train.adapter)
    target_network = frozen_copy(student)
    optimizer = torch.optim.Adam(trainable(student), lr=train.learning_rate)
    kept = frozen_copy(student) if train.ema > 0 else None
    prediction = SCHEDULER_PREDICTION[settings.student_target]
    parts = {"student": checkpointed(student), "target_network": checkpointed(target_network), "optimizer": optimizer}
    parts.update({"ema": checkpointed(kept)} if kept is not None else {})
    run = ("consistency", target.content_hash, settings, run_settings(train))
    first, earlier = resume(run, train.iterations, parts, generator)
    clock = Clock(
        train.max_minutes, "consistency distillation", already=earlier, total=train.iterations, started=entered
    )

    def consistent(network, sample, timestep, batch_labels):
        return boundary_output(
            network, target.conditions, scheduler, teacher.abar, prediction, sample, timestep, batch_labels
        )

    for iteration in range(first, train.iterations):
        pause_training(run, iteration, clock, parts, generator)
        rows = draw(generator, len(clean), train.batch_size)
        start = grid[torch.randint(0, len(grid), (train.batch_size,), generator=generator).to(device)]
        end = (start - skip).clamp_min(0)
        noise = torch.randn(clean[rows].shape, generator=generator).to(device)
        batch_labels = None if labels is None else labels[rows]
        alpha, sigma = alpha_sigma(teacher.abar, start)
        alpha_end, sigma_end = alpha_sigma(teacher.abar, end)
        sample = alpha * clean[rows] + sigma * noise
        with training_precision(student):  # autocast where a LoRA student's base is bfloat16/float16
            with torch.no_grad():
                stepped = ddim_step(sample, teacher.x0(sample, start, batch_labels), alpha, sigma, alpha_end, sigma_end)
                wanted = consistent(target_network, stepped, end, batch_labels)
            difference = consistent(student, sample, start, batch_labels) - wanted
        if settings.loss == "huber":
            loss = (torch.sqrt(difference**2 + settings.huber_c**2) - settings.huber_c).mean()
        else:
            loss = (difference**2).mean()
        clipped_step(optimizer, loss, student)
        ema_update(target_network, student, settings.target_ema)
        if kept is not None:
            ema_update(kept, student, train.ema)
        clock.check(iteration + 1)
    keep_checkpoint(run, train.iterations, clock.minutes, parts, generator)
    finished_run(run, train.iterations)
    if log is not None:
        log(f"consistency: {train.iterations} iterations (from {first}), {clock.minutes:.1f} min")
    return Continued(finished(kept if kept is not None else target_network), earlier)
