"""One search run, wired from its configuration: config -> target, space -> evaluator, backend, ledger ->
loop -> report. ``open_run`` rebuilds the same context from a run folder for ``report`` and ``plan``.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from autoaccel.errors import ConfigError
from autoaccel.front.limits import check_reference_ratios
from autoaccel.front.objectives import objective_directions, resolve_objectives
from autoaccel.measure.evaluator import CostSettings, Evaluator
from autoaccel.measure.feature_store import FEATURES_DIR, FeatureStore
from autoaccel.measure.reference import QualityJudge, configure_quality, quality_options
from autoaccel.metrics.adherence import adherence_reader
from autoaccel.optimizers.base import OptimizerBackend, make_backend
from autoaccel.reference.sampling import describe_reference, reference_steps
from autoaccel.search.checks import validate_config
from autoaccel.search.estimate import (
    SearchEstimate,
    SearchTimings,
    chunk_count,
    reference_calls_per_image,
    time_calls,
)
from autoaccel.search.fidelity import FidelityLadder
from autoaccel.search.fingerprint import settings_fingerprint
from autoaccel.search.ledger import (
    LEDGER_FILE,
    REFERENCE_ROW,
    Ledger,
    default_storage,
    record_reference_row,
    record_target_facts,
    reference_row,
)
from autoaccel.search.levels import settle_fidelity_levels
from autoaccel.search.liveness import LivenessSettings, claim_once
from autoaccel.search.quality_figures import apply_fallback, check_figures_named, figure_record, record_figures
from autoaccel.search.run_folder import CONFIG_FILE, open_recorded, study_name_for
from autoaccel.search.study_lock import StudyLock
from autoaccel.space.choice import resolve_space_name
from autoaccel.space.fit import check_space_fits
from autoaccel.space.spaces import SearchSpace, load_space
from autoaccel.targets.base import Target
from autoaccel.targets.data_folder import load_target_data
from autoaccel.targets.denoisers import execution_device
from autoaccel.targets.loader import default_device
from autoaccel.targets.precision import load_in_dtype
from autoaccel.targets.registry import load_target as load_kind
from autoaccel.techniques.base import get_technique, target_limits
from autoaccel.util.artifacts import ARTIFACTS_DIR, ArtifactStore
from autoaccel.util.progress import duration


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
    lock: StudyLock | None = None  # held while a search (or a report) runs on the run folder's SQLite ledger
    estimate: SearchEstimate | None = None  # what the search said it would take, when it started
    notes: list[str] = field(default_factory=list)  # optional figures not measured, and the fallback (one line each)
    timings: SearchTimings | None = None  # the timed calls an estimate multiplied, for the next one
    levels_note: str = ""  # how fidelity.levels was decided where the user left it unset


def load_target(config: DictConfig) -> Target:

    path = None if OmegaConf.is_missing(config.target, "path") else config.target.path
    prompts = config.target.get("prompts")
    dtype, offload = str(config.target.get("dtype") or "float32"), str(config.target.get("offload") or "none")
    device = default_device(str(config.target.device))
    target = load_kind(str(config.target.name), path, device, prompts, dtype, offload)
    load_in_dtype(target, dtype)  # a kind that does not read its weights in a precision is cast
    target.reference = str(config.target.get("reference") or "default")
    target.ode_steps = int(config.quality.get("ode_steps", 200))
    if config.target.get("data"):
        load_target_data(target, str(config.target.data))

    configure_quality(
        target,
        config.quality.get("clip_model"),
        config.quality.get("inception_weights"),
        config.quality.get("preference_model"),
        config.quality.get("preference_processor"),
    )
    return target


def prepare_run(
    config: DictConfig,
    run_dir: Path | None = None,
    for_search: bool = True,
    hold: bool | None = None,
    wait: Callable[[str], None] | None = None,
) -> RunContext:
    """Everything a run needs, checked before anything is written: a command that fails to start leaves no run
    folder, no ledger and no study behind.

    A search holds a run folder's SQLite study alone (``StudyLock``) from right after the configuration is
    validated, so a second one is refused before any model is loaded. ``hold`` (default: a search does) takes it
    for another command that writes the folder (``report``); with ``wait`` that command waits for the holder to
    end (``wait`` hears what it waits for) instead of being refused. A shared storage has no folder lock."""
    validate_config(config)
    study_name = study_name_for(config)
    run_dir = Path(run_dir or Path(config.report.dir) / study_name).resolve()
    storage = str(config.storage) if config.storage else default_storage(run_dir)
    if not for_search and not config.storage and not (run_dir / LEDGER_FILE).exists():
        raise ConfigError(f"{run_dir} has no {LEDGER_FILE}: nothing was recorded there")
    holds = for_search if hold is None else hold
    lock = StudyLock(run_dir, study_name, searching=for_search) if holds and not config.storage else None
    with _removed_if_failed(run_dir):
        if lock is not None:
            lock.acquire(wait)
        try:
            return _prepare(config, run_dir, storage, study_name, for_search, lock)
        except BaseException:
            if lock is not None:
                lock.release()
            raise


def _prepare(
    config: DictConfig, run_dir: Path, storage: str, study_name: str, for_search: bool, lock: StudyLock | None
) -> RunContext:

    target = load_target(config)
    objectives = resolve_objectives(list(config.objectives), target)
    check_figures_named(config, objectives, target)
    figures = quality_options(target)
    fallback = apply_fallback(config, objectives, figures, target)
    objectives = resolve_objectives(list(config.objectives), target)
    directions = objective_directions(objectives)
    check_reference_ratios(config.budget, target.quality.kind)
    check_adherence_limit(config.budget, target)
    space = load_space(resolve_space_name(config)).for_target(target.capabilities, **target_limits(target))
    check_space_fits(space, target)
    space = with_training_cap(space, config.budget.get("max_train_minutes"))
    options = {**OmegaConf.to_container(config.optimizer), "directions": directions}
    backend = make_backend(str(config.optimizer.name), space, options, len(objectives))
    ledger = (
        Ledger(storage, study_name, directions, metric_names=objectives)
        if for_search
        else open_recorded(storage, study_name)
    )
    store = ArtifactStore(run_dir / ARTIFACTS_DIR, remote=config.get("artifacts", {}).get("store"))
    evaluator = evaluator_from_config(config, target, space, artifacts=store)
    evaluator.features = FeatureStore(run_dir / FEATURES_DIR)
    context = RunContext(config, run_dir, target, space, objectives, ledger, evaluator.judge, evaluator, backend, lock)
    context.notes = fallback
    if for_search:
        context.levels_note = settle_fidelity_levels(context)  # part of what the fingerprint records
        ledger.check_settings(settings_fingerprint(config, target, space))
    if options.get("seed") is not None and ledger.finished_count():
        # A resumed run must not replay the random stream of the first one: it would re-propose the same points.
        options["seed"] = int(options["seed"]) + ledger.finished_count()
        backend = make_backend(str(config.optimizer.name), space, options, len(objectives))
        context.backend = backend
    ledger.study.sampler = backend.sampler()
    record_target_facts(ledger.study, objectives, target.quality.kind)  # for plan, which never loads the model
    if for_search:
        record_figures(ledger.study, figure_record(target, figures, fallback))
        (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(config))
        # any machine can rebuild the report from the storage, with the limits of the latest run
        ledger.study.set_user_attr("config", OmegaConf.to_container(config, resolve=True))
    return context


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
        fid_std_rounds=int(config.quality.fid_std_rounds),
    )
    cost = cost or CostSettings(int(config.cost.batch_size), int(config.cost.warmup), int(config.cost.repeats))
    return Evaluator(target, space, judge, cost, artifacts)


@contextlib.contextmanager
def _removed_if_failed(run_dir: Path):
    """Creates ``run_dir`` (and the folders above it) if needed; removes what it created if what follows fails."""
    created = next((folder for folder in [*reversed(run_dir.parents), run_dir] if not folder.exists()), None)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def make_ladder(config: DictConfig, objectives: list[str], ledger: Ledger) -> FidelityLadder | None:
    """The fidelity ladder for multi-fidelity runs, with the levels already scored in this study."""
    if not config.fidelity.levels:
        return None
    shares = [float(share) for share in config.fidelity.get("train_shares") or []]
    ladder = FidelityLadder(list(config.fidelity.levels), objectives, float(config.fidelity.z), train_shares=shares)
    for level, metrics in ledger.fidelity_history():
        if level in ladder.levels and all(name in metrics for name in objectives):
            ladder.remember(level, metrics)
    return ladder


def open_shared_run(storage: str, study_name: str, run_dir: Path) -> RunContext:
    """The context of a study in a shared storage, from the configuration its first worker stored there: the
    report and plans of a multi-machine search, on any machine that reaches the database."""
    ledger = open_recorded(storage, study_name)
    stored = ledger.study.user_attrs.get("config")
    if stored is None:
        raise ConfigError(f"study {study_name!r} has no stored configuration (it was not started by autoaccel)")
    config = OmegaConf.create(stored)
    config.storage, config.study_name = storage, study_name
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(config))
    return prepare_run(config, run_dir=run_dir, for_search=False)


def open_run(run_dir: Path, hold: bool = False, wait: Callable[[str], None] | None = None) -> RunContext:
    """The context of a finished or interrupted run, from its folder's saved configuration; with ``hold``, holding
    the folder's study as a search does (a command that writes the folder: ``report``), or waiting for it."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.exists():
        raise ConfigError(f"{run_dir} is not an autoaccel run folder: it has no {CONFIG_FILE}")
    config = OmegaConf.load(config_path)
    return prepare_run(config, run_dir=run_dir, for_search=False, hold=hold, wait=wait)


def check_adherence_limit(budget, target: Target) -> None:
    """``budget.min_adherence`` needs a target whose images a classifier reads (the embedded digit models)."""
    if budget.get("min_adherence") is not None and adherence_reader(target) is None:
        raise ConfigError(
            f"budget.min_adherence={budget.min_adherence} needs a model whose images autoaccel can classify "
            f"(target=digits, digits_t2i or digits_dit); {target.name} has no adherence figure"
        )


def with_training_cap(space: SearchSpace, minutes: float | None) -> SearchSpace:
    """``budget.max_train_minutes`` as each training technique's own cap (distillation, pruning's recovery),
    where the space does not set one itself: a trial that trains longer fails with the reason, and the search
    goes on."""
    from dataclasses import replace

    if minutes is None:
        return space
    searched = {dimension.name for dimension in space.dimensions}
    fixed = dict(space.fixed)
    for name in space.techniques:
        setting = get_technique(name).max_minutes_param
        key = f"{name}.{setting}"
        if setting is not None and key not in fixed and key not in searched:
            fixed[key] = float(minutes)
    return replace(space, fixed=fixed)


def ensure_reference(context: RunContext, log) -> dict:
    """The reference row (the pipeline's default call, or ``target.reference``, on the same seeds), measured once
    per study; what it will cost is said before it starts. Workers of a shared study measure it once between
    them: one claims it through the storage, the others wait for its row (``autoaccel.search.liveness.claim_once``)."""
    stored = reference_row(context.ledger.study)
    if stored:
        if REFERENCE_ROW not in context.ledger.study.user_attrs:  # read under its older name: recorded anew
            record_reference_row(context.ledger.study, stored)
        return stored
    if not context.config.storage:  # the run folder's own ledger: this process holds it alone
        return _measure_reference(context, log)

    liveness = LivenessSettings(float(context.config.liveness.interval_s), float(context.config.liveness.grace_s))

    def stored_row() -> dict | None:
        return reference_row(context.ledger.study)

    claim_once(
        context.ledger, "reference", lambda: bool(stored_row()), lambda: _measure_reference(context, log), liveness, log
    )
    return stored_row()


def _measure_reference(context: RunContext, log) -> dict:
    started = time.perf_counter()
    log(f"measuring the reference once for this study: {describe_reference_cost(context)} ...")
    context.judge.log = log
    try:
        measurement = context.evaluator.evaluate_reference()
    finally:
        context.judge.log = None
    row = {key: (value if math.isfinite(value) else None) for key, value in measurement.metrics.items()}
    row["timesteps"] = reference_steps(context.target)
    row["reference"] = describe_reference(context.target)
    row["latency_method"] = measurement.details.get("latency_method", "median")
    record_reference_row(context.ledger.study, row)
    log(
        f"reference: fid {row['fid']:.3f}  nfe {row['nfe']:.0f}  latency {row['latency_ms']:.0f} ms "
        f"({row['latency_method']}; {time.perf_counter() - started:.0f}s)"
    )
    return row


def describe_reference_cost(context: RunContext) -> str:
    """The reference, its images and denoiser calls, and what they take: the search's estimate of them, or one
    made now from a timed denoiser call (``autoaccel.search.estimate``)."""
    target, judge = context.target, context.judge
    per_image = reference_calls_per_image(target)
    seconds = context.estimate.stages.get("reference") if context.estimate is not None else None
    if seconds is None:
        seconds = time_calls(context).chunk * per_image * chunk_count(judge)
    cached = " (cached images are reused if present)"
    return (
        f"{describe_reference(target)}; {judge.samples} images x {per_image} denoiser calls, "
        f"about {duration(seconds)} on {execution_device(target.denoiser)}{cached}"
    )
