"""The kinds of target, in one place: ``target=<kind>`` in a search, a recipe's base model in ``apply``.

A kind is embedded (autoaccel ships or trains it: found by name) or a folder (a user's ``save_pretrained``
output, or a hub id where the user has network). Adding a kind is one module that calls ``register_target_kind``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from autoaccel.errors import ConfigError, TargetError
from autoaccel.targets.base import Target
from autoaccel.targets.digits.weights import WEIGHTS_DIR
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.targets.summary import folder_summary


@dataclass(frozen=True)
class TargetKind:
    name: str
    load: Callable[..., Target]  # (path or None, device, **target options) -> Target
    takes_path: bool  # a folder kind reads target.path; an embedded one is found by its name
    description: str
    # embedded kinds: () -> (schedule family, default guidance scale), for space=auto without loading the model
    summary: Callable[[], tuple[str, float]] | None = None
    takes_prompts: bool = False  # load takes prompts= (target.prompts: a prompt file or a bundled set)
    # load takes dtype= and offload= (target.dtype, target.offload): the weights are read in that precision and
    # placed as offload says; other kinds are loaded in float32 and cast
    takes_placement: bool = False


_KINDS: dict[str, TargetKind] = {}


def register_target_kind(kind: TargetKind) -> TargetKind:
    if kind.name in _KINDS:
        raise ValueError(f"a target kind named {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def target_kind(name: str) -> TargetKind:
    """The kind ``target=<name>`` names, or a one-line error listing the valid ones."""
    _load_builtin_kinds()
    if name not in _KINDS:
        valid = ", ".join(f"{kind.name} ({kind.description})" for kind in _KINDS.values())
        raise ConfigError(f"target={name!r} is not valid; valid: {valid}")
    return _KINDS[name]


def registered_target_kinds() -> list[str]:
    """The names ``target=`` takes, built-in kinds first."""
    _load_builtin_kinds()
    return list(_KINDS)


def load_target(
    name: str,
    path: str | None,
    device: str,
    prompts: str | None = None,
    dtype: str | None = None,
    offload: str = "none",
) -> Target:
    """The target ``target=<name>`` names; ``prompts`` (target.prompts) for the kinds that take prompts, ``dtype``
    and ``offload`` (target.dtype, target.offload) for those that read their weights in a precision and place them
    (a folder); an embedded model is small, loads in float32 and is not offloaded."""
    kind = target_kind(name)
    if kind.takes_path and not path:
        raise TargetError(
            f"target={name} needs target.path=DIR, a folder written by a diffusers save_pretrained (or a hub id)"
        )
    options = {}
    if prompts:
        if not kind.takes_prompts:
            takers = ", ".join(f"target={other.name}" for other in _KINDS.values() if other.takes_prompts)
            raise ConfigError(f"target.prompts={prompts}: target={name} takes no prompts; valid for {takers}")
        options["prompts"] = prompts
    if kind.takes_placement:
        options.update(dtype=dtype, offload=offload)
    elif offload != "none":
        raise ConfigError(f"target.offload={offload}: target={name} is small and is never offloaded; valid: none")
    return kind.load(path, device, **options)


def embedded_kind(name: str | None) -> TargetKind | None:
    """The embedded kind a recipe's base model names, if any (recipes of folder models name their path)."""
    _load_builtin_kinds()
    kind = _KINDS.get(str(name))
    return kind if kind is not None and not kind.takes_path else None


# the embedded models' module, imported by name when one is loaded: its feature extractor imports torchvision and
# torch-fidelity (seconds), which ``plan``, a summary and a folder target never need
DIGITS_MODULE = "autoaccel.targets.digits.model"


def _digits_loader(name: str) -> Callable[..., Target]:
    return getattr(importlib.import_module(DIGITS_MODULE), name)


def _load_digits(path: str | None, device: str) -> Target:
    return _digits_loader("load_digits_target")(device)


def _load_digits_t2i(path: str | None, device: str, prompts: str | None = None) -> Target:
    return _digits_loader("load_digits_t2i_target")(device, prompts)


def _load_digits_dit(path: str | None, device: str) -> Target:
    return _digits_loader("load_digits_dit_target")(device)


def _load_folder(
    path: str | None, device: str, prompts: str | None = None, dtype: str | None = None, offload: str = "none"
) -> Target:
    return load_pipeline_folder(str(path), device=device, prompts=prompts, dtype=dtype, offload=offload)


def _embedded_guidance(folder: str) -> float:
    return folder_summary(WEIGHTS_DIR / folder)[1]


def _load_builtin_kinds() -> None:
    if _KINDS:
        return
    register_target_kind(
        TargetKind("digits", _load_digits, False, "the embedded class-conditional digits DDPM", lambda: ("ddpm", 1.0))
    )
    register_target_kind(
        TargetKind(
            "digits_t2i",
            _load_digits_t2i,
            False,
            "the embedded latent text-to-image digits model (Stable Diffusion layout)",
            lambda: ("ddpm", _embedded_guidance("t2i")),
            takes_prompts=True,
        )
    )
    register_target_kind(
        TargetKind(
            "digits_dit",
            _load_digits_dit,
            False,
            "the embedded class-conditional digits diffusion transformer (DiT)",
            lambda: ("ddpm", _embedded_guidance("dit")),
        )
    )
    register_target_kind(
        TargetKind(
            "pipeline",
            _load_folder,
            True,
            "a diffusers pipeline folder at target.path",
            takes_prompts=True,
            takes_placement=True,
        )
    )
