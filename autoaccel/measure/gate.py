"""Shared/exclusive access for concurrent trials: many may sample images at once, but a cost measurement
runs alone, so no other trial's work ever shows up in a latency, memory or energy figure."""

from __future__ import annotations

import threading
from contextlib import contextmanager


class MeasurementGate:
    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._sharing = 0
        self._exclusive = False

    @contextmanager
    def shared(self):
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive)
            self._sharing += 1
        try:
            yield
        finally:
            with self._condition:
                self._sharing -= 1
                self._condition.notify_all()

    @contextmanager
    def exclusive(self):
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive)
            self._exclusive = True  # new shared work waits from here on
            self._condition.wait_for(lambda: self._sharing == 0)
        try:
            yield
        finally:
            with self._condition:
                self._exclusive = False
                self._condition.notify_all()
