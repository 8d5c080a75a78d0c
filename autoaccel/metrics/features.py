"""Feature extractors for FID/KID/precision-recall, registered with torch-fidelity, needing no download.

- ``autoaccel-random-cnn-v1``: a fixed, seeded random convolutional network (multi-scale mean and std of
  its activations, 192-d) for any other model. Random-feature FID ranks generators sensibly but its values
  are not comparable with Inception FID; reports name the extractor beside every figure.
- ``autoaccel-random-cnn-v1-s<k>``: the same network drawn from another seed (``seeded_random_extractor``), for
  averaging FID over several random feature spaces.

torch-fidelity caches statistics by extractor name and ignores weights, so each weights version gets its own
name: change the suffix when the weights change. A target with a feature extractor of its own registers it here
(``register_extractor``), as the embedded digits model does with its classifier (``targets/digits/features.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from autoaccel.metrics.extractor_names import GENERIC_EXTRACTOR


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


class OneLayerFeatures(FeatureExtractorBase):
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


class RandomConvFeatures(OneLayerFeatures):
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
        x = to_unit_range(images)
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


EXTRACTORS: dict[str, type[FeatureExtractorBase]] = {GENERIC_EXTRACTOR: RandomConvFeatures}


ENSEMBLE_SIZE = 5  # random CNNs ``fid_ensemble`` averages over


def ensemble_extractors(size: int = ENSEMBLE_SIZE) -> list[str]:
    """The generic random CNN and ``size - 1`` redraws of it: FID averaged over them depends less on the luck of
    one random feature space (reports/bench/quality.md)."""
    return [seeded_random_extractor(index) for index in range(size)]


def seeded_random_extractor(index: int) -> str:
    """The generic random CNN drawn from seed ``SEED + index`` (index 0 is ``GENERIC_EXTRACTOR`` itself),
    registered under its own name so torch-fidelity's caches never mix two draws."""
    if index == 0:
        return GENERIC_EXTRACTOR
    name = f"{GENERIC_EXTRACTOR}-s{index}"
    if name not in EXTRACTORS:
        EXTRACTORS[name] = type(
            f"RandomConvFeaturesSeed{index}", (RandomConvFeatures,), {"SEED": RandomConvFeatures.SEED + index}
        )
    return name


def register_extractor(name: str, extractor: type[FeatureExtractorBase]) -> str:
    """Makes a target's own feature extractor known by ``name`` (one name per weights version)."""
    if EXTRACTORS.get(name, extractor) is not extractor:
        raise ValueError(f"a different feature extractor is already registered as {name!r}")
    EXTRACTORS[name] = extractor
    return name


def ensure_registered(name: str) -> str:
    """Registers ``name`` with torch-fidelity once per process; returns the name."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; known: {sorted(EXTRACTORS)}")
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(name, EXTRACTORS[name])
    return name


def vae_encoder_features(vae, images_uint8: torch.Tensor, pooled_size: int = 4, batch_size: int = 256) -> torch.Tensor:
    """A model's own VAE encoder as a feature space: posterior means pooled to at most ``pooled_size`` squared
    positions and flattened (64-d for 4-channel latents), in float64 for FID statistics.

    Images are uint8 (N, C, H, W) at the VAE's resolution; channels are matched to the encoder's input.
    """
    chunks = []
    for chunk in images_uint8.split(batch_size):
        means = posterior_means(vae, chunk)
        size = min(pooled_size, means.shape[-1], means.shape[-2])
        chunks.append(F.adaptive_avg_pool2d(means, size).flatten(1).cpu())
    return torch.cat(chunks).double()


def posterior_means(vae, images_uint8: torch.Tensor) -> torch.Tensor:
    """The VAE's posterior means (float32, on its device) of uint8 images (N, C, H, W) at its resolution, their
    channels matched to the encoder's input: what its features and a model's latents of real images start from."""
    channels = int(vae.config.in_channels)
    parameter = next(vae.parameters())
    x = to_unit_range(images_uint8)
    if x.shape[1] != channels:
        x = x.mean(dim=1, keepdim=True).repeat(1, channels, 1, 1)
    with torch.no_grad():
        return vae.encode(x.to(device=parameter.device, dtype=parameter.dtype)).latent_dist.mean.float()
