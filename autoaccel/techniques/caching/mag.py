"""Cache method ``mag``: diffusers' MagCache. A call reuses the blocks' residual while the error it adds (from the
calibrated magnitude ratios of the residual between calls) stays under the threshold, at most ``interval - 1``
calls in a row, after ``warmup`` calls that never cache."""

from __future__ import annotations

import torch

from autoaccel.techniques.caching.hooks import Calibration, HookCache, Settings, ThresholdMethod
from autoaccel.techniques.caching.method import CachingConfig, register_method


class MagSettings(Settings):
    def __init__(self, model: torch.nn.Module, config: CachingConfig, method: ThresholdMethod) -> None:
        from diffusers.hooks import MagCacheConfig, apply_mag_cache

        self.config, self.method = config, method
        self.library = MagCacheConfig(mag_ratios=[1.0], num_inference_steps=1)
        apply_mag_cache(model, self.library)

    def configure(self, calibration: Calibration, calls: int) -> None:
        config, library = self.config, self.library
        library.num_inference_steps = calls
        library.mag_ratios = torch.tensor(calibration.magnitude_ratios)
        library.max_skip_steps = config.interval - 1
        library.retention_ratio = config.warmup / calls  # int(ratio * calls + 0.5) calls never cache
        library.threshold = self.method.threshold(config, calibration)


class Mag(ThresholdMethod):
    name = "mag"
    order = 3
    settings = ("strength", "threshold", "interval", "warmup")

    def active(self, config: CachingConfig) -> bool:
        return True

    def retained(self, config: CachingConfig) -> int:
        return config.warmup  # MagCache's warm-up calls never cache

    def calibrated_values(self, calibration: Calibration, retained: int) -> tuple[float, ...]:
        return tuple(abs(1.0 - ratio) for ratio in calibration.magnitude_ratios[max(retained, 1) :])  # one call's error

    def hook(self, model: torch.nn.Module, config: CachingConfig, cache: HookCache) -> Settings:
        return MagSettings(model, config, self)

    def bench_grid(self, knobs, depth_limit: int) -> list[dict]:
        return [
            self.settings_row(strength=float(strength), interval=int(interval))
            for strength in knobs["strengths"]
            for interval in knobs["intervals"]
        ]

    def published_defaults(self, timesteps, depth_limit: int) -> tuple[str, dict]:
        warmup = int(0.2 * len(timesteps) + 0.5)
        label = "MagCache default (threshold 0.06, at most 3 cached in a row, first 20% full)"
        return label, self.settings_row(threshold=0.06, interval=4, warmup=warmup)


MAG = register_method(Mag())
