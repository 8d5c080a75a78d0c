"""Conversions between sampled tensors and image files."""

from __future__ import annotations

from pathlib import Path

import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] to uint8 in [0, 255]: the format torch-fidelity and PNG files take."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_pil_images(images: torch.Tensor) -> list:
    from PIL import Image

    array = to_uint8(images).permute(0, 2, 3, 1).numpy()
    if array.shape[-1] == 1:
        return [Image.fromarray(image[..., 0], mode="L") for image in array]
    return [Image.fromarray(image) for image in array]


def save_grid(images: torch.Tensor, path: Path, columns: int = 8, scale: int = 4) -> Path:
    """Writes a PNG grid of images in [-1, 1], each enlarged ``scale`` times with nearest-neighbour pixels."""
    from PIL import Image

    pil_images = to_pil_images(images)
    width, height = pil_images[0].size
    rows = (len(pil_images) + columns - 1) // columns
    grid = Image.new(pil_images[0].mode, (columns * width, rows * height))
    for position, image in enumerate(pil_images):
        grid.paste(image, ((position % columns) * width, (position // columns) * height))
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
