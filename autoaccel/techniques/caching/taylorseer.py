"""Cache method ``taylorseer``: diffusers' TaylorSeerCache. The attention and feed-forward outputs of every block
run in full every ``interval`` calls and are predicted between by a Taylor expansion of order ``taylor_order``
from the computed calls, after ``warmup`` and before ``tail`` full calls."""

from __future__ import annotations

import re

import torch

from autoaccel.techniques.caching.hooks import Calibration, HookCache, HookMethod, Settings
from autoaccel.techniques.caching.method import CachingConfig, register_method

TAYLOR_UNITS = re.compile(r"(?:[^.]*blocks)\.\d+\.(?:attn\d*|ff)")  # the attention and MLP outputs TaylorSeer predicts


class TaylorSeerSettings(Settings):
    def __init__(self, model: torch.nn.Module, config: CachingConfig) -> None:
        from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache

        self.config = config
        dtype = next(model.parameters()).dtype
        apply_taylorseer_cache(
            model,
            TaylorSeerCacheConfig(
                cache_interval=config.interval,
                # the first call always runs in full, as for every method: TaylorSeer predicts from computed calls
                disable_cache_before_step=max(config.warmup, 1),
                max_order=config.taylor_order,
                taylor_factors_dtype=dtype,
                cache_identifiers=[TAYLOR_UNITS.pattern],
            ),
        )
        self.hooks = [
            module._diffusers_hook.get_hook("taylorseer_cache")
            for name, module in model.named_modules()
            if TAYLOR_UNITS.fullmatch(name)
        ]

    def configure(self, calibration: Calibration, calls: int) -> None:
        for hook in self.hooks:
            hook.disable_cache_after_step = calls - self.config.tail if self.config.tail else None


class TaylorSeer(HookMethod):
    name = "taylorseer"
    order = 4
    settings = ("interval", "warmup", "tail", "taylor_order")

    def units(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return [module for name, module in model.named_modules() if TAYLOR_UNITS.fullmatch(name)]

    def hook(self, model: torch.nn.Module, config: CachingConfig, cache: HookCache) -> Settings:
        return TaylorSeerSettings(model, config)

    def bench_grid(self, knobs, depth_limit: int) -> list[dict]:
        return [
            self.settings_row(interval=int(interval), warmup=int(warmup), taylor_order=int(order))
            for interval in knobs["intervals"]
            for warmup in knobs["warmups"]
            for order in knobs["taylor_orders"]
        ]

    def published_defaults(self, timesteps, depth_limit: int) -> tuple[str, dict]:
        label = "TaylorSeer default (order 1, a full step every 5 after 3)"
        return label, self.settings_row(interval=5, warmup=3, taylor_order=1)


TAYLORSEER = register_method(TaylorSeer())
