"""Bad input on the command line: one line naming the value and what is valid, exit code 2, nothing written.

Every case runs the real CLI (``autoaccel.cli.main.main``). Most fail before any model is loaded.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from autoaccel.cli.main import main
from autoaccel.config import compose_config
from autoaccel.errors import TargetError
from autoaccel.pipeline.seeds import make_seed_batch
from autoaccel.schedules.schedulers import MAX_INFERENCE_STEPS, MAX_TRAIN_TIMESTEPS
from autoaccel.search.checks import MAX_SAMPLES, POPULATION_BACKENDS, validate_config
from autoaccel.targets.data_folder import MAX_IMAGE_PIXELS
from autoaccel.targets.loader import MAX_SAMPLE_CHANNELS, MAX_SAMPLE_SIZE, check_device, load_pipeline_folder
from autoaccel.techniques.solver import MAX_GUIDANCE, SolverConfig, build_scheduler
from tests.plan_ledgers import STUDY, write_ledger_run


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


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["liveness.grace_s=-1"], ["liveness.grace_s=-1.0", "0 < interval_s < grace_s"]),
        (["liveness.interval_s=0"], ["liveness.interval_s=0.0", "0 < interval_s < grace_s"]),
        (["budget.warm_start_steps=[0]"], ["budget.warm_start_steps=[0]", f"[1, {MAX_INFERENCE_STEPS}]"]),
        (["budget.warm_start_steps=[4,100000]"], ["100000 is not a step count", f"[1, {MAX_INFERENCE_STEPS}]"]),
    ],
)
def test_bad_run_settings_stop_before_anything_loads(capsys, monkeypatch, reports, overrides, fragments):
    import autoaccel.search.run

    def refuse(*args, **kwargs):
        raise AssertionError("the model must not load before the settings are checked")

    monkeypatch.setattr(autoaccel.search.run, "load_target", refuse)
    refused(capsys, ["search", *overrides, f"report.dir={reports}"], *fragments)
    assert snapshot(reports) is None


def test_cache_dir_that_is_a_file(capsys, monkeypatch, tmp_path, reports):
    import autoaccel.search.run

    def refuse(*args, **kwargs):
        raise AssertionError("the model must not load before the cache folder is checked")

    monkeypatch.setattr(autoaccel.search.run, "load_target", refuse)
    file = tmp_path / "cache"
    file.write_text("mine")
    refused(capsys, ["search", f"cache_dir={file}", f"report.dir={reports}"], f"cache_dir={str(file)!r}", "is a file")
    assert snapshot(reports) is None and file.read_text() == "mine"


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


def _edited_folder(tiny_pipeline_dir: Path, tmp_path: Path, file: str, changes: dict) -> Path:
    """A copy of the tiny pipeline folder whose JSON ``file`` has ``changes`` merged in."""
    folder = shutil.copytree(tiny_pipeline_dir, tmp_path / "model")
    path = folder / file
    content = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**content, **changes}))
    return folder


@pytest.mark.parametrize(
    ("file", "changes", "fragments"),
    [
        (
            "model_index.json",
            {"scheduler": ["diffusers", "UNet2DModel"]},
            ["model_index.json: scheduler='UNet2DModel' is not allowed", "PNDMScheduler"],
        ),
        (
            "scheduler/scheduler_config.json",
            {"_class_name": "utils"},
            ["scheduler_config.json: _class_name='utils' is not allowed", "DDPMScheduler"],
        ),
        (
            "scheduler/scheduler_config.json",
            {"num_train_timesteps": 10**7},
            ["num_train_timesteps=10000000", f"[1, {MAX_TRAIN_TIMESTEPS}]"],
        ),
        (
            "scheduler/scheduler_config.json",
            {"beta_schedule": "banana"},
            ["scheduler_config.json is not accepted by DDPMScheduler", "banana"],
        ),
        ("unet/config.json", {"sample_size": 100000}, ["sample_size=100000", f"[1, {MAX_SAMPLE_SIZE}]"]),
        ("unet/config.json", {"sample_size": [8, "8"]}, ["sample_size=[8, '8']", "[height, width]"]),
        ("unet/config.json", {"in_channels": 10**6}, ["in_channels=1000000", f"[1, {MAX_SAMPLE_CHANNELS}]"]),
        (
            "autoaccel.json",
            {"default_call": {"num_inference_steps": 10**9}},
            ["default_call.num_inference_steps=1000000000", f"[1, {MAX_INFERENCE_STEPS}]"],
        ),
    ],
)
def test_folder_sizes_and_scheduler_are_checked_before_loading(
    capsys, monkeypatch, tmp_path, reports, tiny_pipeline_dir, file, changes, fragments
):
    import diffusers

    def refuse(*args, **kwargs):
        raise AssertionError("what a folder's JSON files name must be checked before the pipeline is loaded")

    folder = _edited_folder(tiny_pipeline_dir, tmp_path, file, changes)
    before = snapshot(folder)
    if file != "autoaccel.json":  # read with the loaded pipeline's defaults
        monkeypatch.setattr(diffusers.DDPMPipeline, "from_pretrained", classmethod(refuse))
    overrides = ["target=pipeline", f"target.path={folder}", "target.device=cpu", f"report.dir={reports}"]
    refused(capsys, ["search", *overrides], *fragments)
    assert snapshot(reports) is None and snapshot(folder) == before


def _png_header(width: int, height: int) -> bytes:
    """A small PNG file that claims ``width`` x ``height`` grey pixels (a decompression bomb's header): a few
    rows of data, never decoded further."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _image_folder(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for index in range(count):
        Image.new("L", (8, 8), index % 256).save(folder / f"image{index:04d}.png")
    return folder


@pytest.mark.parametrize(
    ("size", "fragments"),
    [
        (30000, ["cannot read", "bomb.png", "exceeds limit"]),
        (9000, ["bomb.png is 9000x9000 pixels", f"at most {MAX_IMAGE_PIXELS} pixels"]),
    ],
)
def test_data_folder_with_a_decompression_bomb(capsys, tmp_path, reports, fast_overrides, size, fragments):
    data = _image_folder(tmp_path / "data", 193)  # enough for the generic extractor's 192 features
    (data / "bomb.png").write_bytes(_png_header(size, size))
    overrides = [*fast_overrides, f"target.data={data}", "budget.trials=2", f"report.dir={reports}"]
    refused(capsys, ["search", *overrides], f"target.data={data}", *fragments)
    assert snapshot(reports) is None


def test_data_folder_with_too_few_images_for_fid(capsys, tmp_path, reports, fast_overrides):
    data = _image_folder(tmp_path / "data", 1)
    overrides = [*fast_overrides, f"target.data={data}", "budget.trials=2", f"report.dir={reports}"]
    refused(
        capsys,
        ["search", *overrides],
        f"target.data={data} holds 1 image(s)",
        "at least 193",
        "192 features",
    )
    assert snapshot(reports) is None


# --- recipes ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_recipe(tiny_pipeline_dir) -> dict:
    """A valid recipe for the tiny pipeline: UniPC on four steps, its weights' hash, a two-chunk seed policy.
    Written by hand in format 1 (its sampler beside its techniques), which autoaccel still applies."""
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
        ({"autoaccel_recipe": 3}, ["format 3 is not supported", "reads formats 1 and 2"]),
        (
            {"autoaccel_recipe": 2},  # format 1's written sampler in a format-2 recipe: its techniques decide
            ["top-level scheduler is not a field of a format-2 recipe", "name the solver technique"],
        ),
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


@pytest.mark.parametrize(
    ("base", "fragments"),
    [
        (
            {
                "scheduler_class": "UNet2DModel",
                "scheduler_config": {"block_out_channels": [1024, 2048, 4096, 4096], "layers_per_block": 6},
            },
            ["base_model.scheduler_class='UNet2DModel' is not allowed", "DDPMScheduler"],
        ),
        ({"scheduler_class": "utils", "scheduler_config": {}}, ["base_model.scheduler_class='utils' is not allowed"]),
        (
            {"scheduler_class": "DDPMScheduler", "scheduler_config": {"num_train_timesteps": 10**7}},
            ["base_model.scheduler_config num_train_timesteps=10000000", f"[1, {MAX_TRAIN_TIMESTEPS}]"],
        ),
        (
            {"scheduler_class": "DDPMScheduler", "scheduler_config": {"beta_schedule": "banana"}},
            ["base_model.scheduler_config is not accepted by DDPMScheduler", "banana"],
        ),
        (
            {"scheduler_class": "DDPMScheduler", "scheduler_config": ["num_train_timesteps", 100]},
            ["base_model.scheduler_config must be a mapping"],
        ),
        ({"scheduler_config": {"solver_order": 10**9}}, ["base_model.scheduler_config solver_order=1000000000"]),
    ],
)
def test_base_model_scheduler_goes_through_the_allow_list(
    capsys, refuse_large_unets, tmp_path, tiny_recipe, base, fragments
):
    recipe = dict(tiny_recipe, base_model={**tiny_recipe["base_model"], **base})
    out = tmp_path / "images"
    refused(capsys, ["apply", str(write_recipe(tmp_path, recipe)), "--out", str(out)], *fragments)
    assert snapshot(out) is None


def test_recipe_that_is_not_utf8(capsys, tmp_path, tiny_recipe):
    path = write_recipe(tmp_path, tiny_recipe)
    path.write_bytes(path.read_bytes().replace(b"tiny", b"t\xffny", 1))
    out = tmp_path / "images"
    refused(capsys, ["apply", str(path), "--out", str(out)], f"recipe {path} is not UTF-8 text", "offset")
    assert snapshot(out) is None


def test_recipe_that_is_not_a_regular_file(capsys, tmp_path):
    fifo = tmp_path / "recipe.yaml"
    os.mkfifo(fifo)
    out = tmp_path / "images"
    line = refused(capsys, ["apply", str(fifo), "--out", str(out)], f"recipe {fifo} is not a regular file")
    assert "does not exist" not in line
    assert snapshot(out) is None


def test_space_whose_every_progressive_trial_would_fail(capsys, tmp_path, reports, fast_overrides):
    space = tmp_path / "space.yaml"
    space.write_text(
        "techniques: [distillation, solver, timesteps]\n"
        "fixed: {distillation.steps: 3, distillation.start_steps: 64}\n"
        "dimensions:\n  distillation.method: {type: categorical, choices: [none, progressive]}\n"
        "  timesteps.steps: {type: int, low: 3, high: 6}\n"
    )
    refused(
        capsys,
        ["search", *fast_overrides, f"space={space}", "budget.trials=2", f"report.dir={reports}"],
        str(space),
        "distillation.method='progressive'",
        "start_steps=64 is not valid for steps=3",
    )
    assert snapshot(reports) is None


@pytest.mark.parametrize(
    ("config", "fragments"),
    [
        ({"method": "consistency", "iterations": 10**12}, ["distillation.iterations=1000000000000", "[0, 100000]"]),
        ({"method": "consistency", "batch_size": 10**9}, ["distillation.batch_size=1000000000", "[1, 4096]"]),
    ],
)
def test_recipe_that_would_train_without_end_on_apply(capsys, monkeypatch, tmp_path, tiny_recipe, config, fragments):
    import autoaccel.cli.apply_command

    def refuse(*args, **kwargs):
        raise AssertionError("the model must not load before the recipe is checked")

    monkeypatch.setattr(autoaccel.cli.apply_command, "load_base_model", refuse)
    techniques = {**tiny_recipe["techniques"], "distillation": {"version": 1, "config": config}}
    out = tmp_path / "images"
    refused(
        capsys,
        ["apply", str(write_recipe(tmp_path, tiny_recipe, techniques=techniques)), "--out", str(out)],
        *fragments,
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


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder in which no file can be made: a read-only one for a user, /sys (read-only) for root."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o500)
        return folder
    if Path("/sys").is_dir() and not _can_create_in(Path("/sys")):
        return Path("/sys")
    pytest.skip("no read-only folder to try as root")


def _can_create_in(folder: Path) -> bool:
    try:
        (folder / "autoaccel-probe").touch()
    except OSError:
        return False
    (folder / "autoaccel-probe").unlink()
    return True


def test_apply_out_that_cannot_be_written_is_refused_before_sampling(capsys, monkeypatch, tmp_path, tiny_recipe):
    import autoaccel.cli.apply_command

    def refuse(*args, **kwargs):
        raise AssertionError("the recipe must not be read before --out is checked")

    monkeypatch.setattr(autoaccel.cli.apply_command, "load_recipe", refuse)
    out = unwritable_folder(tmp_path) / "images"
    recipe = str(write_recipe(tmp_path, tiny_recipe))
    refused(capsys, ["apply", recipe, "--out", str(out)], f"--out={str(out)!r} cannot be written", "you can write to")
    assert not out.exists()


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
    import autoaccel.cli.apply_command as applying

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


def _not_a_run(folder: Path, what: str) -> Path:
    """A folder ``plan`` cannot read a study from: ``what`` it lacks or holds instead."""
    folder.mkdir(parents=True, exist_ok=True)
    if what == "no config":
        (folder / "pareto.csv").write_text("trial,nfe,latency_ms,recipe,fid\n1,4,1.0,r.yaml,3.0\n")
        return folder
    write_ledger_run(folder / "run", {0: {"nfe": 4, "fid": 3.0, "latency_ms": 1.0}})
    shutil.copy(folder / "run" / "config.yaml", folder / "config.yaml")
    if what == "not sqlite":
        (folder / "ledger.db").write_text("trial,nfe\n")
    elif what == "another study":
        shutil.copy(folder / "run" / "ledger.db", folder / "ledger.db")
        (folder / "config.yaml").write_text((folder / "config.yaml").read_text().replace(STUDY, "other-study"))
    shutil.rmtree(folder / "run")
    return folder


@pytest.mark.parametrize(
    ("what", "fragments"),
    [
        ("no config", ["is not an autoaccel run folder: it has no config.yaml"]),
        ("no ledger", ["has no ledger.db: nothing was recorded there"]),
        ("not sqlite", ["ledger.db is not a SQLite database"]),
        ("another study", ["has no study named 'other-study'"]),
    ],
)
def test_plan_on_a_folder_without_the_runs_study(capsys, tmp_path, what, fragments):
    folder = _not_a_run(tmp_path / "run", what)
    before = snapshot(folder)
    refused(capsys, ["plan", str(folder)], *fragments)
    assert snapshot(folder) == before


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
    _plan_run(tmp_path)
    before = snapshot(tmp_path)
    refused(capsys, ["plan", str(tmp_path), f"{flag}={value}"], f"{flag} {float(value)}", "finite number > 0")
    assert snapshot(tmp_path) == before


def _plan_run(folder: Path, front: dict | None = None, reference: dict | None = None) -> Path:
    """A run folder as a search leaves it for ``plan``: its ledger with one front plan (trial 11, its adherence not
    measured, or ``front``'s figures) and a standard configuration without an adherence figure, and ``reference`` (the
    reference call's figures)."""
    front = front or {"nfe": 4, "fid": 12.0, "latency_ms": 5.0, "adherence": None}
    standard = {"warm_start": "ddim-4", "nfe": 4, "fid": 30.0, "latency_ms": 11.0}
    return write_ledger_run(folder, {1: standard, 11: front}, reference or {"fid": 8.0, "latency_ms": 600.0})


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
    ("front", "fragments"),
    [
        (
            {"nfe": 4, "fid": 12.0, "latency_ms": -5.0},
            ["study 'plan-test': trial 11 has latency_ms=-5.0", "valid: a finite number >= 0"],
        ),
        ({"nfe": None, "fid": 12.0, "latency_ms": 5.0}, ["trial 11 has nfe=nan", "valid: a finite number >= 0"]),
        ({"nfe": 4, "fid": -2.0, "latency_ms": 5.0}, ["trial 11 has fid=-2.0", "a finite number >= 0"]),
    ],
)
def test_plan_refuses_figures_out_of_range(capsys, tmp_path, front, fragments):
    run = _plan_run(tmp_path / "run", front=front)
    refused(capsys, ["plan", str(run), "--max-latency-ms", "100"], *fragments)


@pytest.mark.parametrize(
    ("reference", "argv", "fragments"),
    [
        ({"fid": True, "latency_ms": 600.0}, [], ["the reference's fid=true is not valid", "a finite number >= 0"]),
        ({"fid": 8.0, "latency_ms": -1}, [], ["the reference's latency_ms=-1 is not valid"]),
        ({"fid": 0.0, "latency_ms": 600.0}, ["--max-fid-ratio", "1.25"], ["needs the reference's FID > 0", "fid=0.0"]),
    ],
)
def test_plan_refuses_reference_figures_out_of_range(capsys, tmp_path, reference, argv, fragments):
    run = _plan_run(tmp_path / "run", reference=reference)
    refused(capsys, ["plan", str(run), "--max-latency-ms", "100", *argv], *fragments)


def test_plan_quotes_the_paths_in_the_command_it_prints(capsys, tmp_path):
    """A folder name with shell syntax or spaces is printed so that pasting the command runs apply on that path and
    nothing else."""
    import shlex

    run = _plan_run(tmp_path / "my runs $(touch pwned)")
    recipe_file = run / "recipes" / "trial-0011.yaml"
    recipe_file.parent.mkdir()
    recipe_file.write_text("recipe\n")
    assert main(["plan", str(run), "--max-latency-ms", "100"]) == 0
    lines = capsys.readouterr().out.splitlines()
    command = next(line for line in lines if line.strip().startswith("apply:")).split("apply:", 1)[1]
    assert shlex.split(command) == [
        "python", "-m", "autoaccel", "apply", str(recipe_file), "--out", "samples", "--n", "16"
    ]  # fmt: skip
    recipe = next(line for line in lines if line.strip().startswith("recipe:")).split("recipe:", 1)[1]
    assert shlex.split(recipe) == [str(recipe_file)]
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


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


def test_help_read_only_in_part_ends_quietly():
    """``search --help | head -1`` (or ``| grep -q``): the reader leaves early; no traceback, exit 0, and none of
    the version chatter torch and diffusers log when torchao is imported."""
    import subprocess
    import sys

    command = f"set -o pipefail; {sys.executable} -m autoaccel search --help | head -1"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m autoaccel search")
    assert done.stderr == ""


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
    _plan_run(tmp_path)
    refused(capsys, ["plan", str(tmp_path), f"--min-adherence={value}"], "--min-adherence", "a number in [0, 1]")


def test_min_adherence_on_a_model_without_a_classifier(capsys, reports, tiny_pipeline_dir):
    argv = ["search", "target=pipeline", f"target.path={tiny_pipeline_dir}", f"report.dir={reports}"]
    refused(capsys, [*argv, "budget.min_adherence=0.9"], "budget.min_adherence=0.9", "digits_t2i")
    assert not reports.exists() or not any(reports.iterdir())


# --- train commands ----------------------------------------------------------------------------------------------


@pytest.fixture
def embedded_weights(monkeypatch):
    """The embedded models' weights: a refused train command must leave them as they are, and never train."""
    import autoaccel.targets.digits.classifier_training as classifier
    import autoaccel.targets.digits.latent.train as latent
    import autoaccel.targets.digits.teacher as teacher
    from autoaccel.targets.digits.weights import WEIGHTS_DIR

    def refuse(*args, **kwargs):
        raise AssertionError("a refused flag must stop the command before it trains")

    for module, name in ((teacher, "train_teacher"), (classifier, "train_classifier"), (latent, "train_latent_models")):
        monkeypatch.setattr(module, name, refuse)
    before = snapshot(WEIGHTS_DIR)
    yield
    assert snapshot(WEIGHTS_DIR) == before


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["train-teacher", "--steps", "-1"], ["--steps -1 is not valid", "[1, 1000000]"]),
        (["train-teacher", "--steps", "0"], ["--steps 0 is not valid"]),
        (["train-teacher", "--seed", str(2**62)], [f"--seed {2**62} is not valid"]),
        (["train-classifier", "--epochs", "0"], ["--epochs 0 is not valid", "[1, 10000]"]),
        (["train-classifier", "--epochs", "-5"], ["--epochs -5 is not valid"]),
        (["train-latent-models", "--seed", str(-(2**62))], [f"--seed {-(2**62)} is not valid"]),
    ],
)
@pytest.mark.parametrize("with_out", [True, False])
def test_train_command_flags_are_checked_before_training(capsys, tmp_path, embedded_weights, argv, fragments, with_out):
    out = tmp_path / ("weights.safetensors" if argv[0] == "train-classifier" else "models")
    refused(capsys, [*argv, *(["--out", str(out)] if with_out else [])], *fragments)
    assert not out.exists()


@pytest.mark.parametrize("command", ["train-teacher", "train-latent-models"])
def test_train_command_out_that_is_a_file(capsys, tmp_path, embedded_weights, command):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    refused(capsys, [command, "--out", str(file)], f"--out={str(file)!r} is a file")
    assert file.read_text() == "mine"
