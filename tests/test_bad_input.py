"""Bad input on the command line: one line naming the value and what is valid, exit code 2, nothing written.

Every case runs the real CLI (``autoaccel.cli.main``). Most fail before any model is loaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from autoaccel.cli import main
from autoaccel.config import compose_config
from autoaccel.config.checks import MAX_SAMPLES, POPULATION_BACKENDS, validate_config
from autoaccel.errors import TargetError
from autoaccel.recipe import MAX_TRAIN_TIMESTEPS
from autoaccel.seeds import make_seed_batch
from autoaccel.targets.loader import check_device, load_pipeline_folder
from autoaccel.techniques.solver import MAX_GUIDANCE, SolverConfig, build_scheduler


def snapshot(folder: Path) -> dict[str, tuple[int, int]] | None:
    """Every file under ``folder`` with its size and modification time; None when it does not exist."""
    if not folder.exists():
        return None
    if folder.is_file():
        return {folder.name: (folder.stat().st_size, folder.stat().st_mtime_ns)}
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.rglob("*")}


def refused(capsys, argv: list[str], *fragments: str) -> str:
    """Runs the CLI and checks it stopped with exit code 2 and one line naming every fragment."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"autoaccel {argv[0]}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def reports(tmp_path) -> Path:
    return tmp_path / "reports"


# --- search options --------------------------------------------------------------------------------------------


def test_report_dir_that_is_a_file(capsys, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    before = snapshot(tmp_path)
    refused(capsys, ["search", f"report.dir={file}"], f"report.dir={str(file)!r}", "is a file", "give a folder")
    refused(capsys, ["search", f"report.dir={file / 'runs'}"], "inside", repr(str(file)), "which is a file")
    assert snapshot(tmp_path) == before and file.read_text() == "mine"


@pytest.mark.parametrize("size", [0, -3, 1])
@pytest.mark.parametrize("optimizer", POPULATION_BACKENDS)
def test_population_below_two_for_population_backends(capsys, reports, optimizer, size):
    refused(
        capsys,
        ["search", f"optimizer={optimizer}", f"optimizer.population_size={size}", f"report.dir={reports}"],
        f"optimizer.population_size={size}",
        optimizer,
        ">= 2",
    )
    assert snapshot(reports) is None


def test_population_is_checked_for_workers_before_any_starts(capsys, reports):
    refused(
        capsys,
        ["workers", "2", "storage=postgresql://nobody@localhost:1/none", "optimizer.population_size=0"],
        "optimizer.population_size=0",
        ">= 2",
    )


def test_population_size_is_not_a_concern_of_other_backends():
    validate_config(compose_config(["optimizer=optuna_tpe", "optimizer.population_size=0"]))


def test_target_path_without_target_pipeline(capsys, reports, tiny_pipeline_dir):
    refused(
        capsys,
        ["search", f"target.path={tiny_pipeline_dir}", f"report.dir={reports}"],
        f"target.path={str(tiny_pipeline_dir)!r}",
        "target=pipeline",
    )
    assert snapshot(reports) is None


@pytest.mark.parametrize("name", ["../x", "a/b", "x/../../y", "..", ".", "", "' '"])
def test_study_name_that_is_not_one_folder(capsys, tmp_path, name):
    reports = tmp_path / "inside" / "reports"
    refused(capsys, ["search", f"study_name={name}", f"report.dir={reports}"], "study_name=", "path separators")
    assert snapshot(tmp_path) == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_device_without_cuda(capsys, reports, fast_overrides, device):
    line = refused(
        capsys,
        ["search", *fast_overrides, f"target.device={device}", f"report.dir={reports}"],
        f"target.device={device!r}",
        "CUDA is not available",
        "valid here: auto, cpu",
    )
    assert "weights" not in line
    assert snapshot(reports) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_apply_on_cuda_without_cuda(capsys, tmp_path, tiny_recipe):
    out = tmp_path / "images"
    recipe = str(write_recipe(tmp_path, tiny_recipe))
    refused(
        capsys, ["apply", recipe, "--out", str(out), "--device", "cuda"], "--device='cuda'", "CUDA is not available"
    )
    assert snapshot(out) is None


def test_cuda_devices_valid_where_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [check_device(name) for name in ("cuda", "cuda:1", "cpu")] == ["cuda", "cuda:1", "cpu"]
    with pytest.raises(
        TargetError, match=r"target.device='cuda:2' .* 2 CUDA .*valid here: auto, cpu, cuda, cuda:0..cuda:1"
    ):
        check_device("cuda:2")


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["fidelity.levels=[512,128]", "quality.samples=128"], ["fidelity.levels=[512, 128]", "not increasing"]),
        (["fidelity.levels=[128,128]", "quality.samples=128"], ["fidelity.levels=[128, 128]", "strictly increasing"]),
        (["fidelity.levels=[0,128]", "quality.samples=128"], ["fidelity.levels=[0, 128]", ">= 2"]),
        (["fidelity.levels=[-16,128]", "quality.samples=128"], ["fidelity.levels=[-16, 128]", ">= 2"]),
        (["fidelity.levels=[16,64]", "quality.samples=128"], ["must end at quality.samples=128"]),
        (["fidelity.z=nan"], ["fidelity.z=nan", "finite number >= 0"]),
        (["fidelity.z=-1"], ["fidelity.z=-1.0", "finite number >= 0"]),
        (["fidelity.z=inf"], ["fidelity.z=inf", "finite number >= 0"]),
    ],
)
def test_bad_fidelity_stops_at_start_up(capsys, reports, overrides, fragments):
    refused(capsys, ["search", *overrides, f"report.dir={reports}"], *fragments)
    assert snapshot(reports) is None


# --- pipeline folders ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "content", "fragments"),
    [
        ("model_index.json", [], ["model_index.json holds []", "JSON object"]),
        ("model_index.json", {"_class_name": "DDPMPipeline", "unet": []}, ["its unet is []", "UNet2DModel"]),
        ("autoaccel.json", {"null_class": "abc"}, ["null_class='abc'", "0..3"]),
        ("autoaccel.json", {"null_class": 3, "num_classes": "3"}, ["num_classes='3'", "[1, 3]"]),
        ("autoaccel.json", {"null_class": 3, "num_classes": 2.5}, ["num_classes=2.5", "[1, 3]"]),
        ("autoaccel.json", {"num_classes": 7}, ["num_classes=7", "[1, 4]"]),
        ("autoaccel.json", ["null_class", 3], ["autoaccel.json holds", "JSON object"]),
    ],
)
def test_bad_pipeline_folder_files(capsys, tmp_path, reports, tiny_pipeline_dir, file, content, fragments):
    folder = shutil.copytree(tiny_pipeline_dir, tmp_path / "model")
    (folder / file).write_text(json.dumps(content))
    before = snapshot(folder)
    overrides = ["target=pipeline", f"target.path={folder}", "target.device=cpu", f"report.dir={reports}"]
    refused(capsys, ["search", *overrides], *fragments)
    assert snapshot(reports) is None and snapshot(folder) == before


# --- recipes ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_recipe(tiny_pipeline_dir) -> dict:
    """A valid recipe for the tiny pipeline: UniPC on four steps, its weights' hash, a two-chunk seed policy."""
    target = load_pipeline_folder(tiny_pipeline_dir, device="cpu")
    scheduler = build_scheduler(SolverConfig(name="unipc", order=2), target.scheduler_config)
    config = {key: value for key, value in dict(scheduler.config).items() if not key.startswith("_")}
    return {
        "autoaccel_recipe": 1,
        "base_model": {"name": "tiny", "path": str(tiny_pipeline_dir), "content_hash": target.content_hash},
        "techniques": {"solver": {"version": 1, "config": {"name": "unipc", "order": 2, "guidance": 1.5}}},
        "scheduler": {"class": "UniPCMultistepScheduler", "config": yaml.safe_load(yaml.safe_dump(config))},
        "timesteps": [99, 70, 40, 12],
        "guidance_scale": 1.5,
        "null_class": target.null_class,
        "seed_policy": {"seed": 3, "samples": 8, "chunk_size": 4},
    }


def write_recipe(tmp_path: Path, recipe: dict, **changes) -> Path:
    recipe = json.loads(json.dumps(recipe))  # a deep copy
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            recipe[section][field] = value
        else:
            recipe[section] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"null_class": 99}, ["null_class=99", "[0, 3]"]),
        ({"seed_policy__chunk_size": 0}, ["seed_policy.chunk_size=0", "an int >= 1"]),
        ({"seed_policy__samples": 10**12}, ["seed_policy.samples=1000000000000", f"[1, {MAX_SAMPLES}]"]),
        ({"seed_policy": "all of them"}, ["seed_policy='all of them'", "mapping"]),
        ({"guidance_scale": 1e308}, ["guidance_scale=1e+308", f"[1, {MAX_GUIDANCE:g}]"]),
        ({"guidance_scale": float("inf")}, ["guidance_scale=inf", f"[1, {MAX_GUIDANCE:g}]"]),
    ],
)
def test_bad_recipe_values(capsys, tmp_path, tiny_recipe, changes, fragments):
    out = tmp_path / "images"
    refused(capsys, ["apply", str(write_recipe(tmp_path, tiny_recipe, **changes)), "--out", str(out)], *fragments)
    assert snapshot(out) is None


@pytest.mark.parametrize(
    ("setting", "fragments"),
    [
        ({"num_train_timestep": 100}, ["key 'num_train_timestep' is not a setting of UniPCMultistepScheduler"]),
        ({"solver_order": "2"}, ["solver_order='2'", "of type int"]),
        ({"beta_schedule": "cosine-ish"}, ["beta_schedule='cosine-ish'", "not accepted by UniPCMultistepScheduler"]),
        ({"solver_order": 0}, ["solver_order=0", "not accepted by UniPCMultistepScheduler"]),
        ({"prediction_type": "noise"}, ["prediction_type='noise'", "not accepted"]),
        ({"num_train_timesteps": 10**12}, ["num_train_timesteps=1000000000000", f"[1, {MAX_TRAIN_TIMESTEPS}]"]),
    ],
)
def test_scheduler_settings_its_class_refuses(capsys, tmp_path, tiny_recipe, setting, fragments):
    scheduler = {"class": "UniPCMultistepScheduler", "config": {**tiny_recipe["scheduler"]["config"], **setting}}
    out = tmp_path / "images"
    refused(
        capsys, ["apply", str(write_recipe(tmp_path, tiny_recipe, scheduler=scheduler)), "--out", str(out)], *fragments
    )
    assert snapshot(out) is None


# --- apply flags -----------------------------------------------------------------------------------------------


def test_apply_out_that_is_a_file(capsys, tmp_path, tiny_recipe):
    out = tmp_path / "images.png"
    out.write_bytes(b"not mine to replace")
    before = snapshot(out)
    recipe = str(write_recipe(tmp_path, tiny_recipe))
    refused(capsys, ["apply", recipe, "--out", str(out)], f"--out={str(out)!r}", "is a file")
    refused(capsys, ["apply", recipe, "--out", str(out / "more")], "which is a file")
    assert snapshot(out) == before


def test_apply_into_a_folder_of_images_needs_overwrite(capsys, tmp_path, tiny_recipe):
    out = tmp_path / "images"
    out.mkdir()
    for name in ("00000.png", "00001.png", "00002.png", "grid.png"):
        Image.new("L", (2, 2)).save(out / name)
    (out / "notes.txt").write_text("keep")
    before = snapshot(out)
    recipe = str(write_recipe(tmp_path, tiny_recipe))
    refused(capsys, ["apply", recipe, "--out", str(out), "--n", "2"], str(out), "4 image(s)", "--overwrite")
    assert snapshot(out) == before
    assert main(["apply", recipe, "--out", str(out), "--n", "2", "--overwrite"]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["00000.png", "00001.png", "grid.png", "notes.txt"]
    assert (out / "notes.txt").read_text() == "keep"


def test_apply_recipe_that_is_a_folder(capsys, tmp_path, tiny_recipe):
    run = tmp_path / "run"
    (run / "recipes").mkdir(parents=True)
    (run / "recipes" / "trial-0003.yaml").write_text(yaml.safe_dump(tiny_recipe))
    out = tmp_path / "images"
    line = refused(capsys, ["apply", str(run), "--out", str(out)], f"recipe {run} is a folder", "trial-0003.yaml")
    assert "does not exist" not in line
    assert snapshot(out) is None


@pytest.mark.parametrize("count", ["0", "-4", str(MAX_SAMPLES + 1)])
def test_apply_count_out_of_range(capsys, tmp_path, tiny_recipe, count):
    out = tmp_path / "images"
    recipe = str(write_recipe(tmp_path, tiny_recipe))
    refused(capsys, ["apply", recipe, "--out", str(out), f"--n={count}"], f"--n {count}", f"[1, {MAX_SAMPLES}]")
    assert snapshot(out) is None


def test_apply_one_image_samples_one_chunk_and_matches_the_full_batch(monkeypatch, tmp_path, tiny_recipe):
    import autoaccel.applying as applying

    sampled = []

    def counting(pipeline, seeds, chunk_size):
        sampled.append(seeds.count)
        return real(pipeline, seeds, chunk_size)

    real = applying.sample_in_chunks
    monkeypatch.setattr(applying, "sample_in_chunks", counting)
    recipe = str(write_recipe(tmp_path, tiny_recipe))
    assert main(["apply", recipe, "--out", str(tmp_path / "one"), "--n", "1"]) == 0
    assert main(["apply", recipe, "--out", str(tmp_path / "all"), "--n", "8"]) == 0
    assert sampled == [4, 8]  # one chunk of the policy's chunk_size, not the policy's 8 samples
    one, first = (np.asarray(Image.open(tmp_path / name / "00000.png")) for name in ("one", "all"))
    assert np.array_equal(one, first)


@pytest.mark.parametrize("num_classes", [None, 3])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 5, 7), (1, 3, 3)])
def test_seed_batch_prefix_is_bit_identical(shape, num_classes):
    for count in (1, 5, 17, 48, 100):
        full = make_seed_batch(shape, count, 11, num_classes)
        for keep in sorted({1, 2, 3, 16, count - 1, count} - {0}):
            head = make_seed_batch(shape, count, 11, num_classes, keep=keep)
            assert torch.equal(head.noise, full.noise[:keep]), (shape, count, keep)
            if num_classes:
                assert torch.equal(head.class_labels, full.class_labels[:keep]), (shape, count, keep)


# --- plan ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("", ["pareto.csv is empty", "autoaccel report"]),
        ("name,score\nalpha,1\n", ["lacks the column(s) trial, nfe, latency_ms, recipe, fid", "autoaccel report"]),
        ("trial,nfe,latency_ms,recipe,fid\nseven,4,1.0,r.yaml,3.0\n", ["column(s) trial hold non-numbers"]),
    ],
)
def test_plan_on_a_front_autoaccel_did_not_write(capsys, tmp_path, content, fragments):
    (tmp_path / "pareto.csv").write_text(content)
    before = snapshot(tmp_path)
    refused(capsys, ["plan", str(tmp_path)], *fragments)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-latency-ms", "-5"),
        ("--max-latency-ms", "0"),
        ("--max-latency-ms", "nan"),
        ("--max-nfe", "nan"),
        ("--max-nfe", "inf"),
        ("--max-nfe", "-inf"),
    ],
)
def test_plan_budget_out_of_range(capsys, tmp_path, flag, value):
    (tmp_path / "pareto.csv").write_text("trial,nfe,latency_ms,recipe,fid\n1,4,1.0,r.yaml,3.0\n")
    before = snapshot(tmp_path)
    refused(capsys, ["plan", str(tmp_path), f"{flag}={value}"], f"{flag} {float(value)}", "finite number > 0")
    assert snapshot(tmp_path) == before


def _plan_run(folder: Path, pareto: str = "", teacher: dict | None = None) -> Path:
    """A run folder as ``report`` writes it for ``plan``: pareto.csv, trials.csv (a standard configuration without an
    adherence column) and teacher.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pareto.csv").write_text(
        pareto or "trial,nfe,fid,latency_ms,adherence,recipe\n11,4,12.0,5.0,,recipes/trial-0011.yaml\n"
    )
    (folder / "trials.csv").write_text("trial,state,warm_start,nfe,fid,latency_ms\n1,COMPLETE,ddim-4,4,30.0,11.0\n")
    (folder / "teacher.json").write_text(json.dumps(teacher or {"fid": 8.0, "latency_ms": 600.0}))
    return folder


@pytest.mark.parametrize("flag", ["--quality", "--minimize"])
def test_plan_ranked_by_a_metric_the_run_did_not_measure(capsys, tmp_path, flag):
    run = _plan_run(tmp_path / "run")
    before = snapshot(run)
    refused(capsys, ["plan", str(run), flag, "adherence"], f"{flag} adherence", "no plan", "valid here: fid")
    assert snapshot(run) == before


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--min-psnr", "-inf"], ["--min-psnr -inf", "a finite number"]),
        (["--max-latency-ms", "-1e3"], ["--max-latency-ms -1000.0", "a finite number > 0"]),
        (["--max-nfe", "four"], ["--max-nfe four", "a finite number > 0"]),
    ],
)
def test_plan_limit_values_that_start_with_a_dash_or_are_not_numbers(capsys, tmp_path, argv, fragments):
    refused(capsys, ["plan", str(_plan_run(tmp_path / "run")), *argv], *fragments)


@pytest.mark.parametrize(
    ("pareto", "fragments"),
    [
        (
            "trial,nfe,fid,latency_ms,recipe\n11,4,12.0,-5.0,r.yaml\n22,8,9.0,10.0,r.yaml\n",
            ["pareto.csv: row 1 (trial 11) has latency_ms=-5.0", "valid: a finite number >= 0"],
        ),
        ("trial,nfe,fid,latency_ms,recipe\n11,4,True,5.0,r.yaml\n", ["column(s) fid hold non-numbers"]),
        ("trial,nfe,fid,latency_ms,recipe\n11,inf,12.0,5.0,r.yaml\n", ["has nfe=inf", "valid: a finite number >= 0"]),
        ("trial,nfe,fid,latency_ms,recipe\n11.5,4,12.0,5.0,r.yaml\n", ["has trial=11.5", "a whole number >= 0"]),
        ("trial,nfe,fid,latency_ms,recipe\n11,4,-2.0,5.0,r.yaml\n", ["has fid=-2.0", "a finite number >= 0"]),
    ],
)
def test_plan_refuses_hand_edited_front_figures(capsys, tmp_path, pareto, fragments):
    run = _plan_run(tmp_path / "run", pareto=pareto)
    refused(capsys, ["plan", str(run), "--max-latency-ms", "100"], *fragments)


@pytest.mark.parametrize(
    ("teacher", "argv", "fragments"),
    [
        ({"fid": True, "latency_ms": 600.0}, [], ["teacher.json: fid=true is not valid", "a finite number >= 0"]),
        ({"fid": 8.0, "latency_ms": -1}, [], ["teacher.json: latency_ms=-1 is not valid"]),
        ({"fid": 8.0, "quality_reference": "mine"}, [], ['quality_reference="mine"', "real-data, teacher-samples"]),
        ({"fid": 0.0, "latency_ms": 600.0}, ["--max-fid-ratio", "1.25"], ["needs the reference's FID > 0", "fid=0.0"]),
    ],
)
def test_plan_refuses_hand_edited_reference_figures(capsys, tmp_path, teacher, argv, fragments):
    run = _plan_run(tmp_path / "run", teacher=teacher)
    refused(capsys, ["plan", str(run), "--max-latency-ms", "100", *argv], *fragments)


def test_plan_quotes_the_paths_in_the_command_it_prints(capsys, tmp_path):
    """A recipe cell or a folder name with shell syntax or spaces is printed so that pasting the command runs
    apply on that path and nothing else."""
    import shlex

    cell = "$(touch pwned)"
    run = _plan_run(tmp_path / "my runs", pareto=f"trial,nfe,fid,latency_ms,recipe\n11,4,12.0,5.0,{cell}\n")
    assert main(["plan", str(run), "--max-latency-ms", "100"]) == 0
    lines = capsys.readouterr().out.splitlines()
    command = next(line for line in lines if line.strip().startswith("apply:")).split("apply:", 1)[1]
    assert shlex.split(command) == [
        "python", "-m", "autoaccel", "apply", str(run / cell), "--out", "samples", "--n", "16"
    ]  # fmt: skip
    recipe = next(line for line in lines if line.strip().startswith("recipe:")).split("recipe:", 1)[1]
    assert shlex.split(recipe) == [str(run / cell)]
    assert not (tmp_path / "pwned").exists()


# --- help ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["search", "--help"], ["search", "budget.trials=3", "-h"], ["workers", "--help"], ["workers", "4", "--help"]],
)
def test_search_and_workers_help(capsys, argv):
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert f"usage: python -m autoaccel {argv[0]}" in captured.out
    for fragment in ("budget.trials", "(default 40)", "target.device", "report.dir", "fidelity.levels"):
        assert fragment in captured.out


@pytest.mark.parametrize("argv", [["bench", "--help"], ["bench", "-h"], ["bench", "schedules", "--help"]])
def test_bench_help_lists_the_benchmarks(capsys, argv):
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "usage: python -m autoaccel bench NAME" in captured.out
    for name in ("schedules", "optimizers", "compression", "workers", "bench.nfes", "bench.trials"):
        assert name in captured.out


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_plan_min_adherence_outside_zero_to_one(capsys, tmp_path, value):
    (tmp_path / "pareto.csv").write_text("trial,nfe,latency_ms,recipe,fid\n1,4,1.0,r.yaml,3.0\n")
    refused(capsys, ["plan", str(tmp_path), f"--min-adherence={value}"], "--min-adherence", "a number in [0, 1]")


def test_min_adherence_on_a_model_without_a_classifier(capsys, reports, tiny_pipeline_dir):
    argv = ["search", "target=pipeline", f"target.path={tiny_pipeline_dir}", f"report.dir={reports}"]
    refused(capsys, [*argv, "budget.min_adherence=0.9"], "budget.min_adherence=0.9", "digits_t2i")
    assert not reports.exists() or not any(reports.iterdir())
