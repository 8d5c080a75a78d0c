"""Cache method ``first_block``: diffusers' FirstBlockCache. Every call runs the first block; when its residual
changed by less than the threshold since the last full call, the other blocks' residual from then is reused."""

from __future__ import annotations

import torch

from autoaccel.errors import TechniqueError
from autoaccel.techniques.caching.hooks import Calibration, HookCache, Settings, ThresholdMethod, block_lists
from autoaccel.techniques.caching.method import CachingConfig, register_method


class FirstBlockSettings(Settings):
    def __init__(self, model: torch.nn.Module, config: CachingConfig, method: ThresholdMethod) -> None:
        from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

        self.config, self.method = config, method
        apply_first_block_cache(model, FirstBlockCacheConfig(threshold=0.0))
        self.head = block_lists(model)[0]._diffusers_hook.get_hook("fbc_leader_block_hook")

    def configure(self, calibration: Calibration, calls: int) -> None:
        self.head.threshold = self.method.threshold(self.config, calibration)


class FirstBlock(ThresholdMethod):
    name = "first_block"
    order = 2
    settings = ("strength", "threshold")

    def active(self, config: CachingConfig) -> bool:
        return True

    def check_blocks(self, model: torch.nn.Module, blocks: list[torch.nn.Module]) -> None:
        super().check_blocks(model, blocks)
        if getattr(blocks[-1], "context_pre_only", False):
            raise TechniqueError(
                "caching.method=first_block: diffusers' FirstBlockCache cannot reuse a last block that drops the "
                "text stream (context_pre_only, as in SD3); use mag, taylorseer or pab"
            )

    def calibrated_values(self, calibration: Calibration, retained: int) -> tuple[float, ...]:
        return calibration.first_block_changes[max(retained - 1, 0) :]

    def hook(self, model: torch.nn.Module, config: CachingConfig, cache: HookCache) -> Settings:
        return FirstBlockSettings(model, config, self)

    def bench_grid(self, knobs, depth_limit: int) -> list[dict]:
        return [self.settings_row(strength=float(strength)) for strength in knobs["strengths"]]

    def published_defaults(self, timesteps, depth_limit: int) -> tuple[str, dict]:
        return "FirstBlockCache default (threshold 0.05)", self.settings_row(threshold=0.05)


FIRST_BLOCK = register_method(FirstBlock())
