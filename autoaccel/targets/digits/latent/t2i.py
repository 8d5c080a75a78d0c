"""Trains the text-to-image digits model: a tiny CLIP text encoder and a cross-attention UNet on VAE latents.

Run with ``python -m autoaccel train-latent-models`` (VAE first, then this), or ``train_t2i(out_dir)`` on the
committed VAE. Deterministic for its seed on one machine. The result is a genuine ``StableDiffusionPipeline``
folder: ``pipe("a handwritten seven")`` works with plain diffusers, 50 DDIM steps and the guidance scale stored
in ``autoaccel.json`` (``default_call``), chosen by the guidance sweep at the end of training.

The text encoder is trained jointly with the UNet: it learns that "seven", "7" and "number seven" mean the
same digit, where a frozen random encoder leaves the UNet to tell every phrasing apart on its own.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from autoaccel.targets.digits.latent.evaluate import best_guidance, guidance_sweep
from autoaccel.targets.digits.latent.images import load_digits_16
from autoaccel.targets.digits.latent.prompts import EMPTY_PROMPT, MODEL_MAX_LENGTH, PROMPTS, build_tokenizer
from autoaccel.targets.digits.latent.training import (
    add_noise,
    build_sampling_scheduler,
    seconds_since,
    warmup_cosine,
)
from autoaccel.targets.digits.latent.vae import LATENT_CHANNELS, LATENT_SIZE, encode_digits, load_vae
from autoaccel.targets.digits.weights import WEIGHTS_DIR
from autoaccel.util.training import clipped_step, ema_update

DIFFUSERS_DEFAULT_GUIDANCE = 7.5  # StableDiffusionPipeline's own default, kept when no sweep is run


def default_vae_dir() -> Path:

    return WEIGHTS_DIR / "vae"


def build_text_encoder(tokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4):
    """A 2-layer CLIP text transformer whose positions match the tokenizer's padded length."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_unet(cross_attention_dim: int, block_out_channels: tuple[int, ...] = (32, 64), norm_num_groups: int = 8):
    """Two resolutions (4x4, 2x2), cross-attention to the prompt at both and in the middle block, 16-d heads."""
    from diffusers import UNet2DConditionModel

    levels = len(block_out_channels)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * levels,
        up_block_types=("CrossAttnUpBlock2D",) * levels,
        cross_attention_dim=cross_attention_dim,
        # UNet2DConditionModel reads attention_head_dim as the number of heads per block
        attention_head_dim=tuple(max(1, channels // 16) for channels in block_out_channels),
        norm_num_groups=norm_num_groups,
    )


def _prompt_table(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of every bundled prompt plus the empty prompt (last row), and each prompt's digit."""
    texts = [prompt for prompt, _ in PROMPTS] + [EMPTY_PROMPT]
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    return torch.tensor(ids), torch.tensor([digit for _, digit in PROMPTS])


def train_t2i(
    out_dir: Path,
    seed: int = 0,
    *,
    vae_dir: Path | None = None,
    steps: int = 3000,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    prompt_drop: float = 0.1,
    ema_decay: float = 0.999,
    train_text_encoder: bool = True,
    text_hidden_size: int = 64,
    block_out_channels: tuple[int, ...] = (32, 64),
    norm_num_groups: int = 8,
    evaluate: bool = True,
    evaluation_samples: int = 512,
    log_every: int = 100,
) -> dict:
    """Trains on the VAE's latents of all digits, each paired with a random prompt for its digit (the empty
    prompt ``prompt_drop`` of the time), saves a StableDiffusionPipeline folder, then (``evaluate``) sweeps the
    guidance scale and stores the best in ``autoaccel.json``."""
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    vae = load_vae(vae_dir or default_vae_dir())
    images, labels = load_digits_16()
    latents = encode_digits(vae, images)
    tokenizer = build_tokenizer(MODEL_MAX_LENGTH)
    prompt_ids, prompt_digits = _prompt_table(tokenizer)
    prompts_of_digit = [torch.nonzero(prompt_digits == digit).flatten() for digit in range(10)]
    per_digit = min(len(rows) for rows in prompts_of_digit)
    prompt_choices = torch.stack([rows[:per_digit] for rows in prompts_of_digit])  # (10, phrasings per digit)
    empty_row = len(prompt_ids) - 1

    text_encoder = build_text_encoder(tokenizer, hidden_size=text_hidden_size).requires_grad_(train_text_encoder)
    unet = build_unet(text_hidden_size, block_out_channels, norm_num_groups)
    trained = torch.nn.ModuleList([unet, text_encoder] if train_text_encoder else [unet])
    ema_trained = copy.deepcopy(trained).requires_grad_(False)
    scheduler = build_sampling_scheduler()
    optimizer = torch.optim.AdamW(trained.parameters(), lr=learning_rate, weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps))
    with torch.no_grad():
        frozen_embeddings = None if train_text_encoder else text_encoder(prompt_ids)[0]
    started = time.perf_counter()
    running_loss = 0.0
    for step in range(steps):
        index = torch.randint(0, len(latents), (batch_size,), generator=generator)
        phrasing = torch.randint(0, per_digit, (batch_size,), generator=generator)
        rows = prompt_choices[labels[index], phrasing]
        rows[torch.rand(batch_size, generator=generator) < prompt_drop] = empty_row
        # every distinct prompt is encoded once per step and gathered: 51 sequences instead of batch_size
        embeddings = text_encoder(prompt_ids)[0] if train_text_encoder else frozen_embeddings
        noisy, noise, timesteps = add_noise(latents[index], scheduler.alphas_cumprod, generator)
        # index_select, not embeddings[rows]: the latter's backward accumulates repeated rows in thread order,
        # so two runs with one seed drifted apart (tests/test_latent_digits_models.py)
        prediction = unet(noisy, timesteps, encoder_hidden_states=torch.index_select(embeddings, 0, rows)).sample
        loss = F.mse_loss(prediction, noise)
        clipped_step(optimizer, loss, trained)
        lr_schedule.step()
        ema_update(ema_trained, trained, ema_decay, step)
        running_loss += loss.item()
        if (step + 1) % log_every == 0:
            print(
                f"t2i step {step + 1}/{steps}  loss {running_loss / log_every:.4f}  {seconds_since(started):.0f}s",
                flush=True,
            )
            running_loss = 0.0
    seconds = seconds_since(started)

    ema_unet = ema_trained[0]
    ema_text_encoder = ema_trained[1] if train_text_encoder else text_encoder.requires_grad_(False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline(
        vae=vae,
        text_encoder=ema_text_encoder.eval(),
        tokenizer=tokenizer,
        unet=ema_unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(out_dir)
    info = {
        "name": "digits_t2i",
        "default_call": {"num_inference_steps": 50, "guidance_scale": DIFFUSERS_DEFAULT_GUIDANCE},
        "prompts": [prompt for prompt, _ in PROMPTS],
        "parameters": {
            "unet": sum(p.numel() for p in ema_unet.parameters()),
            "text_encoder": sum(p.numel() for p in ema_text_encoder.parameters()),
            "vae": sum(p.numel() for p in vae.parameters()),
        },
        "training": {
            "steps": steps,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "prompt_drop": prompt_drop,
            "ema_decay": ema_decay,
            "train_text_encoder": train_text_encoder,
            "seed": seed,
            "seconds": seconds,
            "torch": torch.__version__,
        },
    }
    if evaluate:
        rows = guidance_sweep(out_dir, samples=evaluation_samples, seed=seed)
        info["default_call"]["guidance_scale"] = best_guidance(rows)
        info["evaluation"] = rows
    (out_dir / "autoaccel.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
