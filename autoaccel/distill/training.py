"""What the three distillation loops share: seeded batches of teacher data, the optimizer, an EMA copy, and the
per-trial time cap."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from autoaccel.errors import TechniqueError


@dataclass(frozen=True)
class TrainSettings:
    """``iterations`` optimizer steps at ``learning_rate`` on batches of ``batch_size`` drawn from ``data_samples``
    teacher samples; ``ema``: the decay of the weights kept (0 keeps the last ones); ``max_minutes`` caps the
    wall-clock time of one training run (None: no cap), so a candidate cannot eat the search's budget."""

    iterations: int
    learning_rate: float
    batch_size: int = 64
    ema: float = 0.999
    seed: int = 0
    data_samples: int = 512
    max_minutes: float | None = None


def student_copy(denoiser: torch.nn.Module) -> torch.nn.Module:
    """A trainable float32 copy on the denoiser's device (the target's own module is never touched)."""
    student = copy.deepcopy(denoiser).float()
    student.train()
    return student.requires_grad_(True)


def frozen_copy(denoiser: torch.nn.Module) -> torch.nn.Module:
    """A float32 copy that only follows another's weights (an EMA, a consistency target network)."""
    return student_copy(denoiser).requires_grad_(False)


class Clock:
    """Raises TechniqueError once ``max_minutes`` have passed: the trial is recorded as failed, with the reason."""

    def __init__(self, max_minutes: float | None, what: str) -> None:
        self.started = time.perf_counter()
        self.max_minutes = max_minutes
        self.what = what

    @property
    def minutes(self) -> float:
        return (time.perf_counter() - self.started) / 60

    def check(self, iteration: int) -> None:
        if self.max_minutes is not None and self.minutes > self.max_minutes:
            raise TechniqueError(
                f"{self.what} passed budget.max_train_minutes={self.max_minutes:g} after {iteration} iterations; "
                "raise the cap or search fewer iterations"
            )


def draw(generator: torch.Generator, pool: int, batch_size: int) -> torch.Tensor:
    return torch.randint(0, pool, (batch_size,), generator=generator)


def finished(student: torch.nn.Module) -> torch.nn.Module:
    return student.eval().requires_grad_(False)
