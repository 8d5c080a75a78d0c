"""A denoiser class is supported by one layout entry: registered, a class autoaccel has never seen is pruned,
quantized and cached exactly as the class whose structure it shares; unregistered, it is refused with the reason.
And no module outside ``autoaccel/targets`` knows a denoiser class or compares schedule-family names."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import DiTTransformer2DModel

from autoaccel.errors import TechniqueError
from autoaccel.targets.layouts import (
    DDPM,
    FLOW,
    LAYOUTS,
    SEQUENCE,
    BlockGroup,
    DenoiserLayout,
    layout_of,
    register_layout,
    schedule_family_of,
)
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.techniques.caching import CachingConfig, cache_methods
from autoaccel.techniques.pruning import PruningConfig, prune_unet
from autoaccel.techniques.quantization import QuantizationConfig, layer_groups, quantize_unet
from autoaccel.testing.pipelines import build_tiny_pipeline
from tests.test_caching import _cached_pipeline, _sample

PACKAGE = Path(__file__).resolve().parent.parent / "autoaccel"


class RowTransformer(DiTTransformer2DModel):
    """A denoiser class autoaccel has no layout for: DiT's computation under another class name."""


@pytest.fixture(scope="module")
def dit_and_row(tmp_path_factory):
    dit = load_pipeline_folder(build_tiny_pipeline("dit", tmp_path_factory.mktemp("layouts") / "dit"))
    row = RowTransformer.from_config(dit.denoiser.config)
    row.load_state_dict(dit.denoiser.state_dict())
    row.eval().requires_grad_(False)
    return dit, replace(dit, denoiser=row)


@pytest.fixture
def row_layout():
    layout = register_layout(DenoiserLayout("RowTransformer", (BlockGroup("transformer_blocks"),), SEQUENCE))
    yield layout
    del LAYOUTS["RowTransformer"]


def _same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    first_state, second_state = first.state_dict(), second.state_dict()
    return first_state.keys() == second_state.keys() and all(
        torch.equal(first_state[name], second_state[name]) for name in first_state
    )


def test_a_class_without_a_layout_is_refused_with_the_reason(dit_and_row):
    _, row = dit_and_row
    assert cache_methods(row.denoiser) == ("none",)
    with pytest.raises(TechniqueError, match=r"caching\.method=deep needs a diffusers UNet or transformer"):
        _cached_pipeline(row, CachingConfig("deep", depth=0, interval=2))
    with pytest.raises(TechniqueError, match=r"caching\.method=mag .* not a transformer"):
        _cached_pipeline(row, CachingConfig("mag"))
    with pytest.raises(TechniqueError, match=r"pruning\.blocks=0\.5 applies to transformer denoisers"):
        prune_unet(row.denoiser, PruningConfig(blocks=0.5), row)


def test_one_layout_entry_makes_a_new_class_prunable_quantizable_and_cacheable(dit_and_row, row_layout):
    dit, row = dit_and_row
    assert layout_of(row.denoiser) is row_layout
    assert cache_methods(row.denoiser) == cache_methods(dit.denoiser) == ("none", "deep", *_hook_methods())
    # quantization groups each transformer block whole, as for DiT, and quantizes to the same weights
    assert layer_groups(row.denoiser) == layer_groups(dit.denoiser)
    assert _same_weights(
        quantize_unet(row.denoiser, QuantizationConfig(6), row), quantize_unet(dit.denoiser, QuantizationConfig(6), dit)
    )
    # pruning takes heads and feed-forward channels from the layout's attention and feed-forward modules
    config = PruningConfig(ratio=0.3)
    pruned_row, pruned_dit = prune_unet(row.denoiser, config, row), prune_unet(dit.denoiser, config, dit)
    assert sum(p.numel() for p in pruned_row.parameters()) < sum(p.numel() for p in row.denoiser.parameters())
    assert _same_weights(pruned_row, pruned_dit)
    # caching: the static block cache and a calibrated hook cache give DiT's images
    for cache in (CachingConfig("deep", depth=0, interval=2), CachingConfig("mag", strength=0.9)):
        assert torch.equal(_sample(_cached_pipeline(row, cache), row), _sample(_cached_pipeline(dit, cache), dit))


def _hook_methods() -> tuple[str, ...]:
    from autoaccel.techniques.caching.hooks import HookMethod
    from autoaccel.techniques.caching.method import ordered_methods

    return tuple(method.name for method in ordered_methods() if isinstance(method, HookMethod))


def test_stages_come_from_the_layout_tags_or_thirds_of_a_sequence(dit_and_row, tmp_path):
    ddpm = load_pipeline_folder(build_tiny_pipeline("ddpm", tmp_path / "ddpm"))
    stages = layout_of(ddpm.denoiser).stages(ddpm.denoiser)
    assert {name.split(".")[0]: stage for name, stage in stages.items()} == {
        "down_blocks": "down",
        "mid_block": "mid",
        "up_blocks": "up",
    }
    dit, _ = dit_and_row
    assert layout_of(dit.denoiser).stages(dit.denoiser) == {
        "transformer_blocks.0": "down",
        "transformer_blocks.1": "up",
    }


def test_schedule_families_say_what_differs_between_time_variables():
    assert schedule_family_of({"_class_name": "FlowMatchEulerDiscreteScheduler"}) is FLOW
    assert schedule_family_of({"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True}) is FLOW
    assert schedule_family_of({"_class_name": "DDPMScheduler"}) is DDPM
    assert (DDPM.baseline_solver, FLOW.baseline_solver) == ("ddim", "flow_euler")
    assert DDPM.distillable and not FLOW.distillable
    assert FLOW.places_sigmas and not DDPM.places_sigmas


# outside targets/ (and the test kit, which builds a tiny model of every supported class)
FAMILY_COMPARISON = re.compile(r"""[!=]= *["'](?:flow|ddpm)["']|FLOW_FAMILY|DDPM_FAMILY""")
MODEL_KNOWLEDGE = re.compile(r"\.unet\b|\b(?:UNet2D\w*|\w*Transformer2DModel)\b|transformer_blocks")


@pytest.mark.parametrize(
    "pattern, allowed",
    [(FAMILY_COMPARISON, ("targets/layouts.py",)), (MODEL_KNOWLEDGE, ("targets/", "testing/"))],
    ids=["schedule-family-names", "denoiser-classes"],
)
def test_only_the_layouts_know_model_kinds(pattern, allowed):
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(allowed):
            continue
        found += [
            f"{relative}:{number}"
            for number, line in enumerate(path.read_text().splitlines(), 1)
            if pattern.search(line)
        ]
    assert not found
