"""The markers: the four registered ones and no other name; the default run leaves out nothing that runs on a CPU;
a test that takes the PostgreSQL server or starts processes is marked so without anyone writing it."""

from __future__ import annotations

import json
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the TOML reader pytest itself uses there
    import tomli as tomllib

from tests.markers import MARKERS

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]


def _registered(lines: list[str]) -> set[str]:
    return {line.split(":", 1)[0].strip() for line in lines}


def test_the_four_markers_are_registered_strictly_and_the_default_run_deselects_none(pytestconfig):
    assert _registered(pytestconfig.getini("markers")) >= set(MARKERS)
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert _registered(options["markers"]) == set(MARKERS)
    assert options["addopts"].split() == ["--strict-markers"]  # no -m: the README's command runs every test


def _project_options(pytester, monkeypatch) -> None:
    """The project's own markers and options, for a run in ``pytester``'s folder (without the plugins installed
    packages bring: each run would import them again)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    markers = ", ".join(json.dumps(line) for line in options["markers"])  # a JSON string is a TOML string
    pytester.makepyprojecttoml(
        f"[tool.pytest.ini_options]\nmarkers = [{markers}]\naddopts = {json.dumps(options['addopts'])}\n"
    )


def test_a_test_taking_postgres_url_or_processes_is_marked_for_it(pytester, monkeypatch):
    _project_options(pytester, monkeypatch)
    pytester.makeconftest(
        """
        import pytest

        pytest_plugins = ["tests.markers"]


        @pytest.fixture
        def postgres_url():
            return "postgresql://user:password@host/db"


        @pytest.fixture
        def processes():
            return []
        """
    )
    pytester.makepyfile(
        """
        def test_shared_study(postgres_url):
            pass


        def test_starts_a_worker(processes):
            pass


        def test_neither():
            pass
        """
    )
    items, _ = pytester.inline_genitems()  # collected as a run collects them, markers given
    markers = {item.name: {marker.name for marker in item.iter_markers()} for item in items}
    assert markers == {
        "test_shared_study": {"postgres"},
        "test_starts_a_worker": {"integration"},
        "test_neither": set(),
    }
    pytester.runpytest("-m", "not postgres").assert_outcomes(passed=2, deselected=1)  # marked before -m selects


def test_a_marker_that_is_not_registered_is_an_error(pytester, monkeypatch):
    _project_options(pytester, monkeypatch)
    pytester.makepyfile(
        """
        import pytest


        @pytest.mark.integraton
        def test_misspelt():
            pass
        """
    )
    result = pytester.runpytest()
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*'integraton' not found in `markers` configuration option*"])
