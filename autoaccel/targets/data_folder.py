"""``target.data=DIR``: a folder of real images of the model's domain, against which FID/KID are measured.

A model without its own data is otherwise scored against its own samples, which can only say how close a plan
stays to the reference call; real images say how good the plan's images are, as for the embedded digits model.
Images (PNG or JPEG, in subfolders too) are resized on their shorter side and centre-cropped to the target's
image size, and converted to its channels (grey or RGB).
"""

from __future__ import annotations

from pathlib import Path

import torch

from autoaccel.errors import ConfigError
from autoaccel.metrics.quality import image_features
from autoaccel.targets.base import QualityReference, Target

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_MAX_IMAGES = 10_000  # more adds little to FID's statistics and costs feature time on every run
CHANNEL_MODES = {1: "L", 3: "RGB"}
MAX_IMAGE_PIXELS = 8192 * 8192  # one image decoded whole: a few hundred MB at most, not a decompression bomb's GBs


def image_files(folder: Path) -> list[Path]:
    """PNG and JPEG files under ``folder``, in a stable order."""
    return sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def load_image_folder(
    folder: str | Path,
    shape: tuple[int, int, int],
    max_images: int = DEFAULT_MAX_IMAGES,
    seed: int = 0,
    min_images: int = 1,
    needed_for: str = "",
) -> torch.Tensor:
    """The folder's images as uint8 (N, C, H, W) of ``shape`` (C, H, W); more than ``max_images`` are
    subsampled at random with ``seed``; fewer than ``min_images`` (``needed_for`` says why) are refused before any
    is read. An empty folder, an unreadable file or one too large to decode is a one-line error naming it."""
    from PIL import Image, UnidentifiedImageError

    channels, height, width = shape
    if channels not in CHANNEL_MODES:
        raise ConfigError(f"target.data: images with {channels} channels are not supported; valid: 1 (grey), 3 (RGB)")
    if max_images < max(1, min_images):
        raise ConfigError(
            f"target.data: at most {max_images} images is not valid; give a count >= {max(1, min_images)}"
        )
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"target.data={folder} is not a folder; give a folder of PNG or JPEG images")
    files = image_files(root)
    if not files:
        raise ConfigError(f"target.data={folder} holds no PNG or JPEG images ({', '.join(IMAGE_SUFFIXES)})")
    if len(files) < min_images:
        raise ConfigError(
            f"target.data={folder} holds {len(files)} image(s); at least {min_images} are needed{needed_for}"
        )
    if len(files) > max_images:
        chosen = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:max_images]
        files = [files[index] for index in sorted(chosen.tolist())]
    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise ConfigError(
                        f"target.data={folder}: {path} is {image.width}x{image.height} pixels; images of at most "
                        f"{MAX_IMAGE_PIXELS} pixels are read (resize it first)"
                    )
                image.load()
                fitted = fit_image(image.convert(CHANNEL_MODES[channels]), height, width)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ConfigError(f"target.data={folder}: cannot read {path}: {reason}") from None
        array = torch.frombuffer(bytearray(fitted.tobytes()), dtype=torch.uint8)
        images.append(array.view(height, width, channels).permute(2, 0, 1))
    return torch.stack(images)


def fit_image(image, height: int, width: int):
    """Resizes ``image`` so that it covers height x width (bicubic, which filters when it shrinks), then crops
    the centre."""
    from PIL import Image

    scale = max(height / image.height, width / image.width)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    resized = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def image_shape(target: Target) -> tuple[int, int, int]:
    """(C, H, W) of the target's images: its sample shape for a pixel model, the VAE's output for a latent one."""
    channels, height, width = target.sample_shape
    if target.vae is None:
        return channels, height, width
    config = target.vae.config
    scale = 2 ** (len(getattr(config, "block_out_channels", (0,))) - 1)
    return int(getattr(config, "out_channels", 3)), height * scale, width * scale


def with_real_data(target: Target, images: torch.Tensor, source: str = "target.data") -> Target:
    """``target`` scored against ``images`` (uint8 (N, C, H, W)): FID/KID against them become its quality, with
    the extractor it already has (the generic random CNN for a pipeline folder)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"real images must be uint8 (N, C, H, W); got {images.dtype} {tuple(images.shape)}")
    expected = image_shape(target)
    if tuple(images.shape[1:]) != expected:
        raise ConfigError(f"{source}: images of shape {tuple(images.shape[1:])} do not match the model's {expected}")
    target.real_images = images
    target.real_labels = None
    target.quality = QualityReference(
        extractor=target.quality.extractor,
        kind="real-data",
        description=f"FID/KID against {len(images)} real images from {source}, with the "
        f"{target.quality.extractor} features",
    )
    return target


def load_target_data(target: Target, folder: str | Path, max_images: int = DEFAULT_MAX_IMAGES) -> Target:
    """``target.data=DIR``: the folder's images, fitted to the target's image size, as its FID reference.

    FID compares feature covariances: the real images' is full rank only with more images than the extractor has
    features (one image gives none at all), so a folder with fewer is refused before any image is read."""
    shape = image_shape(target)
    extractor = target.quality.extractor
    features = image_features(torch.zeros((1, *shape), dtype=torch.uint8), extractor).shape[1]
    needed_for = f" (FID's covariance of the {features} features of {extractor} needs more images than features)"
    images = load_image_folder(folder, shape, max_images, min_images=features + 1, needed_for=needed_for)
    return with_real_data(target, images, source=f"target.data={folder}")
