"""nevergrad optimizers as backends: NGOpt (picks a method from the space and budget), TwoPointsDE, CMA, and
OnePlusOne. Multi-objective losses are told as vectors; nevergrad scores them by hypervolume."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import nevergrad as ng
import numpy as np

from autoaccel.optimizers.base import History, ProposingBackend, register_backend
from autoaccel.space.spaces import Dimension, SearchSpace


class NevergradBackend(ProposingBackend):
    """One nevergrad optimizer over every dimension; only the active ones are handed to the loop."""

    optimizer_name: str

    def __init__(self, space: SearchSpace, options: Mapping[str, Any], num_objectives: int) -> None:
        super().__init__(space, options, num_objectives)
        parametrization = ng.p.Dict(**{dimension.name: _parameter(dimension) for dimension in space.dimensions})
        if self.seed is not None:
            parametrization.random_state = np.random.RandomState(self.seed)
        self.optimizer = ng.optimizers.registry[self.optimizer_name](
            parametrization=parametrization,
            budget=int(self.options.get("planned_trials", 100)),
            num_workers=int(self.options.get("batch_size", 1)),
        )
        # failures before the first success wait: nevergrad bounds its hypervolume by the first losses it hears
        self._held_failures: list[ng.p.Parameter] = []
        self._told_success = False

    def propose(self) -> dict[str, Any]:
        candidate = self.optimizer.ask()
        return self.hand_out(candidate.value, candidate)

    def observe(self, params: Mapping[str, Any], values: list[float] | None) -> None:
        """Tells the matching proposal; a foreign point (warm start, resumed history) is suggested, asked and told."""
        candidate = self.claim(params)
        if candidate is None:
            self.optimizer.suggest(self.encoded(params))
            candidate = self.optimizer.ask()
        if values is None and not self._told_success:
            self._held_failures.append(candidate)
            return
        self._tell(candidate, self.losses_or_penalty(values))
        if values is not None and not self._told_success:
            self._told_success = True
            for failed in self._held_failures:
                self._tell(failed, self.losses_or_penalty(None))
            self._held_failures.clear()

    def rebuild(self, history: History) -> None:
        """Replays a resumed study's trials in order (suggest, ask, tell), on a random stream of its own: the seed's
        stream would start with the points the first run already proposed (DE samples its population from it)."""
        if self.seed is not None and history:
            self.optimizer.parametrization.random_state = np.random.RandomState([self.seed, len(history)])
        super().rebuild(history)

    def _tell(self, candidate: ng.p.Parameter, losses: list[float]) -> None:
        with warnings.catch_warnings():  # a penalty outside the hypervolume bounds warns on every tell
            warnings.simplefilter("ignore", ng.errors.NevergradWarning)
            self.optimizer.tell(candidate, losses[0] if len(losses) == 1 else losses)


def _parameter(dimension: Dimension) -> ng.p.Parameter:
    """Categoricals as choice indices (``decode`` maps them back exactly); log dimensions on a log scale."""
    if dimension.kind == "categorical":
        return ng.p.Choice(len(dimension.choices))
    scale = ng.p.Log if dimension.log else ng.p.Scalar
    parameter = scale(lower=dimension.low, upper=dimension.high)
    return parameter.set_integer_casting() if dimension.kind == "int" else parameter


def _backend(name: str, optimizer_name: str) -> type[NevergradBackend]:
    return type(f"Nevergrad{optimizer_name}", (NevergradBackend,), {"name": name, "optimizer_name": optimizer_name})


for _name, _optimizer in (
    ("nevergrad_ngopt", "NGOpt"),
    ("nevergrad_de", "TwoPointsDE"),
    ("nevergrad_cma", "CMA"),
    ("nevergrad_oneplusone", "OnePlusOne"),
):
    register_backend(_name, _backend(_name, _optimizer))
