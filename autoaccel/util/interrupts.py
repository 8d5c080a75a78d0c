"""Ctrl-C and SIGTERM: held back for the few lines that must not be cut in half, and passed on to the trials
that run in worker threads, which stop within seconds instead of running to their end.

Asking the study for a trial writes a RUNNING row before the loop can note that it holds it: an interrupt
landing in between would leave a trial that nobody marks as interrupted. Inside ``deferred_interrupts()`` such
a signal is remembered and delivered, to whatever handler was in place, as soon as the block ends.

Python delivers signals to the main thread only, while the search evaluates its trials in a thread pool. The
loop therefore runs each evaluation inside ``cancellable(stop)``; when the main thread sees the interrupt it sets
``stop``, and the evaluation raises ``Cancelled`` at its next sampling step (``raise_if_cancelled``) or training
iteration (``pause_point``, where a shared device lock also steps aside for a waiting timer). A training loop
keeps a checkpoint when it is cancelled (see ``autoaccel.distill.training``), so the trial, queued again,
continues where it stopped.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

DEFERRED = (signal.SIGINT, signal.SIGTERM)
# The longest the main thread blocks in a wait (for trials, for worker processes). CPython runs a signal's handler
# between bytecodes, and a blocking wait is woken by a signal only if it was already waiting: an interrupt that
# lands just before the wait starts is handled when the wait returns, which without a timeout is when a trial or a
# worker ends (minutes).
INTERRUPT_POLL_S = 0.5
Result = TypeVar("Result")


class Cancelled(KeyboardInterrupt):
    """Raised inside an evaluation whose run was interrupted. A KeyboardInterrupt, so that nothing that records a
    trial's own failure (``except Exception``) takes it for one."""


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM arriving inside the block are delivered when it ends (main thread only: elsewhere
    Python does not run signal handlers, so there is nothing to defer)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: arrived.append(signum)) for signum in DEFERRED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)


class _Scope(threading.local):
    """The current thread's stop event and what a pause point also does (yield a shared device lock)."""

    def __init__(self) -> None:
        self.stop: threading.Event | None = None
        self.pauses: list[Callable[[], None]] = []


_SCOPE = _Scope()


def cancellable(stop: threading.Event, work: Callable[..., Result], *args: Any) -> Result:
    """Runs ``work(*args)`` in this thread, cancelled at its next pause point once ``stop`` is set."""
    before = _SCOPE.stop
    _SCOPE.stop = stop
    try:
        return work(*args)
    finally:
        _SCOPE.stop = before


def cancellation() -> threading.Event | None:
    """The stop event of the evaluation running in this thread (None outside one)."""
    return _SCOPE.stop


def cancelled() -> bool:
    return _SCOPE.stop is not None and _SCOPE.stop.is_set()


def raise_if_cancelled() -> None:
    if _SCOPE.stop is not None and _SCOPE.stop.is_set():
        raise Cancelled("the run was interrupted")


def pause_point() -> None:
    """Where long work may stop or step aside: raises ``Cancelled`` once the run is interrupted, and runs the
    pauses registered in this thread (``paused_with``). Cheap enough for every sampling step."""
    raise_if_cancelled()
    for pause in _SCOPE.pauses:
        pause()


@contextlib.contextmanager
def paused_with(pause: Callable[[], None]) -> Iterator[None]:
    """Runs ``pause`` at every pause point of this thread inside the block (a shared device lock held there
    steps aside for a timer that waits)."""
    _SCOPE.pauses.append(pause)
    try:
        yield
    finally:
        _SCOPE.pauses.remove(pause)
