"""How far a long stage has got while it runs: the reference call, the ODE reference, a calibration
trajectory, a training run, a candidate's sampling.

One reporter serves them all, so every stage speaks alike: a line at most every ``INTERVAL_S`` seconds (the first
only after that long, so a short stage stays silent) with how much is done, the time so far and the time left,
and a line that closes the stage. Lines, not a redrawn bar: a search's output often goes to a log file, and
``workers`` runs several searches into one terminal. Lines go to the sink a command installs with ``reporting``
(a search: its log); without one nothing is reported. ``StageLine`` marks the closing lines: quiet mode keeps
those, one line per stage.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

INTERVAL_S = 10.0  # the longest a long stage stays silent, and the shortest gap between two of its lines

Log = Callable[[str], None]
_sink: Log | None = None


class StageLine(str):
    """A line that closes a long stage: what quiet mode keeps."""


@contextlib.contextmanager
def reporting(log: Log) -> Iterator[None]:
    """Long stages started inside report to ``log`` (a command's output) while it is open."""
    global _sink
    previous, _sink = _sink, log
    try:
        yield
    finally:
        _sink = previous


class Progress:
    """One long stage: ``what`` does ``total`` ``unit`` (images, iterations). Call it with how many are done (a
    fraction of one counts: an image half-way through its steps); use it as a context manager to close the stage.

    ``announce``: always close with a line saying how long it took (a stage the user was told about); otherwise
    only a stage that ran longer than ``INTERVAL_S`` closes with one. ``log``: where lines go (default: the sink
    ``reporting`` installed)."""

    def __init__(
        self, what: str, total: float, unit: str = "images", announce: bool = True, log: Log | None = None
    ) -> None:
        self.what, self.total, self.unit, self.announce = what, float(total), unit, announce
        self.log = log if log is not None else _sink
        self.started = self.last_line = time.perf_counter()
        self.done = 0.0
        self.closed = False

    @property
    def active(self) -> bool:
        """Whether anyone hears this stage (callers skip per-step hooks otherwise)."""
        return self.log is not None

    def __call__(self, done: float, total: float | None = None) -> None:
        """``done`` of ``total`` (default: the stage's) units are done: a line if ``INTERVAL_S`` has passed."""
        if total is not None:
            self.total = float(total)
        self.done = float(done)
        now = time.perf_counter()
        if self.log is not None and now - self.last_line >= INTERVAL_S and self.done < self.total:
            self.last_line = now
            self.log(self._line(now - self.started))

    def steps(self, done_before: float, count: float) -> Callable[[int, int], None] | None:
        """A per-step hook for one call that does ``count`` units after ``done_before``: step ``i`` of ``n`` counts
        ``i / n`` of them. None when nobody listens, so callers can leave their hot loop untouched."""
        if self.log is None:
            return None
        return lambda step, steps: self(done_before + count * step / max(steps, 1))

    def close(self) -> None:
        if self.log is None or self.closed:
            return
        self.closed = True
        elapsed = time.perf_counter() - self.started
        if self.announce or elapsed >= INTERVAL_S:
            self.log(StageLine(f"{self.what}: {_amount(self.done)} {self.unit} in {duration(elapsed)}"))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:  # a stage that failed says so through its error, not with a line saying it is done
            self.close()

    def _line(self, elapsed: float) -> str:
        share = self.done / self.total if self.total > 0 else 0.0
        left = f", about {duration(elapsed * (1 - share) / share)} left" if share > 0 else ""
        return (
            f"{self.what}: {_amount(self.done)}/{_amount(self.total)} {self.unit} ({share:.0%}), "
            f"{duration(elapsed)} so far{left}"
        )


def _amount(value: float) -> str:
    return str(math.floor(value + 1e-9))


def duration(seconds: float) -> str:
    """A time span as a person reads it: ``45 s``, ``12 min``, ``1.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
