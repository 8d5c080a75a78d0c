"""Students kept in memory by what produced them, so candidates that share a training prefix (the 8-step round of
a progressive 4-step student) or a whole training run do not train it again within one process."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

KEPT = 16
_STUDENTS: OrderedDict[Hashable, tuple[torch.nn.Module, float]] = OrderedDict()
_LOCK = threading.Lock()
_TRAINING: dict[Hashable, threading.Lock] = {}


def kept_student(key: Hashable, train: Callable[[], torch.nn.Module]) -> tuple[torch.nn.Module, float]:
    """The student under ``key`` and the minutes training it took (the cost of producing it, also when it was
    kept from an earlier trial); concurrent trials asking for the same student wait for one training run."""
    with _LOCK:
        lock = _TRAINING.setdefault(key, threading.Lock())
    with lock:
        with _LOCK:
            if key in _STUDENTS:
                _STUDENTS.move_to_end(key)
                return _STUDENTS[key]
        started = time.perf_counter()
        student = train()
        minutes = (time.perf_counter() - started) / 60
        with _LOCK:
            _STUDENTS[key] = (student, minutes)
            while len(_STUDENTS) > KEPT:
                _STUDENTS.popitem(last=False)
        return student, minutes


def forget_students() -> None:
    """Empties the store (tests that count training runs start from nothing)."""
    with _LOCK:
        _STUDENTS.clear()
