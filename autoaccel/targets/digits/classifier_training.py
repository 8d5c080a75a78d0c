"""Trains the digit classifier whose features score the embedded models (``python -m autoaccel train-classifier``).

Kept apart from ``classifier`` (the model and its loader), so a search, which loads the classifier, never imports
training code.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from autoaccel.targets.digits.classifier import DigitClassifier
from autoaccel.targets.digits.data import load_digits_tensors, split_indices
from autoaccel.util.progress import Progress


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
