"""Benchmarks whose tables the README cites; each writes reports/bench/<name>.md."""

from __future__ import annotations

import statistics


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seed sets (0 for a single set): how every table reports FID."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def score_on_seed_sets(evaluators: list, params: dict | None) -> dict:
    """One plan (``params``; None: the reference call) scored by each seed set's evaluator: FID, precision,
    recall and adherence per set, with the reasons of the sets that failed; latency, NFE, denoiser calls,
    training minutes and timesteps from the first set that scored it (shared structures are timed once), and the
    seconds that set's model spent compiling."""
    from autoaccel.plan.candidate import Candidate

    entry: dict = {"fid": [], "precision": [], "recall": [], "adherence": [], "failures": [], "params": params}
    for evaluator in evaluators:
        measurement = (
            evaluator.evaluate_reference() if params is None else evaluator.evaluate(Candidate.from_params(params))
        )
        if not measurement.ok:
            entry["failures"].append(measurement.failure)
            continue
        for key in ("fid", "precision", "recall", "adherence"):
            if key in measurement.metrics:
                entry[key].append(measurement.metrics[key])
        entry.setdefault("latency_ms", measurement.metrics["latency_ms"])
        entry.setdefault("nfe", measurement.metrics["nfe"])
        entry.setdefault("calls", measurement.details.get("denoiser_calls"))
        entry.setdefault("train_minutes", measurement.details.get("train_minutes"))
        entry.setdefault("timesteps", measurement.details.get("timesteps"))
        entry.setdefault("compile_seconds", measurement.details.get("compile_seconds"))
    return entry


def seed_set_evaluators(config, target, space) -> list:
    """One evaluator per ``bench.confirm_seeds`` seed set, sharing the first one's model and latency caches: every
    row is re-scored on fresh seeds while each model is built, and each structure timed, once."""
    from autoaccel.search.run import evaluator_from_config

    evaluators = []
    for seed in config.bench.confirm_seeds:
        evaluator = evaluator_from_config(config, target, space, seed=int(seed))
        if evaluators:
            evaluator.share_caches(evaluators[0])
        evaluators.append(evaluator)
    return evaluators


def search_front(
    config, space_name: str, study_name: str, objectives: str, trials: int, bench_dir, log, extra=()
) -> list[tuple[int, dict]]:
    """Runs (or resumes) one benchmark search in ``bench_dir/runs`` with the run's target, quality, cost and
    optimizer settings; its feasible front's (trial, complete parameters)."""
    from pathlib import Path

    from autoaccel.cli.search_command import search
    from autoaccel.config import compose_config
    from autoaccel.front.limits import limits_in_force
    from autoaccel.front.pareto import front_numbers
    from autoaccel.search.ledger import reference_row
    from autoaccel.search.run import open_run
    from autoaccel.techniques.base import unchanged_model_params

    runs_dir = Path(bench_dir) / "runs"
    run_config = compose_config(
        [
            f"space={space_name}",
            f"study_name={study_name}",
            f"report.dir={runs_dir}",
            f"objectives={objectives}",
            f"budget.trials={trials}",
            f"budget.warm_start_steps=[{','.join(str(int(steps)) for steps in config.budget.warm_start_steps)}]",
            f"quality.samples={config.quality.samples}",
            f"quality.seed={config.quality.seed}",
            f"target={config.target.name}",
            f"target.device={config.target.device}",
            *([f"target.path={config.target.path}"] if config.target.path else []),
            f"cost.batch_size={config.cost.batch_size}",
            f"cost.warmup={config.cost.warmup}",
            f"cost.repeats={config.cost.repeats}",
            f"quality.chunk_size={config.quality.chunk_size}",
            f"seed={config.seed}",
            f"optimizer={config.optimizer.name}",
            f"cache_dir={config.cache_dir}",
            "quiet=true",
            *one_level_unless(extra),
            *extra,
        ]
    )
    log(f"   searching space={space_name} ({trials} trials)")
    search(run_config, log=log)
    context = open_run(runs_dir / study_name)
    frame = context.ledger.trials_frame(limits_in_force(run_config.budget, reference_row(context.ledger.study)))
    front = []
    for number in front_numbers(frame, context.objectives):
        params = {**unchanged_model_params(), **context.ledger.trial(number).user_attrs["candidate"]}
        front.append((number, params))
    return front


def one_level_unless(overrides: list[str]) -> list[str]:
    """``fidelity.levels=[]`` unless ``overrides`` set the levels: a benchmark's searches score every candidate on
    all their images, never on a ladder a search would pick from how long this machine says it takes."""
    return [] if any(item.startswith("fidelity.levels=") for item in overrides) else ["fidelity.levels=[]"]
