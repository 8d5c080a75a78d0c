"""``python -m autoaccel bench schedules target=digits_t2i`` (or ``digits_dit``, or any pipeline folder): found plans
against the pipeline's own default call and against the standard configurations.

Two searches: one per NFE with the step count pinned (guided models make two denoiser calls per step, so NFE 8
is 4 guided steps), and one over the whole space for the fastest plan within 1.25x of the default call's FID
(``budget.max_fid_ratio``). Every found plan, the standard configurations and the default call are then re-scored
on fresh seed sets, so a winner's FID is not the luck of the seeds it was picked on; latencies are measured side
by side in this one process (one cost cache) at the same batch size and given as speed-ups over the default call.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from autoaccel.plan.candidate import Candidate
from autoaccel.search.loop import standard_configurations
from autoaccel.techniques.base import target_limits
from autoaccel.util.resources import resource_dir
from benchmarks.common import mean_std, one_level_unless

FID_RATIO = 1.25  # the quality budget of the fastest-plan search: times the default call's FID
ADHERENCE_POINTS = 2.0  # how far below the default call's adherence a found plan may be, in percentage points
SPEEDUP_TARGET = 8.0
EQUAL_NFE_TARGET = 0.7  # found FID / best standard FID at equal NFE <= 8


def pinned_space(space_name: str, steps: int, folder: Path) -> Path:
    """The target's sampler space with the step count fixed: a fixed-NFE search."""
    document = yaml.safe_load((resource_dir("search_spaces") / f"{space_name}.yaml").read_text())
    document["name"] = f"{space_name}-steps{steps}"
    document["dimensions"]["timesteps.steps"] = {"type": "int", "low": steps, "high": steps}
    solver = document["dimensions"].get("solver.name")
    if solver:  # one denoiser call per step, so NFE is what was pinned
        solver["choices"] = [name for name in solver["choices"] if name not in ("heun", "flow_heun")]
    path = folder / f"{document['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _search(config: DictConfig, runs_dir: Path, study: str, space: Path, extra: list[str], log) -> Path:
    from autoaccel.cli.search_command import search
    from autoaccel.config import compose_config

    run_config = compose_config(
        [
            f"target={config.target.name}",
            *([f"target.path={config.target.path}"] if config.target.get("path") else []),
            f"space={space.resolve()}",
            f"study_name={study}",
            f"report.dir={runs_dir}",
            f"budget.trials={config.bench.trials}",
            f"quality.samples={config.quality.samples}",
            f"quality.seed={config.quality.seed}",
            f"quality.ode_steps={config.quality.ode_steps}",
            f"target.device={config.target.device}",
            f"cost.batch_size={config.cost.batch_size}",
            f"cost.repeats={config.cost.repeats}",
            f"seed={config.seed}",
            f"optimizer={config.optimizer.name}",
            f"cache_dir={config.cache_dir}",
            "quiet=true",
            *one_level_unless(extra),
            *extra,
        ]
    )
    search(run_config, log=log)
    return runs_dir / study


def _best(run_dir: Path, limits: bool) -> tuple[int, dict] | None:
    """The found plan of a run: the best FID (fixed-NFE runs), or the fastest within the run's limits."""
    from autoaccel.front.limits import limits_in_force
    from autoaccel.front.pareto import choose_within, front_frame, front_numbers
    from autoaccel.search.ledger import reference_row
    from autoaccel.search.run import open_run

    context = open_run(run_dir)
    budget_limits = limits_in_force(context.config.budget, reference_row(context.ledger.study))
    trials = context.ledger.trials_frame(budget_limits)
    complete = trials[trials["state"] == "COMPLETE"]
    if complete.empty:
        return None
    if limits:
        numbers = front_numbers(trials, context.objectives)
        choice = choose_within(front_frame(trials, numbers), budget_limits, "latency_ms")
        row = choice.row if choice.row is not None else choice.closest
    else:
        row = complete.sort_values("fid").iloc[0]
    number = int(row["trial"])
    return number, context.ledger.trial(number).user_attrs["candidate"]


def run_default_call_benchmark(config: DictConfig, log=print) -> Path:
    from autoaccel.search.run import describe_reference, evaluator_from_config, load_target
    from autoaccel.space.choice import resolve_space_name
    from autoaccel.space.spaces import load_space

    target = load_target(config)
    space_name = resolve_space_name(config)
    guidance = target.reference_call.guidance_scale if target.conditions.guidable else 1.0
    calls = 2 if guidance != 1.0 and target.conditions.paired_guidance else 1  # FLUX.1-dev: guidance is an input
    bench_dir = Path(config.bench.dir)
    runs_dir = bench_dir / "runs" / target.name
    found: dict[str, tuple[int | None, dict]] = {}
    plans: list[tuple[str, dict]] = []
    for nfe in config.bench.nfes:
        steps = max(1, int(nfe) // calls)
        log(f"== {target.name} NFE {nfe} ({steps} steps): searching ({config.bench.trials} trials)")
        space = pinned_space(space_name, steps, runs_dir / "spaces")
        pinned = load_space(str(space)).for_target(target.capabilities, **target_limits(target))
        standards = standard_configurations(pinned, [steps], guidance, target.schedule_family)
        plans += [(label, pinned.complete(params)) for label, params in standards]
        run = _search(config, runs_dir, f"bench-nfe{nfe}", space, [f"budget.warm_start_steps=[{steps}]"], log)
        best = _best(run, limits=False)
        if best is not None:
            found[f"found at NFE {nfe}"] = best
    if target.quality.kind == "real-data":  # a FID ratio to the reference means something only against real data
        log(f"== {target.name}: the fastest plan within {FID_RATIO}x of the default call's FID")
        whole = resource_dir("search_spaces") / f"{space_name}.yaml"
        run = _search(config, runs_dir, "bench-budget", whole, [f"budget.max_fid_ratio={FID_RATIO}"], log)
        best = _best(run, limits=True)
        if best is not None:
            found[f"fastest within {FID_RATIO}x FID"] = best
    else:
        log(f"== {target.name} has no real data (target.data): no FID-ratio search, only fixed-NFE ones")

    space = load_space(space_name).for_target(target.capabilities, **target_limits(target))
    plans += [(label, params) for label, (_, params) in found.items()]
    rows: dict[str, dict] = {"default call": {"metrics": [], "details": None}}
    cost_cache: dict = {}
    for seed in config.bench.confirm_seeds:
        evaluator = evaluator_from_config(config, target, space, seed=int(seed))
        evaluator.cost_cache = cost_cache  # latencies side by side: each structure timed once in this process
        log(f"== confirming on seed set {seed}")
        reference = evaluator.evaluate_reference()
        rows["default call"]["metrics"].append({**reference.metrics, "device": reference.details.get("device")})
        for label, params in plans:
            measurement = evaluator.evaluate(Candidate.from_params(params))
            entry = rows.setdefault(label, {"metrics": [], "details": None, "failures": [], "params": params})
            if measurement.ok:
                entry["metrics"].append(measurement.metrics)
                entry["details"] = measurement.details
            else:
                entry["failures"].append(measurement.failure)
            shown = f"fid {measurement.metrics['fid']:.3f}" if measurement.ok else f"FAILED {measurement.failure}"
            log(f"   {label}: {shown}")
    return write_table(config, bench_dir, target, describe_reference(target), rows, found)


def _summary(metrics: list[dict], key: str) -> tuple[float, float] | None:
    values = [row[key] for row in metrics if key in row and row[key] == row[key]]
    return mean_std(values) if values else None


def _cell(summary: tuple[float, float] | None, scale: float = 1.0, digits: int = 2) -> str:
    if summary is None:
        return ""
    return f"{summary[0] * scale:.{digits}f} ± {summary[1] * scale:.{digits}f}"


MIN_FID = 1e-6  # below this a figure is 0 (a plan identical to what it is scored against): no ratio to it


def _times(value: float, reference: float) -> str:
    """``value / reference`` as "1.23x", or why there is no ratio where the reference figure is 0."""
    return f"{value / reference:.2f}x" if reference > MIN_FID else "(no ratio: the reference's figure is 0)"


def _plumbing_note(target) -> list[str]:
    """A model whose ``autoaccel.json`` says its weights are random (the test kit's tiny pipelines): its table shows
    that the benchmark runs on that pipeline class, and nothing about what a plan does to a trained model."""
    if not target.metadata.get("random_weights"):
        return []
    return [
        "",
        f"**Plumbing only:** `{target.name}` has random weights (its autoaccel.json says so), so these figures "
        "show that every step of the benchmark runs on this pipeline class; they say nothing of how a plan changes "
        "a trained model's images.",
    ]


def write_table(config, bench_dir: Path, target, reference: str, rows: dict, found: dict) -> Path:
    reference_rows = rows["default call"]["metrics"]
    reference_fid = statistics.fmean(row["fid"] for row in reference_rows)
    reference_latency = statistics.median(row["latency_ms"] for row in reference_rows)
    reference_adherence = _summary(reference_rows, "adherence")
    seeds = list(config.bench.confirm_seeds)
    lines = [
        f"# Schedules benchmark on `{target.name}`: found plans vs the default call vs standard configurations",
        "",
        f"Generated by `python -m autoaccel bench schedules target={config.target.name}` (weights "
        f"{target.content_hash[:12]}). The reference: {reference}. Quality: {target.quality.description}; "
        f"{config.quality.samples} samples per seed set, mean ± std over seed sets {seeds} (searches scored on seed "
        f"set {config.quality.seed} only, {config.bench.trials} trials each). Latency: the whole call (text "
        f"encoding, denoising, VAE decode), median of {config.cost.repeats} calls at batch {config.cost.batch_size} "
        f"on {reference_rows[0].get('device', 'this machine') if reference_rows else 'this machine'}, every plan "
        "timed side by side in one process; speed-up = the default call's latency / the plan's.",
        *_plumbing_note(target),
        "",
        "| plan | NFE | FID | adherence (%) | speed-up vs default call | steps | solver | guidance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    best_standard: dict[int, float] = {}
    for label, entry in rows.items():
        metrics = entry["metrics"]
        if not metrics:
            lines.append(f"| {label} | | failed: {entry.get('failures', ['?'])[0]} | | | | | |")
            continue
        nfe = int(statistics.median(row["nfe"] for row in metrics))
        fid = _summary(metrics, "fid")
        latency = statistics.median(row["latency_ms"] for row in metrics)
        details = entry.get("details") or {}
        params = entry.get("params") or {}
        steps = len(details.get("timesteps") or []) or "default"
        solver = params.get("solver.name", "the pipeline's own")
        if params.get("solver.order"):
            solver += f" (order {params['solver.order']})"
        guidance = details.get("guidance_scale", "")
        lines.append(
            f"| {label} | {nfe} | {_cell(fid)} | {_cell(_summary(metrics, 'adherence'), 100, 1)} | "
            f"{reference_latency / latency:.1f}x | {steps} | {solver} | {guidance} |"
        )
        if label != "default call" and not label.startswith(("found", "fastest")):
            best_standard[nfe] = min(best_standard.get(nfe, float("inf")), fid[0])
    for label, (trial, _) in found.items():
        metrics = rows.get(label, {}).get("metrics") or []
        if not metrics:
            continue
        fid = _summary(metrics, "fid")[0]
        nfe = int(statistics.median(row["nfe"] for row in metrics))
        speedup = reference_latency / statistics.median(row["latency_ms"] for row in metrics)
        adherence = _summary(metrics, "adherence")
        line = f"- {label} (search trial {trial}): FID {fid:.2f} = {_times(fid, reference_fid)} the default call's"
        line += f", {speedup:.1f}x faster"
        if adherence and reference_adherence:
            line += f", adherence {100 * (adherence[0] - reference_adherence[0]):+.1f} points"
        if label.startswith("fastest"):
            met = speedup >= SPEEDUP_TARGET and fid <= FID_RATIO * reference_fid
            if adherence and reference_adherence:
                met = met and 100 * (reference_adherence[0] - adherence[0]) <= ADHERENCE_POINTS
            line += (
                f" (target: >= {SPEEDUP_TARGET:g}x, FID <= {FID_RATIO}x, adherence within {ADHERENCE_POINTS:g} "
                f"points: {'met' if met else 'NOT met'})"
            )
        elif nfe in best_standard and best_standard[nfe] > MIN_FID:
            ratio = fid / best_standard[nfe]
            line += f"; {ratio:.2f}x the best standard configuration at NFE {nfe}"
            if nfe <= 8:
                line += f" (target <= {EQUAL_NFE_TARGET}: {'met' if ratio <= EQUAL_NFE_TARGET else 'NOT met'})"
        verdicts.append(line + ".")
    lines += [
        "",
        "## Summary",
        "",
        *verdicts,
        "",
        "FID here is computed with the features named above at a fixed sample count: compare rows with each other, "
        "not with Inception FIDs published elsewhere.",
        "",
    ]
    bench_dir.mkdir(parents=True, exist_ok=True)
    path = bench_dir / f"schedules-{target.name}.md"
    path.write_text("\n".join(lines))
    (bench_dir / f"schedules-{target.name}.config.yaml").write_text(OmegaConf.to_yaml(config))
    return path
