"""``python -m autoaccel bench distillation``: distilled students and learned schedules against the reference call
and against schedules alone, on the embedded model, per NFE -> reports/bench/distillation.md.

Each row is scored on the fresh seed sets ``bench.confirm_seeds`` at ``quality.samples`` (the schedule benchmark's
seeds and sample count, so its found plans can be set beside these rows); latency is measured side by side in
this run and given as a ratio to the reference's. Training minutes are wall-clock on this machine, for the student
of that row (progressive students share their earlier rounds: the minutes are all rounds up to that NFE).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from autoaccel.errors import ConfigError
from autoaccel.space.spaces import load_space
from benchmarks.common import mean_std, score_on_seed_sets, search_front, seed_set_evaluators
from benchmarks.config import DistillationBenchConfig

STANDARD = {
    "ddim": {"solver.name": "ddim"},
    "dpmsolver++2m": {"solver.name": "dpmsolver++", "solver.order": 2},
    "unipc": {"solver.name": "unipc", "solver.order": 2},
    "euler": {"solver.name": "euler"},
}


def method_rows(config: DictConfig, nfe: int) -> list[tuple[str, dict]]:
    """(label, parameters) of every row at ``nfe``: the standard schedules, then one plan per method."""
    settings = config.bench.distillation
    unknown = sorted(set(settings.methods) - set(METHOD_ROWS))
    if unknown:
        raise ConfigError(f"bench.distillation.methods: {unknown} are not valid; valid: {list(METHOD_ROWS)}")
    # schedule-only rows run at the model's default guidance (solver.guidance None), as its default call does
    rows = [
        (f"{name}-{nfe}", {"distillation.method": "none", "timesteps.steps": nfe, "solver.guidance": None, **solver})
        for name, solver in STANDARD.items()
        if not (name == "dpmsolver++2m" and nfe < 2)
    ]
    common = {"distillation.steps": nfe, "distillation.batch_size": int(settings.batch_size)}
    students = {
        "progressive": {
            "distillation.method": "progressive",
            "distillation.start_steps": int(settings.start_steps),
            "distillation.iterations": int(settings.progressive_iterations),
            "distillation.learning_rate": float(settings.learning_rate),
        },
        "consistency": {
            "distillation.method": "consistency",
            "distillation.iterations": int(settings.consistency_iterations),
            "distillation.learning_rate": float(settings.learning_rate),
        },
        "learned schedule": {
            "distillation.method": "learned_schedule",
            "distillation.iterations": int(settings.schedule_iterations),
        },
        "dmd": dmd_params(settings, gan=False),
        "dmd + GAN": dmd_params(settings, gan=True),
    }
    chosen = {METHOD_ROWS[method] for method in settings.methods}
    for label, params in students.items():
        if label not in chosen:
            continue
        if label == "dmd":  # the training curve first: each longer run continues the one before
            rows += [
                (f"dmd, {count} iterations", {**common, **params, "distillation.iterations": int(count)})
                for count in sorted(settings.dmd_curve)
                if count < int(settings.dmd_iterations)
            ]
        rows.append((label, {**common, **params}))
    if nfe >= 2:  # the teacher takes the first of the student's steps (its NFE counts that call)
        rows += [
            (f"{label} + teacher first", {**params, "assignment.teacher_steps": 1})
            for label, params in rows
            if label in ("progressive", "consistency", "dmd", "dmd + GAN")
        ]
    return rows


METHOD_ROWS = {
    "progressive": "progressive",
    "consistency": "consistency",
    "learned_schedule": "learned schedule",
    "dmd": "dmd",
    "dmd_gan": "dmd + GAN",
}


def dmd_params(settings, gan: bool) -> dict:
    """A DMD student's settings from ``bench.distillation.dmd_*``, with or without the GAN term."""
    return {
        "distillation.method": "dmd",
        "distillation.iterations": int(settings.dmd_iterations),
        "distillation.learning_rate": float(settings.dmd_learning_rate),
        "distillation.ema": float(settings.dmd_ema),
        "distillation.fake_updates": int(settings.dmd_fake_updates),
        "distillation.gan_weight": float(settings.dmd_gan_weight) if gan else 0.0,
        "distillation.regression_weight": float(settings.dmd_regression_weight),
        "distillation.real_guidance": settings.dmd_real_guidance,
    }


def run_distillation_benchmark(config: DictConfig, log=print) -> Path:
    from autoaccel.search.run import load_target

    bench_dir = Path(config.bench.dir)
    target = load_target(config)
    space = load_space("distilled").for_target(target.capabilities)
    evaluators = seed_set_evaluators(config, target, space)
    log("== reference")
    reference = score_on_seed_sets(evaluators, None)
    rows: dict[int, list[tuple[str, dict]]] = {}
    for nfe in config.bench.distillation.nfes:  # sampling steps; the NFE column counts guided calls twice
        rows[int(nfe)] = []
        for label, params in method_rows(config, int(nfe)):
            entry = score_on_seed_sets(evaluators, params)
            log(f"   NFE {nfe} {label}: fid {entry['fid']} minutes {entry.get('train_minutes')} {entry['failures']}")
            rows[int(nfe)].append((label, entry))
    fronts = _search_fronts(config, bench_dir, evaluators, log)
    judge = evaluators[0].judge
    floor = judge.fid_floor()
    floor_line = f"FID floor: {floor['sentence']}" if floor else judge.floor_absence()
    return write_distillation_table(config, bench_dir, target, reference, rows, fronts, floor_line)


def _search_fronts(config: DictConfig, bench_dir: Path, evaluators, log) -> dict[str, list[tuple[int, dict]]]:
    """The schedule-only space (``sampler``) and ``bench.distillation.search_space`` searched alike
    (``bench.distillation.search_trials`` each, the run's fidelity settings: with ``fidelity.train_shares``
    candidates that cannot reach the front train only a share), each front re-scored on the seed sets:
    ``schedule-only`` and ``distilled`` -> [(trial, entry)]. Nothing when search_trials is 0."""
    trials = int(config.bench.distillation.search_trials)
    if trials <= 0:
        return {}
    levels = config.fidelity.levels or []  # unset: one level, both searches alike (no ladder decided per search)
    fidelity = [
        f"fidelity.levels=[{','.join(str(level) for level in levels)}]",
        f"fidelity.train_shares=[{','.join(str(share) for share in config.fidelity.train_shares)}]",
        f"fidelity.z={config.fidelity.z}",
    ]
    log("== distilled search vs schedule-only search")
    fronts = {}
    for label, space in (("schedule-only", "sampler"), ("distilled", str(config.bench.distillation.search_space))):
        study = f"bench-distillation-{label}"
        front = search_front(config, space, study, "[fid,latency_ms]", trials, bench_dir, log, fidelity)
        fronts[label] = [(trial, score_on_seed_sets(evaluators, params)) for trial, params in front]
    return fronts


def _cells(entry: dict, reference: dict) -> list[str]:
    if not entry["fid"]:
        return ["failed: " + "; ".join(entry["failures"])[:120], "", "", "", "", "", ""]
    fid, spread = mean_std(entry["fid"])
    precision, _ = mean_std(entry["precision"])
    recall, _ = mean_std(entry["recall"])
    reference_fid, _ = mean_std(reference["fid"])
    minutes = entry.get("train_minutes")
    adherence = f"{100 * mean_std(entry['adherence'])[0]:.1f}" if entry["adherence"] else ""
    return [
        f"{fid:.2f} ± {spread:.2f}",
        f"{fid / reference_fid:.2f}x",
        f"{precision:.3f}",
        f"{recall:.3f}",
        adherence,
        f"{entry['latency_ms'] / reference['latency_ms']:.4f}",
        "" if minutes is None else f"{minutes:.1f}",
    ]


def write_distillation_table(
    config, bench_dir: Path, target, reference: dict, rows, fronts=None, floor_line: str = ""
) -> Path:
    settings = config.bench.distillation
    reference_fid, reference_spread = mean_std(reference["fid"])
    reference_recall, _ = mean_std(reference["recall"])
    from autoaccel.search.run import describe_reference

    described = describe_reference(target) if target.name != "digits" else "DDPM, all steps"
    command = "python -m autoaccel bench distillation" + (f" target={target.name}" if target.name != "digits" else "")
    command += "".join(f" {override}" for override in changed_settings(settings))
    if int(settings.search_trials) > 0:  # the searches' fidelity ladder is the run's own setting
        command += "".join(
            f" 'fidelity.{key}=[{','.join(str(value) for value in config.fidelity[key] or [])}]'"
            for key in ("levels", "train_shares")
        )
    lines = [
        "# Distillation benchmark: students and learned schedules vs schedules alone vs the reference",
        "",
        f"Generated by `{command}` (weights {target.content_hash[:12]}). The reference is the call plans are "
        f"compared with ({described}); its model is the teacher the students learn from. Quality: "
        f"{target.quality.description}; {config.quality.samples} samples per seed set, "
        f"mean ± std over seed sets {list(config.bench.confirm_seeds)} (the schedule benchmark's, so its rows "
        "compare with these); adherence, where the model has a classifier, is the share of images read as their "
        "requested class. Latency: median at the deployment batch, measured side by side in this run, as a ratio "
        "to the reference's. Training: progressive from "
        f"{settings.start_steps} steps, {settings.progressive_iterations} iterations per halving round; "
        f"consistency {settings.consistency_iterations} iterations; learned schedule {settings.schedule_iterations} "
        f"iterations; batch {settings.batch_size}, learning rate {settings.learning_rate}; DMD (distribution "
        f"matching, DMD2-style) {settings.dmd_iterations} iterations at learning rate {settings.dmd_learning_rate}, "
        f"EMA {settings.dmd_ema}, {settings.dmd_fake_updates} fake score updates per student update, regression "
        f"weight {settings.dmd_regression_weight}, "
        + ("" if settings.dmd_real_guidance is None else f"real score at guidance {settings.dmd_real_guidance}, ")
        + "GAN weight "
        f"{settings.dmd_gan_weight} in the + GAN rows (against "
        + ("the target's real images" if target.real_images is not None else "the teacher's samples")
        + "); minutes are wall-clock "
        "on this 2-core machine (shared with other jobs), the whole cost of producing that row's model.",
        "",
        *([floor_line, ""] if floor_line else []),
        "| steps | NFE | plan | FID | FID / reference | precision | recall | adherence (%) | latency / reference "
        "| training minutes |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| | {reference['nfe']:.0f} | reference ({described}) | {reference_fid:.2f} ± {reference_spread:.2f} | 1x | "
        f"{mean_std(reference['precision'])[0]:.3f} | {reference_recall:.3f} | "
        + (f"{100 * mean_std(reference['adherence'])[0]:.1f}" if reference["adherence"] else "")
        + " | 1 | |",
    ]
    for nfe, entries in rows.items():
        for label, entry in entries:
            measured = f"{entry['nfe']:.0f}" if "nfe" in entry else ""
            lines.append(f"| {nfe} | {measured} | {label} | " + " | ".join(_cells(entry, reference)) + " |")
    everything = [(steps, label, entry) for steps, entries in rows.items() for label, entry in entries]
    summary = [_verdict(bound, everything, reference_fid, reference_recall) for bound in rows]
    if summary:
        lines += ["", "## Summary", "", "Each line takes every row whose measured NFE is within the bound.", ""]
        lines += [*summary, ""]
    else:
        lines.append("")
    if fronts:
        lines += _front_section(config, fronts, reference)
    lines.append(
        "Targets: NFE 1 within 1.5x of the reference's FID, NFE 2 within 1.25x, NFE 4 within 1.1x, with recall at "
        "most 0.05 below the reference's, each student trained in under 60 minutes on this machine. "
        "FID here uses autoaccel's digit-classifier features at a fixed "
        "sample count: compare rows with each other, not with Inception FIDs published elsewhere."
    )
    default = "distillation.md" if target.name == "digits" else f"distillation-{target.name}.md"
    path = bench_dir / (settings.table or default)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def changed_settings(settings) -> list[str]:
    """``bench.distillation.KEY=VALUE`` for each setting that differs from its default: the command that wrote a
    table names them."""
    defaults = asdict(DistillationBenchConfig())
    changed = []
    for key, default in defaults.items():
        value = settings.get(key, default)
        value = list(value) if isinstance(value, ListConfig) else value
        if value != default:
            shown = f"[{','.join(str(item) for item in value)}]" if isinstance(value, list) else value
            changed.append(f"bench.distillation.{key}={shown}")
    return changed


TARGET_RATIO = {1: 1.5, 2: 1.25, 4: 1.1}
MAX_TRAIN_MINUTES = 60


def _verdict(bound: int, rows: list[tuple[int, str, dict]], reference_fid: float, reference_recall: float) -> str:
    """The best row whose measured NFE is at most ``bound`` (a guided sampler step counts two), against the
    target for that NFE. ``rows``: (sampling steps, label, entry)."""
    scored = [(steps, label, entry) for steps, label, entry in rows if entry["fid"] and entry.get("nfe", 0) <= bound]
    if not scored:
        return f"- NFE <= {bound}: no row."
    steps, label, entry = min(scored, key=lambda item: mean_std(item[2]["fid"])[0])
    fid = mean_std(entry["fid"])[0]
    recall = mean_std(entry["recall"])[0]
    schedule_only = [mean_std(e["fid"])[0] for s, name, e in scored if name.endswith(f"-{s}")]
    text = (
        f"- NFE <= {bound}: best {label} at {steps} step{'s' if steps != 1 else ''} (NFE {entry['nfe']:.0f}), "
        f"FID {fid:.2f} = "
        f"{fid / reference_fid:.2f}x the reference's, recall {recall:.3f}"
    )
    minutes = entry.get("train_minutes")
    text += "" if minutes is None else f", trained in {minutes:.1f} min"
    text += f"; best schedule-only {min(schedule_only):.2f}" if schedule_only else "; no schedule-only row"
    if bound in TARGET_RATIO:
        # diversity lost is what the recall condition guards against: a higher recall than the reference's is fine
        met = fid <= TARGET_RATIO[bound] * reference_fid and recall >= reference_recall - 0.05
        met = met and (minutes is None or minutes < MAX_TRAIN_MINUTES)
        text += (
            f" (target <= {TARGET_RATIO[bound]}x with recall at most 0.05 below, under "
            f"{MAX_TRAIN_MINUTES} min: {'met' if met else 'NOT met'})"
        )
    return text + "."


def _front_section(config, fronts: dict, reference: dict) -> list[str]:
    """Both searches' fronts, re-scored, and at every NFE bound whether the distilled front's best FID beats the
    schedule-only front's."""
    settings = config.bench.distillation
    lines = [
        f"## Distilled search vs schedule-only search ({settings.search_trials} trials each, "
        f"{config.optimizer.name}, seed {config.seed}, fidelity levels {list(config.fidelity.levels or [])}, "
        f"training shares {list(config.fidelity.train_shares)})",
        "",
        "Both fronts (objectives fid, latency_ms) re-scored on the seed sets above.",
        "",
    ]
    for name, front in fronts.items():
        lines += [
            f"### {name.capitalize()} front (space={'sampler' if name == 'schedule-only' else settings.search_space})",
            "",
            "| trial | FID | NFE | latency / reference | recall | training minutes | plan |",
            "|---|---|---|---|---|---|---|",
        ]
        for trial, entry in sorted(front, key=lambda item: item[1].get("nfe", 0)):
            if not entry["fid"]:
                lines.append(f"| {trial} | failed | | | | | {'; '.join(entry['failures'])[:100]} |")
                continue
            minutes = entry.get("train_minutes")
            lines.append(
                f"| {trial} | {_shown(mean_std(entry['fid']))} | {entry['nfe']:.0f} | "
                f"{entry['latency_ms'] / reference['latency_ms']:.4f} | {mean_std(entry['recall'])[0]:.3f} | "
                f"{'' if minutes is None else f'{minutes:.1f}'} | {describe(entry['params'])} |"
            )
        lines.append("")
    lines += [
        "### At each NFE bound",
        "",
        "Each front's best FID among its points within the bound (mean ± std over the seed sets); a difference "
        "within the two spreads together is a tie.",
        "",
    ]
    lines += [_bound_verdict(bound, fronts) for bound in (1, 2, 4, 8)]
    return [*lines, ""]


def _bound_verdict(bound: int, fronts: dict) -> str:
    """Whether the distilled front beats the schedule-only one within ``bound``: by more than their spreads
    together (dominates), by less either way (ties), or it is worse (does not dominate)."""
    distilled, schedule = (
        _best_within(fronts.get("distilled", []), bound),
        _best_within(fronts.get("schedule-only", []), bound),
    )
    if distilled is None:
        return f"- NFE <= {bound}: the distilled front has no point."
    if schedule is None:
        return (
            f"- NFE <= {bound}: best distilled FID {_shown(distilled)}, schedule-only none: the distilled front "
            "dominates there."
        )
    margin = distilled[1] + schedule[1]
    if distilled[0] < schedule[0] - margin:
        verdict = "dominates"
    elif abs(distilled[0] - schedule[0]) <= margin:
        verdict = "ties with the schedule-only front"
    else:
        verdict = "does not dominate"
    return (
        f"- NFE <= {bound}: best distilled FID {_shown(distilled)}, best schedule-only {_shown(schedule)}: the "
        f"distilled front {verdict} there."
    )


def _shown(figure: tuple[float, float]) -> str:
    return f"{figure[0]:.2f} ± {figure[1]:.2f}"


def _best_within(front, bound: int) -> tuple[float, float] | None:
    """The (mean, std) FID of the front's best point whose NFE is within ``bound``."""
    figures = [mean_std(entry["fid"]) for _, entry in front if entry["fid"] and entry["nfe"] <= bound]
    return min(figures) if figures else None


def describe(params: dict) -> str:
    """A front point in words: the distillation method and its steps, or the solver and schedule it runs."""
    method = params.get("distillation.method", "none")
    if method != "none":
        text = f"{method} {params.get('distillation.steps')} steps, {params.get('distillation.iterations')} iterations"
        teacher_steps = params.get("assignment.teacher_steps", 0)
        return text + (f", teacher first {teacher_steps}" if teacher_steps else "")
    family = params.get("timesteps.family", "uniform_trailing")
    return f"{params.get('solver.name')} {family} {params.get('timesteps.steps')} steps"
