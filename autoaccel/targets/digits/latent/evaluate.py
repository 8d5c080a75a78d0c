"""Scores the latent digit models the way a user would run them: the pipeline's own call, plain diffusers.

``adherence`` is how often autoaccel's digit classifier reads the requested digit; ``fid`` is the Frechet
distance between the classifier's 64-d features of the samples (pooled to 8x8) and of all 1,797 real digits.
Both are computed here from feature means and covariances (numpy/scipy), independent of torch-fidelity.
Run ``python -m autoaccel.targets.digits.latent.evaluate FOLDER`` for the guidance sweep of one folder.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from autoaccel.targets.digits.classifier import load_classifier
from autoaccel.targets.digits.data import NUM_CLASSES, load_digits_tensors, split_indices
from autoaccel.targets.digits.latent.images import to_classifier_resolution, upsample_to_16
from autoaccel.targets.digits.latent.prompts import prompts_for_digits
from autoaccel.targets.digits.weights import classifier_weights_path

SWEEP_GUIDANCE = (1.0, 2.0, 4.0, 7.5)


@lru_cache(maxsize=1)
def _classifier():

    return load_classifier(classifier_weights_path())


@lru_cache(maxsize=1)
def real_feature_statistics() -> tuple[np.ndarray, np.ndarray]:

    images8, _ = load_digits_tensors()
    return _statistics(_classifier().features(images8))


def _statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    values = features.double().numpy()
    return values.mean(axis=0), np.cov(values, rowvar=False)


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    from scipy import linalg

    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # the usual FID remedy for a near-singular product
        offset = np.eye(len(cov_a)) * 1e-6
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = covmean.real
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


@torch.no_grad()
def score_images(images16: torch.Tensor, requested: torch.Tensor) -> dict:
    """``adherence`` and ``fid`` of (N, 1, 16, 16) images in [-1, 1] generated for the ``requested`` digits."""
    images8 = to_classifier_resolution(images16.float().clamp(-1, 1))
    classifier = _classifier()
    features = classifier.features(images8)
    predicted = classifier.head(features).argmax(dim=1)
    adherence = (predicted == requested).float().mean().item()
    fid = frechet_distance(*_statistics(features), *real_feature_statistics())
    return {"adherence": round(adherence, 4), "fid": round(fid, 3), "samples": len(images16)}


def round_trip_accuracy() -> dict:
    """The classifier's accuracy on its own held-out digits, direct and after 16x16 and back: equal, since
    pooling inverts the nearest-neighbour upsampling exactly."""
    images8, labels = load_digits_tensors()
    _, held_out = split_indices(len(images8), held_out_fraction=0.2, seed=0)
    with torch.no_grad():
        direct = _classifier()(images8[held_out]).argmax(dim=1)
        round_trip = _classifier()(to_classifier_resolution(upsample_to_16(images8[held_out]))).argmax(dim=1)
    return {
        "held_out_accuracy": round((direct == labels[held_out]).float().mean().item(), 4),
        "round_trip_held_out_accuracy": round((round_trip == labels[held_out]).float().mean().item(), 4),
    }


def balanced_digits(samples: int) -> torch.Tensor:
    """0, 1, ..., 9, 0, 1, ...: every digit requested equally often (to within one)."""
    return torch.arange(samples) % NUM_CLASSES


def load_pipeline(folder: Path):
    """The folder's own pipeline class (StableDiffusionPipeline or DiTPipeline), fp32 on the CPU."""
    import diffusers

    index = json.loads((Path(folder) / "model_index.json").read_text())
    pipeline_class = getattr(diffusers, index["_class_name"])
    pipe = pipeline_class.from_pretrained(Path(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(
    pipe, digits: torch.Tensor, *, seed: int, steps: int, guidance: float, batch_size: int = 128
) -> torch.Tensor:
    """Images in [-1, 1] from the pipeline's own ``__call__``: prompts for a text-to-image pipeline, class
    labels for a class-conditional one; one seeded generator drawn from batch after batch."""
    from diffusers import DiTPipeline

    generator = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, len(digits), batch_size):
        wanted = digits[start : start + batch_size].tolist()
        call = dict(num_inference_steps=steps, guidance_scale=guidance, generator=generator, output_type="pt")
        if isinstance(pipe, DiTPipeline):
            images = pipe(class_labels=wanted, **call).images
        else:
            images = pipe(prompt=prompts_for_digits(wanted, offset=start), **call).images
        batches.append(torch.as_tensor(images).float() * 2 - 1)
    return torch.cat(batches)


def default_guidance(folder: Path) -> float:
    """``default_call.guidance_scale`` from the folder's ``autoaccel.json``."""
    info = json.loads((Path(folder) / "autoaccel.json").read_text())
    return float(info["default_call"]["guidance_scale"])


def evaluate_folder(
    folder: Path, samples: int = 512, seed: int = 0, steps: int = 50, guidance: float | None = None, pipe=None
) -> dict:
    """Adherence and FID of ``samples`` images, digits balanced, at ``guidance`` (default: the folder's own)."""
    folder = Path(folder)
    guidance = default_guidance(folder) if guidance is None else float(guidance)
    pipe = pipe or load_pipeline(folder)
    digits = balanced_digits(samples)
    images = generate(pipe, digits, seed=seed, steps=steps, guidance=guidance)
    return {"guidance": guidance, "steps": steps, "seed": seed, **score_images(images, digits)}


def guidance_sweep(
    folder: Path, guidances: tuple[float, ...] = SWEEP_GUIDANCE, samples: int = 512, seed: int = 0, steps: int = 50
) -> list[dict]:
    pipe = load_pipeline(Path(folder))
    return [evaluate_folder(folder, samples, seed, steps, guidance, pipe=pipe) for guidance in guidances]


def best_guidance(rows: list[dict], adherence_tolerance: float = 0.01) -> float:
    """The default call's guidance scale: adherence first (the prompt or label must be obeyed), then FID, i.e. the
    lowest FID among the scales within ``adherence_tolerance`` of the best adherence of the sweep."""
    best_adherence = max(row["adherence"] for row in rows)
    candidates = [row for row in rows if row["adherence"] >= best_adherence - adherence_tolerance]
    return min(candidates, key=lambda row: row["fid"])["guidance"]


if __name__ == "__main__":
    for row in guidance_sweep(Path(sys.argv[1])):
        print(json.dumps(row), flush=True)
