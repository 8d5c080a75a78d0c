"""The latent models' autoencoder: a small diffusers ``AutoencoderKL`` from 16x16 digits to 4x4x4 latents.

Retrain with ``python -m autoaccel train-latent-models`` (which trains this first, then the two diffusion models
on its latents), or alone with ``train_vae(out_dir)``. Deterministic for its seed on one machine. The saved
config's ``scaling_factor`` is 1/std of the posterior means over all digits, as in Stable Diffusion, so the
diffusion models see latents of about unit variance.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from autoaccel.targets.digits.data import split_indices
from autoaccel.targets.digits.latent.evaluate import round_trip_accuracy, score_images
from autoaccel.targets.digits.latent.images import LATENT_IMAGE_SIZE, load_digits_16
from autoaccel.targets.digits.latent.training import seconds_since, warmup_cosine
from autoaccel.util.training import clipped_step, ema_update

LATENT_CHANNELS = 4
LATENT_SIZE = 4  # 16x16 -> 4x4: three blocks, two downsamplings


def build_vae(block_out_channels: tuple[int, ...] = (16, 32, 32), norm_num_groups: int = 8):
    """About 0.24M parameters: small enough that both pipelines can each carry a copy."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=norm_num_groups,
        sample_size=LATENT_IMAGE_SIZE,
    )


@torch.no_grad()
def encode_digits(vae, images16: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Posterior means times ``scaling_factor``: the deterministic latents the diffusion models learn."""
    chunks = [
        vae.encode(images16[start : start + batch_size]).latent_dist.mean
        for start in range(0, len(images16), batch_size)
    ]
    return torch.cat(chunks) * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(vae, scaled_latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Scaled latents back to 16x16 images in [-1, 1] (clamped, as the pipelines clamp)."""
    chunks = [
        vae.decode(scaled_latents[start : start + batch_size] / vae.config.scaling_factor).sample
        for start in range(0, len(scaled_latents), batch_size)
    ]
    return torch.cat(chunks).clamp(-1, 1)


def train_vae(
    out_dir: Path,
    seed: int = 0,
    *,
    steps: int = 1000,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    kl_weight: float = 1e-4,
    ema_decay: float = 0.995,
    block_out_channels: tuple[int, ...] = (16, 32, 32),
    norm_num_groups: int = 8,
    log_every: int = 100,
) -> dict:
    """Trains on all 1,797 digits (mean squared error + ``kl_weight`` x KL per latent element) and saves the
    EMA weights with ``save_pretrained``; the info dict (also ``out_dir/autoaccel.json``) holds how well the
    classifier still reads reconstructed digits and their FID, the floor for both diffusion models."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = load_digits_16()
    vae = build_vae(block_out_channels, norm_num_groups)
    ema_vae = copy.deepcopy(vae).requires_grad_(False)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps))
    latent_elements = LATENT_CHANNELS * LATENT_SIZE * LATENT_SIZE
    started = time.perf_counter()
    running = torch.zeros(2)
    for step in range(steps):
        batch = images[torch.randint(0, len(images), (batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        decoded = vae.decode(posterior.sample(generator=generator)).sample
        reconstruction = F.mse_loss(decoded, batch)
        kl = posterior.kl().mean() / latent_elements
        loss = reconstruction + kl_weight * kl
        clipped_step(optimizer, loss, vae)
        lr_schedule.step()
        ema_update(ema_vae, vae, ema_decay, step)
        running += torch.tensor([reconstruction.item(), kl.item()])
        if (step + 1) % log_every == 0:
            mse, kl_mean = (running / log_every).tolist()
            print(
                f"vae step {step + 1}/{steps}  mse {mse:.5f}  kl {kl_mean:.3f}  {seconds_since(started):.0f}s",
                flush=True,
            )
            running.zero_()
    seconds = seconds_since(started)

    ema_vae.eval()
    with torch.no_grad():
        posteriors = [ema_vae.encode(images[start : start + 256]).latent_dist for start in range(0, len(images), 256)]
    raw_latents = torch.cat([posterior.mean for posterior in posteriors])
    posterior_std = torch.cat([posterior.std for posterior in posteriors])
    scaling_factor = float(1.0 / raw_latents.std())
    ema_vae.register_to_config(scaling_factor=scaling_factor)
    latents = raw_latents * scaling_factor  # what encode_digits gives from the saved model
    reconstructed = decode_latents(ema_vae, latents)
    scores = score_images(reconstructed, labels)
    _, held_out = split_indices(len(images), held_out_fraction=0.2, seed=0)  # the classifier's held-out digits
    held_out_scores = score_images(reconstructed[held_out], labels[held_out])
    round_trip = round_trip_accuracy()
    print(f"classifier on real held-out digits: {json.dumps(round_trip)}", flush=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ema_vae.save_pretrained(out_dir)
    info = {
        "name": "digits_vae",
        "scaling_factor": round(scaling_factor, 6),
        "reconstruction": {
            "mse": round(F.mse_loss(reconstructed, images).item(), 6),
            "classifier_accuracy": scores["adherence"],
            "classifier_held_out_accuracy": held_out_scores["adherence"],
            "fid": scores["fid"],
            "scaled_latent_std": round(latents.std().item(), 4),
            "scaled_latent_mean": round(latents.mean().item(), 4),
            "posterior_std_over_latent_std": round((posterior_std.mean() / raw_latents.std()).item(), 4),
        },
        "classifier_on_real": round_trip,
        "parameters": sum(p.numel() for p in ema_vae.parameters()),
        "training": {
            "steps": steps,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "kl_weight": kl_weight,
            "ema_decay": ema_decay,
            "seed": seed,
            "seconds": seconds,
            "torch": torch.__version__,
        },
    }
    (out_dir / "autoaccel.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"vae: {json.dumps(info['reconstruction'])}", flush=True)
    return info


def load_vae(folder: Path):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(Path(folder)).eval().requires_grad_(False)
