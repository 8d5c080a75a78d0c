"""A run folder and the study it records, read without loading the model or writing anything: its
configuration, its study's name and its ledger (what ``plan`` reads, and what a search opens)."""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from autoaccel.errors import ConfigError
from autoaccel.search.ledger import LEDGER_FILE, Ledger, default_storage, shown_url
from autoaccel.space.choice import resolve_space_name
from autoaccel.targets.registry import target_kind

CONFIG_FILE = "config.yaml"


def study_name_for(config: DictConfig) -> str:
    """``<target>-<space>``; for a folder the folder's own name stands for the target, so two folders never
    share a study by accident (and one whose weights differ from the study's is refused)."""
    if config.study_name:
        return str(config.study_name)
    space = Path(resolve_space_name(config)).stem
    path = None if OmegaConf.is_missing(config.target, "path") else config.target.get("path")
    if path and target_kind(str(config.target.name)).takes_path:
        return f"{_safe_name(Path(str(path).rstrip('/')).name or 'model')}-{space}"
    return f"{config.target.name}-{space}"


def _safe_name(text: str) -> str:
    """A folder or hub name as a study name: letters, digits, ``.``, ``_`` and ``-`` only."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return cleaned or "model"


def open_recorded(storage: str, study_name: str) -> Ledger:
    """The study ``study_name`` in ``storage``, or one line saying the storage has none of that name."""
    try:
        return Ledger.open_existing(storage, study_name)
    except KeyError:
        raise ConfigError(f"storage {shown_url(storage)!r} has no study named {study_name!r}") from None


def recorded_study(
    run_dir: Path, storage: str | None = None, study_name: str | None = None
) -> tuple[DictConfig, Ledger]:
    """The configuration and the ledger of a run folder (its ``config.yaml`` names the study and where it is), or
    of ``study_name`` in a shared ``storage`` (its first worker stored the configuration there); nothing is loaded
    but the ledger, and nothing is written: what ``plan`` reads."""
    if storage is not None:
        ledger = open_recorded(storage, str(study_name))
        stored = ledger.study.user_attrs.get("config")
        if stored is None:
            raise ConfigError(f"study {study_name!r} has no stored configuration (it was not started by autoaccel)")
        return OmegaConf.create(stored), ledger
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} is not an autoaccel run folder: it has no {CONFIG_FILE}")
    config = OmegaConf.load(config_path)
    storage = str(config.storage) if config.get("storage") else default_storage(run_dir)
    if not config.get("storage") and not (run_dir / LEDGER_FILE).is_file():
        raise ConfigError(f"{run_dir} has no {LEDGER_FILE}: nothing was recorded there")
    return config, open_recorded(storage, study_name_for(config))
