"""``python -m autoaccel search``: prepare the run, warm-start, loop, report. Resumable at any point."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from autoaccel.front.limits import describe_limits, limits_in_force
from autoaccel.front.pareto import front_numbers
from autoaccel.search.confirm import confirm_before_report
from autoaccel.search.estimate import estimate_search
from autoaccel.search.ledger import record_search_run, reference_row
from autoaccel.search.liveness import LivenessSettings
from autoaccel.search.loop import LoopBudget, run_search, standard_configurations
from autoaccel.search.run import ensure_reference, make_ladder, prepare_run
from autoaccel.targets.denoisers import execution_device
from autoaccel.techniques.base import plan_label
from autoaccel.util.interrupts import deferred_interrupts
from autoaccel.util.progress import StageLine, duration, reporting


def _progress(log, objectives: list[str], context, total: int, limits: list):
    started = time.perf_counter()

    def on_trial(frozen, measurement, finished: int) -> None:
        front_size = len(front_numbers(context.ledger.trials_frame(limits), objectives))
        if measurement.ok:
            figures = "  ".join(f"{name} {measurement.metrics.get(name, math.nan):.4g}" for name in objectives)
            nfe = measurement.metrics.get("nfe", math.nan)
            detail = f"{figures}  nfe {nfe:.0f}"
        else:
            detail = f"FAILED: {measurement.failure}"
        log(
            f"[{finished}/{total}] trial {frozen.number} {plan_label(frozen.user_attrs.get('candidate', {}))}: "
            f"{detail} | front {front_size} | "
            f"{time.perf_counter() - started:.0f}s"
        )

    return on_trial


def search(config: DictConfig, log=print) -> Path:
    """Runs or resumes the study the configuration names; returns the report's index.html. Long stages report
    their progress to ``log`` as they run (``autoaccel.util.progress``)."""
    started = time.perf_counter()  # the device is this process's from here: its time is the search's cost
    with reporting(log):
        context = prepare_run(config)
        for note in context.notes:  # optional figures this run cannot measure, and what it does instead: kept by quiet
            log(StageLine(note))
        try:
            return _run(context, config, log, started)
        finally:
            if context.lock is not None:
                context.lock.release()


def _run(context, config: DictConfig, log, process_started: float) -> Path:
    from autoaccel.report.build import build_report

    liveness = None
    if config.storage:
        # A shared storage may have other workers' trials RUNNING right now: only those whose heartbeat
        # stopped (dead workers) are swept, by the loop of every worker, from its first iteration on.
        liveness = LivenessSettings(float(config.liveness.interval_s), float(config.liveness.grace_s))
    else:
        swept = context.ledger.sweep_interrupted()
        if swept:
            log(f"resuming: {swept} trial(s) interrupted last time are queued again")
    done = context.ledger.finished_count()
    if done:
        context.backend.rebuild(context.ledger.history())  # population optimizers continue where they stopped
    log(
        f"study {context.ledger.study_name!r} in {context.run_dir} ({done} trials already finished); "
        f"space {context.space.name} ({len(context.space.dimensions)} dimensions), "
        f"optimizer {config.optimizer.name}, target {context.target.name} "
        f"on {execution_device(context.target.denoiser)}"
    )
    trials = int(config.budget.trials)
    target = context.target
    guidance = target.reference_guidance
    standards = standard_configurations(
        context.space, list(config.budget.warm_start_steps), guidance, target.schedule_family, target
    )
    # the standard configurations come first, as many as the budget has room for; a resumed study with a larger
    # budget continues the list where the last run stopped
    context.ledger.enqueue_warm_start(standards, exclusive=not config.storage, room=trials - done)
    if not done and len(standards) > trials:
        log(
            f"budget.trials={trials} is smaller than the {len(standards)} standard configurations: only the first "
            f"{trials} are evaluated"
        )
    complete = done >= trials and not context.ledger.has_requeued()
    started = time.perf_counter()
    spent: dict[str, float] = {}  # seconds of this run's stages, recorded with the study as its search cost
    ran = 0
    if complete:
        log(
            f"study {context.ledger.study_name!r} is complete: {done} trials for budget.trials={trials}; to continue "
            f"it, run the same command with a larger budget, e.g. budget.trials={trials + 20}"
        )
    else:
        queued = dict(standards)
        warm_starts = [queued[tag] for tag in context.ledger.queued_warm_starts() if tag in queued]
        context.estimate = estimate_search(context, max(0, trials - done), warm_starts, timings=context.timings)
        shared = " for the study's remaining trials, all workers together" if config.storage else ""
        log(f"estimate{shared}: {context.estimate.describe()}")
        if context.levels_note:
            log(context.levels_note)
        reference_started = time.perf_counter()
        ensure_reference(context, log)
        spent["reference"] = time.perf_counter() - reference_started
    limits = limits_in_force(config.budget, reference_row(context.ledger.study))
    budget = LoopBudget(
        trials=trials, max_minutes=config.budget.max_minutes, limits=limits, concurrent=int(config.budget.concurrent)
    )
    try:
        if not complete:
            ran = run_search(
                context.ledger,
                context.backend,
                context.evaluator,
                context.space,
                context.objectives,
                budget,
                on_trial=_progress(log, context.objectives, context, budget.trials, limits),
                ladder=make_ladder(config, context.objectives, context.ledger),
                liveness=liveness,
                log=log,
            )
        if config.report.build:  # the process that writes the report confirms the latencies it shows
            confirmation_started = time.perf_counter()
            confirm_before_report(context, limits, log, ran)
            spent["confirmation"] = time.perf_counter() - confirmation_started
    finally:
        with deferred_interrupts():  # what this run held the device for is written whole
            record_search_run(
                context.ledger.study,
                device=torch.device(context.target.denoiser.device).type,
                seconds=time.perf_counter() - process_started,
                trials=ran,
                stages=spent,
            )
        index = context.run_dir / "index.html"
        if config.report.build:
            index = build_report(context, log)
            log(f"report: {index} (limits applied: {describe_limits(limits)})")
        if context.estimate is not None:
            log(
                StageLine(
                    f"search took {duration(time.perf_counter() - started)}; estimated at its start: "
                    f"{duration(context.estimate.seconds)}"
                )
            )
    return index
