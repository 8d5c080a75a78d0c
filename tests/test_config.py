"""Configuration (autoaccel/config/compose.py) and objectives (autoaccel/front/objectives.py)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from autoaccel.config import compose_config
from autoaccel.errors import ConfigError
from autoaccel.front.objectives import DIRECTIONS, objective_directions


def test_defaults():
    config = compose_config()
    assert config.target.name == "digits"
    assert config.target.path is None
    assert config.optimizer.name == "optuna_nsga2"
    assert config.space == "auto"
    assert list(config.objectives) == ["fid", "latency_ms"]
    assert config.budget.trials == 40
    assert config.budget.max_latency_ms is None and config.budget.max_nfe is None
    assert config.optimizer.seed == config.seed == 0


def test_no_overrides_equals_empty_overrides():
    assert OmegaConf.to_container(compose_config(None)) == OmegaConf.to_container(compose_config([]))


def test_typed_override():
    config = compose_config(["budget.trials=7", "budget.max_latency_ms=12.5"])
    assert config.budget.trials == 7 and isinstance(config.budget.trials, int)
    assert config.budget.max_latency_ms == 12.5


@pytest.mark.parametrize("name", ["optuna_tpe", "random", "optuna_nsga2"])
def test_optimizer_group_override(name):
    config = compose_config([f"optimizer={name}"])
    assert config.optimizer.name == name


def test_optimizer_seed_follows_the_top_level_seed():
    assert compose_config(["seed=5"]).optimizer.seed == 5
    assert compose_config(["optimizer=optuna_tpe", "seed=9"]).optimizer.seed == 9


def test_pipeline_target_with_path():
    config = compose_config(["target=pipeline", "target.path=/x"])
    assert config.target.name == "pipeline"
    assert config.target.path == "/x"


def test_list_override():
    config = compose_config(["objectives=[kid,nfe,latency_ms]", "budget.warm_start_steps=[3,5]"])
    assert list(config.objectives) == ["kid", "nfe", "latency_ms"]
    assert list(config.budget.warm_start_steps) == [3, 5]


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOACCEL_CACHE_DIR", str(tmp_path))
    assert compose_config().cache_dir == str(tmp_path)
    assert compose_config([f"cache_dir={tmp_path / 'other'}"]).cache_dir == str(tmp_path / "other")


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("budget.trails=3", ["budget.trails"]),
        ("budget.trials=abc", ["budget.trials", "'abc'"]),
        ("budget.max_nfe=fast", ["budget.max_nfe", "'fast'"]),
        ("quality.samples=1.5", ["quality.samples", "1.5"]),
        ("trials=3", ["trials"]),
        ("optimizer=nope", ["optimizer/nope", "optuna_nsga2", "optuna_tpe", "random"]),
        ("target=nope", ["target/nope", "digits", "pipeline"]),
        ("optimizer.populaton_size=8", ["populaton_size"]),
    ],
)
def test_bad_override_is_a_config_error_naming_the_key(override, fragments):
    with pytest.raises(ConfigError) as info:
        compose_config([override])
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message  # one line for the CLI


def test_malformed_override_is_a_config_error():
    with pytest.raises(ConfigError):
        compose_config(["budget.trials"])


def test_an_error_leaves_the_next_composition_working():
    with pytest.raises(ConfigError):
        compose_config(["optimizer=nope"])
    assert compose_config(["optimizer=random"]).optimizer.name == "random"


# --- objectives ------------------------------------------------------------------------------------------------


def test_objective_directions_for_known_metrics():
    assert objective_directions(["fid", "latency_ms"]) == ["minimize", "minimize"]
    assert objective_directions(["psnr_vs_ode", "nfe", "recall"]) == ["maximize", "minimize", "maximize"]
    assert objective_directions(("kid", "energy_j")) == ["minimize", "minimize"]


def test_unknown_objective_is_named_with_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        objective_directions(["fid", "sharpness"])
    assert "'sharpness'" in str(info.value)
    for name in DIRECTIONS:
        assert name in str(info.value)


@pytest.mark.parametrize("names", [["fid"], [], ["fid", "fid"], ["latency_ms", "fid", "latency_ms"]])
def test_fewer_than_two_distinct_objectives_are_refused(names):
    with pytest.raises(ConfigError, match=r"objectives=.*two or more distinct metrics"):
        objective_directions(names)
