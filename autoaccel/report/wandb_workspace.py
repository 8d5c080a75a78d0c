"""The study as a W&B Report (``wandb-workspaces``' reports API): the recommended plans, the Pareto scatter of
quality against latency with the reference and the standard configurations marked, hypervolume over trials, a
parallel-coordinates panel of the front plans' settings, and the front's image grids.

The report is described first as a plain specification (``report_spec``: JSON, written to the run folder as
``wandb-report.json``), then built from it (``report_object``). Building needs W&B online (the reports API looks
the project up), so an offline run keeps the specification, and ``python -m autoaccel wandb-report RUN``
creates the report from it once the run is synced. Every panel reads what ``autoaccel.report.wandb_report``
logs: the search run's history (one row per trial: ``trial``, ``hypervolume``, the objectives, and
``front_<quality>``/``standard_<quality>``/``reference_<quality>`` for the points marked) and its ``grids``, and
the front plans' runs (job type ``plan``, grouped under the study: their settings as config, figures as summary).
A sweep's report (``sweep_spec``) compares its runs, one runset each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPEC_FILE = "wandb-report.json"
MARKS = ("front", "standard", "reference")  # the series the Pareto scatter marks, beside every trial's point


def report_spec(
    study_name: str,
    project: str,
    objectives: list[str],
    settings: list[str],
    recommendations: list[str],
    entity: str | None = None,
) -> dict[str, Any]:
    """What the report shows and where each panel reads it: ``objectives`` (quality first, then the cost axis),
    ``settings`` (the front plans' setting names: the parallel coordinates), ``recommendations`` (one line each)."""
    quality, cost = objectives[0], objectives[1] if len(objectives) > 1 else "latency_ms"
    return {
        "title": f"autoaccel: {study_name}",
        "entity": entity,
        "project": project,
        "study": study_name,
        "recommendations": list(recommendations),
        "panels": [
            {
                "kind": "scatter",
                "title": f"{quality} against {cost}: every trial, the front, the standard configurations and the "
                "reference",
                "x": cost,
                "y": [quality, *(f"{mark}_{quality}" for mark in MARKS)],
                "runs": "search",
            },
            {"kind": "line", "title": "hypervolume over trials", "x": "trial", "y": ["hypervolume"], "runs": "search"},
            {
                "kind": "parallel_coordinates",
                "title": "the front plans' settings",
                "config": list(settings),
                "summary": [quality, cost],
                "runs": "plans",
            },
            {"kind": "media", "title": "the front's image grids", "keys": ["grids"], "runs": "search"},
        ],
    }


def sweep_spec(project: str, studies: list[str], swept: list[str], entity: str | None = None) -> dict[str, Any]:
    """One report comparing a sweep's runs (``studies``): each run's hypervolume over trials and front size, and
    parallel coordinates of the swept settings (``swept``) against each run's front size and final hypervolume."""
    return {
        "title": f"autoaccel sweep: {len(studies)} runs",
        "entity": entity,
        "project": project,
        "studies": list(studies),
        "recommendations": [f"{study}: its own report (python -m autoaccel wandb-report RUN)" for study in studies],
        "panels": [
            {"kind": "line", "title": "hypervolume over trials", "x": "trial", "y": ["hypervolume"], "runs": "sweep"},
            {
                "kind": "parallel_coordinates",
                "title": "the swept settings against each run's front",
                "config": list(swept),
                "summary": ["front_size", "final_hypervolume"],
                "runs": "sweep",
            },
            {"kind": "media", "title": "each run's front image grids", "keys": ["grids"], "runs": "sweep"},
        ],
    }


def write_spec(run_dir: Path, spec: dict[str, Any]) -> Path:
    path = Path(run_dir) / SPEC_FILE
    path.write_text(json.dumps(spec, indent=2))
    return path


def report_object(spec: dict[str, Any]):
    """The ``wandb_workspaces`` Report of ``spec`` (not saved: ``.save()`` creates it in W&B)."""
    import wandb_workspaces.reports.v2 as wr

    entity, project = spec.get("entity") or "", spec["project"]
    studies = spec.get("studies") or [spec["study"]]
    searches = [wr.Runset(entity=entity, project=project, name=study, query=study) for study in studies]
    runsets = {
        "search": searches[:1],
        "plans": [wr.Runset(entity=entity, project=project, name="front plans", query=f"{studies[0]}/")],
        "sweep": searches,
    }
    blocks: list[Any] = [
        wr.H1(spec["title"]),
        wr.H2("Recommended plans"),
        wr.UnorderedList(items=list(spec["recommendations"]) or ["no recommended plan"]),
    ]
    for panel in spec["panels"]:
        blocks += [wr.H2(panel["title"]), wr.PanelGrid(runsets=runsets[panel["runs"]], panels=[_panel(wr, panel)])]
    return wr.Report(project=project, entity=entity, title=spec["title"], blocks=blocks, width="fluid")


def _panel(wr, panel: dict[str, Any]):
    kind = panel["kind"]
    if kind == "scatter":
        marks = dict.fromkeys(panel["y"], "points")
        return wr.LinePlot(title=panel["title"], x=panel["x"], y=list(panel["y"]), line_marks=marks)
    if kind == "line":
        return wr.LinePlot(title=panel["title"], x=panel["x"], y=list(panel["y"]))
    if kind == "parallel_coordinates":
        columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(name)) for name in panel["config"]]
        columns += [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(name)) for name in panel["summary"]]
        return wr.ParallelCoordinatesPlot(title=panel["title"], columns=columns)
    if kind == "media":
        return wr.MediaBrowser(title=panel["title"], media_keys=list(panel["keys"]), mode="gallery")
    raise ValueError(f"unknown panel kind {kind!r}")


def create_report(run_dir: Path, entity: str | None = None) -> str:
    """Creates the report of a run's ``wandb-report.json`` in W&B (online); returns its URL."""
    path = Path(run_dir) / SPEC_FILE
    spec = json.loads(path.read_text())
    if entity:
        spec["entity"] = entity
    report = report_object(spec)
    report.save()
    return str(report.url)
