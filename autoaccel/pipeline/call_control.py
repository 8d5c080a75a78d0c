"""What a technique that changes how each denoiser call runs gives the sampling loop: a per-call controller.

A technique that makes some calls cheaper than others (a feature cache) sets a controller on the model it
produces; the sampling loop finds it with ``call_controller`` and asks it three things, whatever the technique:
``prepare`` (anything to compute for the pipeline's schedule before a timed run, e.g. a calibration pass),
``running`` (the context of one sampling run) and ``last_call_share`` (what the last call cost in full forwards:
what the plan's NFE counts for it).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

import torch

CONTROLLER = "autoaccel_controller"  # the attribute a controlled model carries its controller under


@runtime_checkable
class CallController(Protocol):
    def prepare(self, pipeline) -> None: ...

    def running(self, pipeline) -> AbstractContextManager: ...

    def last_call_share(self) -> float: ...


def call_controller(denoiser: torch.nn.Module) -> CallController | None:
    """The controller ``denoiser`` runs under, or None for a model every call of which is a full forward."""
    return getattr(denoiser, CONTROLLER, None)


def attach_controller(model: torch.nn.Module, controller: CallController) -> None:
    """Sets ``controller`` on ``model`` (not as a child module: its state is not the model's weights)."""
    object.__setattr__(model, CONTROLLER, controller)
