"""Loads a diffusers pipeline (a ``save_pretrained`` folder, or a hub id with network) as a Target."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
from pathlib import Path

import torch

from autoaccel.errors import ConfigError, TargetError
from autoaccel.front.limits import REFERENCE_SAMPLES
from autoaccel.metrics.extractor_names import GENERIC_EXTRACTOR
from autoaccel.schedules.schedulers import MAX_INFERENCE_STEPS, build_scheduler_from, model_schedulers, scheduler_class
from autoaccel.targets.base import DefaultCall, QualityReference, Target, hash_weights
from autoaccel.targets.conditions import CLASS, PROMPT, Conditions
from autoaccel.targets.denoisers import SAMPLE_SIZE
from autoaccel.targets.layouts import LAYOUTS, VAE_SCALE, layout_of, pipeline_denoiser
from autoaccel.targets.prompt_sets import resolve_prompts
from autoaccel.targets.prompts import PromptEncoder
from autoaccel.util.precision import dtype_named

SUPPORTED_PIPELINES = {
    # pipeline class -> how its images are conditioned (autoaccel.targets.conditions)
    "DDPMPipeline": CLASS,
    "DDIMPipeline": CLASS,
    "DiTPipeline": CLASS,
    "StableDiffusionPipeline": PROMPT,
    "PixArtAlphaPipeline": PROMPT,
    "PixArtSigmaPipeline": PROMPT,
    "StableDiffusion3Pipeline": PROMPT,
    "StableDiffusionXLPipeline": PROMPT,
    "FluxPipeline": PROMPT,
    "SanaPipeline": PROMPT,
}
SUPPORTED = "supported: a diffusers save_pretrained folder (or, with network, a hub id) of " + ", ".join(
    SUPPORTED_PIPELINES
)
# A denoiser's sample (latents under a VAE): SDXL, SD3 and PixArt work on 128x128 latents of 4 to 16 channels, and a
# pixel-space model on a few hundred pixels; larger sizes only allocate noise no machine holds.
MAX_SAMPLE_SIZE = 1024
MAX_SAMPLE_CHANNELS = 256


def _read_json(path: Path) -> dict:
    """A JSON object (mapping): every file the loader reads is one, and ``.get`` on anything else would crash."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON, or an int too long to read
        raise TargetError(f"{path} is not readable JSON: {' '.join(str(error).split())[:200]}") from error
    if not isinstance(content, dict):
        shown = json.dumps(content)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise TargetError(f"{path} holds {shown}, not a JSON object of keys and values")
    return content


def load_pipeline_folder(
    path: str | Path,
    device: str = "cpu",
    name: str | None = None,
    prompts: str | None = None,
    dtype: str | None = None,
    offload: str = "none",
) -> Target:
    """A supported diffusers pipeline (a ``save_pretrained`` folder, or a hub id where there is network) as a Target.

    The pipeline's scheduler config is the starting point of every solver; its default call (step count and
    guidance its ``__call__`` uses unless told otherwise) is the reference plans are compared with. An optional
    ``autoaccel.json`` in the folder may name a ``null_class`` (DDPM/DDIM: the label trained for guidance),
    ``num_classes`` (how many classes to sample from), ``name`` and ``default_call``. ``prompts``: a prompt file or
    bundled prompt set for text-to-image pipelines (default: the folder's own set, else the bundled one).
    ``dtype``: the precision the weights are read in (``from_pretrained(torch_dtype=...)``, one module at a time
    with ``low_cpu_mem_usage``: a model is never held in float32 first); ``offload``: ``OFFLOADS``.
    """
    folder = Path(path).expanduser()
    check_device(device)
    torch_dtype = dtype_named(dtype, "target.dtype") if dtype is not None else None
    check_offload(offload, device)
    if folder.is_dir():
        pipeline_class = _folder_pipeline_class(folder, path)
        _check_folder_sizes(folder)
        extra_path = folder / "autoaccel.json"
        extra = _read_json(extra_path) if extra_path.exists() else {}
        source, shown_name = folder, folder.name
    elif _looks_like_hub_id(str(path)):
        pipeline_class, extra, extra_path, source, shown_name = None, {}, Path("autoaccel.json"), str(path), str(path)
    else:
        raise TargetError(f"target.path={str(path)!r} is not a folder; {SUPPORTED}")
    extra_name = extra.get("name")
    if extra_name is not None and not (isinstance(extra_name, str) and extra_name.strip()):
        raise TargetError(f"{extra_path}: name={extra_name!r} is not valid; give a non-empty string, or leave it out")
    pipeline = _load_pipeline(source, pipeline_class, path, torch_dtype)
    pipeline_class = type(pipeline).__name__
    if pipeline_class not in SUPPORTED_PIPELINES:
        raise TargetError(f"target.path={str(path)!r} holds a {pipeline_class}, which is not supported; {SUPPORTED}")
    weights_hash = model_hash(pipeline)  # before offloading: sequential offload leaves no weights on the modules
    place(pipeline, device, offload)
    target = target_from_pipeline(
        pipeline,
        name=name or extra_name or shown_name.replace("/", "--"),
        path=folder.resolve() if folder.is_dir() else Path(str(path)),
        extra=extra,
        extra_path=extra_path,
        prompts=prompts,
        content_hash=weights_hash,
    )
    target.offload = offload
    return target


def _looks_like_hub_id(text: str) -> bool:
    """``org/name``: what diffusers resolves on the hub (a user with network); not a local path."""
    parts = text.split("/")
    return len(parts) == 2 and all(part and not part.startswith(".") for part in parts) and not Path(text).exists()


def _folder_pipeline_class(folder: Path, path) -> str:
    index_path = folder / "model_index.json"
    if not index_path.exists():
        raise TargetError(
            f"target.path={str(path)!r} has no model_index.json, so it is not a diffusers pipeline; {SUPPORTED}"
        )
    pipeline_class = _read_json(index_path).get("_class_name")  # read twice: a clear error for a bad index first
    if pipeline_class not in SUPPORTED_PIPELINES:
        raise TargetError(f"target.path={str(path)!r} holds a {pipeline_class}, which is not supported; {SUPPORTED}")
    index = _read_json(index_path)
    role = "transformer" if "transformer" in index else "unet"
    entry = index.get(role)
    if not isinstance(entry, list) or not entry or entry[-1] not in LAYOUTS:
        raise TargetError(
            f"target.path={str(path)!r}: its {role} is {entry}, not supported; "
            f"supported denoisers: {', '.join(LAYOUTS)}"
        )
    if not (folder / "scheduler" / "scheduler_config.json").exists():
        raise TargetError(f"target.path={str(path)!r} has no scheduler/scheduler_config.json; {SUPPORTED}")
    return pipeline_class


def _check_folder_sizes(folder: Path) -> None:
    """What loading would build from the folder's JSON before any weight is read: the scheduler (a class a model may
    come with, its tables bounded: ``autoaccel.schedules.schedulers``) and the denoiser's sample size and channels."""
    index_path = folder / "model_index.json"
    index = _read_json(index_path)
    entry = index.get("scheduler")
    named = entry[-1] if isinstance(entry, list) and entry else entry
    scheduler_class(named, f"{index_path}: scheduler", model_schedulers(), TargetError)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = _read_json(config_path)
    build_scheduler_from(
        config.get("_class_name", named),
        config,
        f"{config_path}: _class_name",
        str(config_path),
        model_schedulers(),
        TargetError,
    )
    role = "transformer" if "transformer" in index else "unet"
    denoiser_path = folder / role / "config.json"
    if denoiser_path.exists():
        denoiser = _read_json(denoiser_path)
        if "sample_size" in denoiser:  # Flux's has none: its pipeline's default size is checked once loaded
            check_sample_shape(denoiser.get("sample_size"), denoiser.get("in_channels"), str(denoiser_path))


def check_sample_shape(size, channels, source: str) -> None:
    """A denoiser's ``sample_size`` (an int or [height, width]) and ``in_channels``, bounded: every candidate's
    noise has this shape."""
    sides = size if isinstance(size, list | tuple) and len(size) == 2 else [size]
    if not all(_is_int(side) and 1 <= side <= MAX_SAMPLE_SIZE for side in sides):
        raise TargetError(
            f"{source}: sample_size={repr(size)[:60]} is not valid; give an int (or [height, width]) in "
            f"[1, {MAX_SAMPLE_SIZE}]"
        )
    if channels is not None and not (_is_int(channels) and 1 <= channels <= MAX_SAMPLE_CHANNELS):
        raise TargetError(
            f"{source}: in_channels={repr(channels)[:60]} is not valid; give an int in [1, {MAX_SAMPLE_CHANNELS}]"
        )


OFFLOADS = {
    "none": "every module on target.device",
    "model": "diffusers' enable_model_cpu_offload: each model moves to the GPU when it runs",
    "sequential": "diffusers' enable_sequential_cpu_offload: each layer moves to the GPU when it runs",
}


def check_offload(offload: str, device: str) -> None:
    """``target.offload``: one of OFFLOADS, and other than ``none`` only where there is an accelerator to
    offload from."""
    if offload not in OFFLOADS:
        raise ConfigError(f"target.offload={offload!r} is not valid; valid: {', '.join(OFFLOADS)}")
    if offload != "none" and not default_device(device).startswith("cuda"):
        raise ConfigError(
            f"target.offload={offload} moves modules between CPU memory and a GPU; target.device={device} has no "
            "GPU, so only none is valid"
        )


def place(pipeline, device: str, offload: str) -> None:
    """Puts the pipeline's modules on ``device``, or installs diffusers' offload hooks for it (accelerate's): a
    module then lives in CPU memory and runs on ``device``, and every call pays for the moves, so every latency
    includes them."""
    if offload == "model":
        pipeline.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipeline.enable_sequential_cpu_offload(device=device)
    else:
        pipeline.to(device)


def check_timestep_scale(denoiser: torch.nn.Module, source: str) -> None:
    """A denoiser whose pipeline scales every timestep (a Sana ``timestep_scale``) is refused unless the scale is 1:
    the sampling loop passes the scheduler's timesteps as they are, and would not give that pipeline's images."""
    scale = getattr(denoiser.config, "timestep_scale", 1.0)
    if scale != 1.0:
        raise TargetError(
            f"{source}: timestep_scale={scale!r} is not supported; supported: 1.0 (timesteps as the "
            "scheduler gives them)"
        )


def _load_pipeline(source, pipeline_class: str | None, path, torch_dtype: torch.dtype | None = None):
    import diffusers

    loader = getattr(diffusers, pipeline_class) if pipeline_class else diffusers.DiffusionPipeline
    options = {"safety_checker": None} if pipeline_class == "StableDiffusionPipeline" else {}
    options["low_cpu_mem_usage"] = True  # accelerate's loading: weights are read into place, module by module
    if torch_dtype is not None:  # diffusers 0.42 renamed torch_dtype to dtype (and warns on the old name)
        from diffusers.pipelines import pipeline_utils

        options["dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"] = torch_dtype
    try:
        with _quiet_loading():
            return loader.from_pretrained(source, **options)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, ImportError) as error:
        reason = " ".join(str(error).split())
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        raise TargetError(f"target.path={str(path)!r}: the pipeline's weights could not be loaded: {reason}") from error


@contextlib.contextmanager
def _quiet_loading():
    """No progress bars or advice on stderr while loading: a failure is one line, success says nothing."""
    from diffusers.utils import logging as diffusers_logging

    libraries = [diffusers_logging]
    try:
        from transformers.utils import logging as transformers_logging

        libraries.append(transformers_logging)
    except ImportError:  # pixel-space pipelines need no transformers
        pass
    verbosities = [library.get_verbosity() for library in libraries]
    for library in libraries:
        library.set_verbosity_error()
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, verbosity in zip(libraries, verbosities):
            library.set_verbosity(verbosity)
            library.enable_progress_bar()


def target_from_pipeline(
    pipeline,
    name: str,
    path: Path,
    extra: dict | None = None,
    extra_path: Path | None = None,
    prompts: str | list[str] | None = None,
    content_hash: str | None = None,
) -> Target:
    """A Target around a loaded diffusers pipeline of a supported class (its modules shared, not copied);
    ``content_hash``: its weights' hash where it was taken before the modules were offloaded."""
    extra = extra or {}
    extra_path = extra_path or Path("autoaccel.json")
    pipeline_class = type(pipeline).__name__
    denoiser = pipeline_denoiser(pipeline)
    size = call_size(pipeline, extra, extra_path)
    shown = f"{name}'s {type(denoiser).__name__}"
    check_sample_shape(size or getattr(denoiser.config, "sample_size", None), denoiser.config.in_channels, shown)
    if size is not None:
        object.__setattr__(denoiser, SAMPLE_SIZE, size)
    check_timestep_scale(denoiser, shown)
    denoiser.eval().requires_grad_(False)
    if getattr(denoiser, "use_additional_conditions", False) and hasattr(pipeline, "vae_scale_factor"):
        # PixArt-alpha 1024 is conditioned on the image size in pixels: its VAE's scale gives it
        object.__setattr__(denoiser, VAE_SCALE, int(pipeline.vae_scale_factor))
    vae = getattr(pipeline, "vae", None)
    if vae is not None:
        vae.eval().requires_grad_(False)
    kind = SUPPORTED_PIPELINES.get(pipeline_class, CLASS)
    if kind == PROMPT:
        conditions = prompt_conditions(pipeline, prompts or extra.get("prompts"), extra_path)
    elif prompts:
        raise TargetError(
            f"target.prompts={prompts}: {path} holds a {pipeline_class}, which takes class labels or nothing, not "
            "prompts; leave target.prompts out (prompts are for "
            + ", ".join(other for other, how in SUPPORTED_PIPELINES.items() if how == PROMPT)
            + ")"
        )
    else:
        conditions = class_conditions(pipeline, extra, extra_path)
    default_call = read_default_call(pipeline, extra, extra_path)
    conditions.guidance_keyword = layout_of(denoiser).embedded_guidance(denoiser)
    conditions.embedded_guidance = default_call.guidance_scale
    scheduler_config = {key: value for key, value in dict(pipeline.scheduler.config).items() if key != "_class_name"}
    return Target(
        name=name,
        path=path,
        denoiser=denoiser,
        scheduler_config=scheduler_config,
        scheduler_class=type(pipeline.scheduler).__name__,
        content_hash=content_hash or model_hash(pipeline),
        modules=other_modules(pipeline),
        quality=QualityReference(
            extractor=GENERIC_EXTRACTOR,
            kind=REFERENCE_SAMPLES,
            description=(
                "FID/KID against the model's own default call on the same seeds, with a seeded random-CNN "
                "feature extractor (values not comparable with Inception FID)"
            ),
        ),
        conditions=conditions,
        vae=vae,
        default_call=default_call,
        pipeline_class=pipeline_class,
        metadata=extra,
    )


def call_size(pipeline, extra: dict, extra_path: Path) -> list[int] | None:
    """The latents' [height, width] of the default call where the denoiser's config does not say it: the
    ``height``/``width`` in pixels ``autoaccel.json``'s ``default_call`` names, else the pipeline's own default
    (``default_sample_size`` times the VAE's scale) for a denoiser without ``sample_size`` (Flux). None: the
    config's ``sample_size`` is the size."""
    given = extra.get("default_call", {})
    given = given if isinstance(given, dict) else {}
    denoiser = pipeline_denoiser(pipeline)
    scale = int(getattr(pipeline, "vae_scale_factor", 1) or 1) if getattr(pipeline, "vae", None) is not None else 1
    step = scale * layout_of(denoiser).packing
    if "height" not in given and "width" not in given:
        if getattr(denoiser.config, "sample_size", None) is not None:
            return None
        default = getattr(pipeline, "default_sample_size", None)
        if not _is_int(default):
            raise TargetError(f"{type(pipeline).__name__} names no image size; give default_call.height and width")
        pixels = [default * scale] * 2
    else:
        pixels = [given.get("height"), given.get("width")]
        limit = MAX_SAMPLE_SIZE * scale
        for key, value in zip(("height", "width"), pixels):
            if not _is_int(value) or not step <= value <= limit or value % step:
                raise TargetError(
                    f"{extra_path}: default_call.{key}={value!r} is not valid; give both height and width in pixels, "
                    f"multiples of {step} in [{step}, {limit}]"
                )
    return [side // step * layout_of(denoiser).packing for side in pixels]


def other_modules(pipeline) -> dict[str, torch.nn.Module]:
    """The pipeline's modules besides its denoiser (VAE, text encoders), by component name."""
    denoiser = pipeline_denoiser(pipeline)
    return {
        name: module
        for name, module in pipeline.components.items()
        if isinstance(module, torch.nn.Module) and module is not denoiser
    }


def model_hash(pipeline) -> str:
    """The weights' identity a recipe is checked against (``modules_hash``)."""
    return modules_hash(pipeline_denoiser(pipeline), other_modules(pipeline))


def modules_hash(denoiser: torch.nn.Module, modules: dict[str, torch.nn.Module]) -> str:
    """The denoiser's hash for a pixel-space model; with a VAE and text encoders, a hash over every module's (they
    all shape the images)."""
    if not modules:
        return hash_weights(denoiser)
    digest = hashlib.sha256(hash_weights(denoiser).encode())
    for name in sorted(modules):
        digest.update(f"{name}:{hash_weights(modules[name])}".encode())
    return digest.hexdigest()


def read_default_call(pipeline, extra: dict, extra_path: Path) -> DefaultCall:
    """The step count and guidance scale ``pipeline()`` uses by default: its ``__call__``'s own defaults,
    unless ``autoaccel.json`` says what the model is meant to be run with (``default_call``)."""
    parameters = inspect.signature(type(pipeline).__call__).parameters

    def default(key: str, fallback):
        parameter = parameters.get(key)
        value = parameter.default if parameter is not None else fallback
        return fallback if value is inspect.Parameter.empty or value is None else value

    steps, guidance = default("num_inference_steps", 50), default("guidance_scale", 1.0)
    if "guidance_scale" not in parameters:
        guidance = 1.0
    given = extra.get("default_call", {})
    if not isinstance(given, dict):
        raise TargetError(
            f"{extra_path}: default_call={given!r} must be a mapping of num_inference_steps, guidance_scale"
        )
    steps = given.get("num_inference_steps", steps)
    trained = pipeline.scheduler.config.get("num_train_timesteps")
    if "num_inference_steps" not in given and _is_int(trained) and _is_int(steps):
        steps = min(steps, trained)  # DDPMPipeline's 1000 steps on a model trained with fewer: all of them
    guidance = given.get("guidance_scale", guidance)
    if not _is_int(steps) or not 1 <= steps <= MAX_INFERENCE_STEPS:
        raise TargetError(
            f"{extra_path}: default_call.num_inference_steps={steps!r} must be an int in [1, {MAX_INFERENCE_STEPS}]"
        )
    if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not guidance >= 1.0:
        raise TargetError(f"{extra_path}: default_call.guidance_scale={guidance!r} must be a number >= 1")
    return DefaultCall(int(steps), float(guidance))


def class_conditions(pipeline, extra: dict, extra_path: Path) -> Conditions:
    """Class labels: a UNet2DModel's class embeddings (null class from ``autoaccel.json``), or a DiT's label
    table (its null class is the last row, as DiTPipeline uses it)."""
    denoiser = pipeline_denoiser(pipeline)
    config, keyword = denoiser.config, layout_of(denoiser).label_keyword
    if getattr(config, "num_embeds_ada_norm", None) and type(pipeline).__name__ == "DiTPipeline":
        table = int(config.num_embeds_ada_norm)
        null_class, num_classes = _read_classes({"null_class": table, **extra}, table + 1, extra_path)
        names = [str(label) for label in _dit_labels(pipeline, num_classes)]
        return Conditions(CLASS, num_classes, names, null_class=null_class, keyword=keyword)
    null_class, num_classes = _read_classes(extra, getattr(config, "num_class_embeds", None), extra_path)
    if not num_classes:
        return Conditions()
    names = [str(index) for index in range(num_classes)]
    return Conditions(CLASS, num_classes, names, null_class=null_class, keyword=keyword)


def _dit_labels(pipeline, count: int) -> list[str]:
    labels = getattr(pipeline, "labels", None) or {}
    by_id = {int(index): name for name, index in labels.items()} if labels else {}
    return [by_id.get(index, str(index)) for index in range(count)]


def prompt_conditions(pipeline, prompts: str | list[str] | None, extra_path: Path) -> Conditions:
    """The prompt set encoded once by the pipeline's own text encoder(s), with the empty negative prompt for
    guidance; the encoder is kept so latency can time encoding as a deployment does it."""
    texts = resolve_prompts(prompts, extra_path.parent if extra_path.name == "autoaccel.json" else None)
    device = pipeline_denoiser(pipeline).device
    encoder = PromptEncoder(pipeline, device)
    encoded = encoder(texts)
    return Conditions(
        PROMPT,
        len(texts),
        texts,
        embeds=encoded.embeds,
        null=encoded.null,
        fixed=encoded.fixed,
        encoder=encoder,
    )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_classes(extra: dict, num_class_embeds: int | None, path: Path) -> tuple[int | None, int | None]:
    """``autoaccel.json``'s null class and class count, checked against the unet's class embeddings."""
    null_class = extra.get("null_class")
    embeddings = f"its {num_class_embeds} class embeddings (0..{num_class_embeds - 1})" if num_class_embeds else ""
    if null_class is not None and (
        not _is_int(null_class) or num_class_embeds is None or not 0 <= null_class < num_class_embeds
    ):
        valid = f"an int among {embeddings}" if num_class_embeds else "absent: this unet has no class embedding"
        raise TargetError(f"{path}: null_class={null_class!r} is not a class of this unet; valid: {valid}, or null")
    conditional = (num_class_embeds - (1 if null_class is not None else 0)) if num_class_embeds else None
    num_classes = extra.get("num_classes", conditional)
    fits = _is_int(num_classes) and conditional is not None and 1 <= num_classes <= conditional
    if num_classes is not None and not fits:
        valid = f"an int in [1, {conditional}]" if conditional else "absent: this unet has no class embedding"
        raise TargetError(f"{path}: num_classes={num_classes!r} is not valid for this unet; valid: {valid}")
    return null_class, num_classes


def default_device(requested: str, key: str = "target.device") -> str:
    """``auto`` -> ``cuda`` when a GPU is there, else ``cpu``."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested not in ("cpu", "cuda") and not requested.startswith("cuda:"):
        raise TargetError(f"{key}={requested!r} is not valid; valid: auto, cpu, cuda, cuda:N")
    return requested


def check_device(requested: str, key: str = "target.device") -> str:
    """``default_device``, and a CUDA device only where this machine has it: otherwise the failure shows up
    later, while moving the weights, and reads like a broken model."""
    device = default_device(requested, key)
    if not device.startswith("cuda"):
        return device
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = device.partition(":")[2]
    if count and (not index or (index.isdigit() and int(index) < count)):
        return device
    valid = "auto, cpu" + (f", cuda, cuda:0..cuda:{count - 1}" if count else "")
    reason = f"this machine has {count} CUDA device(s)" if count else "CUDA is not available on this machine"
    raise TargetError(f"{key}={requested!r} cannot be used: {reason}; valid here: {valid}")
