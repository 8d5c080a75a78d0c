"""The FID features of every image set a run scored, kept in its folder (``<run>/features/``), one per-image row
in seed order: what a paired bootstrap over the seeds (``autoaccel.metrics.bootstrap``) needs to say how sure the
report's and ``plan``'s comparisons are, long after the images are gone.

Each set is a safetensors file (tensors and string metadata only: reading one never runs code) written atomically:
``plan-<candidate key>-n<samples>`` for a plan, ``reference-call-n<samples>`` for the reference call on the same
seeds, ``reference-set-n<samples>`` for the FID reference set (real images, less those held out for the floor),
``held-out-n<samples>`` for the real images held out, ``ode-n<samples>`` for the ODE reference. The metadata name
the extractor, the seed and the sample count, so sets measured another way are never compared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from autoaccel.util.files import write_atomically

FEATURES_DIR = "features"
SUFFIX = ".safetensors"
REFERENCE_CALL = "reference-call"
REFERENCE_SET = "reference-set"
HELD_OUT = "held-out"
ODE = "ode"
NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")  # candidate keys are 12 hex digits; nothing here names another folder


@dataclass(frozen=True)
class FeatureSet:
    """Per-image features (N, D) and how they were measured."""

    features: torch.Tensor
    extractor: str
    seed: int
    samples: int

    def matches(self, other: FeatureSet) -> bool:
        """Measured with the same extractor on the same seeds: comparable row by row."""
        return (self.extractor, self.seed, self.samples) == (other.extractor, other.seed, other.samples)


def plan_set(candidate_key: str, samples: int) -> str:
    return f"plan-{candidate_key}-n{int(samples)}"


def kind_set(kind: str, samples: int) -> str:
    return f"{kind}-n{int(samples)}"


class FeatureStore:
    """The ``features/`` folder of one run."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path_of(self, name: str) -> Path | None:
        """The file of set ``name``; None for a name that is not one (a hand-edited candidate key)."""
        return self.folder / f"{name}{SUFFIX}" if NAME.fullmatch(name) else None

    def put(self, name: str, features: torch.Tensor, extractor: str, seed: int) -> Path:
        from safetensors.torch import save

        path = self.path_of(name)
        if path is None:
            raise ValueError(f"feature set name {name!r} is not one autoaccel writes")
        metadata = {"extractor": extractor, "seed": str(int(seed)), "samples": str(len(features))}
        data = save({"features": features.detach().to("cpu", torch.float32).contiguous()}, metadata=metadata)
        return write_atomically(path, lambda temporary: temporary.write_bytes(data))

    def get(self, name: str) -> FeatureSet | None:
        """Set ``name``, or None where it is missing or unreadable (an old run, another machine's trial)."""
        from safetensors import safe_open

        path = self.path_of(name)
        if path is None or not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as opened:
                metadata = opened.metadata() or {}
                features = opened.get_tensor("features")
            samples = int(metadata["samples"])
            if features.dim() != 2 or len(features) != samples or not torch.isfinite(features).all():
                return None
            return FeatureSet(features, str(metadata["extractor"]), int(metadata["seed"]), samples)
        except Exception:  # a damaged or foreign file is a set this run does not have
            return None
