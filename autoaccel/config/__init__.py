"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore and the compose entry point."""

from autoaccel.config.compose import compose_config
from autoaccel.config.schema import AutoaccelConfig

__all__ = ["AutoaccelConfig", "compose_config"]
