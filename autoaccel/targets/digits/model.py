"""The embedded default target: the digits teacher and its classifier, shipped inside the package."""

from __future__ import annotations

from pathlib import Path

from autoaccel.targets.base import QualityReference, Target
from autoaccel.targets.digits.features import DIGITS_EXTRACTOR

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def teacher_dir() -> Path:
    return WEIGHTS_DIR / "teacher"


def classifier_weights_path() -> Path:
    return WEIGHTS_DIR / "classifier.safetensors"


def load_digits_target(device: str = "cpu") -> Target:
    """The digits teacher, scored against all 1,797 real digits with the classifier's features."""
    from autoaccel.errors import TargetError
    from autoaccel.imaging import to_uint8
    from autoaccel.targets.digits.data import load_digits_tensors
    from autoaccel.targets.loader import load_pipeline_folder

    if not (teacher_dir() / "model_index.json").exists():
        raise TargetError(f"the embedded model is missing from {teacher_dir()}; run python -m autoaccel train-teacher")
    target = load_pipeline_folder(teacher_dir(), device=device, name="digits")
    real_images, _ = load_digits_tensors()
    target.real_images = to_uint8(real_images)
    target.quality = QualityReference(
        extractor=DIGITS_EXTRACTOR,
        kind="real-data",
        description="FID/KID against all 1,797 real digits, with the 64-d features of autoaccel's digit classifier",
    )
    return target
