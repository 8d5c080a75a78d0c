"""The paired promotion rule of the fidelity ladder: candidates scored on common seeds are compared on their
figures directly, with a margin learnt from how far figures moved between a level and the top."""

from __future__ import annotations

import math

import pytest

from autoaccel.errors import ConfigError
from autoaccel.measure.measurement import COMPLETE, Measurement
from autoaccel.plan.candidate import Candidate
from autoaccel.search.fidelity import MIN_CLIMBS, FidelityLadder
from autoaccel.search.loop import evaluate_with_fidelity

OBJECTIVES = ["fid", "nfe"]


def _figures(fid: float, nfe: float, fid_std: float = 3.0) -> dict[str, float]:
    return {"fid": fid, "fid_std": fid_std, "nfe": nfe}


def _climbed(z: float = 1.0, shifts: tuple[float, ...] = (-1.0, -1.5, -0.5)) -> FidelityLadder:
    """A ladder on which candidates climbed from 8 to 32 samples, their FIDs moving by ``shifts`` on the way."""
    ladder = FidelityLadder([8, 32], OBJECTIVES, z=z)
    for index, shift in enumerate(shifts):
        low = _figures(10.0 + index, 4.0 + index)
        ladder.remember(8, low)
        ladder.remember(32, _figures(low["fid"] + shift, low["nfe"]), below={8: low})
    return ladder


def test_the_margin_is_z_times_the_paired_error_learnt_from_climbs():
    ladder = _climbed()
    fid_margin, nfe_margin = ladder.paired_margins(8)
    assert fid_margin == pytest.approx(math.sqrt(2) * 0.5)  # stdev of the shifts (-1, -1.5, -0.5) is 0.5
    assert nfe_margin == 0.0  # cost figures do not move between levels
    assert ladder.paired_margins(32) == [0.0, 0.0]  # the top level is what plans are judged on
    assert _climbed(z=2.0).paired_margins(8)[0] == pytest.approx(2 * fid_margin)


def test_a_candidate_a_front_point_beats_on_paired_figures_is_not_promoted():
    ladder = _climbed()  # the level holds fid 10 at nfe 4, margin 0.71
    # Its bootstrap interval (std 3) would overlap the front point; common seeds say it is worse.
    assert not ladder.promotable(8, _figures(11.0, 5.0))
    assert not ladder.promotable(8, _figures(10.8, 4.0))


def test_a_close_or_non_dominated_candidate_is_promoted():
    ladder = _climbed()
    assert ladder.promotable(8, _figures(10.5, 5.0))  # within the margin of fid 10 at nfe 4
    assert ladder.promotable(8, _figures(30.0, 3.0))  # fewer steps than any point: on the front
    assert ladder.promotable(8, _figures(9.0, 8.0))  # better than every point


def test_without_optimism_the_measured_figures_decide():
    ladder = _climbed(z=0.0)
    assert not ladder.promotable(8, _figures(10.1, 4.0))
    assert ladder.promotable(8, _figures(10.0, 4.0))  # an equal point is not dominated


def test_every_candidate_is_promoted_until_enough_have_climbed():
    ladder = _climbed(shifts=(-1.0,) * (MIN_CLIMBS - 1))
    assert ladder.paired_margins(8) is None
    assert ladder.promotable(8, _figures(50.0, 10.0))


def test_a_replayed_history_pairs_each_top_point_with_the_level_just_below():
    ladder = FidelityLadder([8, 32], OBJECTIVES)
    for index in range(MIN_CLIMBS):  # the order a study's history comes back in: each trial's levels ascending
        ladder.remember(8, _figures(10.0 + index, 4.0))
        ladder.remember(32, _figures(9.0 + index, 4.0))
        ladder.remember(8, _figures(40.0, 4.0))  # a trial stopped at 8 samples: no climb
    assert len(ladder.climbs[8]) == MIN_CLIMBS
    assert ladder.paired_margins(8) == [0.0, 0.0]


def test_the_interval_rule_stays_available_and_rules_are_checked():
    ladder = FidelityLadder([8, 32], OBJECTIVES, z=1.0, rule="interval")
    ladder.remember(8, _figures(10.0, 4.0))
    assert ladder.promotable(8, _figures(11.0, 5.0))  # optimistic 8 < 10
    assert not ladder.promotable(8, _figures(14.0, 5.0))
    with pytest.raises(ConfigError, match="fidelity rule"):
        FidelityLadder([8, 32], OBJECTIVES, rule="kid")


class LevelEvaluator:
    """Figures per (candidate, samples), as a scorer on common seeds would give them."""

    def __init__(self, figures: dict[tuple[str, int], dict[str, float]]) -> None:
        self.figures = figures

    def evaluate(self, candidate: Candidate, samples: int | None = None) -> Measurement:
        metrics = {**self.figures[(candidate.key, samples)], "quality_samples": float(samples or 0)}
        return Measurement(COMPLETE, metrics, {"seconds": 1.0})


def test_plans_come_from_the_top_level_only():
    candidates = [Candidate.from_params({"timesteps.steps": steps}) for steps in range(4, 4 + MIN_CLIMBS + 2)]
    figures = {}
    for index, candidate in enumerate(candidates[:MIN_CLIMBS]):
        figures[(candidate.key, 8)] = _figures(10.0 + index, 4.0 + index)
        figures[(candidate.key, 32)] = _figures(9.0 + index, 4.0 + index)
    stopped, climber = candidates[MIN_CLIMBS:]
    figures[(stopped.key, 8)] = _figures(15.0, 6.0)  # beaten by fid 10 at nfe 4 beyond any paired error
    figures[(climber.key, 8)] = _figures(9.5, 6.0)
    figures[(climber.key, 32)] = _figures(8.5, 6.0)
    evaluator, ladder = LevelEvaluator(figures), FidelityLadder([8, 32], OBJECTIVES)

    for candidate in candidates[:MIN_CLIMBS]:  # no paired error known yet: every one climbs
        measurement, per_level = evaluate_with_fidelity(evaluator, candidate, ladder)
        assert sorted(per_level) == [8, 32] and measurement.metrics["quality_samples"] == 32
    assert ladder.paired_margins(8) == [0.0, 0.0]  # every shift was -1: the 8-sample ranking held

    measurement, per_level = evaluate_with_fidelity(evaluator, stopped, ladder)
    assert sorted(per_level) == [8] and measurement.metrics["quality_samples"] == 8  # a fidelity-constrained trial
    measurement, per_level = evaluate_with_fidelity(evaluator, climber, ladder)
    assert sorted(per_level) == [8, 32] and measurement.metrics["fid"] == 8.5  # its figures are the top level's
    assert measurement.details["seconds"] == 2.0


def test_rerunning_the_multi_fidelity_part_keeps_the_other_sections():
    from benchmarks.optimizers import FidelityArm, merge_sections

    existing = "# Title\n\nintro\n\n## (a) synthetic\n\nrows a\n\n## (b) model\n\nrows b\n\n## (c) old\n\nold rows\n"
    merged = merge_sections(existing, {"c": ["## (c) multi-fidelity", "", "new rows", ""]})
    assert merged.split("\n## ")[:3] == ["# Title\n\nintro\n", "(a) synthetic\n\nrows a\n", "(b) model\n\nrows b\n"]
    assert merged.endswith("## (c) multi-fidelity\n\nnew rows\n") and "old rows" not in merged
    arm = FidelityArm.parse("paired:64-128-512:0.5")
    assert (arm.levels, arm.z, arm.rule) == ((64, 128, 512), 0.5, "paired")
    with pytest.raises(ConfigError, match="rule:levels:z"):
        FidelityArm.parse("paired:64,512")
