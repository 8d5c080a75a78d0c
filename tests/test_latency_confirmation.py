"""The front's latencies are confirmed side by side before the report: a plan whose latency was inflated while
it was timed during the search (load on the machine) gets its true figure, the front is built again with the
confirmed figures, and the report shows both figures and what the confirmation changed."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest

import autoaccel.measure.evaluator as evaluator_module
import autoaccel.search.confirm as confirm
from autoaccel.cli.main import main
from autoaccel.cli.search_command import search
from autoaccel.config import compose_config
from autoaccel.measure import latency
from autoaccel.search.ledger import CONFIRMATION, Ledger

MS_PER_CALL = 10.0  # the noiseless machine of these tests: a call takes 10 ms per denoiser call


def _noiseless_machine(monkeypatch) -> None:
    real = latency.timed_call

    def timed_call(pipeline, seeds, on_cuda, **options):
        real(pipeline, seeds, on_cuda, **options)  # the call runs as it would; its time is the machine's
        return MS_PER_CALL * pipeline.denoiser_calls

    monkeypatch.setattr(latency, "timed_call", timed_call)


def _slowed_while_timed(monkeypatch, scheduler_class: str, factor: float) -> None:
    """Load on the machine while the plans of one scheduler are timed during the search (4-step plans only: the
    reference is timed as it is)."""
    real = evaluator_module.measure_cost

    def measure_cost(pipeline, seeds, warmup, repeats, **options):
        cost = real(pipeline, seeds, warmup, repeats, **options)
        if type(pipeline.scheduler).__name__ == scheduler_class and pipeline.denoiser_calls == 4:
            cost = replace(cost, latency_ms=cost.latency_ms * factor)
        return cost

    monkeypatch.setattr(evaluator_module, "measure_cost", measure_cost)


def _best_plan_scheduler(fast_overrides) -> str:
    """Which of the three standard 4-step plans scores the best FID (the same seeds give the same FIDs in every
    study), from a study without confirmation."""
    overrides = [*fast_overrides, "budget.trials=3", "cost.confirm=false", "study_name=plain"]
    index = search(compose_config(overrides), log=lambda message: None)
    trials = pd.read_csv(index.parent / "trials.csv")
    assert "search_latency_ms" not in trials and "cost.confirm=false" in index.read_text()
    assert trials["fid"].nunique() == 3, trials[["fid"]]
    return str(trials.loc[trials["fid"].idxmin(), "scheduler_class"])


@pytest.mark.slow
@pytest.mark.integration
def test_a_plan_slowed_while_it_was_timed_is_confirmed_at_its_true_latency_and_the_front_follows(
    fast_overrides, monkeypatch
):
    _noiseless_machine(monkeypatch)
    slowed = _best_plan_scheduler(fast_overrides)
    _slowed_while_timed(monkeypatch, slowed, factor=10)
    index = search(compose_config([*fast_overrides, "budget.trials=3", "study_name=confirmed"]), log=lambda m: None)
    run_dir = index.parent

    trials = pd.read_csv(run_dir / "trials.csv").set_index("trial")
    best = int(trials["fid"].idxmin())
    second = int(trials["fid"].drop(best).idxmin())
    truth = MS_PER_CALL * 4
    assert trials.loc[best, "scheduler_class"] == slowed
    assert trials.loc[best, "search_latency_ms"] == 10 * truth and trials.loc[best, "latency_ms"] == truth
    assert trials.loc[second, "search_latency_ms"] == truth == trials.loc[second, "latency_ms"]
    # at search time the slowed best plan and the fastest of the others made the front; confirmed, the best plan
    # is as fast as the others and dominates them
    front = pd.read_csv(run_dir / "pareto.csv")
    assert front["trial"].tolist() == [best]
    assert front["latency_ms"].tolist() == [truth] and front["search_latency_ms"].tolist() == [10 * truth]
    confirmation = Ledger.open_existing(f"sqlite:///{run_dir / 'ledger.db'}", "confirmed").study.user_attrs[
        CONFIRMATION
    ]
    assert confirmation["search_front"] == sorted([best, second]) and confirmation["front"] == [best]
    # the standard configurations the report compares with are confirmed too: all three plans here
    assert set(trials["cost_key"]) == set(confirmation["structures"])  # plans of one structure share its timing
    assert trials["search_latency_ms"].notna().all()
    # 90% and 0%: the other two standard configurations share one structure (the same calls)
    assert confirmation["left_front"] == [second] and confirmation["moved_median_pct"] == 45.0
    html = index.read_text()
    assert "1 plan left the front" in html and "45% (median)" in html and "latency at search (ms)" in html
    reference = json.loads((run_dir / "reference.json").read_text())
    assert reference["latency_ms"] == confirmation["reference"]["latency_ms"] == MS_PER_CALL * reference["nfe"]

    # the report rebuilt later reads the stored confirmation; it never times anything again
    monkeypatch.setattr(latency, "timed_call", lambda *args: pytest.fail("a rebuilt report must not time plans"))
    assert main(["report", str(run_dir)]) == 0
    assert pd.read_csv(run_dir / "pareto.csv").equals(front)


@pytest.mark.slow
@pytest.mark.integration
def test_the_confirmation_times_for_real_and_undoes_a_slowdown_during_the_search(fast_overrides, monkeypatch):
    slowed = _best_plan_scheduler(fast_overrides)
    _slowed_while_timed(monkeypatch, slowed, factor=1000)
    overrides = [*fast_overrides, "budget.trials=3", "cost.repeats=3", "study_name=real-clock"]
    index = search(compose_config(overrides), log=lambda m: None)
    trials = pd.read_csv(index.parent / "trials.csv").set_index("trial")
    best = trials.loc[trials["fid"].idxmin()]
    assert best["latency_ms"] < best["search_latency_ms"] / 20  # the real figure, timed beside the others
    assert bool(best["timing_exclusive"])


@pytest.mark.slow
@pytest.mark.integration
def test_a_reference_the_search_timed_with_one_call_is_confirmed_with_one_call(fast_overrides, monkeypatch):
    """A reference hundreds of steps long is timed once by the search, with progress lines; the confirmation
    times it once too (not warm-up plus a call per round), in the middle round, and the estimate counts that call."""
    import autoaccel.search.confirm as confirm_module
    import autoaccel.search.estimate as estimate_module
    import autoaccel.util.progress as progress

    _noiseless_machine(monkeypatch)
    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)  # every step of the reference's one timed call is "long"
    long_reference = 50  # denoiser calls: above LONG_CALL_STEPS here (the tiny model has 100 trained timesteps)
    for module in (evaluator_module, estimate_module):
        monkeypatch.setattr(module, "LONG_CALL_STEPS", 40)
    calls: list[int] = []
    real_call = confirm_module._call

    def counted(pipeline, seeds, on_cuda):
        elapsed = real_call(pipeline, seeds, on_cuda)
        calls.append(pipeline.denoiser_calls)
        return elapsed

    monkeypatch.setattr(confirm_module, "_call", counted)
    lines: list[str] = []
    overrides = [
        *fast_overrides,
        f"target.reference=ddim-{long_reference}",
        "budget.trials=2",
        "cost.warmup=1",
        "cost.repeats=3",
        "study_name=long-reference",
    ]
    index = search(compose_config(overrides), log=lines.append)
    assert calls.count(long_reference) == 1 and len(calls) > 1  # the plans: warm-up and three rounds each
    assert calls.index(long_reference) > len(calls) // 3  # inside the rounds, not before them
    reference = json.loads((index.parent / "reference.json").read_text())
    assert reference["latency_method"] == "single call" and reference["latency_ms"] == MS_PER_CALL * long_reference
    assert any(line.startswith("estimate: ") and "latency confirmation" in line for line in lines)
    # the search's one timed reference call says how far it got while it runs, and closes with a line
    timing = [line for line in lines if line.startswith("reference timing (one call): ")]
    half = f"reference timing (one call): {long_reference // 2}/{long_reference} denoiser calls (50%)"
    assert any(line.startswith(half) for line in timing), timing  # one line a step, each step one call
    assert timing[-1].startswith(f"reference timing (one call): {long_reference} denoiser calls in")


@pytest.mark.slow  # seconds of searching, training or scoring: kept out of the quick subset
@pytest.mark.integration
def test_the_standard_configurations_off_the_front_are_confirmed_beside_it(fast_overrides, monkeypatch):
    """The report compares each recommended plan with a standard configuration: both latencies are taken in the
    same interleaved rounds, even where the standard configuration is not on the front."""
    _noiseless_machine(monkeypatch)
    overrides = [*fast_overrides, "budget.trials=3", "study_name=standards"]
    index = search(compose_config([*overrides, "cost.confirm=false"]), log=lambda m: None)
    trials = pd.read_csv(index.parent / "trials.csv")
    counts = trials["cost_key"].value_counts()
    alone = int(trials.loc[trials["cost_key"].map(counts) == 1, "trial"].iloc[0])  # a structure of its own
    off_front = set(trials.loc[trials["trial"] != alone, "cost_key"])
    monkeypatch.setattr(confirm, "front_numbers", lambda frame, objectives: [alone])  # the front: that plan alone
    search(compose_config(overrides), log=lambda m: None)  # the study is complete: it reports, confirming first
    stored = Ledger.open_existing(f"sqlite:///{index.parent / 'ledger.db'}", "standards").study.user_attrs
    assert off_front and off_front <= set(stored[CONFIRMATION]["structures"])
