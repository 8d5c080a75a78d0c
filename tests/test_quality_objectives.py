"""Quality figures beyond FID: the FID floor, real images from a folder, paired SSIM and feature distance,
adherence, CLIP score with a local model, and the default quality objective of a target."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from autoaccel.errors import ConfigError
from autoaccel.front.objectives import (
    DIRECTIONS,
    NO_DATA_QUALITY,
    QUALITY,
    default_quality,
    objective_directions,
    resolve_objectives,
)
from autoaccel.measure.reference import held_out_floor, held_out_split
from autoaccel.metrics.features import GENERIC_EXTRACTOR, seeded_random_extractor
from autoaccel.metrics.quality import frechet_distance, image_features, paired_feature_distance, ssim, ssim_per_image
from autoaccel.pipeline.sampling import sampler_pipeline


def _blobs(count: int, seed: int, size: int = 8) -> torch.Tensor:
    """uint8 grey images of a bright square at a random place: a small distribution with structure."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(count, 1, size, size, dtype=torch.uint8)
    corners = torch.randint(0, size - 3, (count, 2), generator=generator)
    for index, (row, column) in enumerate(corners.tolist()):
        images[index, 0, row : row + 3, column : column + 3] = 255
    return images


# FID floor ------------------------------------------------------------------------------------------------------


def test_held_out_split_is_disjoint_seeded_and_empty_with_too_few_images():
    held_out = held_out_split(240, 80, seed=0)
    assert len(held_out) == 80 and len(set(held_out.tolist())) == 80 and held_out.max() < 240
    assert torch.equal(held_out, held_out_split(240, 80, seed=0))
    assert not torch.equal(held_out, held_out_split(240, 80, seed=1))
    assert len(held_out_split(159, 80, seed=0)) == 0  # fewer than twice the samples: nothing held out


def test_held_out_split_takes_classes_as_often_as_the_seed_batch():
    labels = torch.cat([torch.zeros(120), torch.ones(120)]).long()
    seeds = torch.tensor([0] * 30 + [1] * 50)
    held_out = held_out_split(240, 80, 0, real_labels=labels, seed_labels=seeds)
    assert torch.bincount(labels[held_out]).tolist() == [30, 50]


@pytest.mark.slow
def test_floor_is_the_held_out_set_against_the_others_and_shrinks_with_more_samples():
    real = _blobs(500, seed=3)
    features = image_features(real, GENERIC_EXTRACTOR).float()
    floors = {}
    for samples in (30, 200):
        held_out = held_out_split(len(real), samples, seed=0)
        keep = torch.ones(len(real), dtype=torch.bool)
        keep[held_out] = False
        floors[samples] = held_out_floor(features[held_out], features[keep], GENERIC_EXTRACTOR)
        floor = floors[samples]
        assert floor["samples"] == samples and floor["reference_count"] == 500 - samples
        assert floor["fid"] == pytest.approx(frechet_distance(features[held_out], features[keep]), rel=1e-4)
        assert floor["fid_lo"] <= floor["fid"] <= floor["fid_hi"]
        assert floor["sentence"].startswith(f"a perfect sampler scores FID {floor['fid']:.3g} [")
    assert floors[200]["fid"] < floors[30]["fid"]


@pytest.mark.slow
def test_real_data_floor_is_measured_like_the_figures_it_bounds(tiny_pipeline_dir, tmp_path):
    """The floor's held-out real images, scored as a plan's images are, give the floor: the same reference set (the
    real images less the held-out ones) and the same set sizes."""
    from autoaccel.measure.reference import QualityJudge
    from autoaccel.metrics.features import to_unit_range
    from autoaccel.targets.data_folder import with_real_data
    from autoaccel.targets.loader import load_pipeline_folder

    real = _blobs(100, seed=0)
    target = with_real_data(load_pipeline_folder(tiny_pipeline_dir, device="cpu"), real)
    target.reference = "ddim-2"
    judge = QualityJudge(target, samples=24, seed=0, cache_dir=tmp_path)
    reference, _ = judge.reference_images()
    held_out = judge.held_out_indices()
    assert len(reference) == 100 - 24 and len(held_out) == 24
    floor = judge.fid_floor()
    assert floor["samples"] == 24 and floor["reference_count"] == 76
    figures = judge.score(to_unit_range(real[held_out]))
    assert figures["fid"] == pytest.approx(floor["fid"], rel=1e-3)  # a perfect sampler's figure is the floor
    assert judge.floor_absence() == ""
    few = QualityJudge(target, samples=60, seed=0, cache_dir=tmp_path)  # 100 real images < 2 x 60
    assert few.fid_floor() is None and len(few.reference_images()[0]) == 100
    assert "fewer than twice quality.samples=60" in few.floor_absence()


def test_no_floor_where_fid_is_against_the_reference_calls_own_images(tiny_pipeline_dir, tmp_path):
    from autoaccel.measure.reference import QualityJudge
    from autoaccel.targets.loader import load_pipeline_folder

    target = load_pipeline_folder(tiny_pipeline_dir, device="cpu")
    judge = QualityJudge(target, samples=24, seed=0, cache_dir=tmp_path)
    assert judge.fid_floor() is None  # a plan identical to the reference call scores 0: no second reference set
    assert "scores 0" in judge.floor_absence() and not list(tmp_path.rglob("*.pt"))  # nothing was sampled


# target.data -----------------------------------------------------------------------------------------------------


def _write_images(folder: Path, count: int, size=(20, 12), mode="RGB") -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        colour = (index * 20 % 256, 100, 200) if mode == "RGB" else index * 20 % 256
        Image.new(mode, size, colour).save(folder / f"image{index}.{'png' if index % 2 else 'jpg'}")


def test_load_image_folder_fits_size_and_channels(tmp_path):
    from autoaccel.targets.data_folder import load_image_folder

    _write_images(tmp_path / "data" / "sub", 5)
    images = load_image_folder(tmp_path / "data", (1, 8, 8))
    assert images.dtype == torch.uint8 and images.shape == (5, 1, 8, 8)
    rgb = load_image_folder(tmp_path / "data", (3, 16, 16), max_images=3)
    assert rgb.shape == (3, 3, 16, 16)
    assert int(rgb[0, 1].float().mean().round()) == 100  # the green channel of every image


def test_load_image_folder_errors_are_one_line(tmp_path):
    from autoaccel.targets.data_folder import load_image_folder

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ConfigError, match="holds no PNG or JPEG images") as empty:
        load_image_folder(tmp_path / "empty", (3, 8, 8))
    assert "\n" not in str(empty.value)
    _write_images(tmp_path / "broken", 2)
    (tmp_path / "broken" / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(ConfigError, match="cannot read .*bad.png") as broken:
        load_image_folder(tmp_path / "broken", (3, 8, 8))
    assert "\n" not in str(broken.value)
    with pytest.raises(ConfigError, match="is not a folder"):
        load_image_folder(tmp_path / "missing", (3, 8, 8))


def test_with_real_data_makes_fid_against_them_the_quality(tiny_pipeline_dir, tmp_path):
    from autoaccel.targets.data_folder import image_shape, load_target_data
    from autoaccel.targets.loader import load_pipeline_folder

    target = load_pipeline_folder(tiny_pipeline_dir, device="cpu")
    assert target.quality.kind == "reference-samples" and default_quality(target) == NO_DATA_QUALITY
    _write_images(tmp_path / "data", 200, mode="L")  # more than the generic extractor's 192 features
    load_target_data(target, tmp_path / "data")
    assert image_shape(target) == (1, 8, 8)
    assert target.real_images.shape == (200, 1, 8, 8)
    assert target.quality.kind == "real-data" and "200 real images" in target.quality.description
    assert resolve_objectives([QUALITY, "latency_ms"], target) == ["fid", "latency_ms"]


# Paired figures --------------------------------------------------------------------------------------------------


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    generator = torch.Generator().manual_seed(0)
    images = _blobs(16, seed=0, size=16).float() / 127.5 - 1
    assert ssim(images, images) == pytest.approx(1.0, abs=1e-9)
    values = []
    for scale in (0.05, 0.2, 0.8):
        noisy = (images + scale * torch.randn(images.shape, generator=generator)).clamp(-1, 1)
        values.append(ssim(noisy, images))
    assert 1.0 > values[0] > values[1] > values[2]
    # small images take a smaller window (8x8 -> 7x7) and still score identical images 1
    small = images[:, :, :8, :8]
    assert ssim_per_image(small, small).min().item() == pytest.approx(1.0)


def test_paired_feature_distance_is_zero_for_same_images_and_near_one_for_unrelated():
    features = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    assert paired_feature_distance(features, features) == 0.0
    unrelated = torch.randn(200, 16, generator=torch.Generator().manual_seed(1))
    assert paired_feature_distance(unrelated, features) == pytest.approx(1.0, abs=0.1)
    assert paired_feature_distance(features + 0.1 * unrelated, features) < 0.1


def test_seeded_random_extractors_differ():
    images = _blobs(32, seed=0)
    first = image_features(images, seeded_random_extractor(0))
    second = image_features(images, seeded_random_extractor(1))
    assert seeded_random_extractor(0) == GENERIC_EXTRACTOR
    assert first.shape == second.shape and not torch.allclose(first, second)


# Adherence -------------------------------------------------------------------------------------------------------


def test_adherence_counts_images_read_as_the_requested_class():
    from autoaccel.metrics.adherence import adherence_share, target_adherence

    # the fake classifier reads each image's mean brightness bucket as its class
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    images = (torch.tensor([0, 1, 2, 0, 0, 0]).float().view(-1, 1, 1, 1) / 2).expand(-1, 1, 4, 4) * 2 - 1

    def classify(batch: torch.Tensor) -> torch.Tensor:
        return ((batch.mean(dim=(1, 2, 3)) + 1) * 1.0).round().long()

    assert adherence_share(images, labels, classify) == pytest.approx(4 / 6)
    # prompts that ask for no class (-1) are left out
    asked = torch.tensor([0, 1, -1])
    assert adherence_share(images, labels, classify, condition_classes=asked) == pytest.approx(3 / 4)
    assert target_adherence(SimpleNamespace(metadata={}), images, labels) is None
    fake_target = SimpleNamespace(metadata={"adherence": classify})
    assert target_adherence(fake_target, images, labels) == pytest.approx(4 / 6)


# CLIP score and Inception weights --------------------------------------------------------------------------------


def _tiny_clip_folder(folder: Path) -> Path:
    from autoaccel.testing.clip_models import build_tiny_clip_folder

    return build_tiny_clip_folder(folder)


def test_clip_score_with_a_tiny_local_clip(tmp_path):
    from autoaccel.metrics.clip_score import load_clip_scorer, prompt_clip_score

    scorer = load_clip_scorer(_tiny_clip_folder(tmp_path / "clip"))
    prompts = ["a handwritten seven", "a cat"]
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.tensor([0, 1, 1, 0])
    text = scorer.prompt_embeddings(prompts)
    pictures = scorer.image_embeddings(images)
    assert text.shape == (2, 8) and pictures.shape == (4, 8)
    assert torch.allclose(pictures.norm(dim=-1), torch.ones(4), atol=1e-5)
    expected = max(0.0, float(100 * (pictures * text[labels]).sum(dim=-1).mean()))
    assert scorer.score(images, labels, prompts) == pytest.approx(expected, abs=1e-4)
    grey = images[:, :1]
    assert scorer.image_embeddings(grey).shape == (4, 8)  # grey images are repeated to RGB
    target = SimpleNamespace(conditions=SimpleNamespace(kind="prompt", names=prompts))
    assert prompt_clip_score(scorer, target, images, labels) == pytest.approx(expected, abs=1e-4)
    assert (
        prompt_clip_score(scorer, SimpleNamespace(conditions=SimpleNamespace(kind="class", names=[])), images, labels)
        is None
    )


def test_clip_and_inception_paths_that_hold_nothing_are_one_line_errors(tmp_path):
    from autoaccel.metrics.clip_score import load_clip_scorer
    from autoaccel.metrics.quality import load_inception

    with pytest.raises(ConfigError, match="quality.clip_model=.*nowhere is not a folder"):
        load_clip_scorer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="quality.clip_model=.*empty does not hold a CLIPModel") as error:
        load_clip_scorer(tmp_path / "empty")
    assert "\n" not in str(error.value)
    missing = tmp_path / "inception.pth"
    with pytest.raises(ConfigError, match=f"quality.inception_weights={missing} is not a file"):
        load_inception(str(missing))
    missing.write_bytes(b"not weights")
    with pytest.raises(ConfigError, match="is not torch-fidelity's inception-v3-compat weights") as error:
        load_inception(str(missing))
    assert "\n" not in str(error.value)


def test_configure_quality_scores_clip_on_every_judge_of_a_prompt_target(tmp_path):
    from autoaccel.measure.reference import QualityOptions, configure_quality, quality_options

    target = SimpleNamespace(
        metadata={}, denoiser=torch.nn.Linear(1, 1), conditions=SimpleNamespace(kind="prompt", names=["a"])
    )
    configure_quality(target, clip_model=str(_tiny_clip_folder(tmp_path / "clip")))
    assert quality_options(target).clip is not None and quality_options(target).inception is None
    configure_quality(target)
    assert quality_options(target) == QualityOptions()


# Default quality objective ---------------------------------------------------------------------------------------


def test_resolve_objectives_picks_fid_with_data_and_the_validated_default_without():
    with_data = SimpleNamespace(real_images=torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    without = SimpleNamespace(real_images=None)
    assert resolve_objectives([QUALITY, "latency_ms"], with_data) == ["fid", "latency_ms"]
    assert resolve_objectives([QUALITY, "latency_ms"], without) == [NO_DATA_QUALITY, "latency_ms"]
    assert resolve_objectives(["kid", "nfe"], without) == ["kid", "nfe"]
    assert NO_DATA_QUALITY in DIRECTIONS
    # the study (reports/bench/quality.md) found FID against the reference's samples ranks plans best
    from benchmarks.quality import JUDGE_FIGURES

    assert JUDGE_FIGURES[NO_DATA_QUALITY] == "fid_generic_vs_reference"
    with pytest.raises(ConfigError, match="must be resolved"):
        objective_directions([QUALITY, "latency_ms"])


def test_every_new_metric_has_a_direction():
    assert objective_directions(["psnr_vs_ode", "ssim_vs_ode", "adherence", "clip_score"]) == ["maximize"] * 4
    assert objective_directions(["feature_dist_vs_ode", "fid_inception"]) == ["minimize"] * 2


@pytest.mark.slow
def test_judge_scores_paired_figures_ensemble_fid_and_adherence(tiny_pipeline_dir, tmp_path):
    from autoaccel.measure.reference import QualityJudge
    from autoaccel.targets.loader import load_pipeline_folder

    target = load_pipeline_folder(tiny_pipeline_dir, device="cpu")
    target.reference = "ddim-2"
    target.metadata["adherence"] = lambda images: torch.zeros(len(images), dtype=torch.long)
    judge = QualityJudge(target, samples=24, seed=0, cache_dir=tmp_path)
    ode = judge.ode_images()
    same = judge.score(ode)
    assert same["psnr_vs_ode"] > 80 and same["ssim_vs_ode"] == pytest.approx(1.0)
    assert same["feature_dist_vs_ode"] == 0.0
    labels = judge.seeds.class_labels
    assert same["adherence"] == pytest.approx(float((labels == 0).float().mean()))
    noisy = judge.score((ode + 0.5 * torch.randn(ode.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1))
    assert noisy["ssim_vs_ode"] < 0.9 and noisy["feature_dist_vs_ode"] > 0.05
    assert noisy["fid_ensemble"] > same["fid_ensemble"] >= 0
    assert "clip_score" not in noisy and "fid_inception" not in noisy  # not configured, not a prompt target


@pytest.mark.slow
def test_default_objectives_rank_four_step_ddim_below_ten_step_unipc_on_digits(tmp_path):
    """With its real digits, and as if it had none (then against a 100-step DDPM reference's samples)."""
    from autoaccel.measure.reference import QualityJudge
    from autoaccel.metrics.features import GENERIC_EXTRACTOR
    from autoaccel.pipeline.seeds import sample_in_chunks
    from autoaccel.plan.apply import apply_plan
    from autoaccel.targets.base import QualityReference
    from autoaccel.targets.registry import load_target
    from autoaccel.techniques.solver import SOLVER, SolverConfig
    from autoaccel.techniques.timesteps import TIMESTEPS, TimestepsConfig

    with_data = load_target("digits", None, "cpu")
    without_data = load_target("digits", None, "cpu")
    without_data.real_images = None
    without_data.quality = QualityReference(GENERIC_EXTRACTOR, "reference-samples", "as a folder without data")
    without_data.reference = "ddpm-100"
    plans = {
        "ddim-4": [(SOLVER, SolverConfig(name="ddim")), (TIMESTEPS, TimestepsConfig(steps=4))],
        "unipc-10": [(SOLVER, SolverConfig(name="unipc", order=2)), (TIMESTEPS, TimestepsConfig(steps=10))],
    }
    for target in (with_data, without_data):
        metric = default_quality(target)
        judge = QualityJudge(target, samples=128, seed=0, cache_dir=tmp_path)
        scores = {}
        for label, plan in plans.items():
            pipeline = sampler_pipeline(target)
            apply_plan(pipeline, plan, target)
            scores[label] = judge.score(sample_in_chunks(pipeline, judge.seeds, 128))[metric]
        assert DIRECTIONS[metric] == "minimize" and scores["unipc-10"] < scores["ddim-4"], (metric, scores)
    assert default_quality(with_data) == "fid" and default_quality(without_data) == NO_DATA_QUALITY
