"""The ``decoder`` technique: a tiny decoder distilled from a latent model's VAE (deterministic, stored and reapplied
bit for bit without training, close to the VAE on latents it never saw), tiled and sliced decoding, the refusal on
pixel-space models, and a search with the decoder as a dimension through the CLI."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml

from autoaccel.cli.main import main
from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.pipeline.seeds import make_seed_batch, sample_in_chunks
from autoaccel.plan.apply import build_pipeline
from autoaccel.plan.steps import Plan
from autoaccel.space.spaces import parse_space
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.techniques import decoder as decoder_module
from autoaccel.techniques.base import get_technique, target_limits
from autoaccel.techniques.decoder import (
    DecoderConfig,
    build_tiny_decoder,
    held_out_error,
    tiny_decoder_config,
    train_tiny_decoder,
)
from autoaccel.testing.pipelines import build_tiny_pipeline
from autoaccel.util.artifacts import ArtifactStore, relative_path

TINY = {"kind": "tiny", "iterations": 4, "data_samples": 8, "batch_size": 4, "width": 8}


@pytest.fixture(scope="module")
def latent_target(tmp_path_factory):
    return load_pipeline_folder(build_tiny_pipeline("sd", tmp_path_factory.mktemp("decoder") / "sd"))


def plan_with(**decoder) -> Plan:
    """Three DDIM steps with the decoder configured as given."""
    steps = [
        (get_technique("solver"), get_technique("solver").config_from_params({"solver.name": "ddim"})),
        (get_technique("timesteps"), get_technique("timesteps").config_from_params({"timesteps.steps": 3})),
        (get_technique("decoder"), DecoderConfig(**decoder)),
    ]
    return Plan.of(steps)


def images(pipeline, target) -> torch.Tensor:
    return sample_in_chunks(pipeline, make_seed_batch(target.sample_shape, 4, 0, target.condition_count), 4)


def test_training_is_deterministic_for_its_seed(latent_target):
    config = DecoderConfig(**TINY)
    first, second = train_tiny_decoder(latent_target, config), train_tiny_decoder(latent_target, config)
    other = train_tiny_decoder(latent_target, DecoderConfig(**{**TINY, "seed": 1}))
    assert first.state_dict().keys() == second.state_dict().keys()
    assert all(torch.equal(first.state_dict()[name], tensor) for name, tensor in second.state_dict().items())
    assert any(not torch.equal(first.state_dict()[name], tensor) for name, tensor in other.state_dict().items())
    assert not any(name.startswith("encoder.") for name in first.state_dict())  # a decoder only
    with pytest.raises(TechniqueError, match="decoding only"):
        first.encode(torch.zeros(1, 3, 16, 16))


@pytest.mark.slow  # seconds of searching, training or scoring: kept out of the quick subset
def test_the_tiny_decoder_takes_what_the_vae_decode_takes_and_learns_its_images(latent_target):
    """Same scaling and shift in its config (one ``decode`` serves both), and after a short training its images
    are far closer to the VAE's on held-out latents than an untrained decoder's."""
    vae = latent_target.vae
    config = DecoderConfig(**{**TINY, "iterations": 150, "data_samples": 64, "batch_size": 16, "width": 16})
    trained = train_tiny_decoder(latent_target, config)
    assert trained.config.scaling_factor == pytest.approx(vae.config.scaling_factor)
    assert trained.config.latent_channels == vae.config.latent_channels
    untrained = build_tiny_decoder(tiny_decoder_config(vae, config), config.seed, vae).eval()
    assert held_out_error(latent_target, trained) < 0.2 * held_out_error(latent_target, untrained)


def test_the_stored_decoder_reapplies_bit_for_bit_without_training(latent_target, tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path / "artifacts")
    plan = plan_with(**TINY)
    trained = build_pipeline(latent_target, plan, store=store)
    assert type(trained.vae).__name__ == "AutoencoderTiny" and latent_target.vae is not trained.vae
    sha = trained.plan.artifacts["decoder"]
    measured = images(trained, latent_target)

    def no_training(*args, **kwargs):
        raise AssertionError("a stored decoder must not be trained again")

    monkeypatch.setattr(decoder_module, "train_tiny_decoder", no_training)
    monkeypatch.setattr(decoder_module, "kept_student", lambda key, train: (train(), 0.0))
    artifacts = {"decoder": (store.folder / relative_path(sha), sha)}
    restored = build_pipeline(latent_target, plan, artifacts)
    assert torch.equal(images(restored, latent_target), measured)
    with pytest.raises(AssertionError, match="trained again"):
        build_pipeline(latent_target, plan)  # the patch really stands in the training's way


def test_a_runtime_precision_runs_the_tiny_decoder_at_that_precision_too(latent_target):
    """runtime applies after the decoder and casts what the plan deploys: the tiny decoder the model carries
    decodes in bfloat16 too, not in float32 beside a bfloat16 denoiser."""
    runtime = get_technique("runtime")
    plan = Plan.of([*plan_with(**TINY), (runtime, runtime.config_from_params({"runtime.dtype": "bfloat16"}))])
    pipeline = build_pipeline(latent_target, plan)
    assert type(pipeline.vae).__name__ == "AutoencoderTiny"
    assert {parameter.dtype for parameter in pipeline.vae.parameters()} == {torch.bfloat16}
    assert torch.isfinite(images(pipeline, latent_target).float()).all()


def test_pixel_space_models_refuse_every_decoder_change_with_the_reason(tiny_pipeline_dir):
    pixel = load_pipeline_folder(tiny_pipeline_dir)
    for settings in ({"kind": "tiny"}, {"tiling": True}, {"slicing": True}):
        with pytest.raises(TechniqueError, match="needs a latent model: .* has no VAE"):
            build_pipeline(pixel, plan_with(**settings))
    images(build_pipeline(pixel, plan_with()), pixel)  # its own (identity) decode still runs
    # a space names the tiny decoder: narrowed to the model's own decode there, refused where fixed
    space = parse_space(
        {"techniques": ["decoder"], "dimensions": {"decoder.kind": {"type": "categorical", "choices": ["vae", "tiny"]}}}
    )
    assert space.for_target(set(), **target_limits(pixel)).dimension("decoder.kind").choices == ("vae",)
    fixed = parse_space({"techniques": ["decoder"], "fixed": {"decoder.kind": "tiny"}, "dimensions": {}})
    with pytest.raises(ConfigError, match="decoder.kind='tiny' is not one this target takes"):
        fixed.for_target(set(), **target_limits(pixel))


def test_tiled_and_sliced_decoding_apply_to_a_copy_and_keep_the_images(latent_target):
    plain = images(build_pipeline(latent_target, plan_with()), latent_target)
    for settings in ({"tiling": True}, {"slicing": True}, {"tiling": True, "slicing": True}):
        pipeline = build_pipeline(latent_target, plan_with(**settings))
        assert pipeline.vae is not latent_target.vae
        assert pipeline.vae.use_tiling == settings.get("tiling", False)
        assert pipeline.vae.use_slicing == settings.get("slicing", False)
        # 16-pixel images fit in one tile: tiling decodes them whole; slicing decodes one image at a time
        assert torch.allclose(images(pipeline, latent_target), plain, atol=1e-5)
    assert not latent_target.vae.use_tiling and not latent_target.vae.use_slicing  # the model's own VAE untouched

    sliced = build_pipeline(latent_target, plan_with(**TINY, slicing=True))
    assert sliced.vae.use_slicing and images(sliced, latent_target).shape == plain.shape
    with pytest.raises(TechniqueError, match="AutoencoderTiny tiles 3-channel images upsampled by 2\\*\\*out_channels"):
        build_pipeline(latent_target, plan_with(**TINY, tiling=True))


def test_bad_settings_name_the_value_and_what_is_valid():
    with pytest.raises(ConfigError, match=r"decoder.kind='small' is not valid; valid: \['vae', 'tiny'\]"):
        DecoderConfig(kind="small")
    with pytest.raises(ConfigError, match="decoder.iterations=-1 is not valid"):
        DecoderConfig(iterations=-1)
    with pytest.raises(ConfigError, match="decoder.tiling='yes' is not valid"):
        DecoderConfig(tiling="yes")


def test_the_cost_key_and_label_follow_the_decoder():
    technique = get_technique("decoder")
    assert technique.cost_settings(DecoderConfig()) == {}
    assert technique.cost_settings(DecoderConfig(kind="tiny")) == {"kind": "tiny", "width": 16, "blocks": 1}
    assert technique.cost_settings(DecoderConfig(kind="tiny", seed=3, iterations=5)) == technique.cost_settings(
        DecoderConfig(kind="tiny")
    )
    assert technique.cost_settings(DecoderConfig(tiling=True)) == {"kind": "vae", "tiling": True}
    assert technique.label({"decoder.kind": "tiny", "decoder.slicing": True}) == "tiny decoder, sliced decode"
    assert technique.label({"decoder.kind": "vae"}) is None


@pytest.mark.slow
@pytest.mark.integration
def test_a_search_with_the_decoder_as_a_dimension(tmp_path, shared_cache_dir):
    folder = build_tiny_pipeline("sd", tmp_path / "sd")
    space = tmp_path / "decoded.yaml"
    space.write_text(
        "techniques: [solver, timesteps, decoder]\n"
        "fixed: {solver.name: ddim, timesteps.family: uniform_trailing, decoder.iterations: 5,"
        " decoder.data_samples: 8, decoder.batch_size: 4, decoder.width: 8}\n"
        "dimensions:\n"
        "  timesteps.steps: {type: int, low: 3, high: 4}\n"
        "  decoder.kind: {type: categorical, choices: [vae, tiny]}\n"
    )
    overrides = [
        "target=pipeline",
        f"target.path={folder}",
        "target.device=cpu",
        f"report.dir={tmp_path / 'reports'}",
        f"cache_dir={shared_cache_dir}",
        f"space={space}",
        "study_name=decoded",
        "quality.samples=16",
        "quality.chunk_size=16",
        "quality.fid_std_rounds=4",
        "cost.batch_size=4",
        "cost.warmup=0",
        "cost.repeats=1",
        "budget.warm_start_steps=[]",
        "budget.trials=6",
        "optimizer=random",
        "report.grid_images=4",
        "quiet=true",
    ]
    assert main(["search", *overrides]) == 0
    run = tmp_path / "reports" / "decoded"
    trials = pd.read_csv(run / "trials.csv")
    assert (trials["state"] == "COMPLETE").all()
    tiny = trials[trials["param.decoder.kind"] == "tiny"]
    assert not tiny.empty and (trials["param.decoder.kind"] == "vae").any()
    assert tiny["train_minutes"].notna().all()  # the decoder's training is the search's cost
    recipes = [yaml.safe_load(path.read_text()) for path in sorted((run / "recipes").glob("*.yaml"))]
    for recipe in recipes:
        if recipe["techniques"]["decoder"]["config"]["kind"] == "tiny":
            assert "artifact" in recipe["techniques"]["decoder"]
    out = tmp_path / "images"
    assert main(["apply", str(sorted((run / "recipes").glob("*.yaml"))[0]), "--out", str(out), "--n", "2"]) == 0


@pytest.mark.slow  # seconds of searching, training or scoring: kept out of the quick subset
def test_a_tiny_decoder_is_sized_for_sanas_deep_compression_autoencoder(tmp_path):
    """AutoencoderDC names its image channels ``in_channels`` and its levels ``decoder_block_out_channels``: the tiny
    decoder takes its 32-channel latents at its scale and learns its images."""
    target = load_pipeline_folder(build_tiny_pipeline("sana", tmp_path / "sana"))
    vae = target.vae
    config = DecoderConfig(**{**TINY, "iterations": 30})
    untrained = build_tiny_decoder(tiny_decoder_config(vae, config), config.seed, vae).eval()
    latents = torch.randn(2, *target.sample_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert untrained.decode(latents).sample.shape == vae.decode(latents).sample.shape
    trained = train_tiny_decoder(target, config)
    assert trained.config.latent_channels == vae.config.latent_channels == target.sample_shape[0]
    assert held_out_error(target, trained) < held_out_error(target, untrained)
