"""Quality of a candidate's images: FID, KID (with its std), precision/recall through torch-fidelity, and
per-sample fidelity (PSNR, SSIM, feature distance) to the reference's deterministic many-step solution from
the same noise.

FID at a small sample count is biased and rewards samples that lost diversity; precision/recall make such a
point visible, and FIDs are only ever compared at the same sample count on the same seeds. Paired measures need
no distribution estimate, so they separate plans at sample counts where FID's sampling noise does not.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits
from torch.utils.data import Dataset

from autoaccel.errors import ConfigError
from autoaccel.metrics.features import ensure_registered
from autoaccel.metrics.model_source import MEANINGFUL, FigureSource, FigureUnavailable, first_line, hub_offline
from autoaccel.util.imaging import to_uint8


class ImageTensorDataset(Dataset):
    """uint8 images (N, C, H, W) as the Dataset torch-fidelity reads."""

    def __init__(self, images_uint8: torch.Tensor) -> None:
        self.images = images_uint8

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


# FID's eigenvalue problems are small (192-d features): spread over BLAS threads, which contend with the threads that
# sample and train, they take several times longer (ten times on a busy machine) for the same figures
one_blas_thread = threadpool_limits.wrap(limits=1, user_api="blas")


def tensor_digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()[:16]


@one_blas_thread
def distribution_metrics(
    images: torch.Tensor,
    reference_uint8: torch.Tensor,
    extractor: str,
    cache_dir: Path,
    reference_key: str,
    cuda: bool = False,
    fid_std_rounds: int = 20,
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
        "fid_std": fid_bootstrap_std(images, reference_uint8, extractor, reference_key, rounds=fid_std_rounds),
        "kid": float(metrics["kernel_inception_distance_mean"]),
        "kid_std": float(metrics["kernel_inception_distance_std"]),
        "precision": float(metrics["precision"]),
        "recall": float(metrics["recall"]),
    }


_REFERENCE_STATISTICS: dict[tuple[str, str], dict] = {}


@functools.cache
def _extractor_model(extractor: str):
    """Built once per process: the digits extractor loads its classifier from disk."""
    from torch_fidelity.utils import create_feature_extractor

    ensure_registered(extractor)
    return create_feature_extractor(extractor, ["features"], cuda=False, verbose=False)


def image_features(images_uint8: torch.Tensor, extractor: str) -> torch.Tensor:
    """Features (N, D) of uint8 images under a registered extractor, in float64 for the FID statistics."""
    model = _extractor_model(extractor)
    device = next(iter(model.parameters()), torch.empty(0)).device
    with torch.no_grad():
        return torch.cat([model(chunk.to(device))[0].cpu() for chunk in images_uint8.split(512)]).double()


_features = image_features


@one_blas_thread
def frechet_distance(features: torch.Tensor, reference_features: torch.Tensor) -> float:
    """FID between two feature sets (torch-fidelity's formula), for features computed outside torch-fidelity."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    statistics = fid_features_to_statistics(features.double())
    reference = fid_features_to_statistics(reference_features.double())
    return float(fid_statistics_to_metric(statistics, reference, False)["frechet_inception_distance"])


def kernel_distance(features: torch.Tensor, reference_features: torch.Tensor, subsets: int = 100) -> float:
    """KID (mean over subsets; torch-fidelity's unbiased polynomial-kernel MMD) between two feature sets."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    size = min(1000, len(features), len(reference_features))
    metric = kid_features_to_metric(
        features.double(), reference_features.double(), kid_subsets=subsets, kid_subset_size=size, verbose=False
    )
    return float(metric["kernel_inception_distance_mean"])


@one_blas_thread
def fid_bootstrap_std(
    images: torch.Tensor, reference_uint8: torch.Tensor, extractor: str, reference_key: str, rounds: int = 20
) -> float:
    """Spread of FID over bootstrap resamples of the candidate's images (torch-fidelity's FID formula), the
    interval that says whether two candidates' FIDs differ by more than their sampling noise."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    if (extractor, reference_key) not in _REFERENCE_STATISTICS:
        statistics = fid_features_to_statistics(_features(reference_uint8, extractor))
        _REFERENCE_STATISTICS[extractor, reference_key] = statistics
    reference = _REFERENCE_STATISTICS[extractor, reference_key]
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


def _gaussian_window(size: int, sigma: float = 1.5) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    return weights[:, None] * weights[None, :]


def ssim_per_image(images: torch.Tensor, reference: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """SSIM of each image with its reference (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01,
    K2 0.03, valid positions only, averaged over channels), for images in [-1, 1] (data range 2).

    Images smaller than 11 pixels take the largest odd window that fits (7x7 on 8x8 digits), as no library
    here provides SSIM for them (torch-fidelity and torchvision have none; scikit-image is not a dependency).
    """
    if images.shape != reference.shape:
        raise ValueError(f"SSIM needs equal shapes; got {tuple(images.shape)} and {tuple(reference.shape)}")
    x, y = images.double(), reference.double()
    channels, height, width = x.shape[1:]
    size = min(11, height, width)
    size -= 1 - size % 2
    window = _gaussian_window(size).expand(channels, 1, size, size).contiguous()

    def blur(tensor: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(tensor, window, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    covariance = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * covariance + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)


def ssim(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean per-image SSIM for images in [-1, 1]: 1 for identical images, near 0 for unrelated ones."""
    return float(ssim_per_image(images.clamp(-1, 1), reference.clamp(-1, 1)).mean())


def paired_feature_distance(features: torch.Tensor, reference_features: torch.Tensor) -> float:
    """Mean distance between each image's features and its own reference image's, as a fraction of the mean
    distance between unrelated reference images (each paired with the next one): 0 for the same images, about 1
    for images that keep nothing of the reference's image but its distribution."""
    if len(features) != len(reference_features):
        raise ValueError(f"paired features need equal counts; got {len(features)} and {len(reference_features)}")
    paired = (features.double() - reference_features.double()).norm(dim=1).mean()
    if len(reference_features) < 2:
        return float(paired)
    unrelated = (reference_features.double() - reference_features.double().roll(1, dims=0)).norm(dim=1).mean()
    return float(paired / unrelated.clamp_min(1e-12))


INCEPTION_EXTRACTOR = "inception-v3-compat"
INCEPTION_AUTO = "auto"  # quality.inception_weights=auto: torch-fidelity downloads its weights on first use
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def load_inception(weights: str):
    """torch-fidelity's Inception-v3 (the network of published FIDs): ``auto`` lets torch-fidelity download its
    weights on first use (into torch's hub cache, read from there afterwards), as it does by default; else a local
    weights file (``weights-inception-2015-12-05-6726825d.pth``). Without network and not in the cache, ``auto``
    raises ``FigureUnavailable`` in one line."""
    if str(weights) != INCEPTION_AUTO:
        return load_inception_file(str(weights))
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.is_file():
        return load_inception_file(str(cached))
    return _download_inception()


@functools.cache
def _download_inception():
    from torch_fidelity.utils import create_feature_extractor

    needs = "quality.inception_weights=auto needs network to download torch-fidelity's Inception weights"
    if hub_offline():
        raise FigureUnavailable(f"{needs} (HF_HUB_OFFLINE is set), or a local file: give its path ({INCEPTION_FILE})")
    try:
        return create_feature_extractor(INCEPTION_EXTRACTOR, ["2048"], cuda=False, verbose=False)
    except Exception as error:  # urllib's, torch.hub's and the file system's errors: the download failed
        raise FigureUnavailable(f"{needs}, or a local file ({INCEPTION_FILE}): {first_line(error)}") from None


@functools.cache
def load_inception_file(weights_path: str):
    """torch-fidelity's Inception-v3 from a local weights file (its ``feature_extractor_weights_path`` option). The
    file is first read as plain tensors, so a file that is not a state dict fails here rather than running its
    pickle."""
    from torch_fidelity.utils import create_feature_extractor

    path = Path(weights_path).expanduser()
    expected = f"torch-fidelity's inception-v3-compat weights ({INCEPTION_FILE})"
    if not path.is_file():
        raise ConfigError(
            f"quality.inception_weights={weights_path} is not a file; give {expected}, or auto to download them"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError("not a state dict")
        return create_feature_extractor(
            INCEPTION_EXTRACTOR, ["2048"], cuda=False, verbose=False, feature_extractor_weights_path=str(path)
        )
    except Exception as error:
        raise ConfigError(f"quality.inception_weights={weights_path} is not {expected}: {first_line(error)}") from None


def inception_grade(weights: str) -> FigureSource:
    """Inception FID is meaningful: torch-fidelity's Inception, the network of published FIDs (module
    ``model_source``: the rule)."""
    where = "downloaded by torch-fidelity" if str(weights) == INCEPTION_AUTO else f"from {weights}"
    source = f"torch-fidelity's Inception-v3 weights, {where}"
    return FigureSource(("fid_inception",), source, MEANINGFUL, "the network of published FIDs")


def inception_features(model, images_uint8: torch.Tensor) -> torch.Tensor:
    """2048-d pool features of uint8 images (grey images repeated to RGB; torch-fidelity resizes to 299)."""
    if images_uint8.shape[1] == 1:
        images_uint8 = images_uint8.repeat(1, 3, 1, 1)
    with torch.no_grad():
        return torch.cat([model(chunk)[0] for chunk in images_uint8[:, :3].split(64)]).double()
