"""``python -m autoaccel bench runtime``: how much the deployment runtime (precision, torch.compile, SDPA attention
kernels, fused QKV, channels-last memory, the tiny decoder, torchao's int8 kernels) speeds up each target's whole
pipeline call, and what it costs in FID -> reports/bench/runtime.md, one section per target
(``bench.runtime.targets``).

Per target, on the seed sets ``bench.runtime.seed_sets`` (``bench.runtime.samples`` images each):

1. the reference: the model's default call, float32 eager;
2. each setting alone at the default call (``bench.runtime.settings``); a setting the model or machine refuses is
   a row with the reason;
3. the best runtime-only plan within ``quality_ratio`` of the reference's FID: the settings that passed alone
   (within the bound and faster) combined greedily, fastest first, an addition kept when the combination stays
   within the bound and is faster than the combination so far (the two timed side by side);
4. the best whole plans within each of ``plan_ratios``: sampler plans (``solvers`` at order 2 on ``steps``
   uniform trailing steps, and a consistency student at ``student_steps`` where ``student_iterations`` > 0) in
   float32 eager and under that combination, their speed-up split into an algorithmic factor (the reference's
   latency over the plan's float32-eager latency) and a runtime one (the plan's float32-eager latency over its
   latency under the combination).

Every group of rows is timed side by side with the reference (``side_by_side``: one whole call of each in turn,
``bench.latency_repeats`` times after a warm-up call, medians), at the deployment batch ``cost.batch_size``.
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path

from omegaconf import DictConfig, open_dict

from autoaccel.config import compose_config
from autoaccel.errors import ConfigError
from autoaccel.plan.candidate import Candidate
from autoaccel.reference.sampling import parse_reference
from autoaccel.schedules.solvers import all_solver_names
from autoaccel.search.run import load_target
from autoaccel.space.spaces import parse_space
from autoaccel.techniques.base import unchanged_model_params
from benchmarks.caching import side_by_side
from benchmarks.common import score_on_seed_sets, seed_set_evaluators
from benchmarks.runtime_table import fid_ratio, write_runtime_table

# Every runtime row: its name on the command line (bench.runtime.settings) and the plan settings it changes.
SETTINGS: dict[str, dict] = {
    "bfloat16": {"runtime.dtype": "bfloat16"},
    "float16": {"runtime.dtype": "float16"},
    "compile-default": {"runtime.compile": "default"},
    "compile-max-autotune-no-cudagraphs": {"runtime.compile": "max-autotune-no-cudagraphs"},
    "compile-reduce-overhead": {"runtime.compile": "reduce-overhead"},
    "attention-math": {"runtime.attention": "math"},
    "attention-flash": {"runtime.attention": "flash"},
    "attention-efficient": {"runtime.attention": "efficient"},
    "attention-cudnn": {"runtime.attention": "cudnn"},
    "fuse-qkv": {"runtime.fuse_qkv": True},
    "channels-last": {"runtime.channels_last": True},
    "decoder-tiny": {"decoder.kind": "tiny"},
    "int8-weight-only": {
        "quantization.enabled": True,
        "quantization.backend": "torchao",
        "quantization.weight_bits": 8,
        "quantization.time_bits": 8,
        "quantization.low_fraction": 0.0,
        "quantization.activation_bits": None,
    },
    "int8-dynamic": {
        "quantization.enabled": True,
        "quantization.backend": "torchao",
        "quantization.weight_bits": 8,
        "quantization.time_bits": 8,
        "quantization.low_fraction": 0.0,
        "quantization.activation_bits": 8,
    },
}
# bench.runtime.settings=[auto]: the rows a CPU may run (CUDA graphs and the cuDNN and memory-efficient attention
# kernels are CUDA's; benchmarks/gpu_runtime.py times them there)
CPU_SETTINGS = tuple(
    name for name in SETTINGS if name not in ("compile-reduce-overhead", "attention-efficient", "attention-cudnn")
)
CALL_TECHNIQUES = ["quantization", "decoder", "runtime"]  # no sampler technique: the model's default call
SAMPLER_TECHNIQUES = ["solver", "timesteps", *CALL_TECHNIQUES]


def chosen_settings(config: DictConfig) -> list[str]:
    """The setting rows ``bench.runtime.settings`` names ([auto]: ``CPU_SETTINGS``); an unknown name is a
    ConfigError naming the valid ones."""
    wanted = [str(name) for name in config.bench.runtime.settings]
    if wanted == ["auto"]:
        return list(CPU_SETTINGS)
    unknown = [name for name in wanted if name not in SETTINGS]
    if unknown or not wanted:
        raise ConfigError(
            f"bench.runtime.settings={wanted} is not valid ({unknown or 'empty'}); valid: [auto] or names from "
            f"{', '.join(SETTINGS)}"
        )
    return wanted


def setting_params(config: DictConfig, name: str) -> dict:
    """What row ``name`` changes in a plan (the tiny decoder with the benchmark's training settings)."""
    params = dict(SETTINGS[name])
    if params.get("decoder.kind") == "tiny":
        params["decoder.iterations"] = int(config.bench.runtime.decoder_iterations)
        params["decoder.data_samples"] = int(config.bench.runtime.decoder_data_samples)
    return params


def default_call() -> dict:
    """The reference's computation as a plan: every technique as loaded (float32, eager, the model's VAE)."""
    return unchanged_model_params()


def sampler_plans(config: DictConfig, target) -> list[tuple[str, dict]]:
    """The sampler plans the runtime combination goes on: each solver at order 2 on each step count (uniform
    trailing, the default call's guidance), and the consistency students where the benchmark trains them."""
    settings = config.bench.runtime
    plans = []
    for solver in settings.solvers:
        for steps in settings.steps:
            params = {
                **default_call(),
                "solver.name": str(solver),
                "solver.order": 2,
                "solver.guidance": None,
                "timesteps.steps": int(steps),
                "timesteps.family": "uniform_trailing",
            }
            plans.append((f"{solver} {steps} steps", params))
    if int(settings.student_iterations) > 0 and "distillation" in target.capabilities:
        for steps in settings.student_steps:
            params = {
                **default_call(),
                "distillation.method": "consistency",
                "distillation.steps": int(steps),
                "distillation.iterations": int(settings.student_iterations),
                "timesteps.steps": int(steps),
            }
            plans.append((f"consistency student {steps} steps", params))
    return plans


def check_settings(config: DictConfig) -> None:
    """Every bad bench.runtime value as one ConfigError line, before any model loads."""
    settings = config.bench.runtime
    chosen_settings(config)
    unknown = [str(solver) for solver in settings.solvers if str(solver) not in all_solver_names()]
    if unknown:
        raise ConfigError(f"bench.runtime.solvers names {unknown}; valid: {', '.join(all_solver_names())}")
    for key in ("seed_sets", "steps", "plan_ratios"):
        if not list(settings[key]):
            raise ConfigError(f"bench.runtime.{key}=[] is not valid; it needs at least one value")
    name = str(settings.get("file") or "runtime.md")
    if Path(name).name != name or not name.endswith(".md"):
        raise ConfigError(f"bench.runtime.file={name!r} is not valid; give a file name ending in .md (in bench.dir)")
    if any(int(steps) < 1 for steps in [*settings.steps, *settings.student_steps]):
        raise ConfigError("bench.runtime.steps and student_steps must be >= 1")
    if int(settings.samples) < 2:
        raise ConfigError(f"bench.runtime.samples={settings.samples} is not valid; FID needs at least 2 images")
    if any(float(ratio) < 1.0 for ratio in [settings.quality_ratio, *settings.plan_ratios]):
        raise ConfigError("bench.runtime.quality_ratio and plan_ratios are FID bounds over the reference's: >= 1")


def target_configs(config: DictConfig) -> list[DictConfig]:
    """One configuration per ``bench.runtime.targets`` (the run's own target where it is named, or where the list
    is empty), scoring ``bench.runtime.samples`` images on each of ``bench.runtime.seed_sets``."""
    settings = config.bench.runtime
    names = [str(name) for name in settings.targets] or [str(config.target.name)]
    configs = []
    for name in names:
        copied = copy.deepcopy(config)
        with open_dict(copied):
            if name != str(config.target.name):
                copied.target = compose_config([f"target={name}", f"target.device={config.target.device}"]).target
            copied.quality.samples = int(settings.samples)
            copied.quality.chunk_size = min(int(config.quality.chunk_size), int(settings.samples))
            copied.bench.confirm_seeds = [int(seed) for seed in settings.seed_sets]
        configs.append(copied)
    return configs


def speedup(reference: dict, entry: dict) -> dict:
    """The reference's median latency over the entry's, timed in the same side-by-side group, with the quartiles
    of the per-repeat ratios (repeat i of each: they ran back to back) as its interval."""
    ratios = [base / own for base, own in zip(reference["latency_samples"], entry["latency_samples"])]
    low, _, high = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return {
        "speedup": reference["latency_ms"] / entry["latency_ms"],
        "low": low,
        "high": high,
        "latency_ms": entry["latency_ms"],
        "reference_ms": reference["latency_ms"],
        "stage_ms": dict(entry.get("stage_ms") or {}),
        "reference_stage_ms": dict(reference.get("stage_ms") or {}),
    }


class TargetBench:
    """One target's rows: scoring on the seed sets, and side-by-side timing with the reference."""

    def __init__(self, config: DictConfig, target, log) -> None:
        self.config = config
        self.log = log
        self.target = target
        techniques = [*(["distillation"] if "distillation" in self.target.capabilities else []), *SAMPLER_TECHNIQUES]
        self.call = seed_set_evaluators(config, self.target, _space("bench_runtime_call", CALL_TECHNIQUES))
        self.sampler = seed_set_evaluators(config, self.target, _space("bench_runtime_sampler", techniques))
        for evaluator in self.sampler:
            evaluator.share_caches(self.call[0])
        self.repeats = int(config.bench.latency_repeats)
        self.reference = score_on_seed_sets(self.call, None)

    def score(self, params: dict, sampler: bool = False) -> dict:
        entry = score_on_seed_sets(self.sampler if sampler else self.call, params)
        entry["sampler"] = sampler
        return entry

    def _pipeline(self, entry: dict):
        evaluator = self.sampler[0] if entry.get("sampler") else self.call[0]
        params = default_call() if entry["params"] is None else entry["params"]
        return evaluator.configured_pipeline(Candidate.from_params(params))

    def time(self, entries: list[dict]) -> list[dict | None]:
        """Times ``entries`` side by side with the reference; each one's speed-up (None where it did not score)."""
        timed = [entry for entry in entries if fid_ratio(entry, self.reference) is not None]
        side_by_side(self.call[0], [self.reference, *timed], self.repeats, build=self._pipeline)
        return [speedup(self.reference, entry) if any(entry is other for other in timed) else None for entry in entries]


def _space(name: str, techniques: list[str]):
    return parse_space({"name": name, "techniques": techniques, "dimensions": {}})


def within(entry: dict, reference: dict, ratio: float) -> bool:
    """Whether ``entry`` scored on every seed set with a mean FID ratio inside ``ratio``."""
    measured = fid_ratio(entry, reference)
    return measured is not None and measured[0] <= ratio


def combine_greedily(
    alone: list[dict],
    try_combination,
    ratio: float,
    reference: dict,
    start: str = "the fastest setting within the bound alone",
) -> list[dict]:
    """The greedy runtime-only combination. ``alone``: the rows that passed alone (label, changes, entry,
    timing), fastest first; ``try_combination(changes, best)`` scores a combination and times it side by side with
    the combination so far (``best``'s entry), returning (entry, its timing, best's timing). An addition that
    changes a setting the combination already sets (a second precision) is skipped; one is kept when the
    combination stays within ``ratio`` of the reference's FID and is faster than the combination so far.
    Returns every step tried, the first being the fastest row alone."""
    if not alone:
        return []
    best = {**alone[0], "kept": True, "decision": f"start: {start}"}
    steps = [best]
    for row in alone[1:]:
        label = f"{best['label']} + {row['label']}"
        clash = sorted(set(row["changes"]) & set(best["changes"]))
        if clash:
            steps.append(
                {
                    **row,
                    "label": label,
                    "entry": None,
                    "timing": None,
                    "kept": False,
                    "decision": f"skipped: {', '.join(clash)} already set by {best['label']}",
                }
            )
            continue
        changes = {**best["changes"], **row["changes"]}
        entry, timing, best_timing = try_combination(changes, best["entry"])
        step = {"label": label, "changes": changes, "entry": entry, "timing": timing, "best_timing": best_timing}
        if timing is None:
            reasons = "; ".join(dict.fromkeys(entry["failures"])) or "not scored on every seed set"
            step.update(kept=False, decision=f"dropped: refused: {reasons}")
        elif not within(entry, reference, ratio):
            step.update(kept=False, decision=f"dropped: FID {fid_ratio(entry, reference)[0]:.3f}x > {ratio}x")
        elif best_timing is not None and timing["latency_ms"] >= best_timing["latency_ms"]:
            step.update(
                kept=False,
                decision=f"dropped: not faster ({timing['speedup']:.2f}x against {best_timing['speedup']:.2f}x "
                "for the combination so far, timed side by side)",
            )
        else:
            step.update(kept=True, decision="kept")
            best = step
        steps.append(step)
    return steps


def setting_rows(bench: TargetBench, config: DictConfig) -> list[dict]:
    rows = []
    for name in chosen_settings(config):
        changes = setting_params(config, name)
        bench.log(f"   {name}")
        rows.append({"label": name, "changes": changes, "entry": bench.score({**default_call(), **changes})})
    for row, timing in zip(rows, bench.time([row["entry"] for row in rows])):
        row["timing"] = timing
    return rows


def combination_steps(bench: TargetBench, rows: list[dict], ratio: float) -> list[dict]:
    passed = [row for row in rows if within(row["entry"], bench.reference, ratio) and row["timing"]["low"] > 1.0]
    passed.sort(key=lambda row: -row["timing"]["speedup"])

    def try_combination(changes: dict, best_entry: dict):
        bench.log(f"   combination {sorted(changes)}")
        entry = bench.score({**default_call(), **changes})
        timing, best_timing = bench.time([entry, best_entry])
        return entry, timing, best_timing

    return combine_greedily(passed, try_combination, ratio, bench.reference)


def whole_plans(bench: TargetBench, config: DictConfig, best_changes: dict) -> list[dict]:
    """Every sampler plan in float32 eager and under ``best_changes``, timed side by side in one group."""
    plans = []
    for label, params in sampler_plans(config, bench.target):
        bench.log(f"   {label}")
        plan = {"label": label, "eager": bench.score(params, sampler=True), "runtime": None}
        if best_changes:
            plan["runtime"] = bench.score({**params, **best_changes}, sampler=True)
        plans.append(plan)
    entries = [entry for plan in plans for entry in (plan["eager"], plan["runtime"]) if entry is not None]
    timings = iter(bench.time(entries))
    for plan in plans:
        plan["eager_timing"] = next(timings)
        plan["runtime_timing"] = next(timings) if plan["runtime"] is not None else None
    return plans


def fastest_eager_plan(plans: list[dict], reference: dict, ratio: float) -> dict | None:
    """The fastest sampler plan in float32 eager within ``ratio`` of the reference's FID: the best algorithm."""
    options = [plan for plan in plans if plan["eager_timing"] is not None and within(plan["eager"], reference, ratio)]
    return max(options, key=lambda plan: plan["eager_timing"]["speedup"], default=None)


def plan_combinations(bench: TargetBench, config: DictConfig, rows: list[dict], plans: list[dict]) -> list[dict]:
    """For each whole-plan bound, the fastest plan in float32 eager within it with its own greedy runtime
    combination: a setting that ties at the default call (a tiny decoder, where 50 steps dwarf the decode) can
    pay on a plan of one or two steps. The candidates are the settings within ``quality_ratio`` of the reference's
    FID alone and not slower alone (their interval reaches 1), fastest first; a setting is kept when the plan
    stays within the bound and gets faster, timed side by side. The result is timed once more beside the plan in
    float32 eager, which splits its speed-up into the algorithmic and the runtime factor."""
    settings = config.bench.runtime
    params_of = dict(sampler_plans(config, bench.target))
    candidates = [
        row
        for row in rows
        if row["timing"] is not None
        and within(row["entry"], bench.reference, float(settings.quality_ratio))
        and row["timing"]["high"] >= 1.0
    ]
    candidates.sort(key=lambda row: -row["timing"]["speedup"])
    results, seen = [], set()
    for bound in (float(ratio) for ratio in settings.plan_ratios):
        plan = fastest_eager_plan(plans, bench.reference, bound)
        if plan is None or plan["label"] in seen:
            continue
        seen.add(plan["label"])
        params = params_of[plan["label"]]
        bench.log(f"== {bench.target.name}: {plan['label']}'s own runtime combination")

        def try_combination(changes: dict, best_entry: dict, params: dict = params):
            bench.log(f"   combination {sorted(changes)}")
            entry = bench.score({**params, **changes}, sampler=True)
            timing, best_timing = bench.time([entry, best_entry])
            return entry, timing, best_timing

        start = {"label": plan["label"], "changes": {}, "entry": plan["eager"]}
        steps = combine_greedily(
            [{**start, "timing": plan["eager_timing"]}, *candidates],
            try_combination,
            bound,
            bench.reference,
            start="the plan in float32 eager",
        )
        final = [step for step in steps if step["kept"]][-1]
        eager_timing, final_timing = bench.time([plan["eager"], final["entry"]]) if final["changes"] else (None, None)
        results.append(
            {
                "plan": plan["label"],
                "bound": bound,
                "steps": steps,
                "final": final,
                "eager_timing": eager_timing,
                "final_timing": final_timing,
            }
        )
    return results


def best_whole_plan(plans: list[dict], reference: dict, ratio: float) -> dict | None:
    """The fastest whole plan (a sampler plan in float32 eager or under the combination) within ``ratio``, with
    its speed-up split into the algorithmic and the runtime factor."""
    options = []
    for plan in plans:
        for form in ("eager", "runtime"):
            entry, timing = plan[form], plan[f"{form}_timing"]
            if entry is not None and timing is not None and within(entry, reference, ratio):
                options.append((plan, form, timing))
    if not options:
        return None
    plan, form, timing = max(options, key=lambda option: option[2]["speedup"])
    eager = plan["eager_timing"]
    algorithmic = eager["speedup"] if eager is not None else None
    runtime = (eager["latency_ms"] / timing["latency_ms"]) if eager is not None else None
    return {
        "label": plan["label"],
        "form": form,
        "entry": plan[form],
        "timing": timing,
        "algorithmic": algorithmic,
        "runtime": runtime,
    }


def comparable_target(config: DictConfig):
    """The target ``config`` names, refused (ConfigError) where its FID cannot be a ratio to the reference's: a
    reference other than the default call, or a quality that compares with the reference's own images (where the
    reference scores 0)."""
    target = load_target(config)
    if parse_reference(target.reference).solver is not None:
        raise ConfigError(
            f"bench runtime compares with the model's default call: target.reference={target.reference!r} is not "
            "valid here; valid: default"
        )
    if target.quality.kind != "real-data":
        raise ConfigError(
            f"bench runtime reports FID as a ratio to the reference's, but {target.name}'s FID is against the "
            "reference call's own images (the reference scores 0): give it real images, target.data=DIR"
        )
    return target


def run_target(config: DictConfig, target, log) -> dict:
    """Every row of one target's section (scored, timed), in the table's order."""
    settings = config.bench.runtime
    ratio = float(settings.quality_ratio)
    bench = TargetBench(config, target, log)
    section = {"target": bench.target, "config": config, "reference": bench.reference}
    if fid_ratio(bench.reference, bench.reference) is None:  # nothing can be compared with it
        return section
    log(f"== {bench.target.name}: each setting alone at the default call")
    rows = setting_rows(bench, config)
    log(f"== {bench.target.name}: the runtime-only combination")
    steps = combination_steps(bench, rows, ratio)
    kept = [step for step in steps if step["kept"]]
    best_changes = kept[-1]["changes"] if kept else {}
    log(f"== {bench.target.name}: sampler plans under the combination")
    plans = whole_plans(bench, config, best_changes)
    own = plan_combinations(bench, config, rows, plans)
    best = {
        float(bound): best_of(best_whole_plan(plans, bench.reference, float(bound)), own, bench.reference, float(bound))
        for bound in settings.plan_ratios
    }
    return {
        **section,
        "rows": rows,
        "steps": steps,
        "best_changes": best_changes,
        "plans": plans,
        "own": own,
        "best": best,
    }


def best_of(best: dict | None, own: list[dict], reference: dict, ratio: float) -> dict | None:
    """The faster of ``best`` (a plan under the default call's combination) and a plan under its own combination
    within ``ratio``; the latter's speed-up and split come from its last side-by-side timing with its eager form."""
    for result in own:
        timing = result["final_timing"]
        if timing is None or not within(result["final"]["entry"], reference, ratio):
            continue
        if best is None or timing["speedup"] > best["timing"]["speedup"]:
            eager = result["eager_timing"]
            best = {
                "label": result["plan"],
                "form": "own",
                "changes": result["final"]["changes"],
                "entry": result["final"]["entry"],
                "timing": timing,
                "algorithmic": eager["speedup"],
                "runtime": eager["latency_ms"] / timing["latency_ms"],
            }
    return best


def run_runtime_benchmark(config: DictConfig, log=print) -> Path:
    check_settings(config)
    configs = target_configs(config)
    targets = [comparable_target(target_config) for target_config in configs]  # refused before any row runs
    sections: list[dict] = []
    path = None
    for target_config, target in zip(configs, targets):
        sections.append(run_target(target_config, target, log))
        pending = [str(other.target.name) for other in configs[len(sections) :]]
        path = write_runtime_table(config, sections, pending)  # what is measured is kept as each target ends
    return path
