"""Loads a local diffusers pipeline folder (written by ``save_pretrained``) as a Target."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from autoaccel.errors import TargetError
from autoaccel.measure.features import GENERIC_EXTRACTOR
from autoaccel.targets.base import QualityReference, Target, hash_weights

SUPPORTED_PIPELINES = ("DDPMPipeline", "DDIMPipeline")
SUPPORTED_UNETS = ("UNet2DModel",)


def _read_json(path: Path) -> dict:
    """A JSON object (mapping): every file the loader reads is one, and ``.get`` on anything else would crash."""
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise TargetError(f"{path} is not readable JSON: {error}") from error
    if not isinstance(content, dict):
        shown = json.dumps(content)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise TargetError(f"{path} holds {shown}, not a JSON object of keys and values")
    return content


def load_pipeline_folder(path: str | Path, device: str = "cpu", name: str | None = None) -> Target:
    """A DDPMPipeline/DDIMPipeline folder around a UNet2DModel, unconditional or class-conditional.

    The folder's scheduler config is the starting point of every solver. An optional ``autoaccel.json`` may
    name a ``null_class`` (the label trained for classifier-free guidance); without it, guidance is off.
    """
    folder = Path(path).expanduser()
    supported = f"supported: a save_pretrained folder of {' or '.join(SUPPORTED_PIPELINES)} around a UNet2DModel"
    if not folder.is_dir():
        raise TargetError(f"target.path={str(path)!r} is not a folder; {supported}")
    index_path = folder / "model_index.json"
    if not index_path.exists():
        raise TargetError(
            f"target.path={str(path)!r} has no model_index.json, so it is not a diffusers pipeline; {supported}"
        )
    index = _read_json(index_path)
    pipeline_class = index.get("_class_name")
    if pipeline_class not in SUPPORTED_PIPELINES:
        raise TargetError(f"target.path={str(path)!r} holds a {pipeline_class}, which is not supported; {supported}")
    unet_entry = index.get("unet")
    if not isinstance(unet_entry, list) or not unet_entry or unet_entry[-1] not in SUPPORTED_UNETS:
        raise TargetError(f"target.path={str(path)!r}: its unet is {unet_entry}, not supported; {supported}")
    scheduler_config_path = folder / "scheduler" / "scheduler_config.json"
    if not scheduler_config_path.exists():
        raise TargetError(f"target.path={str(path)!r} has no scheduler/scheduler_config.json; {supported}")
    scheduler_config = _read_json(scheduler_config_path)
    extra_path = folder / "autoaccel.json"
    extra = _read_json(extra_path) if extra_path.exists() else {}
    extra_name = extra.get("name")
    if extra_name is not None and not (isinstance(extra_name, str) and extra_name.strip()):
        raise TargetError(f"{extra_path}: name={extra_name!r} is not valid; give a non-empty string, or leave it out")
    check_device(device)
    from diffusers import UNet2DModel

    try:
        unet = (
            UNet2DModel.from_pretrained(folder / "unet", low_cpu_mem_usage=False)
            .to(device)
            .eval()
            .requires_grad_(False)
        )
    except (OSError, ValueError, RuntimeError) as error:
        raise TargetError(f"target.path={str(path)!r}: its unet weights could not be loaded: {error}") from error
    null_class, num_classes = _read_classes(extra, unet.config.num_class_embeds, extra_path)
    return Target(
        name=name or extra.get("name") or folder.name,
        path=folder.resolve(),
        unet=unet,
        scheduler_config=dict(scheduler_config),
        scheduler_class=scheduler_config.get("_class_name", "DDPMScheduler"),
        content_hash=hash_weights(unet),
        quality=QualityReference(
            extractor=GENERIC_EXTRACTOR,
            kind="teacher-samples",
            description=(
                "FID/KID against the model's own full-step sampler on the same seeds, with a seeded random-CNN "
                "feature extractor (values not comparable with Inception FID)"
            ),
        ),
        num_classes=num_classes,
        null_class=null_class,
        metadata=extra,
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
