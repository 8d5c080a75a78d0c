"""What the distillation loops share: seeded batches of teacher data, the optimizer, an EMA copy, the per-trial
time cap, and checkpoints a longer run of the same settings continues from."""

from __future__ import annotations

import copy
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, replace

import torch

from autoaccel.errors import TechniqueError
from autoaccel.progress import Progress


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
    """Raises TechniqueError once ``max_minutes`` have passed (``already``: minutes spent on the checkpoint the
    run continues from count too): the trial is recorded as failed, with the reason. With ``total`` (the run's
    iterations), a long run reports its progress (``autoaccel.progress``) at each check."""

    def __init__(self, max_minutes: float | None, what: str, already: float = 0.0, total: int | None = None) -> None:
        self.started = time.perf_counter()
        self.max_minutes = max_minutes
        self.what = what
        self.already = already
        self.progress = Progress(what, total, "iterations", announce=False) if total else None

    @property
    def minutes(self) -> float:
        """Minutes of this run and of the checkpoint it continued from."""
        return self.already + (time.perf_counter() - self.started) / 60

    def check(self, iteration: int) -> None:
        if self.progress is not None:
            self.progress(iteration)
            if iteration >= self.progress.total:
                self.progress.close()
        if self.max_minutes is not None and self.minutes > self.max_minutes:
            raise TechniqueError(
                f"{self.what} passed budget.max_train_minutes={self.max_minutes:g} after {iteration} iterations; "
                "raise the cap or search fewer iterations"
            )


def draw(generator: torch.Generator, pool: int, batch_size: int) -> torch.Tensor:
    return torch.randint(0, pool, (batch_size,), generator=generator)


def finished(student: torch.nn.Module) -> torch.nn.Module:
    return student.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------ checkpoints

KEPT_RUNS = 8  # training runs whose checkpoints are kept in memory (every checkpoint of each)
Parts = dict[str, "torch.nn.Module | torch.optim.Optimizer"]


@dataclass(frozen=True)
class Checkpoint:
    """Everything a training loop carries between iterations, copied: the modules' and the optimizer's states,
    the data generator's and torch's random states, and the minutes spent reaching it."""

    iteration: int
    minutes: float
    states: dict[str, dict]
    generator: torch.Tensor
    rng: torch.Tensor


_CHECKPOINTS: OrderedDict[Hashable, dict[int, Checkpoint]] = OrderedDict()
_CHECKPOINT_LOCK = threading.Lock()


def resume(run: Hashable, iterations: int, parts: Parts, generator: torch.Generator) -> tuple[int, float]:
    """Loads the latest checkpoint of ``run`` (a training run's settings without its length) at or below
    ``iterations`` into ``parts`` and ``generator``; returns the iteration to start from and the minutes that
    checkpoint took (0, 0.0 without one). Continuing gives the weights of an uninterrupted run, bit for bit:
    iterations as a fidelity (``fidelity.train_shares``) train a promoted candidate only for what it lacks."""
    with _CHECKPOINT_LOCK:
        kept = _CHECKPOINTS.get(run, {})
        usable = [iteration for iteration in kept if iteration <= iterations]
        if not usable:
            return 0, 0.0
        _CHECKPOINTS.move_to_end(run)
        checkpoint = kept[max(usable)]
    for name, part in parts.items():
        part.load_state_dict(copy.deepcopy(checkpoint.states[name]))
    generator.set_state(checkpoint.generator.clone())
    torch.set_rng_state(checkpoint.rng.clone())
    return checkpoint.iteration, checkpoint.minutes


def keep_checkpoint(run: Hashable, iteration: int, minutes: float, parts: Parts, generator: torch.Generator) -> None:
    """Keeps ``parts`` at ``iteration`` for a longer run of the same settings to continue from."""
    states = {name: copy.deepcopy(part.state_dict()) for name, part in parts.items()}
    checkpoint = Checkpoint(iteration, minutes, states, generator.get_state(), torch.get_rng_state())
    with _CHECKPOINT_LOCK:
        _CHECKPOINTS.setdefault(run, {})[iteration] = checkpoint
        _CHECKPOINTS.move_to_end(run)
        while len(_CHECKPOINTS) > KEPT_RUNS:
            _CHECKPOINTS.popitem(last=False)


def forget_checkpoints() -> None:
    with _CHECKPOINT_LOCK:
        _CHECKPOINTS.clear()


def run_settings(train: TrainSettings) -> TrainSettings:
    """A run's settings without its length and cap: what a longer run must share to continue from its checkpoint."""
    return replace(train, iterations=0, max_minutes=None)


def share_of(iterations: int, share: float) -> int:
    """The iterations ``share`` of a run does: at least one, all of them at share 1."""
    return iterations if share >= 1.0 else max(1, math.ceil(iterations * share))
