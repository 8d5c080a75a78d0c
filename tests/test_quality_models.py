"""The quality figures of published models (CLIP score, PickScore, Inception FID) loaded by hub id or from a local
folder or file, their intervals, their failover without network, and what the report says of every figure. Offline
throughout: tiny random-weight CLIP folders stand in for the released models."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from autoaccel.cli.main import main
from autoaccel.errors import ConfigError
from autoaccel.measure.reference import configure_quality, quality_options
from autoaccel.metrics.bootstrap import mean_interval
from autoaccel.metrics.clip_score import load_clip_scorer
from autoaccel.metrics.model_source import MEANINGFUL, PLUMBING, FigureUnavailable
from autoaccel.metrics.preference import KNOWN_PROCESSORS, PICKSCORE_MODEL, load_preference_scorer
from autoaccel.metrics.quality import load_inception
from autoaccel.testing.clip_models import build_tiny_clip_folder

PROMPTS = ["a handwritten seven", "a cat"]
CLIP_HUB_ID = "openai/clip-vit-large-patch14"


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Path:
    return build_tiny_clip_folder(tmp_path_factory.mktemp("clip") / "stand-in")


def _images(count: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(count, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return images, torch.arange(count) % len(PROMPTS)


def _prompt_target() -> SimpleNamespace:
    return SimpleNamespace(
        name="t2i",
        metadata={},
        denoiser=torch.nn.Linear(1, 1),
        conditions=SimpleNamespace(kind="prompt", names=PROMPTS),
    )


def test_mean_interval_brackets_the_mean_and_narrows_with_more_seeds():
    generator = torch.Generator().manual_seed(1)
    few = mean_interval(torch.randn(20, generator=generator).double().numpy())
    many = mean_interval(torch.randn(2000, generator=generator).double().numpy())
    assert few.lo <= few.value <= few.hi and many.lo <= many.value <= many.hi
    assert many.hi - many.lo < (few.hi - few.lo) / 4  # 100x the seeds: a tenth of the width
    floored = mean_interval(-torch.ones(10).double().numpy() + 0.01 * torch.arange(10).double().numpy(), floor=0.0)
    assert (floored.value, floored.lo, floored.hi) == (0.0, 0.0, 0.0)


def test_clip_score_and_pickscore_from_local_folders_carry_intervals(stand_in):
    images, labels = _images()
    clip = load_clip_scorer(stand_in)
    cosines = clip.cosines(images, labels, PROMPTS)
    interval = clip.score_interval(images, labels, PROMPTS)
    assert interval.value == pytest.approx(max(0.0, float(100 * cosines.mean())), abs=1e-4)
    assert interval.lo <= interval.value <= interval.hi and interval.hi > interval.lo
    preference = load_preference_scorer(str(stand_in))
    scale = float(preference.model.logit_scale.exp())
    scored = preference.score_interval(images, labels, PROMPTS)
    assert scored.value == pytest.approx(scale * float(cosines.mean()), abs=1e-4)
    assert scored.lo < scored.value < scored.hi
    # the test kit's stand-ins say so in their config: their figures are plumbing-only
    assert clip.grade.grade == PLUMBING and preference.grade.grade == PLUMBING
    assert preference.grade.figures == ("pickscore",) and "random-weight stand-in" in preference.grade.line()


def test_a_hub_id_is_handed_to_transformers_unchanged(stand_in, monkeypatch):
    from transformers import CLIPModel, CLIPProcessor

    asked: list[tuple[str, str, dict]] = []
    model_load, processor_load = CLIPModel.from_pretrained.__func__, CLIPProcessor.from_pretrained.__func__

    def recording(kind, real):
        def load(cls, source, *args, **kwargs):
            asked.append((kind, source, kwargs))
            return real(cls, stand_in)  # what the hub would give: a CLIPModel and its processor

        return classmethod(load)

    monkeypatch.setattr(CLIPModel, "from_pretrained", recording("model", model_load))
    monkeypatch.setattr(CLIPProcessor, "from_pretrained", recording("processor", processor_load))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    clip = load_clip_scorer(CLIP_HUB_ID)
    assert asked == [("model", CLIP_HUB_ID, {}), ("processor", CLIP_HUB_ID, {})]
    assert "the hub model openai/clip-vit-large-patch14" in clip.grade.line()
    asked.clear()
    load_preference_scorer(PICKSCORE_MODEL)  # PickScore's repository has no processor: CLIP-H's is read
    assert asked == [("model", PICKSCORE_MODEL, {}), ("processor", KNOWN_PROCESSORS[PICKSCORE_MODEL], {})]
    asked.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: transformers reads its cache only
    load_clip_scorer(CLIP_HUB_ID)
    assert [kwargs for _, _, kwargs in asked] == [{"local_files_only": True}] * 2


def test_a_user_named_model_without_the_stand_in_mark_is_meaningful(tmp_path):
    clip = load_clip_scorer(build_tiny_clip_folder(tmp_path / "unmarked", stand_in=False))
    assert clip.grade.grade == MEANINGFUL and "a model the user named" in clip.grade.line()


def test_hub_ids_without_network_are_unavailable_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for load, option, value in [
        (lambda: load_clip_scorer(CLIP_HUB_ID), "quality.clip_model", CLIP_HUB_ID),
        (lambda: load_preference_scorer(PICKSCORE_MODEL), "quality.preference_model", PICKSCORE_MODEL),
    ]:
        with pytest.raises(FigureUnavailable) as error:
            load()
        text = str(error.value)
        assert "\n" not in text and text.startswith(f"{option}={value} needs network") and "local folder" in text


def test_a_failed_download_is_unavailable_and_an_unknown_hub_model_is_bad_input(monkeypatch):
    from transformers import CLIPModel

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(cls, source, *args, **kwargs):
        try:
            raise ConnectionError("[Errno -2] Name or service not known")
        except ConnectionError as cause:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from cause

    monkeypatch.setattr(CLIPModel, "from_pretrained", classmethod(unreachable))
    with pytest.raises(FigureUnavailable, match="quality.clip_model=openai/clip-vit-large-patch14 needs network"):
        load_clip_scorer(CLIP_HUB_ID)

    def unknown(cls, source, *args, **kwargs):
        raise OSError(f"{source} is not a local folder and is not a valid model identifier")

    monkeypatch.setattr(CLIPModel, "from_pretrained", classmethod(unknown))
    with pytest.raises(ConfigError, match="quality.clip_model=someone/no-such-clip is not a CLIPModel"):
        load_clip_scorer("someone/no-such-clip")
    with pytest.raises(ConfigError, match="is not a folder; give a CLIPModel .* or a hub id"):
        load_clip_scorer("/nowhere/clip")


def test_inception_auto_without_network_is_unavailable(tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # nothing cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FigureUnavailable, match=r"quality.inception_weights=auto needs network .*HF_HUB_OFFLINE"):
        load_inception("auto")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    tried = []

    def no_route(url, *args, **kwargs):
        tried.append(url)
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(inception, "load_state_dict_from_url", no_route)
    with pytest.raises(FigureUnavailable, match="needs network .* Name or service not known") as error:
        load_inception("auto")
    assert tried == [inception.URL_INCEPTION_V3] and "\n" not in str(error.value)
    # the weights torch-fidelity downloaded before are read from torch's hub cache, not downloaded again
    cached = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not weights")
    with pytest.raises(ConfigError, match="is not torch-fidelity's inception-v3-compat weights"):
        load_inception("auto")
    assert len(tried) == 1


def test_offline_figures_are_left_out_and_a_preference_score_needs_prompts(stand_in, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = _prompt_target()
    options = configure_quality(target, clip_model=str(stand_in), preference_model=PICKSCORE_MODEL)
    assert options.measured() == ["clip_score"] and list(options.unavailable) == ["pickscore"]
    assert quality_options(target) is options
    class_target = SimpleNamespace(**{**vars(_prompt_target()), "conditions": SimpleNamespace(kind="class", names=[])})
    with pytest.raises(ConfigError, match="quality.preference_model=.* rates images for their prompts") as error:
        configure_quality(class_target, preference_model=str(stand_in))
    assert "\n" not in str(error.value) and "class labels" in str(error.value)


def test_figures_of_the_bundled_random_cnn_are_plumbing_only_and_inception_is_meaningful(stand_in):
    from autoaccel.measure.reference import default_figure_sources
    from autoaccel.metrics.extractor_names import GENERIC_EXTRACTOR

    folder_target = SimpleNamespace(**vars(_prompt_target()), quality=SimpleNamespace(extractor=GENERIC_EXTRACTOR))
    grades = {figure: source.grade for source in default_figure_sources(folder_target) for figure in source.figures}
    assert grades["fid"] == grades["kid"] == grades["fid_ensemble"] == PLUMBING
    assert grades["psnr_vs_ode"] == MEANINGFUL and "adherence" not in grades
    options = configure_quality(folder_target, clip_model=str(stand_in))
    options.inception, options.inception_weights = object(), "auto"  # as if torch-fidelity had downloaded it
    inception = next(source for source in options.sources() if source.figures == ("fid_inception",))
    assert inception.line() == (
        "fid_inception: meaningful (the network of published FIDs): torch-fidelity's Inception-v3 weights, "
        "downloaded by torch-fidelity"
    )


def _random_inception_file(path: Path, monkeypatch) -> Path:
    """torch-fidelity's Inception-v3 with its initial random weights, saved as a weights file (offline: nothing is
    downloaded)."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    with monkeypatch.context() as patched:
        patched.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patched.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *args, **kwargs: None)
        model = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.slow  # seconds of searching, training or scoring: kept out of the quick subset
def test_a_judge_scores_every_optional_figure_with_its_interval(stand_in, tmp_path, monkeypatch):
    from autoaccel.measure.reference import QualityJudge
    from autoaccel.metrics.quality import frechet_distance, inception_features
    from autoaccel.util.imaging import to_uint8

    weights = _random_inception_file(tmp_path / "inception.pth", monkeypatch)
    target = SimpleNamespace(**vars(_prompt_target()), sample_shape=(3, 16, 16), condition_count=2, real_images=None)
    options = configure_quality(
        target, clip_model=str(stand_in), inception_weights=str(weights), preference_model=str(stand_in)
    )
    assert options.measured() == ["clip_score", "fid_inception", "pickscore"] and not options.unavailable
    judge = QualityJudge(target, samples=16, seed=0, cache_dir=tmp_path, fid_std_rounds=4)
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(16, 3, 16, 16, generator=generator) * 2 - 1
    reference = to_uint8(torch.rand(16, 3, 16, 16, generator=generator) * 2 - 1)
    figures = judge._optional_figures(images, reference)
    for name in ("clip_score", "pickscore", "fid_inception"):
        assert figures[f"{name}_lo"] <= figures[name] <= figures[f"{name}_hi"], name
    assert figures["fid_inception_hi"] > figures["fid_inception_lo"]
    expected = frechet_distance(
        inception_features(options.inception, to_uint8(images)), inception_features(options.inception, reference)
    )
    assert figures["fid_inception"] == pytest.approx(expected, rel=1e-3)
    clip = options.clip.score_interval(images, judge.seeds.class_labels, PROMPTS)
    assert figures["clip_score"] == pytest.approx(clip.value)


def _t2i_overrides(fast_overrides: list[str]) -> list[str]:
    """The fast search settings on the embedded text-to-image digits model, with a short reference."""
    kept = [item for item in fast_overrides if not item.startswith(("target=", "target.path="))]
    return [*kept, "target=digits_t2i", "target.reference=ddim-10", "quality.ode_steps=20", "budget.trials=2"]


def _run_folder(overrides: list[str]) -> Path:
    reports = Path(next(item for item in overrides if item.startswith("report.dir=")).split("=", 1)[1])
    return next(folder for folder in reports.iterdir() if folder.is_dir())


@pytest.mark.slow  # seconds of searching, training or scoring: kept out of the quick subset
def test_a_search_optimises_and_limits_pickscore_from_stand_in_folders(fast_overrides, stand_in, capsys):
    overrides = [
        *_t2i_overrides(fast_overrides),
        f"quality.clip_model={stand_in}",
        f"quality.preference_model={stand_in}",
        "objectives=[pickscore,latency_ms]",
        "budget.min_pickscore=-1000",
    ]
    assert main(["search", *overrides]) == 0
    run = _run_folder(overrides)
    trials = pd.read_csv(run / "trials.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    assert len(complete) == 2
    for figure in ("pickscore", "clip_score"):
        assert (complete[f"{figure}_lo"] <= complete[figure]).all() and (
            complete[figure] <= complete[f"{figure}_hi"]
        ).all()
    assert complete["feasible"].all()  # every plan meets the limit it was searched under
    study = json.loads((run / "reference.json").read_text())
    assert math.isfinite(study["pickscore"]) and study["pickscore_lo"] <= study["pickscore"] <= study["pickscore_hi"]
    figures = study["quality_figures"]
    assert "plumbing-only" in figures["figures"]["pickscore"] and "stand-in" in figures["figures"]["pickscore"]
    # digits_t2i scores FID with its own trained digit classifier; fid_ensemble with the bundled random CNNs
    assert (
        figures["figures"]["fid"].startswith("meaningful")
        and "not comparable with Inception" in figures["figures"]["fid"]
    )
    assert figures["figures"]["fid_ensemble"].startswith("plumbing-only")
    assert figures["fallback"] == []
    page = (run / "index.html").read_text()
    assert "<h2>Quality figures</h2>" in page and "PickScore 95% interval" in page
    assert "<li>pickscore: plumbing-only (its config marks it as a random-weight stand-in)" in page
    assert "The rule: meaningful: figures from trained weights" in page
    # plan answers the same question from the ledger: the fastest plan whose PickScore is at least the bound
    capsys.readouterr()
    assert main(["plan", str(run), f"--min-pickscore={float(complete['pickscore'].min()) - 1}"]) == 0
    assert "the fastest plan within pickscore >= " in capsys.readouterr().out
    assert main(["plan", str(run), f"--min-pickscore={float(complete['pickscore'].max()) + 1}"]) == 3  # none meets it
    assert "no front plan is the fastest plan within pickscore >= " in capsys.readouterr().out.lower()


@pytest.mark.slow  # seconds of searching, training or scoring: kept out of the quick subset
def test_a_search_offline_falls_back_from_a_hub_pickscore_and_says_so(fast_overrides, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    overrides = [
        *_t2i_overrides(fast_overrides),
        f"quality.preference_model={PICKSCORE_MODEL}",
        "objectives=[pickscore,latency_ms]",
        "budget.min_pickscore=20",
    ]
    assert main(["search", *overrides]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "pickscore" in line.lower()]
    assert any(line.startswith(f"quality.preference_model={PICKSCORE_MODEL} needs network") for line in said), said
    assert any("objective pickscore falls back to fid" in line for line in said), said
    assert any("budget.min_pickscore=20 left out" in line for line in said), said
    run = _run_folder(overrides)
    trials = pd.read_csv(run / "trials.csv")
    assert (trials["state"] == "COMPLETE").all() and "pickscore" not in trials
    figures = json.loads((run / "reference.json").read_text())["quality_figures"]
    assert list(figures["unmeasured"]) == ["pickscore"] and "pickscore" not in figures["figures"]
    assert any("falls back to fid" in line for line in figures["fallback"])
    page = (run / "index.html").read_text()
    assert "objective pickscore falls back to fid" in page and "needs network" in page
    # the run's configuration says what it optimised: a resume or the report reads the fallen-back objectives
    assert "- fid" in (run / "config.yaml").read_text()
    assert main(["search", *overrides]) == 0  # offline again: the same fallback, the study resumes
    capsys.readouterr()


@pytest.mark.slow  # seconds of searching, training or scoring: kept out of the quick subset
def test_a_study_that_fell_back_offline_refuses_a_resume_that_would_measure_the_figure(
    fast_overrides, stand_in, monkeypatch, capsys
):
    from transformers import CLIPModel, CLIPProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    overrides = [*_t2i_overrides(fast_overrides), f"quality.clip_model={CLIP_HUB_ID}", "budget.trials=1"]
    assert main(["search", *overrides]) == 0
    before = pd.read_csv(_run_folder(overrides) / "trials.csv")
    capsys.readouterr()
    # now with network: the hub gives the model (the stand-in, through transformers' own loaders)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    model_load, processor_load = CLIPModel.from_pretrained.__func__, CLIPProcessor.from_pretrained.__func__
    monkeypatch.setattr(CLIPModel, "from_pretrained", classmethod(lambda cls, source, **_: model_load(cls, stand_in)))
    monkeypatch.setattr(
        CLIPProcessor, "from_pretrained", classmethod(lambda cls, source, **_: processor_load(cls, stand_in))
    )
    assert main(["search", *overrides]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("autoaccel search: error:")]
    # its trials have no clip_score: trials with one would not be comparable with them
    assert len(errors) == 1 and "quality_figures: study has [], now ['clip_score']" in errors[0], errors
    assert pd.read_csv(_run_folder(overrides) / "trials.csv").equals(before)


def test_an_objective_or_limit_on_a_figure_without_its_model_is_refused(fast_overrides, capsys):
    overrides = _t2i_overrides(fast_overrides)
    assert main(["search", *overrides, "objectives=[pickscore,latency_ms]"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "objective pickscore needs quality.preference_model" in error
    assert main(["search", *overrides, "budget.min_pickscore=20"]) == 2
    assert "budget.min_pickscore=20 (a limit on pickscore) needs quality.preference_model" in capsys.readouterr().err


def test_an_unmeasurable_objective_falls_back_to_the_default_quality_once():
    from autoaccel.front.objectives import fall_back

    target = SimpleNamespace(real_images=None)
    unmeasured = {"pickscore": "quality.preference_model=... needs network"}
    assert fall_back(["pickscore", "latency_ms"], unmeasured, target)[0] == ["fid", "latency_ms"]  # in its place
    kept, lines = fall_back(["fid", "pickscore", "latency_ms"], unmeasured, target)
    assert kept == ["fid", "latency_ms"] and lines == [
        "objective pickscore falls back to fid, which needs no model: pickscore is not measured"
    ]
    with pytest.raises(ConfigError, match=r"which leaves \['fid'\]; give two or more measurable metrics"):
        fall_back(["pickscore", "fid"], unmeasured, target)


def test_plan_reads_negative_pickscores_of_random_weights():
    from autoaccel.cli.plan_command import _in_range

    assert _in_range("pickscore", -2.5) and not _in_range("fid", -2.5)


def test_a_preference_model_on_a_class_conditional_target_is_refused_in_one_line(stand_in, tmp_path, capsys):
    reports = tmp_path / "reports"
    argv = ["search", "target=digits", "target.device=cpu", f"report.dir={reports}"]
    assert main([*argv, f"quality.preference_model={stand_in}"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("autoaccel search: error: quality.preference_model=")
    assert "digits is conditioned on class labels, not prompts" in error
    assert not reports.exists() or not any(reports.iterdir())
