"""Tiny pipeline folders of every supported class (autoaccel/testing/pipelines.py) and prompt encoding through each
pipeline's own text encoders (autoaccel/targets/prompts.py)."""

from __future__ import annotations

import pytest
import torch

from autoaccel.errors import TargetError
from autoaccel.targets import prompts as prompts_module
from autoaccel.targets.denoisers import nested
from autoaccel.targets.prompts import MAX_PROMPT_CHARS, MAX_PROMPTS, EncodedPrompts, encode_prompts, load_prompts
from autoaccel.testing.pipelines import IMAGE_SIZE, PROMPT_KINDS, SANA_IMAGE_SIZE, TINY_KINDS, build_tiny_pipeline

PIPELINE_CLASSES = {
    "ddpm": "DDPMPipeline",
    "ddim": "DDIMPipeline",
    "dit": "DiTPipeline",
    "sd": "StableDiffusionPipeline",
    "pixart_alpha": "PixArtAlphaPipeline",
    "pixart_sigma": "PixArtSigmaPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "flux": "FluxPipeline",
    "flux_schnell": "FluxPipeline",
    "sana": "SanaPipeline",
}
PROMPTS = ["a red cat on a sofa", "a blue dog in the snow", "a red cat on a sofa"]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """Every tiny kind, saved and loaded back through DiffusionPipeline.from_pretrained."""
    from diffusers import DiffusionPipeline

    root = tmp_path_factory.mktemp("tiny_pipelines")
    loaded = {}
    for kind in TINY_KINDS:
        pipeline = DiffusionPipeline.from_pretrained(build_tiny_pipeline(kind, root / kind))
        pipeline.set_progress_bar_config(disable=True)
        loaded[kind] = pipeline
    return loaded


def _call_options(kind: str) -> dict:
    """Call options that keep each tiny pipeline at its 16x16 (DDPM/DDIM: 8x8, Sana: 32x32) size."""
    if kind in ("ddpm", "ddim"):
        return {"batch_size": 2}
    if kind == "dit":
        return {"class_labels": [1, 7]}
    options = {"prompt": PROMPTS[:2]}
    if kind.startswith("pixart") or kind == "sana":
        options["use_resolution_binning"] = False  # the tiny sample size has no resolution bins
    if kind == "sana":
        options.update(height=SANA_IMAGE_SIZE, width=SANA_IMAGE_SIZE)  # Sana defaults to 1024 pixels
    if kind.startswith("flux"):
        options.update(height=IMAGE_SIZE, width=IMAGE_SIZE)  # Flux defaults to 128 latent pixels
    return options


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_folder_loads_as_its_class_and_makes_finite_images(kind, pipelines):
    pipeline = pipelines[kind]
    assert type(pipeline).__name__ == PIPELINE_CLASSES[kind]
    generator = torch.Generator().manual_seed(0)
    images = pipeline(num_inference_steps=2, output_type="pt", generator=generator, **_call_options(kind)).images
    size = 8 if kind in ("ddpm", "ddim") else SANA_IMAGE_SIZE if kind == "sana" else IMAGE_SIZE
    assert tuple(images.shape) == (2, 3, size, size)
    assert torch.isfinite(images).all()
    assert images.std() > 0


def test_building_twice_with_one_seed_gives_the_same_weights(tmp_path):
    first = build_tiny_pipeline("sd", tmp_path / "first", seed=3)
    second = build_tiny_pipeline("sd", tmp_path / "second", seed=3)
    other = build_tiny_pipeline("sd", tmp_path / "other", seed=4)
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (first / weights).read_bytes() == (second / weights).read_bytes()
    assert (first / weights).read_bytes() != (other / weights).read_bytes()


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny pipeline kind 'sdxl_refiner'; choose one of .*flux_schnell"):
        build_tiny_pipeline("sdxl_refiner", tmp_path / "x")


@pytest.mark.parametrize("kind", PROMPT_KINDS)
def test_encoded_rows_follow_their_prompts(kind, pipelines):
    encoded = encode_prompts(pipelines[kind], PROMPTS)
    assert encoded.num_prompts == len(PROMPTS)
    for keyword, rows in encoded.embeds.items():
        assert rows.shape[0] == len(PROMPTS), keyword
        assert torch.equal(rows[0], rows[2]), f"{keyword}: a repeated prompt must give the same row"
    assert not torch.equal(encoded.embeds["encoder_hidden_states"][0], encoded.embeds["encoder_hidden_states"][1])
    if "pooled_projections" in encoded.embeds:
        assert not torch.equal(encoded.embeds["pooled_projections"][0], encoded.embeds["pooled_projections"][1])
    if kind.startswith("flux"):  # Flux's default call has no unconditional branch, so no null row
        assert encoded.null == {} and encoded.fixed["txt_ids"].shape[-1] == 3
        return
    assert encoded.null.keys() == encoded.embeds.keys()
    for keyword, null in encoded.null.items():
        assert null.shape == (1, *encoded.embeds[keyword].shape[1:]), keyword
    assert not torch.equal(encoded.null["encoder_hidden_states"][0], encoded.embeds["encoder_hidden_states"][0])


@pytest.mark.parametrize("kind", ["sd", "pixart_sigma", "sd3", "sdxl", "sana"])
def test_negative_prompt_changes_only_the_null_rows(kind, pipelines):
    plain = encode_prompts(pipelines[kind], PROMPTS[:2])
    negative = encode_prompts(pipelines[kind], PROMPTS[:2], negative_prompt="blurry, low quality")
    for keyword in plain.embeds:
        assert torch.equal(plain.embeds[keyword], negative.embeds[keyword])
    assert not torch.equal(plain.null["encoder_hidden_states"], negative.null["encoder_hidden_states"])


@pytest.mark.parametrize("kind", PROMPT_KINDS)
def test_chunked_encoding_matches_one_batch(kind, pipelines, monkeypatch):
    whole = encode_prompts(pipelines[kind], PROMPTS)
    monkeypatch.setattr(prompts_module, "ENCODE_CHUNK", 2)
    chunked = encode_prompts(pipelines[kind], PROMPTS)
    for keyword, rows in whole.embeds.items():
        assert chunked.embeds[keyword].shape == rows.shape
        torch.testing.assert_close(chunked.embeds[keyword], rows, rtol=0, atol=1e-6)


def _denoise_once(pipeline, encoded: EncodedPrompts, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One denoiser call on the same latent for every row, with the keywords the pipeline's own loop passes."""
    from diffusers import FluxPipeline, PixArtAlphaPipeline, PixArtSigmaPipeline, SanaPipeline, StableDiffusion3Pipeline

    batch = len(indices)
    conditioning = {keyword: rows[indices] for keyword, rows in encoded.embeds.items()}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if isinstance(pipeline, FluxPipeline):
            channels = pipeline.transformer.config.in_channels // 4
            latent_size = IMAGE_SIZE // pipeline.vae_scale_factor
            latents = torch.randn(1, channels, latent_size, latent_size, generator=generator).expand(batch, -1, -1, -1)
            packed = pipeline._pack_latents(latents, batch, channels, latent_size, latent_size)
            image_ids = pipeline._prepare_latent_image_ids(
                batch, latent_size // 2, latent_size // 2, "cpu", torch.float32
            )
            guidance = torch.full((batch,), 3.5) if pipeline.transformer.config.guidance_embeds else None
            output = pipeline.transformer(
                hidden_states=packed,
                timestep=torch.full((batch,), 0.5),
                guidance=guidance,
                img_ids=image_ids,
                **conditioning,
                **encoded.fixed,
            ).sample
            return packed, output
        denoiser = pipeline.unet if hasattr(pipeline, "unet") else pipeline.transformer
        size, channels = denoiser.config.sample_size, denoiser.config.in_channels
        latents = torch.randn(1, channels, size, size, generator=generator).expand(batch, -1, -1, -1)
        if isinstance(pipeline, (PixArtAlphaPipeline, PixArtSigmaPipeline)):
            no_micro_conditions = {"resolution": None, "aspect_ratio": None}
            timestep = torch.full((batch,), 500, dtype=torch.long)
            output = denoiser(latents, timestep=timestep, added_cond_kwargs=no_micro_conditions, **conditioning)
        elif isinstance(pipeline, SanaPipeline):
            output = denoiser(latents, timestep=torch.full((batch,), 500.0), **conditioning)
        elif isinstance(pipeline, StableDiffusion3Pipeline):
            output = denoiser(hidden_states=latents, timestep=torch.full((batch,), 500.0), **conditioning)
        else:  # SDXL's added conditioning goes in as added_cond_kwargs, the way its loop passes it
            output = denoiser(latents, torch.tensor(500), **nested(conditioning))
        return latents, output.sample


@pytest.mark.parametrize("kind", PROMPT_KINDS)
def test_encoded_rows_fit_the_denoiser(kind, pipelines):
    pipeline = pipelines[kind]
    encoded = encode_prompts(pipeline, PROMPTS)
    indices = torch.tensor([0, 1, 2, 1])
    latents, output = _denoise_once(pipeline, encoded, indices)
    channels = latents.shape[1] * (2 if kind.startswith("pixart") else 1)  # PixArt also predicts its variance
    assert tuple(output.shape) == (len(indices), channels, *latents.shape[2:])
    assert torch.isfinite(output).all()
    torch.testing.assert_close(output[0], output[2], rtol=0, atol=1e-5)
    assert (output[0] - output[1]).abs().max() > 1e-4, "different prompts must reach the denoiser"


@pytest.mark.parametrize("kind", PROMPT_KINDS)
def test_encoded_rows_reproduce_the_pipeline_call(kind, pipelines):
    """Feeding the encoded rows back as prompt_embeds gives the very images that pipeline(prompt=...) makes."""
    pipeline = pipelines[kind]
    options = _call_options(kind)
    prompts = options.pop("prompt")
    encoded = encode_prompts(pipeline, prompts)

    def call(**inputs):
        generator = torch.Generator().manual_seed(5)
        return pipeline(num_inference_steps=2, output_type="pt", generator=generator, **options, **inputs).images

    embeds = encoded.embeds
    null = {key: value.expand(len(prompts), *value.shape[1:]) for key, value in encoded.null.items()}
    given = {"prompt_embeds": embeds["encoder_hidden_states"]}
    if kind in ("sd", "pixart_alpha", "pixart_sigma", "sd3", "sdxl", "sana"):
        given["negative_prompt_embeds"] = null["encoder_hidden_states"]
    if kind == "sdxl":
        given["pooled_prompt_embeds"] = embeds["added_cond_kwargs.text_embeds"]
        given["negative_pooled_prompt_embeds"] = null["added_cond_kwargs.text_embeds"]
    if kind.startswith("flux"):
        given["pooled_prompt_embeds"] = embeds["pooled_projections"]
    if kind.startswith("pixart") or kind == "sana":
        given["prompt_attention_mask"] = embeds["encoder_attention_mask"]
        given["negative_prompt_attention_mask"] = null["encoder_attention_mask"]
        given["negative_prompt"] = None  # PixArt's call defaults it to "", which may not come with embeddings
    if kind == "sd3":
        given["pooled_prompt_embeds"] = embeds["pooled_projections"]
        given["negative_pooled_prompt_embeds"] = null["pooled_projections"]
    torch.testing.assert_close(call(**given), call(prompt=prompts), rtol=0, atol=1e-6)


def test_pipelines_without_text_are_refused(pipelines):
    with pytest.raises(TargetError, match="DDPMPipeline"):
        encode_prompts(pipelines["ddpm"], ["a cat"])


def test_sdxl_negative_row_is_zeros_as_its_default_call_makes_it(pipelines):
    """SDXL base forces the empty negative prompt to zeros (``force_zeros_for_empty_prompt``): the null row is what
    ``pipeline(prompt)`` pairs each sample with, not the encoded empty string."""
    encoded = encode_prompts(pipelines["sdxl"], PROMPTS[:1])
    assert pipelines["sdxl"].config.force_zeros_for_empty_prompt
    assert not encoded.null["encoder_hidden_states"].any() and not encoded.null["added_cond_kwargs.text_embeds"].any()
    # the size conditioning of the default call: original size, crop (0, 0), target size, in pixels
    size = [IMAGE_SIZE, IMAGE_SIZE]
    assert encoded.embeds["added_cond_kwargs.time_ids"].tolist() == [[*size, 0, 0, *size]]


def test_an_empty_prompt_list_is_refused(pipelines):
    with pytest.raises(TargetError, match="at least one prompt"):
        encode_prompts(pipelines["sd"], [])


def test_load_prompts_skips_blanks_and_comments(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(
        "# a comment\n\n  a red cat  \n\t\na blue dog\n   # indented comment\na red cat\n", encoding="utf-8"
    )
    assert load_prompts(path) == ["a red cat", "a blue dog", "a red cat"]
    assert load_prompts(str(path)) == ["a red cat", "a blue dog", "a red cat"]


def _load_error(path) -> str:
    with pytest.raises(TargetError) as raised:
        load_prompts(path)
    message = str(raised.value)
    assert str(path) in message
    assert "\n" not in message
    return message


def test_load_prompts_names_the_bad_file(tmp_path):
    assert "does not exist" in _load_error(tmp_path / "missing.txt")
    assert "folder" in _load_error(tmp_path)

    comments_only = tmp_path / "comments.txt"
    comments_only.write_text("# nothing here\n\n   \n", encoding="utf-8")
    assert "no prompts" in _load_error(comments_only)

    too_many = tmp_path / "many.txt"
    too_many.write_text("\n".join(f"prompt {index}" for index in range(MAX_PROMPTS + 1)), encoding="utf-8")
    assert str(MAX_PROMPTS) in _load_error(too_many)

    long_line = tmp_path / "long.txt"
    long_line.write_text("a fine prompt\n" + "x" * (MAX_PROMPT_CHARS + 1) + "\n", encoding="utf-8")
    assert "line 2" in _load_error(long_line)

    not_text = tmp_path / "binary.txt"
    not_text.write_bytes(b"a cat\n\xff\xfe\x00\x81\n")
    assert "UTF-8" in _load_error(not_text)


def test_load_prompts_accepts_the_limits(tmp_path):
    path = tmp_path / "limits.txt"
    path.write_text("\n".join(["y" * MAX_PROMPT_CHARS] * MAX_PROMPTS), encoding="utf-8")
    assert len(load_prompts(path)) == MAX_PROMPTS


@pytest.mark.parametrize("layout", ["many_prompts", "one_long_line"])
def test_load_prompts_stops_reading_at_the_limits(tmp_path, layout):
    import tracemalloc

    path = tmp_path / "huge.txt"
    with path.open("wb") as file:
        if layout == "many_prompts":
            file.write("\n".join(f"prompt {index}" for index in range(MAX_PROMPTS + 1)).encode() + b"\n")
        file.truncate(file.tell() + 256 * 2**20)  # then 256 MB more, sparse on disk: never needed to refuse it
    tracemalloc.start()
    try:
        message = _load_error(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected = f"more than {MAX_PROMPTS} prompts" if layout == "many_prompts" else "line 1 has more than"
    assert expected in message
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MB held while refusing a prompt file of 256 MB"


def test_load_prompts_refuses_what_is_not_a_regular_file(tmp_path):
    import os

    fifo = tmp_path / "prompts.txt"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    assert "is not a regular file" in _load_error(fifo)
