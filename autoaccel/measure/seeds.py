"""Common random numbers: every candidate is scored on the same initial noise and class labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SeedBatch:
    """``count`` initial noises (N, C, H, W) and class labels (balanced over classes), fixed by ``seed``."""

    seed: int
    noise: torch.Tensor
    class_labels: torch.Tensor | None

    @property
    def count(self) -> int:
        return len(self.noise)

    def head(self, count: int) -> SeedBatch:
        labels = None if self.class_labels is None else self.class_labels[:count]
        return SeedBatch(self.seed, self.noise[:count], labels)


def make_seed_batch(shape: tuple[int, int, int], count: int, seed: int, num_classes: int | None) -> SeedBatch:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((count, *shape), generator=generator)
    labels = None
    if num_classes:
        labels = (torch.arange(count) % num_classes)[torch.randperm(count, generator=generator)]
    return SeedBatch(seed, noise, labels)


def sample_in_chunks(pipeline, seeds: SeedBatch, chunk_size: int = 256) -> torch.Tensor:
    """Runs the pipeline over the seed batch; stochastic solvers draw from a generator seeded per chunk."""
    outputs = []
    for start in range(0, seeds.count, chunk_size):
        generator = torch.Generator(device=pipeline.unet.device).manual_seed(seeds.seed * 100_003 + start)
        labels = None if seeds.class_labels is None else seeds.class_labels[start : start + chunk_size]
        outputs.append(pipeline(seeds.noise[start : start + chunk_size], labels, generator=generator).images)
    return torch.cat(outputs)
