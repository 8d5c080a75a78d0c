"""scikit-learn's digits at 16x16, the resolution the latent models work at, and the way back to 8x8.

The upsampling is nearest-neighbour: 2x2 average pooling then inverts it exactly, so the digit classifier
(trained at 8x8) reads a round-tripped real digit as the very image it was trained on, and every loss of
accuracy or FID measured on decoded images belongs to the autoencoder or the diffusion model, not to resizing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autoaccel.targets.digits.data import load_digits_tensors

LATENT_IMAGE_SIZE = 16


def upsample_to_16(images8: torch.Tensor) -> torch.Tensor:
    """(N, 1, 8, 8) -> (N, 1, 16, 16), each pixel repeated as a 2x2 block."""
    return F.interpolate(images8, scale_factor=2, mode="nearest")


def load_digits_16() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as float images in [-1, 1], shape (N, 1, 16, 16), with their int64 labels."""
    images8, labels = load_digits_tensors()
    return upsample_to_16(images8), labels


def to_classifier_resolution(images16: torch.Tensor) -> torch.Tensor:
    """(N, 1, 16, 16) -> (N, 1, 8, 8) by 2x2 average pooling, the input the digit classifier was trained on."""
    return F.avg_pool2d(images16, kernel_size=2)
