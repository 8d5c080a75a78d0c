"""Holding Ctrl-C and SIGTERM back for the few lines that must not be cut in half.

Asking the study for a trial writes a RUNNING row before the loop can note that it holds it: an interrupt
landing in between would leave a trial that nobody marks as interrupted. Inside ``deferred_interrupts()`` such
a signal is remembered and delivered, to whatever handler was in place, as soon as the block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

DEFERRED = (signal.SIGINT, signal.SIGTERM)


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
