"""Where the embedded digits models' weights are: inside the package, beside this module."""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def teacher_dir() -> Path:
    return WEIGHTS_DIR / "teacher"


def classifier_weights_path() -> Path:
    return WEIGHTS_DIR / "classifier.safetensors"
