"""Trains the embedded default model: a small class-conditional DDPM on scikit-learn's digits.

Run with ``python -m autoaccel train-teacher``. Deterministic for its seed on one machine; the result is
written as a diffusers ``DDPMPipeline`` folder (unet + scheduler) so it loads like any user's pipeline.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from autoaccel.targets.digits.data import IMAGE_SIZE, NUM_CLASSES, load_digits_tensors
from autoaccel.util.training import clipped_step, ema_update

NULL_CLASS = NUM_CLASSES  # the extra class a label is dropped to, for classifier-free guidance


def build_unet():
    """The teacher's architecture: 1.1M parameters, three resolutions (8, 4, 2), attention at the two smallest."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=IMAGE_SIZE,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=16,
        num_class_embeds=NUM_CLASSES + 1,
    )


def build_training_scheduler():
    """1000 training timesteps, linear betas, epsilon prediction: the standard DDPM setup."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=False,
        timestep_spacing="trailing",
    )


def train_teacher(
    out_dir: Path,
    *,
    steps: int = 2400,
    batch_size: int = 128,
    learning_rate: float = 1.5e-3,
    label_drop: float = 0.1,
    ema_decay: float = 0.999,
    seed: int = 0,
    log_every: int = 100,
) -> dict:
    """Trains the teacher and saves it as a DDPMPipeline folder with an ``autoaccel.json`` describing it."""
    from diffusers import DDPMPipeline

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = load_digits_tensors()
    unet = build_unet()
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    scheduler = build_training_scheduler()
    alphas_cumprod = scheduler.alphas_cumprod
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))

    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    started = time.perf_counter()
    running_loss = 0.0
    for step in range(steps):
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        clean, class_labels = images[index], labels[index].clone()
        drop = torch.rand(batch_size, generator=generator) < label_drop
        class_labels[drop] = NULL_CLASS
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        abar = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noisy = abar.sqrt() * clean + (1 - abar).sqrt() * noise
        prediction = unet(noisy, timesteps, class_labels=class_labels).sample
        loss = F.mse_loss(prediction, noise)
        clipped_step(optimizer, loss, unet)
        lr_schedule.step()
        ema_update(ema_unet, unet, ema_decay)
        running_loss += loss.item()
        if (step + 1) % log_every == 0:
            elapsed = time.perf_counter() - started
            print(f"step {step + 1}/{steps}  loss {running_loss / log_every:.4f}  {elapsed:.0f}s", flush=True)
            running_loss = 0.0

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    DDPMPipeline(unet=ema_unet.eval(), scheduler=scheduler).save_pretrained(out_dir)
    info = {
        "name": "digits",
        "num_classes": NUM_CLASSES,
        "null_class": NULL_CLASS,
        "training": {
            "steps": steps,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "label_drop": label_drop,
            "ema_decay": ema_decay,
            "seed": seed,
            "seconds": round(time.perf_counter() - started, 1),
            "torch": torch.__version__,
        },
    }
    (out_dir / "autoaccel.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
