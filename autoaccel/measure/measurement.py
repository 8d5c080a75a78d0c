"""What one evaluation measured: the record that flows from the evaluator to the ledger, the optimizers and the
report. A failure is a measurement too, with its reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

COMPLETE = "complete"
FAILED = "failed"


@dataclass
class Measurement:
    """What one evaluation measured. ``metrics`` holds numbers only; ``details`` what was run."""

    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == COMPLETE


def describe_failure(error: BaseException) -> str:
    if isinstance(error, torch.cuda.OutOfMemoryError | MemoryError):
        return f"out of memory: {error}".strip()
    return f"{type(error).__name__}: {error}"
