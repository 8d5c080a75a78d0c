"""Which measured metrics may be objectives, and in which direction each is better."""

from __future__ import annotations

from autoaccel.errors import ConfigError

DIRECTIONS: dict[str, str] = {
    "fid": "minimize",
    "kid": "minimize",
    "latency_ms": "minimize",
    "nfe": "minimize",
    "peak_memory_mb": "minimize",
    "model_memory_mb": "minimize",
    "energy_j": "minimize",
    "params": "minimize",
    "model_bytes": "minimize",
    "psnr_vs_ode": "maximize",
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
    "psnr_vs_ode",
    "latency_ms",
    "peak_memory_mb",
    "model_memory_mb",
    "energy_j",
    "params",
    "model_bytes",
]


def objective_directions(names: list[str]) -> list[str]:
    """Directions for ``objectives=[...]``; at least two (quality and cost), no repeats, all known."""
    names = list(names)
    for name in names:
        if name not in DIRECTIONS:
            raise ConfigError(f"objective {name!r} is not a measured metric; valid: {', '.join(DIRECTIONS)}")
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"objectives={names} is not valid; give two or more distinct metrics, e.g. [fid, latency_ms]")
    return [DIRECTIONS[name] for name in names]
