"""Composes the configuration from ``conf/`` and command-line overrides with Hydra's compose API.

Hydra is used for configuration only (the optuna sweeper plugin cannot drive optuna 5 or resume), so the
command line is ``python -m autoaccel search key=value ...`` and errors come back as ConfigError.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from autoaccel.config.schema import AutoaccelConfig
from autoaccel.errors import ConfigError
from autoaccel.util.resources import resource_dir

_SCHEMA_REGISTERED = False


def register_schema() -> None:
    """The schema every composition validates against, stored once per process in Hydra's ConfigStore."""
    global _SCHEMA_REGISTERED
    if _SCHEMA_REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="autoaccel_schema", node=AutoaccelConfig)
    _SCHEMA_REGISTERED = True


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The full configuration for ``overrides`` (``["budget.trials=10", "target=pipeline", ...]``)."""
    register_schema()
    return compose_from(resource_dir("conf"), "config", overrides)


def compose_from(config_dir: Path | str, config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """``config_name`` of ``config_dir`` composed with ``overrides`` and resolved; a bad key or value is one
    ConfigError line naming it (Hydra's message and its cause, joined)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            config = compose(config_name=config_name, overrides=list(overrides or []))
        OmegaConf.resolve(config)
    except (HydraException, OmegaConfBaseException) as error:
        lines = str(error).strip().splitlines()
        if error.__cause__ is not None:
            lines += str(error.__cause__).strip().splitlines()
        raise ConfigError(" ".join(line.strip() for line in lines if line.strip())) from None
    return config
