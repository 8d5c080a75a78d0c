"""Quality budgets end to end: a search's quality limits shape its front, and ``plan`` answers "the fastest plan
within this quality" from the run folder alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from autoaccel.cli.main import main
from autoaccel.cli.search_command import search
from autoaccel.config import compose_config
from autoaccel.search.ledger import Ledger, default_storage
from tests.conftest import fast_overrides_for
from tests.plan_ledgers import record_trial

QUIET = {"log": lambda message: None}


def _run_dir(overrides: list[str]) -> Path:
    return (
        Path(next(item.split("=", 1)[1] for item in overrides if item.startswith("report.dir="))) / "pipeline-sampler"
    )


MEASURED = ["budget.trials=8", "budget.warm_start_steps=[4,10]"]


@pytest.fixture(scope="module")
def measured_original(tiny_pipeline_dir, shared_cache_dir, tmp_path_factory):
    """Eight measured trials (standard configurations at 4 and 10 steps, then searched ones), searched once for the
    module, and their run folder."""
    overrides = fast_overrides_for(tiny_pipeline_dir, shared_cache_dir, tmp_path_factory.mktemp("measured") / "reports")
    search(compose_config([*overrides, *MEASURED]), **QUIET)
    return _run_dir(overrides)


@pytest.fixture
def measured(measured_original, fast_overrides):
    """The measured study's overrides and a copy of its run folder (the tests resume it or delete its files)."""
    shutil.copytree(measured_original, _run_dir(fast_overrides))
    return [*fast_overrides, *MEASURED], _run_dir(fast_overrides)


@pytest.mark.slow
@pytest.mark.integration
def test_quality_limits_in_a_search_shape_the_front_without_measuring_again(measured):
    overrides, run_dir = measured
    trials = pd.read_csv(run_dir / "trials.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    max_fid = float(complete["fid"].median())
    min_psnr = float(complete["psnr_vs_ode"].median())
    search(compose_config([*overrides, f"budget.max_fid={max_fid}", f"budget.min_psnr={min_psnr}"]), **QUIET)
    front = pd.read_csv(run_dir / "pareto.csv")
    assert not front.empty
    assert (front["fid"] <= max_fid).all() and (front["psnr_vs_ode"] >= min_psnr).all()
    after = pd.read_csv(run_dir / "trials.csv")
    pd.testing.assert_frame_equal(trials[["trial", "fid", "latency_ms"]], after[["trial", "fid", "latency_ms"]])
    html = (run_dir / "index.html").read_text()
    assert f"fid &lt;= {max_fid:.4g}" in html and f"psnr_vs_ode &gt;= {min_psnr:.4g}" in html


@pytest.mark.slow
@pytest.mark.integration
def test_plan_gives_the_fastest_front_plan_within_a_quality_limit(measured, capsys):
    _, run_dir = measured
    front = pd.read_csv(run_dir / "pareto.csv")
    max_fid = float(front["fid"].median())
    capsys.readouterr()
    assert main(["plan", str(run_dir), "--max-fid", str(max_fid)]) == 0
    out = capsys.readouterr().out
    # a plan meets the limit by its figure or ties with it (its paired FID interval, as pareto.csv has it, covers it)
    fits = front[(front["fid"] <= max_fid) | (front["fid_lo"] <= max_fid)].sort_values(["latency_ms", "fid"])
    expected = int(fits.iloc[0]["trial"])
    assert out.startswith(f"the fastest plan within fid <= {max_fid:.4g}:")
    assert f"trial {expected}" in out.splitlines()[1]
    chosen = fits.iloc[0]
    assert (f"cannot be told from {max_fid:.4g} at 48 samples" in out) == (chosen["fid_hi"] >= max_fid)
    assert ("chosen as the faster" in out) == (chosen["fid"] > max_fid)
    assert "vs the reference" in out and "faster" in out
    assert f"recipes/trial-{expected:04d}.yaml --out samples" in out
    reference = json.loads((run_dir / "reference.json").read_text())
    assert reference["quality_reference"] == "reference-samples" and reference["latency_ms"] > 0

    # nothing fits: exit 3, the closest plan and by how much it misses
    assert main(["plan", str(run_dir), "--max-fid", str(float(front["fid"].min()) / 10)]) == 3
    out = capsys.readouterr().out
    assert out.startswith("no front plan is the fastest plan within") and "misses --max-fid by" in out


def test_a_ratio_to_a_reference_scored_against_itself_is_refused_before_anything_runs(fast_overrides, capsys):
    assert main(["search", *fast_overrides, "budget.max_fid_ratio=1.25"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "budget.max_fid_ratio=1.25" in err and "budget.max_fid" in err
    assert not _run_dir(fast_overrides).exists()


@pytest.mark.slow
@pytest.mark.integration
def test_plan_refuses_a_ratio_where_the_reference_call_is_the_fid_reference(measured, capsys):
    _, run_dir = measured
    assert main(["plan", str(run_dir), "--max-fid-ratio", "1.25"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--max-fid-ratio" in err and "--min-psnr" in err


@pytest.mark.slow
@pytest.mark.integration
def test_plan_reads_the_ledger_so_deleted_or_stale_report_files_do_not_change_it(measured, capsys):
    """plan's trials, figures and reference come from the study's ledger: it gives the same answer once the report's
    CSV files are deleted, and a trial recorded after the report was built (its files now stale) is planned on."""
    _, run_dir = measured
    max_fid = float(pd.read_csv(run_dir / "pareto.csv")["fid"].median())
    argv = ["plan", str(run_dir), "--max-fid", str(max_fid)]
    capsys.readouterr()
    assert main(argv) == 0
    before = capsys.readouterr().out
    for name in ("pareto.csv", "trials.csv", "reference.json"):
        (run_dir / name).unlink()
    assert main(argv) == 0
    assert capsys.readouterr().out == before
    # the same study named by its storage, planned from another folder holding the image features its report kept
    elsewhere = run_dir.parent / "elsewhere"
    shutil.copytree(run_dir / "features", elsewhere / "features")
    storage = ["--storage", default_storage(run_dir), "--study", "pipeline-sampler"]
    assert main(["plan", str(elsewhere), "--max-fid", str(max_fid), *storage]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == before.splitlines()[:2]
    refused = main([*argv, "--storage", default_storage(run_dir)])
    assert refused == 2 and "--storage and --study go together" in capsys.readouterr().err

    # a trial the (deleted) report never saw: as good as the best front plan, and twice as fast as the fastest
    ledger = Ledger.open_existing(default_storage(run_dir), "pipeline-sampler")
    trials = ledger.trials_frame()
    complete = trials[trials["state"] == "COMPLETE"]
    best = complete.sort_values("fid").iloc[0]
    figures = {name: float(best[name]) for name in ("nfe", "fid", "psnr_vs_ode", "quality_samples")}
    number = len(trials)
    row = {**figures, "latency_ms": float(complete["latency_ms"].min()) / 2, "candidate_key": "0123456789ab"}
    record_trial(ledger, number, row, ["fid", "latency_ms"])
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith(f"  trial {number}:"), out
    assert f"recipe: not written yet ({run_dir / 'recipes' / f'trial-{number:04d}.yaml'})" in out
