"""``space=auto`` (the default): the bundled space that fits the model, chosen before anything is loaded.

Flow-matching models get ``flow_sampler`` (their solvers and time variable), models whose default call guides
strongly (text-to-image, DiT) get ``guided_sampler`` (a guidance range around theirs), others ``sampler``. The
choice reads only the folder's JSON files, so workers and report commands name the same study without loading
the model.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from autoaccel.targets.layouts import family_named

AUTO = "auto"
GUIDED_ABOVE = 2.0  # a default guidance scale above this is outside the plain sampler space's range


def resolve_space_name(config: DictConfig) -> str:
    """The space file ``config.space`` names, with ``auto`` replaced by the one that fits the target."""
    name = str(config.space)
    if name != AUTO:
        return name
    from autoaccel.targets.registry import target_kind

    kind = target_kind(str(config.target.name))
    if kind.summary is not None:
        family, guidance = kind.summary()
    else:
        path = None if OmegaConf.is_missing(config.target, "path") else config.target.path
        family, guidance = folder_summary(Path(str(path))) if path else ("ddpm", 1.0)
    schedule = family_named(family)
    return schedule.guided_space if guidance > GUIDED_ABOVE else schedule.default_space


def folder_summary(folder: Path) -> tuple[str, float]:
    """(schedule family, default guidance scale) of a pipeline folder, from its JSON files alone; a folder that
    cannot be read this way (a hub id, a broken folder) reads as a DDPM-family model without guidance, and
    loading it says what is wrong."""
    from autoaccel.targets.denoisers import schedule_family

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
