"""Benchmarks whose tables the README cites; each writes reports/bench/<name>.md."""

from __future__ import annotations

import statistics


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seed sets (0 for a single set): how every table reports FID."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
