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
