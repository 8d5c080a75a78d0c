"""optuna's own tools on a run's ledger: the study names its objectives (``set_metric_names``), so optuna-dashboard
and ``trials_dataframe`` show ``fid`` and ``latency_ms``, and every trial's attributes (its plan, figures, the
reason a trial failed) are readable there."""

from __future__ import annotations

import io
import json
import wsgiref.util

import optuna
import pytest

from autoaccel.config import compose_config


def _get(app, path: str):
    environ: dict = {}
    wsgiref.util.setup_testing_defaults(environ)
    environ.update(PATH_INFO=path, REQUEST_METHOD="GET", QUERY_STRING="", **{"wsgi.input": io.BytesIO()})
    status: list[str] = []
    body = b"".join(app(environ, lambda code, headers, *rest: status.append(code)))
    assert status[0].startswith("200"), (path, status, body[:500])
    return json.loads(body)


@pytest.mark.slow
@pytest.mark.integration
def test_optuna_dashboard_shows_the_objectives_by_name_and_the_trials_attributes(fast_overrides):
    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    from autoaccel.cli.search_command import search

    index = search(compose_config([*fast_overrides, "budget.trials=3", "study_name=dashboard"]), log=lambda m: None)
    storage = f"sqlite:///{index.parent / 'ledger.db'}"
    study = optuna.load_study(study_name="dashboard", storage=storage)
    assert study.metric_names == ["fid", "latency_ms"]
    assert {"values_fid", "values_latency_ms"} <= set(study.trials_dataframe().columns)

    app = optuna_dashboard.wsgi(storage)
    (summary,) = [item for item in _get(app, "/api/studies")["study_summaries"] if item["study_name"] == "dashboard"]
    detail = _get(app, f"/api/studies/{summary['study_id']}")
    assert detail["objective_names"] == ["fid", "latency_ms"]
    attributes = [{attr["key"] for attr in trial["user_attrs"]} for trial in detail["trials"]]
    assert attributes and all("candidate" in keys for keys in attributes)
