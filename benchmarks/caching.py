"""``python -m autoaccel bench caching``: feature caching against the same sampler uncached, per step count ->
reports/bench/caching.md (caching-<target>.md for another target).

At each step count of ``bench.caching.steps`` (one solver, ``bench.caching.solver``), the uncached plan and, for
every cache method the model takes (``bench.caching.methods``: DeepCache or the static block cache, and on a
transformer diffusers' FirstBlockCache, MagCache, TaylorSeer and Pyramid Attention Broadcast), two cached plans are
scored on the fresh seed sets ``bench.confirm_seeds``: one with the library's published default knobs and one with
knobs calibrated for this model and step count. The calibration is a measurement, not a rule: every knob
combination of the method's grid is scored on the search seed (``quality.seed``), and the fastest one whose FID
stays within ``quality_ratio`` of the uncached plan's there is kept; the confirm seeds never see the choice being
made. A consistency student (``distilled_steps``) is scored cached and not, to answer whether caching pays after
distillation. Latency is measured side by side in this run; speed-up is the uncached plan's latency over the row's.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import DictConfig

from autoaccel.plan.candidate import Candidate
from autoaccel.space.spaces import load_space, parse_space
from autoaccel.techniques.caching import cache_methods
from autoaccel.techniques.caching.deep import depth_limit
from autoaccel.techniques.caching.method import CACHE_METHODS
from benchmarks.common import mean_std, score_on_seed_sets, search_front, seed_set_evaluators

INERT_BELOW = 1.05  # a default-knob row faster than uncached by less than this saves nothing worth having
BROKEN_ABOVE = 1.5  # and one whose FID is past this multiple of the uncached one's is broken


def _space(target):
    """Every technique a row applies (distillation for the student rows, where the model takes it)."""
    techniques = ["caching", "solver", "timesteps"]
    if "distillation" in target.capabilities:
        techniques.insert(0, "distillation")
    return parse_space({"name": "bench_caching", "techniques": techniques, "dimensions": {}})


def sampler_params(config: DictConfig, steps: int) -> dict:
    """The uncached plan at ``steps``: the benchmark's solver at order 2, at the model's default guidance."""
    solver = str(config.bench.caching.solver)
    params = {"caching.method": "none", "timesteps.steps": steps, "solver.name": solver, "solver.guidance": None}
    if solver in ("unipc", "dpmsolver++", "deis"):
        params["solver.order"] = 2
    return params


def cached(params: dict, depth: int, interval: int, warmup: int) -> dict:
    return {
        **params,
        "caching.method": "deep",
        "caching.depth": depth,
        "caching.interval": interval,
        "caching.warmup": warmup,
    }


def methods_compared(config: DictConfig, target) -> list[str]:
    """The cache methods the benchmark compares: ``bench.caching.methods``, or every one the model takes."""
    from autoaccel.errors import ConfigError

    available = [method for method in cache_methods(target.denoiser) if method != "none"]
    wanted = [str(method) for method in config.bench.caching.methods]
    if wanted == ["auto"]:
        return available
    unknown = [method for method in wanted if method not in available]
    if unknown:
        raise ConfigError(
            f"bench.caching.methods={wanted} names {unknown}, which {target.name} does not take; valid: "
            f"{available} (or [auto])"
        )
    return wanted


def method_grid(config: DictConfig, method: str, depth_limit: int) -> list[dict]:
    """The ``caching.*`` settings tried for ``method`` when calibrating it (the method's own benchmark grid)."""
    return CACHE_METHODS[method].bench_grid(config.bench.caching, depth_limit)


def default_knobs(method: str, timesteps: list[float], depth_limit: int = 1) -> tuple[str, dict]:
    """The method's published defaults, as a row label and ``caching.*`` settings."""
    return CACHE_METHODS[method].published_defaults(timesteps, depth_limit)


def schedule_of(evaluator, params: dict) -> list[float]:
    """The timesteps the uncached plan ``params`` runs."""
    pipeline = evaluator.configured_pipeline(Candidate.from_params(params))
    pipeline.set_schedule(pipeline.denoiser.device)
    return [float(step) for step in pipeline.scheduler.timesteps]


def side_by_side(evaluator, entries: list[dict], repeats: int, build=None) -> None:
    """Sets each scored entry's ``latency_ms`` to the median of ``repeats`` deployment calls, the plans timed in
    turn within every repeat (after one warm-up call each), so that machine drift hits them all alike; the calls'
    times stay as ``latency_samples`` (paired across entries by repeat) and their median per stage as ``stage_ms``.
    ``build``: an entry's pipeline, where not ``evaluator``'s of the entry's ``params`` (entries of two spaces)."""
    import statistics

    from autoaccel.measure.latency import timed_call

    scored = [entry for entry in entries if entry["fid"]]
    build = build or (lambda entry: evaluator.configured_pipeline(Candidate.from_params(entry["params"])))
    pipelines = [build(entry) for entry in scored]
    seeds = evaluator.judge.deployment_seeds(evaluator.cost_settings.batch_size)
    on_cuda = str(evaluator.target.denoiser.device).startswith("cuda")
    times: list[list[float]] = [[] for _ in pipelines]
    stages: list[list[dict]] = [[] for _ in pipelines]
    for repeat in range(repeats + 1):
        for index, pipeline in enumerate(pipelines):
            elapsed = timed_call(pipeline, seeds, on_cuda)
            if repeat:
                times[index].append(elapsed)
                stages[index].append(dict(pipeline.stage_ms))
    for entry, measured, staged in zip(scored, times, stages):
        entry["latency_ms"] = statistics.median(measured)
        entry["latency_samples"] = measured
        entry["stage_ms"] = {name: statistics.median(stage.get(name, 0.0) for stage in staged) for name in staged[0]}


def calibrate(config: DictConfig, evaluator, base: dict, grids: dict[str, list[dict]], log) -> tuple[dict, list]:
    """Per method, the fastest grid knobs within the quality ratio on the search seed (None where none is), and
    every grid row as scored there (latency measured side by side with the uncached plan)."""
    uncached = score_on_seed_sets([evaluator], base)
    if not uncached["fid"]:
        return {}, []
    bound = float(config.bench.caching.quality_ratio) * uncached["fid"][0]
    tried: dict[str, list[dict]] = {}
    for method, grid in grids.items():
        for knobs in grid:
            entry = score_on_seed_sets([evaluator], {**base, **knobs})
            tried.setdefault(method, []).append(entry)
            log(f"   calibrate {describe(entry['params'])}: fid {entry['fid']}")
    everything = [entry for entries in tried.values() for entry in entries]
    side_by_side(evaluator, [uncached, *everything], int(config.bench.latency_repeats))
    chosen = {}
    for method, entries in tried.items():
        within = [entry for entry in entries if entry["fid"] and entry["fid"][0] <= bound]
        best = min(within, key=lambda entry: entry["latency_ms"], default=None)
        chosen[method] = best["params"] if best else None
    return chosen, [uncached, *everything]


def run_caching_benchmark(config: DictConfig, log=print) -> Path:
    from autoaccel.search.run import evaluator_from_config, load_target

    bench_dir = Path(config.bench.dir)
    target = load_target(config)
    space = _space(target)
    evaluators = seed_set_evaluators(config, target, space)
    search_seed = evaluator_from_config(config, target, space, seed=int(config.quality.seed))
    search_seed.share_caches(evaluators[0])
    settings = config.bench.caching
    methods = methods_compared(config, target)
    grids = {method: method_grid(config, method, depth_limit(target.denoiser)) for method in methods}
    rows: list[tuple[int, list[tuple[str, dict]]]] = []
    calibrations: dict[int, list] = {}
    for steps in settings.steps:
        base = sampler_params(config, int(steps))
        log(f"== {steps} steps")
        chosen, calibrations[int(steps)] = calibrate(config, search_seed, base, grids, log)
        timesteps = schedule_of(evaluators[0], base)
        group = [("uncached", score_on_seed_sets(evaluators, base))]
        for method in methods:
            label, knobs = default_knobs(method, timesteps, depth_limit(target.denoiser))
            group.append((label, score_on_seed_sets(evaluators, {**base, **knobs})))
            if chosen.get(method) is not None:
                entry = score_on_seed_sets(evaluators, chosen[method])
                group.append((f"calibrated ({describe(chosen[method])})", entry))
        side_by_side(evaluators[0], [entry for _, entry in group], int(config.bench.latency_repeats))
        rows.append((int(steps), group))
    if int(settings.distilled_steps) > 0 and "distillation" in target.capabilities and "deep" in methods:
        student = {
            **sampler_params(config, int(settings.distilled_steps)),
            "distillation.method": "consistency",
            "distillation.steps": int(settings.distilled_steps),
            "distillation.iterations": int(settings.distilled_iterations),
        }
        log("== consistency student")
        group = [("consistency student, uncached", score_on_seed_sets(evaluators, student))]
        for interval in (2, 3):
            params = cached(student, 1, interval, 0)
            group.append((f"consistency student, cached ({describe(params)})", score_on_seed_sets(evaluators, params)))
        side_by_side(evaluators[0], [entry for _, entry in group], int(config.bench.latency_repeats))
        rows.append((int(settings.distilled_steps), group))
    fronts = _search_fronts(config, bench_dir, target, evaluators, log)
    return write_caching_table(config, bench_dir, target, rows, calibrations, fronts)


def _cached_space_name(target) -> str:
    return "flow_cached" if target.schedule_family == "flow" else "cached"


def steps_only_space(space_name: str, folder: Path) -> str:
    """The cached space with caching held at none: the same steps, solvers and schedules, searched alone."""
    document = yaml.safe_load(Path(load_space(space_name).source).read_text())
    document["name"] = f"{document.get('name', Path(space_name).stem)}_steps_only"
    document["description"] = f"{space_name} with caching held at none: steps, schedules and solvers alone"
    document["fixed"] = {**(document.get("fixed") or {}), "caching.method": "none"}
    document["dimensions"] = {
        name: _held_uncached(spec)
        for name, spec in document["dimensions"].items()
        if not name.startswith("caching.") and _active_uncached(spec)
    }
    path = Path(folder) / f"{document['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return str(path)


def _active_uncached(spec: dict) -> bool:
    """Whether a dimension stays active with caching held at none (its ``when`` on caching allows none)."""
    when = spec.get("when") or {}
    return all("none" in values for name, values in when.items() if name == "caching.method")


def _held_uncached(spec: dict) -> dict:
    """A dimension's spec without the conditions on caching, which hold once caching is none."""
    when = {name: values for name, values in (spec.get("when") or {}).items() if not name.startswith("caching.")}
    held = {key: value for key, value in spec.items() if key != "when"}
    return {**held, "when": when} if when else held


def _search_fronts(config: DictConfig, bench_dir: Path, target, evaluators, log) -> dict[str, list]:
    """The cached space and the same space without caching, searched alike (``bench.caching.search_trials``
    each), each front re-scored on the confirm seeds. Nothing when search_trials is 0."""
    trials = int(config.bench.caching.search_trials)
    repeats = int(config.bench.latency_repeats)
    if trials <= 0:
        return {}
    cached_space = str(config.bench.caching.search_space)
    if cached_space == "auto":
        cached_space = _cached_space_name(target)
    fronts = {}
    spaces = (("steps-only", steps_only_space(cached_space, bench_dir / "runs")), ("cached", cached_space))
    for label, space in spaces:
        front = search_front(config, space, f"bench-caching-{label}", "[fid,latency_ms]", trials, bench_dir, log)
        fronts[label] = [(trial, score_on_seed_sets(evaluators, params)) for trial, params in front]
    side_by_side(evaluators[0], [entry for front in fronts.values() for _, entry in front], repeats)
    return fronts


def describe(params: dict) -> str:
    """A cache's knobs in words (a space that leaves one free runs its default)."""
    from autoaccel.techniques.caching import CachingConfig

    default = CachingConfig()

    def knob(name: str):
        return params.get(f"caching.{name}", getattr(default, name))

    method, interval, warmup, tail = knob("method"), knob("interval"), knob("warmup"), knob("tail")
    ends = (f" after {warmup} full" if warmup else "") + (f", last {tail} full" if tail else "")
    if method == "none":
        return "uncached"
    if method == "deep":
        return f"depth {knob('depth')}, a full step every {interval}" + ends
    threshold = (
        f"threshold {knob('threshold')}"
        if knob("threshold") is not None
        else f"threshold at the {knob('strength'):.0%} quantile of the calibration run"
    )
    if method == "first_block":
        return f"FirstBlockCache, {threshold}"
    if method == "mag":
        return f"MagCache, {threshold}, at most {interval - 1} cached in a row" + (
            f" after {warmup} full" if warmup else ""
        )
    if method == "taylorseer":
        return f"TaylorSeer order {knob('taylor_order')}, a full step every {interval}" + ends
    return f"PAB, attention recomputed once in {interval} calls" + ends


def _cells(entry: dict, reference: dict) -> list[str]:
    if not entry["fid"]:
        return ["failed: " + "; ".join(entry["failures"])[:120], "", "", "", "", "", "", ""]
    fid, spread = mean_std(entry["fid"])
    reference_fid = mean_std(reference["fid"])[0] if reference["fid"] else float("nan")
    adherence = f"{100 * mean_std(entry['adherence'])[0]:.1f}" if entry["adherence"] else ""
    calls = entry.get("calls")
    return [
        f"{fid:.2f} ± {spread:.2f}",
        f"{fid / reference_fid:.3f}x",
        f"{mean_std(entry['precision'])[0]:.3f}",
        f"{mean_std(entry['recall'])[0]:.3f}",
        adherence,
        f"{entry['nfe']:.1f}",
        "" if calls is None else f"{calls}",
        f"{reference['latency_ms'] / entry['latency_ms']:.2f}x" if reference.get("latency_ms") else "",
    ]


def _status(entry: dict, reference: dict) -> str:
    """What a default-knob row does on this model: saves time within quality, is inert, or breaks quality."""
    if not entry["fid"] or not reference["fid"]:
        return "failed"
    speedup = reference["latency_ms"] / entry["latency_ms"]
    ratio = mean_std(entry["fid"])[0] / mean_std(reference["fid"])[0]
    if speedup < INERT_BELOW:
        return f"inert ({speedup:.2f}x)"
    if ratio > BROKEN_ABOVE:
        return f"broken (FID {ratio:.2f}x the uncached)"
    return f"works ({speedup:.2f}x at FID {ratio:.2f}x)"


def write_caching_table(config, bench_dir: Path, target, rows, calibrations, fronts=None) -> Path:
    settings = config.bench.caching
    command = "python -m autoaccel bench caching" + (f" target={target.name}" if target.name != "digits" else "")
    lines = [
        "# Caching benchmark: cached plans against the same sampler uncached",
        "",
        f"Generated by `{command}` (weights {target.content_hash[:12]}). Every row runs {settings.solver} "
        f"(order 2) at the model's default guidance. Quality: {target.quality.description}; "
        f"{config.quality.samples} samples per seed set, mean ± std over seed sets {list(config.bench.confirm_seeds)}. "
        "FID / uncached compares with the uncached row of the same step count. NFE counts a cached call as its "
        "share of a full forward (its FLOPs over a full call's); calls counts denoiser calls (two per guided "
        "step). Speed-up: the uncached row's median latency over this row's, at batch "
        f"{config.cost.batch_size} on this 2-core machine: the rows of a step count (and of each calibration grid) "
        f"are timed side by side, one call of each in turn, {config.bench.latency_repeats} times after a warm-up "
        "call, so machine drift hits them alike. Calibrated knobs: per method, the fastest combination of its grid "
        f"whose FID on the search seed ({config.quality.seed}) stays within {settings.quality_ratio}x of the "
        "uncached plan's there; the seed sets above never took part in the choice. Grids: "
        + "; ".join(
            f"{method} {len(method_grid(config, method, depth_limit(target.denoiser)))} combinations"
            for method in methods_compared(config, target)
        )
        + f" (intervals {list(settings.intervals)}, depths {list(settings.depths)} cut to the model's "
        f"{depth_limit(target.denoiser)}, warm-ups {list(settings.warmups)}, threshold quantiles "
        f"{list(settings.strengths)}, TaylorSeer orders {list(settings.taylor_orders)}). A threshold quantile is "
        "taken of what one uncached run of the plan's schedule on calibration seeds recorded (FirstBlockCache: the "
        "first block's relative residual change per call; MagCache: the per-call error of the residual's magnitude "
        "ratio). Default knobs are the library's published defaults: "
        + "; ".join(
            default_knobs(method, [], depth_limit(target.denoiser))[0] for method in methods_compared(config, target)
        )
        + ".",
        "",
        "| steps | plan | FID | FID / uncached | precision | recall | adherence (%) | NFE | calls | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = []
    for steps, group in rows:
        reference = group[0][1]
        for label, entry in group:
            lines.append(f"| {steps} | {label} | " + " | ".join(_cells(entry, reference)) + " |")
        summary.append(_verdict(steps, group, float(settings.quality_ratio)))
    lines += ["", "## Summary", "", *summary, ""]
    lines += _calibration_section(calibrations)
    if fronts:
        lines += _front_section(config, fronts, rows[0][1][0][1])
    lines.append(
        "Target (the issue's): at 50 steps, a cached plan at least 1.5x faster with FID within 1.05x of the "
        "uncached one's. FID here uses the features named above at a fixed sample count: compare rows with each "
        "other, not with Inception FIDs published elsewhere."
    )
    path = bench_dir / ("caching.md" if target.name == "digits" else f"caching-{target.name}.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _verdict(steps: int, group, ratio: float) -> str:
    reference = group[0][1]
    if not reference["fid"]:
        return f"- {steps} steps: the uncached plan failed."
    reference_fid = mean_std(reference["fid"])[0]
    defaults = [(label, entry) for label, entry in group if "default" in label]
    text = f"- {steps} steps:"
    within = [
        (label, entry)
        for label, entry in group[1:]
        if entry["fid"] and mean_std(entry["fid"])[0] <= ratio * reference_fid
    ]
    if within:
        label, entry = max(within, key=lambda item: reference["latency_ms"] / item[1]["latency_ms"])
        speedup = reference["latency_ms"] / entry["latency_ms"]
        text += f" fastest within {ratio}x FID: {label}, {speedup:.2f}x"
        if steps == 50:
            text += f" (target >= 1.5x: {'met' if speedup >= 1.5 else 'NOT met'})"
    else:
        text += f" no cached plan stays within {ratio}x of the uncached FID on the confirm seeds"
        if steps == 50:
            text += " (target NOT met)"
    if len(defaults) == 1:
        text += f"; default knobs: {_status(defaults[0][1], reference)}"
    elif defaults:
        text += "; " + "; ".join(f"{label}: {_status(entry, reference)}" for label, entry in defaults)
    return text + "."


def _front_section(config, fronts: dict, reference: dict) -> list[str]:
    """Both searches' fronts, re-scored, and how many steps-only points a cached point weakly dominates."""
    lines = [
        f"## Cached search vs steps-only search ({config.bench.caching.search_trials} trials each, "
        f"{config.optimizer.name}, seed {config.seed}, objectives fid and latency_ms)",
        "",
        "Latency as a ratio to the uncached row at the first step count above; FID on the confirm seeds.",
        "",
    ]
    scored = {name: [(trial, entry) for trial, entry in front if entry["fid"]] for name, front in fronts.items()}
    for name, front in scored.items():
        lines += [f"### {name.capitalize()} front", "", "| trial | FID | NFE | calls | latency ratio | plan |"]
        lines.append("|---|---|---|---|---|---|")
        for trial, entry in sorted(front, key=lambda item: item[1]["latency_ms"]):
            fid, spread = mean_std(entry["fid"])
            lines.append(
                f"| {trial} | {fid:.2f} ± {spread:.2f} | {entry['nfe']:.1f} | {entry.get('calls') or ''} | "
                f"{entry['latency_ms'] / reference['latency_ms']:.3f} | {_plan_words(entry['params'])} |"
            )
        lines.append("")
    steps_only, cached_front = scored.get("steps-only", []), scored.get("cached", [])
    dominated = [
        trial
        for trial, point in steps_only
        if any(
            mean_std(other["fid"])[0] <= mean_std(point["fid"])[0] and other["latency_ms"] <= point["latency_ms"]
            for _, other in cached_front
        )
    ]
    cached_points = sum(1 for _, entry in cached_front if entry["params"].get("caching.method", "none") != "none")
    lines += [
        f"Verdict: cached-front points weakly dominate {len(dominated)} of {len(steps_only)} steps-only points "
        f"(measured on the confirm seeds); {cached_points} of the cached front's {len(cached_front)} points "
        "use the cache.",
        "",
    ]
    return lines


def _plan_words(params: dict) -> str:
    sampler = f"{params.get('solver.name')} {params.get('timesteps.family')} {params.get('timesteps.steps')} steps"
    if params.get("caching.method", "none") != "none":
        return f"{sampler}, cached: {describe(params)}"
    return sampler


def _calibration_section(calibrations: dict[int, list]) -> list[str]:
    lines = ["## Calibration grids (search seed only)", ""]
    for steps, entries in calibrations.items():
        if not entries:
            continue
        uncached = entries[0]
        cells = []
        for entry in entries[1:]:
            if not entry["fid"]:
                cells.append(f"{describe(entry['params'])}: failed")
                continue
            cells.append(
                f"{describe(entry['params'])}: FID {entry['fid'][0] / uncached['fid'][0]:.3f}x, "
                f"{uncached['latency_ms'] / entry['latency_ms']:.2f}x faster"
            )
        lines.append(f"- {steps} steps (uncached FID {uncached['fid'][0]:.2f}): " + "; ".join(cells) + ".")
    return [*lines, ""]
