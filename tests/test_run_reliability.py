"""A run stays what it says between commands: a resume under settings that change what a figure means is refused,
a resumed warm start continues its list, a report never trains a missing artifact again and never writes under a
running search, a second search on a held study is refused before anything loads, ``target.prompts`` reaches the
embedded text-to-image model, and the embedded digits model has the adherence figure its limit asks for."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from autoaccel.cli.main import main
from tests.conftest import fast_overrides_for
from tests.test_run_integrity import _hold_study_lock, _one_line_error, _run_dir, _snapshot


def _noise_images(folder: Path, count: int = 200) -> Path:
    """A folder of grey 8x8 noise images: real data of nothing the model makes (enough of them for FID)."""
    from PIL import Image

    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for index in range(count):
        pixels = torch.randint(0, 256, (8, 8), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy(), mode="L").save(folder / f"noise{index}.png")
    return folder


@pytest.fixture(scope="module")
def finished_original(tiny_pipeline_dir, shared_cache_dir, tmp_path_factory):
    """A complete 3-trial study on the tiny pipeline, and its run folder, searched once for the module."""
    overrides = fast_overrides_for(tiny_pipeline_dir, shared_cache_dir, tmp_path_factory.mktemp("finished") / "reports")
    assert main(["search", *overrides, "budget.trials=3"]) == 0
    return _run_dir(overrides)


@pytest.fixture
def finished(finished_original, fast_overrides):
    """A copy of the complete 3-trial study's run folder where ``fast_overrides`` puts it: the test may change it."""
    run_dir = _run_dir(fast_overrides)
    shutil.copytree(finished_original, run_dir)
    return run_dir


@pytest.mark.slow
@pytest.mark.integration
def test_a_resume_under_settings_that_change_what_a_figure_means_is_refused(finished, fast_overrides, capsys, tmp_path):
    noise = _noise_images(tmp_path / "noise")
    before = _snapshot(finished)
    changes = {
        f"target.data={noise}": ("target.data", "none: FID against the reference call's own samples", "200 images"),
        "target.reference=ddim-10": ("target.reference", "default call", "ddim-10"),
        "quality.chunk_size=16": ("quality.chunk_size", "48", "16"),
        "quality.ode_steps=20": ("quality.ode_steps", "200", "20"),
    }
    for override, (setting, old, new) in changes.items():
        assert main(["search", *fast_overrides, "budget.trials=3", override]) == 2, override
        _one_line_error(capsys, f"{setting}: study has", old, new, "study_name=NEW", "report.dir")
    assert _snapshot(finished) == before
    assert main(["search", *fast_overrides, "budget.trials=3"]) == 0  # the study's own settings still resume


@pytest.mark.slow
@pytest.mark.integration
def test_a_study_recorded_before_a_setting_was_fingerprinted_is_judged_by_its_stored_configuration(
    finished, fast_overrides, capsys, tmp_path
):
    storage = f"sqlite:///{finished / 'ledger.db'}"
    study = optuna.load_study(study_name="pipeline-sampler", storage=storage)
    older = {key: study.user_attrs["settings"][key] for key in ("target_hash", "space", "quality.samples")}
    study.set_user_attr("settings", older)  # what an older autoaccel recorded

    assert main(["search", *fast_overrides, "budget.trials=3"]) == 0  # the settings it ran under: compatible
    recorded = optuna.load_study(study_name="pipeline-sampler", storage=storage).user_attrs["settings"]
    assert recorded["target.reference"].startswith("default call") and "target.data" in recorded

    study.set_user_attr("settings", older)
    noise = _noise_images(tmp_path / "noise")
    assert main(["search", *fast_overrides, "budget.trials=3", f"target.data={noise}"]) == 2
    _one_line_error(capsys, "target.data: study has None", str(noise))


@pytest.mark.slow
@pytest.mark.integration
def test_a_resumed_warm_start_continues_the_standard_configurations_where_it_stopped(fast_overrides):
    steps = ["budget.warm_start_steps=[4,6]"]
    assert main(["search", *fast_overrides, *steps, "budget.trials=1"]) == 0
    assert main(["search", *fast_overrides, *steps, "budget.trials=3"]) == 0
    trials = pd.read_csv(_run_dir(fast_overrides) / "trials.csv", keep_default_na=False)
    assert trials["warm_start"].tolist() == ["ddim-4", "dpmsolver++2m-4", "unipc-4"]
    assert main(["search", *fast_overrides, *steps, "budget.trials=7"]) == 0
    trials = pd.read_csv(_run_dir(fast_overrides) / "trials.csv", keep_default_na=False)
    assert trials["warm_start"].tolist()[:6] == [
        *["ddim-4", "dpmsolver++2m-4", "unipc-4"],
        *["ddim-6", "dpmsolver++2m-6", "unipc-6"],
    ]
    assert trials["warm_start"].tolist()[6] == ""  # then the optimizer


PRUNED_SPACE = """
techniques: [pruning, solver, timesteps]
fixed: {pruning.ratio: 0.4, pruning.importance: magnitude, pruning.recovery_steps: 0,
        timesteps.family: uniform_trailing, solver.name: ddim}
dimensions:
  timesteps.steps: {type: int, low: 3, high: 5}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_report_refuses_a_missing_artifact_in_one_line_and_never_trains_it_again(fast_overrides, tmp_path, capsys):
    space = tmp_path / "pruned.yaml"
    space.write_text(PRUNED_SPACE)
    overrides = [
        *fast_overrides,
        f"space={space}",
        "budget.warm_start_steps=[]",
        "budget.trials=2",
        "study_name=pruned",
    ]
    assert main(["search", *overrides]) == 0
    run = _run_dir(fast_overrides, "pruned")
    front = pd.read_csv(run / "pareto.csv")
    first = int(front["trial"].min())
    artifacts = sorted((run / "artifacts").glob("*.safetensors"))
    assert artifacts, "every trial of this space prunes and stores its weights"
    for path in artifacts:
        path.unlink()
    capsys.readouterr()
    before = _snapshot(run)
    assert main(["report", str(run)]) == 2
    _one_line_error(capsys, f"trial {first}'s pruning weights", str(run / "artifacts"), "--skip-missing-artifacts")
    assert _snapshot(run) == before

    assert main(["report", str(run), "--skip-missing-artifacts"]) == 0
    rebuilt = pd.read_csv(run / "pareto.csv", keep_default_na=False)
    assert set(rebuilt["trial"]) == set(front["trial"]) and (rebuilt["recipe"] == "").all()
    assert not list((run / "recipes").glob("*.yaml")) and not list((run / "grids").glob("trial-*.png"))
    assert not list((run / "artifacts").glob("*.safetensors"))  # nothing was pruned again to stand in
    assert "plans without a recipe here" in (run / "index.html").read_text()


@pytest.mark.slow
@pytest.mark.integration
def test_report_under_a_running_search_is_refused_or_waits_for_it(finished, capsys, processes):
    holder = _hold_study_lock(finished, processes)
    try:
        before = _snapshot(finished)
        assert main(["report", str(finished)]) == 2
        _one_line_error(capsys, f"process {holder.pid}", "writes the report itself when it ends", "--wait")
        assert _snapshot(finished) == before
    finally:
        holder.kill()
        holder.wait()

    holder = _hold_study_lock(finished, processes, seconds=2)
    try:
        assert main(["report", str(finished), "--wait"]) == 0
        assert f"waiting for process {holder.pid}" in capsys.readouterr().err
        assert holder.poll() is not None  # it built only once the holder had ended
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
@pytest.mark.integration
def test_a_second_search_on_a_held_study_is_refused_before_the_model_loads(
    finished, fast_overrides, capsys, monkeypatch, processes
):
    import autoaccel.search.run

    def refuse(config):
        raise AssertionError("the model was loaded before the study's lock was tried")

    monkeypatch.setattr(autoaccel.search.run, "load_target", refuse)
    holder = _hold_study_lock(finished, processes)
    try:
        assert main(["search", *fast_overrides, "budget.trials=5"]) == 2
        _one_line_error(capsys, f"process {holder.pid}")
    finally:
        holder.kill()
        holder.wait()


def _small_digits(tmp_path: Path, target: str = "digits") -> list[str]:
    """A search on an embedded digits model that takes seconds (a short reference, few images, two trials)."""
    return [
        f"target={target}",
        "target.device=cpu",
        "target.reference=ddim-10",
        f"report.dir={tmp_path / 'reports'}",
        f"cache_dir={tmp_path / 'cache'}",
        "quality.samples=32",
        "quality.chunk_size=32",
        "quality.ode_steps=20",
        "quality.fid_std_rounds=4",
        "cost.batch_size=4",
        "cost.warmup=0",
        "cost.repeats=1",
        "budget.warm_start_steps=[4]",
        "budget.trials=2",
        "report.grid_images=8",
        "quiet=true",
    ]


def _prompt_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"prompts-{kind}.txt"
    if kind == "empty":
        path.write_text("")
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "latin-1":
        path.write_bytes("un chiffre sept écrit à la main\n".encode("latin-1"))
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("the digit 7\n" * 100_000)
    return path


@pytest.mark.parametrize("kind", ["empty", "binary", "latin-1", "fifo", "100000 lines"])
def test_a_bad_prompt_file_for_digits_t2i_is_refused_in_one_line(kind, tmp_path, capsys):
    prompts = _prompt_file(tmp_path, kind)
    assert main(["search", *_small_digits(tmp_path, "digits_t2i"), f"target.prompts={prompts}"]) == 2
    _one_line_error(capsys, str(prompts))
    assert not (tmp_path / "reports" / "digits_t2i-guided_sampler").exists()


def test_a_prompt_file_for_digits_t2i_sets_the_prompts_searched_on(tmp_path):
    from autoaccel.config import compose_config
    from autoaccel.search.run import prepare_run

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten seven\nthe digit 3\n")
    config = compose_config(
        ["target=digits_t2i", f"target.prompts={prompts}", "target.device=cpu", f"report.dir={tmp_path}"]
    )
    context = prepare_run(config)
    try:
        assert context.target.conditions.names == ["a handwritten seven", "the digit 3"]
        assert set(context.judge.seeds.class_labels.tolist()) == {0, 1}
        assert context.ledger.study.user_attrs["settings"]["target.prompts"].startswith("2 prompts")
    finally:
        context.lock.release()


def test_prompts_for_a_model_that_takes_none_are_refused(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten seven\n")
    assert main(["search", *_small_digits(tmp_path), f"target.prompts={prompts}"]) == 2
    _one_line_error(capsys, f"target.prompts={prompts}", "target=digits takes no prompts", "digits_t2i")


def test_the_digits_model_reads_its_images_as_digits():
    from autoaccel.metrics.adherence import target_adherence
    from autoaccel.targets.digits.data import load_digits_tensors
    from autoaccel.targets.registry import load_target

    target = load_target("digits", None, "cpu")
    images, labels = load_digits_tensors()
    assert target_adherence(target, images, labels) > 0.97
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert target_adherence(target, noise, labels) < 0.5


@pytest.mark.slow
@pytest.mark.integration
def test_min_adherence_limits_a_search_on_the_digits_model(tmp_path, capsys):
    assert main(["search", *_small_digits(tmp_path), "budget.min_adherence=0.5"]) == 0
    run = tmp_path / "reports" / "digits-sampler"
    trials = pd.read_csv(run / "trials.csv")
    assert trials["adherence"].between(0, 1).all()
    front = pd.read_csv(run / "pareto.csv")
    assert (front["adherence"] >= 0.5).all()
    capsys.readouterr()
    assert main(["plan", str(run), "--min-adherence", "0"]) == 0
    assert "adherence" in capsys.readouterr().out


def test_progress_lines_are_throttled_and_say_how_much_is_done_and_left(monkeypatch):
    import autoaccel.util.progress as progress
    from autoaccel.util.progress import Progress, StageLine, reporting

    clock = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    lines: list[str] = []
    with reporting(lines.append):
        with Progress("reference", 512) as stage:
            for done, now in [(50, 105.0), (128, 110.0), (200, 115.0), (256, 120.5)]:
                clock[0] = now
                stage(done)
            clock[0] = 130.0
            stage(512)
        quick = Progress("sampling 512 images", 512, announce=False)
        quick(512)
        quick.close()
    assert lines == [
        "reference: 128/512 images (25%), 10 s so far, about 30 s left",
        "reference: 256/512 images (50%), 20 s so far, about 20 s left",
        "reference: 512 images in 30 s",
    ]
    assert isinstance(lines[-1], StageLine) and not isinstance(lines[0], StageLine)
    assert not Progress("nobody listens", 10).active


def test_training_reports_its_iterations(monkeypatch):
    import autoaccel.util.progress as progress
    from autoaccel.distill.training import Clock
    from autoaccel.util.progress import reporting

    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    lines: list[str] = []
    with reporting(lines.append):
        clock = Clock(None, "consistency distillation", total=40)
        for iteration in range(1, 41):
            clock.check(iteration)
    assert lines[0].startswith("consistency distillation: 1/40 iterations (2%)")
    assert lines[-1].startswith("consistency distillation: 40 iterations in")


@pytest.mark.slow
@pytest.mark.integration
def test_train_classifier_reports_its_epochs(monkeypatch, tmp_path, capsys):
    import autoaccel.util.progress as progress
    from autoaccel.cli.main import main

    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    assert main(["train-classifier", "--epochs", "2", "--out", str(tmp_path / "classifier.safetensors")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "classifier training: 1/2 epochs (50%)" in lines[0]
    assert any(line.startswith("classifier training: 2 epochs in") for line in lines)


@pytest.mark.slow
@pytest.mark.integration
def test_a_search_reports_each_long_stage_step_by_step_and_its_estimate(fast_overrides, monkeypatch, capsys, tmp_path):
    import autoaccel.util.progress as progress

    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)  # every step of every stage is "long" here
    # a cache of its own: the reference is sampled here, not found in the session's cache
    overrides = [item for item in fast_overrides if not item.startswith("cache_dir=")] + [f"cache_dir={tmp_path}"]
    loud = [item for item in overrides if item != "quiet=true"]
    assert main(["search", *loud, "budget.trials=2"]) == 0
    out = capsys.readouterr().out.splitlines()
    estimate = next(line for line in out if line.startswith("estimate: about"))
    assert "reference" in estimate and "ODE reference" in estimate and "2 trials" in estimate
    # quality.chunk_size is the whole sample count: lines before the chunk ends come from inside its steps
    inside = [line for line in out if line.startswith("reference: ") and "/48 images (" in line]
    assert inside and all(" so far, about " in line for line in inside)
    assert any(line.startswith("ODE reference: 48 images in") for line in out)
    assert any(line.startswith("sampling 48 images: ") for line in out)  # each candidate's sampling too
    assert out[-1].startswith("search took ") and "estimated at its start: " in out[-1]

    # quiet: one line per stage, the one that closes it (another seed set: its reference is not cached yet)
    assert main(["search", *overrides, "budget.trials=2", "study_name=quiet", "quality.seed=1"]) == 0
    quiet = capsys.readouterr().out.splitlines()
    closing = re.compile(r"^[^:]+: \d+ (images|iterations) in \d+ s$")
    assert all(closing.match(line) for line in quiet[:-1]) and quiet[-1].startswith("search took "), quiet
    assert "reference: 48 images in" in " ".join(quiet)


def test_an_entry_an_older_study_lacks_is_judged_by_what_it_had_then():
    """A fingerprinted value without a setting behind it (what real-data FID is scored against) is compared with
    what a study recorded before the entry existed had: the same is compatible, another is refused."""
    from autoaccel.search.fingerprint import Entry, Fingerprint

    changed = Fingerprint({"fid_reference": Entry("held-out", before="all real images")}, {})
    assert changed.differences({}, {}) == [("fid_reference", "all real images", "held-out")]
    assert changed.differences({"fid_reference": "held-out"}, {}) == []
    assert Fingerprint({"space": Entry("sampler")}, {}).differences({}, {}) == []  # recorded by every study
