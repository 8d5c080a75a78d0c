"""The optional quality figures of a run (CLIP score, PickScore, Inception FID): each objective or limit naming one
needs its model configured; one whose model needs network this run lacks falls back to the figures that need
nothing; and the study records what every figure came from, for the report.

The fallback is written into the run's configuration before the study records it (``objectives``, the limit set to
null), so a resumed run, the report and ``plan`` all read the objectives the search optimised, and a later run with
network that would optimise the figure again is refused by the study's fingerprint rather than mixed into it.
"""

from __future__ import annotations

from typing import Any

import optuna
from omegaconf import DictConfig

from autoaccel.errors import ConfigError
from autoaccel.front.limits import LIMIT_OPTIONS
from autoaccel.front.objectives import fall_back
from autoaccel.measure.reference import OPTIONAL_FIGURES, QualityOptions, default_figure_sources
from autoaccel.metrics.model_source import RULE
from autoaccel.metrics.preference import PICKSCORE_MODEL, PREFERENCE
from autoaccel.targets.base import Target
from autoaccel.targets.conditions import PROMPT

QUALITY_FIGURES = "quality_figures"  # study attribute: what every figure came from, and the fallback
EXAMPLES = {
    "clip_score": "openai/clip-vit-large-patch14",
    "fid_inception": "auto",
    PREFERENCE: PICKSCORE_MODEL,
}
PROMPT_FIGURES = ("clip_score", PREFERENCE)


def named_figures(config: DictConfig, objectives: list[str]) -> dict[str, str]:
    """figure -> how the configuration asks for it (``objective`` or ``budget.<limit>``), for the optional ones."""
    asked = {name: f"objective {name}" for name in objectives if name in OPTIONAL_FIGURES}
    for name, option in LIMIT_OPTIONS.items():
        if option.metric in OPTIONAL_FIGURES and config.budget.get(name) is not None:
            asked.setdefault(option.metric, f"budget.{name}={config.budget[name]:g} (a limit on {option.metric})")
    return asked


def check_figures_named(config: DictConfig, objectives: list[str], target: Target) -> None:
    """An objective or limit on an optional figure needs its model (``quality.*``) and, for prompt figures, a model
    that takes prompts: else every trial would fail without the figure."""
    for figure, asked in named_figures(config, objectives).items():
        option = OPTIONAL_FIGURES[figure]
        if not config.quality.get(option.split(".", 1)[1]):
            raise ConfigError(
                f"{asked} needs {option} (e.g. {option}={EXAMPLES[figure]}, or a local "
                f"{'file' if figure == 'fid_inception' else 'folder'}); it is null"
            )
        if figure in PROMPT_FIGURES and target.conditions.kind != PROMPT:
            raise ConfigError(
                f"{asked}: {figure} scores images for their prompts; {target.name} takes no prompts: give a "
                "text-to-image model (e.g. target=digits_t2i)"
            )


def apply_fallback(config: DictConfig, objectives: list[str], options: QualityOptions, target: Target) -> list[str]:
    """Objectives and limits on figures this run cannot measure (their model needs network) replaced: an objective
    by the target's default quality, a limit left out; written into ``config``. Returns one line per figure not
    measured and per replacement."""
    lines = list(options.unavailable.values())
    if not options.unavailable:
        return lines
    kept, replaced = fall_back(objectives, options.unavailable, target)
    if replaced:
        config.objectives = kept
    for name, option in LIMIT_OPTIONS.items():
        if option.metric in options.unavailable and config.budget.get(name) is not None:
            replaced.append(f"limit budget.{name}={config.budget[name]:g} left out: {option.metric} is not measured")
            config.budget[name] = None
    return lines + replaced


RANDOM_MODEL = (
    "the model itself has random weights (its autoaccel.json says random_weights): every figure here is "
    "plumbing-only, whatever measured it"
)


def figure_record(target: Target, options: QualityOptions, fallback: list[str]) -> dict[str, Any]:
    """What the study keeps for the report: the rule, one line per figure (where it came from, whether it is
    meaningful), the figures not measured and the fallback."""
    sources = [*default_figure_sources(target), *options.sources()]
    figures = {figure: source.describe() for source in sources for figure in source.figures}
    return {
        "rule": RULE,
        "sources": [source.line() for source in sources],
        "figures": figures,
        "unmeasured": dict(options.unavailable),
        "fallback": list(fallback),
        "model": RANDOM_MODEL if target.metadata.get("random_weights") else None,
    }


def record_figures(study: optuna.Study, record: dict[str, Any]) -> None:
    if study.user_attrs.get(QUALITY_FIGURES) != record:
        study.set_user_attr(QUALITY_FIGURES, record)


def recorded_figures(study: optuna.Study) -> dict[str, Any] | None:
    """What ``record_figures`` stored, or None for a study recorded before autoaccel stored it."""
    record = study.user_attrs.get(QUALITY_FIGURES)
    return record if isinstance(record, dict) else None
