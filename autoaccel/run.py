"""One search run, wired from its configuration: config -> target, space -> evaluator, backend, ledger ->
loop -> report. ``open_run`` rebuilds the same context from a run folder for ``report`` and ``plan``.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from autoaccel.artifacts import ARTIFACTS_DIR, ArtifactStore
from autoaccel.config.checks import validate_config
from autoaccel.errors import ConfigError
from autoaccel.fidelity import FidelityLadder
from autoaccel.ledger import LEDGER_FILE, Ledger, default_storage, shown_url
from autoaccel.limits import check_teacher_ratios
from autoaccel.measure.evaluator import CostSettings, Evaluator
from autoaccel.measure.reference import QualityJudge
from autoaccel.objectives import objective_directions
from autoaccel.optimizers.base import OptimizerBackend
from autoaccel.space import SearchSpace, load_space
from autoaccel.study_lock import StudyLock
from autoaccel.targets.base import Target

CONFIG_FILE = "config.yaml"


@dataclass
class RunContext:
    config: DictConfig
    run_dir: Path
    target: Target
    space: SearchSpace
    objectives: list[str]
    ledger: Ledger
    judge: QualityJudge
    evaluator: Evaluator
    backend: OptimizerBackend
    lock: StudyLock | None = None  # held while a search runs on the run folder's SQLite ledger


def load_target(config: DictConfig) -> Target:
    from autoaccel.targets.loader import default_device
    from autoaccel.targets.registry import load_target as load_kind

    path = None if OmegaConf.is_missing(config.target, "path") else config.target.path
    return load_kind(str(config.target.name), path, default_device(str(config.target.device)))


def study_name_for(config: DictConfig) -> str:
    if config.study_name:
        return str(config.study_name)
    return f"{config.target.name}-{Path(str(config.space)).stem}"


def settings_fingerprint(config: DictConfig, target: Target, space: SearchSpace) -> dict:
    """What must not change between a study's runs, or its trials stop being comparable."""
    return {
        "target_hash": target.content_hash,
        "space": space.source,
        "objectives": list(config.objectives),
        "quality.samples": int(config.quality.samples),
        "quality.seed": int(config.quality.seed),
        "cost.batch_size": int(config.cost.batch_size),
        "extractor": target.quality.extractor,
        "fidelity.levels": list(config.fidelity.levels),
    }


def prepare_run(config: DictConfig, run_dir: Path | None = None, for_search: bool = True) -> RunContext:
    """Everything a run needs, checked before anything is written: a command that fails to start leaves no run
    folder, no ledger and no study behind. A search holds a run folder's SQLite study alone (see ``StudyLock``)."""
    from autoaccel.optimizers.base import make_backend

    validate_config(config)
    objectives = list(config.objectives)
    directions = objective_directions(objectives)
    target = load_target(config)
    check_teacher_ratios(config.budget, target.quality.kind)
    space = load_space(str(config.space)).for_target(
        target.capabilities, num_train_timesteps=target.num_train_timesteps
    )
    options = {**OmegaConf.to_container(config.optimizer), "directions": directions}
    backend = make_backend(str(config.optimizer.name), space, options, len(objectives))
    study_name = study_name_for(config)
    run_dir = Path(run_dir or Path(config.report.dir) / study_name).resolve()
    storage = str(config.storage) if config.storage else default_storage(run_dir)
    lock = StudyLock(run_dir, study_name) if for_search and not config.storage else None
    if not for_search and not config.storage and not (run_dir / LEDGER_FILE).exists():
        raise ConfigError(f"{run_dir} has no {LEDGER_FILE}: nothing was recorded there")
    with _removed_if_failed(run_dir):
        if lock is not None:
            lock.acquire()
        try:
            ledger = Ledger(storage, study_name, directions) if for_search else _existing(storage, study_name)
            if for_search:
                ledger.check_settings(settings_fingerprint(config, target, space))
        except BaseException:
            if lock is not None:
                lock.release()
            raise
    if options.get("seed") is not None and ledger.finished_count():
        # A resumed run must not replay the random stream of the first one: it would re-propose the same points.
        options["seed"] = int(options["seed"]) + ledger.finished_count()
        backend = make_backend(str(config.optimizer.name), space, options, len(objectives))
    ledger.study.sampler = backend.sampler()
    if for_search:
        (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(config))
        # any machine can rebuild the report from the storage, with the limits of the latest run
        ledger.study.set_user_attr("config", OmegaConf.to_container(config, resolve=True))
    evaluator = evaluator_from_config(config, target, space, artifacts=ArtifactStore(run_dir / ARTIFACTS_DIR))
    return RunContext(config, run_dir, target, space, objectives, ledger, evaluator.judge, evaluator, backend, lock)


def evaluator_from_config(
    config: DictConfig,
    target: Target,
    space: SearchSpace,
    seed: int | None = None,
    samples: int | None = None,
    cost: CostSettings | None = None,
    artifacts: ArtifactStore | None = None,
) -> Evaluator:
    """The evaluator a configuration describes: ``quality.*`` images on ``seed`` (default ``quality.seed``), latency
    as ``cost.*`` says, weights a plan produces kept in ``artifacts``. Benchmarks that re-score on other seed sets
    or sample counts pass those."""
    samples = int(samples if samples is not None else config.quality.samples)
    judge = QualityJudge(
        target,
        samples,
        int(seed if seed is not None else config.quality.seed),
        Path(config.cache_dir),
        int(config.quality.chunk_size),
    )
    cost = cost or CostSettings(int(config.cost.batch_size), int(config.cost.warmup), int(config.cost.repeats))
    return Evaluator(target, space, judge, cost, artifacts)


@contextlib.contextmanager
def _removed_if_failed(run_dir: Path):
    """Creates ``run_dir`` if needed; removes it again if what follows fails while it holds nothing else."""
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _existing(storage: str, study_name: str) -> Ledger:
    try:
        return Ledger.open_existing(storage, study_name)
    except KeyError:
        raise ConfigError(f"storage {shown_url(storage)!r} has no study named {study_name!r}") from None


def make_ladder(config: DictConfig, objectives: list[str], ledger: Ledger) -> FidelityLadder | None:
    """The fidelity ladder for multi-fidelity runs, with the levels already scored in this study."""
    if not config.fidelity.levels:
        return None
    ladder = FidelityLadder(list(config.fidelity.levels), objectives, float(config.fidelity.z))
    for level, metrics in ledger.fidelity_history():
        if level in ladder.levels and all(name in metrics for name in objectives):
            ladder.remember(level, metrics)
    return ladder


def open_shared_run(storage: str, study_name: str, run_dir: Path) -> RunContext:
    """The context of a study in a shared storage, from the configuration its first worker stored there: the
    report and plans of a multi-machine search, on any machine that reaches the database."""
    ledger = _existing(storage, study_name)
    stored = ledger.study.user_attrs.get("config")
    if stored is None:
        raise ConfigError(f"study {study_name!r} has no stored configuration (it was not started by autoaccel)")
    config = OmegaConf.create(stored)
    config.storage, config.study_name = storage, study_name
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(config))
    return prepare_run(config, run_dir=run_dir, for_search=False)


def open_run(run_dir: Path) -> RunContext:
    """The context of a finished or interrupted run, from its folder's saved configuration."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.exists():
        raise ConfigError(f"{run_dir} is not an autoaccel run folder: it has no {CONFIG_FILE}")
    config = OmegaConf.load(config_path)
    return prepare_run(config, run_dir=run_dir, for_search=False)


def ensure_teacher(context: RunContext, log) -> dict:
    """The teacher's row (full-step sampler on the same seeds), measured once per study."""
    stored = context.ledger.study.user_attrs.get("teacher")
    if stored:
        return stored
    started = time.perf_counter()
    log(
        f"measuring the teacher ({context.target.num_train_timesteps}-step {context.target.scheduler_class}, "
        f"{context.judge.samples} samples) once for this study ..."
    )
    measurement = context.evaluator.evaluate_teacher()
    row = {key: (value if math.isfinite(value) else None) for key, value in measurement.metrics.items()}
    row["timesteps"] = f"all {context.target.num_train_timesteps}"
    context.ledger.study.set_user_attr("teacher", row)
    log(
        f"teacher: fid {row['fid']:.3f}  nfe {row['nfe']:.0f}  latency {row['latency_ms']:.0f} ms "
        f"({time.perf_counter() - started:.0f}s)"
    )
    return row
