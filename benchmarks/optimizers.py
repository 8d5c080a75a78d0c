"""``python -m autoaccel bench optimizers``: hypervolume against evaluations for every backend.

(a) the synthetic problem (known front, our space's shape), (b) the embedded model's sampler space at low
fidelity with objectives (fid, nfe), each over several seeds, all through the same loop and ledger code
as a real search. Random search is the baseline; the question is how many evaluations each backend needs to
reach what random search reaches with its whole budget. (c) multi-fidelity scoring against scoring every
candidate at full fidelity: evaluation time, images generated and the final front's hypervolume.
``bench.parts=[c]`` reruns one part; the sections of the others are kept as they are in optimizers.md.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from autoaccel.errors import ConfigError
from autoaccel.front.objectives import objective_directions
from autoaccel.front.pareto import hypervolume
from autoaccel.measure.evaluator import CostSettings, Measurement
from autoaccel.optimizers.base import make_backend, registered_backends
from autoaccel.search.fidelity import FidelityLadder
from autoaccel.search.ledger import Ledger, default_storage
from autoaccel.search.loop import LoopBudget, run_search
from autoaccel.testing.synthetic import SyntheticEvaluator, synthetic_space, true_front

OBJECTIVES = ["fid", "nfe"]
CHEAP_COST = CostSettings(batch_size=1, warmup=0, repeats=1)  # only (fid, nfe) are objectives here


def _hypervolume_curve(values: list[tuple[float, float] | None], reference: np.ndarray, scale: np.ndarray) -> list:
    """HV of the points seen after each evaluation (None = failed), on objectives divided by ``scale``."""
    seen, curve = [], []
    for point in values:
        if point is not None and all(np.isfinite(point)):
            seen.append(np.asarray(point) / scale)
        curve.append(hypervolume(np.array(seen), reference / scale) if seen else 0.0)
    return curve


def _run_backend(name: str, seed: int, evaluations: int, space, evaluator, options: dict) -> list:
    directions = objective_directions(OBJECTIVES)
    backend = make_backend(name, space, {**options, "seed": seed, "directions": directions}, len(OBJECTIVES))
    ledger = Ledger(None, f"{name}-{seed}", directions, sampler=backend.sampler())
    run_search(ledger, backend, evaluator, space, OBJECTIVES, LoopBudget(evaluations, None, []))
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
    """Runs the parts ``bench.parts`` names and writes them into optimizers.md, keeping the sections of parts
    not rerun as they were."""
    bench_dir = Path(config.bench.dir)
    bench_dir.mkdir(parents=True, exist_ok=True)
    parts = set(config.bench.parts)
    unknown = parts - set(PARTS)
    if unknown:
        raise ConfigError(f"bench.parts={sorted(parts)} is not valid; choose among {list(PARTS)}")
    names = list(config.bench.optimizers) or registered_backends()
    seeds = list(range(int(config.bench.optimizer_seeds)))
    sections: dict[str, list[str]] = {}
    if "a" in parts:
        sections[HEADER] = [
            "# Optimizers benchmark: hypervolume against evaluations",
            "",
            f"Generated by `python -m autoaccel bench optimizers`: {len(seeds)} seeds per backend, every evaluation "
            "through autoaccel's own loop and ledger (optuna storage), objectives (quality, cost) minimised.",
            "",
        ]
        sections["a"] = _synthetic_section(config, names, seeds, log, bench_dir)
    if "b" in parts and int(config.bench.model_evaluations) > 0:
        sections["b"] = _model_section(config, names, seeds[: int(config.bench.model_seeds)], log, bench_dir)
    if "c" in parts and int(config.bench.fidelity_trials) > 0:
        sections["c"] = _fidelity_section(config, log)
    path = bench_dir / "optimizers.md"
    existing = path.read_text() if path.exists() else ""
    path.write_text(merge_sections(existing, sections))
    return path


PARTS = ("a", "b", "c")
HEADER = "header"


def split_sections(text: str) -> dict[str, list[str]]:
    """The report's lines by part: the header before the first section, then each ``## (x) ...`` section."""
    sections: dict[str, list[str]] = {HEADER: []}
    current = HEADER
    for line in text.splitlines():
        if line.startswith("## (") and ")" in line:
            current = line[4 : line.index(")")]
            sections[current] = []
        sections[current].append(line)
    return sections


def merge_sections(existing: str, rerun: dict[str, list[str]]) -> str:
    """``existing`` with the sections in ``rerun`` replaced (or added), in part order; the others kept as
    they were, so one part can be rerun alone."""
    sections = split_sections(existing)
    sections.update(rerun)
    order = [HEADER, *PARTS, *sorted(set(sections) - {HEADER, *PARTS})]
    lines = []
    for key in order:
        body = list(sections.get(key, []))
        while body and not body[-1].strip():
            body.pop()
        if body:
            lines += [*body, ""]
    return "\n".join(lines)


def _synthetic_section(config: DictConfig, names: list[str], seeds: list[int], log, bench_dir: Path) -> list[str]:
    started = time.perf_counter()
    evaluations = int(config.bench.synthetic_evaluations)
    front = true_front()
    reference = front.max(axis=0) * 1.1 + np.array([1.0, 0.0])
    scale = np.ones(2)
    optimum = hypervolume(front, reference)
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
    lines = _section("(a) synthetic problem with a known front", synthetic, checkpoints, 50, evaluations, optimum, log)
    return lines + ["![synthetic](optimizers_synthetic.png)", ""]


def _model_section(config: DictConfig, names: list[str], seeds: list[int], log, bench_dir: Path) -> list[str]:
    from autoaccel.search.run import evaluator_from_config, load_target
    from autoaccel.space.spaces import load_space

    target = load_target(config)
    space = load_space("sampler").for_target(target.capabilities)
    samples = int(config.bench.model_samples)
    evaluator = evaluator_from_config(config, target, space, samples=samples, cost=CHEAP_COST)
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


@dataclass(frozen=True)
class FidelityArm:
    """One way of scoring candidates: every one at the top level (``levels`` of one), or up a ladder."""

    label: str
    levels: tuple[int, ...]
    z: float = 1.0
    rule: str = "paired"

    @classmethod
    def parse(cls, text: str) -> FidelityArm:
        """``rule:levels:z``, e.g. ``paired:64-512:1``: one bench.fidelity_variants entry."""
        try:
            rule, levels, z = text.split(":")
            return cls(f"{rule}, z={float(z):g}", tuple(int(level) for level in levels.split("-")), float(z), rule)
        except ValueError:
            raise ConfigError(
                f"bench.fidelity_variants entry {text!r} is not valid; write rule:levels:z, e.g. paired:64-512:1"
            ) from None

    def ladder(self) -> FidelityLadder | None:
        return FidelityLadder(list(self.levels), OBJECTIVES, self.z, self.rule) if len(self.levels) > 1 else None


class ChargedEvaluator:
    """Scores each (plan, sample count) once and charges its measured seconds to every run that asks for it
    again: all runs are compared on the same measurements, so a busy machine cannot favour one of them.
    Counts the seconds, images and scorings per level of the run in hand."""

    def __init__(self, evaluator) -> None:
        self.evaluator = evaluator
        self.measured: dict[tuple[str, int | None], Measurement] = {}
        self.reset()

    def __getattr__(self, name: str):
        return getattr(self.evaluator, name)

    def reset(self) -> None:
        self.seconds, self.images, self.scored = 0.0, 0, Counter()

    def evaluate(self, candidate, samples: int | None = None) -> Measurement:
        samples = samples or self.evaluator.judge.samples
        key = (self.evaluator.plan_identity(candidate), samples)
        if key not in self.measured:
            self.measured[key] = self.evaluator.evaluate(candidate, samples)
        measurement = copy.deepcopy(self.measured[key])
        self.seconds += measurement.details.get("seconds", 0.0)
        self.images += samples
        self.scored[samples] += 1
        return measurement


@dataclass
class ArmResult:
    seconds: float
    images: int
    scored: dict[int, int]
    front_points: np.ndarray  # (fid, nfe) of the run's full-fidelity feasible trials


def _fidelity_run(config: DictConfig, evaluator: ChargedEvaluator, space, arm: FidelityArm, seed: int) -> ArmResult:
    """One NSGA-II search as ``search`` runs it (warm starts first), scored as ``arm`` says."""
    from autoaccel.config import compose_config
    from autoaccel.search.loop import standard_configurations

    directions = objective_directions(OBJECTIVES)
    options = OmegaConf.to_container(compose_config(["optimizer=optuna_nsga2", f"seed={seed}"]).optimizer)
    backend = make_backend("optuna_nsga2", space, {**options, "directions": directions}, len(OBJECTIVES))
    trials = int(config.bench.fidelity_trials)
    with tempfile.TemporaryDirectory() as folder:
        ledger = Ledger(default_storage(Path(folder)), "fidelity", directions, sampler=backend.sampler())
        ledger.enqueue_warm_start(standard_configurations(space, list(config.budget.warm_start_steps))[:trials], True)
        evaluator.reset()
        run_search(ledger, backend, evaluator, space, OBJECTIVES, LoopBudget(trials, None, []), ladder=arm.ladder())
        frame = ledger.trials_frame()
    complete = frame[(frame["state"] == "COMPLETE") & frame["feasible"].astype(bool)]
    points = complete[OBJECTIVES].to_numpy(dtype=float)
    return ArmResult(evaluator.seconds, evaluator.images, dict(evaluator.scored), points)


def _fidelity_arms(config: DictConfig) -> list[FidelityArm]:
    """Single fidelity, the default rule on bench.fidelity_levels, then the variants to compare it with."""
    levels = tuple(int(level) for level in config.bench.fidelity_levels)
    arms = [
        FidelityArm("single fidelity", levels[-1:]),
        FidelityArm(f"multi-fidelity (paired, z={float(config.fidelity.z):g})", levels, float(config.fidelity.z)),
    ]
    arms += [FidelityArm.parse(str(text)) for text in config.bench.fidelity_variants]
    tops = {arm.levels[-1] for arm in arms}
    if len(tops) > 1:
        raise ConfigError(f"bench.fidelity_levels and bench.fidelity_variants must end at one level (got {tops})")
    return arms


def _fidelity_section(config: DictConfig, log) -> list[str]:
    """The same NSGA-II search on the embedded model, every candidate scored at full fidelity or up a fidelity
    ladder, over several optimizer seeds; compares evaluation time, images and the final front's hypervolume."""
    from autoaccel.search.run import evaluator_from_config, load_target
    from autoaccel.space.spaces import load_space

    arms = _fidelity_arms(config)
    top = arms[0].levels[-1]
    target = load_target(config)
    space = load_space("sampler").for_target(target.capabilities, **target.limits)
    evaluator = evaluator_from_config(config, target, space, samples=top, cost=CHEAP_COST)
    _warm_up(evaluator, space, sorted({level for arm in arms for level in arm.levels}), config)
    charged = ChargedEvaluator(evaluator)
    seeds = list(range(int(config.bench.fidelity_seeds)))
    results: dict[str, list[ArmResult]] = {arm.label: [] for arm in arms}
    for seed in seeds:
        for arm in arms:
            results[arm.label].append(_fidelity_run(config, charged, space, arm, seed))
            done = results[arm.label][-1]
            log(f"fidelity: seed {seed}, {arm.label}: {done.seconds:.0f}s, {done.images} images")
    return _fidelity_lines(config, arms, results, seeds)


def _warm_up(evaluator, space, levels: list[int], config: DictConfig) -> None:
    """Makes each level's one-off references (ODE solutions, feature caches) before anything is timed, so no
    run pays for them."""
    from autoaccel.plan.candidate import Candidate
    from autoaccel.search.loop import standard_configurations

    _, params = standard_configurations(space, list(config.budget.warm_start_steps))[0]
    for level in levels:
        evaluator.judge_for(level).ode_images()
        evaluator.evaluate(Candidate.from_params(space.complete(params)), level)


def _fidelity_hypervolumes(results: dict[str, list[ArmResult]]) -> dict[str, list[float]]:
    """Each run's full-fidelity hypervolume on (fid, nfe) divided by the 90th percentile of every run's points."""
    union = np.vstack([run.front_points for runs in results.values() for run in runs if len(run.front_points)])
    reference = np.percentile(union, 90, axis=0)
    return {
        label: [hypervolume(run.front_points / reference, np.ones(2)) for run in runs]
        for label, runs in results.items()
    }


def _fidelity_lines(config, arms: list[FidelityArm], results: dict[str, list[ArmResult]], seeds) -> list[str]:
    hypervolumes = _fidelity_hypervolumes(results)
    single = arms[0].label
    base_seconds = statistics.median(run.seconds for run in results[single])
    base_images = statistics.median(run.images for run in results[single])
    base_hv = statistics.median(hypervolumes[single])
    lines = [
        "## (c) multi-fidelity scoring on the embedded model",
        "",
        f"NSGA-II, {config.bench.fidelity_trials} trials (warm starts first), objectives (fid, nfe), sampler space, "
        f"optimizer seeds {seeds}; medians over seeds. Every (plan, sample count) is scored once and its measured "
        "seconds are charged to every run that scores it, so all runs are compared on the same measurements; "
        "images generated is the machine-independent cost. Hypervolume of each run's full-fidelity "
        f"({arms[0].levels[-1]} samples) feasible points, reference at the 90th percentile of all runs' points. "
        "Ratios are to single fidelity's medians. The second row is the default rule "
        f"(`fidelity.levels={list(arms[1].levels)}`, `fidelity.z={arms[1].z:g}`); the rows after it are the "
        "variants tried (`bench.fidelity_variants`).",
        "",
        "| run | levels | evaluation time (s) | time ratio | images generated | images ratio | "
        "candidates scored per level | full-fidelity hypervolume | hypervolume ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        runs = results[arm.label]
        seconds = statistics.median(run.seconds for run in runs)
        images = statistics.median(run.images for run in runs)
        hypervolume = statistics.median(hypervolumes[arm.label])
        per_level = ", ".join(
            f"{level}: {statistics.median(run.scored.get(level, 0) for run in runs):g}" for level in arm.levels
        )
        lines.append(
            f"| {arm.label} | {list(arm.levels)} | {seconds:.0f} | {seconds / max(base_seconds, 1e-9):.2f} | "
            f"{images:.0f} | {images / max(base_images, 1):.2f} | {per_level} | {hypervolume:.4f} | "
            f"{hypervolume / max(base_hv, 1e-12):.3f} |"
        )
    default = arms[1].label
    seconds = statistics.median(run.seconds for run in results[default])
    images = statistics.median(run.images for run in results[default])
    hypervolume = statistics.median(hypervolumes[default])
    lines += [
        "",
        f"The default rule spent {1 - seconds / max(base_seconds, 1e-9):.0%} less evaluation time and generated "
        f"{1 - images / max(base_images, 1):.0%} fewer images; its final hypervolume is "
        f"{hypervolume / max(base_hv, 1e-12):.3f}x the single-fidelity run's.",
        "",
    ]
    return lines
