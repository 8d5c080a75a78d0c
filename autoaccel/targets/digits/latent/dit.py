"""Trains the class-conditional digits DiT: a small diffusion transformer on the VAE's 4x4x4 latents.

Run with ``python -m autoaccel train-latent-models`` (VAE first, then this), or ``train_dit(out_dir)`` on the
committed VAE. Deterministic for its seed on one machine. The result is a genuine ``DiTPipeline`` folder:
``pipe(class_labels=[7])`` works with plain diffusers, 50 DDIM steps and the guidance scale stored in
``autoaccel.json`` (``default_call``), chosen by the guidance sweep at the end of training.

``DiTPipeline`` guides with class id 1000 as the null class (it was written for ImageNet), so the label table
has 1001 rows (``num_embeds_ada_norm=1000``): rows 0-9 are the digits, row 1000 the dropped label, and the
rows in between are never used.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from autoaccel.targets.digits.data import NUM_CLASSES
from autoaccel.targets.digits.latent.evaluate import best_guidance, guidance_sweep
from autoaccel.targets.digits.latent.images import load_digits_16
from autoaccel.targets.digits.latent.prompts import DIGIT_WORDS
from autoaccel.targets.digits.latent.t2i import default_vae_dir
from autoaccel.targets.digits.latent.training import (
    add_noise,
    build_sampling_scheduler,
    seconds_since,
    warmup_cosine,
)
from autoaccel.targets.digits.latent.vae import LATENT_CHANNELS, LATENT_SIZE, encode_digits, load_vae
from autoaccel.util.training import clipped_step, ema_update

NULL_CLASS = 1000  # hard-coded in DiTPipeline.__call__
DIFFUSERS_DEFAULT_GUIDANCE = 4.0  # DiTPipeline's own default, kept when no sweep is run
ID2LABEL = dict(enumerate(DIGIT_WORDS))


def build_transformer(width: int = 96, num_layers: int = 4, num_heads: int = 4, patch_size: int = 1):
    """A DiT over 16 latent tokens (patch 1) with adaLN-Zero conditioning, initialised as in the DiT paper:
    every block's modulation and the output layer start at zero, so each block starts as the identity."""
    from diffusers import DiTTransformer2DModel

    transformer = DiTTransformer2DModel(
        num_attention_heads=num_heads,
        attention_head_dim=width // num_heads,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,  # epsilon only: no learned variance channels
        num_layers=num_layers,
        sample_size=LATENT_SIZE,
        patch_size=patch_size,
        num_embeds_ada_norm=NULL_CLASS,
        norm_type="ada_norm_zero",
    )
    with torch.no_grad():
        for block in transformer.transformer_blocks:
            block.norm1.linear.weight.zero_()
            block.norm1.linear.bias.zero_()
        for layer in (transformer.proj_out_1, transformer.proj_out_2):
            layer.weight.zero_()
            layer.bias.zero_()
    return transformer


def train_dit(
    out_dir: Path,
    seed: int = 0,
    *,
    vae_dir: Path | None = None,
    steps: int = 4000,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    label_drop: float = 0.1,
    ema_decay: float = 0.999,
    width: int = 96,
    num_layers: int = 4,
    num_heads: int = 4,
    patch_size: int = 1,
    evaluate: bool = True,
    evaluation_samples: int = 512,
    log_every: int = 100,
) -> dict:
    """Trains on the VAE's latents of all digits, labels dropped to the null class ``label_drop`` of the time,
    saves a DiTPipeline folder, then (``evaluate``) sweeps the guidance scale and stores the best."""
    from diffusers import DiTPipeline

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    vae = load_vae(vae_dir or default_vae_dir())
    images, labels = load_digits_16()
    latents = encode_digits(vae, images)
    transformer = build_transformer(width, num_layers, num_heads, patch_size)
    # eval mode throughout: the model has no dropout, and in train mode diffusers' LabelEmbedding would drop
    # labels a second time, with the global generator; here the drop is explicit and seeded
    transformer.eval()
    ema_transformer = copy.deepcopy(transformer).requires_grad_(False)
    scheduler = build_sampling_scheduler()
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=learning_rate, weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps))
    started = time.perf_counter()
    running_loss = 0.0
    for step in range(steps):
        index = torch.randint(0, len(latents), (batch_size,), generator=generator)
        class_labels = labels[index].clone()
        class_labels[torch.rand(batch_size, generator=generator) < label_drop] = NULL_CLASS
        noisy, noise, timesteps = add_noise(latents[index], scheduler.alphas_cumprod, generator)
        prediction = transformer(noisy, timestep=timesteps, class_labels=class_labels).sample
        loss = F.mse_loss(prediction, noise)
        clipped_step(optimizer, loss, transformer)
        lr_schedule.step()
        ema_update(ema_transformer, transformer, ema_decay, step)
        running_loss += loss.item()
        if (step + 1) % log_every == 0:
            print(
                f"dit step {step + 1}/{steps}  loss {running_loss / log_every:.4f}  {seconds_since(started):.0f}s",
                flush=True,
            )
            running_loss = 0.0
    seconds = seconds_since(started)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = DiTPipeline(transformer=ema_transformer, vae=vae, scheduler=scheduler, id2label=ID2LABEL)
    # DiTPipeline does not save id2label itself; in model_index.json (as in facebook/DiT-XL-2-256) it is passed
    # back to __init__ on loading, so pipe.get_label_ids(["seven"]) works on the loaded folder
    pipe.register_to_config(id2label={str(key): value for key, value in ID2LABEL.items()})
    pipe.save_pretrained(out_dir)
    info = {
        "name": "digits_dit",
        "num_classes": NUM_CLASSES,
        "null_class": NULL_CLASS,
        "id2label": {str(key): value for key, value in ID2LABEL.items()},
        "default_call": {"num_inference_steps": 50, "guidance_scale": DIFFUSERS_DEFAULT_GUIDANCE},
        "parameters": {
            "transformer": sum(p.numel() for p in ema_transformer.parameters()),
            "vae": sum(p.numel() for p in vae.parameters()),
        },
        "training": {
            "steps": steps,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "label_drop": label_drop,
            "ema_decay": ema_decay,
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
