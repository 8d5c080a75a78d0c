"""Choices on the Pareto front (autoaccel/front/pareto.py) and the ``plan`` command's message
(autoaccel/cli/plan_command.py)."""

from __future__ import annotations

import shutil

import optuna
import pandas as pd
import pytest

from autoaccel.cli.plan_command import explain_plan
from autoaccel.errors import ConfigError
from autoaccel.front.limits import resolve_limits
from autoaccel.front.pareto import choose_within, front_frame, front_numbers, knee_point
from tests.plan_ledgers import STUDY, write_ledger_run, written_before_the_reference_was_renamed


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
            "adherence": [0.7, 0.96, 0.95, 0.99],
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


def _limits(**values) -> list:
    return resolve_limits(values, {"fid": 8.0, "latency_ms": 100.0})


@pytest.mark.parametrize(
    ("limits", "trial"),
    [
        ({"max_latency_ms": 16.0}, 33),
        ({"max_latency_ms": 12.0, "max_nfe": 4}, 22),
        ({"max_latency_ms": 100.0, "max_nfe": 6}, 33),
        ({}, 44),
        ({"max_latency_ms": 5.0}, 11),  # a limit is inclusive
    ],
)
def test_choose_within_returns_best_quality_meeting_limits(front, limits, trial):
    choice = choose_within(front, _limits(**limits), "fid")
    assert choice.row is not None and choice.closest is None and choice.misses == {}
    assert int(choice.row["trial"]) == trial


def test_choose_within_maximizes_a_maximized_quality(front):
    choice = choose_within(front, _limits(max_latency_ms=16.0), "psnr_vs_ode")
    assert int(choice.row["trial"]) == 33
    assert choice.row["psnr_vs_ode"] == 24.0


@pytest.mark.parametrize(
    ("limits", "trial"),
    [
        ({"max_fid_ratio": 1.5}, 33),  # fid <= 12 (1.5x the reference's 8): the fastest is trial 33
        ({"max_fid_ratio": 2.5}, 22),  # fid <= 20
        ({"max_fid": 9.0}, 44),
        ({"min_psnr": 18.0}, 22),  # psnr is a lower bound
        ({"min_psnr": 18.0, "max_nfe": 4}, 22),
        ({"min_adherence": 0.97}, 44),  # adherence is a share of images, a lower bound
        ({"min_adherence": 0.95, "max_fid": 15.0}, 33),
    ],
)
def test_the_fastest_plan_within_a_quality_limit(front, limits, trial):
    choice = choose_within(front, _limits(**limits), "latency_ms")
    assert int(choice.row["trial"]) == trial


def test_a_fid_ratio_before_the_reference_is_measured_fits_nothing(front):
    limits = resolve_limits({"max_fid_ratio": 1.25}, None)
    assert "not measured" in limits[0].describe()
    assert choose_within(front, limits, "latency_ms").row is None


def test_nothing_fits_gives_the_closest_and_what_it_misses_by(front):
    choice = choose_within(front, _limits(max_latency_ms=4.0), "fid")
    assert choice.row is None
    assert int(choice.closest["trial"]) == 11
    assert choice.misses == {"max_latency_ms": pytest.approx(1.0)}


def test_misses_name_every_missed_limit_and_only_those(front):
    choice = choose_within(front, _limits(max_latency_ms=4.0, max_nfe=1), "fid")
    assert int(choice.closest["trial"]) == 11
    assert choice.misses == {"max_latency_ms": pytest.approx(1.0), "max_nfe": pytest.approx(1.0)}
    # trial 11 meets the latency limit and misses only nfe
    choice = choose_within(front, _limits(max_latency_ms=9.0, max_nfe=1), "fid")
    assert int(choice.closest["trial"]) == 11
    assert choice.misses == {"max_nfe": pytest.approx(1.0)}
    # a lower bound is missed from below
    choice = choose_within(front, _limits(min_psnr=31.0, max_latency_ms=20.0), "latency_ms")
    assert int(choice.closest["trial"]) == 33
    assert choice.misses == {"min_psnr": pytest.approx(7.0)}


def test_closest_is_by_summed_relative_excess(front):
    choice = choose_within(front, _limits(max_latency_ms=4.0, max_nfe=5), "fid")
    assert int(choice.closest["trial"]) == 11  # latency 25% over; trial 22 is 150% over
    assert choice.misses == {"max_latency_ms": pytest.approx(1.0)}  # nfe 2 <= 5 is not a miss
    # trial 11 misses one limit by 200%; trial 22 misses two, by 1% and 33%: trial 22 is closer
    slow = front.assign(latency_ms=[300.0, 101.0, 300.0, 400.0])
    choice = choose_within(slow, _limits(max_latency_ms=100.0, max_nfe=3), "fid")
    assert int(choice.closest["trial"]) == 22
    assert choice.misses == {"max_latency_ms": pytest.approx(1.0), "max_nfe": pytest.approx(1.0)}


def test_choose_within_on_empty_front():
    choice = choose_within(pd.DataFrame({"fid": [], "latency_ms": []}), _limits(max_latency_ms=1.0), "fid")
    assert (choice.row, choice.closest, choice.misses) == (None, None, {})


# --- explain_plan ----------------------------------------------------------------------------------------------


FRONT = {  # trial -> figures: cheapest first, quality improves with cost
    11: {"nfe": 2, "fid": 40.0, "latency_ms": 5.0, "psnr_vs_ode": 10.0, "adherence": 0.7},
    22: {"nfe": 4, "fid": 20.0, "latency_ms": 10.0, "psnr_vs_ode": 18.0, "adherence": 0.96},
    33: {"nfe": 6, "fid": 12.0, "latency_ms": 15.0, "psnr_vs_ode": 24.0, "adherence": 0.95},
    44: {"nfe": 10, "fid": 9.0, "latency_ms": 25.0, "psnr_vs_ode": 30.0, "adherence": 0.99},
}
STANDARDS = {  # standard configurations, both dominated by the front
    1: {"warm_start": "ddim-10", "nfe": 10, "fid": 11.0, "latency_ms": 30.0},
    2: {"warm_start": "ddim-4", "nfe": 4, "fid": 30.0, "latency_ms": 11.0},
}
REFERENCE = {"fid": 8.0, "latency_ms": 600.0, "timesteps": "all 1000"}


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """The front above and two standard configurations, recorded in a study's ledger (built once per module)."""
    plans = {
        trial: {**row, "fid_std": 0.5, "scheduler_class": "DPMSolverMultistepScheduler"} for trial, row in FRONT.items()
    }
    return write_ledger_run(tmp_path_factory.mktemp("plan") / "run", {**plans, **STANDARDS}, REFERENCE)


@pytest.fixture
def run_dir(tmp_path, recorded_run):
    """A copy of the recorded run folder, with the recipes the report wrote for the front."""
    folder = tmp_path / "run"
    shutil.copytree(recorded_run, folder)
    (folder / "recipes").mkdir()
    for trial in FRONT:
        (folder / "recipes" / f"trial-{trial:04d}.yaml").write_text("recipe\n")
    return folder


def _study(run_dir) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{run_dir / 'ledger.db'}")


def test_the_fastest_plan_within_1_25x_of_the_reference(run_dir):
    message, found = explain_plan(run_dir, {"max_fid_ratio": 1.6})
    assert found is True
    lines = message.splitlines()
    assert lines[0] == "the fastest plan within fid <= 12.8 (1.6x the reference's fid 8):"
    assert "trial 33" in lines[1]
    assert "fid 12 ± 0.5" in message and "nfe 6" in message and "latency 15.0 ms" in message
    assert "vs the reference (all 1000 steps): 40.00x faster, fid 8 -> 12 (1.50x)" in message
    assert "vs the best standard configuration within them (ddim-10): 2.00x faster" in message
    assert str(run_dir / "recipes" / "trial-0033.yaml") in message
    assert f"python -m autoaccel apply {run_dir / 'recipes' / 'trial-0033.yaml'} --out samples" in message


def test_cost_limits_alone_give_the_best_quality_within_them(run_dir):
    message, found = explain_plan(run_dir, {"max_latency_ms": 16.0, "max_nfe": None})
    assert found is True
    assert message.startswith("the plan with the lowest fid within latency_ms <= 16:")
    assert "trial 33" in message
    assert "vs the best standard configuration within them (ddim-4): 0.73x faster, fid 30 -> 12" in message
    message, _ = explain_plan(run_dir, {"max_latency_ms": 10.0})
    assert "no standard configuration meets these limits" in message


def test_explain_plan_when_nothing_fits_names_closest_and_misses(run_dir):
    message, found = explain_plan(run_dir, {"max_latency_ms": 4.0})
    assert found is False
    assert message.startswith(
        "no front plan is the plan with the lowest fid within latency_ms <= 4; the closest misses"
    )
    assert "--max-latency-ms by 1" in message and "trial 11" in message
    assert str(run_dir / "recipes" / "trial-0011.yaml") in message


def test_explain_plan_minimize_picks_the_metric_to_optimise(run_dir):
    message, _ = explain_plan(run_dir, {"max_fid": 20.0}, goal="nfe")
    assert message.startswith("the plan with the lowest nfe within fid <= 20:") and "trial 22" in message


def test_explain_plan_without_limits(run_dir):
    message, found = explain_plan(run_dir, {})
    assert found is True
    assert "within none" in message and "trial 44" in message


def test_a_fid_ratio_without_the_reference_is_a_config_error(run_dir):
    _study(run_dir).set_user_attr("reference", None)
    with pytest.raises(ConfigError, match="needs the reference's FID, which study 'plan-test' has not recorded"):
        explain_plan(run_dir, {"max_fid_ratio": 1.25})


def test_explain_plan_outside_a_run_folder_is_a_config_error(tmp_path, run_dir):
    with pytest.raises(ConfigError) as info:
        explain_plan(tmp_path, {"max_latency_ms": 10.0})
    assert str(tmp_path) in str(info.value) and "config.yaml" in str(info.value)
    (run_dir / "ledger.db").unlink()
    with pytest.raises(ConfigError, match="ledger.db"):
        explain_plan(run_dir, {"max_latency_ms": 10.0})


def test_plan_reads_the_ledger_not_the_reports_files(run_dir):
    """Stale or hand-made report files do not change the plan: the trials and the reference come from the ledger."""
    before, _ = explain_plan(run_dir, {"max_fid_ratio": 1.6})
    (run_dir / "pareto.csv").write_text("trial,nfe,fid,latency_ms,recipe\n99,1,0.1,0.1,recipes/trial-0099.yaml\n")
    (run_dir / "reference.json").write_text('{"fid": 100.0, "latency_ms": 1.0}')
    assert explain_plan(run_dir, {"max_fid_ratio": 1.6})[0] == before


def test_plan_reads_a_study_written_before_the_reference_was_renamed(run_dir):
    """A study that holds the reference row under its old name ``teacher`` gives the same plan, compared with the
    same reference; a row recorded since under ``reference`` is the one read."""
    before, found = explain_plan(run_dir, {"max_fid_ratio": 1.6})
    assert found and "vs the reference (all 1000 steps): 40.00x faster" in before
    written_before_the_reference_was_renamed(run_dir)
    assert "reference" not in _study(run_dir).user_attrs and _study(run_dir).user_attrs["teacher"] == REFERENCE
    assert explain_plan(run_dir, {"max_fid_ratio": 1.6})[0] == before
    _study(run_dir).set_user_attr("reference", {**REFERENCE, "fid": 16.0})  # recorded since: fid <= 1.6 * 16
    assert "trial 22" in explain_plan(run_dir, {"max_fid_ratio": 1.6})[0]


def test_plan_reads_the_old_name_of_fid_against_the_reference_calls_samples(run_dir):
    """``teacher-samples``, what older studies recorded for FID against the reference call's samples, refuses a
    ratio to the reference's FID as ``reference-samples`` does."""
    study = _study(run_dir)
    for kind in ("reference-samples", "teacher-samples"):
        study.set_user_attr("target", {"objectives": ["fid", "latency_ms"], "quality_reference": kind})
        with pytest.raises(ConfigError, match="fid is measured against the reference's own samples"):
            explain_plan(run_dir, {"max_fid_ratio": 1.6})


def test_a_front_plan_whose_recipe_the_report_has_not_written_says_how_to_write_it(run_dir):
    (run_dir / "recipes" / "trial-0033.yaml").unlink()
    message, found = explain_plan(run_dir, {"max_fid_ratio": 1.6})
    assert found and "trial 33" in message
    assert f"recipe: not written yet ({run_dir / 'recipes' / 'trial-0033.yaml'})" in message
    assert f"python -m autoaccel report {run_dir}" in message and "autoaccel apply" not in message


def test_a_study_recorded_before_plan_read_the_ledger_asks_for_the_report_once(run_dir):
    _study(run_dir).set_user_attr("target", None)
    with pytest.raises(ConfigError, match=f"older autoaccel.*python -m autoaccel report {run_dir}"):
        explain_plan(run_dir, {"max_latency_ms": 10.0})


def test_explain_plan_rejects_unknown_metrics(run_dir):
    with pytest.raises(ConfigError) as info:
        explain_plan(run_dir, {"max_latency_ms": 10.0}, quality="inception_score")
    assert "'inception_score'" in str(info.value) and "fid" in str(info.value)
    with pytest.raises(ConfigError, match="--minimize 'speed'"):
        explain_plan(run_dir, {}, goal="speed")


def test_explain_plan_on_an_empty_front(tmp_path):
    write_ledger_run(tmp_path, {0: {"state": "FAIL"}})
    message, found = explain_plan(tmp_path, {"max_latency_ms": 10.0})
    assert found is False
    assert "front is empty" in message


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


def test_a_reference_scored_against_its_own_samples_is_compared_by_difference_not_ratio(run_dir):
    """Where FID is against the reference call's own images its FID is 0 (to rounding): a ratio to it is
    meaningless, so the change is shown as a difference."""
    study = _study(run_dir)
    study.set_user_attr("reference", {"fid": 1e-9, "latency_ms": 600.0})
    study.set_user_attr("target", {"objectives": ["fid", "latency_ms"], "quality_reference": "reference-samples"})
    message, _ = explain_plan(run_dir, {"max_latency_ms": 16.0})
    assert "vs the reference (? steps): 40.00x faster, fid 1e-09 -> 12 (+12)" in message
