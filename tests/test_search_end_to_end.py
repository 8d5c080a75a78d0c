"""The whole path on a tiny pipeline folder: search, report, recipes, resume, failures, plan, apply."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import torch
import yaml

from autoaccel.cli.main import main
from autoaccel.cli.search_command import search
from autoaccel.config import compose_config
from tests.conftest import fast_overrides_for
from tests.plan_ledgers import written_before_the_reference_was_renamed


def run_dir_of(overrides, study="pipeline-sampler"):
    folder = [item for item in overrides if item.startswith("report.dir=")][0].split("=", 1)[1]
    from pathlib import Path

    return Path(folder) / study


@pytest.fixture(scope="module")
def resumed_run(tiny_pipeline_dir, shared_cache_dir, tmp_path_factory):
    """One study the tests of this module share: searched through the command line for 5 trials, then resumed to 8.
    Its trials before and after the resume, and its run folder (read only; a test that writes copies it)."""
    overrides = fast_overrides_for(tiny_pipeline_dir, shared_cache_dir, tmp_path_factory.mktemp("resumed") / "reports")
    assert main(["search", *overrides, "budget.trials=5"]) == 0
    run_dir = run_dir_of(overrides)
    before = pd.read_csv(run_dir / "trials.csv")
    index = search(compose_config([*overrides, "budget.trials=8"]), log=lambda message: None)
    assert index.parent == run_dir
    return SimpleNamespace(run_dir=run_dir, before=before, after=pd.read_csv(run_dir / "trials.csv"))


@pytest.mark.slow
@pytest.mark.integration
def test_search_writes_report_front_and_recipes(resumed_run):
    run_dir = resumed_run.run_dir
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == 8
    assert {"fid", "kid", "kid_std", "precision", "recall", "psnr_vs_ode", "nfe", "latency_ms", "state"} <= set(
        trials.columns
    )
    # the three standard configurations at 4 steps ran first and are marked
    assert set(trials["warm_start"].dropna().head(3)) == {"ddim-4", "dpmsolver++2m-4", "unipc-4"}
    front = pd.read_csv(run_dir / "pareto.csv")
    assert list(front.columns[:8]) == ["trial", "nfe", "fid", "fid_std", "kid", "kid_std", "precision", "recall"]
    assert {"latency_ms", "peak_memory_mb", "recipe"} <= set(front.columns)
    assert not front.empty
    complete = trials[trials["state"] == "COMPLETE"]
    for _, point in front.iterrows():  # nothing complete dominates a front point
        dominated = complete[(complete["fid"] < point["fid"]) & (complete["latency_ms"] < point["latency_ms"])]
        assert dominated.empty
        recipe = yaml.safe_load((run_dir / point["recipe"]).read_text())
        assert recipe["derived"]["timesteps"] == yaml.safe_load(str(point["timesteps"]))  # what was measured
        assert recipe["figures"]["fid"] == pytest.approx(point["fid"])
    html = (run_dir / "index.html").read_text()
    assert "Pareto front" in html and "pareto.png" in html and "grids/reference.png" in html
    # FID is against the reference call's own images: no floor, paired intervals instead
    assert "FID floor" in html and "no floor" in html and "paired bootstrap rounds over the 48 seeds" in html
    assert (run_dir / "pareto.png").stat().st_size > 1000
    assert (run_dir / "grids" / "reference.png").exists()


@pytest.mark.slow  # samples the reference first: about 5 s on its own
def test_recipe_reproduces_scored_images_bit_exactly(fast_overrides, tiny_pipeline_dir):
    from diffusers import DDPMPipeline

    from autoaccel import apply_recipe
    from autoaccel.pipeline.seeds import sample_in_chunks
    from autoaccel.plan.apply import build_pipeline
    from autoaccel.plan.candidate import Candidate
    from autoaccel.search.run import prepare_run

    context = prepare_run(compose_config([*fast_overrides, "budget.trials=4"]))
    for params in (
        {"solver.name": "unipc", "solver.order": 3, "timesteps.family": "karras", "timesteps.rho": 7.0},
        {
            "solver.name": "ddpm",
            "timesteps.family": "free",
            "timesteps.shift": 1.5,
            "timesteps.gap_0": 0.3,
            "timesteps.gap_1": 1.0,
            "timesteps.gap_2": 0.5,
            "solver.guidance": 1.5,
        },
    ):
        searched = {"timesteps.steps": 4, "timesteps.start": 0.9, "timesteps.end": 0.05, **params}
        searched.setdefault("solver.guidance", 1.0)
        if searched["solver.name"] == "unipc":
            searched.update({"solver.final_sigma": "sigma_min", "solver.lower_order_final": False})
        candidate = Candidate.from_params(context.space.complete(searched))
        plan = candidate.plan(context.space.techniques)
        pipeline = build_pipeline(context.target, plan)
        scored = sample_in_chunks(pipeline, context.judge.seeds, context.judge.chunk_size)

        from autoaccel.plan.recipe import build_recipe, save_recipe

        recipe_path = save_recipe(
            build_recipe(context.target, plan, pipeline, {}, {}, {"seed": 0}, {}),
            context.run_dir / "recipes" / f"{candidate.key}.yaml",
        )
        fresh = DDPMPipeline.from_pretrained(tiny_pipeline_dir)
        reproduced = sample_in_chunks(apply_recipe(fresh, recipe_path), context.judge.seeds, context.judge.chunk_size)
        assert torch.equal(scored, reproduced)


@pytest.mark.slow
@pytest.mark.integration
def test_resume_continues_the_study_without_losing_trials(resumed_run):
    before, after = resumed_run.before.copy(), resumed_run.after.copy()
    assert len(before) == 5 and len(after) == 8
    # what each trial measured stays; the latency confirmed before each report is a figure of that report's
    # side-by-side timing (the search's own figure is then in search_latency_ms)
    for frame in (before, after):
        frame["measured_latency_ms"] = frame.get("search_latency_ms", frame["latency_ms"]).fillna(frame["latency_ms"])
    columns = ["trial", "state", "fid", "measured_latency_ms"]
    pd.testing.assert_frame_equal(before[columns], after[columns].head(5))
    assert after["warm_start"].fillna("").str.len().gt(0).sum() == 3  # warm starts were not enqueued twice


@pytest.mark.slow
@pytest.mark.integration
def test_plan_report_and_resume_work_on_a_run_folder_written_before_the_reference_was_renamed(
    resumed_run, fast_overrides, capsys
):
    """A run folder from before the reference call's stored names changed (the study's ``teacher`` row,
    ``teacher-samples``, ``teacher.json``): ``plan`` answers as before, ``report`` writes ``reference.json`` in place
    of ``teacher.json``, and a resumed search keeps the measured reference and records it under its new name."""
    run_dir = run_dir_of(fast_overrides)
    shutil.copytree(resumed_run.run_dir, run_dir)  # the module's finished study, 8 trials
    capsys.readouterr()
    assert main(["plan", str(run_dir), "--max-nfe", "100"]) == 0
    current = capsys.readouterr().out
    assert "vs the reference" in current
    written_before_the_reference_was_renamed(run_dir)
    old = json.loads((run_dir / "teacher.json").read_text())
    assert not (run_dir / "reference.json").exists() and old["quality_reference"] == "reference-samples"

    assert main(["plan", str(run_dir), "--max-nfe", "100"]) == 0
    assert capsys.readouterr().out == current
    assert main(["plan", str(run_dir), "--max-fid-ratio", "1.25"]) == 2  # FID is against the reference's samples
    assert "fid is measured against the reference's own samples" in capsys.readouterr().err

    assert main(["report", str(run_dir)]) == 0
    written = json.loads((run_dir / "reference.json").read_text())
    figures = ("fid", "nfe", "latency_ms")
    assert {key: written[key] for key in figures} == {key: old[key] for key in figures}
    assert written["quality_reference"] == "reference-samples"
    assert not (run_dir / "teacher.json").exists() and not (run_dir / "grids" / "teacher.png").exists()
    assert "grids/reference.png" in (run_dir / "index.html").read_text()

    lines: list[str] = []
    search(compose_config([*fast_overrides, "budget.trials=10", "cost.confirm=false"]), log=lines.append)
    assert not [line for line in lines if "measuring the reference" in line], "the recorded reference is kept"
    assert len(pd.read_csv(run_dir / "trials.csv")) == 10
    attrs = optuna.load_study(study_name=run_dir.name, storage=f"sqlite:///{run_dir / 'ledger.db'}").user_attrs
    assert attrs["reference"]["fid"] == old["fid"] and attrs["target"]["quality_reference"] == "reference-samples"


@pytest.mark.slow  # seconds of searching, training or scoring: kept out of the quick subset
def test_resume_refuses_changed_settings(resumed_run, fast_overrides):
    shutil.copytree(resumed_run.run_dir, run_dir_of(fast_overrides))
    from autoaccel.errors import ConfigError

    with pytest.raises(ConfigError, match="quality.samples"):
        search(compose_config([*fast_overrides, "budget.trials=9", "quality.samples=40"]), log=lambda message: None)


@pytest.mark.slow
@pytest.mark.integration
def test_interrupted_trial_is_queued_again_on_resume(fast_overrides, monkeypatch):
    from autoaccel.measure import evaluator as evaluator_module

    calls = {"count": 0}
    original = evaluator_module.Evaluator.evaluate

    def interrupt_on_third(self, candidate):
        calls["count"] += 1
        if calls["count"] == 3:
            raise KeyboardInterrupt
        return original(self, candidate)

    monkeypatch.setattr(evaluator_module.Evaluator, "evaluate", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        search(compose_config([*fast_overrides, "budget.trials=6"]), log=lambda message: None)
    monkeypatch.setattr(evaluator_module.Evaluator, "evaluate", original)
    index = search(compose_config([*fast_overrides, "budget.trials=6"]), log=lambda message: None)
    trials = pd.read_csv(index.parent / "trials.csv")
    interrupted = trials[trials["failure"].fillna("").str.contains("interrupted")]
    assert len(interrupted) == 1
    # the interrupted standard configuration (unipc-4) was evaluated again and completed
    assert (trials[trials["warm_start"] == "unipc-4"]["state"] == "COMPLETE").any()


@pytest.mark.slow
@pytest.mark.integration
def test_failing_trials_are_recorded_and_the_search_goes_on(fast_overrides, tmp_path):
    space = tmp_path / "broken.yaml"
    space.write_text(
        "techniques: [solver, timesteps]\n"
        "fixed: {timesteps.family: power, timesteps.end: 0.0, solver.order: 2}\n"
        "dimensions:\n"
        "  timesteps.steps: {type: int, low: 3, high: 5}\n"
        "  timesteps.start: {type: float, low: 0.001, high: 0.03}\n"  # too few timesteps for distinct steps
        "  solver.name: {type: categorical, choices: [dpmsolver++, unipc]}\n"
    )
    index = search(
        compose_config([*fast_overrides, f"space={space}", "budget.trials=12", "study_name=broken", "seed=3"]),
        log=lambda message: None,
    )
    trials = pd.read_csv(index.parent / "trials.csv")
    assert len(trials) == 12
    failures = trials[trials["state"] == "FAIL"]["failure"]
    assert failures.str.contains("distinct steps do not fit").any()
    assert (trials["state"] == "COMPLETE").any()


@pytest.mark.slow  # samples the reference first: about 5 s on its own
def test_nan_images_fail_the_trial_with_the_reason(fast_overrides):
    from autoaccel.plan.candidate import Candidate
    from autoaccel.search.run import prepare_run

    context = prepare_run(compose_config([*fast_overrides, "budget.trials=1"]))
    with torch.no_grad():
        context.target.denoiser.conv_out.bias.fill_(float("nan"))
    params = context.space.complete(
        {"timesteps.steps": 3, "timesteps.family": "uniform_trailing", "solver.name": "ddim", "solver.guidance": 1.0}
    )
    measurement = context.evaluator.evaluate(Candidate.from_params(params))
    assert not measurement.ok
    assert "NaN" in measurement.failure


@pytest.mark.slow
@pytest.mark.integration
def test_cli_plan_apply_and_errors(resumed_run, tmp_path, capsys):
    # the search command itself ran the shared study's first 5 trials (and returned 0)
    run_dir = resumed_run.run_dir
    assert main(["plan", str(run_dir), "--max-nfe", "100"]) == 0
    assert "the plan with the lowest fid within nfe <= 100:" in capsys.readouterr().out
    assert main(["plan", str(run_dir), "--max-latency-ms", "0.000001"]) == 3
    assert "no front plan is the plan with the lowest fid within latency_ms <= 1e-06" in capsys.readouterr().out
    recipe = sorted((run_dir / "recipes").glob("*.yaml"))[0]
    out = tmp_path / "images"
    assert main(["apply", str(recipe), "--out", str(out), "--n", "5"]) == 0
    assert len(list(out.glob("0*.png"))) == 5 and (out / "grid.png").exists()
    assert main(["search", "budget.trails=3"]) == 2
    assert "budget.trails" in capsys.readouterr().err
    assert main(["search", "target=pipeline", f"target.path={tmp_path / 'missing'}"]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2


@pytest.mark.slow
@pytest.mark.integration
def test_limits_keep_infeasible_plans_off_the_front(fast_overrides):
    index = search(
        compose_config([*fast_overrides, "budget.trials=10", "budget.max_nfe=5", "seed=1"]), log=lambda message: None
    )
    trials = pd.read_csv(index.parent / "trials.csv")
    front = pd.read_csv(index.parent / "pareto.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    assert (complete["feasible"] == (complete["nfe"] <= 5)).all()
    assert not front.empty and (front["nfe"] <= 5).all()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("optimizer", ["pymoo_nsga2", "nevergrad_ngopt"])
def test_proposing_backends_search_and_resume_through_the_ledger(fast_overrides, optimizer):
    overrides = [*fast_overrides, f"optimizer={optimizer}", "optimizer.population_size=4", "study_name=proposing"]
    search(compose_config([*overrides, "budget.trials=6"]), log=lambda message: None)
    index = search(compose_config([*overrides, "budget.trials=10"]), log=lambda message: None)
    trials = pd.read_csv(index.parent / "trials.csv")
    assert len(trials) == 10 and (trials["state"] == "COMPLETE").sum() >= 5


@pytest.mark.slow
@pytest.mark.integration
def test_multi_fidelity_promotes_some_and_keeps_only_full_fidelity_plans_on_the_front(fast_overrides):
    overrides = [*fast_overrides, "fidelity.levels=[16,48]", "study_name=fidelity", "seed=2"]
    search(compose_config([*overrides, "budget.trials=10"]), log=lambda message: None)
    index = search(compose_config([*overrides, "budget.trials=14"]), log=lambda message: None)  # resumes the ladder
    trials = pd.read_csv(index.parent / "trials.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    assert len(trials) == 14
    assert complete["fid@16"].notna().all()  # every candidate was scored cheaply first
    promoted = complete["fid@48"].notna()
    assert promoted.any() and (~promoted).any()
    assert (complete.loc[~promoted, "quality_samples"] == 16).all() and not complete.loc[~promoted, "feasible"].any()
    front = pd.read_csv(index.parent / "pareto.csv")
    assert not front.empty and (front["quality_samples"] == 48).all()


def test_fidelity_levels_must_end_at_the_quality_sample_count(fast_overrides):
    from autoaccel.errors import ConfigError

    with pytest.raises(ConfigError, match="must end at quality.samples=48"):
        search(compose_config([*fast_overrides, "fidelity.levels=[16,32]"]), log=lambda message: None)


@pytest.mark.slow
@pytest.mark.integration
def test_concurrent_trials_fill_the_ledger_like_sequential_ones(fast_overrides):
    overrides = [
        *fast_overrides,
        "budget.concurrent=3",
        "study_name=concurrent",
        "optimizer=pymoo_nsga2",
        "optimizer.population_size=4",
    ]
    index = search(compose_config([*overrides, "budget.trials=9"]), log=lambda message: None)
    trials = pd.read_csv(index.parent / "trials.csv")
    assert len(trials) == 9 and set(trials["state"]) <= {"COMPLETE", "FAIL"}
    assert trials["trial"].tolist() == list(range(9))
    assert (trials["state"] == "COMPLETE").sum() >= 6
    assert not pd.read_csv(index.parent / "pareto.csv").empty


@pytest.mark.slow
def test_measurement_gate_keeps_cost_measurement_alone():
    import threading
    import time

    from autoaccel.measure.gate import MeasurementGate

    gate, events, lock = MeasurementGate(), [], threading.Lock()

    def shared_work(name):
        with gate.shared():
            with lock:
                events.append(("start", name))
            time.sleep(0.05)
            with lock:
                events.append(("end", name))

    def exclusive_work():
        with gate.exclusive():
            with lock:
                events.append(("start", "cost"))
            time.sleep(0.05)
            with lock:
                events.append(("end", "cost"))

    threads = [threading.Thread(target=shared_work, args=(f"s{index}",)) for index in range(3)]
    threads.insert(1, threading.Thread(target=exclusive_work))
    for thread in threads:
        thread.start()
        time.sleep(0.01)
    for thread in threads:
        thread.join()
    cost_start = events.index(("start", "cost"))
    assert events[cost_start + 1] == ("end", "cost")  # nothing else ran while cost was measured


@pytest.mark.slow
@pytest.mark.integration
def test_a_shared_storage_leaves_other_workers_running_trials_alone(fast_overrides, tmp_path):
    """A live worker's trial (it keeps beating) is neither swept nor re-queued; this worker waits for it to end
    before it stops, so that a trial whose worker died would still be caught and evaluated again."""
    import threading

    import optuna

    from autoaccel.search.ledger import Ledger
    from autoaccel.search.liveness import Heartbeat

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    overrides = [*fast_overrides, f"storage={storage}", "study_name=shared", "liveness.interval_s=0.3"]
    search(compose_config([*overrides, "budget.trials=3", "liveness.grace_s=2"]), log=lambda message: None)
    other_worker = Ledger.open_existing(storage, "shared")
    study = other_worker.study
    other_worker_trial = study.ask()  # another process is evaluating this one right now, and beating
    with Heartbeat(other_worker, interval_s=0.2) as heartbeat:
        heartbeat.hold(other_worker_trial)
        # its worker ends it (FAIL keeps this foreign, candidate-less trial off the report's front)
        finishes = threading.Timer(6.0, lambda: study.tell(other_worker_trial, state=optuna.trial.TrialState.FAIL))
        finishes.start()
        search(compose_config([*overrides, "budget.trials=5", "liveness.grace_s=2"]), log=lambda message: None)
        finishes.join()
    frozen = optuna.load_study(study_name="shared", storage=storage).trials[other_worker_trial.number]
    assert frozen.state == optuna.trial.TrialState.FAIL and "failure" not in frozen.user_attrs  # not swept
