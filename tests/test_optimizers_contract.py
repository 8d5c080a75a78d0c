"""The optimizer backend contract (``autoaccel.testing.optimizer_contract``) for every registered backend: driven
the way ``autoaccel.search.loop.run_search`` drives it, on a mixed, conditional space with a cheap synthetic
two-objective function. No models are run."""

from __future__ import annotations

import pytest

from autoaccel.errors import ConfigError
from autoaccel.optimizers import base
from autoaccel.optimizers.base import make_backend, registered_backends
from autoaccel.testing import optimizer_contract as contract
from autoaccel.testing.optimizer_contract import SPACE

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

BACKENDS = registered_backends()
SLOW = {"optuna_gp"}  # a GP fit per trial: seconds on a busy CPU, so it runs fewer trials


def options(name: str, **extra) -> dict:
    return {"n_startup_trials": 4, **extra} if name in SLOW else extra


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_proposes_valid_points_survives_failures_and_keeps_the_front_feasible(name):
    trials = 8 if name in SLOW else 20
    contract.check_proposes_valid_points_survives_failures_and_keeps_the_front_feasible(name, options(name), trials)


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_resumes_from_the_recorded_trials(name):
    first, more = (5, 3) if name in SLOW else (12, 6)
    contract.check_resumes_from_the_recorded_trials(name, options(name), first, more)


@pytest.mark.parametrize("name", BACKENDS)
def test_same_seed_gives_the_same_first_proposals(name):
    extra = {"n_startup_trials": 6} if name in SLOW else {}  # three GP fits per run still show it is seeded
    contract.check_same_seed_gives_the_same_first_proposals(name, options(name, **extra))


def test_backends_read_maximised_objectives_as_negated_losses():
    backend = make_backend("pymoo_nsga2", SPACE, contract.backend_options(), 2)
    assert backend.losses([0.5, 4.0]) == [0.5, -4.0]
    assert backend.losses(None) is None
    with pytest.raises(ConfigError, match="directions"):
        make_backend("random", SPACE, {"directions": ["minimize", "up"]}, 2)


def test_unknown_backend_is_refused_with_the_valid_names():
    with pytest.raises(ConfigError) as error:
        make_backend("nope", SPACE, {}, 2)
    message = str(error.value)
    assert "'nope'" in message
    for name in BACKENDS:
        assert name in message
    assert {"optuna_nsga3", "optuna_gp", "optuna_qmc", "nevergrad_ngopt", "pymoo_smsemoa"} <= set(BACKENDS)


def test_a_backend_library_that_is_not_installed_is_named(monkeypatch):
    monkeypatch.setattr(base, "_BUILTIN_MODULES", {**base._BUILTIN_MODULES, "autoaccel.optimizers.absent": "absentlib"})
    monkeypatch.setattr(base, "_MISSING", {})
    with pytest.raises(ConfigError, match="pip install absentlib"):
        make_backend("absent_backend", SPACE, {}, 2)
    assert set(BACKENDS) <= set(registered_backends())


def test_an_extension_runs_the_whole_contract_with_one_call():
    """What a backend registered outside autoaccel calls: every check at once, by its registered name."""
    contract.check_backend("random", trials=10)
