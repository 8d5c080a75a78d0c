"""``python -m autoaccel bench compression``: what pruning and quantization buy on the embedded model.

Three parts, all on one fixed sampler (DPM-Solver++ 2M, uniform trailing steps) unless searched:

1. Pruning ratios (with and without recovery distillation) and uniform weight bit-widths (simulated), each
   re-scored on fresh seed sets (FID mean ± std), with parameters, the plan's real bytes, and the unet's CPU
   latency measured side by side (interleaved repeats, medians, ratios to the unpruned model) at several
   batch sizes. Quantized plans have no CPU latency: they ran float kernels, so it is "not measured".
2. A compression search (``space=compressed``: pruning + quantization + solver + timesteps) and a schedule-only
   search with the same budget; both fronts re-scored on the fresh seed sets with latencies measured in this one
   process, and whether (and where) the compression front dominates.
3. The compression front's recipes, copied to ``compression-front/`` so ``bench kernels`` can time them with real
   quantized kernels on a GPU.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from omegaconf import DictConfig

from autoaccel.front.pareto import dominates as pareto_dominates
from autoaccel.front.pareto import hypervolume
from autoaccel.measure.evaluator import Evaluator
from autoaccel.plan.candidate import Candidate
from autoaccel.plan.recipe import save_recipe, without_artifacts
from autoaccel.space.spaces import load_space
from autoaccel.techniques.base import unchanged_model_params
from benchmarks.common import mean_std, search_front, seed_set_evaluators

FIXED_SAMPLER = {
    "timesteps.family": "uniform_trailing",
    "solver.name": "dpmsolver++",
    "solver.order": 2,
    "solver.final_sigma": "zero",
    "solver.lower_order_final": True,
    "solver.guidance": 1.0,
}
FRONT_DIR = "compression-front"
COMPRESSED = "compressed"  # the space searched against schedules alone: pruning, quantization and the sampler


def technique_rows(config: DictConfig) -> list[tuple[str, dict]]:
    """(label, parameters) of the pruning and quantization rows, on the fixed sampler."""
    steps = int(config.bench.compression_steps)
    base = {**unchanged_model_params(), **FIXED_SAMPLER, "timesteps.steps": steps}
    rows = [("float model", base)]
    for ratio in config.bench.pruning_ratios:
        for recovery in config.bench.recovery_steps:
            if float(ratio) == 0.0:
                continue
            label = f"pruned {float(ratio):.0%}" + (f" + {recovery}-step recovery" if recovery else "")
            rows.append((label, {**base, "pruning.ratio": float(ratio), "pruning.recovery_steps": int(recovery)}))
    for bits in config.bench.weight_bits:
        rows.append(
            (f"W{bits} (simulated)", {**base, "quantization.enabled": True, "quantization.weight_bits": int(bits)})
        )
    rows.append(
        (
            "W6, least-sensitive half at W3 (simulated)",
            {
                **base,
                "quantization.enabled": True,
                "quantization.weight_bits": 6,
                "quantization.low_bits": 3,
                "quantization.low_fraction": 0.5,
            },
        )
    )
    rows.append(
        (
            "W8A8 (simulated)",
            {**base, "quantization.enabled": True, "quantization.weight_bits": 8, "quantization.activation_bits": 8},
        )
    )
    return rows


def interleaved_unet_latency(
    unets: dict[str, torch.nn.Module], target, batch_sizes: list[int], repeats: int, calls: int = 5
) -> dict[str, dict[int, float]]:
    """Median ms per unet call for each model and batch size, the models timed in turn within every repeat so
    that machine drift hits them all alike."""
    generator = torch.Generator().manual_seed(0)
    medians: dict[str, dict[int, float]] = {label: {} for label in unets}
    for batch in batch_sizes:
        sample = torch.randn(batch, *target.sample_shape, generator=generator)
        timestep = torch.randint(0, target.num_train_timesteps, (batch,), generator=generator)
        labels = torch.randint(0, target.num_classes, (batch,), generator=generator) if target.num_classes else None
        times: dict[str, list[float]] = {label: [] for label in unets}
        with torch.no_grad():
            for unet in unets.values():  # warm-up
                unet(sample, timestep, class_labels=labels)
            for _ in range(repeats):
                for label, unet in unets.items():
                    started = time.perf_counter()
                    for _ in range(calls):
                        unet(sample, timestep, class_labels=labels)
                    times[label].append((time.perf_counter() - started) * 1000 / calls)
        for label in unets:
            medians[label][batch] = statistics.median(times[label])
    return medians


def _rescore(evaluators: list[Evaluator], params: dict) -> dict:
    """FID etc. on every confirm seed set; latency from the shared cost cache (measured once per structure)."""
    entry: dict = {"fid": [], "kid": [], "failures": []}
    for evaluator in evaluators:
        measurement = evaluator.evaluate(Candidate.from_params(params))
        if not measurement.ok:
            entry["failures"].append(measurement.failure)
            continue
        entry["fid"].append(measurement.metrics["fid"])
        entry["kid"].append(measurement.metrics["kid"])
        for key in ("latency_ms", "params", "model_bytes", "nfe"):
            entry[key] = measurement.metrics[key]
        entry["kernels"] = measurement.details.get("kernels")
        entry["quantized_latency"] = measurement.details.get("quantized_latency")
        entry["device"] = measurement.details.get("device")
    return entry


def run_compression_benchmark(config: DictConfig, log=print) -> Path:
    from autoaccel.search.run import load_target

    bench_dir = Path(config.bench.dir)
    target = load_target(config)
    space = load_space(COMPRESSED).for_target(target.capabilities)
    evaluators = seed_set_evaluators(config, target, space)

    log("== pruning and quantization rows")
    rows = {}
    unets = {}
    for label, params in technique_rows(config):
        rows[label] = _rescore(evaluators, params)
        log(f"   {label}: fid {rows[label]['fid']} failures {rows[label]['failures']}")
        if "quantization.weight_bits" not in params:  # the model just scored, from the evaluators' cache
            unets[label] = evaluators[0].configured_pipeline(Candidate.from_params(params)).unet
    log("== side-by-side unet latency")
    unet_latency = interleaved_unet_latency(
        unets, target, [int(batch) for batch in config.bench.latency_batches], int(config.bench.latency_repeats)
    )

    log("== compression search vs schedule-only search")
    fronts = {name: _search_front(config, name, bench_dir, log) for name in ("sampler", COMPRESSED)}
    rescored = {
        name: [(trial, _rescore(evaluators, params)) for trial, params in front] for name, front in fronts.items()
    }
    _copy_front_recipes(bench_dir, fronts[COMPRESSED])
    return write_compression_table(config, bench_dir, target, rows, unet_latency, fronts, rescored)


def _search_front(config: DictConfig, space_name: str, bench_dir: Path, log) -> list[tuple[int, dict]]:
    """Runs (or resumes) one bench search; its feasible front's (trial, complete parameters)."""
    objectives = "[fid,latency_ms,model_bytes]" if space_name == COMPRESSED else "[fid,latency_ms]"
    warm_start = f"budget.warm_start_steps=[{config.bench.compression_steps}]"
    trials = int(config.bench.compression_trials)
    study = f"bench-compression-{space_name}"
    # the compression side searches bench.compression_space (a smaller space makes a quick check of the bench)
    searched = str(config.bench.compression_space) if space_name == COMPRESSED else space_name
    return search_front(config, searched, study, objectives, trials, bench_dir, log, [warm_start])


def _copy_front_recipes(bench_dir: Path, front: list[tuple[int, dict]]) -> None:
    """The compression front's recipes, kept in the repository without the run's weights: their artifact references
    are dropped, so ``bench kernels`` re-applies them from the base model (and says so) on any machine."""
    source = bench_dir / "runs" / f"bench-compression-{COMPRESSED}" / "recipes"
    destination = bench_dir / FRONT_DIR
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for trial, _ in front:
        recipe = source / f"trial-{trial:04d}.yaml"
        if recipe.exists():
            save_recipe(without_artifacts(yaml.safe_load(recipe.read_text())), destination / recipe.name)


def dominates(a: dict, b: dict, metrics: list[str]) -> bool:
    """Front point ``a`` dominates ``b`` in ``metrics`` (all minimised): autoaccel's own dominance test."""
    return pareto_dominates([a[m] for m in metrics], [b[m] for m in metrics])


def _front_table(entries: list[tuple[int, dict]], params_of: dict[int, dict]) -> list[str]:
    lines = [
        "| trial | FID | latency ms (batch) | NFE | params | bytes | plan |",
        "|---|---|---|---|---|---|---|",
    ]
    for trial, entry in sorted(entries, key=lambda item: item[1].get("latency_ms", float("inf"))):
        if not entry["fid"]:
            lines.append(f"| {trial} | failed: {entry['failures'][0]} | | | | | |")
            continue
        fid, fid_std = mean_std(entry["fid"])
        lines.append(
            f"| {trial} | {fid:.2f} ± {fid_std:.2f} | {entry['latency_ms']:.1f} | {entry['nfe']:.0f} | "
            f"{entry['params']:.0f} | {entry['model_bytes']:.0f} | {describe_plan(params_of[trial])} |"
        )
    return lines


def describe_plan(params: dict) -> str:
    parts = [f"{params.get('solver.name')} {params.get('timesteps.family')} {params.get('timesteps.steps')} steps"]
    if params.get("pruning.ratio"):
        parts.append(f"pruned {params['pruning.ratio']:.2f}, recovery {params.get('pruning.recovery_steps', 0)}")
    if params.get("quantization.enabled"):
        low = params.get("quantization.low_fraction", 0.0)
        parts.append(
            f"W{params.get('quantization.weight_bits', 8)}"
            + (f" ({low:.0%} at W{params.get('quantization.low_bits')})" if low else "")
            + (f" A{params['quantization.activation_bits']}" if params.get("quantization.activation_bits") else "")
            + " (simulated)"
        )
    return "; ".join(parts)


def _summaries(rescored: dict) -> dict[str, list[dict]]:
    summaries = {}
    for name, entries in rescored.items():
        summaries[name] = [
            {
                "trial": trial,
                "fid": statistics.fmean(entry["fid"]),
                "latency_ms": entry["latency_ms"],
                "model_bytes": entry["model_bytes"],
            }
            for trial, entry in entries
            if entry["fid"]
        ]
    return summaries


def _hypervolumes(summaries: dict[str, list[dict]], metrics: list[str]) -> dict[str, float]:
    """The hypervolume of each front (autoaccel's, pymoo's indicator), both normalised by the same bounds
    (reference 1.1)."""
    everything = np.array([[point[m] for m in metrics] for points in summaries.values() for point in points])
    low, high = everything.min(axis=0), everything.max(axis=0)
    result = {}
    for name, points in summaries.items():
        matrix = np.array([[point[m] for m in metrics] for point in points])
        result[name] = hypervolume((matrix - low) / np.where(high > low, high - low, 1.0), [1.1] * len(metrics))
    return result


def write_compression_table(config, bench_dir: Path, target, rows, unet_latency, fronts, rescored) -> Path:
    batches = [int(batch) for batch in config.bench.latency_batches]
    float_entry = rows["float model"]
    lines = [
        "# Compression benchmark: pruning and quantization on the embedded model",
        "",
        f"Generated by `python -m autoaccel bench compression` on the embedded `{target.name}` model "
        f"(weights {target.content_hash[:12]}, {float_entry['params']:.0f} parameters). Sampler for the rows: "
        f"DPM-Solver++ 2M, {config.bench.compression_steps} uniform trailing steps. Quality: "
        f"{target.quality.description}; {config.quality.samples} samples per seed set, FID mean ± std over "
        f"seed sets {list(config.bench.confirm_seeds)}. Bytes: the plan's real storage (quantized weights at their "
        "bits plus one 16-bit scale per output channel). CPU latency: the unet's median time per call, all "
        f"models timed in turn within each of {config.bench.latency_repeats} repeats, as a ratio to the float "
        f"model's (device {float_entry.get('device')}, {torch.get_num_threads()} threads).",
        "",
        "## Pruning (torch-pruning, magnitude importance, whole heads)",
        "",
        "| plan | params | bytes | FID | "
        + " | ".join(f"CPU latency / float, batch {batch}" for batch in batches)
        + " |",
        "|---|---|---|---|" + "---|" * len(batches),
    ]
    for label, entry in rows.items():
        if label not in unet_latency:
            continue
        fid = _fid_cell(entry)
        ratios = " | ".join(
            f"{unet_latency[label][batch] / unet_latency['float model'][batch]:.2f}x "
            f"({unet_latency[label][batch]:.1f} ms)"
            for batch in batches
        )
        lines.append(
            f"| {label} | {entry.get('params', float('nan')):.0f} | {entry.get('model_bytes', float('nan')):.0f} | "
            f"{fid} | {ratios} |"
        )
    lines += [
        "",
        "## Quantization (simulated: fake-quantized weights and activations, calibrated on the teacher's trajectory)",
        "",
        "| plan | bytes | bytes / float | FID | latency |",
        "|---|---|---|---|---|",
    ]
    for label, entry in rows.items():
        if label in unet_latency:
            continue
        lines.append(
            f"| {label} | {entry.get('model_bytes', float('nan')):.0f} | "
            f"{entry.get('model_bytes', float('nan')) / float_entry['model_bytes']:.3f} | {_fid_cell(entry)} | "
            f"{entry.get('quantized_latency')} (no quantized kernels on {entry.get('device')}) |"
        )
    summaries = _summaries(rescored)
    params_of = {name: dict(front) for name, front in fronts.items()}
    lines += [
        "",
        f"## Compression search (space={COMPRESSED}) vs schedule-only search "
        f"({config.bench.compression_trials} trials each, "
        f"{config.optimizer.name}, seed {config.seed})",
        "",
        "Both fronts re-scored on the fresh seed sets; latency at batch "
        f"{config.cost.batch_size}, measured in this one process (quantized plans at their float-kernel latency).",
        "",
        "### Schedule-only front (objectives fid, latency_ms)",
        "",
        *_front_table(rescored["sampler"], params_of["sampler"]),
        "",
        "### Compression front (objectives fid, latency_ms, model_bytes)",
        "",
        *_front_table(rescored[COMPRESSED], params_of[COMPRESSED]),
        "",
        "### Verdict",
        "",
        *_verdict(summaries),
    ]
    gpu = bench_dir / "kernels.md"
    lines += [
        "",
        "## Real quantized kernels",
        "",
        (
            f"GPU latencies of the compression front's plans with torchao's kernels: [kernels.md]({gpu.name})."
            if gpu.exists()
            else "No GPU was available for this run: quantized latencies are not measured. "
            "Run `python -m autoaccel bench kernels` on a CUDA machine to add them."
        ),
    ]
    bench_dir.mkdir(parents=True, exist_ok=True)
    path = bench_dir / "compression.md"
    path.write_text("\n".join(lines) + "\n")
    (bench_dir / "compression.json").write_text(
        json.dumps({"rows": rows, "unet_latency_ms": unet_latency, "fronts": summaries}, indent=1, default=str)
    )
    return path


def _fid_cell(entry: dict) -> str:
    if not entry["fid"]:
        return f"failed: {entry['failures'][0]}"
    fid, fid_std = mean_std(entry["fid"])
    return f"{fid:.2f} ± {fid_std:.2f}"


def _verdict(summaries: dict[str, list[dict]]) -> list[str]:
    lines = []
    sampler, joint = summaries["sampler"], summaries[COMPRESSED]
    if not sampler or not joint:
        return ["One of the searches has no feasible front point: no comparison."]
    for metrics in (["fid", "latency_ms"], ["fid", "latency_ms", "model_bytes"]):
        beaten = [s for s in sampler if any(dominates(j, s, metrics) for j in joint)]
        lost = [j for j in joint if any(dominates(s, j, metrics) for s in sampler)]
        volumes = _hypervolumes(summaries, metrics)
        lines.append(
            f"- In ({', '.join(metrics)}): the compression front dominates {len(beaten)} of {len(sampler)} "
            f"schedule-only points and has {len(lost)} of {len(joint)} points dominated by the schedule-only front; "
            f"hypervolume (common normalisation) compression {volumes[COMPRESSED]:.3f} vs schedule-only "
            f"{volumes['sampler']:.3f}."
        )
        for point in beaten:
            by = min((j for j in joint if dominates(j, point, metrics)), key=lambda j: (j["fid"], j["latency_ms"]))
            lines.append(
                f"  - schedule-only trial {point['trial']} (FID {point['fid']:.2f}, {point['latency_ms']:.1f} ms, "
                f"{point['model_bytes']:.0f} B) is dominated by compression trial {by['trial']} (FID {by['fid']:.2f}, "
                f"{by['latency_ms']:.1f} ms, {by['model_bytes']:.0f} B)"
            )
    return lines
