"""What a user sees in a report: the recommended plans first, readable image grids, memory and quantized-latency
figures that say what they are."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from autoaccel.cli.search_command import search
from autoaccel.config import compose_config
from autoaccel.report.html import timesteps_text
from autoaccel.report.recommend import recommended_plans


def _front() -> pd.DataFrame:
    """Cheapest first, as front_frame orders it: faster plans have worse FID."""
    return pd.DataFrame(
        {
            "trial": [7, 5, 3],
            "fid": [14.0, 11.8, 10.5],
            "fid_std": [0.5, 0.4, 0.4],
            "nfe": [4, 8, 16],
            "latency_ms": [10.0, 20.0, 40.0],
            "recipe": ["recipes/trial-0007.yaml", "recipes/trial-0005.yaml", "recipes/trial-0003.yaml"],
        }
    )


def _standards() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial": [0, 1, 2],
            "warm_start": ["ddim-10", "dpmsolver++2m-10", "unipc-10"],
            "fid": [16.0, 12.2, 12.4],
            "latency_ms": [25.0, 30.0, 26.0],
        }
    )


REFERENCE = {"fid": 10.0, "latency_ms": 1000.0, "nfe": 1000}


def test_recommendations_are_the_fastest_plans_within_each_fid_ratio():
    within_11, within_125, within_15, knee = recommended_plans(_front(), _standards(), REFERENCE, knee=1)
    assert within_11.trial == 3 and within_11.speedup_vs_reference == pytest.approx(1000 / 40)
    assert within_11.standard is None and "no standard configuration" in within_11.note
    assert within_125.trial == 5 and within_125.speedup_vs_reference == pytest.approx(50)
    # the fastest standard configuration within 12.5 is unipc-10 (26 ms), not the better dpmsolver++2m-10
    assert within_125.standard["warm_start"] == "unipc-10"
    assert within_125.speedup_vs_standard == pytest.approx(26 / 20)
    assert within_15.trial == 7 and within_15.speedup_vs_standard == pytest.approx(26 / 10)
    assert knee.trial == 5 and knee.standard["warm_start"] == "dpmsolver++2m-10"  # the best standard FID
    assert knee.speedup_vs_standard == pytest.approx(30 / 20)


def test_a_ratio_no_plan_meets_says_so():
    tight = recommended_plans(_front(), _standards(), {**REFERENCE, "fid": 5.0}, knee=0)
    assert [item.plan is None for item in tight] == [True, True, True, False]
    assert "no front plan reaches FID <= 5.5" in tight[0].note and "10.5" in tight[0].note
    assert tight[0].speedup_vs_reference is None and tight[0].speedup_vs_standard is None


def test_no_ratio_applies_when_the_reference_call_is_the_fid_reference():
    for reference, kind in (({**REFERENCE, "fid": -1e-8}, None), (REFERENCE, "reference-samples")):
        recommendations = recommended_plans(_front(), _standards(), reference, knee=2, quality_reference=kind)
        assert all(item.plan is None and "reference's own samples" in item.note for item in recommendations[:3])
        assert recommendations[3].trial == 3
    empty = recommended_plans(_front().iloc[0:0], _standards().iloc[0:0], None)
    assert all(item.plan is None for item in empty) and "not measured" in empty[0].note


def test_grids_are_enlarged_with_nearest_neighbour_pixels(tmp_path):
    from PIL import Image

    from autoaccel.util.imaging import save_grid

    images = torch.rand(16, 1, 8, 8) * 2 - 1
    grid = Image.open(save_grid(images, tmp_path / "grid.png", columns=8))
    assert grid.width >= 8 * 64 and grid.height >= 2 * 64
    cell = torch.from_numpy(np.array(grid.crop((0, 0, 64, 64))))
    assert (cell[:8, :8] == cell[0, 0]).all()  # one source pixel is one flat 8x8 block
    large = Image.open(save_grid(torch.zeros(2, 3, 96, 96), tmp_path / "large.png"))
    assert large.height == 96  # images already large enough are not enlarged


def test_an_unquantized_plan_has_no_quantized_latency():
    from autoaccel.measure.kernels import NOT_APPLICABLE, kernel_choice

    unet = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3))
    assert kernel_choice(unet).quantized_latency == NOT_APPLICABLE == "n/a"


def test_model_memory_counts_weights_and_grows_with_the_batch(tiny_pipeline_dir):
    from diffusers import DDPMPipeline, DDPMScheduler

    from autoaccel.measure.latency import model_memory_bytes, weight_bytes
    from autoaccel.pipeline.sampling import SamplerPipeline
    from autoaccel.pipeline.seeds import make_seed_batch

    unet = DDPMPipeline.from_pretrained(tiny_pipeline_dir).unet
    pipeline = SamplerPipeline(unet, DDPMScheduler(num_train_timesteps=100))
    pipeline.plan.timesteps = [75, 50, 25, 0]
    small, large = (model_memory_bytes(pipeline, make_seed_batch((1, 8, 8), n, 0, 3)) for n in (4, 32))
    weights = weight_bytes(unet)
    assert weights == sum(parameter.numel() * 4 for parameter in unet.parameters())
    assert weights < small < large
    assert large - weights > 4 * (small - weights)  # activations scale with the batch


@pytest.mark.slow
@pytest.mark.integration
def test_report_opens_with_the_recommended_plans(fast_overrides):
    from PIL import Image

    index = search(compose_config([*fast_overrides, "budget.trials=5"]), log=lambda message: None)
    run_dir = index.parent
    html = index.read_text()
    assert html.index("Recommended plans") < html.index("<h2>Run</h2>") < html.index("Pareto front")
    assert "knee point" in html and "python -m autoaccel apply " in html and "--out samples --n 16" in html
    assert 'href="pareto.csv"' in html and 'href="trials.csv"' in html
    assert "peak memory (process RSS, MB)" in html and "model memory (MB)" in html
    trials = pd.read_csv(run_dir / "trials.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    assert (complete["model_memory_mb"] > 0).all()
    as_written = pd.read_csv(run_dir / "trials.csv", keep_default_na=False)  # pandas reads "n/a" as NaN otherwise
    assert (as_written.loc[complete.index, "quantized_latency"] == "n/a").all()
    front = pd.read_csv(run_dir / "pareto.csv")
    recipe = yaml.safe_load((run_dir / front["recipe"].iloc[0]).read_text())
    assert recipe["measured_on"]["quantized_latency"] == "n/a"
    assert recipe["measured_on"]["peak_memory_mb"].startswith("process RSS")
    assert recipe["figures"]["model_memory_mb"] > 0
    reference_grid = Image.open(run_dir / "grids" / "reference.png")
    assert reference_grid.height >= 64 and html.count("grids/reference.png") == len(front)  # beside every plan


def test_a_long_schedule_shows_its_ends_and_its_count():
    """A default call's 100 timesteps would fill the front table's row; its row shows the ends and the count."""
    long = str(list(range(990, -1, -10)))
    text = timesteps_text(long)
    assert text.startswith("[990, 980,") and text.endswith("10, 0] (100 steps)") and "… 89 more …" in text
    assert len(text) < 80
    assert timesteps_text("[999, 749, 499, 249]") == "[999, 749, 499, 249]"  # a short one as it is
