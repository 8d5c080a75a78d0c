"""A small digit classifier whose penultimate layer is the FID/KID feature space for the embedded model.

Inception weights cannot be downloaded here, and Inception features of 8x8 digits would say little anyway;
a classifier trained on the same digits sees what makes a digit a digit. Run ``python -m autoaccel
train-classifier``; the held-out accuracy is printed and stored beside the weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from autoaccel.progress import Progress
from autoaccel.targets.digits.data import NUM_CLASSES, load_digits_tensors, split_indices

FEATURE_DIM = 64


class DigitClassifier(nn.Module):
    """Conv net on (N, 1, 8, 8) images in [-1, 1]; ``features`` is the 64-d embedding used for FID."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(128, FEATURE_DIM),
            nn.GELU(),
        )
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def train_classifier(
    out_path: Path,
    *,
    epochs: int = 40,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    held_out_fraction: float = 0.2,
    seed: int = 0,
) -> dict:
    """Trains on 80% of the digits with small random shifts, reports accuracy on the other 20%."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = load_digits_tensors()
    train_index, held_out_index = split_indices(len(images), held_out_fraction, seed)
    model = DigitClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    steps_per_epoch = (len(train_index) + batch_size - 1) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=epochs * steps_per_epoch)
    started = time.perf_counter()
    progress = Progress("classifier training", epochs, "epochs", log=lambda line: print(line, flush=True))
    for epoch in range(epochs):
        model.train()
        order = train_index[torch.randperm(len(train_index), generator=generator)]
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
            batch_images = torch.roll(images[batch], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(batch_images), labels[batch], label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        progress(epoch + 1)
    progress.close()
    model.eval()
    with torch.no_grad():
        predicted = model(images[held_out_index]).argmax(dim=1)
    accuracy = (predicted == labels[held_out_index]).float().mean().item()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(out_path))
    info = {
        "held_out_accuracy": round(accuracy, 4),
        "held_out_count": len(held_out_index),
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": epochs,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
    }
    out_path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"classifier held-out accuracy {accuracy:.4f} on {len(held_out_index)} digits", flush=True)
    return info


def load_classifier(path: Path) -> DigitClassifier:
    from safetensors.torch import load_file

    model = DigitClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)
