"""``python -m autoaccel apply RECIPE --out DIR``: images from a recipe, on the recipe's seed policy."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from autoaccel.config.values import MAX_SAMPLES, check_flag_range, check_folder, check_seed_flag
from autoaccel.errors import ConfigError, RecipeError
from autoaccel.pipeline.seeds import SeedBatch, make_seed_batch, sample_in_chunks
from autoaccel.plan.recipe import apply_recipe, load_recipe
from autoaccel.util.imaging import save_grid, to_pil_images

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
WRITTEN_NAME = re.compile(r"\d{5}\.png|grid\.png")  # the files an apply writes, and --overwrite replaces


def load_base_model(recipe: dict, model: str | None, device: str):
    """The recipe's base model: an embedded model by its name, else its folder (or ``model``), in the precision
    it was measured in (``base_model.dtype``; a recipe from before it was recorded: float32)."""
    from autoaccel.targets.loader import check_device, load_pipeline_folder
    from autoaccel.targets.precision import load_in_dtype
    from autoaccel.targets.registry import embedded_kind

    device = check_device(device, "--device")
    dtype = str(recipe["base_model"].get("dtype") or "float32")
    embedded = embedded_kind(recipe["base_model"].get("name"))
    if model is None and embedded is not None:
        return load_in_dtype(embedded.load(None, device), dtype)
    folder = model or recipe["base_model"].get("path")
    if not folder:
        raise RecipeError("the recipe names no base model path; pass --model DIR")
    return load_in_dtype(load_pipeline_folder(folder, device=device, dtype=dtype), dtype)


def check_apply_options(out_dir: Path, count: int, seed: int | None, overwrite: bool) -> None:
    """The flags, before the recipe or the model is read: a bad one costs nothing and writes nothing."""
    check_flag_range("--n", count, 1, MAX_SAMPLES)
    if seed is not None:
        check_seed_flag(seed)
    check_folder("--out", out_dir, writable=True)
    if overwrite or not Path(out_dir).is_dir():
        return
    images = sorted(path.name for path in Path(out_dir).iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if images:
        raise ConfigError(
            f"--out {out_dir} already holds {len(images)} image(s) ({images[0]}, ...); "
            "pass --overwrite to replace them, or give an empty or new folder"
        )


def recipe_seeds(recipe: dict, target, count: int, seed: int | None) -> tuple[SeedBatch, int]:
    """The recipe's seed batch cut to the whole chunks that hold the first ``count`` images, and the chunk size.

    Those chunks get the same noise, labels, batch shapes and per-chunk generators as when the recipe was
    scored, so its images come out bit for bit, without drawing or sampling the rest of the batch.
    """
    policy = recipe.get("seed_policy") or {}
    samples = max(count, int(policy.get("samples", count)))
    chunk_size = int(policy.get("chunk_size", 256))
    needed = min(samples, -(-count // chunk_size) * chunk_size)
    seed = policy.get("seed", 0) if seed is None else seed
    return make_seed_batch(target.sample_shape, samples, seed, target.condition_count, keep=needed), chunk_size


def write_images(
    recipe_path: Path,
    out_dir: Path,
    count: int,
    seed: int | None,
    model: str | None,
    device: str = "auto",
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Writes ``count`` images (and a grid) of the recipe's plan; artifacts are found beside the recipe file."""
    out_dir = Path(out_dir)
    check_apply_options(out_dir, count, seed, overwrite)
    recipe = load_recipe(recipe_path)
    target = load_base_model(recipe, model, device)
    pipeline = apply_recipe(target, recipe, recipe_dir=Path(recipe_path).parent, log=log)
    seeds, chunk_size = recipe_seeds(recipe, target, count, seed)
    images = sample_in_chunks(pipeline, seeds, chunk_size)[:count]
    out_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        _remove_earlier_images(out_dir)
    paths = []
    for index, image in enumerate(to_pil_images(images)):
        path = out_dir / f"{index:05d}.png"
        image.save(path)
        paths.append(path)
    paths.append(save_grid(images, out_dir / "grid.png"))
    return paths


def _remove_earlier_images(out_dir: Path) -> None:
    """An earlier apply's numbered images and grid: left beside fewer new ones, they would pass for them.
    Other files in the folder are the user's and stay."""
    for path in list(out_dir.iterdir()):
        if WRITTEN_NAME.fullmatch(path.name) and path.is_file():
            path.unlink()
