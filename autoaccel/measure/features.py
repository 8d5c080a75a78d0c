"""Feature extractors for FID/KID/precision-recall, registered with torch-fidelity, needing no download.

- ``autoaccel-digits-classifier-v1``: the 64-d penultimate layer of the project's own digit classifier; the
  quality feature for the embedded model.
- ``autoaccel-random-cnn-v1``: a fixed, seeded random convolutional network (multi-scale mean and std of
  its activations, 192-d) for any other model. Random-feature FID ranks generators sensibly but its values
  are not comparable with Inception FID; reports name the extractor beside every figure.

torch-fidelity caches statistics by extractor name and ignores weights, so each weights version gets its own
name: change the suffix when the classifier is retrained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

DIGITS_EXTRACTOR = "autoaccel-digits-classifier-v1"
GENERIC_EXTRACTOR = "autoaccel-random-cnn-v1"


def _to_unit_range(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


class _OneLayerFeatures(FeatureExtractorBase):
    """torch-fidelity's extractor interface for a network exposing one feature layer, ``features``."""

    @staticmethod
    def get_provided_features_list():
        return ("features",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "features"

    @staticmethod
    def can_be_compiled():
        return False


class DigitsClassifierFeatures(_OneLayerFeatures):
    def __init__(self, name: str, features_list: list[str], **kwargs) -> None:
        super().__init__(name, features_list)
        from autoaccel.targets.digits.classifier import load_classifier
        from autoaccel.targets.digits.model import classifier_weights_path

        self.classifier = load_classifier(classifier_weights_path())

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

    def forward(self, images: torch.Tensor):
        return (self.classifier.features(_to_unit_range(images)),)


class RandomConvFeatures(_OneLayerFeatures):
    """Three seeded random conv stages on images resized to 32x32; features are per-channel mean and std."""

    SEED = 20261126

    def __init__(self, name: str, features_list: list[str], **kwargs) -> None:
        super().__init__(name, features_list)
        generator = torch.Generator().manual_seed(self.SEED)
        widths = [(3, 32), (32, 32), (32, 32)]
        self.stages = nn.ModuleList(nn.Conv2d(cin, cout, 3, padding=1) for cin, cout in widths)
        for stage in self.stages:
            fan_in = stage.in_channels * 9
            stage.weight.data = torch.randn(stage.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5
            stage.bias.data.zero_()

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    def forward(self, images: torch.Tensor):
        x = _to_unit_range(images)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        elif x.shape[1] != 3:
            x = x[:, :3]
        x = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        pooled = []
        for index, stage in enumerate(self.stages):
            x = F.relu(stage(x))
            pooled += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
            if index < len(self.stages) - 1:
                x = F.avg_pool2d(x, 2)
        return (torch.cat(pooled, dim=1),)


EXTRACTORS = {DIGITS_EXTRACTOR: DigitsClassifierFeatures, GENERIC_EXTRACTOR: RandomConvFeatures}


def ensure_registered(name: str) -> str:
    """Registers ``name`` with torch-fidelity once per process; returns the name."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; known: {sorted(EXTRACTORS)}")
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(name, EXTRACTORS[name])
    return name
