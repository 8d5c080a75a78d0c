"""Common random numbers: every candidate is scored on the same initial noise and class labels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from autoaccel.targets.denoisers import execution_device
from autoaccel.util.progress import Progress


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


# torch's CPU normal sampler fills a contiguous tensor of >= 16 values with uniforms, turns them into normals
# in blocks of 16, and redraws a ragged last block from 16 further uniforms. A prefix that ends on a block
# boundary, short of that redrawn block, therefore holds exactly the values of the whole draw.
_NORMAL_BLOCK = 16
_SKIP_PIECE = _NORMAL_BLOCK * 2**16  # values drawn at a time while passing over the rest of the noise


def make_seed_batch(
    shape: tuple[int, int, int], count: int, seed: int, num_classes: int | None, keep: int | None = None
) -> SeedBatch:
    """The batch of ``count`` seeds, or with ``keep`` only its first ``keep``, bit for bit the same.

    Noise comes first from the seeded generator, then the labels' permutation of all ``count``. A prefix
    draws only its own noise when the model is unconditional; with labels, the rest of the noise is still
    drawn (a piece at a time, and dropped) to bring the generator to where the permutation starts.
    """
    generator = torch.Generator().manual_seed(seed)
    keep = count if keep is None else min(keep, count)
    values = keep * math.prod(shape)
    noise = _normal_prefix(count * math.prod(shape), values, generator, pass_rest=bool(num_classes))
    noise = noise.view(keep, *shape)
    labels = None
    if num_classes:
        labels = (torch.arange(count) % num_classes)[torch.randperm(count, generator=generator)][:keep]
    return SeedBatch(seed, noise, labels)


def _normal_prefix(total: int, keep: int, generator: torch.Generator, pass_rest: bool) -> torch.Tensor:
    """The first ``keep`` of ``total`` standard normals; with ``pass_rest`` the generator ends where a draw
    of all ``total`` leaves it."""
    aligned = -(-keep // _NORMAL_BLOCK) * _NORMAL_BLOCK
    ragged = total % _NORMAL_BLOCK
    if keep == total or total < _NORMAL_BLOCK or aligned > total - (_NORMAL_BLOCK if ragged else 0):
        noise = torch.randn(total, generator=generator)
        return noise if keep == total else noise[:keep].clone()
    head = torch.randn(aligned, generator=generator)[:keep]
    rest = total - aligned
    while pass_rest and rest:
        # every piece but the last is whole blocks; the last (>= 16 values) carries the ragged block's redraw
        piece = rest if rest < 2 * _SKIP_PIECE else _SKIP_PIECE
        torch.randn(piece, generator=generator)
        rest -= piece
    return head


def sample_in_chunks(
    pipeline, seeds: SeedBatch, chunk_size: int = 256, progress: Progress | None = None
) -> torch.Tensor:
    """Runs the pipeline over the seed batch; stochastic solvers draw from a generator seeded per chunk.

    ``progress`` hears how far it got, step by step inside each chunk (a reference call of 512 images x 1000 steps
    runs minutes in one chunk); by default a long sampling says so on the running command's progress lines."""
    progress = progress or Progress(f"sampling {seeds.count} images", seeds.count, announce=False)
    outputs = []
    with progress:
        for start in range(0, seeds.count, chunk_size):
            generator = torch.Generator(device=execution_device(pipeline.denoiser)).manual_seed(
                seeds.seed * 100_003 + start
            )
            labels = None if seeds.class_labels is None else seeds.class_labels[start : start + chunk_size]
            noise = seeds.noise[start : start + chunk_size]
            on_step = progress.steps(start, len(noise))
            outputs.append(pipeline(noise, labels, generator=generator, on_step=on_step).images)
            progress(start + len(noise))
    return torch.cat(outputs)
