"""Plans that lost diversity: a collapsed model (a distilled student that found a few good modes) keeps its
precision and its FID can look fair at few samples, but its recall falls. The report marks every front plan whose
recall is more than ``RECALL_DROP`` below the reference call's, measured on the same seeds."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import pandas as pd

RECALL_DROP = 0.05  # recall below the reference's by more than this marks a plan (a share of images, 0-1)


def lost_diversity(front: pd.DataFrame, reference: Mapping | None) -> list[int]:
    """The front's trials whose recall is more than ``RECALL_DROP`` below the reference's."""
    wanted = (reference or {}).get("recall")
    if not _finite(wanted) or front.empty or "recall" not in front:
        return []
    return [
        int(row["trial"])
        for _, row in front.iterrows()
        if _finite(row["recall"]) and float(row["recall"]) < float(wanted) - RECALL_DROP
    ]


def diversity_sentence(front: pd.DataFrame, reference: Mapping | None) -> str:
    """The report's note naming them (empty when none lost diversity)."""
    marked = lost_diversity(front, reference)
    if not marked:
        return ""
    recalls = front.set_index(front["trial"].astype(int))["recall"]
    listed = ", ".join(f"trial {trial} (recall {float(recalls[trial]):.3f})" for trial in marked)
    return (
        f"lost diversity: {listed}: recall more than {RECALL_DROP} below the reference's "
        f"({float(reference['recall']):.3f}); such a plan covers fewer of the reference images' modes than its FID "
        "suggests (set budget.min_recall to keep it off the front)"
    )


def _finite(value) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(value)
