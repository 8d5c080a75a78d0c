"""The contract every target kind keeps, as a check an extension can run on its own kind once it is registered
(``autoaccel.targets.registry.register_target_kind``): what a search relies on of any loaded ``Target``.

``check_target_kind(kind, path, tmp_path)`` loads the kind twice (``path`` for a folder kind) and checks that the
weights' hash is stable and covers the denoiser, the denoiser is frozen for inference, the shapes and conditions
are consistent, a short plan samples finite images that repeat bit for bit for a seed, the quality reference
names a registered feature extractor, and an embedded kind's ``summary`` (what ``space=auto`` reads without
loading) agrees with the loaded model."""

from __future__ import annotations

from pathlib import Path

import torch

from autoaccel.errors import TargetError
from autoaccel.metrics.features import EXTRACTORS
from autoaccel.pipeline.sampling import sampler_pipeline
from autoaccel.targets.base import Target
from autoaccel.targets.loader import modules_hash
from autoaccel.targets.registry import TargetKind, load_target, target_kind
from autoaccel.techniques.base import unchanged_model_params
from autoaccel.testing.technique_contract import SAMPLING_STEPS, configured, images


def check_loaded_target(target: Target, tmp_path: Path) -> None:
    """What a search relies on of one loaded target."""
    # the hash a recipe is checked against covers every module that shapes the images
    assert target.content_hash == modules_hash(target.denoiser, target.modules) and len(target.content_hash) == 64
    assert not target.denoiser.training
    assert not any(parameter.requires_grad for parameter in target.denoiser.parameters())
    assert len(target.sample_shape) == 3 and all(int(size) > 0 for size in target.sample_shape)
    assert target.num_train_timesteps > 0
    if target.num_classes is not None:
        assert target.num_classes > 0
        assert target.null_class is None or target.null_class >= 0
    assert target.quality.extractor in EXTRACTORS, f"unregistered feature extractor {target.quality.extractor!r}"
    if target.real_images is not None:
        assert target.real_images.dtype == torch.uint8 and target.real_images.shape[1:] != ()
    pipeline = sampler_pipeline(target)
    assert pipeline.denoiser is target.denoiser  # a plan starts from the target's own model
    params = {**unchanged_model_params(), "timesteps.steps": SAMPLING_STEPS}
    first, _ = configured(target, params, tmp_path)
    again, _ = configured(target, params, tmp_path)
    sampled = images(first, target)
    assert torch.isfinite(sampled).all() and sampled.shape[0] > 0
    assert torch.equal(sampled, images(again, target))


def check_target_kind(kind: TargetKind, path: str | Path | None, tmp_path: Path, device: str = "cpu") -> None:
    """The whole contract for the registered ``kind`` (``path``: the folder a folder kind loads; None otherwise)."""
    assert target_kind(kind.name).takes_path == kind.takes_path  # registered (an unknown name is a ConfigError)
    if kind.takes_path:
        assert path is not None, f"target kind {kind.name!r} reads a folder: give its path"
        try:
            load_target(kind.name, None, device)
        except TargetError as error:
            assert "target.path" in str(error) and "\n" not in str(error)
        else:
            raise AssertionError(f"target={kind.name} without target.path must be refused")
    first = kind.load(str(path) if path else None, device)
    second = kind.load(str(path) if path else None, device)
    assert first.denoiser is not second.denoiser and first.content_hash == second.content_hash
    if kind.summary is not None:
        family, guidance = kind.summary()
        assert family == first.schedule_family, (kind.name, family, first.schedule_family)
        assert guidance == first.reference_call.guidance_scale, (kind.name, guidance)
    check_loaded_target(first, Path(tmp_path))
