"""A sweep's summary: one line per run (its study, front size, and the fastest plan within 1.25x of its reference's
FID), written to ``<hydra.sweep.dir>/sweep-summary.md`` when the sweep ends.

Each run writes its own line to its Hydra job folder (``autoaccel.cli.hydra_app``); the callback reads them back
from the sweep folder, so runs a launcher started on other machines are counted as long as the folder is shared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SUMMARY_NAME = "sweep-summary.md"
SUMMARY_FILE = "summary.json"  # one run's line of the sweep summary, in its Hydra job folder
FID_RATIO = 1.25  # the plan each run's line names: the fastest within this multiple of its reference's FID


def run_summary(run_dir: Path) -> dict[str, Any]:
    """A finished run's line: its study, front size and the plan ``plan --max-fid-ratio 1.25`` would pick (or why
    none)."""
    from autoaccel.cli.plan_command import explain_plan, read_run
    from autoaccel.errors import AutoaccelError
    from autoaccel.front.limits import LIMIT_OPTIONS

    summary: dict[str, Any] = {"run_dir": str(run_dir)}
    try:
        run = read_run(run_dir)
        summary.update(study=run.study_name, front=len(run.front))
        values = {name: (FID_RATIO if name == "max_fid_ratio" else None) for name in LIMIT_OPTIONS}
        message, found = explain_plan(run_dir, values)
    except AutoaccelError as error:
        return summary | {"fastest": f"none: {error}"}
    lines = message.splitlines()
    chosen = lines[1].strip() if found and len(lines) > 1 else f"none: {lines[0]}"
    return summary | {"fastest": chosen}


def _records(sweep_dir: Path) -> list[tuple[int | str, dict]]:
    """(job number, its summary record) of every run of the sweep that wrote one."""
    records = []
    for path in Path(sweep_dir).glob(f"*/{SUMMARY_FILE}"):
        number = path.parent.name
        records.append((int(number) if number.isdigit() else number, json.loads(path.read_text())))
    return records


def summary_lines(records: list[tuple[int | str, dict]]) -> list[str]:
    """The sweep's summary as Markdown, from its runs' records (``_records``), in job number order."""
    lines = [
        f"# Sweep summary ({len(records)} runs)",
        "",
        f"| run | overrides | study | front | fastest plan within {FID_RATIO}x of the reference's FID |",
        "|---|---|---|---|---|",
    ]
    for number, record in sorted(records, key=lambda item: str(item[0]).zfill(8)):
        overrides = " ".join(record.get("overrides", []))
        cells = [str(number), f"`{overrides}`", str(record.get("study", "")), str(record.get("front", ""))]
        lines.append("| " + " | ".join([*cells, str(record.get("fastest", "")).replace("|", "/")]) + " |")
    return lines


class SweepSummary(Callback):
    """Hydra callback (``hydra.callbacks.sweep_summary`` in conf/config.yaml): writes and prints the summary when a
    sweep ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        records = _records(sweep_dir)
        if any("worker" in record for _, record in records):  # workers of one shared study
            from autoaccel.cli.workers_command import shared_report

            print(f"report: {shared_report(_job_config(config))}", flush=True)
            return
        text = "\n".join(summary_lines(records)) + "\n"
        (sweep_dir / SUMMARY_NAME).write_text(text)
        print(text + f"sweep summary: {sweep_dir / SUMMARY_NAME}", flush=True)
        job = _job_config(config)
        if job.report.wandb:  # one W&B report comparing the sweep's runs
            print(f"W&B sweep report: {_sweep_report(sweep_dir, job, records)}", flush=True)


def _sweep_report(sweep_dir: Path, job: DictConfig, numbered: list[tuple[int | str, dict]]) -> str:
    """Writes the sweep's W&B report specification beside its summary; creates the report when W&B is online.
    Returns the URL, or the file to create it from once online."""
    from autoaccel.report.wandb_report import wandb_mode
    from autoaccel.report.wandb_workspace import create_report, sweep_spec, write_spec

    records = [record for _, record in sorted(numbered, key=lambda item: str(item[0]).zfill(8))]
    studies = [str(record["study"]) for record in records if record.get("study")]
    swept = sorted({item.split("=", 1)[0].lstrip("+~") for record in records for item in record.get("overrides", [])})
    path = write_spec(sweep_dir, sweep_spec(str(job.report.wandb_project), studies, swept))
    if wandb_mode() == "online":
        return create_report(sweep_dir)
    return f"{path} (offline: after wandb sync, python -m autoaccel wandb-report {sweep_dir})"


def _job_config(config: DictConfig) -> DictConfig:
    """The sweep's configuration without Hydra's own node, resolved: what every worker shared."""
    from omegaconf import OmegaConf, open_dict

    job = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
    with open_dict(job):
        job.pop("hydra", None)
    OmegaConf.resolve(job)
    return job
