"""One self-contained HTML page per run: what was searched, the front table, the plot and image grids."""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from autoaccel.objectives import METRIC_COLUMNS

FRONT_COLUMNS = [
    "trial",
    *METRIC_COLUMNS,
    "param.solver.name",
    "param.timesteps.family",
    "timesteps",
    "simulated",
    "kernels",
    "quantized_latency",
    "recipe",
]


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def _table(frame: pd.DataFrame, columns: list[str]) -> str:
    columns = [column for column in columns if column in frame.columns]
    head = "".join(f"<th>{html.escape(column.removeprefix('param.'))}</th>" for column in columns)
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for column in columns:
            value = row[column]
            if column == "recipe" and value:
                cells.append(f'<td><a href="{html.escape(str(value))}">{html.escape(Path(str(value)).name)}</a></td>')
            else:
                cells.append(f"<td>{_cell(value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def write_html(
    path: Path,
    title: str,
    summary: dict[str, str],
    front: pd.DataFrame,
    standards: pd.DataFrame,
    teacher: dict | None,
    grids: dict[str, str],
    failures: pd.DataFrame,
) -> Path:
    summary_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary.items())
    teacher_table = ""
    if teacher:
        teacher_table = _table(pd.DataFrame([teacher]), [c for c in FRONT_COLUMNS if c in teacher])
    grid_html = "".join(
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(label)}"><figcaption>{html.escape(label)}'
        "</figcaption></figure>"
        for label, src in grids.items()
    )
    failure_html = (
        _table(failures, ["trial", "param.solver.name", "param.timesteps.family", "failure"])
        if not failures.empty
        else "<p>No trial failed.</p>"
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ image-rendering: pixelated; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{summary_rows}</table>
<h2>Pareto front</h2>
<p>Every figure was measured: quality on the same seeds for every candidate, latency as the median of repeated
calls at the deployment batch size. FIDs are comparable only at the same sample count and seeds. A row whose
<em>simulated</em> column names quantization was scored with fake quantization: its quality and model_bytes are
the plan's, and its latency is that of the kernels named in <em>kernels</em> (float kernels where no real
quantized backend ran, so its quantized latency is <em>not measured</em>).</p>
{_table(front, FRONT_COLUMNS)}
<img src="pareto.png" alt="Pareto plot"> <img src="hypervolume.png" alt="hypervolume over trials">
<h2>Teacher</h2>
{teacher_table}
<h2>Standard configurations</h2>
{_table(standards, ["warm_start"] + FRONT_COLUMNS[:-1])}
<h2>Images (same seeds; front points beside the teacher)</h2>
{grid_html}
<h2>Failed trials</h2>
{failure_html}
</body></html>
"""
    path.write_text(page)
    return path
