"""Recipes: a plan (``autoaccel.plan.steps``) written down as versioned plain data, reproducing what was measured.

A recipe names the base model (its weights' hash), every technique config with its version, the seed policy, the
figures and where they were measured. Its sampler (scheduler, schedule, guidance) has one source: the technique
configs. Applying builds the plan as the search did (``build_pipeline``), so what no technique decides is the base
model's own default call. Format 2 (what autoaccel writes) shows what the techniques give under ``derived``, for
reading only: applying never reads it. Format 1 (written before) holds the same as top-level ``scheduler``,
``timesteps``, ``sigmas`` and ``guidance_scale`` fields, and applying it runs them where no technique of the recipe
decides them, as it always did. Loading one reads YAML with ``safe_load`` and resolves scheduler classes only from an
allow-list: a recipe cannot make autoaccel import or run code it names.
"""

from __future__ import annotations

import functools
import inspect
import platform
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

from autoaccel.config.values import MAX_SAMPLES, MAX_SEED
from autoaccel.errors import ConfigError, RecipeError, TechniqueError
from autoaccel.front.objectives import MODEL_MEMORY_MEANING, describe_peak_memory
from autoaccel.pipeline.sampling import SamplerPipeline, set_exact_timesteps
from autoaccel.plan.apply import build_pipeline, recipe_artifacts, technique_records
from autoaccel.plan.candidate import to_plain
from autoaccel.plan.steps import Plan
from autoaccel.schedules.exact import set_exact_sigmas
from autoaccel.schedules.schedulers import (
    MAX_INFERENCE_STEPS,
    build_scheduler_from,
    check_scheduler_settings,
    is_timestep_schedule,
    model_schedulers,
    sampler_schedulers,
    scheduler_class,
)
from autoaccel.schedules.solvers import check_guidance_scale
from autoaccel.targets.base import Target
from autoaccel.targets.layouts import has_denoiser
from autoaccel.targets.loader import modules_hash, target_from_pipeline
from autoaccel.targets.precision import target_dtype
from autoaccel.targets.prompts import MAX_PROMPT_CHARS, MAX_PROMPTS
from autoaccel.techniques.base import get_technique
from autoaccel.util.artifacts import ArtifactRef
from autoaccel.util.files import write_atomically
from autoaccel.util.precision import DTYPES

RECIPE_FORMAT = 2  # what this autoaccel writes
READ_FORMATS = (1, 2)  # what it applies
ALLOWED_SCHEDULERS = sampler_schedulers()  # what a recipe's sampler may be (autoaccel.schedules.schedulers)
REQUIRED_KEYS = ("autoaccel_recipe", "base_model")
# format 1 wrote its sampler beside its techniques, and applying runs it where no technique decides it
FORMAT_1_KEYS = (*REQUIRED_KEYS, "scheduler", "timesteps", "guidance_scale")
FORMAT_1_SAMPLER = ("scheduler", "timesteps", "sigmas", "guidance_scale")
DERIVED = "derived"
DERIVED_NOTE = "what the techniques give on this model, for reading; applying derives it again and never reads this"
SAMPLER_FROM_TECHNIQUES = (
    "a recipe's sampler comes from its techniques: name the solver technique for the scheduler and guidance, the "
    "timesteps technique for the schedule (without them the model's default call runs)"
)
MAX_RECIPE_BYTES = 64 * 1024 * 1024  # a recipe holds at most 10000 prompts of 1000 characters, and its schedule


def environment() -> dict[str, str]:
    import diffusers

    return {
        "torch": str(torch.__version__),
        "diffusers": str(diffusers.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def memory_meanings(measured_on: dict) -> dict[str, str]:
    """What the recipe's memory figures are: on a CPU ``peak_memory_mb`` is the whole process's resident peak,
    which a reader would otherwise take for the model's."""
    if not measured_on.get("memory_kind"):
        return {}
    return {
        "peak_memory_mb": describe_peak_memory(measured_on["memory_kind"]),
        "model_memory_mb": MODEL_MEMORY_MEANING,
    }


def build_recipe(
    target,
    plan: Plan,
    pipeline: SamplerPipeline,
    figures: dict,
    measured_on: dict,
    seed_policy: dict,
    source: dict,
    artifacts: dict[str, ArtifactRef] | None = None,
    records: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The recipe for a pipeline that ``plan`` configured on ``target``.

    ``artifacts`` (technique name -> reference relative to the recipe file's folder) go into their technique's
    section: applying loads them instead of training. A technique that trains or calibrates and has none says
    in its section (``reapplied``) what applying runs again. ``records`` (technique name -> what applying it
    computed, as the trial that scored the plan recorded it; default: computed from ``pipeline``) go into their
    technique's section too.
    """
    artifacts = artifacts or {}
    records = technique_records(pipeline) if records is None else records
    return {
        "autoaccel_recipe": RECIPE_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": {
            "name": target.name,
            "path": str(target.path),
            "content_hash": target.content_hash,
            "dtype": target_dtype(target),  # the precision it was loaded in (target.dtype): the hash is of that
            "pipeline_class": target.pipeline_class,
            "scheduler_class": target.scheduler_class,
            **({"num_classes": target.num_classes} if target.num_classes else {}),
            # the default call as the model's autoaccel.json named it (steps, guidance, image size), if it did
            **({"default_call": target.metadata["default_call"]} if "default_call" in target.metadata else {}),
            "scheduler_config": to_plain({k: v for k, v in target.scheduler_config.items() if not k.startswith("_")}),
        },
        "techniques": {
            technique.name: _technique_section(technique, config, artifacts, records.get(technique.name))
            for technique, config in plan
        },
        # scored by simulation (fake quantization): the figures are what the simulated model gives, and its
        # latency is a float-kernel time unless measured_on.kernels names a real quantized backend
        "simulated": [technique.name for technique, config in plan if technique.simulated_by(config)],
        DERIVED: derived_sampler(pipeline),
        "null_class": pipeline.plan.null_class,
        **({"prompts": list(target.conditions.names)} if target.conditions.kind == "prompt" else {}),
        "seed_policy": seed_policy,
        "figures": {key: to_plain(value) for key, value in figures.items()},
        "measured_on": {**measured_on, **memory_meanings(measured_on), **environment()},
        "source": source,
    }


def derived_sampler(pipeline: SamplerPipeline) -> dict[str, Any]:
    """What ``pipeline``'s plan samples with (scheduler class and config, schedule, guidance), as a recipe shows it
    for reading (``derived``): the sigmas of a flow-matching plan, the step count of a default-call schedule."""
    settings = pipeline.plan
    config = {key: value for key, value in dict(pipeline.scheduler.config).items() if not key.startswith("_")}
    return {
        "note": DERIVED_NOTE,
        "scheduler": {"class": type(pipeline.scheduler).__name__, "config": to_plain(config)},
        "timesteps": [int(step) for step in settings.timesteps],
        **({"sigmas": [float(sigma) for sigma in settings.sigmas]} if settings.sigmas else {}),
        **({"native_steps": int(settings.native_steps)} if not settings.schedule() and settings.native_steps else {}),
        "guidance_scale": float(settings.guidance_scale),
    }


def _technique_section(technique, config, artifacts: dict[str, ArtifactRef], record: dict | None = None) -> dict:
    section: dict[str, Any] = {"version": technique.version, "config": to_plain(asdict(config))}
    if record:
        section.update(record)
    if technique.simulated_by(config):
        section["simulated"] = True
    if technique.name in artifacts:
        section["artifact"] = artifacts[technique.name].as_dict()
    elif technique.recompute is not None and technique.recompute(config):
        section["reapplied"] = f"no artifact: applying this recipe re-runs {technique.recompute(config)}"
    return section


def without_artifacts(recipe: dict[str, Any]) -> dict[str, Any]:
    """``recipe`` for a place its artifacts do not go: each technique that named one says it re-runs instead."""
    copied = dict(recipe)
    copied["techniques"] = {}
    for name, section in (recipe.get("techniques") or {}).items():
        section = dict(section)
        if section.pop("artifact", None) is not None:
            technique, config = recipe_plan({"techniques": {name: section}})[0]
            section.update(_technique_section(technique, config, {}))
        copied["techniques"][name] = section
    return copied


def save_recipe(recipe: dict[str, Any], path: Path) -> Path:
    return write_atomically(Path(path), lambda temporary: temporary.write_text(yaml.safe_dump(recipe, sort_keys=False)))


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Reads and validates a recipe file; every problem is a RecipeError naming the file and the bad value."""
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"recipe {path} is a folder; give a recipe file, e.g. {_example_recipe(path)}")
    if not path.exists():
        raise RecipeError(f"recipe {path} does not exist")
    if not path.is_file():
        raise RecipeError(f"recipe {path} is not a regular file; give a recipe file (YAML)")
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(f"recipe {path} has {size} bytes; a recipe has at most {MAX_RECIPE_BYTES}")
    try:
        recipe = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise RecipeError(f"recipe {path} is not UTF-8 text (bad byte at offset {error.start})") from None
    except OSError as error:
        raise RecipeError(f"recipe {path} cannot be read: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise RecipeError(f"recipe {path} is not valid YAML: {' '.join(str(error).split())}") from None
    except (ValueError, RecursionError) as error:  # an int of thousands of digits; nesting deeper than the stack
        raise RecipeError(f"recipe {path} is not valid YAML: {' '.join(str(error).split())[:200]}") from None
    return validate_recipe(recipe, f"recipe {path}")


def _example_recipe(folder: Path) -> Path:
    """A recipe file in ``folder`` (a run folder keeps them in recipes/), to show what to pass instead."""
    found = sorted(folder.glob("*.yaml")) or sorted(folder.glob("recipes/*.yaml"))
    return found[0] if found else folder / "recipes" / "trial-NNNN.yaml"


def validate_recipe(recipe: Any, source: str = "recipe") -> dict[str, Any]:
    """Checks a recipe's structure and values; returns it unchanged or raises RecipeError naming the bad value.

    Format 2 has no sampler fields of its own: a top-level ``scheduler``, ``timesteps``, ``sigmas`` or
    ``guidance_scale`` is refused (its techniques decide), and ``derived`` is not checked at all, since applying
    never reads it. Format 1's written sampler is checked as it always was (an allowed class, settings it accepts,
    a schedule it runs), since applying runs it where no technique decides.
    """
    if not isinstance(recipe, dict):
        raise RecipeError(f"{source} must be a mapping with keys {', '.join(REQUIRED_KEYS)} and techniques")
    if "autoaccel_recipe" not in recipe:
        raise RecipeError(f"{source} lacks autoaccel_recipe")
    version = recipe["autoaccel_recipe"]
    if not _is_int(version) or version not in READ_FORMATS:
        raise RecipeError(
            f"{source}: format {version!r} is not supported; this autoaccel reads formats "
            f"{' and '.join(str(known) for known in READ_FORMATS)}"
        )
    missing = [key for key in (FORMAT_1_KEYS if version == 1 else REQUIRED_KEYS) if key not in recipe]
    if missing:
        raise RecipeError(f"{source} lacks {', '.join(missing)}")
    if not isinstance(recipe["base_model"], dict):
        raise RecipeError(f"{source}: base_model must be a mapping with name, path and content_hash")
    _check_base_scheduler(recipe["base_model"], source)
    dtype = recipe["base_model"].get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise RecipeError(f"{source}: base_model.dtype={dtype!r} is not valid; valid: {', '.join(DTYPES)}")
    written = _check_written_sampler(recipe, source) if version == 1 else _refuse_written_sampler(recipe, source)
    null_class = recipe.get("null_class")
    if null_class is not None and (not _is_int(null_class) or null_class < 0):
        raise RecipeError(f"{source}: null_class={null_class!r} must be an int >= 0 or null")
    check_seed_policy(recipe.get("seed_policy"), source)
    _check_prompts(recipe.get("prompts"), source)
    recipe_plan(recipe)  # every technique config, bounded: one whose artifact is not named trains again on apply
    for technique, section in (recipe.get("techniques") or {}).items():
        if isinstance(section, dict) and "artifact" in section:
            ArtifactRef.from_dict(section["artifact"], f"{source}: techniques.{technique}.artifact")
    if written is not None:
        _probe_scheduler(*written, source)
    return recipe


def _refuse_written_sampler(recipe: dict, source: str) -> None:
    """A format-2 recipe with format 1's sampler fields: editing them would change nothing, so they are refused."""
    written = [key for key in FORMAT_1_SAMPLER if key in recipe]
    if written:
        raise RecipeError(
            f"{source}: top-level {written[0]} is not a field of a format-2 recipe; {SAMPLER_FROM_TECHNIQUES}"
        )


def _check_written_sampler(recipe: dict, source: str) -> tuple[str, dict, list]:
    """A format-1 recipe's written sampler, checked before its scheduler is probed; returns the probe's arguments
    (scheduler class, config, schedule)."""
    scheduler = recipe["scheduler"]
    name = scheduler.get("class") if isinstance(scheduler, dict) else scheduler
    if not isinstance(scheduler, dict) or not isinstance(name, str) or name not in ALLOWED_SCHEDULERS:
        raise RecipeError(
            f"{source}: scheduler class {name!r} is not allowed; allowed: {sorted(ALLOWED_SCHEDULERS)} "
            "(as scheduler: {class: NAME, config: {...}})"
        )
    if not isinstance(scheduler.get("config"), dict):
        raise RecipeError(f"{source}: scheduler.config must be a mapping")
    _check_scheduler_config(name, scheduler["config"], recipe["base_model"].get("scheduler_config"), source)
    trained = scheduler["config"].get("num_train_timesteps", 1000)
    timesteps = recipe["timesteps"]
    if "sigmas" in recipe:
        _check_sigmas(recipe["sigmas"], timesteps, source)
    elif not is_timestep_schedule(timesteps, trained):
        raise RecipeError(
            f"{source}: timesteps={_short(repr(timesteps))} must be a non-empty strictly decreasing list of ints in "
            f"[0, {trained - 1}], at most {MAX_INFERENCE_STEPS} of them"
        )
    check_guidance_scale(recipe["guidance_scale"], f"{source}: guidance_scale", RecipeError)
    return name, scheduler["config"], recipe.get("sigmas") or timesteps


def _check_base_scheduler(base: dict, source: str) -> None:
    """The model's own scheduler, which applying builds before any technique: a class a model may come with
    (``autoaccel.schedules.schedulers``), its counts bounded, and settings diffusers accepts."""
    name, config = base.get("scheduler_class"), base.get("scheduler_config")
    where = f"{source}: base_model"
    if name is not None:
        scheduler_class(name, f"{where}.scheduler_class", model_schedulers(), RecipeError)
    if config is not None:
        check_scheduler_settings(config, f"{where}.scheduler_config", RecipeError)
    if name is not None and config is not None:
        build_scheduler_from(
            name, config, f"{where}.scheduler_class", f"{where}.scheduler_config", model_schedulers(), RecipeError
        )


def _check_sigmas(sigmas: Any, timesteps: Any, source: str) -> None:
    """A flow-matching plan's schedule: strictly decreasing sigmas in (0, 1] (the final 0 is the scheduler's)."""
    numbers = isinstance(sigmas, list) and all(
        isinstance(sigma, int | float) and not isinstance(sigma, bool) for sigma in sigmas
    )
    if (
        not numbers
        or not sigmas
        or not all(0 < sigma <= 1 for sigma in sigmas)
        or any(later >= earlier for earlier, later in zip(sigmas, sigmas[1:]))
    ):
        raise RecipeError(f"{source}: sigmas={_short(sigmas)} must be a non-empty strictly decreasing list in (0, 1]")
    if timesteps not in ([], None):
        raise RecipeError(f"{source}: a recipe with sigmas runs them; timesteps must be [] (got {_short(timesteps)})")


def _check_prompts(prompts: Any, source: str) -> None:

    if prompts is None:
        return
    if (
        not isinstance(prompts, list)
        or not 1 <= len(prompts) <= MAX_PROMPTS
        or not all(isinstance(prompt, str) and len(prompt) <= MAX_PROMPT_CHARS for prompt in prompts)
    ):
        raise RecipeError(
            f"{source}: prompts must be a list of 1 to {MAX_PROMPTS} strings of at most {MAX_PROMPT_CHARS} characters"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_seed_policy(policy: Any, source: str = "recipe") -> None:
    """The noise a recipe's images are drawn from: bounded, so ``apply`` never tries to allocate absurd batches."""
    if policy is None:
        return
    if not isinstance(policy, dict):
        raise RecipeError(f"{source}: seed_policy={policy!r} must be a mapping with seed, samples and chunk_size")
    bounds = {"seed": (-MAX_SEED, MAX_SEED - 1), "samples": (1, MAX_SAMPLES), "chunk_size": (1, None)}
    for key, (low, high) in bounds.items():
        value = policy.get(key)
        if value is not None and (not _is_int(value) or value < low or (high is not None and value > high)):
            valid = f"an int in [{low}, {high}]" if high is not None else f"an int >= {low}"
            raise RecipeError(f"{source}: seed_policy.{key}={value!r} must be {valid}")


def _check_scheduler_config(class_name: str, config: dict, base_config: Any, source: str) -> None:
    """Every key is a setting of the scheduler class (or carried over from the model's own scheduler config,
    which diffusers keeps and ignores), and every setting has the type of its default."""
    check_scheduler_settings(config, f"{source}: scheduler.config", RecipeError)
    accepted = inspect.signature(scheduler_class(class_name, "scheduler", ALLOWED_SCHEDULERS).__init__).parameters
    carried = _allowed_scheduler_settings() | (set(base_config) if isinstance(base_config, dict) else set())
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key not in accepted and key not in carried:
            raise RecipeError(
                f"{source}: scheduler.config key {key!r} is not a setting of {class_name}; "
                f"its settings: {', '.join(name for name in accepted if name not in ('self', 'kwargs'))}"
            )
        if key in accepted and not _has_type_of(value, accepted[key].default):
            expected = type(accepted[key].default).__name__
            raise RecipeError(f"{source}: scheduler.config {key}={value!r} must be of type {expected} for {class_name}")


@functools.cache
def _allowed_scheduler_settings() -> frozenset[str]:
    """Every setting of an allowed scheduler: a solver's config carries its model's own scheduler settings."""
    return frozenset(
        key
        for name in ALLOWED_SCHEDULERS
        for key in inspect.signature(scheduler_class(name, "scheduler", ALLOWED_SCHEDULERS).__init__).parameters
    )


def _has_type_of(value: Any, default: Any) -> bool:
    """Whether ``value`` fits a setting whose default is ``default`` (None is always allowed: optional ones)."""
    if value is None or default is None or default is inspect.Parameter.empty:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return _is_int(value)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def _probe_scheduler(class_name: str, config: dict, timesteps: list, source: str) -> None:
    """Runs the scheduler over the recipe's timesteps on a tiny zero sample: diffusers refuses many bad values
    (an unknown beta schedule, order 0, a bad prediction type) only at construction, set-up or step time."""
    error = _scheduler_failure(class_name, config, timesteps)
    if error is None:
        return
    reason = " ".join(f"{type(error).__name__}: {error}".split())
    reason = reason if len(reason) <= 200 else reason[:197] + "..."
    culprit = next(
        (key for key in config if _scheduler_failure(class_name, _without(config, key), timesteps) is None), None
    )
    setting = f"scheduler.config {culprit}={config[culprit]!r}" if culprit else "scheduler.config"
    raise RecipeError(f"{source}: {setting} is not accepted by {class_name}: {reason}")


def _without(config: dict, key: str) -> dict:
    return {other: value for other, value in config.items() if other != key}


def _scheduler_failure(class_name: str, config: dict, timesteps: list) -> Exception | None:
    """What goes wrong running ``config`` over ``timesteps``, or None."""
    try:
        scheduler = scheduler_class(class_name, "scheduler", ALLOWED_SCHEDULERS).from_config(config)
        if timesteps and isinstance(timesteps[0], float):
            set_exact_sigmas(scheduler, timesteps)
        else:
            set_exact_timesteps(scheduler, timesteps)
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        sample = torch.zeros(1, 1, 2, 2)
        scale_input = getattr(scheduler, "scale_model_input", None)
        for timestep in scheduler.timesteps:
            extra = {"generator": torch.Generator().manual_seed(0)} if takes_generator else {}
            model_input = scale_input(sample, timestep) if scale_input is not None else sample
            sample = scheduler.step(torch.zeros_like(model_input), timestep, sample, **extra).prev_sample
    except Exception as error:  # diffusers raises anything from TypeError to IndexError on a bad setting
        return error
    return None


def apply_recipe(
    pipeline,
    recipe: str | Path | dict,
    check_model: bool = True,
    recipe_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> SamplerPipeline:
    """Configures a loaded pipeline (a supported diffusers pipeline, or an autoaccel Target) as the recipe says;
    returns the runnable pipeline.

    >>> pipe = DDPMPipeline.from_pretrained(folder)
    >>> fast = autoaccel.apply_recipe(pipe, "reports/digits-sampler/recipes/trial-0042.yaml")
    >>> images = fast(noise, class_labels).images

    The recipe's plan is built as the search built it (``autoaccel.plan.apply.build_pipeline``): every technique it
    names, in declared order; one with an artifact is rebuilt from it (hash checked, never trained again). The
    scheduler, timesteps and guidance are what its techniques give, and the model's default call where none
    decides them (a format-1 recipe runs its written ones there). Artifact paths are relative to the recipe file's
    folder, or to ``recipe_dir`` for a recipe given as a dict (default: the working directory). ``log`` (default:
    a warning) hears of a technique that trains again because its recipe has no artifact.
    The denoiser is shared, not copied, unless a technique changes it. With ``check_model`` the model's weights
    (denoiser, and VAE and text encoders where there are) must hash to the recipe's ``base_model.content_hash``:
    a recipe measured on another model would not reproduce its figures.
    """
    if isinstance(recipe, dict):
        recipe, folder = validate_recipe(recipe), Path(recipe_dir or ".")
    else:
        recipe, folder = load_recipe(recipe), Path(recipe_dir or Path(recipe).parent)
    target = _as_target(pipeline, recipe)
    if check_model:
        expected = recipe["base_model"].get("content_hash")
        actual = current_hash(target)
        if expected != actual:
            measured_in, loaded_in = recipe["base_model"].get("dtype"), target_dtype(target)
            precision = (
                f" (it was measured on the model loaded in {measured_in}, and this one is in {loaded_in}: load it "
                f"with torch_dtype=torch.{measured_in}, or target.dtype={measured_in})"
                if measured_in and measured_in != loaded_in
                else ""
            )
            raise RecipeError(
                f"this recipe was measured on model {recipe['base_model'].get('name')!r} with weights hash "
                f"{str(expected)[:16]}..., but the pipeline's weights hash to {actual[:16]}...{precision}; "
                f"apply it to that model or pass check_model=False"
            )
    _check_null_class(recipe.get("null_class"), target)
    fast = _build(recipe, target, folder, log or _warn)
    fast.plan.null_class = recipe.get("null_class")
    return fast


def _as_target(pipeline, recipe: dict[str, Any]):
    """A Target around what the user passed: a Target as it is, or a loaded diffusers pipeline of a supported
    class (its modules shared), conditioned as the recipe was (its null class, its prompts)."""
    if isinstance(pipeline, Target):
        return pipeline
    if not has_denoiser(pipeline):
        raise RecipeError(f"apply_recipe needs a pipeline with a unet or transformer; got {type(pipeline).__name__}")
    base = recipe["base_model"]
    extra = {key: recipe[key] for key in ("null_class",) if recipe.get(key) is not None}
    if base.get("num_classes"):
        extra["num_classes"] = base["num_classes"]
    if base.get("default_call") is not None:  # checked as autoaccel.json's is
        extra["default_call"] = base["default_call"]
    return target_from_pipeline(
        pipeline, str(base.get("name", "model")), Path(str(base.get("path", "."))), extra, prompts=recipe.get("prompts")
    )


def current_hash(target) -> str:
    """The weights hash of the target's modules as they are now (``autoaccel.targets.loader.model_hash``)."""
    return modules_hash(target.denoiser, target.modules)


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, stacklevel=5)  # at the caller of apply_recipe


def _check_null_class(null_class: int | None, target) -> None:
    """The guidance label must be the model's null class (a UNet's class embedding, a DiT's last label row), or
    guided sampling indexes past the table."""
    if null_class is None:
        return
    config = getattr(target.denoiser, "config", None)
    embeddings = getattr(config, "num_class_embeds", None)
    table = getattr(config, "num_embeds_ada_norm", None) if target.pipeline_class == "DiTPipeline" else None
    if table and null_class == table:
        return
    if not embeddings or null_class >= embeddings:
        valid = f"an int in [0, {embeddings - 1}] or null" if embeddings else "null: the model has no null class"
        valid = f"{table} or null" if table else valid
        raise RecipeError(f"recipe null_class={null_class} is not a class of this model's denoiser; valid: {valid}")


def recipe_plan(recipe: dict[str, Any]) -> Plan:
    """The plan the recipe is written down from: every technique it names with its config.

    Only registered technique names are looked up, and their configs are plain dataclass fields checked by the
    config's own validation: nothing named in the file is imported.
    """
    techniques = recipe.get("techniques") or {}
    if not isinstance(techniques, dict):
        raise RecipeError("recipe techniques must be a mapping of technique name to {version, config}")
    steps = []
    for name, entry in techniques.items():
        try:
            technique = get_technique(str(name))
        except ConfigError as error:
            raise RecipeError(f"recipe names {error}") from None
        version = entry.get("version") if isinstance(entry, dict) else entry
        if version != technique.version:
            raise RecipeError(
                f"recipe technique {name!r} has version {version!r}; this autoaccel applies version {technique.version}"
            )
        config = entry.get("config") if isinstance(entry, dict) else None
        if not isinstance(config or {}, dict):
            raise RecipeError(f"recipe technique {name!r} has config {config!r}; it must be a mapping")
        try:
            steps.append((technique, technique.config_cls(**(config or {}))))
        except (TypeError, ConfigError) as error:
            raise RecipeError(f"recipe technique {name!r} has an invalid config: {error}") from None
    return Plan.of(steps)


def _build(recipe: dict[str, Any], target, folder: Path, log: Callable[[str], None]) -> SamplerPipeline:
    """The recipe's plan built on the base model (``autoaccel.plan.apply.build_pipeline``): its sampler is what the
    plan's techniques give, and the model's default call for what none of them decides (``Plan.decides``). A
    format-1 recipe runs its written scheduler, guidance and schedule for what none decides, as it always did."""
    plan = recipe_plan(recipe)
    written = recipe if recipe["autoaccel_recipe"] == 1 else None
    model = recipe["base_model"]
    base_config = model.get("scheduler_config") or (written["scheduler"]["config"] if written else None)
    base = replace(
        target,
        scheduler_config=dict(base_config or target.scheduler_config),
        scheduler_class=model.get("scheduler_class", target.scheduler_class),
    )
    try:
        pipeline = build_pipeline(base, plan, recipe_artifacts(recipe.get("techniques") or {}, folder), log=log)
    except TechniqueError as error:
        raise RecipeError(f"recipe technique cannot apply to this model: {error}") from None
    if written is not None:
        _run_written_sampler(pipeline, written, plan)
    return pipeline


def _run_written_sampler(pipeline: SamplerPipeline, recipe: dict[str, Any], plan: Plan) -> None:
    """Format 1: the written scheduler and guidance where no technique decides the scheduler, the written
    timesteps or sigmas where none decides the schedule."""
    if "scheduler" not in plan.decides:
        written = recipe["scheduler"]["class"]
        chosen = scheduler_class(written, "recipe scheduler.class", ALLOWED_SCHEDULERS, RecipeError)
        pipeline.scheduler = chosen.from_config(recipe["scheduler"]["config"])
        pipeline.plan.guidance_scale = float(recipe["guidance_scale"])
    if "schedule" not in plan.decides:
        pipeline.plan.timesteps = list(recipe["timesteps"])
        pipeline.plan.sigmas = [float(sigma) for sigma in recipe.get("sigmas") or []]


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 160 else text[:157] + "..."
