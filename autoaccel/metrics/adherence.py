"""Adherence: does an image show what it was asked for? The domain's counterpart of CLIP score, for targets that
carry a classifier of their domain (``target.metadata["adherence"]``: images in [-1, 1] -> predicted condition).

A plan can keep FID while losing the condition (guidance too weak, too few steps for the class to form);
adherence sees that directly. Higher is better.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ADHERENCE_KEY = "adherence"  # target.metadata: the classifier, images -> predicted class index per image
CONDITION_CLASSES_KEY = "condition_classes"  # target.metadata: condition index -> class it asks for (-1: none)


def adherence_reader(target) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The target's classifier, or None where it has none (then no adherence is scored)."""
    return target.metadata.get(ADHERENCE_KEY)


def adherence_share(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    classify: Callable[[torch.Tensor], torch.Tensor],
    condition_classes: torch.Tensor | None = None,
    batch_size: int = 512,
) -> float:
    """Share of images the classifier reads as the class their condition asks for.

    ``labels`` are the seed batch's condition indices; ``condition_classes`` maps each to the class it asks for
    (-1: a condition that asks for none, left out); without it the condition index is the class. NaN when no
    image asks for a class.
    """
    if labels is None:
        return float("nan")
    wanted = labels.long().cpu()
    if condition_classes is not None:
        wanted = torch.as_tensor(condition_classes).long().cpu()[wanted]
    asked = wanted >= 0
    if not bool(asked.any()):
        return float("nan")
    predicted = torch.cat([torch.as_tensor(classify(chunk)).long().cpu() for chunk in images.split(batch_size)])
    if predicted.shape != wanted.shape:
        raise ValueError(f"the adherence classifier gave {tuple(predicted.shape)} predictions for {len(wanted)} images")
    return float((predicted[asked] == wanted[asked]).float().mean())


def target_adherence(target, images: torch.Tensor, labels: torch.Tensor | None) -> float | None:
    """Adherence of ``images`` made for ``labels`` on ``target``; None for a target without a classifier."""
    classify = adherence_reader(target)
    if classify is None:
        return None
    return adherence_share(images, labels, classify, target.metadata.get(CONDITION_CLASSES_KEY))
