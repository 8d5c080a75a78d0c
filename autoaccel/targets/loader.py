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
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise TargetError(f"{path} is not readable JSON: {error}") from error


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
    if not isinstance(unet_entry, list) or unet_entry[-1] not in SUPPORTED_UNETS:
        raise TargetError(f"target.path={str(path)!r}: its unet is {unet_entry}, not supported; {supported}")
    scheduler_config_path = folder / "scheduler" / "scheduler_config.json"
    if not scheduler_config_path.exists():
        raise TargetError(f"target.path={str(path)!r} has no scheduler/scheduler_config.json; {supported}")
    scheduler_config = _read_json(scheduler_config_path)
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
    extra = _read_json(folder / "autoaccel.json") if (folder / "autoaccel.json").exists() else {}
    num_class_embeds = unet.config.num_class_embeds
    null_class = extra.get("null_class")
    if null_class is not None and (num_class_embeds is None or not 0 <= null_class < num_class_embeds):
        raise TargetError(f"{folder / 'autoaccel.json'}: null_class={null_class} is not a class of this unet")
    num_classes = extra.get(
        "num_classes", (num_class_embeds - (1 if null_class is not None else 0)) if num_class_embeds else None
    )
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


def default_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is there, else ``cpu``."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested not in ("cpu", "cuda") and not requested.startswith("cuda:"):
        raise TargetError(f"target.device={requested!r} is not valid; valid: auto, cpu, cuda, cuda:N")
    return requested
