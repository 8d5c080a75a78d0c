"""Conversions between sampled tensors and image files."""

from __future__ import annotations

import math
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


MIN_CELL_PX = 64  # small images (the embedded model's 8x8 digits) are unreadable below this on screen
GRID_GAP_PX = 4  # grey lines between images, so that neighbouring images do not merge


def grid_scale(width: int, height: int, min_cell_px: int = MIN_CELL_PX) -> int:
    """The whole-number enlargement that makes an image at least ``min_cell_px`` on its shorter side."""
    return max(1, math.ceil(min_cell_px / max(1, min(width, height))))


def save_grid(images: torch.Tensor, path: Path, columns: int = 8, scale: int | None = None) -> Path:
    """Writes a PNG grid of images in [-1, 1] with a thin gap between them. Each image is enlarged ``scale``
    times with nearest-neighbour pixels (by default just enough for ``MIN_CELL_PX`` on its shorter side), in the
    file itself, so every viewer (a browser, W&B, an image viewer) shows the same sharp pixels."""
    from PIL import Image

    pil_images = to_pil_images(images)
    scale = scale or grid_scale(*pil_images[0].size)
    width, height = pil_images[0].width * scale, pil_images[0].height * scale
    columns = min(columns, len(pil_images))
    rows = (len(pil_images) + columns - 1) // columns
    gap, mode = GRID_GAP_PX, pil_images[0].mode
    grey = 150 if mode == "L" else (150,) * len(mode)
    grid = Image.new(mode, (columns * (width + gap) - gap, rows * (height + gap) - gap), color=grey)
    for position, image in enumerate(pil_images):
        cell = image.resize((width, height), Image.NEAREST)
        grid.paste(cell, ((position % columns) * (width + gap), (position // columns) * (height + gap)))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
