"""A wheel carries everything autoaccel needs to run: the top-level conf/ and search_spaces/ folders go inside the
package (setup.py), and an installed copy finds them there with no checkout on the path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# benchmarks/ is copied too, so the wheel is seen leaving it out (it runs from a checkout only)
BUILD_INPUTS = (
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "README.md",
    "autoaccel",
    "benchmarks",
    "conf",
    "search_spaces",
)
RESOURCE_DIRS = ("conf", "search_spaces")
pytestmark = [pytest.mark.integration, pytest.mark.slow]  # every test here installs the wheel a subprocess builds


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel ``pip wheel`` builds from a copy of the checkout's sources (the checkout itself is left alone)."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        ignore = {"ignore": shutil.ignore_patterns("__pycache__", "*.pyc")} if (ROOT / name).is_dir() else {}
        copy(ROOT / name, source / name, **ignore)
    dist = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(dist)]
    subprocess.run([*command, str(source)], check=True, capture_output=True, timeout=600)
    (built,) = dist.glob("autoaccel-*.whl")
    return built


def test_every_file_of_conf_and_search_spaces_is_in_the_wheel(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"autoaccel/{path.relative_to(ROOT).as_posix()}"
        for folder in RESOURCE_DIRS
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert expected and expected <= names, sorted(expected - names)
    assert "autoaccel/conf/config.yaml" in names and "autoaccel/search_spaces/sampler.yaml" in names


def test_an_installed_wheel_composes_its_config_and_loads_its_spaces(wheel, tmp_path):
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    script = (
        "import autoaccel, autoaccel.util.resources as r; "
        "from autoaccel.config import compose_config; from autoaccel.space.spaces import bundled_spaces, load_space; "
        "config = compose_config(['budget.trials=2']); "
        "print(autoaccel.__file__); print(r.resource_dir('conf')); print(r.resource_dir('search_spaces')); "
        "print(config.budget.trials, load_space('sampler').name, len(bundled_spaces()))"
    )
    env = {**os.environ, "PYTHONPATH": str(installed)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    module, conf, spaces, summary = done.stdout.strip().splitlines()
    assert Path(module).is_relative_to(installed)
    assert Path(conf) == installed / "autoaccel" / "conf" and Path(spaces) == installed / "autoaccel" / "search_spaces"
    assert summary == f"2 sampler {len(list((ROOT / 'search_spaces').glob('*.yaml')))}"


def test_the_wheel_holds_autoaccel_and_its_test_kit_but_no_benchmarks(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    outside = [name for name in names if not name.startswith(("autoaccel/", "autoaccel-"))]
    assert outside == []
    assert not [name for name in names if name.startswith(("autoaccel/bench/", "benchmarks/"))]
    assert {"autoaccel/testing/pipelines.py", "autoaccel/testing/synthetic.py"} <= set(names)


def test_an_installed_wheel_says_benchmarks_run_from_a_checkout(wheel, tmp_path):
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    env = {**os.environ, "PYTHONPATH": str(installed)}
    script = "from autoaccel.config import compose_config; print('bench' in compose_config([]))"
    composed = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert composed.stdout.strip() == "False", composed.stderr[-2000:]  # a search carries no benchmark settings
    done = subprocess.run(
        [sys.executable, "-m", "autoaccel", "bench", "schedules"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "benchmarks run from a source checkout" in done.stderr
