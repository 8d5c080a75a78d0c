"""What each image is conditioned on, by index: nothing, a class label, or one prompt of a fixed prompt set.

A batch carries one int per sample (``SeedBatch.class_labels``): the class itself, or the index of its prompt.
Prompts are encoded once by the pipeline's own text encoder(s) and cached here, so every candidate is scored on
the same embeddings; guidance pairs each sample with the null class or the empty/negative prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

NONE, CLASS, PROMPT = "none", "class", "prompt"
KINDS = (NONE, CLASS, PROMPT)


@dataclass
class Conditions:
    """``kind`` and the ``count`` of distinct conditions a seed batch draws from (balanced over them).

    Class kind: ``null_class`` is the label trained for guidance (None: no guidance); ``keyword`` is the
    denoiser's argument for labels. Prompt kind: ``embeds`` maps the denoiser's keyword arguments to one row per
    prompt, ``null`` to the negative prompt's single row (empty: the model takes no guidance), ``fixed`` holds
    arguments shared by every sample, and ``encoder`` re-encodes prompts the way a deployment does on each call
    (what latency measures). ``guidance_keyword``: the denoiser argument a guidance-distilled model (FLUX.1-dev)
    takes its guidance scale in, one value per sample, in place of a second, unconditional branch;
    ``embedded_guidance`` is the scale it is given (the default call's, or a plan's).
    """

    kind: str = NONE
    count: int | None = None
    names: list[str] = field(default_factory=list)
    null_class: int | None = None
    keyword: str = "class_labels"
    embeds: dict[str, torch.Tensor] = field(default_factory=dict)
    null: dict[str, torch.Tensor] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    encoder: Callable[[list[str]], Any] | None = None
    guidance_keyword: str | None = None
    embedded_guidance: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Conditions.kind={self.kind!r}; valid: {', '.join(KINDS)}")

    @property
    def guidable(self) -> bool:
        """Whether a guidance scale changes the images: classifier-free guidance has an unconditional branch to
        pair each sample with, or the model takes the scale as an input."""
        return self.paired_guidance or self.guidance_keyword is not None

    @property
    def paired_guidance(self) -> bool:
        """Whether guidance runs each sample beside its null condition (classifier-free guidance: two branches)."""
        if self.kind == CLASS:
            return self.null_class is not None
        return self.kind == PROMPT and bool(self.null)

    def describe(self) -> str:
        if self.kind == CLASS:
            guidance = f", null class {self.null_class}" if self.null_class is not None else ", no null class"
            return f"{self.count} classes{guidance}"
        if self.kind == PROMPT:
            if self.guidance_keyword is not None:
                return f"{self.count} prompts (guidance as a model input)"
            return f"{self.count} prompts" + ("" if self.null else " (no negative prompt: no guidance)")
        return "unconditional"

    def keywords(self, labels: torch.Tensor | None, null: bool, device, encoded: Any = None) -> dict[str, Any]:
        """The denoiser's keyword arguments for samples conditioned on ``labels`` (or their null counterpart).

        ``encoded`` (from ``encode``): this batch's prompts as the text encoder just gave them, one row per
        sample, instead of the cached rows; the same values, computed the way a deployment computes them.
        """
        if self.kind == NONE or labels is None:
            return dict(self.fixed)
        labels = labels.to(device)
        if self.kind == CLASS:
            return {**self.fixed, self.keyword: torch.full_like(labels, self.null_class) if null else labels}
        if encoded is not None:
            source, rows = (encoded.null, torch.zeros_like(labels)) if null else (encoded.embeds, None)
        else:
            source, rows = (self.null, torch.zeros_like(labels)) if null else (self.embeds, labels)
        guidance = {}
        if self.guidance_keyword is not None:  # float32, as diffusers' pipelines pass it
            guidance[self.guidance_keyword] = torch.full((len(labels),), self.embedded_guidance, device=device)
        return {
            **self.fixed,
            **{key: value.to(device) if rows is None else value.to(device)[rows] for key, value in source.items()},
            **guidance,
        }

    def encode(self, labels: torch.Tensor | None) -> Any:
        """The prompts of ``labels`` encoded again by the text encoder(s), as a deployment does on every call
        (``EncodedPrompts``, one row per sample), or None where nothing is encoded."""
        if self.kind != PROMPT or self.encoder is None or labels is None:
            return None
        return self.encoder([self.names[int(index)] for index in labels])


def concat_keywords(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two samples' keyword arguments joined along the batch (guidance runs both branches in one call);
    arguments that are not per sample (shared ids, nested dicts) are taken from ``first``."""
    joined = {}
    for key, value in first.items():
        other = second.get(key)
        if isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor) and value.dim() > 0:
            joined[key] = torch.cat([value, other])
        else:
            joined[key] = value
    return joined
