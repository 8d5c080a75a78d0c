"""Checks of a composed configuration that Hydra's types cannot express. They run before a run touches its
ledger, its run folder or the model, so a command that fails to start leaves nothing behind."""

from __future__ import annotations

import math
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from autoaccel.config.values import MAX_SAMPLES, MAX_SEED, check_folder
from autoaccel.errors import ConfigError
from autoaccel.front.limits import LIMIT_OPTIONS, check_limit_value
from autoaccel.reference.sampling import parse_reference
from autoaccel.schedules.schedulers import MAX_INFERENCE_STEPS
from autoaccel.search.liveness import LivenessSettings
from autoaccel.targets.loader import check_device
from autoaccel.targets.registry import target_kind
from autoaccel.util.precision import dtype_named

# Backends that breed generations of ``optimizer.population_size`` individuals (optuna needs at least 2).
POPULATION_BACKENDS = ("optuna_nsga2", "optuna_nsga3", "pymoo_nsga2", "pymoo_nsga3", "pymoo_smsemoa")
MIN_POPULATION = 2


def validate_config(config: DictConfig) -> None:
    """Options Hydra's types cannot bound: checked before anything is loaded, created or written."""
    checks = [
        ("budget.trials", config.budget.trials, 1),
        ("budget.concurrent", config.budget.concurrent, 1),
        ("quality.samples", config.quality.samples, 2),
        ("quality.chunk_size", config.quality.chunk_size, 1),
        ("quality.fid_std_rounds", config.quality.fid_std_rounds, 2),
        ("cost.batch_size", config.cost.batch_size, 1),
        ("cost.repeats", config.cost.repeats, 1),
        ("cost.warmup", config.cost.warmup, 0),
        ("report.grid_images", config.report.grid_images, 1),
    ]
    for key, value, minimum in checks:
        if value < minimum:
            raise ConfigError(f"{key}={value} is not valid; it must be >= {minimum}")
    if config.quality.samples > MAX_SAMPLES:
        raise ConfigError(f"quality.samples={config.quality.samples} is not valid; it must be <= {MAX_SAMPLES}")
    if not -MAX_SEED <= config.quality.seed < MAX_SEED:
        raise ConfigError(
            f"quality.seed={config.quality.seed} is not valid; it must be in [{-MAX_SEED}, {MAX_SEED - 1}]"
        )
    for key in ("max_minutes", "max_train_minutes"):
        minutes = config.budget.get(key)
        if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
            raise ConfigError(f"budget.{key}={minutes} is not valid; it must be a positive number or null")
    for name, option in LIMIT_OPTIONS.items():
        if config.budget.get(name) is not None:
            check_limit_value(option, config.budget[name])
    check_warm_start(list(config.budget.get("warm_start_steps") or []))
    if config.get("liveness") is not None:
        LivenessSettings(float(config.liveness.interval_s), float(config.liveness.grace_s))
    check_fidelity(config)
    check_population(config)
    check_target(config)
    check_study_name(config.study_name)
    check_folder("report.dir", config.report.dir)
    if not OmegaConf.is_missing(config, "cache_dir") and config.get("cache_dir") is not None:
        check_folder("cache_dir", config.cache_dir)


def check_warm_start(steps: list) -> None:
    """``budget.warm_start_steps``: step counts a standard configuration can run (0 would be dropped unseen)."""
    for step_count in steps:
        if (
            isinstance(step_count, bool)
            or not isinstance(step_count, int)
            or not 1 <= step_count <= MAX_INFERENCE_STEPS
        ):
            raise ConfigError(
                f"budget.warm_start_steps={steps} is not valid: {step_count!r} is not a step count; give ints in "
                f"[1, {MAX_INFERENCE_STEPS}] (or [] for no standard configurations)"
            )


def check_fidelity(config: DictConfig) -> None:
    """The ladder's levels and optimism, at start-up rather than after the reference has been measured."""
    levels = list(config.fidelity.levels or [])  # null: decided when the study starts (search.run)
    valid = "give strictly increasing sample counts >= 2, the last equal to quality.samples"
    if any(isinstance(level, bool) or not isinstance(level, int) or level < 2 for level in levels):
        raise ConfigError(f"fidelity.levels={levels} is not valid; {valid}")
    if any(later <= earlier for earlier, later in zip(levels, levels[1:])):
        raise ConfigError(f"fidelity.levels={levels} is not valid: not increasing; {valid}")
    if levels and levels[-1] != config.quality.samples:
        raise ConfigError(
            f"fidelity.levels={levels} must end at quality.samples={config.quality.samples} (the front's fidelity)"
        )
    z = config.fidelity.z
    if not (math.isfinite(z) and z >= 0):
        raise ConfigError(f"fidelity.z={z} is not valid; it must be a finite number >= 0 (0 = no optimism)")
    shares = list(config.fidelity.train_shares)
    if shares and config.fidelity.levels is None:
        raise ConfigError(
            f"fidelity.train_shares={shares} needs fidelity.levels set (one share per level), e.g. "
            f"fidelity.levels=[{max(int(config.quality.samples) // 8, 2)},{config.quality.samples}]"
        )
    if shares:
        valid = f"give one share in (0, 1] per level of fidelity.levels={levels}, non-decreasing, the last 1.0"
        numbers = all(not isinstance(share, bool) and isinstance(share, int | float) for share in shares)
        if not numbers or len(shares) != len(levels) or not all(0 < share <= 1 for share in shares):
            raise ConfigError(f"fidelity.train_shares={shares} is not valid; {valid}")
        if shares[-1] != 1.0 or any(later < earlier for earlier, later in zip(shares, shares[1:])):
            raise ConfigError(f"fidelity.train_shares={shares} is not valid; {valid}")


def check_population(config: DictConfig) -> None:
    """A population backend with fewer than two individuals fails inside the library, after the ledger exists."""
    name, size = str(config.optimizer.name), config.optimizer.population_size
    if name in POPULATION_BACKENDS and size < MIN_POPULATION:
        raise ConfigError(
            f"optimizer.population_size={size} is not valid for optimizer {name}; it must be >= {MIN_POPULATION}"
        )


def check_target(config: DictConfig) -> None:
    """A folder given to the embedded model would be ignored without a word; a missing GPU blamed on weights."""
    if not target_kind(str(config.target.name)).takes_path and config.target.get("path"):
        raise ConfigError(
            f"target.path={config.target.path!r} is only read by target=pipeline (target={config.target.name} "
            f"is the embedded model); add target=pipeline to search that folder, or drop target.path"
        )
    check_device(str(config.target.device))
    dtype_named(str(config.target.get("dtype") or "float32"), "target.dtype")

    parse_reference(str(config.target.get("reference") or "default"))
    data = config.target.get("data")
    if data is not None and not Path(str(data)).expanduser().is_dir():
        raise ConfigError(
            f"target.data={str(data)!r} is not a folder; give a folder of images (PNG/JPEG) of the model's domain"
        )


def check_study_name(name: str | None) -> None:
    """The study name is a folder inside report.dir: a separator or ``..`` would write outside it."""
    if name is None:
        return
    name = str(name)
    separators = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if not name.strip() or name in (".", "..") or "\0" in name or any(sep in name for sep in separators):
        raise ConfigError(
            f"study_name={name!r} is not valid; it names a folder inside report.dir: give a non-empty name "
            "without path separators, not '.' or '..' (or leave it null for <target>-<space>)"
        )
