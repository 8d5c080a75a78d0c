"""pymoo's evolutionary algorithms as backends: NSGA-II, NSGA-III and SMS-EMOA on mixed variables, via ask/tell.

pymoo works a generation at a time: ``propose`` hands the asked population out one individual at a time, and
once every one of them has been observed the generation is told and the next one asked. Failed trials are told
as infeasible (a violated constraint), so survival ranks them below every real point."""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2, RankAndCrowding
from pymoo.algorithms.moo.nsga3 import NSGA3
from pymoo.algorithms.moo.sms import SMSEMOA
from pymoo.core.algorithm import Algorithm
from pymoo.core.individual import Individual
from pymoo.core.mixed import MixedVariableDuplicateElimination, MixedVariableMating, MixedVariableSampling
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.core.variable import Choice, Integer, Real
from pymoo.problems.static import StaticProblem
from pymoo.util.ref_dirs import get_reference_directions

from autoaccel.optimizers.base import FAILURE_LOSS, History, ProposingBackend, register_backend
from autoaccel.space.spaces import Dimension, SearchSpace


class PymooBackend(ProposingBackend):
    """One pymoo algorithm over every dimension (log ones searched as their logarithm)."""

    def __init__(self, space: SearchSpace, options: Mapping[str, Any], num_objectives: int) -> None:
        super().__init__(space, options, num_objectives)
        variables = {dimension.name: _variable(dimension) for dimension in space.dimensions}
        self.problem = Problem(vars=variables, n_obj=num_objectives, n_ieq_constr=1)
        duplicates = MixedVariableDuplicateElimination()
        self.algorithm = self.make_algorithm(
            pop_size=int(self.options.get("population_size", 16)),
            sampling=MixedVariableSampling(),
            mating=MixedVariableMating(eliminate_duplicates=duplicates),
            eliminate_duplicates=duplicates,
        )
        self.algorithm.setup(self.problem, termination=("n_evals", 10**9), seed=self.seed)
        self._generation: Population | None = None  # asked, not yet told
        self._queue: list[int] = []  # its individuals not yet handed out
        self._results: dict[int, list[float] | None] = {}  # index -> the study's values (None: failed)
        self._foreign: list[tuple[dict[str, Any], list[float] | None]] = []  # library point, values

    @abstractmethod
    def make_algorithm(self, **settings: Any) -> Algorithm:
        """The algorithm, given the mixed-variable sampling, mating and duplicate elimination."""

    def propose(self) -> dict[str, Any] | None:
        """The next individual of the generation; None while the last ones are still being evaluated."""
        if self._generation is None:
            self._generation = self.algorithm.ask()
            self._queue = list(range(len(self._generation)))
        if not self._queue:
            return None
        index = self._queue.pop(0)
        return self.hand_out(self._decoded_x(self._generation[index].X), index)

    def observe(self, params: Mapping[str, Any], values: list[float] | None) -> None:
        index = self.claim(params)
        if index is None:  # warm start, resumed history, or the study's sampler: joins the next survival
            self._foreign.append((self._encoded_x(params), values))
        else:
            self._results[index] = values
        if self._generation is not None and len(self._results) == len(self._generation):
            self._tell()

    def rebuild(self, history: History) -> None:
        """The recorded trials become the population pymoo starts from (instead of a fresh random sample)."""
        super().rebuild(history)
        if self._foreign and self._generation is None:
            if not self.algorithm.is_initialized:
                self.algorithm.ask()  # pymoo initialises on its first ask; that random sample is not used
            self._tell()

    def _tell(self) -> None:
        """Tells pymoo the finished generation plus the foreign points; failures are infeasible, their F the worst
        seen (a huge penalty would stretch the normalisation SMS-EMOA and NSGA-III do)."""
        order = sorted(self._results)
        own = [self._generation[index] for index in order] if self._generation is not None else []
        population = Population.create(*own, *(Individual(X=x) for x, _ in self._foreign))
        values = [self._results[index] for index in order] + [values for _, values in self._foreign]
        rows = [None if row is None else self.losses_or_penalty(row) for row in values]
        filler = [worst if math.isfinite(worst) else FAILURE_LOSS for worst in self.worst]
        F = np.array([filler if row is None else row for row in rows], dtype=float)
        G = np.array([[0.0 if row is not None else 1.0] for row in rows])
        self.algorithm.evaluator.eval(StaticProblem(self.problem, F=F, G=G), population)
        self.algorithm.tell(infills=population)
        self._generation, self._queue, self._results, self._foreign = None, [], {}, []

    def _decoded_x(self, x: Mapping[str, Any]) -> dict[str, Any]:
        return {dimension.name: _from_search(dimension, x[dimension.name]) for dimension in self.space.dimensions}

    def _encoded_x(self, params: Mapping[str, Any]) -> dict[str, Any]:
        encoded = self.encoded(params)
        return {dimension.name: _to_search(dimension, encoded[dimension.name]) for dimension in self.space.dimensions}


def _variable(dimension: Dimension) -> Choice | Integer | Real:
    """Categoricals as choice indices (``decode`` maps them back exactly); log dimensions as their logarithm."""
    if dimension.kind == "categorical":
        return Choice(options=list(range(len(dimension.choices))))
    if dimension.log:
        return Real(bounds=(math.log(dimension.low), math.log(dimension.high)))
    if dimension.kind == "int":
        return Integer(bounds=(int(dimension.low), int(dimension.high)))
    return Real(bounds=(dimension.low, dimension.high))


def _from_search(dimension: Dimension, value: Any) -> Any:
    return math.exp(float(value)) if dimension.log else value


def _to_search(dimension: Dimension, value: Any) -> Any:
    return math.log(value) if dimension.log else value


class PymooNSGA2(PymooBackend):
    name = "pymoo_nsga2"

    def make_algorithm(self, **settings: Any) -> Algorithm:
        return NSGA2(survival=RankAndCrowding(), **settings)


class PymooNSGA3(PymooBackend):
    """Survival by reference directions (Das-Dennis, 12 partitions): for three or more objectives."""

    name = "pymoo_nsga3"

    def make_algorithm(self, **settings: Any) -> Algorithm:
        directions = get_reference_directions("das-dennis", self.num_objectives, n_partitions=12)
        return NSGA3(ref_dirs=directions, **settings)


class PymooSMSEMOA(PymooBackend):
    """Survival by hypervolume contribution."""

    name = "pymoo_smsemoa"

    def make_algorithm(self, **settings: Any) -> Algorithm:
        return SMSEMOA(**settings)


for _backend in (PymooNSGA2, PymooNSGA3, PymooSMSEMOA):
    register_backend(_backend.name, _backend)
