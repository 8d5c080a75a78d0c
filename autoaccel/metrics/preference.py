"""PickScore (Kirstain et al. 2023): a human-preference score of a text-to-image plan's images for their prompts.

PickScore is a CLIP-H fine-tuned on Pick-a-Pic's human choices and published as a plain transformers ``CLIPModel``
(``yuvalkirstain/PickScore_v1``), read with the processor of the CLIP it started from
(``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``): no package beyond transformers. An image's score is the model's
``logit_scale.exp()`` times the cosine of its image and prompt embeddings (about 20-23 for real images with the
released weights); the figure is the mean over the seeds with its bootstrap interval. Higher is better.

``quality.preference_model`` names the model (a hub id or a local folder), ``quality.preference_processor`` its
processor where the model's place has none (null: the known processor for a known hub model, else the model's own).
ImageReward and HPSv2 were not chosen: their packages pin old versions of timm, pytest and protobuf.
"""

from __future__ import annotations

import torch

from autoaccel.metrics.bootstrap import Interval, mean_interval
from autoaccel.metrics.clip_score import ClipScorer, load_clip_model, prompt_labels

PREFERENCE = "pickscore"  # the figure's name: objective, limit (budget.min_pickscore), table column
PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
# hub models whose repository holds no processor -> the processor they were trained with
KNOWN_PROCESSORS = {PICKSCORE_MODEL: "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"}


class PreferenceScorer:
    """A loaded preference model: per-image scores ``logit_scale.exp() * cos(image, prompt)``."""

    def __init__(self, clip: ClipScorer) -> None:
        self.clip = clip

    @property
    def grade(self):
        return self.clip.grade

    @property
    def model(self):
        return self.clip.model

    def scores(self, images: torch.Tensor, labels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        scale = float(self.clip.model.logit_scale.detach().exp())
        return scale * self.clip.cosines(images, labels, prompts)

    def score_interval(self, images: torch.Tensor, labels: torch.Tensor, prompts: list[str]) -> Interval:
        return mean_interval(self.scores(images, labels, prompts).double().numpy())


def load_preference_scorer(model: str, processor: str | None = None) -> PreferenceScorer:
    """``quality.preference_model`` (and ``quality.preference_processor``): hub ids or local folders."""
    processor = processor or KNOWN_PROCESSORS.get(str(model))
    clip = load_clip_model("quality.preference_model", str(model), processor, figures=(PREFERENCE,))
    return PreferenceScorer(clip)


def prompt_preference(
    scorer: PreferenceScorer, target, images: torch.Tensor, labels: torch.Tensor | None
) -> Interval | None:
    """The preference score of ``images`` for their prompts with its interval; None where there are no prompts."""
    prompts = prompt_labels(target, labels)
    return None if prompts is None else scorer.score_interval(images, labels, prompts)
