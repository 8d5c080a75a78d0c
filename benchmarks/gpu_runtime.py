"""The runtime rows on a CUDA GPU: precision, torch.compile (CUDA graphs included), the flash and cuDNN attention
kernels, and torchao's int8 (and, where it runs, float8) kernels, against the float32 eager default call of the
embedded latent models at batch 1 and 8. Whole pipeline calls, CUDA events (``autoaccel.measure.latency``: median
of 5 calls after 2 warm-up calls), the allocator's peak and NVML's device memory where NVML is available. Run on a
CUDA machine from a checkout: ``python -m autoaccel bench gpu_runtime`` (writes
reports/bench/runtime-gpu-<device>.md; ``--budget-seconds`` bounds the run, rows past it are listed as not run)."""

from __future__ import annotations

import argparse
import copy
import re
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch

from autoaccel.measure.latency import measure_cost
from autoaccel.pipeline.seeds import make_seed_batch
from autoaccel.plan.apply import build_pipeline
from autoaccel.plan.steps import Plan
from autoaccel.reference.sampling import describe_reference
from autoaccel.techniques.base import COMPILE_SECONDS, get_technique, unchanged_model_params
from benchmarks.runtime import SETTINGS

BATCHES = (1, 8)
WARMUP, REPEATS = 2, 5
# the rows, in order: a runtime.*/quantization.* setting of benchmarks.runtime, or float8 (torchao directly)
ROWS = (
    "float32 eager",
    "bfloat16",
    "float16",
    "compile-default",
    "compile-max-autotune-no-cudagraphs",
    "compile-reduce-overhead",
    "attention-flash",
    "attention-cudnn",
    "int8-weight-only",
    "int8-dynamic",
    "float8-dynamic",
)
FLOAT8 = "float8-dynamic"
TECHNIQUES = ("quantization", "runtime")
TARGETS = ("digits_t2i", "digits_dit", "tiny-sd")  # tiny-sd: random weights, what the smoke test runs


def targets(names: list[str]):
    from autoaccel.targets.digits.model import load_digits_dit_target, load_digits_t2i_target
    from autoaccel.targets.loader import load_pipeline_folder
    from autoaccel.testing.pipelines import build_tiny_pipeline

    loaders = {
        "digits_t2i": lambda: load_digits_t2i_target("cuda"),
        "digits_dit": lambda: load_digits_dit_target("cuda"),
        "tiny-sd": lambda: load_pipeline_folder(
            build_tiny_pipeline("sd", Path(tempfile.mkdtemp()) / "sd"), device="cuda"
        ),
    }
    for name in names:
        yield name, loaders[name]()


def row_pipeline(target, row: str):
    """The default call with ``row``'s setting: through the techniques (the same code a plan runs), or for float8
    the float32 model's Linear layers through torchao's ``Float8DynamicActivationFloat8WeightConfig``."""
    params = {**unchanged_model_params(), **(SETTINGS.get(row) or {})}
    plan = Plan.of((technique, technique.config_from_params(params)) for technique in map(get_technique, TECHNIQUES))
    pipeline = build_pipeline(target, plan)
    if row == FLOAT8:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

        model = copy.deepcopy(pipeline.denoiser).eval().requires_grad_(False)
        quantize_(model, Float8DynamicActivationFloat8WeightConfig())
        pipeline.denoiser = model
    return pipeline


def nvml_used_mb() -> float | None:
    """The device's used memory as NVML sees it (the allocator's cache, the CUDA context, other processes)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        return pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
    except Exception:  # no pynvml, or NVML cannot start: the column stays empty
        return None


def images_of(pipeline, seeds) -> torch.Tensor:
    generator = torch.Generator(device=pipeline.denoiser.device).manual_seed(seeds.seed)
    return pipeline(seeds.noise, seeds.class_labels, generator=generator, encode=True).images.float()


def measure_row(target, pipeline, batch: int, reference: torch.Tensor | None):
    """(cells of the row, its images) at ``batch``: latency, memory, compile seconds (the first batch's include the
    compile) and the images' mean squared difference from float32 eager's over their mean square."""
    seeds = make_seed_batch(target.sample_shape, batch, 0, target.condition_count)
    images = images_of(pipeline, seeds)
    cost = measure_cost(pipeline, seeds, WARMUP, REPEATS)
    error = None if reference is None else float(((images - reference) ** 2).mean() / (reference**2).mean())
    return {
        "ms": cost.latency_ms,
        "iqr": cost.latency_iqr_ms,
        "peak": cost.peak_memory_mb,
        "nvml": nvml_used_mb(),
        "compile": getattr(pipeline.denoiser, COMPILE_SECONDS, None),
        "error": error,
    }, images


def _refusal(error: Exception) -> str:
    return "refused: " + re.sub(r"\s+", " ", f"{type(error).__name__}: {error}")[:300]


def _cell(value, digits: int, kind: str = "f") -> str:
    return "" if value is None else f"{value:.{digits}{kind}}"


def write_table(out: Path, names: list[str], batches: tuple[int, ...], budget_s: float) -> None:
    started = time.perf_counter()
    device = torch.cuda.get_device_name(0)
    lines = [
        f"# Runtime settings on {device}",
        "",
        f"Generated by `python -m autoaccel bench gpu_runtime` (torch {torch.__version__}, torchao "
        f"{version('torchao')}, diffusers {version('diffusers')}). Whole pipeline calls (text encoding, every step "
        f"of the default call, the decode), CUDA events, median of {REPEATS} calls after {WARMUP} warm-up calls "
        "(a compiled row compiles in its first calls: compile s). Speed-up: float32 eager's latency over the "
        "row's. Peak MiB: torch's allocator peak over the timed calls; NVML MiB: the device's used memory after "
        "them. Error: the images' mean squared difference from float32 eager's (same seeds) over their mean square.",
        "",
        "| model | batch | row | ms (IQR) | speed-up | peak MiB | NVML MiB | compile s | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    not_run, measured = [], False
    for name, target in targets(names):
        lines.append(f"| {name} | | {describe_reference(target)} | | | | | | |")
        baselines: dict[int, tuple[float, torch.Tensor]] = {}  # batch -> float32 eager's latency and images
        for row in ROWS:  # one pipeline per row, timed at every batch: a compiled row compiles once per shape
            if measured and time.perf_counter() - started > budget_s:
                not_run.append(f"{name} {row}")
                continue
            measured = True
            try:
                pipeline = row_pipeline(target, row)
            except Exception as error:  # a row the GPU, torch or torchao refuses: its reason, not a crash
                lines.append(f"| {name} | {', '.join(map(str, batches))} | {row} | {_refusal(error)} | | | | | |")
                print(lines[-1], flush=True)
                continue
            for batch in batches:
                baseline, reference = baselines.get(batch, (None, None))
                try:
                    cells, images = measure_row(target, pipeline, batch, reference)
                except Exception as error:
                    lines.append(f"| {name} | {batch} | {row} | {_refusal(error)} | | | | | |")
                    print(lines[-1], flush=True)
                    continue
                if row == ROWS[0]:
                    baselines[batch] = cells["ms"], images
                    baseline = cells["ms"]
                speedup = f"{baseline / cells['ms']:.2f}x" if baseline else ""
                lines.append(
                    f"| {name} | {batch} | {row} | {cells['ms']:.2f} ({cells['iqr']:.2f}) | {speedup} | "
                    f"{cells['peak']:.0f} | {_cell(cells['nvml'], 0)} | {_cell(cells['compile'], 1)} | "
                    f"{_cell(cells['error'], 1, 'e')} |"
                )
                print(lines[-1], flush=True)
            del pipeline
            torch.cuda.empty_cache()
    if not_run:
        lines += ["", f"Not run (past the {budget_s:.0f} s budget): {', '.join(not_run)}."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def default_out() -> Path:
    device = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
    return Path("reports/bench") / f"runtime-gpu-{device}.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoaccel bench gpu_runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="the Markdown table (default reports/bench/runtime-gpu-<device>.md)")
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=["digits_t2i", "digits_dit"])
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--budget-seconds", type=float, default=420.0, help="no row starts after this (7 minutes)")
    options = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench gpu_runtime needs a CUDA GPU: it times the runtime settings on one", file=sys.stderr)
        return 2
    write_table(options.out or default_out(), options.targets, tuple(options.batches), options.budget_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
