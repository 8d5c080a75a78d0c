"""Recipes written by earlier autoaccel releases keep applying, image for image: the folders under
``tests/fixtures/recipes/`` hold recipes (with their artifacts) that autoaccel wrote before its plans became
typed, and the images ``apply`` made from each then. ``tests/fixtures/recipes/README.md`` says how they were made."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from autoaccel.cli.main import main

FIXTURES = Path(__file__).parent / "fixtures" / "recipes"
MANIFEST = yaml.safe_load((FIXTURES / "manifest.yaml").read_text())
RECIPES = sorted(FIXTURES.glob("*/recipes/*.yaml"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """The tiny pipelines the folder recipes were written for, built again from their seeds."""
    from autoaccel.testing.pipelines import build_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-models")
    return {
        study: build_tiny_pipeline(entry["tiny"], root / study, seed=entry["seed"])
        for study, entry in MANIFEST["studies"].items()
        if "tiny" in entry
    }


def pixels(folder: Path) -> dict[str, np.ndarray]:
    return {path.name: np.asarray(Image.open(path)) for path in sorted(folder.glob("*.png"))}


@pytest.mark.parametrize("recipe", RECIPES, ids=[f"{path.parts[-3]}/{path.stem}" for path in RECIPES])
def test_a_recipe_written_before_typed_plans_applies_to_the_same_images(recipe, tiny_models, tmp_path, capsys):
    study = recipe.parts[-3]
    model = ["--model", str(tiny_models[study])] if study in tiny_models else []
    out = tmp_path / "images"
    assert main(["apply", str(recipe), "--out", str(out), "--n", "4", "--device", "cpu", *model]) == 0, (
        capsys.readouterr().err
    )
    expected = pixels(recipe.parents[1] / "images" / recipe.stem)
    produced = pixels(out)
    assert expected and produced.keys() == expected.keys()
    for name, image in expected.items():
        np.testing.assert_array_equal(produced[name], image, err_msg=f"{recipe.name}: {name} differs")


def test_the_fixtures_cover_every_technique_and_a_trained_artifact():
    """The compatibility test is only as good as what the fixtures hold."""
    sections = set()
    artifacts = 0
    for path in RECIPES:
        recipe = yaml.safe_load(path.read_text())
        for name, section in recipe["techniques"].items():
            config = section["config"]
            active = config.get("enabled", True) and config.get("method", "x") != "none" and config.get("ratio", 1)
            sections.add(name) if active else None
            artifacts += "artifact" in section
    assert {"distillation", "pruning", "caching", "solver", "timesteps"} <= sections
    assert artifacts >= 2
