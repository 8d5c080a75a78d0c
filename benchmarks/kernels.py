"""``python -m autoaccel bench kernels``: GPU latency of quantized plans with real kernels (torchao).

The search scores quantization by simulation; this is where its speed is measured for real. For every recipe
in a folder (by default the compression front that ``bench compression`` exported) it times the plan's pipeline on
CUDA side by side three ways: the unchanged float model on the same sampler, the plan with float kernels
(pruning only), and the plan with torchao's int8 kernels on the layers it quantizes. Latency is CUDA-event
time per call (median of repeats), peak memory the allocator's, energy NVML's counter. A larger random-weight
UNet adds latency-only rows where int8 and fp8 kernels have matrices big enough to matter.

Runs without Hydra or a search, so it needs only torch, diffusers, torch-pruning, torchao, torch-fidelity
(the digits target's feature extractor) and nvidia-ml-py on the GPU machine.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from autoaccel.measure.kernels import deployment_kernels
from autoaccel.measure.latency import measure_cost
from autoaccel.measure.size import model_bytes
from autoaccel.pipeline.sampling import sampler_pipeline
from autoaccel.pipeline.seeds import make_seed_batch
from autoaccel.techniques.quantization import bit_assignment
from autoaccel.techniques.quantization_kernels import torchao_available


def _time(pipeline, seeds, repeats: int) -> dict:
    cost = measure_cost(pipeline, seeds, warmup=3, repeats=repeats)
    return {"latency_ms": cost.latency_ms, "peak_mb": cost.peak_memory_mb, "energy_j": cost.energy_j}


def time_recipe(recipe_path: Path, target, batch_sizes: list[int], repeats: int) -> list[dict]:
    """Float baseline, float-kernel plan and real-kernel plan for one recipe, at each batch size."""
    from autoaccel.plan.recipe import apply_recipe

    pipeline = apply_recipe(target, recipe_path)
    baseline = sampler_pipeline(target)  # the unchanged float model on the recipe's sampler
    baseline.scheduler, baseline.plan = pipeline.scheduler, copy.copy(pipeline.plan)
    plan = bit_assignment(pipeline.unet)
    rows = []
    for batch in batch_sizes:
        seeds = make_seed_batch(target.sample_shape, batch, 0, target.condition_count)
        row = {"recipe": recipe_path.name, "batch": batch, "bytes": model_bytes(pipeline.unet)}
        row["float model"] = _time(baseline, seeds, repeats)
        with deployment_kernels(pipeline, real_kernels=False):  # the evaluator's own switch: fake quant off
            row["plan, float kernels"] = _time(pipeline, seeds, repeats)
        if plan is not None and torchao_available():
            with deployment_kernels(pipeline) as kernels:  # what a trial's latency times on CUDA
                row["kernels"] = kernels.label
                row["plan, torchao kernels"] = _time(pipeline, seeds, repeats)
        rows.append(row)
    return rows


def large_unet_rows(batch: int, repeats: int, compiled: bool = False, compile_budget_s: float = 0.0) -> list[dict]:
    """Per-call latency of an SD-scale-channel UNet2DModel (random weights) with each torchao config."""
    from diffusers import UNet2DModel
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        quantize_,
    )

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("AttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("AttnUpBlock2D",) * 3,
        attention_head_dim=64,
    )
    unet = unet.to("cuda", torch.bfloat16).eval()
    sample = torch.randn(batch, 4, 32, 32, device="cuda", dtype=torch.bfloat16)
    timestep = torch.full((batch,), 500, device="cuda")
    configs = {
        "bf16": None,
        "int8 weight-only": Int8WeightOnlyConfig(),
        "int8 dynamic act + int8 weight": Int8DynamicActivationInt8WeightConfig(),
    }
    if torch.cuda.get_device_capability() >= (8, 9):
        configs["fp8 dynamic act + fp8 weight"] = Float8DynamicActivationFloat8WeightConfig()
    rows = []
    started = time.perf_counter()
    mode = "torch.compile" if compiled else "eager"
    for label, config in configs.items():
        if compiled and time.perf_counter() - started > compile_budget_s:
            rows.append({"config": f"{label}, {mode}", "error": "not run: over this run's compile time budget"})
            continue
        model = copy.deepcopy(unet)
        try:
            if config is not None:
                quantize_(model, config)
            if compiled:
                model = torch.compile(model)
            times = _event_times(model, sample, timestep, repeats)
        except Exception as error:  # a kernel this card or build lacks: say so in the table, go on
            rows.append({"config": f"{label}, {mode}", "error": f"{type(error).__name__}: {str(error)[:160]}"})
            continue
        rows.append({"config": f"{label}, {mode}", "latency_ms": statistics.median(times)})
        del model
        torch.cuda.empty_cache()
    return rows


def _event_times(model, sample, timestep, repeats: int) -> list[float]:
    """CUDA-event milliseconds of ``repeats`` calls after three warm-up calls."""
    times = []
    with torch.no_grad():
        for index in range(repeats + 3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(sample, timestep)
            end.record()
            torch.cuda.synchronize()
            if index >= 3:
                times.append(start.elapsed_time(end))
    return times


def write_markdown(path: Path, device: str, recipe_rows: list[dict], large: list[dict], batch: int) -> None:
    def cell(row: dict, key: str, field: str = "latency_ms") -> str:
        return f"{row[key][field]:.2f}" if key in row else "not measured"

    lines = [
        "# Real quantized kernels on a GPU",
        "",
        f"Generated by `python -m autoaccel bench kernels` on **{device}** (torch {torch.__version__}). "
        "The digits plans run in eager mode; CUDA-event latency per pipeline call (median), NVML energy per "
        "call. torchao's int8 and fp8 kernels are built for torch.compile: the large-UNet rows show both modes.",
        "",
        "## The compression front's plans (embedded digits model)",
        "",
        "| recipe | batch | bytes | float model ms | plan, float kernels ms | plan, torchao ms | torchao / float "
        "model | energy J (float model / torchao) | kernels |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in recipe_rows:
        if "error" in row:
            lines.append(f"| {row['recipe']} | | | failed: {row['error']} | | | | | |")
            continue
        ratio = (
            f"{row['plan, torchao kernels']['latency_ms'] / row['float model']['latency_ms']:.2f}x"
            if "plan, torchao kernels" in row
            else f"{row['plan, float kernels']['latency_ms'] / row['float model']['latency_ms']:.2f}x (float)"
        )
        energy = f"{row['float model']['energy_j']:.3f} / " + (
            f"{row['plan, torchao kernels']['energy_j']:.3f}" if "plan, torchao kernels" in row else "-"
        )
        lines.append(
            f"| {row['recipe']} | {row['batch']} | {row['bytes']} | {cell(row, 'float model')} | "
            f"{cell(row, 'plan, float kernels')} | {cell(row, 'plan, torchao kernels')} | {ratio} | {energy} | "
            f"{row.get('kernels', 'float (no quantization in this plan)')} |"
        )
    if large:
        base = large[0].get("latency_ms", float("nan"))
        lines += [
            "",
            f"## An SD-scale-channel UNet2DModel (random weights, 32x32x4 latents, batch {batch}): latency only",
            "",
            "| torchao config, mode | ms per call | vs bf16 eager |",
            "|---|---|---|",
            *[
                f"| {row['config']} | {row['latency_ms']:.2f} | {row['latency_ms'] / base:.2f}x |"
                if "latency_ms" in row
                else f"| {row['config']} | failed: {row['error']} | |"
                for row in large
            ],
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoaccel bench kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", type=Path, default=Path("reports/bench/compression-front"))
    parser.add_argument("--out", type=Path, default=Path("reports/bench/kernels.md"))
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--large-batch", type=int, default=8)
    parser.add_argument("--compile-budget-s", type=float, default=0.0, help="also time torch.compile'd models")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench kernels needs a CUDA GPU: quantized kernels are not measured on this machine", file=sys.stderr)
        return 2
    from autoaccel.targets.digits.model import load_digits_target

    target = load_digits_target(device="cuda")
    recipe_rows = []
    name = torch.cuda.get_device_name()
    large = large_unet_rows(args.large_batch, args.repeats) if torchao_available() else []
    print(large, flush=True)
    write_markdown(args.out, name, [], large, args.large_batch)
    for recipe in sorted(args.recipes.glob("*.yaml")):
        try:
            recipe_rows += time_recipe(recipe, target, args.batches, args.repeats)
        except Exception as error:  # one plan that fails on this machine is reported, the others still run
            print(f"{recipe.name}: {type(error).__name__}: {error}", flush=True)
            recipe_rows.append({"recipe": recipe.name, "error": f"{type(error).__name__}: {str(error)[:160]}"})
            continue
        print(recipe_rows[-1], flush=True)
        write_markdown(args.out, name, recipe_rows, large, args.large_batch)
    if args.compile_budget_s > 0 and torchao_available():  # last: one compile of a large UNet takes minutes
        large += large_unet_rows(args.large_batch, args.repeats, True, args.compile_budget_s)
    write_markdown(args.out, name, recipe_rows, large, args.large_batch)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
