"""The cache-method registry is the one list of methods: ``caching.method``'s choices, the bundled spaces' method
lists and ``when:`` conditions, cost keys and the benchmark's grids all follow what each method declares."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autoaccel.errors import ConfigError
from autoaccel.techniques.base import get_technique
from autoaccel.techniques.caching import CachingConfig, caching_methods
from autoaccel.techniques.caching.method import CACHE_METHODS, method_names

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"
KNOBS = {"intervals": [2, 3], "depths": [1, 2], "warmups": [0, 1], "strengths": [0.5], "taylor_orders": [1, 2]}


def test_the_method_setting_takes_none_and_every_registered_method():
    assert get_technique("caching").params["method"].choices == method_names()
    assert method_names() == ("none", *(method.name for method in caching_methods()))
    with pytest.raises(ConfigError, match=r"caching\.method='lazy' is not valid; valid: \['none', 'deep'"):
        CachingConfig("lazy")


def _cached_spaces() -> list[Path]:
    return [
        path
        for path in sorted(SPACES.glob("*.yaml"))
        if "caching.method" in yaml.safe_load(path.read_text())["dimensions"]
    ]


@pytest.mark.parametrize("path", _cached_spaces(), ids=lambda path: path.stem)
def test_each_spaces_when_lists_name_exactly_the_methods_that_read_the_setting(path):
    dimensions = yaml.safe_load(path.read_text())["dimensions"]
    searched = dimensions["caching.method"]["choices"]
    assert set(searched) <= set(method_names())
    for key, spec in dimensions.items():
        setting = key.removeprefix("caching.")
        if not key.startswith("caching.") or "caching.method" not in spec.get("when", {}):
            continue
        readers = [name for name in searched if name in CACHE_METHODS and setting in CACHE_METHODS[name].settings]
        assert spec["when"]["caching.method"] == readers, f"{path.name}: {key}"


@pytest.mark.parametrize("name", ["cached", "flow_cached"])
def test_the_cached_spaces_search_every_method(name):
    dimensions = yaml.safe_load((SPACES / f"{name}.yaml").read_text())["dimensions"]
    assert tuple(dimensions["caching.method"]["choices"]) == method_names()


@pytest.mark.parametrize("method", caching_methods(), ids=lambda method: method.name)
def test_each_methods_cost_key_and_bench_rows_name_only_the_settings_it_reads(method):
    config = CachingConfig(method.name, interval=3)
    assert method.cost_key(config) == {
        "method": method.name,
        **{name: getattr(config, name) for name in method.settings},
    }
    rows = method.bench_grid(KNOBS, depth_limit=1)
    assert rows and all(row["caching.method"] == method.name for row in rows)
    label, defaults = method.published_defaults([999.0, 500.0, 50.0], depth_limit=1)
    for row in [*rows, defaults]:
        assert {key.removeprefix("caching.") for key in row} - {"method"} <= set(method.settings)
        CachingConfig(**{key.removeprefix("caching."): value for key, value in row.items()})  # a valid config
    assert label
