"""What a search costs: the estimate before it starts (training, calibration, every fidelity level, per candidate
and for the budget), the fidelity ladder a long search gets by default, and the device-hours the report states."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import autoaccel.search.estimate as estimate_module
import autoaccel.search.levels as levels_module
from autoaccel.cli.main import main
from autoaccel.config.compose import compose_config
from autoaccel.report.search_cost import COST_FILE, search_cost
from autoaccel.search.estimate import ONCE_PER_MODEL, SearchTimings, estimate_search, reach_shares
from autoaccel.search.levels import default_levels
from autoaccel.search.run import prepare_run
from autoaccel.techniques.base import get_technique

# what the estimate multiplies, fixed: the figures below are arithmetic on them, not on this machine's speed
TIMINGS = SearchTimings(chunk=0.5, batch=0.05, chunk_rows=512, trained_ratio=3.0, scoring=2.0, samples=512)


def _digits_context(tmp_path, shared_cache_dir, *overrides: str):
    config = compose_config(
        ["target=digits", f"report.dir={tmp_path / 'reports'}", f"cache_dir={shared_cache_dir}", *overrides]
    )
    return prepare_run(config)


@pytest.fixture
def released():
    """Contexts a test prepared, their study locks released at its end."""
    contexts = []
    yield contexts.append
    for context in contexts:
        context.lock.release()


def test_the_estimate_counts_what_trials_train_per_candidate_and_for_the_budget(tmp_path, shared_cache_dir, released):
    """A space that distills: the estimate has a training stage (students' steps and the teacher's calls) and the
    teacher data made once, a candidate's training is part of its figure, and the budget is trials x candidate."""
    context = _digits_context(tmp_path, shared_cache_dir, "space=distilled", "fidelity.levels=[]")
    released(context)
    estimate = estimate_search(context, 10, [], timings=TIMINGS)
    assert estimate.stages["training"] > 0 and estimate.stages[ONCE_PER_MODEL] > 0
    assert estimate.candidate["training"] > estimate.candidate["sampling"]  # hundreds of iterations per student
    assert estimate.stages["training"] == pytest.approx(10 * estimate.candidate["training"])
    text = estimate.describe()
    assert "for 10 trials" in text and "training" in text and "a candidate about" in text

    schedules_only = _digits_context(tmp_path, shared_cache_dir, "space=sampler", "fidelity.levels=[]", "study_name=s")
    released(schedules_only)
    plain = estimate_search(schedules_only, 10, [], timings=TIMINGS)
    assert not plain.stages.get("training") and not plain.candidate.get("training")


def test_the_estimate_counts_calibration(tmp_path, shared_cache_dir, released):
    """Quantization calibrates on the teacher's trajectory (activation ranges per trial, sensitivity once per bit
    width): a calibration stage and teacher data, no training."""
    context = _digits_context(tmp_path, shared_cache_dir, "space=quantized_sampler", "fidelity.levels=[]")
    released(context)
    estimate = estimate_search(context, 10, [], timings=TIMINGS)
    assert estimate.stages["calibration"] > 0 and estimate.candidate["calibration"] > 0
    assert estimate.stages[ONCE_PER_MODEL] > 0
    assert not estimate.stages.get("training")


def test_technique_declarations_follow_their_settings():
    """What a technique declares grows with what it is set to do: iterations, their share at a lower level, recovery
    steps; nothing where it leaves the model as it is."""
    from autoaccel.targets.registry import load_target

    target = load_target("digits", None, "cpu")
    distillation = get_technique("distillation")

    def work(params: dict, name: str = "distillation"):
        technique = get_technique(name)
        return technique.search_work(technique.config_from_params(params), target, 10.0)

    consistency = {"distillation.method": "consistency", "distillation.iterations": 400}
    full, quarter = work(consistency), work({**consistency, "distillation.train_share": 0.25})
    assert quarter.trained == pytest.approx(full.trained / 4) and full.shared == quarter.shared
    assert work({**consistency, "distillation.iterations": 800}).trained == 2 * full.trained
    assert distillation.search_work is not None and work({"distillation.method": "none"}).trained == 0
    recovered = work({"pruning.ratio": 0.3, "pruning.recovery_steps": 100}, "pruning")
    assert recovered.trained == 100 * 64 and recovered.shared
    assert work({"pruning.ratio": 0.3}, "pruning").trained == 0


def test_levels_and_training_shares_lower_what_a_candidate_costs(tmp_path, shared_cache_dir, released):
    """Each level's images for the share of candidates expected there; with training shares a candidate trains a
    share first and the rest only if promoted."""
    one = _digits_context(tmp_path, shared_cache_dir, "space=distilled", "fidelity.levels=[]", "study_name=one")
    released(one)
    single = estimate_search(one, 40, [], timings=TIMINGS)
    ladder = estimate_search(one, 40, [], levels=[64, 512], timings=TIMINGS)
    assert ladder.candidate["sampling"] < single.candidate["sampling"]
    assert ladder.candidate["training"] == pytest.approx(single.candidate["training"])  # trained once, in full
    assert "fidelity levels [64, 512]" in ladder.describe()
    shares = _digits_context(
        tmp_path,
        shared_cache_dir,
        "space=distilled",
        "fidelity.levels=[64,512]",
        "fidelity.train_shares=[0.25,1.0]",
        "study_name=shares",
    )
    released(shares)
    shared = estimate_search(shares, 40, [], timings=TIMINGS)
    assert shared.candidate["training"] < single.candidate["training"]
    assert reach_shares([64, 512], 40, 0.0) == [1.0, pytest.approx((3 + 0.3 * 37) / 40)]


def test_max_minutes_caps_the_trials_the_estimate_counts(tmp_path, shared_cache_dir, released):
    context = _digits_context(
        tmp_path, shared_cache_dir, "space=distilled", "fidelity.levels=[]", "budget.max_minutes=1"
    )
    released(context)
    capped = estimate_search(context, 40, [], timings=TIMINGS)
    assert capped.stages["training"] < 40 * capped.candidate["training"]
    assert "budget.max_minutes=1 stops starting trials" in capped.describe()


def test_the_default_ladder_never_goes_below_what_fid_needs():
    assert default_levels(512) == [64, 512]
    assert default_levels(4096) == [512, 4096]
    assert default_levels(1000) == [125, 1000]
    assert default_levels(100) == []  # its first level would be 64 of 100: nothing worth saving


def _settings(context) -> dict:
    return context.ledger.study.user_attrs["settings"]


@pytest.mark.integration
def test_a_long_search_gets_a_ladder_unless_levels_were_set_and_keeps_it_on_resume(
    fast_overrides, monkeypatch, released
):
    """Past the threshold a new study whose user left fidelity.levels unset scores on [samples/8 (>= 64), samples],
    decided before its fingerprint is recorded; resumed (now under the threshold), it keeps that ladder; an
    explicit fidelity.levels=[] keeps one level however long the search."""
    overrides = [*fast_overrides, "quality.samples=128", "quality.chunk_size=128"]
    monkeypatch.setattr(levels_module, "LADDER_THRESHOLD_S", 0.0)
    first = prepare_run(compose_config([*overrides, "study_name=long"]))
    first.lock.release()
    assert list(first.config.fidelity.levels) == [64, 128] and _settings(first)["fidelity.levels"] == [64, 128]
    assert first.levels_note.startswith("fidelity.levels defaults to [64, 128]: on one level this search is estimated")

    monkeypatch.setattr(levels_module, "LADDER_THRESHOLD_S", math.inf)
    resumed = prepare_run(compose_config([*overrides, "study_name=long", "budget.trials=60"]))
    released(resumed)
    assert list(resumed.config.fidelity.levels) == [64, 128]
    assert "as this study started with" in resumed.levels_note

    monkeypatch.setattr(levels_module, "LADDER_THRESHOLD_S", 0.0)
    explicit = prepare_run(compose_config([*overrides, "study_name=explicit", "fidelity.levels=[]"]))
    released(explicit)
    assert list(explicit.config.fidelity.levels) == [] and _settings(explicit)["fidelity.levels"] == []
    assert explicit.levels_note == ""

    monkeypatch.setattr(levels_module, "LADDER_THRESHOLD_S", math.inf)
    short = prepare_run(compose_config([*overrides, "study_name=short"]))
    released(short)
    assert list(short.config.fidelity.levels) == [] and short.levels_note == ""


def test_training_shares_without_levels_are_refused_at_start(fast_overrides):
    with pytest.raises(Exception, match=r"fidelity.train_shares=\[0.25, 1.0\] needs fidelity.levels set"):
        prepare_run(compose_config([*fast_overrides, "fidelity.train_shares=[0.25,1.0]"]))


@pytest.mark.slow
@pytest.mark.integration
def test_the_report_states_what_the_search_cost_beside_the_speedup(fast_overrides, capsys):
    """Every search run records the device time it held; the report shows the device-hours (CPU-hours here) in the
    recommended plans' section and the run summary, and search_cost.json holds them with their parts."""
    overrides = [*fast_overrides, "budget.trials=2", "study_name=cost"]
    assert main(["search", *overrides]) == 0
    assert main(["search", *overrides[:-2], "budget.trials=3", "study_name=cost"]) == 0  # resumed: a second run
    run_dir = Path(next(item.split("=", 1)[1] for item in fast_overrides if item.startswith("report.dir="))) / "cost"
    cost = json.loads((run_dir / COST_FILE).read_text())
    assert cost["runs"] == 2 and cost["recorded"] and cost["device_hours"]["CPU"] > 0
    assert cost["parts_seconds"]["trials"] > 0 and cost["parts_seconds"]["reference"] > 0
    assert cost["device_hours"]["CPU"] * 3600 >= cost["parts_seconds"]["trials"]  # one trial at a time
    assert cost["best_speedup_vs_reference"] > 1
    page = (run_dir / "index.html").read_text()
    recommended = page[page.index("<h2>Recommended plans</h2>") : page.index("<h2>Run</h2>")]
    assert "The search spent" in recommended and "CPU-hours" in recommended
    assert "faster than the reference" in recommended
    assert "<th>search cost</th>" in page and "over 2 search runs" in page


def test_a_study_whose_runs_recorded_nothing_is_given_its_trials_time():
    """A study from before runs recorded their time: its trials' seconds stand in, and the sentence says so."""
    import pandas as pd

    trials = pd.DataFrame({"seconds": [10.0, 20.0, math.nan], "train_minutes": [0.5, math.nan, math.nan]})
    older = search_cost([], trials, "cuda")
    assert older.seconds == 30.0 and not older.recorded
    assert older.hours_text() == "0.00833 GPU-hours" and older.sentence().startswith("at least")
    runs = [{"device": "cuda", "seconds": 3600.0, "stages": {"reference": 60.0}}]
    recorded = search_cost(runs, trials, "cpu")
    assert recorded.hours_text() == "1 GPU-hours" and recorded.parts["of which training"] == 30.0


@pytest.mark.integration
def test_a_latent_transformer_counts_its_decodes_its_cache_calibration_and_a_kept_decoder(
    fast_overrides, tmp_path, released
):
    """On a latent model every image is decoded (timed on its VAE), a calibrated cache runs an uncached pass per
    trial, and a tiny decoder is trained once for every trial that uses it."""
    from autoaccel.search.estimate import decode_seconds
    from autoaccel.testing.pipelines import build_tiny_pipeline

    folder = build_tiny_pipeline("dit", tmp_path / "dit")
    overrides = [item for item in fast_overrides if not item.startswith("target.path=")]
    overrides += [f"target.path={folder}", "fidelity.levels=[]"]
    space = tmp_path / "calibrated.yaml"
    space.write_text(
        "name: calibrated\ndescription: calibrated caches\ntechniques: [caching, solver, timesteps]\n"
        "dimensions:\n  caching.method: {type: categorical, choices: [first_block, mag]}\n"
        "  caching.strength: {type: float, low: 0.0, high: 1.0}\n  timesteps.steps: {type: int, low: 3, high: 10}\n"
    )
    cached = prepare_run(compose_config([*overrides, f"space={space}", "study_name=cached"]))
    released(cached)
    assert decode_seconds(cached) > 0
    timings = SearchTimings(0.5, 0.05, 48, 3.0, 2.0, 48, decode=0.01)
    estimate = estimate_search(cached, 10, [], timings=timings)
    assert estimate.stages["calibration"] > 0 and not estimate.stages.get("training")
    assert estimate.candidate["sampling"] > 48 * 0.01  # each image's decode is part of its sampling
    decoded = prepare_run(compose_config([*overrides, "space=decoded_sampler", "study_name=decoded"]))
    released(decoded)
    kept = estimate_search(decoded, 10, [], timings=timings)
    assert kept.stages[ONCE_PER_MODEL] > 0 and not kept.stages.get("training")


def test_the_timed_training_pass_leaves_the_model_as_it_was(fast_overrides, monkeypatch, released):
    """The pass computes every parameter's gradient on the target's own denoiser, then drops them and puts each
    parameter's requires_grad back; where it does not fit in memory the estimate assumes backward ~ 2x forward."""
    import torch

    context = prepare_run(compose_config([*fast_overrides, "fidelity.levels=[]"]))
    released(context)
    parameters = list(context.target.denoiser.parameters())
    parameters[0].requires_grad_(True)  # one the caller had on: it stays on
    before = [parameter.requires_grad for parameter in parameters]
    weights = [parameter.detach().clone() for parameter in parameters]
    assert estimate_module.trained_ratio(context) >= 1.0
    assert [parameter.requires_grad for parameter in parameters] == before
    assert all(parameter.grad is None for parameter in parameters)
    assert all(torch.equal(parameter, kept) for parameter, kept in zip(parameters, weights))

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(estimate_module, "predict", out_of_memory)
    assert estimate_module.trained_ratio(context) == estimate_module.ASSUMED_TRAINED_RATIO
    assert [parameter.requires_grad for parameter in parameters] == before


def test_work_made_once_per_model_is_counted_by_the_chance_a_trial_makes_it():
    """Shared work (a quantization sensitivity pass per bit width, a kept decoder) is counted once, weighted by
    the chance that the run's trials make it at all."""
    from autoaccel.search.estimate import TypicalWork
    from autoaccel.techniques.base import SearchWork

    typical = TypicalWork([SearchWork()], {"pass": SearchWork(calibration=100.0)}, {"pass": 0.25})
    assert typical.made_by("pass", 1) == pytest.approx(0.25)
    assert typical.made_by("pass", 40) == pytest.approx(1 - 0.75**40)
    assert typical.made_by("pass", 0) == 0.0


def test_a_study_stored_before_levels_were_decided_at_start_resumes_on_one_level(fast_overrides):
    """A study whose fingerprint and stored configuration predate fidelity.levels (its default was one level then)
    resumes with the levels unset: one level, not a refusal."""
    first = prepare_run(compose_config(fast_overrides))
    first.lock.release()
    settings = dict(first.ledger.study.user_attrs["settings"])
    settings.pop("fidelity.levels")
    stored = dict(first.ledger.study.user_attrs["config"])
    stored.pop("fidelity")
    first.ledger.study.set_user_attr("settings", settings)
    first.ledger.study.set_user_attr("config", stored)
    resumed = prepare_run(compose_config(fast_overrides))
    resumed.lock.release()
    assert list(resumed.config.fidelity.levels) == []
    assert resumed.ledger.study.user_attrs["settings"]["fidelity.levels"] == []
