"""Builds ``reports/<run>/`` from the ledger: trials.csv, pareto.csv, pareto.png, recipes/, grids/, index.html.

Front points are turned into recipes, and their image grids are sampled through ``apply_recipe``: what the
report shows is what a user who applies the recipe gets. Neither trains nor calibrates again: a recipe names the
artifacts the evaluator stored for its trial (``autoaccel.util.artifacts``) and applying loads them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from autoaccel.errors import ConfigError
from autoaccel.front.limits import describe_limits, limits_in_force
from autoaccel.front.objectives import METRIC_COLUMNS
from autoaccel.front.pareto import front_frame, front_numbers, hypervolume_history, knee_point
from autoaccel.measure.feature_store import FEATURES_DIR, FeatureStore
from autoaccel.measure.reference import quality_options, reference_is_stochastic
from autoaccel.pipeline.seeds import sample_in_chunks
from autoaccel.plan.apply import build_pipeline
from autoaccel.plan.candidate import Candidate
from autoaccel.plan.recipe import apply_recipe, build_recipe, save_recipe
from autoaccel.report.diversity import diversity_sentence
from autoaccel.report.files import REFERENCE_FILE, recipe_name
from autoaccel.report.html import REFERENCE_GRID, figure_text, write_html
from autoaccel.report.noise import (
    INTERVAL_COLUMNS,
    cannot_tell_sentence,
    reference_gap_sentence,
    run_noise,
    with_intervals,
)
from autoaccel.report.plots import hypervolume_plot, pareto_plot
from autoaccel.report.recommend import recommendation_line, recommendation_ties, recommended_plans
from autoaccel.report.search_cost import COST_FILE, best_speedup, cost_beside_speedup, search_cost
from autoaccel.search.confirm import confirmation_sentence, shared_load_sentence
from autoaccel.search.ledger import CONFIRMATION, DETAIL_PREFIX, reference_row, search_runs
from autoaccel.search.quality_figures import figure_record, recorded_figures
from autoaccel.util.artifacts import ARTIFACTS_DIR, ArtifactRef
from autoaccel.util.files import write_atomically
from autoaccel.util.imaging import save_grid

SKIP_MISSING_FLAG = "--skip-missing-artifacts"
# the reference's file and grid under the names reports wrote before reference.json: a report written now replaces them
OLD_REPORT_FILES = ("teacher.json", "grids/teacher.png")
PARETO_COLUMNS = [
    "trial",
    *METRIC_COLUMNS,
    *INTERVAL_COLUMNS,
    "latency_iqr_ms",
    "search_latency_ms",
    "algorithmic_latency_ms",  # a runtime plan timed without its runtime settings, beside it
    "quality_samples",
    "warm_start",
    "scheduler_class",
    "timesteps",
    "guidance_scale",
    "recipe",
    "candidate_key",  # names the plan's kept image features (features/), for plan's paired intervals
]


def seed_policy(context) -> dict:
    return {
        "seed": int(context.config.quality.seed),
        "samples": int(context.config.quality.samples),
        "chunk_size": int(context.config.quality.chunk_size),
        "noise": "torch.randn((samples, C, H, W), generator=torch.Generator().manual_seed(seed)), on the CPU",
        "class_labels": "(arange(samples) % num_classes)[randperm(samples)] with the same generator, after the noise",
        "stochastic_steps": "torch.Generator seeded seed * 100003 + chunk start, per chunk of chunk_size",
        "code": "autoaccel.pipeline.seeds.make_seed_batch and sample_in_chunks",
    }


def write_front_recipe(context, row: pd.Series, recipes_dir: Path) -> Path:
    """The recipe of one front point, rebuilt from the exact parameters the ledger stored for its trial.

    Only the steps that decide how the plan samples are applied here (the recipe shows the scheduler and timesteps
    they give); the model techniques are named with the artifacts the evaluator stored, so nothing is pruned or
    trained again: a trial whose stored artifact is missing is refused (``MissingArtifact``), never trained again in
    its place.
    """
    frozen = context.ledger.trial(int(row["trial"]))
    candidate = Candidate.from_params(frozen.user_attrs["candidate"])
    plan = candidate.plan(context.space.techniques)
    recorded = frozen.user_attrs.get(f"{DETAIL_PREFIX}artifacts")
    missing = missing_artifacts(context.run_dir, recorded)
    if missing:
        raise missing_artifact_error(int(row["trial"]), *next(iter(missing.items())), len(missing))
    artifacts = trial_artifacts(context.run_dir, recorded, recipes_dir)
    # what the recipe shows of its sampler (a distilled model prescribes it: it is loaded from its artifact)
    stored = {name: (Path(os.path.normpath(recipes_dir / ref.path)), ref.sha256) for name, ref in artifacts.items()}
    pipeline = build_pipeline(context.target, plan.sampling_part, stored)
    figures = {name: row.get(name) for name in [*METRIC_COLUMNS, "quality_samples"] if name in row}
    measured_on = {
        "device": row.get("device"),
        "threads": row.get("threads"),
        "batch_size": row.get("batch_size"),
        "memory_kind": row.get("memory_kind"),
        "kernels": row.get("kernels"),
        "quantized_latency": row.get("quantized_latency"),
        "quality_extractor": context.target.quality.extractor,
        "quality_reference": context.target.quality.description,
    }
    source = {"study": context.ledger.study_name, "trial": int(row["trial"]), "run_dir": str(context.run_dir)}
    records = frozen.user_attrs.get(f"{DETAIL_PREFIX}records")  # as the trial computed them (None: compute now)
    recipe = build_recipe(
        context.target, plan, pipeline, figures, measured_on, seed_policy(context), source, artifacts, records
    )
    return save_recipe(recipe, recipes_dir / recipe_name(row["trial"]))


def trial_artifacts(run_dir: Path, stored: dict | None, recipes_dir: Path) -> dict[str, ArtifactRef]:
    """technique -> its artifact as a recipe in ``recipes_dir`` names it (relative to that folder), for the
    artifacts the trial stored that this run folder holds (a worker on another machine keeps its own)."""
    found = {}
    for name, sha in (stored or {}).items():
        path = artifact_path(run_dir, sha)
        if path.is_file():
            found[name] = ArtifactRef(Path(os.path.relpath(path, recipes_dir)).as_posix(), sha)
    return found


def artifact_path(run_dir: Path, sha: str) -> Path:
    return Path(run_dir) / ARTIFACTS_DIR / f"{sha}.safetensors"


def missing_artifacts(run_dir: Path, stored: dict | None) -> dict[str, Path]:
    """technique -> the file of each artifact a trial stored (``stored``: technique -> sha256) that ``run_dir``
    does not hold: deleted, or kept by the machine of another worker of a shared study."""
    paths = {name: artifact_path(run_dir, sha) for name, sha in (stored or {}).items()}
    return {name: path for name, path in paths.items() if not path.is_file()}


class MissingArtifact(ConfigError):
    """A front plan's stored weights are not in the run folder; the report never trains them again instead."""


def missing_artifact_error(trial: int, technique: str, path: Path, count: int = 1) -> MissingArtifact:
    others = f" (and {count - 1} more of its artifacts)" if count > 1 else ""
    return MissingArtifact(
        f"trial {trial}'s {technique} weights {path} are missing{others}, and the report does not train them again: "
        f"restore the run's {ARTIFACTS_DIR}/ folder (a study shared by several machines: copy in that of the "
        f"machine that ran trial {trial}), or run report with {SKIP_MISSING_FLAG} to build it without that plan's "
        "recipe and grid"
    )


def _front_artifacts(context, front: pd.DataFrame, skip_missing: bool, log) -> set[int]:
    """The front trials whose stored artifacts this run folder lacks, checked before anything is written:
    refused (``MissingArtifact``) unless ``skip_missing``, then listed in the log."""
    lacking = {}
    store = context.evaluator.artifacts
    for number in front["trial"].astype(int) if not front.empty else []:
        recorded = context.ledger.trial(int(number)).user_attrs.get(f"{DETAIL_PREFIX}artifacts")
        if store is not None:  # what another process stored in the shared store (artifacts.store) is fetched
            for sha in (recorded or {}).values():
                store.fetch(sha)
        missing = missing_artifacts(context.run_dir, recorded)
        if missing:
            lacking[int(number)] = missing
    if lacking and not skip_missing:
        number, missing = next(iter(lacking.items()))
        raise missing_artifact_error(number, *next(iter(missing.items())), len(missing))
    for number, missing in lacking.items():
        files = ", ".join(path.name for path in missing.values())
        folder = context.run_dir / ARTIFACTS_DIR
        log(
            f"trial {number}: no recipe or grid here: its artifacts ({files}) are not in {folder} (copy them there "
            "from the machine that ran it and run report again)"
        )
    return set(lacking)


def build_report(context, log=print, skip_missing_artifacts: bool | None = None) -> Path:
    """Writes the run folder's report from the ledger. A front plan whose stored artifacts the folder lacks is
    refused (``MissingArtifact``) before anything is written, unless ``skip_missing_artifacts`` (default: for a
    study in a shared storage, whose workers keep their artifacts on their own machines): then that plan keeps its
    row but gets no recipe and no grid, and the log and the page say so. Nothing is trained again."""
    run_dir = context.run_dir
    reference = reference_row(context.ledger.study)
    limits = limits_in_force(context.config.budget, reference)
    trials = context.ledger.trials_frame(limits)
    numbers = front_numbers(trials, context.objectives)
    front = front_frame(trials, numbers) if numbers else pd.DataFrame(columns=PARETO_COLUMNS)
    if skip_missing_artifacts is None:  # a shared study's workers keep their artifacts on their own machines
        skip_missing_artifacts = bool(context.config.get("storage"))
    without_artifacts = _front_artifacts(context, front, skip_missing_artifacts, log)
    grid_count = min(int(context.config.report.grid_images), context.judge.samples)
    grid_seeds = context.judge.seeds.head(grid_count)
    grids: dict[str, str] = {}
    if reference:
        save_grid(context.judge.reference_call_images()[:grid_count], run_dir / REFERENCE_GRID)
        grids[f"reference ({reference.get('timesteps')} steps), fid {figure_text(reference.get('fid', math.nan))}"] = (
            REFERENCE_GRID
        )
    recipe_paths = []
    for _, row in front.iterrows():
        if int(row["trial"]) in without_artifacts:
            recipe_paths.append("")
            continue
        recipe_path = write_front_recipe(context, row, run_dir / "recipes")
        recipe_paths.append(str(recipe_path.relative_to(run_dir)))
        # The recipe was just written from this target (its hash is target.content_hash): no need to re-hash.
        fast = apply_recipe(context.target, recipe_path, check_model=False, log=log)
        images = sample_in_chunks(fast, grid_seeds, context.judge.chunk_size)
        grid_name = f"grids/trial-{int(row['trial']):04d}.png"
        save_grid(images, run_dir / grid_name)
        nfe = figure_text(row["nfe"], count=True)
        grids[f"trial {int(row['trial'])}: nfe {nfe}, fid {row['fid']:.3g}, {row['latency_ms']:.0f} ms"] = grid_name
    front["recipe"] = recipe_paths
    _remove_stale(run_dir / "recipes", "trial-*.yaml", {path for path in recipe_paths if path})
    _remove_stale(run_dir / "grids", "trial-*.png", set(grids.values()))
    complete = trials[trials["state"] == "COMPLETE"] if not trials.empty else trials
    standards = complete[complete["warm_start"] != ""] if not complete.empty else complete
    floor = context.judge.fid_floor() if not complete.empty else None
    if not complete.empty:  # the fixed sets' features, beside the plans' the search kept, for plan's intervals
        context.judge.keep_features(FeatureStore(run_dir / FEATURES_DIR), reference_call=bool(reference))
    noise = run_noise(run_dir, [front, standards], reference, context.target.quality.kind)
    front, standards = with_intervals(front, noise), with_intervals(standards, noise)
    trials = _with_trial_intervals(trials, pd.concat([front, standards]))
    trials.to_csv(run_dir / "trials.csv", index=False)
    front.reindex(columns=PARETO_COLUMNS).to_csv(run_dir / "pareto.csv", index=False)
    floor_note = "" if floor or complete.empty else context.judge.floor_absence()
    reference_interval = noise.fid({}) if noise and reference else None  # the reference call's own FID interval
    if reference_interval is not None:
        reference = {**reference, "fid_lo": reference_interval.lo, "fid_hi": reference_interval.hi}
    figures = recorded_figures(context.ledger.study) or figure_record(
        context.target, quality_options(context.target), context.notes
    )
    reference_file = {
        **(reference or {}),
        "quality_reference": context.target.quality.kind,
        "fid_floor": floor,
        "fid_floor_note": floor_note,
        "quality_figures": figures,
    }
    write_atomically(run_dir / REFERENCE_FILE, lambda path: path.write_text(json.dumps(reference_file, indent=1)))
    for old in OLD_REPORT_FILES:
        (run_dir / old).unlink(missing_ok=True)
    pareto_plot(
        trials,
        front,
        reference,
        run_dir / "pareto.png",
        title=f"{context.ledger.study_name}",
        floor=None if floor is None else floor["fid"],
    )
    hypervolumes = hypervolume_history(trials, context.objectives)
    hypervolume_plot(hypervolumes, run_dir / "hypervolume.png", context.objectives)
    knee = knee_point(front, context.objectives)
    failures = trials[trials["state"] == "FAIL"] if not trials.empty else trials
    if complete.empty:
        log(f"no trial of study {context.ledger.study_name!r} completed; {_failure_summary(failures)}")
    confirmation = context.ledger.study.user_attrs.get(CONFIRMATION)
    recommendations = recommended_plans(
        front, standards, reference, knee, context.target.quality.kind, noise=noise, confirmation=confirmation
    )
    cost = search_cost(search_runs(context.ledger.study), trials, torch_device_type(context.target))
    speedup = best_speedup(recommendations)
    cost_file = {**cost.as_dict(), "best_speedup_vs_reference": speedup}
    write_atomically(run_dir / COST_FILE, lambda path: path.write_text(json.dumps(cost_file, indent=1)))
    real_data = context.target.real_images is not None
    notes = [
        cannot_tell_sentence(noise.samples, real_data) if noise and noise.cannot_tell_apart(front) else "",
        reference_gap_sentence(
            noise, reference_is_stochastic(context.target), str((reference or {}).get("reference") or "the reference")
        ),
        *recommendation_ties(recommendations, noise),
        diversity_sentence(front, reference),
    ]
    summary = {
        "model": f"{context.target.name} ({context.target.path}), weights hash {context.target.content_hash[:16]}",
        "quality": context.target.quality.description + context.judge.reference_set_text(),
        "samples per candidate": f"{context.judge.samples} (seed {context.judge.seeds.seed})",
        "space": context.space.source,
        "optimizer": str(context.config.optimizer.name),
        "objectives": ", ".join(context.objectives),
        "trials": f"{len(trials)} ({len(complete)} complete, {len(failures)} failed)",
        "FID floor": floor["sentence"] if floor else floor_note or "not measured (no trial completed)",
        "noise": noise.method() if noise else "no FID figures to compare",
        "limits applied": describe_limits(limits),
        "search cost": cost.sentence() + (f"; best speed-up found {speedup:.2f}x" if speedup else ""),
        **({"plans without a recipe here": _without_recipe(without_artifacts, run_dir)} if without_artifacts else {}),
        "front": f"{len(front)} plans"
        + (f"; knee point: trial {int(front.iloc[knee]['trial'])}" if knee is not None else "")
        + ("" if not complete.empty else f"; no trial completed: {_failure_summary(failures)}"),
        "latency": f"median of {context.config.cost.repeats} calls at batch {context.config.cost.batch_size} "
        f"after {context.config.cost.warmup} warm-up calls",
        "latency confirmation": confirmation_sentence(confirmation)
        if context.config.cost.get("confirm", True)
        else "off (cost.confirm=false): each plan's latency is the one timed when its first trial ran",
    }
    loaded = shared_load_sentence(context.ledger.trials_frame(limits, confirmed=False))
    if loaded:
        summary["shared load"] = loaded
    write_html(
        run_dir / "index.html",
        f"autoaccel: {context.ledger.study_name}",
        summary,
        front,
        standards,
        reference,
        grids,
        failures,
        recommendations,
        notes=[note for note in notes if note],
        quality_figures=figures,
        cost=cost_beside_speedup(cost, speedup),
    )
    if context.config.report.wandb:
        from omegaconf import OmegaConf

        from autoaccel.report.wandb_report import log_run

        mode = log_run(
            run_dir,
            context.ledger.study_name,
            OmegaConf.to_container(context.config),
            trials,
            front,
            reference,
            hypervolumes,
            grids,
            project=str(context.config.report.wandb_project),
            objectives=tuple(context.objectives),
            recommendations=tuple(recommendation_line(item) for item in recommendations),
        )
        log(
            f"W&B run written ({mode}) under {run_dir / 'wandb'}"
            + ("; upload it with `wandb sync`" if mode == "offline" else "")
        )
    return run_dir / "index.html"


def torch_device_type(target) -> str:
    """The device type the target's denoiser runs on (``cuda``, ``cpu``)."""
    return str(getattr(target.denoiser.device, "type", target.denoiser.device)).split(":")[0]


def _with_trial_intervals(trials: pd.DataFrame, compared: pd.DataFrame) -> pd.DataFrame:
    """trials.csv with the interval columns of the trials the report compared (front, standard configurations)."""
    if trials.empty or compared.empty:
        return trials.assign(**{column: math.nan for column in INTERVAL_COLUMNS}) if not trials.empty else trials
    intervals = compared.drop_duplicates("trial").set_index("trial")[INTERVAL_COLUMNS]
    return trials.join(intervals, on="trial")


def _without_recipe(trials: set[int], run_dir: Path) -> str:
    numbers = ", ".join(str(number) for number in sorted(trials))
    return (
        f"trial {numbers}: their artifacts are not in {run_dir / ARTIFACTS_DIR} (a study shared by several machines: "
        "the machine that ran them keeps them); copy them there and run report again"
    )


def _remove_stale(folder: Path, pattern: str, current: set[str]) -> None:
    """Removes files of front points that are no longer on the front: a run folder never mixes two fronts."""
    for path in folder.glob(pattern):
        if f"{folder.name}/{path.name}" not in current:
            path.unlink(missing_ok=True)


def _failure_summary(failures: pd.DataFrame, shown: int = 3) -> str:
    """The most frequent failure reasons, for a study where nothing completed."""
    if failures.empty or "failure" not in failures:
        return "no trial has finished yet"
    counts = failures["failure"].fillna("").replace("", "no reason recorded").value_counts()
    reasons = "; ".join(f"{count}x {reason}" for reason, count in counts.head(shown).items())
    return f"failure reasons: {reasons}"
