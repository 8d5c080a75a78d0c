"""What a technique that changes how each denoiser call runs gives the sampling loop: a per-call controller.

A technique that makes some calls cheaper than others (a feature cache) sets a controller on the model it
produces; the sampling loop finds it with ``call_controller`` and asks it three things, whatever the technique:
``prepare`` (anything to compute for the pipeline's schedule before a timed run, e.g. a calibration pass),
``running`` (the context of one sampling run) and ``last_call_share`` (what the last call cost in full forwards:
what the plan's NFE counts for it).

A controlled model shares its weights with the model it was built from, and its controller holds views of that
model, so it cannot be copied; ``rebuilt_around`` builds the same control again around a changed copy of that
model (the same model in another precision: a plan's runtime).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

import torch

CONTROLLER = "autoaccel_controller"  # the attribute a controlled model carries its controller under
REBUILD = "autoaccel_rebuild"  # (change of the source model) -> the same control around the changed model


@runtime_checkable
class CallController(Protocol):
    def prepare(self, pipeline) -> None: ...

    def running(self, pipeline) -> AbstractContextManager: ...

    def last_call_share(self) -> float: ...


def call_controller(denoiser: torch.nn.Module) -> CallController | None:
    """The controller ``denoiser`` runs under, or None for a model every call of which is a full forward."""
    return getattr(denoiser, CONTROLLER, None)


Change = Callable[[torch.nn.Module], torch.nn.Module]


def attach_controller(
    model: torch.nn.Module, controller: CallController, rebuild: Callable[[Change], torch.nn.Module]
) -> None:
    """Sets ``controller`` on ``model`` (not as a child module: its state is not the model's weights), with how
    to build the same control around a changed copy of the model it was built from (``rebuilt_around``)."""
    object.__setattr__(model, CONTROLLER, controller)
    object.__setattr__(model, REBUILD, rebuild)


def rebuilt_around(denoiser: torch.nn.Module, change: Change) -> torch.nn.Module:
    """A controlled ``denoiser`` built again the same way (a cache, calibrated again when it runs) around
    ``change`` applied to the model it was built from; ``change`` returns a new model and leaves its argument as
    it was."""
    return getattr(denoiser, REBUILD)(change)
