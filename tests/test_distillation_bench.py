"""``bench distillation`` end to end on the tiny pipeline: a row per method at each NFE (DMD with and without its
GAN term, and its training curve), and a distilled search's
front against a schedule-only search's, with the verdict at each NFE bound."""

from __future__ import annotations

import pytest

from benchmarks.config import compose_benchmark_config as compose_config

TINY_DISTILLED_SPACE = """
name: tiny_distilled
techniques: [distillation, solver, timesteps]
fixed:
  distillation.iterations: 4
  distillation.batch_size: 16
  distillation.data_samples: 32
dimensions:
  distillation.method: {type: categorical, choices: [none, consistency]}
  distillation.steps: {type: categorical, choices: [1, 2], when: {distillation.method: [consistency]}}
  timesteps.steps: {type: int, low: 2, high: 4, when: {distillation.method: [none]}}
  solver.name: {type: categorical, choices: [ddim, unipc], when: {distillation.method: [none]}}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_distillation_bench_writes_its_rows_and_both_searched_fronts(fast_overrides, tmp_path):
    from benchmarks.distillation import run_distillation_benchmark

    space_file = tmp_path / "tiny_distilled.yaml"
    space_file.write_text(TINY_DISTILLED_SPACE)
    config = compose_config(
        [
            *fast_overrides,
            f"bench.dir={tmp_path / 'bench'}",
            "bench.confirm_seeds=[1]",
            "bench.distillation.nfes=[1]",
            "bench.distillation.start_steps=4",
            "bench.distillation.progressive_iterations=2",
            "bench.distillation.consistency_iterations=3",
            "bench.distillation.schedule_iterations=2",
            "bench.distillation.batch_size=16",
            "bench.distillation.dmd_iterations=3",
            "bench.distillation.dmd_fake_updates=1",
            "bench.distillation.dmd_curve=[2]",
            "bench.distillation.search_trials=4",
            f"bench.distillation.search_space={space_file}",
            "fidelity.levels=[16,48]",
            "fidelity.train_shares=[0.5,1.0]",
        ]
    )
    table = run_distillation_benchmark(config, log=lambda message: None).read_text()
    assert " 'fidelity.levels=[16,48]' 'fidelity.train_shares=[0.5,1.0]'` (weights" in table  # the command names them
    rows = ("| 1 | 1 | ddim-1 |", "| progressive |", "| consistency |", "| learned schedule |", "| dmd |")
    for row in (*rows, "| dmd + GAN |", "| dmd, 2 iterations |"):
        assert row in table
    assert "no floor: FID is against the reference call's own images" in table  # the tiny model has no real data
    assert "### Schedule-only front (space=sampler)" in table and "### Distilled front" in table
    front_rows = table.split("### Schedule-only front")[1].split("### At each NFE bound")[0]
    assert front_rows.count("\n| ") >= 4  # a header and a point for each front, at least
    bounds = table.split("### At each NFE bound")[1]
    assert all(f"- NFE <= {bound}:" in bounds for bound in (1, 2, 4, 8))


def test_the_summary_judges_each_nfe_bound_by_measured_nfe_not_by_sampling_steps():
    """A guided 4-step sampler makes 8 calls: it is no candidate for the NFE 4 target, a 2-step student is."""
    from benchmarks.distillation import _verdict

    def entry(fid: float, nfe: float) -> dict:
        return {"fid": [fid], "recall": [0.8], "nfe": nfe}

    rows = [(4, "ddim-4", entry(1.0, 8)), (2, "consistency", entry(1.2, 2)), (4, "consistency", entry(1.6, 4))]
    verdict = _verdict(4, rows, reference_fid=1.0, reference_recall=0.8)
    assert verdict.startswith("- NFE <= 4: best consistency at 2 steps (NFE 2), FID 1.20 = 1.20x")
    assert "no schedule-only row" in verdict and "NOT met" in verdict  # 1.2x > the 1.1x target
    assert _verdict(2, rows, reference_fid=1.0, reference_recall=0.8).endswith(
        "(target <= 1.25x with recall at most 0.05 below, under 60 min: met)."
    )


def test_an_unknown_bench_method_is_named(fast_overrides, tmp_path):
    from autoaccel.errors import ConfigError
    from benchmarks.distillation import method_rows

    config = compose_config([*fast_overrides, "bench.distillation.methods=[dmd,dmm]"])
    with pytest.raises(ConfigError, match=r"bench.distillation.methods: \['dmm'\] are not valid"):
        method_rows(config, 1)


def test_the_dmd_training_curve_is_shown_at_every_nfe(fast_overrides):
    """Each NFE target is judged on a curve (FID against iterations), so its rows come at every NFE, before the
    full run they continue into."""
    from benchmarks.distillation import method_rows

    config = compose_config(
        [*fast_overrides, "bench.distillation.methods=[dmd]", "bench.distillation.dmd_curve=[250,500]"]
    )
    for nfe in (1, 2, 4):
        labels = [label for label, _ in method_rows(config, nfe)]
        assert labels.index("dmd, 250 iterations") < labels.index("dmd, 500 iterations") < labels.index("dmd")


def test_the_summary_gives_the_students_minutes_before_the_schedule_only_figure():
    from benchmarks.distillation import _verdict

    rows = [
        (1, "ddim-1", {"fid": [60.0], "recall": [0.5], "nfe": 1}),
        (1, "dmd", {"fid": [1.0], "recall": [0.8], "nfe": 1, "train_minutes": 8.04}),
    ]
    verdict = _verdict(1, rows, reference_fid=1.0, reference_recall=0.8)
    assert "recall 0.800, trained in 8.0 min; best schedule-only 60.00 (target" in verdict


def test_a_front_within_the_seed_sets_spread_ties_instead_of_dominating():
    """A best distilled FID below the schedule-only one by less than their spreads is a tie, not a win."""
    from benchmarks.distillation import _bound_verdict

    def front(*points: tuple[list[float], float]) -> list[tuple[int, dict]]:
        return [(trial, {"fid": fids, "nfe": nfe}) for trial, (fids, nfe) in enumerate(points)]

    fronts = {
        "distilled": front(([0.9, 1.1, 1.0], 1), ([0.50, 0.52, 0.54], 4)),
        "schedule-only": front(([1.05, 1.15, 1.1], 2), ([0.80, 0.81, 0.82], 4)),
    }
    assert _bound_verdict(1, fronts).endswith("schedule-only none: the distilled front dominates there.")
    assert _bound_verdict(2, fronts).endswith("the distilled front ties with the schedule-only front there.")
    assert "best distilled FID 0.52 ± 0.02, best schedule-only 0.81 ± 0.01: the distilled front dominates" in (
        _bound_verdict(4, fronts)
    )
    fronts["distilled"] = front(([2.0, 2.1, 2.2], 4))
    assert _bound_verdict(4, fronts).endswith("does not dominate there.")
    assert _bound_verdict(1, fronts) == "- NFE <= 1: the distilled front has no point."
