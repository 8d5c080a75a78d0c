"""The Pareto plot: every complete trial, the front, the standard configurations, the reference and the FID floor."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from autoaccel.report.html import figure_text


def new_figure(size: tuple[float, float]):
    """A figure on the file-only Agg backend (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def save_figure(figure, path: Path, dpi: int = 110) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def pareto_plot(
    trials: pd.DataFrame,
    front: pd.DataFrame,
    reference: dict | None,
    path: Path,
    quality: str = "fid",
    cost: str = "latency_ms",
    title: str = "",
    floor: float | None = None,
) -> Path:
    """``floor``: what held-out real images score against the rest (a perfect sampler's FID at this sample count),
    drawn as a line when quality is FID: plans below it cannot be told apart from the real data."""
    complete = trials[trials["state"] == "COMPLETE"] if not trials.empty else trials
    figure, axes = new_figure((7.5, 5))
    if not complete.empty:
        searched = complete[complete["warm_start"] == ""]
        standard = complete[complete["warm_start"] != ""]
        axes.scatter(searched[cost], searched[quality], s=14, c="0.65", label="searched trials")
        axes.scatter(
            standard[cost],
            standard[quality],
            s=40,
            marker="s",
            facecolors="none",
            edgecolors="tab:blue",
            label="standard configurations",
        )
        for _, row in standard.iterrows():
            axes.annotate(
                row["warm_start"],
                (row[cost], row[quality]),
                fontsize=6,
                color="tab:blue",
                xytext=(3, 3),
                textcoords="offset points",
            )
    if not front.empty:
        axes.step(front[cost], front[quality], where="post", color="tab:red", linewidth=1.2)
        axes.scatter(front[cost], front[quality], s=36, c="tab:red", label="Pareto front", zorder=3)
        if "nfe" in front:
            for _, row in front.iterrows():
                axes.annotate(
                    figure_text(row["nfe"], count=True),
                    (row[cost], row[quality]),
                    fontsize=7,
                    color="tab:red",
                    xytext=(-10, -10),
                    textcoords="offset points",
                )
    if reference and cost in reference and quality in reference:
        axes.scatter(
            [reference[cost]],
            [reference[quality]],
            s=120,
            marker="*",
            c="gold",
            edgecolors="k",
            label=f"reference ({figure_text(reference.get('nfe', 0), count=True)} NFE)",
            zorder=4,
        )
    if floor is not None and quality == "fid" and floor > 0:
        axes.axhline(floor, color="tab:green", linestyle="--", linewidth=1, label=f"FID floor ({floor:.3g})")
    axes.set_xscale("log")
    if not complete.empty and (complete[quality] > 0).all():
        axes.set_yscale("log")
    axes.set_xlabel(f"{cost} (one call at the deployment batch size; log scale)")
    axes.set_ylabel(quality)
    axes.set_title(title or "quality vs cost (red numbers: NFE per image)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return save_figure(figure, path, dpi=120)


def hypervolume_plot(hypervolumes: list[float], path: Path, objectives: list[str]) -> Path:
    """Hypervolume of the feasible front after each trial: how fast the search improved."""
    figure, axes = new_figure((6, 3.5))
    axes.plot(range(1, len(hypervolumes) + 1), hypervolumes, color="tab:red")
    axes.set_xlabel("trials")
    axes.set_ylabel("hypervolume (scaled objectives)")
    axes.set_title(f"hypervolume over trials ({', '.join(objectives)})")
    axes.grid(alpha=0.3)
    return save_figure(figure, path)
