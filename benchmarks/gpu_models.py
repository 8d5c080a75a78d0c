"""SDXL- and Flux-shaped models at their real sizes (a 2.6B UNet, a 12B transformer; random weights: no model hub
here) in bfloat16 on one GPU: the default call against plans of the shape autoaccel's searches find, and the
default call under model offload, with latency and peak memory. Whole pipeline calls at 1024x1024, batch 1, CUDA
events (``autoaccel.measure.latency.measure_cost``: median of 3 calls after 1 warm-up call). The text encoders
have the real widths (CLIP-L, OpenCLIP-G, T5-XXL) but two layers each: their share of a call is small and their
depth is not what is measured here. Random weights time the real shapes; no quality is claimed.

Run on a CUDA machine from a checkout: ``python -m autoaccel bench gpu_models`` (writes
reports/bench/models-gpu-<device>.md; ``--budget-seconds`` bounds the run, rows past it are listed as not run).
``--tiny --device cpu`` runs the same rows on the test kit's tiny models (what the test suite checks)."""

from __future__ import annotations

import argparse
import gc
import re
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from autoaccel.measure.latency import measure_cost
from autoaccel.pipeline.seeds import make_seed_batch
from autoaccel.plan.apply import build_pipeline
from autoaccel.plan.steps import Plan
from autoaccel.reference.sampling import reference_pipeline
from autoaccel.targets.loader import place, target_from_pipeline
from autoaccel.techniques.base import registered_techniques, unchanged_model_params

WARMUP, REPEATS = 1, 3
PROMPTS = ["a photograph of an astronaut riding a horse", "a watercolour of a lighthouse at dawn"]

# SDXL base 1.0's UNet and VAE configs (the numbers its model card's files give)
SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
# FLUX.1-dev's transformer
FLUX_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
VAE_BLOCKS = {
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
}


@dataclass(frozen=True)
class Row:
    """One measured configuration: plan settings (candidate parameters over the unchanged model), or ``offload``."""

    name: str
    params: dict[str, Any]
    offload: bool = False


def rows_for(kind: str) -> list[Row]:
    """The default call, plans of the shape the CPU searches find (a solver on fewer steps; with a cache; compiled),
    and the default call under model offload."""
    if kind == "sdxl":
        solver = {"solver.name": "dpmsolver++", "solver.order": 2, "timesteps.steps": 12}
        cache = {"caching.method": "deep", "caching.interval": 3}
    else:
        solver = {"solver.name": "flow_euler", "timesteps.steps": 10}
        cache = {"caching.method": "first_block", "caching.threshold": 0.12}
    return [
        Row("default call", {}),
        Row(f"{solver['solver.name']} {solver['timesteps.steps']} steps", solver),
        Row(
            f"{solver['solver.name']} {solver['timesteps.steps']} steps + {cache['caching.method']} cache",
            {**solver, **cache},
        ),
        Row(
            f"{solver['solver.name']} {solver['timesteps.steps']} steps, compiled",
            {**solver, "runtime.compile": "default"},
        ),
        Row("default call, model offload", {}, offload=True),
    ]


def _clip(hidden: int, projection: bool):
    """A CLIP text encoder of a real width (CLIP-L 768, OpenCLIP-G 1280), two layers deep, and its tokenizer."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from autoaccel.testing.pipelines import _clip_config, _clip_tokenizer

    config = _clip_config(hidden, heads=hidden // 64, intermediate_size=4 * hidden)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval(), _clip_tokenizer()


def _t5():
    """T5-XXL's widths, two layers deep, and its tokenizer."""
    from autoaccel.testing.pipelines import _t5_encoder, _t5_tokenizer

    return _t5_encoder(0, d_model=4096, d_kv=64, d_ff=10240), _t5_tokenizer()


def real_size_pipeline(kind: str, device: str):
    """A real-size random-weight pipeline, built on ``device`` directly in bfloat16 (never in float32 first)."""
    import diffusers

    default_dtype = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(torch.bfloat16)
        with torch.device(device):
            if kind == "sdxl":
                text_encoder, tokenizer = _clip(768, projection=False)
                text_encoder_2, tokenizer_2 = _clip(1280, projection=True)
                return diffusers.StableDiffusionXLPipeline(
                    vae=diffusers.AutoencoderKL(latent_channels=4, scaling_factor=0.13025, **VAE_BLOCKS),
                    text_encoder=text_encoder,
                    text_encoder_2=text_encoder_2,
                    tokenizer=tokenizer,
                    tokenizer_2=tokenizer_2,
                    unet=diffusers.UNet2DConditionModel(**SDXL_UNET),
                    scheduler=diffusers.EulerDiscreteScheduler(
                        beta_start=0.00085,
                        beta_end=0.012,
                        beta_schedule="scaled_linear",
                        steps_offset=1,
                        timestep_spacing="leading",
                    ),
                )
            text_encoder, tokenizer = _clip(768, projection=False)
            text_encoder_2, tokenizer_2 = _t5()
            return diffusers.FluxPipeline(
                transformer=diffusers.FluxTransformer2DModel(**FLUX_TRANSFORMER),
                scheduler=diffusers.FlowMatchEulerDiscreteScheduler(
                    shift=3.0,
                    use_dynamic_shifting=True,
                    base_shift=0.5,
                    max_shift=1.15,
                    base_image_seq_len=256,
                    max_image_seq_len=4096,
                ),
                vae=diffusers.AutoencoderKL(
                    latent_channels=16,
                    scaling_factor=0.3611,
                    shift_factor=0.1159,
                    use_quant_conv=False,
                    use_post_quant_conv=False,
                    **VAE_BLOCKS,
                ),
                text_encoder=text_encoder,
                tokenizer=tokenizer,
                text_encoder_2=text_encoder_2,
                tokenizer_2=tokenizer_2,
            )
    finally:
        torch.set_default_dtype(default_dtype)


def tiny_pipeline(kind: str, device: str):
    """The test kit's tiny pipeline of ``kind``, loaded as a user's folder is."""
    import tempfile

    import diffusers

    from autoaccel.testing.pipelines import build_tiny_pipeline

    pipeline = diffusers.DiffusionPipeline.from_pretrained(build_tiny_pipeline(kind, Path(tempfile.mkdtemp()) / kind))
    return pipeline.to(device)


def target_of(pipeline, kind: str, tiny: bool):
    extra = {"default_call": {"height": 16, "width": 16}} if tiny and kind == "flux" else {}
    return target_from_pipeline(pipeline, f"{kind}-shaped", Path(kind), extra, prompts=PROMPTS)


def row_pipeline(target, row: Row):
    """The default call, or the row's plan over the model as it is (every other model technique unchanged)."""
    if not row.params:
        return reference_pipeline(target)
    params = {**unchanged_model_params(), **row.params}
    named = [
        technique
        for technique in registered_techniques()
        if any(key.startswith(f"{technique.name}.") for key in params)
    ]
    return build_pipeline(target, Plan.of((technique, technique.config_from_params(params)) for technique in named))


def _refusal(error: Exception) -> str:
    return "refused: " + re.sub(r"\s+", " ", f"{type(error).__name__}: {error}")[:300]


def write_table(out: Path, kinds: list[str], device: str, tiny: bool, budget_s: float) -> None:
    started = time.perf_counter()
    on_cuda = device.startswith("cuda")
    shown = torch.cuda.get_device_name(0) if on_cuda else "CPU"
    size = "the test kit's tiny models (random weights)" if tiny else "real sizes, random weights, bfloat16"
    lines = [
        f"# SDXL- and Flux-shaped models on {shown}: {size}",
        "",
        f"Generated by `python -m autoaccel bench gpu_models{' --tiny --device cpu' if tiny else ''}` (torch "
        f"{torch.__version__}, diffusers {version('diffusers')}). Whole pipeline calls (text encoding, every step, "
        f"the decode) at batch 1, median of {REPEATS} calls after {WARMUP} warm-up call; peak MiB: "
        f"{'the CUDA allocator peak' if on_cuda else 'the process RSS peak'} over the timed calls. The plans are "
        "of the shape autoaccel's searches find on the embedded models; random weights time the real shapes and "
        "claim no quality. Model offload: diffusers' enable_model_cpu_offload, its moves inside every call.",
        "",
        "| model | row | ms (IQR) | speed-up | peak MiB | device |",
        "|---|---|---|---|---|---|",
    ]
    not_run = []
    for kind in kinds:
        pipeline = tiny_pipeline(kind, device) if tiny else real_size_pipeline(kind, device)
        pipeline.set_progress_bar_config(disable=True)
        target = target_of(pipeline, kind, tiny)
        parameters = sum(parameter.numel() for parameter in target.denoiser.parameters()) / 1e9
        lines.append(f"| {kind} ({parameters:.2f}B-parameter denoiser) | | | | | |")
        seeds = make_seed_batch(target.sample_shape, 1, 0, target.condition_count)
        baseline = None
        for row in rows_for(kind):
            if time.perf_counter() - started > budget_s:
                not_run.append(f"{kind} {row.name}")
                continue
            try:
                if row.offload:
                    if not on_cuda:
                        raise RuntimeError("model offload needs a GPU to offload to")
                    place(pipeline, device, "model")
                    target = target_of(pipeline, kind, tiny)
                    target.offload = "model"
                measured = row_pipeline(target, row)
                if on_cuda:
                    torch.cuda.empty_cache()
                cost = measure_cost(measured, seeds, WARMUP, REPEATS)
            except Exception as error:  # a row this GPU, torch or the model refuses: its reason, not a crash
                lines.append(f"| {kind} | {row.name} | {_refusal(error)} | | | |")
                print(lines[-1], flush=True)
                continue
            baseline = baseline or cost.latency_ms
            lines.append(
                f"| {kind} | {row.name} | {cost.latency_ms:.1f} ({cost.latency_iqr_ms:.1f}) | "
                f"{baseline / cost.latency_ms:.2f}x | {cost.peak_memory_mb:.0f} | {cost.device} |"
            )
            print(lines[-1], flush=True)
            del measured
        del pipeline, target
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()
    if not_run:
        lines += ["", f"Not run (past the {budget_s:.0f} s budget): {', '.join(not_run)}."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def default_out(device: str, tiny: bool) -> Path:
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    name = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return Path("reports/bench") / f"models-{'tiny-' if tiny else ''}gpu-{name}.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoaccel bench gpu_models", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="the Markdown table (default reports/bench/models-gpu-<device>.md)")
    parser.add_argument("--models", nargs="+", choices=("sdxl", "flux"), default=["sdxl", "flux"])
    parser.add_argument("--tiny", action="store_true", help="the test kit's tiny models instead of real sizes")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu with --tiny")
    parser.add_argument("--budget-seconds", type=float, default=420.0, help="no row starts after this (7 minutes)")
    options = parser.parse_args(argv)
    if options.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench gpu_models needs a CUDA GPU (or --tiny --device cpu)", file=sys.stderr)
        return 2
    if not options.tiny and not options.device.startswith("cuda"):
        print("bench gpu_models: real-size models run on a GPU only; add --tiny to run on the CPU", file=sys.stderr)
        return 2
    out = options.out or default_out(options.device, options.tiny)
    write_table(out, options.models, options.device, options.tiny, options.budget_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
