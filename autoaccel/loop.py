"""The search loop: the only code that joins an optimizer and the evaluator.

ask (backend or study sampler) -> candidate -> evaluate -> record in the ledger -> tell the backend.
A failed trial is recorded with its reason and the loop goes on. Ctrl-C (or SIGTERM) stops the evaluations in
hand within seconds (``autoaccel.interrupts``: each stops at its next training iteration or sampling step, a
training run keeping a checkpoint), records those that finished meanwhile, marks the others as interrupted (they
are evaluated again on resume, continuing from their checkpoints) and stops cleanly.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, fields
from typing import Any

import optuna

from autoaccel.candidate import Candidate
from autoaccel.errors import ConfigError
from autoaccel.fidelity import FidelityLadder
from autoaccel.interrupts import INTERRUPT_POLL_S, cancellable, deferred_interrupts, pause_point
from autoaccel.ledger import INTERRUPTED, PLAN_KEY, Ledger, not_a_result
from autoaccel.limits import Limit
from autoaccel.liveness import Heartbeat, LivenessSettings, sweep_dead_workers
from autoaccel.measure.evaluator import Evaluator
from autoaccel.measure.measurement import Measurement
from autoaccel.optimizers.base import OptimizerBackend
from autoaccel.optimizers.optuna_backend import suggest
from autoaccel.space import SearchSpace
from autoaccel.techniques.base import get_technique, unchanged_model_params


@dataclass(frozen=True)
class LoopBudget:
    """``trials`` results in the study (warm starts included); ``limits`` steer optimizers that read constraints
    (the front applies the limits in force whenever it is built)."""

    trials: int
    max_minutes: float | None
    limits: list[Limit]
    concurrent: int = 1


def standard_configurations(
    space: SearchSpace, steps: list[int], guidance: float = 1.0, family: str = "ddpm"
) -> list[tuple[str, dict[str, Any]]]:
    """The solvers users run by default, on the model's own uniform grid at each step count, at the guidance scale
    of the model's default call (where the space holds it; else none), as far as the space allows: the baselines
    the report measures the search's gain against. DDPM-family models: DDIM, DPM-Solver++ 2M and UniPC (trailing
    spacing); flow-matching models: Euler (what their pipelines run), DPM-Solver++ 2M and UniPC on flow sigmas."""
    order_two = {"solver.order": 2, "solver.final_sigma": "zero", "solver.lower_order_final": True}
    first = ("flow_euler", {"solver.name": "flow_euler"}) if family == "flow" else ("ddim", {"solver.name": "ddim"})
    solvers = [
        first,
        ("dpmsolver++2m", {"solver.name": "dpmsolver++", "solver.variant": "default", **order_two}),
        ("unipc", {"solver.name": "unipc", **order_two}),
    ]
    # In a joint space the baselines are the unchanged model: each model technique says what leaves it as it is.
    unchanged_model = unchanged_model_params()
    configurations = []
    for step_count in steps:
        for label, solver_params in solvers:
            params = {
                "timesteps.steps": step_count,
                "timesteps.family": "uniform_trailing",
                **solver_params,
                **unchanged_model,
            }
            searched = None
            for scale in dict.fromkeys([float(guidance), 1.0]):
                searched = _restrict_to_space(space, {**params, "solver.guidance": scale})
                if searched is not None:
                    break
            if searched is not None:
                configurations.append((f"{label}-{step_count}", searched))
    return configurations


def _restrict_to_space(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any] | None:
    """The searched part of ``params`` if it is a valid point of ``space`` (fixed values must agree)."""
    for key, value in space.fixed.items():
        if key in params and params[key] != value:
            return None
    searched = {name: value for name, value in params.items() if name in space.names}
    try:
        complete = space.complete(searched)
    except ConfigError:
        return None
    applied = [(key, value) for key, value in params.items() if key.partition(".")[0] in space.techniques]
    return searched if all(_value_in(complete, key) == value for key, value in applied) else None


def _value_in(complete: dict[str, Any], key: str) -> Any:
    """A parameter's value in a complete candidate: its own, or its technique config's default where the space
    leaves it out (a baseline must really be the unchanged model, not only look like it)."""
    if key in complete:
        return complete[key]
    technique_name, _, setting = key.partition(".")
    try:
        defaults = {field.name: field.default for field in fields(get_technique(technique_name).config_cls)}
    except ConfigError:
        return None
    return defaults.get(setting)


def evaluate_with_fidelity(
    evaluator: Evaluator, candidate: Candidate, ladder: FidelityLadder | None
) -> tuple[Measurement, dict[int, dict[str, float]]]:
    """Scores at the lowest level and climbs while the candidate can still reach the front there; the ladder
    sees the candidate's lower levels too, to learn how far each level's figures move on the way up."""
    if ladder is None:
        return evaluator.evaluate(candidate), {}
    level: int | None = ladder.levels[0]
    per_level: dict[int, dict[str, float]] = {}
    seconds = 0.0
    while level is not None:
        measurement = evaluator.evaluate(ladder.candidate_at(candidate, level), level)
        seconds += measurement.details.get("seconds", 0.0)
        measurement.details["seconds"] = round(seconds, 3)  # all levels together: what the candidate cost
        if not measurement.ok:
            break
        promote = ladder.promote_and_remember(level, measurement.metrics, below=dict(per_level))
        per_level[level] = dict(measurement.metrics)
        level = ladder.next_level(level) if promote else None
    return measurement, per_level


def run_search(
    ledger: Ledger,
    backend: OptimizerBackend,
    evaluator: Evaluator,
    space: SearchSpace,
    objectives: list[str],
    budget: LoopBudget,
    on_trial: Callable[[optuna.trial.FrozenTrial, Measurement, int], None] | None = None,
    ladder: FidelityLadder | None = None,
    liveness: LivenessSettings | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> int:
    """Evaluates trials until the study holds ``budget.trials`` finished ones; returns how many ran now.

    With ``budget.concurrent`` > 1, that many candidates are evaluated at once in threads (torch releases the
    GIL); the ledger and the optimizer are only touched from this thread, and the evaluator measures cost
    exclusively (see ``Evaluator.exclusive``), so concurrency never leaks into a latency figure.

    With ``liveness`` (a study shared by several workers), every trial in hand carries a heartbeat, trials of
    dead workers are swept and queued again, and a candidate that another trial is already evaluating is not
    evaluated twice at once: the later trial waits for the earlier one and reuses its measurement.
    """
    started = time.monotonic()
    ran = 0
    evaluated = ledger.evaluated_candidates()
    heartbeat = Heartbeat(ledger, liveness.interval_s) if liveness else None
    last_sweep = -math.inf

    held: dict[int, optuna.Trial] = {}  # asked and not yet told: what an interrupt must mark and re-queue

    def finish(trial, candidate: Candidate, searched: dict, plan: str, measurement: Measurement, per_level) -> None:
        """Records a finished trial and tells the optimizer; only ever called from this thread."""
        nonlocal ran
        measurement.details[PLAN_KEY] = plan
        if heartbeat is not None:
            heartbeat.release(trial)
        try:
            with deferred_interrupts():  # a result is written whole, or not at all (then it is evaluated again)
                frozen = ledger.record(
                    trial, candidate, measurement, objectives, budget.limits, per_level, ladder.top if ladder else None
                )
        except optuna.exceptions.UpdateFinishedTrialError:
            # swept as dead while this worker was stalled: its parameters are queued again already
            log(f"trial {trial.number} was taken over by another worker's sweep; its result is not recorded")
            held.pop(trial.number, None)
            return
        held.pop(trial.number, None)
        evaluated.setdefault(candidate.key, frozen.number)
        evaluated.setdefault(plan, frozen.number)
        backend.observe(searched, list(frozen.values) if frozen.values else None)
        ran += 1
        if on_trial is not None:
            on_trial(frozen, measurement, ledger.finished_count())

    in_flight: dict[Future, tuple[optuna.Trial, Candidate, dict[str, Any], str]] = {}
    stop = threading.Event()  # set on an interrupt: every evaluation in hand stops at its next pause point
    pool = ThreadPoolExecutor(max_workers=budget.concurrent, thread_name_prefix="autoaccel-trial")
    with pool, heartbeat or contextlib.nullcontext():
        try:
            while True:
                if liveness is not None and time.monotonic() - last_sweep > liveness.interval_s:
                    swept = sweep_dead_workers(ledger, liveness.grace_s)
                    last_sweep = time.monotonic()
                    if swept:
                        log(f"trial(s) {swept} of dead workers are queued again")
                out_of_time = budget.max_minutes is not None and time.monotonic() - started > budget.max_minutes * 60
                while (
                    not out_of_time
                    and len(in_flight) < budget.concurrent
                    # re-queued trials (interrupted, or a dead worker's) are evaluated even past the budget;
                    # queued warm starts are not: a budget below the warm start takes its first ones
                    and (ledger.finished_count() + len(in_flight) < budget.trials or ledger.has_requeued())
                ):
                    with deferred_interrupts():  # a trial asked is a trial held: no interrupt in between
                        trial, candidate, searched = _ask(ledger, backend, space, held)
                        if heartbeat is not None:
                            heartbeat.hold(trial)
                    plan = _plan_identity(evaluator, candidate)
                    # optimizers re-propose points, and other parameters can run the same plan: same seeds, same
                    # result, measured once
                    source = evaluated.get(candidate.key, evaluated.get(plan))
                    if source is not None:
                        finish(trial, candidate, searched, plan, *_reused(ledger, source))
                        continue
                    twin = ledger.twin(trial, candidate.key) if liveness is not None else None
                    work = (
                        (_reuse_twin, ledger, twin, evaluator, candidate, ladder, liveness)
                        if twin is not None
                        else (evaluate_with_fidelity, evaluator, candidate, ladder)
                    )
                    job = pool.submit(cancellable, stop, *work)
                    in_flight[job] = (trial, candidate, searched, plan)
                if not in_flight:
                    if liveness is None or out_of_time or not ledger.has_running():
                        break
                    # the study is full, but other workers still hold trials: if one of them died, its trial
                    # is swept and queued again at the top of the loop, and this worker evaluates it
                    time.sleep(liveness.interval_s)
                    continue
                # wake to sweep even while trials run, and at least every INTERRUPT_POLL_S: an interrupt that lands
                # just before this thread blocks does not wake it, and is only seen once it runs again
                pause = min(liveness.interval_s, INTERRUPT_POLL_S) if liveness else INTERRUPT_POLL_S
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED, timeout=pause)
                for future in done:
                    trial, candidate, searched, plan = in_flight[future]
                    measurement, per_level = future.result()
                    del in_flight[future]
                    finish(trial, candidate, searched, plan, measurement, per_level)
        except KeyboardInterrupt:  # every trial in hand is recorded, or marked and queued again
            with deferred_interrupts():  # a second Ctrl-C waits the few seconds the evaluations take to stop
                stop.set()
                if in_flight:
                    log(f"interrupted: stopping {len(in_flight)} evaluation(s) at their next step")
                done, _ = wait(in_flight)
                for future in done:
                    if not future.cancelled() and future.exception() is None:  # it finished meanwhile: kept
                        trial, candidate, searched, plan = in_flight[future]
                        finish(trial, candidate, searched, plan, *future.result())
                _mark_interrupted(ledger, held, heartbeat)
            raise
    return ran


def _mark_interrupted(ledger: Ledger, held: dict[int, optuna.Trial], heartbeat: Heartbeat | None) -> None:
    """Marks every trial still in hand as interrupted and queues its candidate again."""
    for trial in list(held.values()):
        if heartbeat is not None:
            heartbeat.release(trial)
        try:
            trial.set_user_attr("failure", INTERRUPTED)
            ledger.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            continue  # told before the interrupt landed, or swept and re-queued by another worker
        if trial.user_attrs.get("candidate_key"):  # interrupted before it had one: nothing to redo
            ledger.requeue(trial.params, trial.user_attrs)


def _reuse_twin(
    ledger: Ledger,
    twin: int,
    evaluator: Evaluator,
    candidate: Candidate,
    ladder: FidelityLadder | None,
    liveness: LivenessSettings,
) -> tuple[Measurement, dict[int, dict[str, float]]]:
    """Waits for trial ``twin`` (the same candidate, finished or started earlier by some worker) and reuses its result;
    evaluates the candidate itself if the twin ends without one (interrupted, or its worker died)."""
    while True:
        frozen = ledger.trial(twin)
        if frozen.state.is_finished():
            break
        pause_point()
        time.sleep(min(0.5, liveness.interval_s))
    if not_a_result(frozen.user_attrs.get("failure")):
        return evaluate_with_fidelity(evaluator, candidate, ladder)
    return _reused(ledger, twin)


def _plan_identity(evaluator, candidate: Candidate) -> str:
    """Which plan ``candidate`` runs (``autoaccel.identity``); an evaluator that cannot tell (a synthetic problem)
    identifies plans by their parameters."""
    identify = getattr(evaluator, "plan_identity", None)
    return identify(candidate) if identify is not None else candidate.key


def _reused(ledger: Ledger, source: int) -> tuple[Measurement, dict[int, dict[str, float]]]:
    """Trial ``source``'s measurement and fidelity levels, marked as reused (it took no time here)."""
    measurement = ledger.measurement_of(source)
    measurement.details.update(duplicate_of=source, seconds=0.0)
    return measurement, ledger.levels_of(source)


def _ask(ledger: Ledger, backend: OptimizerBackend, space: SearchSpace, held: dict[int, optuna.Trial]):
    if not ledger.has_waiting():  # queued trials (warm starts, re-queued ones) go first
        proposal = backend.propose()
        if proposal is not None:
            ledger.study.enqueue_trial(proposal)
    trial = ledger.study.ask()
    held[trial.number] = trial
    searched = suggest(trial, space)
    candidate = Candidate.from_params(space.complete(searched))
    trial.set_user_attr("candidate_key", candidate.key)  # from here on the trial stands for a whole candidate
    return trial, candidate, searched
