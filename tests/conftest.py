"""Shared fixtures: a tiny pipeline folder built by the tests, and fast search settings for it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# the ``processes`` fixture (every test that starts processes ends them); markers given by the fixtures a test uses
pytest_plugins = ["tests.processes", "tests.markers"]

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("WANDB_MODE", "disabled")

MEMORY_FOLDER = Path("/dev/shm")
MEMORY_NEEDED = 4 * 1024**3  # free bytes the memory file system must have (the whole suite writes a few hundred MB)


def _temporary_folders_in_memory() -> None:
    """Puts the tests' temporary folders (``tmp_path``: run folders, ledgers, caches) on the memory file system
    where there is one with room, unless ``PYTEST_DEBUG_TEMPROOT`` already says where: a tiny search records tens of
    SQLite commits per trial, each an fsync that takes 5-30 ms on a disk and nothing in memory."""
    if os.environ.get("PYTEST_DEBUG_TEMPROOT") or not os.access(MEMORY_FOLDER, os.W_OK):
        return
    if shutil.disk_usage(MEMORY_FOLDER).free >= MEMORY_NEEDED:
        os.environ["PYTEST_DEBUG_TEMPROOT"] = str(MEMORY_FOLDER)


_temporary_folders_in_memory()


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    from autoaccel.testing.pipelines import build_tiny_pipeline_folder

    return build_tiny_pipeline_folder(tmp_path_factory.mktemp("tiny") / "pipeline")


@pytest.fixture(scope="module")
def tiny_target(tiny_pipeline_dir):
    """The tiny pipeline loaded once per module (a test module whose tests change it defines its own)."""
    from autoaccel.targets.loader import load_pipeline_folder

    return load_pipeline_folder(tiny_pipeline_dir)


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def fast_overrides(tiny_pipeline_dir, shared_cache_dir, tmp_path):
    """Overrides that take the tiny pipeline through a whole search in seconds."""
    return fast_overrides_for(tiny_pipeline_dir, shared_cache_dir, tmp_path / "reports")


def fast_overrides_for(tiny_pipeline_dir: Path, cache_dir: Path, reports_dir: Path) -> list[str]:
    """``fast_overrides`` writing its run folders under ``reports_dir``: for a run that a module's tests share
    (a module-scoped fixture has no ``tmp_path``)."""
    return [
        "target=pipeline",
        f"target.path={tiny_pipeline_dir}",
        "target.device=cpu",
        f"report.dir={reports_dir}",
        f"cache_dir={cache_dir}",
        "quality.samples=48",
        "quality.chunk_size=48",
        "quality.fid_std_rounds=4",
        "cost.batch_size=4",
        "cost.warmup=0",
        "cost.repeats=1",
        "budget.warm_start_steps=[4]",
        "report.grid_images=8",
        "quiet=true",
    ]


@pytest.fixture
def forbid_training(monkeypatch):
    """Call it once a model is trained: from then on any student training, recovery or kept-student lookup fails
    the test, so applying an artifact is shown to rebuild the model without training it again."""
    import autoaccel.distill.consistency as consistency
    import autoaccel.distill.progressive as progressive
    import autoaccel.distill.recovery as recovery
    import autoaccel.distill.students as students
    import autoaccel.techniques.pruning as pruning

    def fail(*args, **kwargs):
        pytest.fail("applying an artifact must not train")

    def forbid() -> None:
        for module, name in (
            (students, "kept_student"),
            (consistency, "_train"),
            (progressive, "_train_round"),
            (recovery, "recover"),
            (pruning, "recover"),
        ):
            monkeypatch.setattr(module, name, fail)

    return forbid


@pytest.fixture
def refuse_large_unets(monkeypatch):
    """UNet2DModel.from_config fails for a config with 4096 channels (what the crafted files of the hardening tests
    name), so code that would build one from a file fails at once instead of allocating gigabytes; tiny models
    still load."""
    import diffusers

    real = diffusers.UNet2DModel.from_config.__func__

    def guarded(cls, config=None, *args, **kwargs):
        if 4096 in (dict(config or {}).get("block_out_channels") or ()):
            raise AssertionError("a class a file names must not be built before it is checked")
        return real(cls, config, *args, **kwargs)

    monkeypatch.setattr(diffusers.UNet2DModel, "from_config", classmethod(guarded))


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL database for the shared-study tests: ``AUTOACCEL_TEST_POSTGRES`` (``.ci/run`` starts one).

    Skipped where none is configured, except under CI, where a missing server is an error, not a skip.
    """
    url = os.environ.get("AUTOACCEL_TEST_POSTGRES")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI must provide AUTOACCEL_TEST_POSTGRES (see .ci/run)")
        pytest.skip("no PostgreSQL server: set AUTOACCEL_TEST_POSTGRES=postgresql://user:password@host/db")
    return url
