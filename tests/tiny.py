"""A tiny seeded class-conditional DDPM pipeline folder, built and saved by the tests (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def build_tiny_pipeline_folder(
    folder: Path, num_train_timesteps: int = 100, seed: int = 0, class_conditional: bool = True
) -> Path:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
        num_class_embeds=4 if class_conditional else None,
    )
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, timestep_spacing="leading", clip_sample=True)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    if class_conditional:
        (folder / "autoaccel.json").write_text(json.dumps({"num_classes": 3, "null_class": 3}))
    return folder
