"""Every supported pipeline class, as a user points autoaccel at its folder: it loads, searches end to end on
CPU, reports, and its best recipe applies to the same pipeline loaded by plain diffusers and gives the images the
search scored."""

from __future__ import annotations

import json

import pytest
import torch

from autoaccel.pipeline.sampling import sampler_pipeline
from autoaccel.testing.pipelines import build_tiny_pipeline

# (kind, pipeline class, conditioning, schedule family)
SUPPORTED = [
    ("ddim", "DDIMPipeline", "none", "ddpm"),
    ("dit", "DiTPipeline", "class", "ddpm"),
    ("sd", "StableDiffusionPipeline", "prompt", "ddpm"),
    ("pixart_alpha", "PixArtAlphaPipeline", "prompt", "ddpm"),
    ("pixart_sigma", "PixArtSigmaPipeline", "prompt", "ddpm"),
    ("sd3", "StableDiffusion3Pipeline", "prompt", "flow"),
    ("sdxl", "StableDiffusionXLPipeline", "prompt", "ddpm"),
    ("flux", "FluxPipeline", "prompt", "flow"),
    ("flux_schnell", "FluxPipeline", "prompt", "flow"),
    ("sana", "SanaPipeline", "prompt", "flow"),
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {kind: build_tiny_pipeline(kind, root / kind) for kind, *_ in SUPPORTED}


@pytest.mark.parametrize(("kind", "pipeline_class", "conditioning", "family"), SUPPORTED)
def test_each_pipeline_class_loads_with_its_own_description(folders, kind, pipeline_class, conditioning, family):
    from autoaccel.targets.loader import load_pipeline_folder

    target = load_pipeline_folder(folders[kind])
    assert target.pipeline_class == pipeline_class
    assert target.conditions.kind == conditioning
    assert target.schedule_family == family
    assert (target.vae is None) == (kind == "ddim")
    # the default call is what the pipeline's __call__ runs by default (or its trained steps, if fewer)
    assert target.reference_call.steps >= 1
    if conditioning == "prompt" and kind != "flux_schnell":  # schnell is guidance-distilled: it takes no scale
        assert target.conditions.guidable and target.reference_call.guidance_scale > 1.0
    if conditioning == "prompt":
        assert target.conditions.count == len(target.conditions.names) > 1


def _search_overrides(folder, tmp_path, cache_dir) -> list[str]:
    return [
        "target=pipeline",
        f"target.path={folder}",
        "target.device=cpu",
        f"report.dir={tmp_path / 'reports'}",
        f"cache_dir={cache_dir}",
        "quality.samples=4",
        "quality.chunk_size=4",
        "quality.ode_steps=12",
        "cost.batch_size=2",
        "cost.warmup=0",
        "cost.repeats=1",
        "budget.trials=3",
        "budget.warm_start_steps=[3]",
        "report.grid_images=4",
        "quiet=true",
    ]


@pytest.mark.slow  # a whole search per class: tens of seconds each on 2 cores
@pytest.mark.integration
@pytest.mark.parametrize(("kind", "pipeline_class", "conditioning", "family"), SUPPORTED)
def test_each_pipeline_class_is_searched_and_its_recipe_reproduces_with_plain_diffusers(
    folders, tmp_path, kind, pipeline_class, conditioning, family
):
    import diffusers

    import autoaccel
    from autoaccel.cli.main import main
    from autoaccel.pipeline.seeds import sample_in_chunks
    from autoaccel.plan.candidate import Candidate
    from autoaccel.search.run import open_run

    folder = folders[kind]
    assert main(["search", *_search_overrides(folder, tmp_path, tmp_path / "cache")]) == 0
    runs = list((tmp_path / "reports").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith(f"{kind}-")  # the folder's name names the study
    context = open_run(runs[0])
    trials = context.ledger.trials_frame()
    complete = trials[trials["state"] == "COMPLETE"]
    assert len(complete) >= 2, trials[["state", "failure"]].to_string()
    assert (complete["latency_ms"] > 0).all() and (complete["denoise_ms"] > 0).all()
    if family == "flow":
        assert set(complete["param.solver.name"]) <= {"flow_euler", "flow_heun", "unipc", "dpmsolver++"}
    recipes = sorted((runs[0] / "recipes").glob("trial-*.yaml"))
    assert recipes and (runs[0] / "index.html").exists()
    reference = json.loads((runs[0] / "reference.json").read_text())
    assert reference["reference"].startswith("default call")
    # without real data there is no floor (a plan identical to the reference call scores 0): paired intervals instead
    assert reference["fid_floor"] is None and "no floor" in reference["fid_floor_note"]
    assert "paired bootstrap rounds over the 4 seeds" in (runs[0] / "index.html").read_text()
    # the tiny folder says its weights are random: the report says every figure is plumbing only
    assert "random weights" in reference["quality_figures"]["model"]
    assert "<strong>Plumbing only:</strong>" in (runs[0] / "index.html").read_text()

    # the recipe on the pipeline as plain diffusers loads it, with nothing of autoaccel's loading code
    plain = getattr(diffusers, pipeline_class).from_pretrained(folder)
    fast = autoaccel.apply_recipe(plain, recipes[0])
    trial = int(recipes[0].stem.split("-")[1])
    seeds = context.judge.seeds
    images = sample_in_chunks(fast, seeds, context.judge.chunk_size)
    assert images.shape[0] == 4 and torch.isfinite(images).all()
    candidate = Candidate.from_params(context.ledger.trial(trial).user_attrs["candidate"])
    scored = context.evaluator.configured_pipeline(candidate)
    again = sample_in_chunks(scored, seeds, context.judge.chunk_size)
    torch.testing.assert_close(images, again, atol=1e-5, rtol=0)


def test_a_space_for_the_other_schedule_family_is_one_line_naming_what_to_use(folders, tmp_path, capsys):
    from autoaccel.cli.main import main

    overrides = _search_overrides(folders["sd3"], tmp_path, tmp_path / "cache")
    assert main(["search", *overrides, "space=sampler"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "solver.name ddim" in error and "flow-matching" in error and "space=flow_sampler" in error
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("kind", ["dit", "ddim"])
def test_prompts_for_a_folder_that_takes_none_are_refused_in_one_line(folders, tmp_path, capsys, kind):
    """A class-conditional or unconditional pipeline has no prompts to search on: a prompt file given for it is
    an error, not silently ignored."""
    from autoaccel.cli.main import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n")
    overrides = _search_overrides(folders[kind], tmp_path, tmp_path / "cache")
    assert main(["search", *overrides, f"target.prompts={prompts}"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert f"target.prompts={prompts}" in error and "not prompts" in error and "StableDiffusionPipeline" in error
    assert not (tmp_path / "reports").exists()  # nothing left behind


def test_space_auto_picks_the_space_that_fits_the_model(folders):
    from autoaccel.config import compose_config
    from autoaccel.search.run import study_name_for
    from autoaccel.space.choice import resolve_space_name

    expected = {
        "ddim": "sampler",
        "sd": "guided_sampler",
        "dit": "guided_sampler",
        "sd3": "flow_sampler",
        "sdxl": "guided_sampler",
        "flux": "flow_sampler",
        "sana": "flow_sampler",
    }
    for kind, space in expected.items():
        config = compose_config(["target=pipeline", f"target.path={folders[kind]}"])
        assert resolve_space_name(config) == space
        assert study_name_for(config) == f"{kind}-{space}"


@pytest.mark.parametrize(
    ("reference", "message"),
    [("ddim", "SOLVER-STEPS"), ("warp-10", "SOLVER-STEPS"), ("ddpm-0", "STEPS in [1, 1000]"), ("ddim-5000", "1000")],
)
def test_a_bad_reference_is_refused_before_anything_loads(tmp_path, capsys, reference, message):
    from autoaccel.cli.main import main

    assert main(["search", f"target.reference={reference}", f"report.dir={tmp_path}"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"target.reference={reference!r}" in error and message in error


def test_a_named_reference_replaces_the_default_call(folders):
    from autoaccel.reference.sampling import reference_pipeline
    from autoaccel.targets.loader import load_pipeline_folder

    target = load_pipeline_folder(folders["sd"])
    default = reference_pipeline(target)
    assert default.plan.native_steps == target.reference_call.steps and default.guided
    target.reference = "dpmsolver++-7"
    named = reference_pipeline(target)
    assert len(named.plan.timesteps) == 7 and type(named.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert named.plan.guidance_scale == target.reference_call.guidance_scale  # the default call's guidance


def test_prompts_come_from_a_file_and_every_candidate_sees_the_same_ones(folders, tmp_path):
    from autoaccel.errors import TargetError
    from autoaccel.targets.loader import load_pipeline_folder

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# my prompts\na red cube\n\na blue sphere\n")
    target = load_pipeline_folder(folders["sd"], prompts=str(prompts))
    assert target.conditions.names == ["a red cube", "a blue sphere"]
    rows = target.conditions.embeds["encoder_hidden_states"]
    assert rows.shape[0] == 2 and not torch.equal(rows[0], rows[1])
    with pytest.raises(TargetError, match="neither a prompt file nor a bundled set"):
        load_pipeline_folder(folders["sd"], prompts=str(tmp_path / "missing.txt"))


def test_a_hub_id_is_handed_to_diffusers_and_a_failure_is_one_line(tmp_path, monkeypatch):
    from autoaccel.errors import TargetError
    from autoaccel.targets.loader import load_pipeline_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TargetError, match="'someone/some-model': the pipeline's weights could not be loaded"):
        load_pipeline_folder("someone/some-model")


@pytest.mark.slow
def test_pixart_alpha_1024_size_conditioning_matches_the_pipelines_own_call(tmp_path):
    """PixArt-alpha at 1024 px takes the image size and aspect ratio: the sampling loop passes them as
    PixArtAlphaPipeline does, so the default call gives the pipeline's own images."""
    from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel

    from autoaccel.pipeline.seeds import make_seed_batch
    from autoaccel.targets.loader import target_from_pipeline
    from autoaccel.testing.pipelines import build_tiny_pipeline

    pipeline = PixArtAlphaPipeline.from_pretrained(build_tiny_pipeline("pixart_alpha", tmp_path / "pixart"))
    pipeline.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    pipeline.transformer = PixArtTransformer2DModel(  # sample size 128: the pipeline then passes the size
        sample_size=128,
        patch_size=8,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        num_attention_heads=3,
        attention_head_dim=8,
        cross_attention_dim=24,
        caption_channels=pipeline.text_encoder.config.d_model,
        norm_type="ada_norm_single",
        num_embeds_ada_norm=1000,
        use_additional_conditions=True,
    ).eval()
    target = target_from_pipeline(pipeline, "pixart1024", tmp_path, {}, prompts=["a red cube", "a blue ball"])
    fast = sampler_pipeline(target)
    fast.plan.native_steps, fast.plan.guidance_scale = 2, 4.5
    seeds = make_seed_batch(target.sample_shape, 2, 3, target.condition_count)
    ours = fast(seeds.noise, seeds.class_labels).images
    theirs = pipeline(
        prompt=[target.conditions.names[int(index)] for index in seeds.class_labels],
        latents=seeds.noise,
        num_inference_steps=2,
        guidance_scale=4.5,
        use_resolution_binning=False,
        output_type="pt",
    ).images
    torch.testing.assert_close(ours.clamp(-1, 1), theirs * 2 - 1, rtol=0, atol=1e-4)  # the pipeline clamps


# (kind, what its __call__ needs besides the prompts and latents to make the tiny folder's size)
DEFAULT_CALLS = [("sdxl", {}), ("flux", {"height": 16, "width": 16}), ("flux_schnell", {"height": 16, "width": 16})]


@pytest.mark.parametrize(("kind", "size"), DEFAULT_CALLS, ids=[kind for kind, _ in DEFAULT_CALLS])
def test_the_default_call_is_the_pipelines_own_call_image_for_image(folders, kind, size):
    """SDXL (two encoders, pooled embeddings, size ids, zeroed negative prompt), FLUX.1-dev (packed latents, position
    ids, guidance as an input, resolution-dependent shift of FluxPipeline's own sigmas) and FLUX.1-schnell (4 steps,
    no guidance): autoaccel's loop on the default call gives the very images ``pipe(...)`` makes."""
    import diffusers

    from autoaccel.pipeline.seeds import make_seed_batch
    from autoaccel.reference.sampling import reference_pipeline
    from autoaccel.targets.loader import load_pipeline_folder

    target = load_pipeline_folder(folders[kind])
    ours_pipeline = reference_pipeline(target)
    call = target.reference_call
    assert ours_pipeline.plan.native_steps == call.steps
    seeds = make_seed_batch(target.sample_shape, 3, 3, target.condition_count)
    ours = ours_pipeline(seeds.noise, seeds.class_labels).images
    pipeline = diffusers.DiffusionPipeline.from_pretrained(folders[kind])
    pipeline.set_progress_bar_config(disable=True)
    latents = seeds.noise
    if kind.startswith("flux"):  # FluxPipeline takes its latents packed
        latents = pipeline._pack_latents(latents, len(latents), *target.sample_shape)
    theirs = pipeline(
        prompt=[target.conditions.names[int(index)] for index in seeds.class_labels],
        latents=latents,
        num_inference_steps=call.steps,
        guidance_scale=call.guidance_scale,
        output_type="pt",
        **size,
    ).images
    assert ours.shape == theirs.shape == (3, 3, 16, 16)
    torch.testing.assert_close(ours.clamp(-1, 1), theirs * 2 - 1, rtol=0, atol=1e-4)  # the pipeline clamps
    if kind == "flux":  # the guidance scale reaches the model as an input: another scale, other images
        ours_pipeline.plan.guidance_scale = 1.5
        assert (ours_pipeline(seeds.noise, seeds.class_labels).images - ours).abs().max() > 1e-4


def test_the_readme_lists_exactly_the_pipelines_the_loader_accepts():
    """The README's table is generated from the loader's list (``python -m autoaccel.targets.supported``)."""
    from pathlib import Path

    from autoaccel.targets.loader import SUPPORTED_PIPELINES
    from autoaccel.targets.supported import README_END, README_START, markdown_table

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    shown = readme[readme.index(README_START) + len(README_START) : readme.index(README_END)]
    lines = [line.strip() for line in shown.strip().splitlines()]
    assert lines == markdown_table().splitlines(), "regenerate it: python -m autoaccel.targets.supported"
    assert [line.split("`")[1] for line in lines[2:]] == list(SUPPORTED_PIPELINES)


def test_sana_default_call_matches_the_pipelines_own_call(folders):
    """Sana's default call (DPM-Solver++ on flow sigmas, 20 steps, guidance 4.5, each prompt behind the complex
    human instruction, the empty negative prompt without it): the reference sampling gives SanaPipeline's own
    images from the same latents and prompts."""
    from diffusers import SanaPipeline

    from autoaccel.pipeline.seeds import make_seed_batch
    from autoaccel.reference.sampling import reference_pipeline
    from autoaccel.targets.loader import load_pipeline_folder

    target = load_pipeline_folder(folders["sana"])
    reference = reference_pipeline(target)
    assert (reference.plan.native_steps, reference.plan.guidance_scale) == (20, 4.5)
    seeds = make_seed_batch(target.sample_shape, 3, 3, target.condition_count)
    ours = reference(seeds.noise, seeds.class_labels).images
    pipeline = SanaPipeline.from_pretrained(folders["sana"])
    pipeline.set_progress_bar_config(disable=True)
    side = target.sample_shape[-1] * pipeline.vae_scale_factor
    theirs = pipeline(
        prompt=[target.conditions.names[int(index)] for index in seeds.class_labels],
        latents=seeds.noise.clone(),
        height=side,
        width=side,
        use_resolution_binning=False,  # binning maps a square image to the same square size; the tiny size has no bin
        output_type="pt",
    ).images
    torch.testing.assert_close(ours.clamp(-1, 1), theirs * 2 - 1, rtol=0, atol=1e-4)  # the pipeline clamps


def test_a_sana_transformer_that_scales_its_timesteps_is_refused_in_one_line(folders, tmp_path):
    """A Sana transformer with ``timestep_scale`` other than 1 is called by its pipeline with scaled timesteps, which
    the sampling loop does not do: loading it is refused rather than giving other images than the pipeline's."""
    from autoaccel.errors import TargetError
    from autoaccel.targets.loader import load_pipeline_folder

    folder = tmp_path / "sana"
    build_tiny_pipeline("sana", folder)
    config_path = folder / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "timestep_scale": 1000.0}))
    with pytest.raises(TargetError, match=r"timestep_scale=1000.0 is not supported; supported: 1.0") as raised:
        load_pipeline_folder(folder)
    assert len(str(raised.value).splitlines()) == 1
