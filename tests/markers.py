"""Markers given by what a test uses, so none is forgotten: ``postgres`` on every test that takes the
``postgres_url`` fixture (it needs the server), ``integration`` on every test that takes ``processes`` (it starts
processes). The other markers are written on the tests; all four are registered in pyproject.toml, whose
``--strict-markers`` refuses any other name."""

from __future__ import annotations

import pytest

MARKERS = ("slow", "integration", "postgres", "gpu")
MARKER_OF_FIXTURE = {"postgres_url": "postgres", "processes": "integration"}


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in MARKER_OF_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None:
                item.add_marker(marker)
