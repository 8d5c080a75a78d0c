"""Benchmarks whose tables the README cites; each writes reports/bench/<name>.md."""

from __future__ import annotations

import statistics


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seed sets (0 for a single set): how every table reports FID."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def seed_set_evaluators(config, target, space) -> list:
    """One evaluator per ``bench.confirm_seeds`` seed set, sharing the first one's model and latency caches: every
    row is re-scored on fresh seeds while each model is built, and each structure timed, once."""
    from autoaccel.run import evaluator_from_config

    evaluators = []
    for seed in config.bench.confirm_seeds:
        evaluator = evaluator_from_config(config, target, space, seed=int(seed))
        if evaluators:
            evaluator.share_caches(evaluators[0])
        evaluators.append(evaluator)
    return evaluators
