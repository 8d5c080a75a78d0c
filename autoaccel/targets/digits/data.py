"""scikit-learn's bundled 8x8 digits: the offline data the embedded model and its feature extractor learn from."""

from __future__ import annotations

import numpy as np
import torch

NUM_CLASSES = 10
IMAGE_SIZE = 8


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as float images in [-1, 1], shape (N, 1, 8, 8), with their int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0 * 2.0 - 1.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return images, labels


def split_indices(count: int, held_out_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded train / held-out split, so the classifier's accuracy is reproducible."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    held_out = int(round(count * held_out_fraction))
    return order[held_out:], order[:held_out]
