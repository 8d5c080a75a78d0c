"""The fidelity levels a search scores on when its user left ``fidelity.levels`` unset (null): decided once, when
a study starts, before its fingerprint is recorded, and kept by every later run of the study.

A new study whose estimate on one level (``autoaccel.search.estimate``) passes ``LADDER_THRESHOLD_S`` scores on
``default_levels``: ``quality.samples / LADDER_DIVISOR`` images first, never fewer than ``MIN_LADDER_LEVEL`` (the
low level ``reports/bench/optimizers.md`` (c) kept the front with), then all of them; a shorter one on one level.
``fidelity.levels=[]`` keeps one level whatever the estimate.
"""

from __future__ import annotations

from autoaccel.search.estimate import estimate_search
from autoaccel.search.loop import standard_configurations
from autoaccel.util.progress import duration

LADDER_THRESHOLD_S = 3600.0  # a new study estimated past this on one level gets a fidelity ladder by default
LADDER_DIVISOR = 8  # the default ladder's first level: quality.samples / 8 ...
MIN_LADDER_LEVEL = 64  # ... but never fewer images


def default_levels(samples: int) -> list[int]:
    """The ladder a long search gets when its user left ``fidelity.levels`` unset: ``samples / LADDER_DIVISOR``
    images first, never fewer than ``MIN_LADDER_LEVEL``, then all of them; one level (``[]``) where that first
    level would not be at least half as small as the top."""
    low = max(samples // LADDER_DIVISOR, MIN_LADDER_LEVEL)
    return [low, samples] if 2 * low <= samples else []


def settle_fidelity_levels(context) -> str:
    """``fidelity.levels`` for a search whose user left it unset (null), decided before the study's fingerprint is
    checked and recorded: the levels the study recorded (a resumed study keeps the ladder it started with), else,
    for a new study, ``default_levels`` where the estimate on one level passes ``LADDER_THRESHOLD_S`` and one level
    otherwise. Returns the line the search prints about it ("" where nothing was decided for the user)."""
    config = context.config
    if config.fidelity.levels is not None:
        return ""
    recorded = recorded_levels(context.ledger)
    if recorded is not None:
        config.fidelity.levels = recorded
        return f"fidelity.levels={recorded}, as this study started with" if recorded else ""
    ladder = default_levels(int(config.quality.samples))
    config.fidelity.levels = []
    if not ladder:
        return ""
    standards = standard_configurations(
        context.space,
        list(config.budget.warm_start_steps),
        context.target.reference_guidance,
        context.target.schedule_family,
        context.target,
    )
    one_level = estimate_search(context, int(config.budget.trials), [params for _, params in standards], levels=[])
    context.timings = one_level.timings
    if one_level.seconds <= LADDER_THRESHOLD_S:
        return ""
    config.fidelity.levels = ladder
    return (
        f"fidelity.levels defaults to {ladder}: on one level this search is estimated at "
        f"{duration(one_level.seconds)}, past {duration(LADDER_THRESHOLD_S)} (fidelity.levels=[] keeps one level)"
    )


def recorded_levels(ledger) -> list[int] | None:
    """The fidelity levels a study recorded when it started (its fingerprint, or the configuration a study from
    before that stored); None for a new study."""
    settings = ledger.study.user_attrs.get("settings")
    if settings is None:
        return None
    if "fidelity.levels" in settings:
        return [int(level) for level in settings["fidelity.levels"] or []]
    stored = (ledger.study.user_attrs.get("config") or {}).get("fidelity") or {}
    return [int(level) for level in stored.get("levels") or []]
