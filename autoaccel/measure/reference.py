"""The fixed yardsticks every candidate of a run is scored against, computed once and cached on disk.

- seeds: the common initial noise and class labels;
- the teacher: the model's own full-step sampler (e.g. 1000-step DDPM) on those seeds, the report's
  teacher row and, for a model without its own data, the FID reference;
- the ODE reference: a deterministic many-step DPM-Solver++ solution from the same noise, against which each
  candidate image's PSNR is taken (a stochastic DDPM sample cannot be matched image by image).
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from autoaccel.files import write_atomically
from autoaccel.measure.quality import distribution_metrics, psnr, tensor_digest
from autoaccel.seeds import SeedBatch, make_seed_batch, sample_in_chunks
from autoaccel.targets.base import Target
from autoaccel.teacher import ODE_REFERENCE_STEPS, ode_reference_pipeline, teacher_pipeline


class QualityJudge:
    """Scores images made from ``seeds``: distribution metrics and PSNR to the ODE reference."""

    def __init__(self, target: Target, samples: int, seed: int, cache_dir: Path, chunk_size: int = 256) -> None:
        self.target = target
        self.samples = samples
        self.cache_dir = Path(cache_dir)
        self.chunk_size = chunk_size
        self.seeds = make_seed_batch(target.sample_shape, samples, seed, target.num_classes)
        self._teacher_images: torch.Tensor | None = None
        self._ode_images: torch.Tensor | None = None
        self._lock = threading.RLock()  # concurrent trials share one judge: references are made once

    def _cached(self, kind: str, make) -> torch.Tensor:
        key = f"{self.target.content_hash[:16]}-{kind}-n{self.samples}-seed{self.seeds.seed}.pt"
        path = self.cache_dir / "samples" / key
        if path.exists():
            return torch.load(path, weights_only=True)
        images = make()
        write_atomically(path, lambda temporary: torch.save(images, temporary))
        return images

    def teacher_images(self) -> torch.Tensor:
        with self._lock:
            return self._teacher()

    def _teacher(self) -> torch.Tensor:
        if self._teacher_images is None:
            self._teacher_images = self._cached(
                "teacher", lambda: sample_in_chunks(teacher_pipeline(self.target), self.seeds, self.chunk_size)
            )
        return self._teacher_images

    def ode_images(self) -> torch.Tensor:
        with self._lock:
            return self._ode()

    def _ode(self) -> torch.Tensor:
        if self._ode_images is None:
            self._ode_images = self._cached(
                f"ode{ODE_REFERENCE_STEPS}",
                lambda: sample_in_chunks(ode_reference_pipeline(self.target), self.seeds, self.chunk_size),
            )
        return self._ode_images

    def reference_images(self) -> tuple[torch.Tensor, str]:
        """uint8 reference images for FID and a cache key naming them."""
        from autoaccel.imaging import to_uint8

        if self.target.real_images is not None:
            real = self.target.real_images
            return real, f"real-{tensor_digest(real)}"
        teacher = to_uint8(self.teacher_images())
        return teacher, f"teacher-{tensor_digest(teacher)}"

    def score(self, images: torch.Tensor) -> dict[str, float]:
        with self._lock:  # torch-fidelity's reference cache is written on first use
            return self._score(images)

    def _score(self, images: torch.Tensor) -> dict[str, float]:
        reference, reference_key = self.reference_images()
        metrics = distribution_metrics(
            images,
            reference,
            self.target.quality.extractor,
            self.cache_dir,
            reference_key,
            cuda=str(self.target.unet.device).startswith("cuda"),
        )
        metrics["psnr_vs_ode"] = psnr(images, self.ode_images())
        return metrics

    def deployment_seeds(self, batch_size: int) -> SeedBatch:
        if batch_size > self.samples:
            return make_seed_batch(self.target.sample_shape, batch_size, self.seeds.seed, self.target.num_classes)
        return self.seeds.head(batch_size)
