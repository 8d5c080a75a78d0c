"""Shared/exclusive access to a device for every thread and every autoaccel process of this machine: many may
sample images or train at once, but a cost measurement runs alone, so no other trial's work (another thread's,
or another worker's on the same device) ever shows up in a latency, memory or energy figure.

A reader-writer lock on two lock files per device, in a folder every process of the user on this machine agrees
on: ``$AUTOACCEL_LOCK_DIR``, by default ``<temp dir>/autoaccel-<uid>/locks`` (``lock_folder``). Sharing takes the
turnstile file for a moment and then a shared ``flock`` on the lock file; timing takes the turnstile, then an
exclusive ``flock`` on the lock file, so a waiting timer stops new sharers at the turnstile and is never starved.
Long shared work (training, sampling) steps aside at every pause point (``autoaccel.util.interrupts.pause_point``)
while a timer waits, so a timer waits for one training iteration or sampling step, not for a whole training run.
The operating system drops a dead process's locks. Waiting polls (a few milliseconds apart), so that an
interrupted evaluation stops waiting at once.

Each file lock belongs to the file opened for it: two threads of one process exclude each other exactly as two
processes do. A GPU is named by its UUID, so workers that see it under different ``CUDA_VISIBLE_DEVICES``
indices share one lock. Workers on other machines time on their own devices: no lock is shared with them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from autoaccel.util.interrupts import paused_with, raise_if_cancelled

LOCK_DIR_ENV = "AUTOACCEL_LOCK_DIR"
POLL_S = 0.02  # the longest wait between two tries of a busy lock


def lock_folder() -> Path:
    """Where the device locks of this user's autoaccel processes on this machine are."""
    configured = os.environ.get(LOCK_DIR_ENV)
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"autoaccel-{os.getuid()}" / "locks"


def device_lock_name(device) -> str:
    """A name for the physical device behind ``device`` (``cpu``, ``cuda-<uuid>``), safe as a file name."""
    import torch

    device = torch.device(device)
    name = device.type
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        properties = torch.cuda.get_device_properties(index)
        name = f"cuda-{getattr(properties, 'uuid', None) or getattr(properties, 'pci_bus_id', index)}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


class MeasurementGate:
    """The reader-writer lock of one device. ``across_processes`` says whether its lock files are the ones every
    autoaccel process of this machine uses (else only this process's threads are kept apart, and the figures
    timed under it say so)."""

    def __init__(self, device: str = "cpu", folder: Path | None = None) -> None:
        name = device_lock_name(device)
        folder = lock_folder() if folder is None else Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            for suffix in ("turnstile", "lock"):
                (folder / f"{name}.{suffix}").touch()
            self.across_processes = True
        except OSError:  # an unwritable folder: a private one still keeps this process's threads apart
            folder = Path(tempfile.mkdtemp(prefix="autoaccel-locks-"))
            self.across_processes = False
        self.turnstile = folder / f"{name}.turnstile"
        self.path = folder / f"{name}.lock"

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self.turnstile.open("a") as turnstile, self.path.open("a") as lock:
            self._enter_shared(turnstile, lock)
            try:
                with paused_with(lambda: self._step_aside(turnstile, lock)):
                    yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self.turnstile.open("a") as turnstile, self.path.open("a") as lock:
            _wait(turnstile, fcntl.LOCK_EX)  # from here on, new sharers wait
            try:
                _wait(lock, fcntl.LOCK_EX)
            finally:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _enter_shared(self, turnstile: IO, lock: IO) -> None:
        _wait(turnstile, fcntl.LOCK_EX)
        try:
            _wait(lock, fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)

    def _step_aside(self, turnstile: IO, lock: IO) -> None:
        """At a pause point of shared work: if a timer waits at the turnstile, lets it time, then shares again."""
        if _try(turnstile, fcntl.LOCK_EX):
            fcntl.flock(turnstile, fcntl.LOCK_UN)  # nobody waits
            return
        fcntl.flock(lock, fcntl.LOCK_UN)
        self._enter_shared(turnstile, lock)


def _try(handle: IO, mode: int) -> bool:
    try:
        fcntl.flock(handle, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _wait(handle: IO, mode: int) -> None:
    """Takes the lock, polling; an interrupted evaluation stops waiting (``Cancelled``)."""
    delay = 0.001
    while not _try(handle, mode):
        raise_if_cancelled()
        time.sleep(delay)
        delay = min(2 * delay, POLL_S)
