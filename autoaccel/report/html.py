"""One self-contained HTML page per run. It opens with the answer (the recommended plans and how to apply
them), then what was searched, the front, the plots, and each plan's images beside the reference's."""

from __future__ import annotations

import html
import json
import math
import numbers
import shlex
from pathlib import Path

import pandas as pd

from autoaccel.front.objectives import MEMORY_KIND_LABELS
from autoaccel.measure.kernels import NOT_APPLICABLE
from autoaccel.measure.latency import SINGLE_CALL
from autoaccel.metrics.bootstrap import Interval
from autoaccel.report.recommend import Recommendation, ratio_goal
from autoaccel.techniques.base import label_settings

REFERENCE_GRID = "grids/reference.png"
APPLY_IMAGES = 16  # images the suggested ``apply`` command writes

# The columns a reader needs to choose a plan; every other figure is in pareto.csv and trials.csv
FRONT_COLUMNS = [
    "trial",
    "nfe",
    "fid",
    "fid_interval",
    "fid_std",
    "fid_ratio_interval",
    "precision",
    "recall",
    "psnr_vs_ode",
    "adherence",
    "clip_score",
    "clip_score_interval",
    "pickscore",
    "pickscore_interval",
    "fid_inception",
    "fid_inception_interval",
    "latency_ms",
    "search_latency_ms",
    "algorithmic_latency_ms",
    "encode_ms",
    "denoise_ms",
    "decode_ms",
    "peak_memory_mb",
    "model_memory_mb",
    "model_bytes",
    "scheduler_class",
    "timesteps",
    "simulated",
    "quantized_latency",
    "train_minutes",
    "compile_seconds",
    "recipe",
]
TIMESTEPS_SHOWN = 12  # a schedule longer than this shows its ends and its count
# shown only where some row has them: quantized plans, a text encoder or a VAE, an adherence classifier
OPTIONAL_COLUMNS = {
    "fid_interval",
    "fid_ratio_interval",
    "search_latency_ms",
    "algorithmic_latency_ms",
    "simulated",
    "quantized_latency",
    "encode_ms",
    "decode_ms",
    "adherence",
    "clip_score",
    "clip_score_interval",
    "pickscore",
    "pickscore_interval",
    "fid_inception",
    "fid_inception_interval",
    "train_minutes",
    "compile_seconds",
}
HEADERS = {
    "fid_interval": "FID 95% interval",
    "fid_ratio_interval": "FID / reference's [95%]",
    "clip_score_interval": "CLIP score 95% interval",
    "pickscore_interval": "PickScore 95% interval",
    "fid_inception": "Inception FID",
    "fid_inception_interval": "Inception FID 95% interval",
    "latency_ms": "latency (ms)",
    "search_latency_ms": "latency at search (ms)",
    "algorithmic_latency_ms": "latency without its runtime settings (ms)",
    "encode_ms": "text encoding (ms)",
    "denoise_ms": "denoising (ms)",
    "decode_ms": "VAE decode (ms)",
    "psnr_vs_ode": "PSNR vs ODE (dB)",
    "model_memory_mb": "model memory (MB)",
    "model_bytes": "model bytes",
    "scheduler_class": "scheduler",
    "warm_start": "standard configuration",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 1200px; }
table { border-collapse: collapse; font-size: 0.85em; margin-bottom: 1.5em; max-width: 100%; }
td, th { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; overflow-wrap: break-word; }
td.number { white-space: nowrap; text-align: right; }
td a, td code { white-space: nowrap; }
th { background: #f4f4f4; }
td.timesteps { max-width: 22em; }
td.fid_interval, td.fid_ratio_interval, td.clip_score_interval, td.pickscore_interval,
td.fid_inception_interval { white-space: nowrap; }
.scroll { overflow-x: auto; max-width: 100%; }
.recommended td.command { border-top: none; padding-bottom: 8px; }
.recommended tr.plan td { border-bottom: none; }
.none { color: #a33; }
.tie { color: #7a5a00; }
code { background: #f4f4f4; padding: 1px 4px; font-size: 0.95em; }
img { max-width: 100%; }
.plots img { max-width: 49%; }
.pair { display: flex; flex-wrap: wrap; gap: 1em; margin-bottom: 1.5em; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 0.85em; margin-top: 0.3em; }
img.grid { image-rendering: pixelated; }
"""


COUNT_COLUMNS = {"trial", "nfe", "params", "model_bytes"}
ROUNDING_ZERO = 1e-6  # a reference's FID against its own samples comes out as -1e-8 or so: it is 0


def figure_text(value, count: bool = False) -> str:
    """A measured figure as a reader wants it: 4 significant digits, counts in full, rounding noise as 0."""
    if not _is_number(value):
        return str(value)
    if math.isnan(value):
        return ""
    if count:  # whole, except an NFE with cached calls (shares of a full forward)
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"
    return "0" if abs(value) < ROUNDING_ZERO else f"{value:.4g}"


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _cell(value, column: str = "") -> str:
    if column == "timesteps":
        return html.escape(timesteps_text(value))
    return html.escape(figure_text(value, count=column in COUNT_COLUMNS))


def timesteps_text(value, shown: int = TIMESTEPS_SHOWN) -> str:
    """A plan's timesteps as its row shows them: a long schedule (a default call of 50 or 100 steps) as its first
    and last few with the count between (trials.csv keeps every one)."""
    try:
        steps = json.loads(str(value))
    except ValueError:
        return figure_text(value)
    if not isinstance(steps, list) or len(steps) <= shown:
        return figure_text(value)
    head, tail = steps[: shown - 3], steps[-2:]
    hidden = len(steps) - len(head) - len(tail)
    return f"[{', '.join(map(str, head))}, … {hidden} more …, {', '.join(map(str, tail))}] ({len(steps)} steps)"


def _is_empty(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value) in ("", "[]")


def _shown(frame: pd.DataFrame, column: str) -> bool:
    """An optional column only where some row has something to say in it."""
    if column not in OPTIONAL_COLUMNS:
        return True
    return not frame[column].map(lambda value: _is_empty(value) or str(value) == NOT_APPLICABLE).all()


def peak_memory_header(*frames: pd.DataFrame) -> str:
    """The peak-memory column's header, saying what was measured: on a CPU the process's resident peak."""
    kinds = {
        str(kind) for frame in frames if "memory_kind" in frame for kind in frame["memory_kind"] if not _is_empty(kind)
    }
    if len(kinds) == 1:
        kind = kinds.pop()
        return f"peak memory ({MEMORY_KIND_LABELS.get(kind, kind)}, MB)"
    return "peak memory (MB; see memory_kind in trials.csv)"


def _header(column: str, memory_header: str) -> str:
    if column == "peak_memory_mb":
        return memory_header
    return HEADERS.get(column, column.removeprefix("param."))


def _table(frame: pd.DataFrame, columns: list[str], memory_header: str = "peak memory (MB)") -> str:
    """An HTML table of ``columns`` (those the frame has; an optional column empty in every row is left out)."""
    columns = [column for column in columns if column in frame.columns and _shown(frame, column)]
    head = "".join(f"<th>{html.escape(_header(column, memory_header))}</th>" for column in columns)
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for column in columns:
            value = row[column]
            if column == "recipe" and not _is_empty(value):
                cells.append(f'<td><a href="{html.escape(str(value))}">{html.escape(Path(str(value)).name)}</a></td>')
            elif column == "trial" and not _is_empty(value):
                cells.append(f'<td><a href="#trial-{int(value)}">{int(value)}</a></td>')
            else:
                css = f"{column} number" if _is_number(value) else column
                cells.append(f'<td class="{html.escape(css)}">{_cell(value, column)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(rows)}</table></div>'


def apply_command(run_dir: Path, recipe: str) -> str:
    """The command that writes images with a recipe's plan, as a user would type it."""
    return f"python -m autoaccel apply {shlex.quote(str(run_dir / recipe))} --out samples --n {APPLY_IMAGES}"


def _speedup(value: float | None, versus: str) -> str:
    return f"{value:.2f}x {versus}" if value is not None else ""


def _speedup_cell(recommendation: Recommendation) -> str:
    """The speed-up over the reference: bold, with its rounds' interval and its algorithmic × runtime split; a
    tie (the rounds cannot tell its latency from the reference's) is marked as one, not bold."""
    speedup = recommendation.speedup
    if speedup is None:
        plain = _speedup(recommendation.speedup_vs_reference, "")
        return f"<b>{plain}</b>" if plain else ""
    value = f"{speedup.value:.2f}x"
    text = html.escape(speedup.text())
    cell = f'<span class="tie">{text}</span>' if speedup.tie else f"<b>{value}</b>{text[len(value) :]}"
    split = speedup.split_text()
    return cell + (f"<br>{html.escape(split)}" if split else "")


def _standard_text(recommendation: Recommendation) -> str:
    """The speed-up over the standard configuration, naming which one it is."""
    standard = recommendation.standard
    if standard is None:
        return '<span class="none">no standard configuration meets it</span>'
    name = html.escape(str(standard.get("warm_start") or f"trial {int(standard['trial'])}"))
    plan = recommendation.plan
    if plan is not None and int(standard["trial"]) == int(plan["trial"]):
        return f"the plan is the standard configuration {name}"
    figures = f"{name}: fid {float(standard['fid']):.4g}, {float(standard['latency_ms']):.4g} ms"
    difference = recommendation.versus_standard
    if difference is not None:
        tie = ' <span class="tie">(a tie)</span>' if difference.covers(0.0) else ""
        figures += f"; FID difference {html.escape(difference.text(signed=True))}{tie}"
    if recommendation.speedup_vs_standard is None:
        return figures
    return f"<b>{recommendation.speedup_vs_standard:.2f}x</b> ({figures})"


def _recommendation_rows(recommendation: Recommendation, run_dir: Path) -> str:
    goal = html.escape(recommendation.goal)
    plan = recommendation.plan
    if plan is None:
        note = html.escape(recommendation.note or "no front plan meets it")
        return f'<tr><td>{goal}</td><td colspan="5" class="none">{note}</td></tr>'
    trial = int(plan["trial"])
    if recommendation.fid_interval is not None:
        fid = html.escape(recommendation.fid_interval.text())
    else:
        fid = f"{float(plan['fid']):.4g}" + (
            f" ± {float(plan['fid_std']):.2g}" if not _is_empty(plan.get("fid_std", math.nan)) else ""
        )
    if recommendation.ratio_interval is not None:
        fid += f"<br>{html.escape(recommendation.ratio_interval.text())} of the reference's FID"
    ties = "".join(f'<br><span class="tie">{html.escape(tie)}</span>' for tie in recommendation.ties)
    recipe = str(plan.get("recipe", "") or "")
    recipe_link = f'<a href="{html.escape(recipe)}">{html.escape(Path(recipe).name)}</a>' if recipe else ""
    vs_reference = _speedup_cell(recommendation)
    cells = [
        goal + ties,
        f'<a href="#trial-{trial}">trial {trial}</a>',
        f"fid {fid}<br>nfe {figure_text(float(plan['nfe']), count=True)}, {float(plan['latency_ms']):.4g} ms",
        vs_reference,
        _standard_text(recommendation),
        recipe_link,
    ]
    command = (
        f'<tr><td colspan="6" class="command"><code>{html.escape(apply_command(run_dir, recipe))}</code></td></tr>'
        if recipe
        else ""
    )
    return '<tr class="plan">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>" + command


def _merged(recommendations: list[Recommendation]) -> list[Recommendation]:
    """FID ratios that no plan can meet for one reason (no usable reference FID), as one row: said once."""
    unmet = [item for item in recommendations if item.ratio is not None and item.plan is None and item.standard is None]
    if len(unmet) < 2 or len({item.note for item in unmet}) > 1 or "FID <=" in unmet[0].goal:
        return recommendations  # bounds were computed: each row says how far its own bound is
    merged = Recommendation(ratio_goal([item.ratio for item in unmet]), None, None, None, None, unmet[0].note)
    return [merged, *(item for item in recommendations if all(item is not other for other in unmet))]


def _recommended_section(
    recommendations: list[Recommendation], reference: dict | None, run_dir: Path, notes: list[str], cost: str = ""
) -> str:
    if not recommendations:
        return f'<p class="cost">{html.escape(cost)}</p>' if cost else ""
    reference = reference or {}
    reference_text = (
        f"reference ({reference.get('timesteps', '')} steps): fid {figure_text(_float(reference.get('fid')))}, "
        f"nfe {figure_text(_float(reference.get('nfe')), count=True)}, "
        f"{figure_text(_float(reference.get('latency_ms')))} ms"
        if reference
        else "the reference was not measured"
    )
    head = "<tr><th>goal</th><th>plan</th><th>figures</th><th>speed-up vs reference</th>"
    head += "<th>speed-up vs best standard configuration within the same goal</th><th>recipe</th></tr>"
    rows = "".join(_recommendation_rows(recommendation, run_dir) for recommendation in _merged(recommendations))
    listed = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    cost_line = f'<p class="cost">{html.escape(cost)}</p>' if cost else ""
    return f"""<h2>Recommended plans</h2>
{cost_line}
<p>Measured on this run's seeds, {html.escape(reference_text)}. Speed-ups are latency ratios at the deployment batch
size. FID figures carry their 95% paired-bootstrap interval where the run kept the images' features; a plan whose
interval covers a goal's bound, or whose FID cannot be told from another's, is a tie, and a tie goes to the faster
plan. Apply a plan with the command under it, or in Python with <code>autoaccel.apply_recipe</code>.</p>
<div class="scroll"><table class="recommended">{head}{rows}</table></div>
{f'<ul class="noise">{listed}</ul>' if listed else ""}"""


INTERVAL_FIGURES = ("clip_score", "pickscore", "fid_inception")  # measured with their intervals (``<figure>_lo``)


def _with_interval_text(frame: pd.DataFrame) -> pd.DataFrame:
    """The interval columns as the tables show them (``[0.31, 0.58]``; the FID ratio as ``1.19 [0.4, ∞]``); the
    unpaired ``fid_std`` only where no row has a paired interval."""
    frame = frame.copy()
    for figure in INTERVAL_FIGURES:
        if f"{figure}_lo" in frame and f"{figure}_hi" in frame:
            frame[f"{figure}_interval"] = [
                "" if _is_empty(low) or _is_empty(high) else Interval(math.nan, float(low), float(high)).bounds()
                for low, high in zip(frame[f"{figure}_lo"], frame[f"{figure}_hi"])
            ]
    if "fid_lo" not in frame or frame["fid_lo"].isna().all():
        return frame
    frame = frame.drop(columns=["fid_std"], errors="ignore")

    frame["fid_interval"] = [
        "" if _is_empty(low) else Interval(math.nan, low, high).bounds()
        for low, high in zip(frame["fid_lo"], frame["fid_hi"])
    ]
    if "fid_ratio" in frame:
        frame["fid_ratio_interval"] = [
            "" if _is_empty(value) else Interval(value, low, high).text()
            for value, low, high in zip(frame["fid_ratio"], frame["fid_ratio_lo"], frame["fid_ratio_hi"])
        ]
    return frame


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _grid_pairs(grids: dict[str, str]) -> str:
    """Each plan's grid beside the reference's (the same seeds, so the same digit in the same place)."""
    reference = [(label, src) for label, src in grids.items() if src == REFERENCE_GRID]
    plans = [(label, src) for label, src in grids.items() if src != REFERENCE_GRID]

    def figure(label: str, src: str) -> str:
        return (
            f'<figure><img class="grid" src="{html.escape(src)}" alt="{html.escape(label)}">'
            f"<figcaption>{html.escape(label)}</figcaption></figure>"
        )

    if not plans:
        return "".join(f'<div class="pair">{figure(label, src)}</div>' for label, src in reference)
    pairs = []
    for label, src in plans:
        anchor = Path(src).stem.removeprefix("trial-").lstrip("0") or "0"
        pairs.append(
            f'<div class="pair" id="trial-{anchor}">{figure(label, src)}'
            + "".join(figure(reference_label, reference_src) for reference_label, reference_src in reference)
            + "</div>"
        )
    return "".join(pairs)


def _reference_text(reference: dict | None) -> str:
    """What the reference row is and how its latency was taken (a long call is timed once, not as a median)."""
    if not reference:
        return "<p>The reference was not measured.</p>"
    what = html.escape(
        str(reference.get("reference") or f"the model's own sampler, {reference.get('timesteps')} steps")
    )
    method = str(reference.get("latency_method") or "median")
    timing = (
        "Its latency is a single timed call (it is hundreds of steps long), not a median of repeats."
        if method == SINGLE_CALL
        else "Its latency is the median of repeated calls, as for every plan."
    )
    return f"<p>Every plan is compared with the reference: {what}, on the same seeds. {timing}</p>"


def quality_section(figures: dict | None) -> str:
    """One line per figure's source: where it came from and whether it is meaningful (and the rule), then the
    figures this run could not measure and what the search did instead."""
    if not figures:
        return ""
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in figures.get("sources", []))
    missing = [*figures.get("fallback", [])]
    fallback = "".join(f'<li class="none">{html.escape(line)}</li>' for line in missing)
    model = figures.get("model")
    warning = f"<p><strong>Plumbing only:</strong> {html.escape(str(model))}.</p>" if model else ""
    return f"""<h2>Quality figures</h2>{warning}
<p>What each figure was measured with. The rule: {html.escape(str(figures.get("rule", "")))}.</p>
<ul class="figures">{lines}{fallback}</ul>"""


def write_html(
    path: Path,
    title: str,
    summary: dict[str, str],
    front: pd.DataFrame,
    standards: pd.DataFrame,
    reference: dict | None,
    grids: dict[str, str],
    failures: pd.DataFrame,
    recommendations: list[Recommendation] | None = None,
    notes: list[str] | None = None,
    quality_figures: dict | None = None,
    cost: str = "",
) -> Path:
    """``notes``: what the noise says about the whole front (plans it cannot tell apart, the reference's gap);
    ``quality_figures``: what each figure was measured with (``autoaccel.search.quality_figures``); ``cost``: what
    the search spent, beside the speed-up it found (``autoaccel.report.search_cost``)."""
    front, standards = _with_interval_text(front), _with_interval_text(standards)
    summary_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary.items())
    reference_frame = _with_interval_text(pd.DataFrame([reference])) if reference else pd.DataFrame()
    memory_header = peak_memory_header(front, standards)
    reference_table = _table(reference_frame, FRONT_COLUMNS[1:-1], memory_header) if reference else ""
    failure_html = (
        _table(failures, ["trial", *(f"param.{setting}" for setting in label_settings()), "failure"])
        if not failures.empty
        else "<p>No trial failed.</p>"
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
{_recommended_section(recommendations or [], reference, path.parent, notes or [], cost)}
<h2>Run</h2>
<table>{summary_rows}</table>
{quality_section(quality_figures)}
<h2>Pareto front</h2>
<p>Every figure was measured: quality on the same seeds for every candidate, latency as the median of repeated
calls at the deployment batch size. FIDs are comparable only at the same sample count and seeds. Model memory is
the denoiser's weights plus the peak activations of one call at that batch size; peak memory is what the whole run
held (on a CPU, the process's resident peak). A row whose <em>simulated</em> column names quantization was scored
with fake quantization: its quality and model bytes are the plan's, and its latency is that of the kernels named
in trials.csv (float kernels where no real quantized backend ran: its quantized latency is <em>not measured</em>).
All columns: <a href="pareto.csv">pareto.csv</a> (the front), <a href="trials.csv">trials.csv</a> (every trial).</p>
{_table(front, FRONT_COLUMNS, memory_header)}
<div class="plots"><img src="pareto.png" alt="Pareto plot">
<img src="hypervolume.png" alt="hypervolume over trials"></div>
<h2>Reference</h2>
{_reference_text(reference)}
{reference_table}
<h2>Standard configurations</h2>
{_table(standards, ["warm_start", *FRONT_COLUMNS[:-1]], memory_header)}
<h2>Images (the same seeds: each front plan beside the reference)</h2>
{_grid_pairs(grids)}
<h2>Failed trials</h2>
{failure_html}
</body></html>
"""
    path.write_text(page)
    return path
