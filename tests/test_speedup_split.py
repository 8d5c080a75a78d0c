"""A plan's speed-up as the report states it: split into its algorithmic and runtime factors where the plan has
runtime settings (the plan timed without them in the confirmation's rounds), with the interval of its per-round
ratios, and a tie where that interval holds 1."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from autoaccel.report.speedup import plan_speedup
from autoaccel.techniques.base import without_runtime

SAMPLER = {"timesteps.steps": 4, "solver.name": "ddim"}


class Loaded:
    """A target's loaded model, as far as the runtime's unchanged settings depend on it: its precision."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.denoiser = torch.nn.Linear(2, 2).to(dtype)


FLOAT32, BFLOAT16 = Loaded(torch.float32), Loaded(torch.bfloat16)
TECHNIQUES = ["solver", "timesteps", "runtime"]


def test_a_plan_without_runtime_settings_has_no_algorithmic_twin():
    assert without_runtime(SAMPLER, TECHNIQUES, FLOAT32) is None
    float32 = {**SAMPLER, "runtime.dtype": "float32", "runtime.compile": "none"}
    assert without_runtime(float32, TECHNIQUES, FLOAT32) is None  # float32 is how this model was loaded
    bfloat16 = {**SAMPLER, "runtime.dtype": "bfloat16"}
    assert without_runtime(bfloat16, TECHNIQUES, BFLOAT16) is None
    assert without_runtime(float32, TECHNIQUES, BFLOAT16) is not None  # a bfloat16 target run in float32


def test_the_algorithmic_twin_keeps_the_plan_and_runs_the_model_as_loaded():
    params = {**SAMPLER, "runtime.dtype": "bfloat16", "runtime.compile": "default"}
    twin = without_runtime(params, TECHNIQUES, FLOAT32)
    assert twin is not None
    assert {key: twin[key] for key in SAMPLER} == SAMPLER
    assert twin["runtime.dtype"] is None and twin["runtime.compile"] == "none"  # None: the precision it was loaded in
    assert without_runtime(params, ["solver", "timesteps"], FLOAT32) is None  # no runtime technique: no split


def confirmation(reference: list[float], plan: list[float], algorithmic: float | None = None) -> dict:
    figure = {"latency_ms": sorted(plan)[len(plan) // 2], "latency_samples": plan}
    if algorithmic is not None:
        figure["algorithmic_latency_ms"] = algorithmic
    return {"structures": {"k": figure}, "reference": {"latency_samples": reference}}


def row(latency: float, algorithmic: float | None = None) -> pd.Series:
    return pd.Series({"latency_ms": latency, "cost_key": "k", "algorithmic_latency_ms": algorithmic or math.nan})


def test_the_split_multiplies_to_the_speed_up():
    speedup = plan_speedup(row(10.0, 40.0), {"latency_ms": 100.0}, confirmation([100.0] * 3, [10.0] * 3, 40.0))
    assert speedup.value == pytest.approx(10.0)
    assert speedup.algorithmic == pytest.approx(2.5) and speedup.runtime == pytest.approx(4.0)
    assert speedup.algorithmic * speedup.runtime == pytest.approx(speedup.value)
    assert speedup.split_text() == "2.50x algorithmic × 4.00x runtime"
    assert not speedup.tie


def test_a_speed_up_whose_rounds_hold_one_is_a_tie_with_the_reference():
    """The default call timed beside the reference: 1.12x by its medians (103 ms over 92 ms), but round by round
    it is as often slower as faster."""
    reference, plan = [100.0, 90.0, 120.0, 95.0, 110.0], [110.0, 80.0, 125.0, 92.0, 100.0]
    speedup = plan_speedup(row(92.0), {"latency_ms": 103.0}, confirmation(reference, plan))
    assert speedup.low <= 1.0 <= speedup.high and speedup.tie
    assert "a tie with the reference's latency" in speedup.text()
    clear = plan_speedup(row(50.0), {"latency_ms": 100.0}, confirmation(reference, [50.0, 46.0, 61.0, 48.0, 55.0]))
    assert not clear.tie and clear.low > 1.0


def test_without_a_confirmation_the_speed_up_is_the_plain_ratio():
    speedup = plan_speedup(row(25.0), {"latency_ms": 100.0}, None)
    assert speedup.value == pytest.approx(4.0)
    assert speedup.low is None and not speedup.tie and speedup.split_text() == ""
    assert plan_speedup(row(25.0), {}, None) is None


SPACE = """
name: bfloat16_sampler
techniques: [solver, timesteps, runtime]
fixed:
  runtime.dtype: bfloat16
dimensions:
  timesteps.steps: {type: int, low: 2, high: 6}
"""


@pytest.mark.slow  # seconds of searching, training or scoring: kept out of the quick subset
@pytest.mark.integration
def test_a_runtime_plans_report_splits_its_speed_up(fast_overrides, tmp_path):
    """Every front plan of a bfloat16 space is timed beside its float32 twin: trials.csv holds that latency and
    the recommended plans state the speed-up as algorithmic × runtime."""
    from autoaccel.cli.main import main

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    reports = tmp_path / "reports"
    overrides = [*fast_overrides, f"space={space}", "budget.trials=3", "cost.repeats=3", f"report.dir={reports}"]
    assert main(["search", *overrides]) == 0
    trials = pd.read_csv(next(reports.rglob("trials.csv")))
    front = pd.read_csv(next(reports.rglob("pareto.csv")))
    searched = trials[trials["param.runtime.dtype"] == "bfloat16"]
    on_front = searched[searched["trial"].isin(front["trial"])]
    assert not on_front.empty
    assert (on_front["algorithmic_latency_ms"] > 0).all()
    baselines = trials[trials["warm_start"].notna() & trials["trial"].isin(front["trial"])]
    assert baselines.get("algorithmic_latency_ms", pd.Series(dtype=float)).isna().all()  # float32: nothing to split
    page = next(reports.rglob("index.html")).read_text()
    assert "x algorithmic × " in page and "x runtime" in page
