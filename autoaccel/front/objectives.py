"""Which measured metrics may be objectives, and in which direction each is better; ``quality`` names the target's
default quality metric."""

from __future__ import annotations

from autoaccel.errors import ConfigError

QUALITY = "quality"  # objectives=[quality, ...]: the target's default quality metric (``default_quality``)
REAL_DATA_QUALITY = "fid"  # with real images (embedded models, target.data): FID against them
# Without real images: the figure that ranked plans most like real-data FID in reports/bench/quality.md, which is
# FID against the reference call's own samples (rho 0.98 over 40 plans at 256 samples; the paired figures against
# the ODE solution fall to rho < 0 among the better plans, as they punish plans that start below the reference).
NO_DATA_QUALITY = "fid"

DIRECTIONS: dict[str, str] = {
    "fid": "minimize",
    "kid": "minimize",
    "fid_ensemble": "minimize",
    "latency_ms": "minimize",
    "nfe": "minimize",
    "peak_memory_mb": "minimize",
    "model_memory_mb": "minimize",
    "energy_j": "minimize",
    "params": "minimize",
    "model_bytes": "minimize",
    "psnr_vs_ode": "maximize",
    "ssim_vs_ode": "maximize",
    "feature_dist_vs_ode": "minimize",
    "adherence": "maximize",
    "clip_score": "maximize",
    "pickscore": "maximize",
    "fid_inception": "minimize",
    "precision": "maximize",
    "recall": "maximize",
}

# The measured figures of a trial, in the order tables show them.
METRIC_COLUMNS = [
    "nfe",
    "fid",
    "fid_std",
    "kid",
    "kid_std",
    "precision",
    "recall",
    "fid_ensemble",
    "psnr_vs_ode",
    "ssim_vs_ode",
    "feature_dist_vs_ode",
    "adherence",
    "clip_score",
    "clip_score_lo",
    "clip_score_hi",
    "pickscore",
    "pickscore_lo",
    "pickscore_hi",
    "fid_inception",
    "fid_inception_lo",
    "fid_inception_hi",
    "latency_ms",
    "encode_ms",
    "denoise_ms",
    "decode_ms",
    "peak_memory_mb",
    "model_memory_mb",
    "energy_j",
    "params",
    "model_bytes",
]


def default_quality(target) -> str:
    """The quality metric a search on ``target`` optimises when the objectives say ``quality``: FID against real
    images where the target has them, else ``NO_DATA_QUALITY`` (chosen by ``python -m autoaccel bench quality``;
    today also FID, against the reference call's samples)."""
    return REAL_DATA_QUALITY if getattr(target, "real_images", None) is not None else NO_DATA_QUALITY


def resolve_objectives(objectives: list[str], target) -> list[str]:
    """``objectives`` with ``quality`` replaced by the target's default quality metric; other names unchanged."""
    return [default_quality(target) if name == QUALITY else str(name) for name in objectives]


def fall_back(objectives: list[str], unmeasured: dict[str, str], target) -> tuple[list[str], list[str]]:
    """``objectives`` (resolved) with each figure this run cannot measure (``unmeasured``: figure -> why) replaced by
    the target's default quality metric, which needs nothing (dropped where it is already there), and one line per
    replacement. Two objectives must remain."""
    kept, lines = [], []
    for name in objectives:
        if name not in unmeasured:
            kept.append(name)
            continue
        default = default_quality(target)
        lines.append(f"objective {name} falls back to {default}, which needs no model: {name} is not measured")
        if default not in objectives and default not in kept:
            kept.append(default)
    if len(kept) < 2:
        raise ConfigError(
            f"objectives={objectives}: {', '.join(name for name in objectives if name in unmeasured)} cannot be "
            f"measured in this run ({'; '.join(unmeasured.values())}), which leaves {kept}; give two or more "
            "measurable metrics, e.g. [fid, latency_ms]"
        )
    return kept, lines


def objective_directions(names: list[str]) -> list[str]:
    """Directions for ``objectives=[...]`` (after ``resolve_objectives``); at least two (quality and cost), no
    repeats, all known."""
    names = list(names)
    for name in names:
        if name == QUALITY:
            raise ConfigError("objective 'quality' must be resolved for a target first (resolve_objectives)")
        if name not in DIRECTIONS:
            raise ConfigError(
                f"objective {name!r} is not a measured metric; valid: {QUALITY} (the target's default), "
                f"{', '.join(DIRECTIONS)}"
            )
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"objectives={names} is not valid; give two or more distinct metrics, e.g. [fid, latency_ms]")
    return [DIRECTIONS[name] for name in names]


# --- what the memory figures measured --------------------------------------------------------------------------

CUDA_ALLOCATED = "cuda-allocated"
CPU_RSS = "cpu-rss"
# What peak_memory_mb is, per memory_kind: for table headers and recipes
MEMORY_KIND_LABELS = {
    CUDA_ALLOCATED: "CUDA allocator peak",
    CPU_RSS: "process RSS",
}


MODEL_MEMORY_MEANING = (
    "the denoiser's parameter and buffer bytes plus the peak activation bytes of one denoiser call at "
    "the deployment batch size (CUDA allocator peak on a GPU, live tensors tracked per operator on a CPU)"
)


def describe_peak_memory(memory_kind: str | None) -> str:
    """One phrase saying what ``peak_memory_mb`` measured, for a reader of a table or a recipe."""
    label = MEMORY_KIND_LABELS.get(str(memory_kind), "")
    if memory_kind == CPU_RSS:
        return f"{label}: the whole process's resident peak during the timed calls, not the model's alone"
    if memory_kind == CUDA_ALLOCATED:
        return f"{label}: tensors allocated on the GPU during the timed calls"
    return "not recorded"
