"""``python -m autoaccel search`` with Hydra's own command line: ``--cfg job`` prints the composed configuration,
``--multirun`` over two settings runs two studies and writes a sweep summary, and a command line without Hydra's
options takes the path it always took."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from autoaccel.cli.hydra_app import sweep_study_name, swept_keys, wants_hydra


def test_only_hydras_own_options_take_the_hydra_path():
    assert not wants_hydra(["budget.trials=4", "space=sampler", "study_name=hydra-study"])
    for args in (
        ["-m", "space=a,b"],
        ["--multirun"],
        ["--cfg", "job"],
        ["--info"],
        ["hydra/launcher=joblib"],
        ["hydra.sweep.dir=/tmp/x"],
        ["--shell-completion", "install=bash"],
        ["-c=job"],
    ):
        assert wants_hydra(args), args


def test_a_sweep_run_is_its_own_study_named_by_its_swept_values():
    args = ["space=sampler,cached", "budget.trials=range(2,4)", "target.path=/a", "objectives=[fid,latency_ms]"]
    assert swept_keys(["-m", *args]) == ["space", "budget.trials"]
    assert sweep_study_name("digits-sampler", "budget.trials=4,seed=1") == "digits-sampler-budget.trials=4-seed=1"
    assert sweep_study_name("digits-sampler", "") == "digits-sampler"
    assert sweep_study_name("d", "target.path=/a b/c") == "d-target.path=-a-b-c"


def _autoaccel(*args: str, cwd) -> subprocess.CompletedProcess:
    environment = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    command = [sys.executable, "-m", "autoaccel", "search", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, env=environment)


@pytest.mark.slow
@pytest.mark.integration
def test_cfg_job_prints_the_composed_configuration(tmp_path):
    done = _autoaccel("--cfg", "job", "space=timesteps", "budget.trials=7", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "space: timesteps" in done.stdout and "trials: 7" in done.stdout and "name: digits" in done.stdout
    assert not list(tmp_path.iterdir())  # printing runs nothing and writes nothing


@pytest.mark.slow
@pytest.mark.integration
def test_multirun_over_two_spaces_writes_two_studies_and_a_sweep_summary(fast_overrides, tmp_path):
    reports = tmp_path / "reports"
    overrides = [item for item in fast_overrides if not item.startswith("report.dir=")]
    done = _autoaccel(
        "--multirun",
        "space=timesteps,solver",
        "budget.trials=2",
        f"report.dir={reports}",
        "report.wandb=true",
        *overrides,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(path.name for path in reports.iterdir() if (path / "ledger.db").exists())
    assert runs == ["pipeline-solver", "pipeline-timesteps"]  # the swept key's values name the studies
    (sweep,) = (reports / "sweeps").iterdir()
    summary = (sweep / "sweep-summary.md").read_text()
    assert summary.startswith("# Sweep summary (2 runs)")
    rows = [line for line in summary.splitlines() if line.startswith("| 0 ") or line.startswith("| 1 ")]
    assert rows[0].startswith("| 0 | `space=timesteps` | pipeline-timesteps |") and "`space=solver`" in rows[1]
    for number in (0, 1):
        record = json.loads((sweep / str(number) / "summary.json").read_text())
        assert record["front"] >= 1 and record["study"] in runs
        assert (reports / record["study"] / "index.html").exists()
    assert "sweep summary:" in done.stdout

    import wandb_workspaces.reports.v2 as wr

    from autoaccel.report.wandb_workspace import SPEC_FILE, report_object

    spec = json.loads((sweep / SPEC_FILE).read_text())  # offline: the sweep's report, to create once online
    assert sorted(spec["studies"]) == runs
    report = report_object(spec)
    grids = [block for block in report.blocks if isinstance(block, wr.PanelGrid)]
    assert all(sorted(runset.query for runset in grid.runsets) == runs for grid in grids)
    (coordinates,) = [panel for grid in grids for panel in grid.panels if isinstance(panel, wr.ParallelCoordinatesPlot)]
    assert [column.metric.name for column in coordinates.columns] == ["space", "front_size", "final_hypervolume"]
    assert "wandb-report" in done.stdout


@pytest.mark.slow
@pytest.mark.integration
def test_a_sweep_run_on_bad_input_is_one_line_and_the_sweep_goes_on(tmp_path):
    done = _autoaccel("-m", "space=nope,gone", f"report.dir={tmp_path / 'reports'}", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.count("autoaccel search: error: space='nope' is not a bundled space") == 1
    assert "space='gone'" in done.stderr  # the second run was still tried
    (sweep,) = (tmp_path / "reports" / "sweeps").iterdir()
    summary = (sweep / "sweep-summary.md").read_text()
    assert "| 0 | `space=nope` | digits-nope |  | failed: space='nope'" in summary
    assert "| 1 | `space=gone` | digits-gone |" in summary


def _readme_search_commands() -> list[list[str]]:
    """Every ``python -m autoaccel search ...`` command of the README's code blocks, as its arguments."""
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = text.split("```bash")[1:]
    commands = []
    for block in blocks:
        joined = block.split("```", 1)[0].replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" && ")[-1].split(" # ")[0].strip()
            if line.startswith("python -m autoaccel search"):
                commands.append(shlex.split(line)[4:])
    return commands


@pytest.mark.slow
@pytest.mark.integration
def test_every_search_command_of_the_readme_composes(tmp_path):
    """Each README search command, its sweeps taken at their first value, composes (``--cfg job``): every key,
    launcher and Hydra setting it names exists."""
    commands = _readme_search_commands()
    assert len(commands) >= 5 and [] in commands  # the first command: the embedded default
    for args in commands:
        single = [arg for arg in args if arg not in ("-m", "--multirun")]
        single = [arg.replace("range(16)", "0").replace("range(3)", "0") for arg in single]
        done = _autoaccel("--cfg", "job", *single, cwd=tmp_path)
        assert done.returncode == 0, (args, done.stderr[-2000:])
        for arg in single:
            key, _, value = arg.partition("=")
            if key.startswith(("space", "study_name", "worker")):
                assert f"{key.split('.')[-1]}: {value}" in done.stdout, (arg, done.stdout[-2000:])


@pytest.mark.slow
@pytest.mark.integration
def test_shell_completion_completes_the_search_overrides(tmp_path):
    """``eval "$(autoaccel search --shell-completion install=bash)"`` registers completion for the console script;
    the shell then asks ``autoaccel -sc query=bash`` with the line typed so far."""
    install = _autoaccel("--shell-completion", "install=bash", cwd=tmp_path)
    assert install.returncode == 0 and install.stdout.rstrip().endswith("hydra_bash_completion autoaccel")
    environment = {**os.environ, "COMP_LINE": "autoaccel search budget.trials=4 target=", "COMP_POINT": "41"}
    command = [sys.executable, "-m", "autoaccel", "-sc", "query=bash"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"target=digits", "target=digits_t2i", "target=pipeline"} <= set(done.stdout.split())
