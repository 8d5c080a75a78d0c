"""optuna samplers as backends: NSGA-II (default), multi-objective TPE, and random search."""

from __future__ import annotations

from typing import Any

import optuna

from autoaccel.optimizers.base import OptimizerBackend, register_backend
from autoaccel.space import SearchSpace


class OptunaNSGA2(OptimizerBackend):
    name = "optuna_nsga2"

    def sampler(self):
        return optuna.samplers.NSGAIISampler(
            population_size=int(self.options.get("population_size", 16)), seed=self.options.get("seed")
        )


class OptunaTPE(OptimizerBackend):
    name = "optuna_tpe"

    def sampler(self):
        return optuna.samplers.TPESampler(
            n_startup_trials=int(self.options.get("n_startup_trials", 10)),
            seed=self.options.get("seed"),
            multivariate=True,
            group=True,
            warn_independent_sampling=False,
        )


class OptunaRandom(OptimizerBackend):
    name = "random"

    def sampler(self):
        return optuna.samplers.RandomSampler(seed=self.options.get("seed"))


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Define-by-run: suggests each active dimension in file order (conditions see earlier values)."""
    params: dict[str, Any] = dict(space.fixed)
    searched: dict[str, Any] = {}
    for dimension in space.dimensions:
        if not dimension.is_active(params):
            continue
        if dimension.kind == "categorical":
            value = trial.suggest_categorical(dimension.name, list(dimension.choices))
        elif dimension.kind == "int":
            value = trial.suggest_int(dimension.name, int(dimension.low), int(dimension.high), log=dimension.log)
        else:
            value = trial.suggest_float(dimension.name, dimension.low, dimension.high, log=dimension.log)
        params[dimension.name] = value
        searched[dimension.name] = value
    return searched


for _backend in (OptunaNSGA2, OptunaTPE, OptunaRandom):
    register_backend(_backend.name, _backend)
