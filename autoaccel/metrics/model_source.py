"""Where an optional figure's model comes from (a hub id, a local folder or file), what happens without network,
and whether the figure it gives means anything outside the run.

A hub id is handed to transformers unchanged, which downloads it on first use and reads its cache afterwards.
Without network (``HF_HUB_OFFLINE`` set, or the download fails) a model that is not in the cache cannot be had:
``FigureUnavailable`` says so in one line and the search goes on without that figure (``autoaccel.measure.reference``
decides the fallback). A local path that does not hold what it should is bad input (``ConfigError``), not a
missing network.

The rule the report states (``RULE``): a figure is **meaningful** when it comes from trained weights: a model the
user named (a hub model, a local folder or weights file, torch-fidelity's Inception), which autoaccel takes to hold
the released weights, or an embedded model's own trained classifier; pixel figures need no model. It is
**plumbing-only** when it comes from autoaccel's bundled random-CNN extractor or from a model whose config marks it as
a random-weight stand-in (``STAND_IN_MARK``: how autoaccel's test kit builds its tiny models): such figures show the
measurement runs and rank plans within one run, and mean nothing outside it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from autoaccel.errors import ConfigError

STAND_IN_MARK = "autoaccel_random_weights"  # a model config attribute: random weights, not a released model
OFFLINE_VALUES = {"1", "on", "yes", "true"}
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# exception class names (or parts of them) that mean a download could not happen
NETWORK_ERRORS = (
    "LocalEntryNotFoundError",
    "OfflineModeIsEnabled",
    "ConnectionError",
    "ConnectError",
    "Timeout",
    "URLError",
)

MEANINGFUL = "meaningful"
PLUMBING = "plumbing-only"
RULE = (
    "meaningful: figures from trained weights: a model the user named (a hub model, a local folder or weights file, "
    "torch-fidelity's Inception), taken to hold the released weights, or the embedded model's own trained classifier "
    "(meaningful for that model, not comparable with published Inception FIDs), and pixel figures; plumbing-only: "
    "figures from autoaccel's bundled random-CNN extractor or from a model whose config marks it as a random-weight "
    "stand-in, which show that the measurement runs and rank plans within this run, and mean nothing outside it"
)

Loaded = TypeVar("Loaded")


class FigureUnavailable(Exception):
    """A figure's model needs network this run does not have; the message is one line naming the option."""


@dataclass(frozen=True)
class FigureSource:
    """What gave a figure, and whether the figure means anything outside the run (``MEANINGFUL``/``PLUMBING``)."""

    figures: tuple[str, ...]
    source: str
    grade: str
    why: str = ""

    def describe(self) -> str:
        """``plumbing-only (random features): autoaccel-random-cnn-v1``: the grade, why, and the source."""
        why = f" ({self.why})" if self.why else ""
        return f"{self.grade}{why}: {self.source}"

    def line(self) -> str:
        return f"{', '.join(self.figures)}: {self.describe()}"


def hub_offline() -> bool:
    """Whether the user said there is no network (``HF_HUB_OFFLINE``), read now, not at import."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in OFFLINE_VALUES


def is_hub_id(value: str) -> bool:
    """``owner/name`` that is not a path on this machine: a model on the hub."""
    return bool(HUB_ID.match(value)) and not Path(value).expanduser().exists()


def needs_network(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a download that could not happen: offline, no connection, a timeout,
    or a file not in the cache when the hub could not be reached."""
    seen: BaseException | None = error
    while seen is not None:
        if any(name in type(seen).__name__ for name in NETWORK_ERRORS):
            return True
        if "couldn't connect to" in str(seen) or "offline mode" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def pretrained(option: str, value: str, load: Callable[..., Loaded], holds: str, example: str) -> Loaded:
    """``load(source, **options)`` for a local folder or a hub id (``option=value``, e.g. ``quality.clip_model``).

    A folder is loaded from disk; a hub id is handed to ``load`` unchanged (``local_files_only`` when
    ``HF_HUB_OFFLINE`` says there is no network, so only the cache is read). Raises ``FigureUnavailable`` when a hub
    id needs a download this run cannot make, ``ConfigError`` for a path or hub model that does not hold ``holds``."""
    value = str(value)
    folder = Path(value).expanduser()
    if folder.is_dir():
        try:
            return load(str(folder))
        except Exception as error:  # transformers raises many kinds; the user needs the path and the reason
            raise ConfigError(f"{option}={value} does not hold {holds}: {first_line(error)}") from None
    if not is_hub_id(value):
        raise ConfigError(
            f"{option}={value} is not a folder; give {holds} saved with save_pretrained, or a hub id (e.g. {example})"
        )
    offline = hub_offline()
    try:
        return load(value, **({"local_files_only": True} if offline else {}))
    except Exception as error:
        if offline or needs_network(error):
            said = " (HF_HUB_OFFLINE is set)" if offline else ""
            raise FigureUnavailable(
                f"{option}={value} needs network to download it{said}, or a local folder: {first_line(error)}"
            ) from None
        raise ConfigError(f"{option}={value} is not {holds} on the hub: {first_line(error)}") from None


def model_grade(figures: tuple[str, ...], option: str, value: str, config) -> FigureSource:
    """Where a transformers model came from and whether its figures are meaningful (module doc: the rule)."""
    where = f"the hub model {value}" if is_hub_id(value) else f"the local folder {value}"
    if getattr(config, STAND_IN_MARK, False):
        return FigureSource(figures, f"{where} ({option})", PLUMBING, "its config marks it as a random-weight stand-in")
    return FigureSource(figures, f"{where} ({option})", MEANINGFUL, "a model the user named")
