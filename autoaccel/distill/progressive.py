"""Progressive distillation (Salimans & Ho, 2022): each round halves the step count, a student step learning to
land where two steps of its teacher land (DDIM, deterministic).

The first round's teacher is the target's model at its default guidance; its students run unguided (guidance is
trained in). A student predicts ``v`` or ``x`` (epsilon is unstable at few steps); the loss on its clean estimate
is weighted by ``max(SNR, 1)`` ("truncated SNR") or not at all (``x``). Every round's student is kept by its
schedule prefix (``autoaccel.distill.students``): a 4-step student continues from the 8-step one of the same
settings instead of training the rounds again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from autoaccel.distill.adapters import checkpointed, trainable, training_precision
from autoaccel.distill.data import Teacher, clean_samples
from autoaccel.distill.diffusion import (
    CLEAN,
    SCHEDULER_PREDICTION,
    alpha_sigma,
    ddim_step,
    prediction_to_x0,
    trailing_grid,
    x0_reaching,
)
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
    share_of,
    student_copy,
)
from autoaccel.targets.denoisers import predict
from autoaccel.util.training import clipped_step, ema_update

WEIGHTINGS = ("snr_trunc", "x")


@dataclass(frozen=True)
class ProgressiveSettings:
    start_steps: int
    student_target: str = "v"
    weighting: str = "snr_trunc"


def progressive_student(
    target,
    steps: int,
    settings: ProgressiveSettings,
    train: TrainSettings,
    log: Callable[[str], None] | None = None,
    share: float = 1.0,
) -> tuple[torch.nn.Module, float]:
    """The ``steps``-step student and the minutes all its rounds took, training each round not yet kept.
    ``share``: of the last round's iterations (a lower fidelity); the rounds before it train in full."""
    if steps >= settings.start_steps:
        raise ValueError(f"steps={steps} must be below start_steps={settings.start_steps}")
    key = ("progressive", target.content_hash, settings, train)
    teacher_steps = steps * 2
    minutes = 0.0
    if teacher_steps == settings.start_steps:
        teacher = Teacher.of_target(target)
    else:
        previous, minutes = progressive_student(target, teacher_steps, settings, train, log)
        teacher = Teacher(target, previous, SCHEDULER_PREDICTION[settings.student_target], 1.0)
    last_round = replace(train, iterations=share_of(train.iterations, share))

    def train_round() -> Continued:
        return _train_round(target, teacher, steps, settings, last_round, log)

    student, round_minutes = kept_student((*key, steps, last_round.iterations), train_round)
    return student, minutes + round_minutes


def _train_round(target, teacher: Teacher, steps: int, settings, train: TrainSettings, log) -> Continued:
    entered = time.perf_counter()
    clean, labels = clean_samples(target, train.data_samples, train.seed)
    device = target.denoiser.device
    clean = clean.to(device).float()
    generator = torch.Generator().manual_seed(train.seed * 1_000 + steps)
    torch.manual_seed(train.seed * 1_000 + steps)
    grid = trailing_grid(2 * steps, target.num_train_timesteps) + [CLEAN]
    starts = torch.tensor(grid[0:-1:2], device=device)
    middles = torch.tensor(grid[1:-1:2], device=device)
    ends = torch.tensor(grid[2::2], device=device)
    student = student_copy(teacher.denoiser, train.adapter)
    kept = frozen_copy(student) if train.ema > 0 else None
    optimizer = torch.optim.Adam(trainable(student), lr=train.learning_rate)
    prediction = SCHEDULER_PREDICTION[settings.student_target]
    parts = {"student": checkpointed(student), "optimizer": optimizer}
    parts.update({"ema": checkpointed(kept)} if kept is not None else {})
    run = ("progressive", target.content_hash, settings, run_settings(train), steps)
    first, earlier = resume(run, train.iterations, parts, generator)
    clock = Clock(
        train.max_minutes,
        f"progressive distillation to {steps} steps",
        already=earlier,
        total=train.iterations,
        started=entered,
    )
    for iteration in range(first, train.iterations):
        pause_training(run, iteration, clock, parts, generator)
        rows = draw(generator, len(clean), train.batch_size)
        pick = torch.randint(0, steps, (train.batch_size,), generator=generator).to(device)
        start, middle, end = starts[pick], middles[pick], ends[pick]
        noise = torch.randn(clean[rows].shape, generator=generator).to(device)
        batch_labels = None if labels is None else labels[rows]
        alpha, sigma = alpha_sigma(teacher.abar, start)
        alpha_mid, sigma_mid = alpha_sigma(teacher.abar, middle)
        alpha_end, sigma_end = alpha_sigma(teacher.abar, end)
        sample = alpha * clean[rows] + sigma * noise
        with training_precision(student):  # autocast where a LoRA student's base is bfloat16/float16
            halfway = ddim_step(sample, teacher.x0(sample, start, batch_labels), alpha, sigma, alpha_mid, sigma_mid)
            landed = ddim_step(
                halfway, teacher.x0(halfway, middle, batch_labels), alpha_mid, sigma_mid, alpha_end, sigma_end
            )
            wanted = x0_reaching(sample, landed, alpha, sigma, alpha_end, sigma_end)
            keywords = target.conditions.keywords(batch_labels, False, device)
            output = predict(student, sample, start, keywords).float()
        estimate = prediction_to_x0(output, sample, alpha, sigma, prediction)
        weight = (alpha**2 / sigma**2).clamp_min(1.0) if settings.weighting == "snr_trunc" else torch.ones_like(alpha)
        loss = (weight * (estimate - wanted) ** 2).mean()
        clipped_step(optimizer, loss, student)
        if kept is not None:
            ema_update(kept, student, train.ema)
        clock.check(iteration + 1)
    keep_checkpoint(run, train.iterations, clock.minutes, parts, generator)
    finished_run(run, train.iterations)
    if log is not None:
        log(f"progressive: {2 * steps} -> {steps} steps, {train.iterations} iterations, {clock.minutes:.1f} min")
    return Continued(finished(kept if kept is not None else student), earlier)
