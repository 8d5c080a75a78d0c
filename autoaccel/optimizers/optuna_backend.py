"""optuna samplers as backends: NSGA-II (default), NSGA-III, multi-objective TPE, a Gaussian process,
quasi-Monte Carlo, and random search. The study's sampler proposes; these backends keep no state of their own."""

from __future__ import annotations

from typing import Any

import optuna

from autoaccel.optimizers.base import OptimizerBackend, register_backend
from autoaccel.space.spaces import Dimension, SearchSpace, active_params


class OptunaNSGA2(OptimizerBackend):
    name = "optuna_nsga2"

    def sampler(self):
        return optuna.samplers.NSGAIISampler(
            population_size=int(self.options.get("population_size", 16)), seed=self.options.get("seed")
        )


class OptunaNSGA3(OptimizerBackend):
    """Reference-point survival: keeps the front spread out when there are three or more objectives."""

    name = "optuna_nsga3"

    def sampler(self):
        return optuna.samplers.NSGAIIISampler(
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
        )


class OptunaGP(OptimizerBackend):
    """A Gaussian-process model: sample-efficient when every trial is expensive (conditional dimensions are
    sampled independently, as the model only covers the dimensions every trial has)."""

    name = "optuna_gp"

    def sampler(self):
        return optuna.samplers.GPSampler(
            seed=self.options.get("seed"),
            n_startup_trials=int(self.options.get("n_startup_trials", 10)),
        )


class OptunaQMC(OptimizerBackend):
    """Scrambled Sobol points: covers the space more evenly than random search, for a first survey."""

    name = "optuna_qmc"

    def sampler(self):
        return optuna.samplers.QMCSampler(seed=self.options.get("seed"), scramble=True, warn_independent_sampling=False)


class OptunaRandom(OptimizerBackend):
    name = "random"

    def sampler(self):
        return optuna.samplers.RandomSampler(seed=self.options.get("seed"))


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Define-by-run: suggests each active dimension in file order (conditions see earlier values)."""
    return active_params(space, lambda dimension: _suggest_one(trial, dimension))


def _suggest_one(trial: optuna.Trial, dimension: Dimension) -> Any:
    if dimension.kind == "categorical":
        return trial.suggest_categorical(dimension.name, list(dimension.choices))
    if dimension.kind == "int":
        return trial.suggest_int(dimension.name, int(dimension.low), int(dimension.high), log=dimension.log)
    return trial.suggest_float(dimension.name, dimension.low, dimension.high, log=dimension.log)


for _backend in (OptunaNSGA2, OptunaNSGA3, OptunaTPE, OptunaGP, OptunaQMC, OptunaRandom):
    register_backend(_backend.name, _backend)
