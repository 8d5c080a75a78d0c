"""Choices on the Pareto front (autoaccel/pareto.py) and the ``plan`` command's message (autoaccel/planning.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from autoaccel.errors import ConfigError
from autoaccel.pareto import choose_within, front_frame, front_numbers, knee_point
from autoaccel.planning import explain_plan, read_front


@pytest.fixture
def front() -> pd.DataFrame:
    """Cheapest first; quality improves with cost."""
    return pd.DataFrame(
        {
            "trial": [11, 22, 33, 44],
            "nfe": [2, 4, 6, 10],
            "fid": [40.0, 20.0, 12.0, 9.0],
            "latency_ms": [5.0, 10.0, 15.0, 25.0],
            "psnr_vs_ode": [10.0, 18.0, 24.0, 30.0],
            "recipe": [f"recipes/trial-{number:04d}.yaml" for number in (11, 22, 33, 44)],
        }
    )


# --- knee_point ------------------------------------------------------------------------------------------------


def test_knee_point_is_the_balanced_point():
    front = pd.DataFrame({"fid": [100.0, 20.0, 15.0, 10.0], "latency_ms": [1.0, 2.0, 3.0, 10.0]})
    # scaled: (1, 0), (0.089, 0.111), (0.056, 0.222), (0, 1): the second is closest to the ideal corner
    assert knee_point(front, ["fid", "latency_ms"]) == 1


def test_knee_point_is_symmetric_in_the_objectives():
    front = pd.DataFrame({"fid": [1.0, 10.0, 2.0, 9.0], "latency_ms": [9.0, 1.0, 2.0, 10.0]})
    assert knee_point(front, ["fid", "latency_ms"]) == 2
    assert knee_point(front, ["latency_ms", "fid"]) == 2


def test_knee_point_respects_maximized_metrics():
    front = pd.DataFrame({"psnr_vs_ode": [10.0, 29.0, 30.0], "latency_ms": [1.0, 2.0, 50.0]})
    # high psnr is good: the cheap point with nearly the best psnr is the knee, not the worst-psnr one
    assert knee_point(front, ["psnr_vs_ode", "latency_ms"]) == 1
    assert knee_point(front.assign(psnr_vs_ode=[30.0, 29.0, 10.0]), ["psnr_vs_ode", "latency_ms"]) == 0


def test_knee_point_of_empty_front_is_none_and_constant_objective_is_ignored():
    assert knee_point(pd.DataFrame({"fid": [], "latency_ms": []}), ["fid", "latency_ms"]) is None
    front = pd.DataFrame({"fid": [5.0, 5.0, 5.0], "latency_ms": [3.0, 1.0, 2.0]})
    assert knee_point(front, ["fid", "latency_ms"]) == 1


def test_front_frame_keeps_front_trials_cheapest_first(front):
    trials = pd.concat([front, pd.DataFrame({"trial": [55], "fid": [50.0], "latency_ms": [1.0]})], ignore_index=True)
    ordered = front_frame(trials.iloc[::-1], [44, 11, 33])
    assert ordered["trial"].tolist() == [11, 33, 44]
    assert ordered.index.tolist() == [0, 1, 2]


# --- choose_within ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "trial"),
    [
        ({"latency_ms": 16.0, "nfe": None}, 33),
        ({"latency_ms": 12.0, "nfe": 4}, 22),
        ({"latency_ms": 100.0, "nfe": 6}, 33),
        ({"latency_ms": None, "nfe": None}, 44),
        ({"latency_ms": 5.0}, 11),  # a limit is inclusive
        ({}, 44),
    ],
)
def test_choose_within_returns_best_quality_meeting_limits(front, limits, trial):
    choice = choose_within(front, "fid", limits)
    assert choice.row is not None and choice.closest is None and choice.misses == {}
    assert int(choice.row["trial"]) == trial


def test_choose_within_maximizes_a_maximized_quality(front):
    choice = choose_within(front, "psnr_vs_ode", {"latency_ms": 16.0})
    assert int(choice.row["trial"]) == 33
    assert choice.row["psnr_vs_ode"] == 24.0


def test_nothing_fits_gives_the_closest_and_what_it_misses_by(front):
    choice = choose_within(front, "fid", {"latency_ms": 4.0, "nfe": None})
    assert choice.row is None
    assert int(choice.closest["trial"]) == 11
    assert choice.misses == {"latency_ms": pytest.approx(1.0)}


def test_misses_name_every_exceeded_metric_and_only_those(front):
    choice = choose_within(front, "fid", {"latency_ms": 4.0, "nfe": 1})
    assert int(choice.closest["trial"]) == 11
    assert choice.misses == {"latency_ms": pytest.approx(1.0), "nfe": pytest.approx(1.0)}
    # trial 11 meets the latency limit and misses only nfe
    choice = choose_within(front, "fid", {"latency_ms": 9.0, "nfe": 1})
    assert int(choice.closest["trial"]) == 11
    assert choice.misses == {"nfe": pytest.approx(1.0)}


def test_closest_is_by_summed_relative_excess(front):
    choice = choose_within(front, "fid", {"latency_ms": 4.0, "nfe": 5})
    assert int(choice.closest["trial"]) == 11  # latency 25% over; trial 22 is 150% over
    assert choice.misses == {"latency_ms": pytest.approx(1.0)}  # nfe 2 <= 5 is not a miss
    # trial 11 misses one limit by 200%; trial 22 misses two, by 1% and 33%: trial 22 is closer
    slow = front.assign(latency_ms=[300.0, 101.0, 300.0, 400.0])
    choice = choose_within(slow, "fid", {"latency_ms": 100.0, "nfe": 3})
    assert int(choice.closest["trial"]) == 22
    assert choice.misses == {"latency_ms": pytest.approx(1.0), "nfe": pytest.approx(1.0)}


def test_choose_within_on_empty_front():
    choice = choose_within(pd.DataFrame({"fid": [], "latency_ms": []}), "fid", {"latency_ms": 1.0})
    assert (choice.row, choice.closest, choice.misses) == (None, None, {})


# --- explain_plan ----------------------------------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path, front):
    front[["trial", "nfe", "fid", "latency_ms", "recipe"]].to_csv(tmp_path / "pareto.csv", index=False)
    return tmp_path


def test_explain_plan_names_the_chosen_trial_and_its_recipe(run_dir):
    message, found = explain_plan(run_dir, "fid", {"latency_ms": 16.0, "nfe": None})
    assert found is True
    assert "trial 33" in message
    assert "latency_ms <= 16" in message
    assert "fid 12" in message and "nfe 6" in message and "latency 15.0 ms" in message
    assert str(run_dir / "recipes" / "trial-0033.yaml") in message


def test_explain_plan_when_nothing_fits_names_closest_and_misses(run_dir):
    message, found = explain_plan(run_dir, "fid", {"latency_ms": 4.0, "nfe": None})
    assert found is False
    assert "no front point fits latency_ms <= 4" in message
    assert "closest: trial 11" in message
    assert "misses latency_ms by 1" in message
    assert str(run_dir / "recipes" / "trial-0011.yaml") in message


def test_explain_plan_without_limits(run_dir):
    message, found = explain_plan(run_dir, "fid", {"latency_ms": None, "nfe": None})
    assert found is True
    assert "within none" in message and "trial 44" in message


def test_explain_plan_without_pareto_csv_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        explain_plan(tmp_path, "fid", {"latency_ms": 10.0})
    assert str(tmp_path) in str(info.value)
    assert "pareto.csv" in str(info.value) and "report" in str(info.value)
    with pytest.raises(ConfigError):
        read_front(tmp_path)


def test_explain_plan_rejects_unknown_quality_metric(run_dir):
    with pytest.raises(ConfigError) as info:
        explain_plan(run_dir, "inception_score", {"latency_ms": 10.0})
    assert "'inception_score'" in str(info.value) and "fid" in str(info.value)


def test_explain_plan_on_an_empty_front(tmp_path):
    (tmp_path / "pareto.csv").write_text("trial,nfe,fid,latency_ms,recipe\n")
    message, found = explain_plan(tmp_path, "fid", {"latency_ms": 10.0})
    assert found is False
    assert "front is empty" in message


def test_front_frame_lists_a_re_proposed_candidate_once():
    import pandas as pd

    from autoaccel.pareto import front_frame

    trials = pd.DataFrame(
        {"trial": [0, 1, 2], "candidate_key": ["a", "b", "a"], "fid": [1.0, 2.0, 1.0], "latency_ms": [5.0, 1.0, 5.0]}
    )
    front = front_frame(trials, [0, 1, 2])
    assert front["trial"].tolist() == [1, 0]


# --- front_numbers ---------------------------------------------------------------------------------------------


def _trials(feasible: list[bool], states: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial": [0, 1, 2, 3, 4],
            "state": states or ["COMPLETE"] * 5,
            "feasible": feasible,
            "fid": [10.0, 20.0, 5.0, 12.0, float("nan")],
            "psnr_vs_ode": [20.0, 25.0, 30.0, 15.0, 40.0],
            "latency_ms": [5.0, 3.0, 9.0, 6.0, 10.0],
        }
    )


def test_front_numbers_keep_the_non_dominated_feasible_complete_trials():
    trials = _trials([True] * 5)
    assert front_numbers(trials, ["fid", "latency_ms"]) == [0, 1, 2]  # 3 is dominated by 0; 4 measured no fid
    # maximised objectives count the other way: more psnr is better
    assert front_numbers(trials, ["psnr_vs_ode", "latency_ms"]) == [1, 2, 4]


def test_front_numbers_leave_out_infeasible_and_failed_trials_whose_place_others_take():
    trials = _trials([True, False, True, True, True], states=["COMPLETE", "COMPLETE", "COMPLETE", "COMPLETE", "FAIL"])
    assert front_numbers(trials, ["fid", "latency_ms"]) == [0, 2]
    assert front_numbers(trials.iloc[:0], ["fid", "latency_ms"]) == []
    assert front_numbers(trials[["trial", "state", "feasible"]], ["fid", "latency_ms"]) == []
