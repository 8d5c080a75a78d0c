"""``python -m autoaccel bench optimizers``: hypervolume against evaluations for every backend.

(a) the synthetic problem (known front, our space's shape), (b) the embedded model's sampler space at low
fidelity with objectives (fid, nfe), each over several seeds, all through the same loop and ledger code
as a real search. Random search is the baseline; the question is how many evaluations each backend needs to
reach what random search reaches with its whole budget.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from autoaccel.bench.synthetic import SyntheticEvaluator, synthetic_space, true_front
from autoaccel.ledger import Ledger
from autoaccel.loop import LoopBudget, run_search
from autoaccel.objectives import objective_directions
from autoaccel.optimizers.base import make_backend, registered_backends

OBJECTIVES = ["fid", "nfe"]


def _hypervolume_curve(values: list[tuple[float, float] | None], reference: np.ndarray, scale: np.ndarray) -> list:
    """HV of the points seen after each evaluation (None = failed), on objectives divided by ``scale``."""
    from pymoo.indicators.hv import HV

    indicator = HV(ref_point=reference / scale)
    seen, curve = [], []
    for point in values:
        if point is not None and all(np.isfinite(point)):
            seen.append(np.asarray(point) / scale)
        curve.append(float(indicator(np.array(seen))) if seen else 0.0)
    return curve


def _run_backend(name: str, seed: int, evaluations: int, space, evaluator, options: dict) -> list:
    directions = objective_directions(OBJECTIVES)
    backend = make_backend(name, space, {**options, "seed": seed, "directions": directions}, len(OBJECTIVES))
    ledger = Ledger(None, f"{name}-{seed}", directions, sampler=backend.sampler())
    run_search(ledger, backend, evaluator, space, OBJECTIVES, LoopBudget(evaluations, None, {}))
    points = []
    for frozen in sorted(ledger.study.trials, key=lambda trial: trial.number):
        points.append(tuple(frozen.values) if frozen.values else None)
    return points


def _summary_rows(curves: dict[str, list[list[float]]], checkpoints: list[int]) -> list[str]:
    rows = []
    for name, runs in curves.items():
        cells = []
        for checkpoint in checkpoints:
            values = [run[min(checkpoint, len(run)) - 1] for run in runs]
            quartiles = np.percentile(values, [25, 75])
            cells.append(f"{statistics.median(values):.4f} [{quartiles[0]:.4f}, {quartiles[1]:.4f}]")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def _evaluations_to_reach(curves: dict[str, list[list[float]]], level: float) -> dict[str, float]:
    """Median (over seeds) number of evaluations a backend needed to reach ``level`` (inf if never)."""
    reached = {}
    for name, runs in curves.items():
        counts = []
        for run in runs:
            hits = [index + 1 for index, value in enumerate(run) if value >= level - 1e-12]
            counts.append(hits[0] if hits else float("inf"))
        reached[name] = statistics.median(counts)
    return reached


def _plot(curves: dict[str, list[list[float]]], title: str, path: Path, optimum: float | None) -> None:
    from autoaccel.report.plots import new_figure, save_figure

    figure, axes = new_figure((8, 5))
    for name, runs in curves.items():
        matrix = np.array([run + [run[-1]] * (max(map(len, runs)) - len(run)) for run in runs])
        x = np.arange(1, matrix.shape[1] + 1)
        axes.plot(x, np.median(matrix, axis=0), label=name, linewidth=2 if name == "random" else 1)
        axes.fill_between(x, np.percentile(matrix, 25, axis=0), np.percentile(matrix, 75, axis=0), alpha=0.1)
    if optimum is not None:
        axes.axhline(optimum, color="k", linestyle="--", linewidth=0.8, label="true front")
    axes.set_xlabel("evaluations")
    axes.set_ylabel("hypervolume")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    save_figure(figure, path)


def _section(title: str, curves, checkpoints, budget, baseline_level_at, optimum, log) -> list[str]:
    lines = [
        f"## {title}",
        "",
        "Median hypervolume [25th, 75th percentile] over seeds after N evaluations.",
        "",
        "| backend | " + " | ".join(f"N={n}" for n in checkpoints) + " |",
        "|---|" + "---|" * len(checkpoints),
    ]
    lines += _summary_rows(curves, checkpoints)
    if "random" in curves:
        level = statistics.median(run[min(baseline_level_at, len(run)) - 1] for run in curves["random"])
        reached = _evaluations_to_reach(curves, level)
        best = min((name for name in reached if name != "random"), key=lambda name: reached[name], default=None)
        lines += [
            "",
            f"Random search's median hypervolume after {baseline_level_at} evaluations: {level:.4f}"
            + (f" (true front: {optimum:.4f})" if optimum is not None else "")
            + ".",
            "Median evaluations each backend needed to reach it: "
            + ", ".join(f"{name} {count:g}" for name, count in sorted(reached.items(), key=lambda kv: kv[1]))
            + ".",
        ]
        if best is not None:
            verdict = "meets" if reached[best] <= budget else "misses"
            lines.append(f"Best: {best} ({reached[best]:g} evaluations): {verdict} the target of at most {budget}.")
            log(lines[-1])
    return lines + [""]


def run_optimizers_benchmark(config: DictConfig, log=print) -> Path:
    bench_dir = Path(config.bench.dir)
    bench_dir.mkdir(parents=True, exist_ok=True)
    names = list(config.bench.optimizers) or registered_backends()
    seeds = list(range(int(config.bench.optimizer_seeds)))
    started = time.perf_counter()

    evaluations = int(config.bench.synthetic_evaluations)
    front = true_front()
    reference = front.max(axis=0) * 1.1 + np.array([1.0, 0.0])
    scale = np.ones(2)
    from pymoo.indicators.hv import HV

    optimum = float(HV(ref_point=reference)(front))
    space, evaluator = synthetic_space(), SyntheticEvaluator()
    synthetic = {}
    for name in names:
        evaluations_for = (
            min(evaluations, int(config.bench.slow_backend_evaluations)) if name == "optuna_gp" else evaluations
        )
        synthetic[name] = [
            _hypervolume_curve(_run_backend(name, seed, evaluations_for, space, evaluator, {}), reference, scale)
            for seed in seeds
        ]
        log(f"synthetic: {name} done ({time.perf_counter() - started:.0f}s)")
    _plot(synthetic, "synthetic problem (known front)", bench_dir / "optimizers_synthetic.png", optimum)
    checkpoints = [n for n in (25, 50, 100, 200) if n <= evaluations]
    lines = [
        "# Optimizers benchmark: hypervolume against evaluations",
        "",
        f"Generated by `python -m autoaccel bench optimizers`: {len(seeds)} seeds per backend, every evaluation "
        "through autoaccel's own loop and ledger (optuna storage), objectives (quality, cost) minimised.",
        "",
    ]
    lines += _section("(a) synthetic problem with a known front", synthetic, checkpoints, 50, evaluations, optimum, log)
    lines += ["![synthetic](optimizers_synthetic.png)", ""]

    if int(config.bench.model_evaluations) > 0:
        lines += _model_section(config, names, seeds[: int(config.bench.model_seeds)], log, bench_dir)
    if int(config.bench.fidelity_trials) > 0:
        lines += _fidelity_section(config, log, bench_dir)
    path = bench_dir / "optimizers.md"
    path.write_text("\n".join(lines))
    return path


def _model_section(config: DictConfig, names: list[str], seeds: list[int], log, bench_dir: Path) -> list[str]:
    from autoaccel.measure.evaluator import CostSettings, Evaluator
    from autoaccel.measure.reference import QualityJudge
    from autoaccel.run import load_target
    from autoaccel.space import load_space

    target = load_target(config)
    space = load_space("sampler").for_target(target.capabilities)
    samples = int(config.bench.model_samples)
    judge = QualityJudge(target, samples, int(config.quality.seed), Path(config.cache_dir), samples)
    evaluator = Evaluator(target, space, judge, CostSettings(batch_size=1, warmup=0, repeats=1))
    evaluations = int(config.bench.model_evaluations)
    model_names = [name for name in names if name in set(config.bench.model_optimizers)] or names
    runs = {
        name: [_run_backend(name, seed, evaluations, space, evaluator, {}) for seed in seeds] for name in model_names
    }
    log("model space done")
    finite = np.array(
        [
            point
            for name_runs in runs.values()
            for run in name_runs
            for point in run
            if point is not None and all(np.isfinite(point))
        ]
    )
    reference = np.percentile(finite, 90, axis=0)  # ignore the worst tenth (e.g. FID 50 at 4 DDIM steps)
    scale = np.maximum(reference, 1e-9)
    curves = {
        name: [_hypervolume_curve(run, reference, scale) for run in name_runs] for name, name_runs in runs.items()
    }
    _plot(
        curves,
        f"embedded model, sampler space, {samples} samples, (fid, nfe)",
        bench_dir / "optimizers_model.png",
        None,
    )
    checkpoints = [n for n in (10, 25, 50, 100) if n <= evaluations]
    return [
        *_section(
            f"(b) embedded model, sampler space at low fidelity ({samples} samples per candidate)",
            curves,
            checkpoints,
            max(10, evaluations // 4),
            evaluations,
            None,
            log,
        ),
        "Reference point: the 90th percentile of every evaluated (fid, nfe) over all runs; objectives divided by it.",
        "",
        "![model](optimizers_model.png)",
        "",
    ]


def _fidelity_section(config: DictConfig, log, bench_dir: Path) -> list[str]:
    """The same NSGA-II search on the embedded model with every candidate scored at full fidelity, and with
    the fidelity ladder; compares evaluation time and the final full-fidelity front's hypervolume."""
    from pymoo.indicators.hv import HV

    from autoaccel.config import compose_config
    from autoaccel.run import open_run
    from autoaccel.search import search

    levels = list(config.bench.fidelity_levels)
    runs_dir = bench_dir / "runs"
    fronts, seconds, counts = {}, {}, {}
    for label, extra in (
        ("single fidelity", []),
        ("multi-fidelity", [f"fidelity.levels=[{','.join(map(str, levels))}]"]),
    ):
        study = "bench-fidelity-" + label.split()[0].replace("-", "")
        run_config = compose_config(
            [
                f"study_name={study}",
                f"report.dir={runs_dir}",
                f"quality.samples={levels[-1]}",
                f"budget.trials={config.bench.fidelity_trials}",
                "objectives=[fid,nfe]",
                "optimizer=optuna_nsga2",
                f"seed={config.seed}",
                f"target.device={config.target.device}",
                "quiet=true",
                *extra,
            ]
        )
        search(run_config, log=lambda message: None)
        trials = open_run(runs_dir / study).ledger.trials_frame()
        complete = trials[(trials["state"] == "COMPLETE") & trials["feasible"].astype(bool)]
        fronts[label] = complete[["fid", "nfe"]].to_numpy(dtype=float)
        seconds[label] = float(trials["seconds"].fillna(0).sum())
        counts[label] = {
            level: int(trials[f"fid@{level}"].notna().sum()) if f"fid@{level}" in trials else 0 for level in levels
        }
        log(f"fidelity: {label} done, {seconds[label]:.0f}s of evaluation")
    union = np.vstack(list(fronts.values()))
    reference = np.percentile(union, 90, axis=0)
    indicator = HV(ref_point=np.ones(2))
    hypervolume = {
        label: float(indicator(points / reference)) if len(points) else 0.0 for label, points in fronts.items()
    }
    lines = [
        "## (c) multi-fidelity scoring on the embedded model",
        "",
        f"NSGA-II, {config.bench.fidelity_trials} trials, objectives (fid, nfe), sampler space; multi-fidelity "
        f"scores every candidate on {levels[0]} samples and promotes along {levels}. Hypervolume of the "
        f"full-fidelity ({levels[-1]} samples) feasible points, reference at the 90th percentile of both runs.",
        "",
        "| run | evaluation time (s) | candidates scored per level | full-fidelity hypervolume |",
        "|---|---|---|---|",
    ]
    for label in fronts:
        per_level = (
            ", ".join(f"{level}: {count}" for level, count in counts[label].items() if count) or f"{levels[-1]}: all"
        )
        lines.append(f"| {label} | {seconds[label]:.0f} | {per_level} | {hypervolume[label]:.4f} |")
    saving = 1 - seconds["multi-fidelity"] / max(seconds["single fidelity"], 1e-9)
    lines += [
        "",
        f"Multi-fidelity spent {saving:.0%} less evaluation time; its final hypervolume is "
        f"{hypervolume['multi-fidelity'] / max(hypervolume['single fidelity'], 1e-12):.2f}x the "
        "single-fidelity run's.",
        "",
    ]
    return lines
