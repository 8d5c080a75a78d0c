"""The embedded default target: the digits teacher and its classifier, shipped inside the package."""

from __future__ import annotations

from pathlib import Path

from autoaccel.errors import TargetError
from autoaccel.metrics.adherence import ADHERENCE_KEY, CONDITION_CLASSES_KEY
from autoaccel.targets.base import QualityReference, Target
from autoaccel.targets.digits.classifier import load_classifier
from autoaccel.targets.digits.data import load_digits_tensors
from autoaccel.targets.digits.features import DIGITS16_EXTRACTOR, DIGITS_EXTRACTOR
from autoaccel.targets.digits.latent.images import load_digits_16, to_classifier_resolution
from autoaccel.targets.digits.latent.prompts import PROMPTS
from autoaccel.targets.digits.weights import WEIGHTS_DIR, classifier_weights_path, teacher_dir
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.util.imaging import to_uint8


def load_digits_target(device: str = "cpu") -> Target:
    """The digits teacher, scored against the 1,797 real digits (less those held out for the FID floor) with the
    classifier's features."""
    if not (teacher_dir() / "model_index.json").exists():
        raise TargetError(f"the embedded model is missing from {teacher_dir()}; run python -m autoaccel train-teacher")
    target = load_pipeline_folder(teacher_dir(), device=device, name="digits")
    real_images, real_labels = load_digits_tensors()
    target.real_images, target.real_labels = to_uint8(real_images), real_labels  # labels: a class-matched floor
    target.quality = QualityReference(
        extractor=DIGITS_EXTRACTOR,
        kind="real-data",
        description="FID/KID against the 1,797 real digits (less those held out for the FID floor), with the 64-d "
        "features of autoaccel's digit classifier; adherence: the share of images it reads as the requested digit",
    )
    _read_digits(target, list(range(target.num_classes or 0)), resize=None)
    return target


def t2i_dir() -> Path:
    return WEIGHTS_DIR / "t2i"


def dit_dir() -> Path:
    return WEIGHTS_DIR / "dit"


def load_digits_t2i_target(device: str = "cpu", prompts: str | None = None) -> Target:
    """The embedded latent text-to-image digits model (a StableDiffusionPipeline folder) on its bundled prompts,
    scored against the real digits with the classifier's features, and by prompt adherence."""
    target = _load_latent(t2i_dir(), "digits_t2i", device, prompts or "digits", "train-latent-models")
    digit_of = {prompt: digit for prompt, digit in PROMPTS}
    classes = [digit_of.get(prompt) for prompt in target.conditions.names]
    _score_against_digits(target, classes)
    return target


def load_digits_dit_target(device: str = "cpu") -> Target:
    """The embedded class-conditional digits diffusion transformer (a DiTPipeline folder) on the VAE's latents."""
    target = _load_latent(dit_dir(), "digits_dit", device, None, "train-latent-models")
    _score_against_digits(target, list(range(target.condition_count or 0)))
    return target


def _load_latent(folder: Path, name: str, device: str, prompts: str | None, command: str) -> Target:

    if not (folder / "model_index.json").exists():
        raise TargetError(f"the embedded model {name} is missing from {folder}; run python -m autoaccel {command}")
    return load_pipeline_folder(folder, device=device, name=name, prompts=prompts)


def _score_against_digits(target: Target, classes: list[int | None]) -> None:
    """FID/KID against the 1,797 real digits (16x16; less those held out for the FID floor) with the classifier's
    features, and adherence: the share of images the classifier reads as the digit their class or prompt asks
    for."""
    real_images, real_labels = load_digits_16()
    target.real_images, target.real_labels = to_uint8(real_images), real_labels
    target.quality = QualityReference(
        extractor=DIGITS16_EXTRACTOR,
        kind="real-data",
        description="FID/KID against the 1,797 real digits (16x16), with the 64-d features of autoaccel's digit "
        "classifier; adherence: the share of images it reads as the requested digit",
    )
    _read_digits(target, classes, resize=to_classifier_resolution)


def _read_digits(target: Target, classes: list[int | None], resize=None) -> None:
    """Adherence for a digits model: the classifier reads each image (``resize``d to its 8x8 input) as a digit,
    compared with ``classes``: the digit each condition index asks for (None: a condition that asks for none)."""
    import torch

    classifier = load_classifier(classifier_weights_path())

    def predict_digit(images: torch.Tensor) -> torch.Tensor:
        images = images.float().cpu().clamp(-1, 1)
        with torch.no_grad():
            return classifier(resize(images) if resize is not None else images).argmax(dim=1)

    target.metadata[ADHERENCE_KEY] = predict_digit
    target.metadata[CONDITION_CLASSES_KEY] = torch.tensor([-1 if digit is None else digit for digit in classes])
