"""The search loop: the only code that joins an optimizer and the evaluator.

ask (backend or study sampler) -> candidate -> evaluate -> record in the ledger -> tell the backend.
A failed trial is recorded with its reason and the loop goes on. Ctrl-C (or SIGTERM) stops the evaluations in
hand within seconds (``autoaccel.util.interrupts``: each stops at its next training iteration or sampling step, a
training run keeping a checkpoint), records those that finished meanwhile, marks the others as interrupted (they
are evaluated again on resume, continuing from their checkpoints) and stops cleanly.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, fields
from typing import Any

import optuna

from autoaccel.errors import ConfigError
from autoaccel.front.limits import Limit
from autoaccel.measure.evaluator import Evaluator
from autoaccel.measure.measurement import Measurement
from autoaccel.optimizers.base import OptimizerBackend
from autoaccel.optimizers.optuna_backend import suggest
from autoaccel.plan.candidate import Candidate
from autoaccel.search.fidelity import FidelityLadder
from autoaccel.search.ledger import INTERRUPTED, PLAN_KEY, Ledger, not_a_result
from autoaccel.search.liveness import Heartbeat, LivenessSettings, sweep_dead_workers
from autoaccel.space.spaces import SearchSpace
from autoaccel.techniques.base import (
    get_technique,
    loaded_model_params,
    setting_with,
    standard_settings,
    unchanged_model_params,
)
from autoaccel.util.interrupts import INTERRUPT_POLL_S, cancellable, deferred_interrupts, pause_point


@dataclass(frozen=True)
class LoopBudget:
    """``trials`` results in the study (warm starts included); ``limits`` steer optimizers that read constraints
    (the front applies the limits in force whenever it is built)."""

    trials: int
    max_minutes: float | None
    limits: list[Limit]
    concurrent: int = 1


def standard_configurations(
    space: SearchSpace, steps: list[int], guidance: float = 1.0, family: str = "ddpm", target: Any = None
) -> list[tuple[str, dict[str, Any]]]:
    """The solvers users run by default, on the model's own uniform grid at each step count, at the guidance scale
    of the model's default call (where the space holds it; else none), as far as the space allows: the baselines
    the report measures the search's gain against, on ``target``'s model as loaded (None: a float32 model). Which
    solvers and grids, for a model of schedule ``family``, the techniques say (``Technique.standard_settings``:
    DDIM or Euler for flow matching, DPM-Solver++ 2M, UniPC)."""
    # In a joint space the baselines are the unchanged model: each model technique says what leaves it as it is.
    unchanged_model = unchanged_model_params()
    # a setting whose unchanged value (the model as loaded) is no choice of the space: the loaded model's own
    unchanged_model.update({key: value for key, value in loaded_model_params(target).items() if key in space.names})
    guidance_key = setting_with("guidance_param")
    configurations: dict[str, tuple[str, dict[str, Any]]] = {}
    for step_count in steps:
        for names, settings in standard_settings(family, step_count):
            params = {**settings, **unchanged_model}
            searched = None
            for scale in dict.fromkeys([float(guidance), 1.0]):
                searched = _restrict_to_space(space, {**params, guidance_key: scale})
                if searched is not None:
                    break
            if searched is None:
                continue
            # a space without the sampler's techniques runs the model's default call: one baseline, not one per solver
            samples = any(key.partition(".")[0] in space.techniques for key in settings)
            name = "-".join([*names, str(step_count)]) if samples else "default-call"
            configurations.setdefault(repr(sorted(searched.items())), (name, searched))
    return list(configurations.values())


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
    heartbeat = Heartbeat(ledger, liveness.interval_s) if liveness else None
    trials = _TrialRecorder(ledger, backend, space, objectives, budget.limits, ladder, heartbeat, on_trial, log)
    sweeper = _DeadWorkerSweeper(ledger, liveness, log) if liveness else None
    evaluations = _Evaluations(budget.concurrent)
    with evaluations, heartbeat or contextlib.nullcontext():
        try:
            while True:
                if sweeper is not None:
                    sweeper.sweep_if_due()
                out_of_time = budget.max_minutes is not None and time.monotonic() - started > budget.max_minutes * 60
                while not out_of_time and _room_for_another(ledger, budget, len(evaluations)):
                    job = trials.ask(evaluator)
                    # optimizers re-propose points, and other parameters can run the same plan: same seeds, same
                    # result, measured once
                    source = trials.evaluated_source(job)
                    if source is not None:
                        trials.finish(job, *_reused(ledger, source))
                        continue
                    evaluations.submit(job, *_work_for(job, ledger, evaluator, ladder, liveness))
                if not evaluations:
                    if liveness is None or out_of_time or not ledger.has_running():
                        break
                    # the study is full, but other workers still hold trials: if one of them died, its trial
                    # is swept and queued again at the top of the loop, and this worker evaluates it
                    time.sleep(liveness.interval_s)
                    continue
                # wake to sweep even while trials run, and at least every INTERRUPT_POLL_S: an interrupt that lands
                # just before this thread blocks does not wake it, and is only seen once it runs again
                pause = min(liveness.interval_s, INTERRUPT_POLL_S) if liveness else INTERRUPT_POLL_S
                for job, (measurement, per_level) in evaluations.finished(timeout=pause):
                    trials.finish(job, measurement, per_level)
        except KeyboardInterrupt:  # every trial in hand is recorded, or marked and queued again
            with deferred_interrupts():  # a second Ctrl-C waits the few seconds the evaluations take to stop
                for job, (measurement, per_level) in evaluations.stop(log):
                    trials.finish(job, measurement, per_level)
                trials.mark_interrupted()
            raise
    return trials.ran


def _room_for_another(ledger: Ledger, budget: LoopBudget, in_flight: int) -> bool:
    """Whether another trial may be asked now: a free evaluation slot, and the budget not reached. Re-queued
    trials (interrupted, or a dead worker's) are evaluated even past the budget; queued warm starts are not: a
    budget below the warm start takes its first ones."""
    return in_flight < budget.concurrent and (
        ledger.finished_count() + in_flight < budget.trials or ledger.has_requeued()
    )


@dataclass(frozen=True)
class _Job:
    """A trial in hand: the study's trial, the whole candidate it stands for, the part of it the optimizer
    searched (what it is told about), and the plan the candidate runs (``autoaccel.plan.identity``)."""

    trial: optuna.Trial
    candidate: Candidate
    searched: dict[str, Any]
    plan: str


class _TrialRecorder:
    """The study's side of the loop: asks trials, records their results and tells the optimizer. Only the loop's
    thread calls it; it knows every trial in hand, so that an interrupt can mark them."""

    def __init__(
        self,
        ledger: Ledger,
        backend: OptimizerBackend,
        space: SearchSpace,
        objectives: list[str],
        limits: list[Limit],
        ladder: FidelityLadder | None,
        heartbeat: Heartbeat | None,
        on_trial: Callable[[optuna.trial.FrozenTrial, Measurement, int], None] | None,
        log: Callable[[str], None],
    ) -> None:
        self.ledger, self.backend, self.space = ledger, backend, space
        self.objectives, self.limits, self.ladder = objectives, limits, ladder
        self.heartbeat, self.on_trial, self.log = heartbeat, on_trial, log
        self.held: dict[int, optuna.Trial] = {}  # asked and not yet told: what an interrupt must mark and re-queue
        self.evaluated = ledger.evaluated_candidates()  # candidate and plan keys -> the trial that measured them
        self.ran = 0

    def ask(self, evaluator: Evaluator) -> _Job:
        with deferred_interrupts():  # a trial asked is a trial held: no interrupt in between
            trial, candidate, searched = _ask(self.ledger, self.backend, self.space, self.held)
            if self.heartbeat is not None:
                self.heartbeat.hold(trial)
        return _Job(trial, candidate, searched, _plan_identity(evaluator, candidate))

    def evaluated_source(self, job: _Job) -> int | None:
        """The trial that already measured ``job``'s candidate or plan, if one did."""
        return self.evaluated.get(job.candidate.key, self.evaluated.get(job.plan))

    def finish(self, job: _Job, measurement: Measurement, per_level: dict[int, dict[str, float]]) -> None:
        """Records a finished trial and tells the optimizer."""
        trial = job.trial
        measurement.details[PLAN_KEY] = job.plan
        if self.heartbeat is not None:
            self.heartbeat.release(trial)
        top = self.ladder.top if self.ladder else None
        try:
            with deferred_interrupts():  # a result is written whole, or not at all (then it is evaluated again)
                frozen = self.ledger.record(
                    trial, job.candidate, measurement, self.objectives, self.limits, per_level, top
                )
        except optuna.exceptions.UpdateFinishedTrialError:
            # swept as dead while this worker was stalled: its parameters are queued again already
            self.log(f"trial {trial.number} was taken over by another worker's sweep; its result is not recorded")
            self.held.pop(trial.number, None)
            return
        self.held.pop(trial.number, None)
        self.evaluated.setdefault(job.candidate.key, frozen.number)
        self.evaluated.setdefault(job.plan, frozen.number)
        self.backend.observe(job.searched, list(frozen.values) if frozen.values else None)
        self.ran += 1
        if self.on_trial is not None:
            self.on_trial(frozen, measurement, self.ledger.finished_count())

    def mark_interrupted(self) -> None:
        """Marks every trial still in hand as interrupted and queues its candidate again."""
        for trial in list(self.held.values()):
            if self.heartbeat is not None:
                self.heartbeat.release(trial)
            try:
                trial.set_user_attr("failure", INTERRUPTED)
                self.ledger.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                continue  # told before the interrupt landed, or swept and re-queued by another worker
            if trial.user_attrs.get("candidate_key"):  # interrupted before it had one: nothing to redo
                self.ledger.requeue(trial.params, trial.user_attrs)


class _DeadWorkerSweeper:
    """Sweeps the trials of dead workers (``autoaccel.search.liveness``) at most once per heartbeat interval."""

    def __init__(self, ledger: Ledger, liveness: LivenessSettings, log: Callable[[str], None]) -> None:
        self.ledger, self.liveness, self.log = ledger, liveness, log
        self.last_sweep = -math.inf

    def sweep_if_due(self) -> None:
        if time.monotonic() - self.last_sweep <= self.liveness.interval_s:
            return
        swept = sweep_dead_workers(self.ledger, self.liveness.grace_s)
        self.last_sweep = time.monotonic()
        if swept:
            self.log(f"trial(s) {swept} of dead workers are queued again")


EvaluationResult = tuple[Measurement, dict[int, dict[str, float]]]


class _Evaluations:
    """The evaluations running in threads; an interrupt sets ``stop_event``, and each stops at its next pause
    point (``autoaccel.util.interrupts``)."""

    def __init__(self, concurrent: int) -> None:
        self.in_flight: dict[Future, _Job] = {}
        self.stop_event = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=concurrent, thread_name_prefix="autoaccel-trial")

    def __enter__(self) -> _Evaluations:
        self.pool.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.pool.__exit__(*exc)

    def __len__(self) -> int:
        return len(self.in_flight)

    def submit(self, job: _Job, work: Callable[..., EvaluationResult], *args: Any) -> None:
        self.in_flight[self.pool.submit(cancellable, self.stop_event, work, *args)] = job

    def finished(self, timeout: float) -> Iterator[tuple[_Job, EvaluationResult]]:
        """The evaluations that end within ``timeout`` seconds, each taken out of those in flight."""
        done, _ = wait(self.in_flight, return_when=FIRST_COMPLETED, timeout=timeout)
        for future in done:
            result = future.result()
            yield self.in_flight.pop(future), result

    def stop(self, log: Callable[[str], None]) -> list[tuple[_Job, EvaluationResult]]:
        """Stops every evaluation in hand and waits for them; returns those that finished meanwhile (kept)."""
        self.stop_event.set()
        if self.in_flight:
            log(f"interrupted: stopping {len(self.in_flight)} evaluation(s) at their next step")
        done, _ = wait(self.in_flight)
        return [
            (self.in_flight[future], future.result())
            for future in done
            if not future.cancelled() and future.exception() is None
        ]


def _work_for(
    job: _Job, ledger: Ledger, evaluator: Evaluator, ladder: FidelityLadder | None, liveness: LivenessSettings | None
) -> tuple:
    """What evaluates ``job``: on a shared study, waiting for a twin trial (another worker's, on the same
    candidate) and reusing its result; else evaluating it here."""
    twin = ledger.twin(job.trial, job.candidate.key) if liveness is not None else None
    if twin is not None:
        return (_reuse_twin, ledger, twin, evaluator, job.candidate, ladder, liveness)
    return (evaluate_with_fidelity, evaluator, job.candidate, ladder)


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
    """Which plan ``candidate`` runs (``autoaccel.plan.identity``); an evaluator that cannot tell (a synthetic problem)
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
