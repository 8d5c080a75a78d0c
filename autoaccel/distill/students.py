"""Students kept in memory by what produced them, so candidates that share a training prefix (the 8-step round of
a progressive 4-step student) or a whole training run do not train it again within one process."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from autoaccel.distill.training import forget_checkpoints
from autoaccel.util.interrupts import pause_point

KEPT = 16
WAIT_S = 0.05  # how often a trial waiting for another's training of the same student checks for an interrupt
_STUDENTS: OrderedDict[Hashable, tuple[Any, float]] = OrderedDict()
_LOCK = threading.Lock()
_TRAINING: dict[Hashable, threading.Lock] = {}


@dataclass(frozen=True)
class Continued:
    """What a training run that continued from a checkpoint returns: the student and the minutes the checkpoint
    took, which are part of the student's cost."""

    student: Any
    earlier_minutes: float


def kept_student(key: Hashable, train: Callable[[], Any]) -> tuple[Any, float]:
    """The student under ``key`` and the minutes training it took (the cost of producing it, also when it was
    kept from an earlier trial or continued from a checkpoint); concurrent trials asking for the same student
    wait for one training run."""
    with _LOCK:
        lock = _TRAINING.setdefault(key, threading.Lock())
    while not lock.acquire(timeout=WAIT_S):
        pause_point()  # waiting for another trial's training: interruptible, and out of a waiting timer's way
    try:
        with _LOCK:
            if key in _STUDENTS:
                _STUDENTS.move_to_end(key)
                return _STUDENTS[key]
        started = time.perf_counter()
        student = train()
        minutes = (time.perf_counter() - started) / 60
        if isinstance(student, Continued):
            student, minutes = student.student, minutes + student.earlier_minutes
        with _LOCK:
            _STUDENTS[key] = (student, minutes)
            while len(_STUDENTS) > KEPT:
                _STUDENTS.popitem(last=False)
        return student, minutes
    finally:
        lock.release()


def forget_students() -> None:
    """Empties the store and the training checkpoints (tests that count training runs start from nothing)."""
    with _LOCK:
        _STUDENTS.clear()
    forget_checkpoints()
