"""Noise the report cannot resolve does not decide what it recommends: the paired bootstrap over seeds
(autoaccel/metrics/bootstrap.py), the run folder's kept features (measure/feature_store.py) and the ties they make
in ``plan``, the report's recommendations and the report itself (report/noise.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from autoaccel.cli.main import main
from autoaccel.cli.plan_command import explain_plan, read_run
from autoaccel.measure.feature_store import REFERENCE_CALL, REFERENCE_SET, FeatureStore, kind_set, plan_set
from autoaccel.metrics.bootstrap import PairedBootstrap, fid
from autoaccel.metrics.quality import frechet_distance
from autoaccel.report.noise import run_noise
from autoaccel.report.recommend import recommended_plans
from tests.plan_ledgers import write_ledger_run

DIMS, SAMPLES = 16, 64
EXTRACTOR = "test-extractor"


def _seeds_images(shift: float, noise: float, seed: int, base_seed: int = 0) -> np.ndarray:
    """Features of images made from the run's seeds (the same base per seed for every plan: paired), shifted
    along one axis, with some noise of the plan's own."""
    base = np.random.default_rng(base_seed).standard_normal((SAMPLES, DIMS))
    offset = np.zeros(DIMS)
    offset[0] = shift
    return base + offset + noise * np.random.default_rng(seed).standard_normal((SAMPLES, DIMS))


def _reference_set() -> np.ndarray:
    return np.random.default_rng(100).standard_normal((800, DIMS))


# --- the bootstrap -----------------------------------------------------------------------------------------------


def test_the_bootstrap_fid_is_torch_fidelitys():
    plan, reference = _seeds_images(1.0, 0.3, 1), _reference_set()
    expected = frechet_distance(torch.from_numpy(plan), torch.from_numpy(reference))
    assert fid(plan, reference) == pytest.approx(expected, rel=1e-9)


def test_intervals_hold_their_figure_and_do_not_depend_on_the_other_sets():
    sets = {"a": _seeds_images(1.0, 0.3, 1), "b": _seeds_images(1.5, 0.3, 2)}
    both = PairedBootstrap(sets, _reference_set(), reference_paired=False)
    alone = PairedBootstrap({"a": sets["a"]}, _reference_set(), reference_paired=False)
    for name in sets:
        interval = both.interval(name)
        assert interval.lo < interval.value < interval.hi
    assert alone.interval("a") == both.interval("a")  # the report and plan draw the same rounds
    assert PairedBootstrap(sets, _reference_set(), False, seed=1).interval("a") != both.interval("a")


def test_pairing_on_the_seeds_resolves_what_each_figures_own_interval_cannot():
    a, b = _seeds_images(1.0, 0.2, 1), _seeds_images(1.3, 0.2, 2)
    paired = PairedBootstrap({"a": a, "b": b}, _reference_set(), reference_paired=False)
    first, second = paired.interval("a"), paired.interval("b")
    assert first.hi > second.lo  # the figures' own intervals overlap...
    assert paired.difference("b", "a").lo > 0  # ...but on the same seeds b is clearly worse
    shuffled = b[np.random.default_rng(5).permutation(SAMPLES)]  # the same images, no longer paired seed by seed
    unpaired = PairedBootstrap({"a": a, "b": shuffled}, _reference_set(), reference_paired=False)
    assert unpaired.difference("b", "a").covers(0.0)


def test_the_ratio_interval_is_fiellers_and_unbounded_where_the_reference_fid_cannot_be_told_from_0():
    """The ratios r whose paired interval of FID(plan) - r * FID(reference) covers 0: at each end that interval
    touches 0. A reference FID whose own interval covers 0 bounds no ratio from above."""
    from autoaccel.metrics.bootstrap import centred_interval

    sets = {"call": _seeds_images(2.0, 0.3, 11), "plan": _seeds_images(2.3, 0.3, 12)}
    bootstrap = PairedBootstrap(sets, _reference_set(), reference_paired=False)
    ratio = bootstrap.ratio("plan", "call")
    assert ratio.lo < ratio.value < ratio.hi < math.inf
    for end, side in ((ratio.lo, 0), (ratio.hi, 1)):
        point = bootstrap.point["plan"] - end * bootstrap.point["call"]
        touching = centred_interval(point, bootstrap.draws["plan"] - end * bootstrap.draws["call"])[side]
        assert touching == pytest.approx(0.0, abs=1e-6)
    noisy = np.random.default_rng(3).normal(0.1, 0.5, bootstrap.rounds)  # a reference FID of 0.1 +- 0.5
    bootstrap.point["call"], bootstrap.draws["call"] = 0.1, noisy
    assert math.isinf(bootstrap.ratio("plan", "call").hi)


# --- a run folder whose front is constructed ---------------------------------------------------------------------

PLANS = {  # trial -> (candidate key, shift, own noise, latency ms, standard configuration tag)
    1: ("aaaaaaaaaaa1", 3.0, 0.3, 5.0, ""),  # fastest, far beyond 1.25x
    2: ("aaaaaaaaaaa2", 2.3, 0.3, 10.0, ""),  # FID ratio 1.29 [1.17, 1.44]: a tie with 1.25
    3: ("aaaaaaaaaaa3", 1.8, 0.3, 30.0, ""),  # ratio 0.91: meets 1.25 by its figure
}
STANDARD = (7, "aaaaaaaaaaa7", 1.87, 0.3, 31.0, "dpmsolver++2m-10")  # nearly plan 3 (a tie), dominated by it


def _write_run(folder: Path, plans: dict = PLANS, standard: tuple = STANDARD) -> Path:
    """A run folder as a search and its report leave it: the trials in the study's ledger and their image features
    in features/, with figures the kept features reproduce (a real-data run: FID against a reference set of its
    own). Each plan is on the front the figures make; the standard configuration is dominated."""
    store = FeatureStore(folder / "features")
    reference = _reference_set()
    store.put(kind_set(REFERENCE_SET, SAMPLES), torch.from_numpy(reference), EXTRACTOR, 0)
    call = _seeds_images(2.0, 0.3, 11)
    store.put(kind_set(REFERENCE_CALL, SAMPLES), torch.from_numpy(call), EXTRACTOR, 0)
    trials = {}
    for trial, (key, shift, noise, latency, tag) in {**plans, standard[0]: standard[1:]}.items():
        features = _seeds_images(shift, noise, trial)
        store.put(plan_set(key, SAMPLES), torch.from_numpy(features), EXTRACTOR, 0)
        # the figure as the search recorded it: from the features as kept (float32)
        kept = store.get(plan_set(key, SAMPLES)).features.double().numpy()
        trials[trial] = {
            "warm_start": tag,
            "nfe": 4 * trial,
            "fid": fid(kept, store.get(kind_set(REFERENCE_SET, SAMPLES)).features.double().numpy()),
            "latency_ms": latency,
            "candidate_key": key,
            "quality_samples": float(SAMPLES),
        }
    kept_call = store.get(kind_set(REFERENCE_CALL, SAMPLES)).features.double().numpy()
    reference = {
        "fid": fid(kept_call, store.get(kind_set(REFERENCE_SET, SAMPLES)).features.double().numpy()),
        "latency_ms": 400.0,
        "nfe": 50,
        "quality_samples": float(SAMPLES),
        "timesteps": 50,
    }
    write_ledger_run(folder, trials, reference, quality_reference="real-data")
    assert set(read_run(folder).front["trial"]) == set(plans), "the constructed front"
    return folder


def test_plan_calls_a_plan_whose_ratio_interval_covers_the_bound_a_tie_and_prefers_it_as_the_faster(capsys, tmp_path):
    run = _write_run(tmp_path)
    recorded = read_run(run)
    noise = run_noise(run, [recorded.front], recorded.reference, None)
    tied, meets = ({"trial": trial} for trial in (2, 3))
    ratio = noise.ratio(tied)
    assert ratio.value > 1.25 and ratio.covers(1.25)  # the constructed case
    assert noise.ratio(meets).hi < 1.25 and not noise.ratio({"trial": 1}).covers(1.25)
    assert main(["plan", str(run), "--max-fid-ratio", "1.25"]) == 0
    output = capsys.readouterr().out
    assert "trial 2:" in output.splitlines()[1]
    assert f"tie: its FID ratio {ratio.text()} cannot be told from 1.25 at 64 samples; chosen as the faster" in output
    assert "(trial 3 meets it by its figure)" in output
    assert f"({ratio.value:.2f}x {ratio.bounds()})" in output  # the ratio to the reference with its interval
    # the best standard configuration under the same rule, compared by the paired difference of their FIDs
    assert "vs the best standard configuration within them (dpmsolver++2m-10)" in output
    assert "difference " in output.split("dpmsolver++2m-10")[-1]


def test_plan_without_kept_features_compares_figures_as_measured_and_says_so(capsys, tmp_path):
    run = _write_run(tmp_path)
    shutil.rmtree(run / "features")
    assert main(["plan", str(run), "--max-fid-ratio", "1.25"]) == 0
    output = capsys.readouterr().out
    assert "trial 3:" in output.splitlines()[1] and "tie" not in output  # the plain choice: trial 2 is over 1.25
    assert "no paired intervals" in output and "features" in output


def test_the_faster_of_two_plans_whose_fids_tie_is_the_lowest_fid_plan(tmp_path):
    plans = {**PLANS, 4: ("aaaaaaaaaaa4", 1.7, 0.3, 60.0, "")}  # slower, better by its figure, a tie with trial 3
    run = _write_run(tmp_path, plans=plans)
    message, found = explain_plan(run, {"max_latency_ms": 100.0})
    assert found and "trial 3:" in message.splitlines()[1]
    assert (
        "tie: its FID" in message and "cannot be told from trial 4's" in message and "chosen as the faster" in message
    )


def test_recommendations_say_tie_where_the_interval_covers_the_bound(tmp_path):
    run = _write_run(tmp_path)
    recorded = read_run(run)
    front, standards, reference = recorded.front, recorded.standards, recorded.reference
    noise = run_noise(run, [front, standards], reference, "real-data")
    within, knee = recommended_plans(front, standards, reference, knee=2, ratios=(1.25,), noise=noise)
    assert within.trial == 2 and within.ties and within.ties[0].startswith("tie: its FID ratio")
    assert within.ratio_interval is not None and within.ratio_interval.covers(1.25)
    plain = recommended_plans(front, standards, reference, knee=2, ratios=(1.25,))[0]
    assert plain.trial == 3 and not plain.ties  # without intervals the figure alone decides
    assert knee.trial == 3 and knee.standard["warm_start"] == "dpmsolver++2m-10"
    assert knee.versus_standard.covers(0.0)  # plan 3 and the standard configuration cannot be told apart


def test_a_front_entirely_inside_the_noise_says_so(capsys, tmp_path):
    same = {  # three plans drawn alike, each with noise of its own (their FIDs happen to fall as they slow down)
        trial: (f"bbbbbbbbbbb{trial}", 2.0, 0.3, 10.0 * (4 - trial), "") for trial in (1, 2, 3)
    }
    run = _write_run(tmp_path, plans=same, standard=(7, "bbbbbbbbbbb7", 2.5, 0.3, 31.0, "ddim-10"))
    assert main(["plan", str(run), "--max-latency-ms", "100"]) == 0
    output = capsys.readouterr().out
    assert "at 64 samples this search cannot tell these plans apart: raise `quality.samples`" in output
    assert "trial 3:" in output.splitlines()[1]  # the lowest FID's (trial 1's) tie goes to the fastest


def test_kept_features_that_do_not_give_the_recorded_figure_are_not_used(tmp_path):
    run = _write_run(tmp_path)
    recorded = read_run(run)
    front = recorded.front
    front.loc[front["trial"] == 2, "fid"] += 1.0  # measured against another reference set, or edited
    noise = run_noise(run, [front], recorded.reference, "real-data")
    assert noise.missing == [2] and noise.fid({"trial": 2}) is None and noise.fid({"trial": 3}) is not None


# --- whole runs --------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
def test_an_ancestral_reference_gap_is_reported_as_a_gap_and_deterministic_plans_are_compared_paired(fast_overrides):
    """The tiny pipeline's default call is 100-step ancestral DDPM: no deterministic plan reproduces its images, so
    every plan's FID carries the ODE-vs-ancestral distance. The report says so (no floor presented as noise), and
    two deterministic plans that agree differ by a paired interval far narrower than either figure's own."""
    from autoaccel.cli.search_command import search
    from autoaccel.config import compose_config

    index = search(compose_config([*fast_overrides, "budget.trials=4"]), log=lambda message: None)
    run = index.parent
    html = index.read_text()
    reference = json.loads((run / "reference.json").read_text())
    assert reference["fid_floor"] is None and "no floor" in reference["fid_floor_note"]
    assert "adds fresh noise at every step" in html and "not sampling noise" in html
    assert "FID below" not in html  # the old floor sentence, which called the gap noise
    trials = pd.read_csv(run / "trials.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    store = FeatureStore(run / "features")
    for key in complete["candidate_key"]:
        assert store.get(plan_set(key, 48)).features.shape[0] == 48
    noise = run_noise(run, [complete], reference, reference["quality_reference"])
    assert noise.missing == [] and noise.paired_reference and noise.ode_gap() is not None
    standard = {tag: row for _, row in complete.iterrows() if (tag := row["warm_start"])}
    dpm, unipc = standard["dpmsolver++2m-4"], standard["unipc-4"]
    difference = noise.difference(dpm, unipc)
    widths = [noise.fid(row).hi - noise.fid(row).lo for row in (dpm, unipc)]
    assert difference.hi - difference.lo < 0.2 * min(widths)
    front = pd.read_csv(run / "pareto.csv")
    assert (front["fid_lo"] <= front["fid"]).all() and (front["fid"] <= front["fid_hi"]).all()
    assert front["fid_ratio"].isna().all()  # no ratio to a reference FID that is 0 by construction


@pytest.mark.slow
@pytest.mark.integration
def test_a_digits_search_shows_intervals_and_plan_ties_exactly_where_they_cover_the_bound(capsys, tmp_path):
    """The embedded digits model at 64 samples: the report shows the paired intervals, and ``plan --max-fid-ratio
    1.25`` calls its choice a tie exactly when the chosen plan's ratio interval in pareto.csv covers 1.25."""
    overrides = [
        "target.reference=ddim-20",
        "quality.samples=64",
        "quality.chunk_size=64",
        "quality.ode_steps=50",
        "budget.trials=5",
        "budget.warm_start_steps=[4]",
        "cost.repeats=1",
        "cost.warmup=0",
        "cost.batch_size=4",
        "report.grid_images=8",
        f"report.dir={tmp_path / 'reports'}",
        f"cache_dir={tmp_path / 'cache'}",
        "quiet=true",
    ]
    assert main(["search", *overrides]) == 0
    run = tmp_path / "reports" / "digits-sampler"
    front = pd.read_csv(run / "pareto.csv")
    assert front[["fid_lo", "fid_hi", "fid_ratio", "fid_ratio_lo", "fid_ratio_hi"]].notna().all().all()
    html = (run / "index.html").read_text()
    for fragment in ("FID 95% interval", "of the reference's FID", "a perfect sampler scores FID", "held out"):
        assert fragment in html
    # the report's 1.25x recommendation: the fastest plan meeting the bound by its ratio or by its interval, a tie
    # exactly when its interval covers the bound (all from pareto.csv, which the report wrote from the same rounds)
    eligible = front[(front["fid_ratio"] <= 1.25) | (front["fid_ratio_lo"] <= 1.25)].sort_values(["latency_ms", "fid"])
    if not eligible.empty:
        chosen = eligible.iloc[0]
        covers = chosen["fid_ratio_lo"] <= 1.25 <= chosen["fid_ratio_hi"]
        assert ("cannot be told from 1.25 at 64 samples" in html) == covers
    reference = json.loads((run / "reference.json").read_text())
    assert reference["fid_floor"]["samples"] == 64 and reference["fid_floor"]["reference_count"] == 1797 - 64
    capsys.readouterr()
    code = main(["plan", str(run), "--max-fid-ratio", "1.25"])
    output = capsys.readouterr().out
    if code == 0:
        trial = int(output.splitlines()[1].split()[1].rstrip(":"))
        chosen = front[front["trial"] == trial].iloc[0]
        covers = chosen["fid_ratio_lo"] <= 1.25 <= chosen["fid_ratio_hi"]
        assert ("tie: its FID ratio" in output) == covers
        assert f"[{chosen['fid_ratio_lo']:.3g}, " in output
