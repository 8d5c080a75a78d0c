"""The contract every optimizer backend keeps, as checks an extension can run on its own backend once it is
registered (``autoaccel.optimizers.base.register_backend``). Each drives the backend the way
``autoaccel.search.loop.run_search`` does: propose -> enqueue -> ask -> suggest -> evaluate -> tell -> observe, on a
mixed, conditional space with a cheap two-objective function (fewer steps: faster but worse). No models are run::

    from autoaccel.testing.optimizer_contract import check_backend

    def test_my_backend_keeps_the_contract():
        check_backend("my_backend", {"seed": 0})
"""

from __future__ import annotations

import optuna

from autoaccel.optimizers.base import ProposingBackend, make_backend
from autoaccel.optimizers.optuna_backend import suggest
from autoaccel.space.spaces import active_params, parse_space

SPACE = parse_space(
    {
        "techniques": ["solver", "timesteps"],
        "dimensions": {
            "timesteps.steps": {"type": "int", "low": 3, "high": 8},
            "timesteps.family": {"type": "categorical", "choices": ["uniform_trailing", "karras", "free"]},
            "timesteps.rho": {
                "type": "float",
                "low": 0.5,
                "high": 8.0,
                "log": True,
                "when": {"timesteps.family": ["karras"]},
            },
            "timesteps.gap": {
                "type": "schedule",
                "count_from": "timesteps.steps",
                "low": 0.1,
                "high": 1.0,
                "log": True,
                "when": {"timesteps.family": ["free"]},
            },
            "solver.name": {"type": "categorical", "choices": ["ddim", "unipc"]},
            "solver.lower_order_final": {
                "type": "categorical",
                "choices": [True, False],
                "when": {"solver.name": ["unipc"]},
            },
        },
    }
)
# error (minimised) and throughput = -steps (maximised): backends must negate the second
DIRECTIONS = ["minimize", "maximize"]
MAX_FEASIBLE_STEPS = 6


def backend_options(options: dict | None = None, **extra) -> dict:
    """The settings a check makes its backend with: small populations, seed 0, this problem's directions."""
    settings = {"seed": 0, "population_size": 6, "n_startup_trials": 5, "planned_trials": 30}
    return {**settings, **(options or {}), **extra, "directions": DIRECTIONS}


def objective(searched: dict) -> list[float]:
    """Deterministic; the front is one point per step count, with the right extras."""
    steps = searched["timesteps.steps"]
    error = 1.0 / steps + {"uniform_trailing": 0.2, "karras": 0.0, "free": 0.1}[searched["timesteps.family"]]
    error += abs(searched.get("timesteps.rho", 7.0) - 7.0) / 100 + (0.05 if searched["solver.name"] == "ddim" else 0)
    return [error, -float(steps)]


def new_study(backend) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(directions=DIRECTIONS, sampler=backend.sampler())


def drive(backend, study: optuna.Study, trials: int, fail_every: int | None = 5) -> list[dict]:
    """``trials`` evaluations the way the loop runs them; every ``fail_every``-th fails. Returns what was asked."""
    asked = []
    for _ in range(trials):
        proposal = backend.propose()
        if proposal is not None:
            check_valid(proposal)
            study.enqueue_trial(proposal)
        trial = study.ask()
        searched = suggest(trial, SPACE)
        check_valid(searched)
        if proposal is not None and not study.get_trials(states=(optuna.trial.TrialState.WAITING,)):
            assert searched == proposal
        asked.append(searched)
        if fail_every and (trial.number + 1) % fail_every == 0:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            backend.observe(searched, None)
            continue
        trial.set_constraint("limit", searched["timesteps.steps"] - MAX_FEASIBLE_STEPS)
        frozen = study.tell(trial, objective(searched))
        backend.observe(searched, list(frozen.values))
    return asked


def check_valid(searched: dict) -> None:
    """(a) a complete, in-range point of the space with exactly its active dimensions, choices exact (True, not 1)."""
    complete = SPACE.complete(searched)
    assert searched == active_params(SPACE, complete)
    for name, value in searched.items():
        dimension = SPACE.dimension(name)
        if dimension.kind == "categorical":
            assert any(type(choice) is type(value) and choice == value for choice in dimension.choices), (name, value)
        else:
            assert type(value) is (int if dimension.kind == "int" else float), (name, value)


def history_of(study: optuna.Study) -> list[tuple[dict, list[float] | None]]:
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL))
    return [(trial.params, list(trial.values) if trial.values else None) for trial in finished]


def finished_count(study: optuna.Study) -> int:
    return len(history_of(study))


def check_proposes_valid_points_survives_failures_and_keeps_the_front_feasible(
    name: str, options: dict | None = None, trials: int = 20
) -> None:
    """(a) every proposal and asked trial is a valid point of the space, (b) failed trials do not stop it, (c) only
    feasible trials reach the front."""
    backend = make_backend(name, SPACE, backend_options(options), len(DIRECTIONS))
    study = new_study(backend)
    drive(backend, study, trials)  # (a) checked on every proposal and every asked trial
    states = [trial.state for trial in study.trials if trial.state.is_finished()]
    assert len(states) == trials  # (b) failures did not stop it
    assert states.count(optuna.trial.TrialState.FAIL) == trials // 5
    assert optuna.trial.TrialState.COMPLETE in states[states.index(optuna.trial.TrialState.FAIL) + 1 :]
    front = study.best_trials  # (c) only feasible trials on the front
    assert front
    assert all(all(value <= 0 for value in trial.constraints.values()) for trial in front)


def check_resumes_from_the_recorded_trials(name: str, options: dict | None = None, first: int = 12, more: int = 6):
    """A backend rebuilt from a study's history goes on from it (a proposing one not where a fresh one starts)."""
    backend = make_backend(name, SPACE, backend_options(options), len(DIRECTIONS))
    study = new_study(backend)
    drive(backend, study, first)
    assert finished_count(study) == first

    resumed = make_backend(name, SPACE, backend_options(options), len(DIRECTIONS))
    resumed.rebuild(history_of(study))
    if isinstance(resumed, ProposingBackend):  # it learnt from the history: not where a fresh one starts
        fresh = make_backend(name, SPACE, backend_options(options), len(DIRECTIONS))
        assert [resumed.propose() for _ in range(4)] != [fresh.propose() for _ in range(4)]
        resumed = make_backend(name, SPACE, backend_options(options), len(DIRECTIONS))
        resumed.rebuild(history_of(study))
    drive(resumed, study, more)
    assert finished_count(study) == first + more


def check_same_seed_gives_the_same_first_proposals(name: str, options: dict | None = None) -> None:
    def first_ten() -> list[dict]:
        backend = make_backend(name, SPACE, backend_options(options), len(DIRECTIONS))
        return drive(backend, new_study(backend), 10)

    assert first_ten() == first_ten()


def check_backend(name: str, options: dict | None = None, trials: int = 20) -> None:
    """Every check of the contract for the registered backend ``name`` (``trials``: of the longest check)."""
    check_proposes_valid_points_survives_failures_and_keeps_the_front_feasible(name, options, trials)
    check_resumes_from_the_recorded_trials(name, options, max(2, trials * 3 // 5), max(1, trials * 3 // 10))
    check_same_seed_gives_the_same_first_proposals(name, options)
