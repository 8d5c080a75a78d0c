"""report.wandb=true writes one offline W&B run per search; read its records back and check them."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from autoaccel.cli.search_command import search
from autoaccel.config import compose_config
from tests.wandb_records import history_rows, read_records


@pytest.mark.slow
@pytest.mark.integration
def test_search_writes_an_offline_wandb_run(fast_overrides, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    index = search(compose_config([*fast_overrides, "budget.trials=6", "report.wandb=true"]), log=lambda m: None)
    run_dir = index.parent
    run_files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    records = read_records(run_files[0])
    kinds = [record.WhichOneof("record_type") for record in records]
    assert "config" in kinds and "exit" in kinds
    rows = history_rows(records)
    hypervolumes = [float(row["hypervolume"]) for row in rows if "hypervolume" in row]
    assert len(hypervolumes) == 6
    assert hypervolumes == sorted(hypervolumes)  # the front only ever grows
    logged_keys = {key.split("/")[0] for row in rows for key in row}
    assert {"trials", "pareto_front", "grids"} <= logged_keys
    artifacts = {record.artifact.type for record in records if record.WhichOneof("record_type") == "artifact"}
    assert "recipe" in artifacts
    front = pd.read_csv(run_dir / "pareto.csv")
    tables = list((run_dir / "wandb").glob("offline-run-*/files/media/table/pareto_front_*.table.json"))
    assert len(json.loads(tables[0].read_text())["data"]) == len(front)
    _check_the_report_reads_what_was_logged(run_dir, rows, front)


def _check_the_report_reads_what_was_logged(run_dir, rows, front):
    """The W&B Report built offline from its specification: every panel, and the keys each one reads are in the
    search run's history or the front plans' runs."""
    import wandb_workspaces.reports.v2 as wr

    from autoaccel.report.wandb_workspace import SPEC_FILE, report_object

    report = report_object(json.loads((run_dir / SPEC_FILE).read_text()))
    panels = [panel for block in report.blocks if isinstance(block, wr.PanelGrid) for panel in block.panels]
    scatter, hypervolume, coordinates, grids = panels
    history_keys = {key for row in rows for key in row}
    assert isinstance(scatter, wr.LinePlot) and scatter.x == "latency_ms"
    assert scatter.y == ["fid", "front_fid", "standard_fid", "reference_fid"] and set(scatter.y) <= history_keys
    assert set(scatter.line_marks.values()) == {"points"}
    assert hypervolume.y == ["hypervolume"] and hypervolume.x == "trial"
    assert isinstance(grids, wr.MediaBrowser) and grids.media_keys == ["grids"]
    recommendations = next(block for block in report.blocks if isinstance(block, wr.UnorderedList))
    assert any("trial" in item for item in recommendations.items)

    plan_files = list((run_dir / "wandb-plans" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(plan_files) == len(front)  # one run per front plan: the parallel coordinates' rows
    settings = {column.metric.name for column in coordinates.columns if isinstance(column.metric, wr.Config)}
    trials = pd.read_csv(run_dir / "trials.csv")
    assert settings == {column[len("param.") :] for column in trials.columns if column.startswith("param.")}
    summaries = [column.metric.name for column in coordinates.columns if isinstance(column.metric, wr.SummaryMetric)]
    assert summaries == ["fid", "latency_ms"]
    records = [record for file in plan_files for record in read_records(file)]
    logged = {item.key for record in records if record.HasField("run") for item in record.run.config.update}
    assert logged - {"_wandb"} and logged - {"_wandb"} <= settings
    figures = {item.key for record in records if record.HasField("summary") for item in record.summary.update}
    assert {"fid", "latency_ms"} <= figures
