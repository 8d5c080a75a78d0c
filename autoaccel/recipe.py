"""Recipes: a versioned, plain-data deployment plan that reproduces what was measured.

A recipe names the base model (its weights' hash), every technique config with its version, the exact
scheduler class and config, the timesteps, guidance, the seed policy, the figures and where they were
measured. Loading one reads YAML with ``safe_load`` and resolves the scheduler class only from an allow-list:
a recipe cannot make autoaccel import or run code it names.
"""

from __future__ import annotations

import platform
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

from autoaccel.candidate import to_plain
from autoaccel.errors import RecipeError
from autoaccel.files import write_atomically
from autoaccel.sampling import SamplerPipeline
from autoaccel.targets.base import hash_weights
from autoaccel.techniques.solver import SOLVERS

RECIPE_FORMAT = 1
ALLOWED_SCHEDULERS = frozenset(spec.scheduler_class for spec in SOLVERS.values()) | {"DDPMScheduler", "DDIMScheduler"}
REQUIRED_KEYS = ("autoaccel_recipe", "base_model", "scheduler", "timesteps", "guidance_scale")


def environment() -> dict[str, str]:
    import diffusers

    return {
        "torch": str(torch.__version__),
        "diffusers": str(diffusers.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def build_recipe(
    target, plan: list, pipeline: SamplerPipeline, figures: dict, measured_on: dict, seed_policy: dict, source: dict
) -> dict[str, Any]:
    """The recipe for a pipeline that ``plan`` configured on ``target``."""
    scheduler_config = {key: value for key, value in dict(pipeline.scheduler.config).items() if not key.startswith("_")}
    return {
        "autoaccel_recipe": RECIPE_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": {
            "name": target.name,
            "path": str(target.path),
            "content_hash": target.content_hash,
            "scheduler_config": to_plain({k: v for k, v in target.scheduler_config.items() if not k.startswith("_")}),
        },
        "techniques": {
            technique.name: {
                "version": technique.version,
                "config": to_plain(asdict(config)),
                **({"simulated": True} if technique.simulated else {}),
            }
            for technique, config in plan
        },
        # scored by simulation (fake quantization): the figures are what the simulated model gives, and its
        # latency is a float-kernel time unless measured_on.kernels names a real quantized backend
        "simulated": [technique.name for technique, _ in plan if technique.simulated],
        "scheduler": {"class": type(pipeline.scheduler).__name__, "config": to_plain(scheduler_config)},
        "timesteps": [int(step) for step in pipeline.plan.timesteps],
        "guidance_scale": float(pipeline.plan.guidance_scale),
        "null_class": pipeline.plan.null_class,
        "seed_policy": seed_policy,
        "figures": {key: to_plain(value) for key, value in figures.items()},
        "measured_on": {**measured_on, **environment()},
        "source": source,
    }


def save_recipe(recipe: dict[str, Any], path: Path) -> Path:
    return write_atomically(Path(path), lambda temporary: temporary.write_text(yaml.safe_dump(recipe, sort_keys=False)))


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Reads and validates a recipe file; every problem is a RecipeError naming the file and the bad value."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RecipeError(f"recipe {path} is not valid YAML: {error}") from None
    return validate_recipe(recipe, f"recipe {path}")


def validate_recipe(recipe: Any, source: str = "recipe") -> dict[str, Any]:
    """Checks a recipe's structure and values; returns it unchanged or raises RecipeError naming the bad value."""
    if not isinstance(recipe, dict):
        raise RecipeError(f"{source} must be a mapping with keys {', '.join(REQUIRED_KEYS)}")
    missing = [key for key in REQUIRED_KEYS if key not in recipe]
    if missing:
        raise RecipeError(f"{source} lacks {', '.join(missing)}")
    if recipe["autoaccel_recipe"] != RECIPE_FORMAT:
        raise RecipeError(
            f"{source}: format {recipe['autoaccel_recipe']!r} is not supported; "
            f"this autoaccel reads format {RECIPE_FORMAT}"
        )
    if not isinstance(recipe["base_model"], dict):
        raise RecipeError(f"{source}: base_model must be a mapping with name, path and content_hash")
    scheduler = recipe["scheduler"]
    name = scheduler.get("class") if isinstance(scheduler, dict) else scheduler
    if not isinstance(scheduler, dict) or not isinstance(name, str) or name not in ALLOWED_SCHEDULERS:
        raise RecipeError(
            f"{source}: scheduler class {name!r} is not allowed; allowed: {sorted(ALLOWED_SCHEDULERS)} "
            "(as scheduler: {class: NAME, config: {...}})"
        )
    if not isinstance(scheduler.get("config"), dict):
        raise RecipeError(f"{source}: scheduler.config must be a mapping")
    trained = scheduler["config"].get("num_train_timesteps", 1000)
    timesteps = recipe["timesteps"]
    if (
        not isinstance(timesteps, list)
        or not timesteps
        or not all(isinstance(step, int) and not isinstance(step, bool) for step in timesteps)
        or any(later >= earlier for earlier, later in zip(timesteps, timesteps[1:]))
        or timesteps[-1] < 0
        or (isinstance(trained, int) and timesteps[0] >= trained)
    ):
        raise RecipeError(
            f"{source}: timesteps={timesteps!r} must be a non-empty strictly decreasing list of ints in "
            f"[0, {trained - 1 if isinstance(trained, int) else 'num_train_timesteps - 1'}]"
        )
    guidance = recipe["guidance_scale"]
    if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not guidance >= 1:
        raise RecipeError(f"{source}: guidance_scale={guidance!r} must be a number >= 1")
    null_class = recipe.get("null_class")
    if null_class is not None and (isinstance(null_class, bool) or not isinstance(null_class, int)):
        raise RecipeError(f"{source}: null_class={null_class!r} must be an int or null")
    return recipe


def apply_recipe(pipeline, recipe: str | Path | dict, check_model: bool = True) -> SamplerPipeline:
    """Configures a loaded pipeline (anything with a ``unet``) as the recipe says; returns the runnable pipeline.

    >>> pipe = DDPMPipeline.from_pretrained(folder)
    >>> fast = autoaccel.apply_recipe(pipe, "reports/digits-sampler/recipes/trial-0042.yaml")
    >>> images = fast(noise, class_labels).images

    The unet is shared, not copied. With ``check_model`` the unet's weights must hash to the recipe's
    ``base_model.content_hash``: a recipe measured on another model would not reproduce its figures.
    """
    import diffusers

    recipe = validate_recipe(recipe) if isinstance(recipe, dict) else load_recipe(recipe)
    unet = getattr(pipeline, "unet", None)
    if unet is None:
        raise RecipeError(f"apply_recipe needs a pipeline with a unet; got {type(pipeline).__name__}")
    if check_model:
        expected = recipe["base_model"].get("content_hash")
        actual = hash_weights(unet)
        if expected != actual:
            raise RecipeError(
                f"this recipe was measured on model {recipe['base_model'].get('name')!r} with weights hash "
                f"{str(expected)[:16]}..., but the pipeline's unet hashes to {actual[:16]}...; "
                f"apply it to that model or pass check_model=False"
            )
    unet = _reapply_model_techniques(recipe, unet)
    scheduler_class = getattr(diffusers, recipe["scheduler"]["class"])
    try:
        scheduler = scheduler_class.from_config(recipe["scheduler"]["config"])
    except (TypeError, ValueError) as error:
        raise RecipeError(f"recipe scheduler config is not valid for {scheduler_class.__name__}: {error}") from None
    fast = SamplerPipeline(unet=unet, scheduler=scheduler)
    fast.plan.timesteps = list(recipe["timesteps"])
    fast.plan.guidance_scale = float(recipe["guidance_scale"])
    fast.plan.null_class = recipe.get("null_class")
    return fast


def _reapply_model_techniques(recipe: dict[str, Any], unet):
    """Re-applies the techniques that changed the model (pruning), in order, from the base unet.

    Only registered technique names are looked up, and their configs are plain dataclass fields checked by the
    config's own validation: nothing named in the file is imported.
    """
    from autoaccel.errors import ConfigError
    from autoaccel.targets.base import target_from_unet
    from autoaccel.techniques.base import get_technique

    techniques = recipe.get("techniques") or {}
    if not isinstance(techniques, dict):
        raise RecipeError("recipe techniques must be a mapping of technique name to {version, config}")
    steps = []
    for name, entry in techniques.items():
        try:
            technique = get_technique(str(name))
        except ConfigError as error:
            raise RecipeError(f"recipe names {error}") from None
        if not technique.modifies_model:
            continue
        version = entry.get("version") if isinstance(entry, dict) else entry
        if version != technique.version:
            raise RecipeError(
                f"recipe technique {name!r} has version {version!r}; this autoaccel applies version {technique.version}"
            )
        try:
            config = technique.config_cls(**(entry.get("config") or {}))
        except (TypeError, ConfigError) as error:
            raise RecipeError(f"recipe technique {name!r} has an invalid config: {error}") from None
        steps.append((technique, config))
    if not steps:
        return unet
    base = recipe["base_model"]
    scheduler_config = base.get("scheduler_config") or recipe["scheduler"]["config"]
    target = target_from_unet(unet, scheduler_config, recipe.get("null_class"), base)
    pipeline = target.make_pipeline()
    for technique, config in sorted(steps, key=lambda step: step[0].order):
        technique.apply(pipeline, config, target)
    return pipeline.unet
