"""Recovery distillation: a compressed denoiser (a pruned one) pulled back towards the model it was cut from.

Built from the distillation machinery, on the teacher's own data only:

- half the batches are the teacher's trajectory calls (``autoaccel.reference.calibration.trajectory_calls``):
  the inputs the sampling loop really feeds the denoiser, guided branches included where the default call guides;
- the other half are its clean ODE samples noised afresh every step at every noise level, so the rest of the time
  axis (and samplers other than the reference's) is covered too;
- the loss is on the teacher's output in the model's own parameterization: the student keeps it, so the plan's
  sampler runs the recovered model unchanged;
- Adam with its learning rate decayed to zero over the budgeted length (``steps``), the last weights kept. The
  default peak rate, 1e-3, is one that also left tiny random transformers stable; small UNets gain from more
  (the spaces search ``pruning.recovery_lr``).

The trajectory half is what matters most: without it, 40%-pruning of the embedded model recovered to FID 20 at
the same length, with it to under 10 (``reports/bench/compression.md`` has the measured rows). Deterministic for
its seed on one machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from autoaccel.distill.adapters import AdapterSettings, checkpointed, is_adapted, trainable
from autoaccel.distill.data import clean_samples
from autoaccel.distill.training import (
    Clock,
    draw,
    finished_run,
    pause_training,
    persisting,
    resume,
    weights_digest,
)
from autoaccel.reference.calibration import call_output, call_rows, join_calls, noised, to_device, trajectory_calls
from autoaccel.targets.denoisers import predict
from autoaccel.util.interrupts import pause_point
from autoaccel.util.training import clipped_step

TRAJECTORY_SAMPLES = 64  # seeds of the teacher's trajectory whose calls are half the batches
TRAJECTORY_STEPS = 20
DATA_SAMPLES = 512  # clean teacher samples noised afresh for the other half (the distillation students' own data)
RECOVERY_SEED_OFFSET = 40_000  # recovery's trajectory seeds: apart from scoring and the other calibration data


@dataclass(frozen=True)
class RecoverySettings:
    """``steps`` optimizer steps of ``batch_size`` rows at a peak ``learning_rate``; ``max_minutes`` caps the run
    (a trial that trains longer fails with the reason); ``adapter``: the LoRA adapter the student carries and
    trains (None: its whole weights train)."""

    steps: int
    learning_rate: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    max_minutes: float | None = None
    adapter: AdapterSettings | None = None


def recover(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    target,
    settings: RecoverySettings,
    log: Callable[[str], None] | None = None,
) -> float:
    """Trains ``student`` in place towards ``teacher``'s outputs (its adapter only, where it carries one:
    ``autoaccel.distill.adapters.inject``); returns the minutes it took (with those of the checkpoint an
    interrupted earlier run kept, which it continues from)."""
    device = next(student.parameters()).device
    generator = torch.Generator().manual_seed(settings.seed)
    calls = trajectory_calls(target, TRAJECTORY_SAMPLES, RECOVERY_SEED_OFFSET + settings.seed, TRAJECTORY_STEPS)
    pool = join_calls(calls)
    pool_size = len(pool[0][0])
    clean, labels = clean_samples(target, DATA_SAMPLES, settings.seed)
    clean = clean.to(device).float()
    if not is_adapted(student):
        student.requires_grad_(True)
    optimizer = torch.optim.Adam(trainable(student), lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, settings.steps))
    parts = {"student": checkpointed(student), "optimizer": optimizer, "schedule": schedule}
    # the run is its settings and the weights it starts from (a pruned copy of whichever model was pruned)
    run = ("recovery", replace(settings, max_minutes=None), weights_digest(student)) if persisting() else None
    first, earlier = resume(run, settings.steps, parts, generator) if run is not None else (0, 0.0)
    clock = Clock(
        settings.max_minutes, f"recovery distillation ({settings.steps} steps)", already=earlier, total=settings.steps
    )
    student.train()
    with torch.enable_grad():
        for step in range(first, settings.steps):
            if run is not None:
                pause_training(run, step, clock, parts, generator)
            else:
                pause_point()
            if step % 2:
                call = to_device(call_rows(pool, draw(generator, pool_size, settings.batch_size)), device)
                with torch.no_grad():
                    wanted = call_output(teacher, call).float()
                output = call_output(student, call).float()
            else:
                rows = draw(generator, len(clean), settings.batch_size)
                batch = noised(target, clean[rows], None if labels is None else labels[rows], generator)
                with torch.no_grad():
                    wanted = predict(teacher, batch.sample, batch.timestep, batch.keywords).float()
                output = predict(student, batch.sample, batch.timestep, batch.keywords).float()
            clipped_step(optimizer, F.mse_loss(output, wanted), student)
            schedule.step()
            clock.check(step + 1)
    student.eval().requires_grad_(False)
    if run is not None:
        finished_run(run, settings.steps)
    if log is not None:
        log(f"recovery: {settings.steps} steps, {clock.minutes:.1f} min")
    return clock.minutes
