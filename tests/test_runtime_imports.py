"""A search runs the product alone: no trainer of the embedded models, no benchmark and no test kit is imported
on its way (they stay installable commands and modules, off the runtime path)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

OFF_THE_RUNTIME_PATH = (
    "autoaccel.targets.digits.teacher",
    "autoaccel.targets.digits.classifier_training",
    "autoaccel.targets.digits.latent.train",
    "autoaccel.targets.digits.latent.training",
    "autoaccel.testing",
    "benchmarks",
)
TRAINERS = ("train_teacher", "train_classifier", "train_latent_models", "train_vae", "train_t2i", "train_dit")


@pytest.mark.slow
@pytest.mark.integration
def test_a_search_and_the_embedded_targets_import_no_trainer_benchmark_or_test_kit(fast_overrides):
    """A whole search (the tiny pipeline), then the three embedded targets loaded as a search loads them (their
    classifier included): none of it brings in training code, a benchmark or autoaccel.testing."""
    script = (
        "import json, sys\n"
        "from autoaccel.cli.main import main\n"
        "from autoaccel.targets.digits.model import load_digits_dit_target, load_digits_t2i_target, "
        "load_digits_target\n"
        f"code = main(['search', *{fast_overrides!r}, 'budget.trials=1'])\n"
        "for load in (load_digits_target, load_digits_t2i_target, load_digits_dit_target):\n"
        "    load('cpu')\n"
        f"paths = {list(OFF_THE_RUNTIME_PATH)!r}\n"
        "loaded = sorted({m for m in list(sys.modules) for p in paths if m == p or m.startswith(p + '.')})\n"
        f"trainers = sorted(f'{{m}}.{{t}}' for m, module in list(sys.modules.items()) if m.startswith('autoaccel') "
        f"for t in {TRAINERS!r} if hasattr(module, t))\n"
        "print(json.dumps([code, 'autoaccel.targets.digits.classifier' in sys.modules, loaded, trainers]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    code, classifier_loaded, loaded, trainers = json.loads(done.stdout.strip().splitlines()[-1])
    assert code == 0 and classifier_loaded  # the classifier itself is on the runtime path; its training is not
    assert loaded == [] and trainers == []
