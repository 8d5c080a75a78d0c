"""``python -m autoaccel apply RECIPE --out DIR``: images from a recipe, on the recipe's seed policy."""

from __future__ import annotations

from pathlib import Path

from autoaccel.errors import RecipeError
from autoaccel.imaging import save_grid, to_pil_images
from autoaccel.measure.seeds import make_seed_batch, sample_in_chunks
from autoaccel.recipe import apply_recipe, load_recipe


def load_base_model(recipe: dict, model: str | None, device: str):
    """The recipe's base model: the embedded digits model by name, else its folder (or ``model``)."""
    from autoaccel.targets.loader import default_device, load_pipeline_folder

    device = default_device(device)
    if model is None and recipe["base_model"].get("name") == "digits":
        from autoaccel.targets.digits.model import load_digits_target

        return load_digits_target(device)
    folder = model or recipe["base_model"].get("path")
    if not folder:
        raise RecipeError("the recipe names no base model path; pass --model DIR")
    return load_pipeline_folder(folder, device=device)


def write_images(
    recipe_path: Path, out_dir: Path, count: int, seed: int | None, model: str | None, device: str = "auto"
) -> list[Path]:
    if count < 1:
        raise RecipeError(f"--n {count} is not valid; it must be >= 1")
    recipe = load_recipe(recipe_path)
    target = load_base_model(recipe, model, device)
    pipeline = apply_recipe(target, recipe)
    policy = recipe.get("seed_policy") or {}
    # Draw the recipe's whole seed batch and keep the first ``count``: the same noise, labels and batch
    # shapes as when the recipe was scored, so its images come out bit for bit.
    drawn = max(count, int(policy.get("samples", count)))
    seeds = make_seed_batch(
        target.sample_shape, drawn, policy.get("seed", 0) if seed is None else seed, target.num_classes
    )
    images = sample_in_chunks(pipeline, seeds, int(policy.get("chunk_size", 256)))[:count]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(to_pil_images(images)):
        path = out_dir / f"{index:05d}.png"
        image.save(path)
        paths.append(path)
    paths.append(save_grid(images, out_dir / "grid.png"))
    return paths
