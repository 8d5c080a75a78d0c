"""Cache method ``pab``: diffusers' Pyramid Attention Broadcast. Attention outputs are reused for ``interval - 1``
calls after each computed one, in the window between ``warmup`` and ``tail`` full calls."""

from __future__ import annotations

import torch

from autoaccel.techniques.caching.hooks import HookCache, HookMethod, Settings
from autoaccel.techniques.caching.method import CachingConfig, register_method


class PyramidAttentionBroadcast(HookMethod):
    name = "pab"
    order = 5
    settings = ("interval", "warmup", "tail")

    def units(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        from diffusers.hooks._common import _ATTENTION_CLASSES

        return [module for module in model.modules() if isinstance(module, _ATTENTION_CLASSES)]

    def hook(self, model: torch.nn.Module, config: CachingConfig, cache: HookCache) -> Settings:
        from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

        # the window is the calls between warm-up and tail: the callback says whether this call is in it
        apply_pyramid_attention_broadcast(
            model,
            PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=config.interval,
                cross_attention_block_skip_range=config.interval,
                spatial_attention_timestep_skip_range=(0, 2),
                cross_attention_timestep_skip_range=(0, 2),
                current_timestep_callback=lambda: 1 if cache.in_window() else 3,
            ),
        )
        return Settings()

    def bench_grid(self, knobs, depth_limit: int) -> list[dict]:
        return [
            self.settings_row(interval=int(interval), warmup=int(warmup))
            for interval in knobs["intervals"]
            for warmup in knobs["warmups"]
        ]

    def published_defaults(self, timesteps, depth_limit: int) -> tuple[str, dict]:
        warmup = sum(1 for step in timesteps if step >= 800)
        tail = sum(1 for step in timesteps if step <= 100)
        label = "PAB default (attention reused every 2nd call at timesteps in (100, 800))"
        return label, self.settings_row(interval=2, warmup=warmup, tail=tail)


PAB = register_method(PyramidAttentionBroadcast())
