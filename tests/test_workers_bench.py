"""``bench workers`` on PostgreSQL, small: every worker's trials land in one study, none is lost or left
running, no candidate is evaluated twice, and the table says so."""

from __future__ import annotations

import pytest

from benchmarks.workers import consistency, run_load, write_workers_table


@pytest.mark.slow
@pytest.mark.integration
def test_load_test_ledger_stays_consistent(postgres_url, tmp_path):
    single = run_load(postgres_url, workers=1, trials_each=4, work_s=0.0, seed=0)
    many = run_load(postgres_url, workers=3, trials_each=4, work_s=0.01, seed=0)
    for row, budget in ((single, 4), (many, 12)):
        assert row["exit_codes"] == [0] * row["workers"]
        assert row["left_running"] == 0 and row["left_waiting"] == 0
        assert row["evaluated_twice"] == 0
        assert budget <= row["results"] <= budget + row["workers"] - 1
    assert sum(many["per_worker_results"]) == many["results"]  # every result names the worker that made it
    assert consistency(postgres_url, many["study"], 12)["results"] == many["results"]
    table = write_workers_table(tmp_path, postgres_url, 0.01, single, many).read_text()
    assert "| 3 | 12 |" in table
