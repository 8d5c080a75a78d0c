"""The embedded digits model's quality feature: the 64-d penultimate layer of autoaccel's own digit classifier
(``python -m autoaccel train-classifier``), registered with torch-fidelity under a versioned name."""

from __future__ import annotations

import torch

from autoaccel.metrics.features import OneLayerFeatures, register_extractor, to_unit_range
from autoaccel.targets.digits.classifier import load_classifier
from autoaccel.targets.digits.weights import classifier_weights_path

DIGITS_EXTRACTOR = "autoaccel-digits-classifier-v1"  # change the suffix when the classifier is retrained


class DigitsClassifierFeatures(OneLayerFeatures):
    def __init__(self, name: str, features_list: list[str], **kwargs) -> None:
        super().__init__(name, features_list)

        self.classifier = load_classifier(classifier_weights_path())

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

    def forward(self, images: torch.Tensor):
        return (self.classifier.features(to_unit_range(images)),)


register_extractor(DIGITS_EXTRACTOR, DigitsClassifierFeatures)


DIGITS16_EXTRACTOR = "autoaccel-digits16-classifier-v1"  # the same classifier on 16x16 digits, pooled to 8x8


class Digits16ClassifierFeatures(DigitsClassifierFeatures):
    """The digit classifier's features of 16x16 images (the latent digits models' output), 2x2-average-pooled to
    the 8x8 the classifier was trained on: the 16x16 real digits are 8x8 ones repeated, so pooling returns them."""

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 16, 16, dtype=torch.uint8)

    def forward(self, images: torch.Tensor):
        pooled = torch.nn.functional.avg_pool2d(to_unit_range(images), kernel_size=2)
        return (self.classifier.features(pooled),)


register_extractor(DIGITS16_EXTRACTOR, Digits16ClassifierFeatures)
