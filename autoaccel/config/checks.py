"""Checks of a composed configuration that Hydra's types cannot express. They run before a run touches its
ledger, its run folder or the model, so a command that fails to start leaves nothing behind."""

from __future__ import annotations

import math

from omegaconf import DictConfig

from autoaccel.errors import ConfigError


def validate_config(config: DictConfig) -> None:
    """Options Hydra's types cannot bound: checked before anything is loaded, created or written."""
    checks = [
        ("budget.trials", config.budget.trials, 1),
        ("budget.concurrent", config.budget.concurrent, 1),
        ("quality.samples", config.quality.samples, 2),
        ("quality.chunk_size", config.quality.chunk_size, 1),
        ("cost.batch_size", config.cost.batch_size, 1),
        ("cost.repeats", config.cost.repeats, 1),
        ("cost.warmup", config.cost.warmup, 0),
        ("report.grid_images", config.report.grid_images, 1),
    ]
    for key, value, minimum in checks:
        if value < minimum:
            raise ConfigError(f"{key}={value} is not valid; it must be >= {minimum}")
    levels = list(config.fidelity.levels)
    if levels and levels[-1] != config.quality.samples:
        raise ConfigError(
            f"fidelity.levels={levels} must end at quality.samples={config.quality.samples} (the front's fidelity)"
        )
    for key in ("max_minutes", "max_latency_ms", "max_nfe"):
        value = config.budget[key]
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"budget.{key}={value} is not valid; it must be a positive number or null")
