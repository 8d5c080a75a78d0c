"""The latent digit models: the committed pipelines load and run with plain diffusers, the CLIP tokenizer built
in code tokenises the bundled prompts the way Stable Diffusion does, and a tiny training run writes folders
that load the same way."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from autoaccel.targets.digits.latent.prompts import (
    DIGIT_WORDS,
    MODEL_MAX_LENGTH,
    PHRASINGS,
    PROMPTS,
    build_tokenizer,
    prompts_for_digits,
)

WEIGHTS = Path(__file__).resolve().parents[1] / "autoaccel" / "targets" / "digits" / "weights"
FOLDER_SIZE_LIMIT = 6 * 1024 * 1024

# runs in a fresh interpreter outside the repository, so nothing from autoaccel can be imported
PLAIN_DIFFUSERS_SCRIPT = r"""
import json, sys
import torch
from diffusers import DiTPipeline, StableDiffusionPipeline

t2i_dir, dit_dir = sys.argv[1], sys.argv[2]
report = {}
pipe = StableDiffusionPipeline.from_pretrained(t2i_dir)
pipe.set_progress_bar_config(disable=True)
images = pipe(["a handwritten seven"], num_inference_steps=4, output_type="pt",
              generator=torch.Generator().manual_seed(0)).images
report["t2i"] = {"shape": list(images.shape), "finite": bool(torch.isfinite(images).all()),
                 "dtype": str(pipe.unet.dtype), "scheduler": type(pipe.scheduler).__name__,
                 "max_length": pipe.tokenizer.model_max_length}
pipe = DiTPipeline.from_pretrained(dit_dir)
pipe.set_progress_bar_config(disable=True)
images = pipe(class_labels=[7], num_inference_steps=4, output_type="pt",
              generator=torch.Generator().manual_seed(0)).images
report["dit"] = {"shape": list(images.shape), "finite": bool(torch.isfinite(images).all()),
                 "dtype": str(pipe.transformer.dtype), "scheduler": type(pipe.scheduler).__name__,
                 "seven": pipe.get_label_ids(["seven"])}
report["autoaccel_imported"] = any(name.split(".")[0] == "autoaccel" for name in sys.modules)
print(json.dumps(report))
"""


def _run_plain_diffusers(processes, t2i_dir: Path, dit_dir: Path, cwd: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = processes.run(
        [sys.executable, "-c", PLAIN_DIFFUSERS_SCRIPT, str(t2i_dir), str(dit_dir)], cwd=cwd, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


@pytest.mark.slow
def test_committed_pipelines_run_with_plain_diffusers(tmp_path, processes):
    report = _run_plain_diffusers(processes, WEIGHTS / "t2i", WEIGHTS / "dit", cwd=tmp_path)
    assert report["autoaccel_imported"] is False
    for name in ("t2i", "dit"):
        assert report[name]["shape"] == [1, 1, 16, 16]
        assert report[name]["finite"]
        assert report[name]["dtype"] == "torch.float32"
        assert report[name]["scheduler"] == "DDIMScheduler"
    assert report["t2i"]["max_length"] == MODEL_MAX_LENGTH
    assert report["dit"]["seven"] == [7]


def test_committed_folders_describe_their_default_call_and_stay_small():
    t2i = json.loads((WEIGHTS / "t2i" / "autoaccel.json").read_text())
    dit = json.loads((WEIGHTS / "dit" / "autoaccel.json").read_text())
    assert t2i["name"] == "digits_t2i" and dit["name"] == "digits_dit"
    assert dit["num_classes"] == 10 and dit["null_class"] == 1000
    transformer_config = json.loads((WEIGHTS / "dit" / "transformer" / "config.json").read_text())
    assert transformer_config["num_embeds_ada_norm"] == 1000
    assert transformer_config["out_channels"] == transformer_config["in_channels"]
    for info in (t2i, dit):
        assert info["default_call"]["num_inference_steps"] == 50
        assert info["default_call"]["guidance_scale"] in [row["guidance"] for row in info["evaluation"]]
    for name in ("vae", "t2i", "dit"):
        assert _folder_bytes(WEIGHTS / name) < FOLDER_SIZE_LIMIT, name
    scheduler = json.loads((WEIGHTS / "t2i" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDIMScheduler" and scheduler["clip_sample"] is False


def test_tokenizer_round_trips_every_prompt_as_stable_diffusion_pads_it():
    tokenizer = build_tokenizer()
    assert tokenizer.model_max_length == MODEL_MAX_LENGTH
    texts = [prompt for prompt, _ in PROMPTS]
    encoded = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
    for text, ids in zip(texts, encoded.input_ids):
        assert len(ids) == MODEL_MAX_LENGTH
        assert ids[0] == tokenizer.bos_token_id
        words = text.split()
        word_ids = [tokenizer.convert_tokens_to_ids(word + "</w>") for word in words]
        assert tokenizer.unk_token_id not in word_ids  # one vocabulary entry per prompt word
        assert ids[1 : 1 + len(words)] == word_ids
        assert all(token == tokenizer.eos_token_id for token in ids[1 + len(words) :])
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_takes_unknown_words_and_is_the_same_when_rebuilt():
    tokenizer = build_tokenizer()
    ids = tokenizer("A Purple GIRAFFE, ☃ 42!", padding="max_length", max_length=MODEL_MAX_LENGTH, truncation=True)
    assert len(ids.input_ids) == MODEL_MAX_LENGTH
    assert all(0 <= token < len(tokenizer) for token in ids.input_ids)
    assert tokenizer.decode(ids.input_ids, skip_special_tokens=True).startswith("a purple giraffe")
    assert build_tokenizer().get_vocab() == tokenizer.get_vocab()


def test_balanced_prompts_use_every_phrasing_of_every_digit():
    digits = [index % 10 for index in range(10 * len(PHRASINGS))]
    prompts = prompts_for_digits(digits)
    assert sorted(prompts) == sorted(prompt for prompt, _ in PROMPTS)
    lookup = dict(PROMPTS)
    assert [lookup[prompt] for prompt in prompts] == digits
    assert len(DIGIT_WORDS) == 10


def test_images_16_pool_back_to_the_exact_digits_and_score_as_real():
    from autoaccel.targets.digits.data import load_digits_tensors
    from autoaccel.targets.digits.latent.evaluate import score_images
    from autoaccel.targets.digits.latent.images import load_digits_16, to_classifier_resolution

    images16, labels = load_digits_16()
    images8, _ = load_digits_tensors()
    assert images16.shape == (len(images8), 1, 16, 16)
    assert images16.min() >= -1 and images16.max() <= 1
    assert torch.equal(to_classifier_resolution(images16), images8)
    real = score_images(images16, labels)
    assert real["adherence"] > 0.97 and abs(real["fid"]) < 1e-3
    noise = score_images(torch.rand(256, 1, 16, 16) * 2 - 1, labels[:256])
    assert noise["fid"] > 50 and noise["adherence"] < 0.5


@pytest.mark.slow
@pytest.mark.integration
def test_tiny_training_run_writes_folders_plain_diffusers_loads(tmp_path):
    from autoaccel.targets.digits.latent.dit import train_dit
    from autoaccel.targets.digits.latent.t2i import train_t2i
    from autoaccel.targets.digits.latent.vae import encode_digits, load_vae, train_vae

    tiny = dict(steps=2, batch_size=8, log_every=1)
    vae_info = train_vae(tmp_path / "vae", **tiny, block_out_channels=(8, 8, 8), norm_num_groups=4)
    vae = load_vae(tmp_path / "vae")
    assert vae.config.scaling_factor == pytest.approx(vae_info["scaling_factor"], rel=1e-5)
    from autoaccel.targets.digits.latent.images import load_digits_16

    assert encode_digits(vae, load_digits_16()[0][:512]).std().item() == pytest.approx(1.0, abs=0.1)
    t2i_info = train_t2i(
        tmp_path / "t2i",
        vae_dir=tmp_path / "vae",
        **tiny,
        evaluate=False,
        text_hidden_size=16,
        block_out_channels=(16, 16),
    )
    dit_info = train_dit(tmp_path / "dit", vae_dir=tmp_path / "vae", **tiny, evaluate=False, width=16, num_layers=1)
    assert t2i_info["default_call"] == {"num_inference_steps": 50, "guidance_scale": 7.5}
    assert dit_info["default_call"] == {"num_inference_steps": 50, "guidance_scale": 4.0}
    assert json.loads((tmp_path / "dit" / "autoaccel.json").read_text())["null_class"] == 1000
    from diffusers import DiTPipeline, StableDiffusionPipeline

    t2i = StableDiffusionPipeline.from_pretrained(tmp_path / "t2i")
    t2i.set_progress_bar_config(disable=True)
    images = t2i(["the digit 7"], num_inference_steps=2, guidance_scale=2.0, output_type="pt").images
    assert images.shape == (1, 1, 16, 16) and torch.isfinite(images).all()
    dit = DiTPipeline.from_pretrained(tmp_path / "dit")
    dit.set_progress_bar_config(disable=True)
    images = dit(class_labels=dit.get_label_ids(["seven"]), num_inference_steps=2, output_type="pt").images
    assert images.shape == (1, 1, 16, 16) and torch.isfinite(images).all()


def test_default_guidance_prefers_adherence_then_fid():
    from autoaccel.targets.digits.latent.evaluate import best_guidance

    rows = [
        {"guidance": 1.0, "adherence": 0.95, "fid": 1.5},
        {"guidance": 2.0, "adherence": 0.995, "fid": 2.0},
        {"guidance": 4.0, "adherence": 1.0, "fid": 4.0},
    ]
    assert best_guidance(rows) == 2.0
    assert best_guidance(rows, adherence_tolerance=0.1) == 1.0


def _weights_digest(folder: Path) -> str:
    from safetensors.torch import load_file

    weights = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    return hashlib.sha1(b"".join(weights[name].numpy().tobytes() for name in sorted(weights))).hexdigest()


@pytest.mark.slow
@pytest.mark.integration
def test_training_is_deterministic_for_its_seed(tmp_path):
    """Two runs of each training script with one seed write the same weights, bit for bit (a gather whose
    backward accumulated in thread order once made the text-to-image model differ between runs)."""
    from autoaccel.targets.digits.latent.dit import train_dit
    from autoaccel.targets.digits.latent.t2i import train_t2i

    short = dict(steps=3, batch_size=64, log_every=100, evaluate=False)  # the committed models' sizes
    for run in ("a", "b"):
        train_t2i(tmp_path / f"t2i-{run}", **short)
        train_dit(tmp_path / f"dit-{run}", **short)
    assert _weights_digest(tmp_path / "t2i-a" / "unet") == _weights_digest(tmp_path / "t2i-b" / "unet")
    assert _weights_digest(tmp_path / "dit-a" / "transformer") == _weights_digest(tmp_path / "dit-b" / "transformer")
