"""What a pipeline folder is, read from its JSON files alone (no weights loaded): its schedule family and the
guidance scale of its default call. ``space=auto`` chooses a space with it before anything is loaded, so workers
and report commands name the same study without loading the model."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from autoaccel.targets.denoisers import schedule_family


def folder_summary(folder: Path) -> tuple[str, float]:
    """(schedule family, default guidance scale) of a pipeline folder, from its JSON files alone; a folder that
    cannot be read this way (a hub id, a broken folder) reads as a DDPM-family model without guidance, and
    loading it says what is wrong."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        extra_path = folder / "autoaccel.json"
        extra = json.loads(extra_path.read_text()) if extra_path.exists() else {}
    except (OSError, ValueError):
        return "ddpm", 1.0
    if not isinstance(index, dict) or not isinstance(scheduler, dict) or not isinstance(extra, dict):
        return "ddpm", 1.0
    guidance = (
        (extra.get("default_call") or {}).get("guidance_scale") if isinstance(extra.get("default_call"), dict) else None
    )
    if guidance is None:
        guidance = _signature_guidance(str(index.get("_class_name")))
    number = isinstance(guidance, int | float) and not isinstance(guidance, bool)
    return schedule_family(scheduler), float(guidance) if number else 1.0


def _signature_guidance(pipeline_class: str) -> float:
    import diffusers

    cls = getattr(diffusers, pipeline_class, None)
    if cls is None:
        return 1.0
    parameter = inspect.signature(cls.__call__).parameters.get("guidance_scale")
    default = parameter.default if parameter is not None else 1.0
    return float(default) if isinstance(default, int | float) else 1.0
