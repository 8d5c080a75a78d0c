"""A small digit classifier whose penultimate layer is the FID/KID feature space for the embedded model.

Inception weights cannot be downloaded here, and Inception features of 8x8 digits would say little anyway;
a classifier trained on the same digits sees what makes a digit a digit. ``python -m autoaccel train-classifier``
trains it (``classifier_training``, which a search never imports); the held-out accuracy is stored beside the
weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from autoaccel.targets.digits.data import NUM_CLASSES

FEATURE_DIM = 64


class DigitClassifier(nn.Module):
    """Conv net on (N, 1, 8, 8) images in [-1, 1]; ``features`` is the 64-d embedding used for FID."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(128, FEATURE_DIM),
            nn.GELU(),
        )
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def load_classifier(path: Path) -> DigitClassifier:
    from safetensors.torch import load_file

    model = DigitClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)
