"""Quality of a candidate's images: FID, KID (with its std), precision/recall through torch-fidelity, and
per-sample fidelity (PSNR) to the teacher's deterministic many-step solution from the same noise.

FID at a small sample count is biased and rewards samples that lost diversity; precision/recall make such a
point visible, and FIDs are only ever compared at the same sample count on the same seeds.
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path

import torch
from torch.utils.data import Dataset

from autoaccel.imaging import to_uint8
from autoaccel.measure.features import ensure_registered


class ImageTensorDataset(Dataset):
    """uint8 images (N, C, H, W) as the Dataset torch-fidelity reads."""

    def __init__(self, images_uint8: torch.Tensor) -> None:
        self.images = images_uint8

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def tensor_digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()[:16]


def distribution_metrics(
    images: torch.Tensor,
    reference_uint8: torch.Tensor,
    extractor: str,
    cache_dir: Path,
    reference_key: str,
    cuda: bool = False,
) -> dict[str, float]:
    """FID, KID (mean, std), precision and recall of ``images`` (in [-1, 1]) against the reference images.

    The reference's features are cached by torch-fidelity under ``reference_key`` (which must change when the
    reference images or the extractor change).
    """
    import torch_fidelity

    if not torch.isfinite(images).all():
        raise FloatingPointError("images contain NaN or inf")
    ensure_registered(extractor)
    count = min(len(images), len(reference_uint8))
    metrics = torch_fidelity.calculate_metrics(
        input1=ImageTensorDataset(to_uint8(images)),
        input2=ImageTensorDataset(reference_uint8),
        feature_extractor=extractor,
        fid=True,
        kid=True,
        prc=True,
        kid_subset_size=min(1000, count),
        kid_subsets=100,
        cuda=cuda,
        batch_size=256,
        save_cpu_ram=True,
        cache=True,
        cache_root=str(cache_dir / "fidelity"),
        input1_cache_name=None,
        input2_cache_name=f"{extractor}-{reference_key}",
        verbose=False,
    )
    return {
        "fid": float(metrics["frechet_inception_distance"]),
        "fid_std": fid_bootstrap_std(images, reference_uint8, extractor, reference_key),
        "kid": float(metrics["kernel_inception_distance_mean"]),
        "kid_std": float(metrics["kernel_inception_distance_std"]),
        "precision": float(metrics["precision"]),
        "recall": float(metrics["recall"]),
    }


_REFERENCE_STATISTICS: dict[str, dict] = {}


@functools.cache
def _extractor_model(extractor: str):
    """Built once per process: the digits extractor loads its classifier from disk."""
    from torch_fidelity.utils import create_feature_extractor

    return create_feature_extractor(extractor, ["features"], cuda=False, verbose=False)


def _features(images_uint8: torch.Tensor, extractor: str) -> torch.Tensor:
    model = _extractor_model(extractor)
    with torch.no_grad():
        return torch.cat([model(chunk)[0] for chunk in images_uint8.split(512)]).double()


def fid_bootstrap_std(
    images: torch.Tensor, reference_uint8: torch.Tensor, extractor: str, reference_key: str, rounds: int = 20
) -> float:
    """Spread of FID over bootstrap resamples of the candidate's images (torch-fidelity's FID formula), the
    interval that says whether two candidates' FIDs differ by more than their sampling noise."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    if reference_key not in _REFERENCE_STATISTICS:
        _REFERENCE_STATISTICS[reference_key] = fid_features_to_statistics(_features(reference_uint8, extractor))
    reference = _REFERENCE_STATISTICS[reference_key]
    features = _features(to_uint8(images), extractor)
    generator = torch.Generator().manual_seed(0)
    values = []
    for _ in range(rounds):
        resample = features[torch.randint(0, len(features), (len(features),), generator=generator)]
        values.append(
            fid_statistics_to_metric(fid_features_to_statistics(resample), reference, False)[
                "frechet_inception_distance"
            ]
        )
    return float(torch.tensor(values).std())


def psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean per-image PSNR in dB for images in [-1, 1] (peak-to-peak 2)."""
    mse = (images.float() - reference.float()).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return float((10 * torch.log10(4.0 / mse)).mean())


def finite_or_nan(value: float) -> float:
    return value if math.isfinite(value) else float("nan")
