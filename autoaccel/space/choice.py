"""``space=auto`` (the default): the bundled space that fits the model, chosen before anything is loaded.

Flow-matching models get ``flow_sampler`` (their solvers and time variable), models whose default call guides
strongly (text-to-image, DiT) get ``guided_sampler`` (a guidance range around theirs), others ``sampler``. The
choice reads only the folder's JSON files, so workers and report commands name the same study without loading
the model.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from autoaccel.targets.layouts import family_named
from autoaccel.targets.registry import target_kind
from autoaccel.targets.summary import folder_summary

AUTO = "auto"
GUIDED_ABOVE = 2.0  # a default guidance scale above this is outside the plain sampler space's range


def resolve_space_name(config: DictConfig) -> str:
    """The space file ``config.space`` names, with ``auto`` replaced by the one that fits the target."""
    name = str(config.space)
    if name != AUTO:
        return name

    kind = target_kind(str(config.target.name))
    if kind.summary is not None:
        family, guidance = kind.summary()
    else:
        path = None if OmegaConf.is_missing(config.target, "path") else config.target.path
        family, guidance = folder_summary(Path(str(path))) if path else ("ddpm", 1.0)
    schedule = family_named(family)
    return schedule.guided_space if guidance > GUIDED_ABOVE else schedule.default_space
