"""What the distillation loops share: seeded batches of teacher data, the optimizer, an EMA copy, the per-trial
time cap, and checkpoints a longer run of the same settings continues from.

An interrupted run (Ctrl-C, SIGTERM: ``autoaccel.util.interrupts``) stops at the top of its next iteration and keeps
a checkpoint there, also on disk where the search asked for it (``persisted_checkpoints``: the run folder's
``artifacts/checkpoints/``), so the trial, queued again and evaluated by the next process, continues from that
iteration to the weights an uninterrupted run gives.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from autoaccel.distill.adapters import AdapterSettings, adapted_copy, is_adapted
from autoaccel.errors import TechniqueError
from autoaccel.util.files import write_atomically
from autoaccel.util.interrupts import Cancelled, pause_point
from autoaccel.util.progress import Progress


@dataclass(frozen=True)
class TrainSettings:
    """``iterations`` optimizer steps at ``learning_rate`` on batches of ``batch_size`` drawn from ``data_samples``
    teacher samples; ``ema``: the decay of the weights kept (0 keeps the last ones); ``max_minutes`` caps the
    wall-clock time of one training run (None: no cap), so a candidate cannot eat the search's budget;
    ``adapter``: train a LoRA adapter of these settings on the frozen base (None: the whole weights)."""

    iterations: int
    learning_rate: float
    batch_size: int = 64
    ema: float = 0.999
    seed: int = 0
    data_samples: int = 512
    max_minutes: float | None = None
    adapter: AdapterSettings | None = None


def student_copy(denoiser: torch.nn.Module, adapter: AdapterSettings | None = None) -> torch.nn.Module:
    """A trainable float32 copy on the denoiser's device (the target's own module is never touched); with
    ``adapter`` (or a denoiser that is a student with one), a copy sharing its frozen base weights whose LoRA
    adapter trains (``autoaccel.distill.adapters``)."""
    if adapter is not None or is_adapted(denoiser):
        return adapted_copy(denoiser, adapter or AdapterSettings())
    student = copy.deepcopy(denoiser).float()
    student.train()
    return student.requires_grad_(True)


def frozen_copy(denoiser: torch.nn.Module) -> torch.nn.Module:
    """A copy of a student that only follows its weights (an EMA, a consistency target network): float32, or
    for an adapted student its adapter on the shared base."""
    return student_copy(denoiser).requires_grad_(False)


class Clock:
    """Raises TechniqueError once ``max_minutes`` have passed (``already``: minutes spent on the checkpoint the
    run continues from count too): the trial is recorded as failed, with the reason. With ``total`` (the run's
    iterations), a long run reports its progress (``autoaccel.util.progress``) at each check."""

    def __init__(
        self,
        max_minutes: float | None,
        what: str,
        already: float = 0.0,
        total: int | None = None,
        started: float | None = None,
    ) -> None:
        # ``started``: when the run began (``time.perf_counter()``), so its set-up (the training data, the copies)
        # counts as a checkpoint's cost as it counts for a run that is never interrupted
        self.started = time.perf_counter() if started is None else started
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


class _Persisting(threading.local):
    folder: Path | None = None


_PERSISTING = _Persisting()


@contextlib.contextmanager
def persisted_checkpoints(folder: Path | None) -> Iterator[None]:
    """Inside the block (one evaluation, in its thread), a run cancelled mid-way writes its checkpoint to
    ``folder`` and a run with no checkpoint in memory looks there: a resumed search continues training."""
    before = _PERSISTING.folder
    _PERSISTING.folder = None if folder is None else Path(folder)
    try:
        yield
    finally:
        _PERSISTING.folder = before


def persisting() -> bool:
    """Whether the current evaluation keeps the checkpoints of interrupted runs on disk."""
    return _PERSISTING.folder is not None


def weights_digest(module: torch.nn.Module) -> str:
    """sha1 of a module's parameter and buffer values and names: which weights a training run starts from."""
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _run_id(run: Hashable) -> str:
    """A file name for a training run: its settings (frozen dataclasses, the target's hash) print the same in any
    process."""
    return hashlib.sha1(repr(run).encode()).hexdigest()[:20]


def _persisted(run: Hashable) -> list[tuple[int, Path]]:
    """(iteration, file) of the checkpoints of ``run`` on disk, in the current evaluation's folder."""
    folder = _PERSISTING.folder
    if folder is None or not folder.is_dir():
        return []
    found = []
    for path in folder.glob(f"{_run_id(run)}-*.pt"):
        with contextlib.suppress(ValueError):
            found.append((int(path.stem.rsplit("-", 1)[1]), path))
    return sorted(found)


def _load_persisted(path: Path) -> Checkpoint | None:
    try:
        stored = torch.load(path, weights_only=True)
        return Checkpoint(stored["iteration"], stored["minutes"], stored["states"], stored["generator"], stored["rng"])
    except Exception:  # a damaged or foreign file: training starts from the beginning instead
        return None


def resume(run: Hashable, iterations: int, parts: Parts, generator: torch.Generator) -> tuple[int, float]:
    """Loads the latest checkpoint of ``run`` (a training run's settings without its length) at or below
    ``iterations`` into ``parts`` and ``generator``, from memory or (an interrupted earlier process) from disk;
    returns the iteration to start from and the minutes that checkpoint took (0, 0.0 without one). Continuing
    gives the weights of an uninterrupted run, bit for bit: iterations as a fidelity (``fidelity.train_shares``)
    train a promoted candidate only for what it lacks, and an interrupted trial only what it had left."""
    with _CHECKPOINT_LOCK:
        kept = _CHECKPOINTS.get(run, {})
        usable = [iteration for iteration in kept if iteration <= iterations]
        checkpoint = kept[max(usable)] if usable else None
        if checkpoint is not None:
            _CHECKPOINTS.move_to_end(run)
    on_disk = [(iteration, path) for iteration, path in _persisted(run) if iteration <= iterations]
    if on_disk and (checkpoint is None or on_disk[-1][0] > checkpoint.iteration):
        checkpoint = _load_persisted(on_disk[-1][1]) or checkpoint
    if checkpoint is None:
        return 0, 0.0
    for name, part in parts.items():
        part.load_state_dict(copy.deepcopy(checkpoint.states[name]))
    generator.set_state(checkpoint.generator.clone())
    torch.set_rng_state(checkpoint.rng.clone())
    return checkpoint.iteration, checkpoint.minutes


def keep_checkpoint(
    run: Hashable, iteration: int, minutes: float, parts: Parts, generator: torch.Generator, persist: bool = False
) -> None:
    """Keeps ``parts`` at ``iteration`` for a longer run of the same settings to continue from; with ``persist``
    (an interrupted run) also on disk, where the current evaluation keeps checkpoints."""
    states = {name: copy.deepcopy(part.state_dict()) for name, part in parts.items()}
    checkpoint = Checkpoint(iteration, minutes, states, generator.get_state(), torch.get_rng_state())
    with _CHECKPOINT_LOCK:
        _CHECKPOINTS.setdefault(run, {})[iteration] = checkpoint
        _CHECKPOINTS.move_to_end(run)
        while len(_CHECKPOINTS) > KEPT_RUNS:
            _CHECKPOINTS.popitem(last=False)
    folder = _PERSISTING.folder
    if persist and folder is not None:
        stored = {"iteration": iteration, "minutes": minutes, "states": states}
        stored.update(generator=checkpoint.generator, rng=checkpoint.rng)
        earlier = _persisted(run)
        write_atomically(folder / f"{_run_id(run)}-{iteration}.pt", lambda path: torch.save(stored, path))
        for _, path in earlier:
            if path.name != f"{_run_id(run)}-{iteration}.pt":
                path.unlink(missing_ok=True)


def finished_run(run: Hashable, iterations: int) -> None:
    """Removes the disk checkpoints a run that reached ``iterations`` has passed (its weights are an artifact
    now); one beyond it, of a longer run, is kept."""
    for iteration, path in _persisted(run):
        if iteration <= iterations:
            path.unlink(missing_ok=True)


def pause_training(run: Hashable, iteration: int, clock: Clock, parts: Parts, generator: torch.Generator) -> None:
    """Called at the top of every iteration: an interrupted run keeps a checkpoint of the ``iteration``
    iterations done and stops (``Cancelled``); a shared device lock steps aside for a waiting timer."""
    try:
        pause_point()
    except Cancelled:
        if iteration > 0:
            keep_checkpoint(run, iteration, clock.minutes, parts, generator, persist=True)
        raise


def forget_checkpoints() -> None:
    with _CHECKPOINT_LOCK:
        _CHECKPOINTS.clear()


def run_settings(train: TrainSettings) -> TrainSettings:
    """A run's settings without its length and cap: what a longer run must share to continue from its checkpoint."""
    return replace(train, iterations=0, max_minutes=None)


def share_of(iterations: int, share: float) -> int:
    """The iterations ``share`` of a run does: at least one, all of them at share 1."""
    return iterations if share >= 1.0 else max(1, math.ceil(iterations * share))
