"""CLIP score of a text-to-image plan's images against the prompts they were made for.

``quality.clip_model`` names a transformers ``CLIPModel`` with its processor (image processor and tokenizer): a hub
id (``openai/clip-vit-large-patch14``, downloaded by transformers on first use) or a local folder as
``save_pretrained`` writes them (``autoaccel.metrics.model_source``). The score is the standard one (Hessel et al.
2021 with torchmetrics' weight): 100 x the cosine similarity of the image and prompt embeddings, averaged over images
and floored at 0, with a bootstrap interval over the seeds. Higher is better. Only real CLIP weights make the number
meaningful: a randomly initialised CLIP gives a figure that measures nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from autoaccel.metrics.bootstrap import Interval, mean_interval
from autoaccel.metrics.model_source import FigureSource, model_grade, pretrained
from autoaccel.util.imaging import to_uint8

CLIP_EXAMPLE = "openai/clip-vit-large-patch14"


def _embedding(output) -> torch.Tensor:
    """transformers 4 returns the projected embedding; 5 returns an output whose ``pooler_output`` holds it."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output


class ClipScorer:
    """A loaded CLIP model and processor; prompt embeddings are computed once per prompt list."""

    def __init__(self, model, processor, source: str = "<memory>", grade: FigureSource | None = None) -> None:
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.source = source
        self.grade = grade  # where the model came from and whether its figures are meaningful
        self._prompts: tuple[str, ...] = ()
        self._prompt_embeddings: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Unit-length text embeddings, one row per prompt."""
        if self._prompt_embeddings is None or tuple(prompts) != self._prompts:
            tokenizer = self.processor.tokenizer
            tokens = tokenizer(
                list(prompts),
                padding=True,
                truncation=True,
                max_length=tokenizer.model_max_length,
                return_tensors="pt",
            ).to(self.device)
            with torch.no_grad():
                embeddings = _embedding(self.model.get_text_features(**tokens)).float()
            self._prompts, self._prompt_embeddings = tuple(prompts), torch.nn.functional.normalize(embeddings, dim=-1)
        return self._prompt_embeddings

    def image_embeddings(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Unit-length image embeddings of images in [-1, 1] (N, C, H, W), through the model's own processor
        (resize, centre crop, normalisation); grey images are repeated to three channels."""
        pixels = to_uint8(images)
        if pixels.shape[1] == 1:
            pixels = pixels.repeat(1, 3, 1, 1)
        rows = []
        for chunk in pixels.split(batch_size):
            arrays = [image.permute(1, 2, 0).numpy() for image in chunk]
            inputs = self.processor.image_processor(images=arrays, return_tensors="pt")
            with torch.no_grad():
                features = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
            rows.append(torch.nn.functional.normalize(_embedding(features).float(), dim=-1).cpu())
        return torch.cat(rows)

    def cosines(self, images: torch.Tensor, labels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """cos(image, its prompt) per image, in seed order."""
        text = self.prompt_embeddings(prompts).cpu()[labels.long().cpu()]
        return (self.image_embeddings(images) * text).sum(dim=-1)

    def score(self, images: torch.Tensor, labels: torch.Tensor, prompts: list[str]) -> float:
        """Mean of 100 x cos(image, its prompt), floored at 0 (torchmetrics' CLIPScore)."""
        return self.score_interval(images, labels, prompts).value

    def score_interval(self, images: torch.Tensor, labels: torch.Tensor, prompts: list[str]) -> Interval:
        """The CLIP score with its bootstrap interval over the seeds (the mean floored at 0, round by round)."""
        return mean_interval(100 * self.cosines(images, labels, prompts).double().numpy(), floor=0.0)


def load_clip_model(
    option: str, model_source: str, processor_source: str | None = None, figures: tuple[str, ...] = ("clip_score",)
) -> ClipScorer:
    """A ``CLIPModel`` and its ``CLIPProcessor`` from a hub id or a local folder each (the processor from the
    model's own place unless ``processor_source`` names another), through ``model_source.pretrained``: one line
    naming ``option`` when they are not there, ``FigureUnavailable`` when a hub id needs network this run lacks."""
    from transformers import CLIPModel, CLIPProcessor

    holds = "a CLIPModel with its processor and tokenizer"
    model = pretrained(option, model_source, CLIPModel.from_pretrained, holds, CLIP_EXAMPLE)
    processor_option = option if processor_source is None else option.replace("_model", "_processor")
    processor = pretrained(
        processor_option, processor_source or model_source, CLIPProcessor.from_pretrained, holds, CLIP_EXAMPLE
    )
    grade = model_grade(figures, option, str(model_source), model.config)
    return ClipScorer(model, processor, str(model_source), grade)


def load_clip_scorer(source: str | Path) -> ClipScorer:
    """``quality.clip_model``: a CLIP model by hub id or local folder (``load_clip_model``)."""
    return load_clip_model("quality.clip_model", str(source))


def prompt_labels(target, labels: torch.Tensor | None) -> list[str] | None:
    """The target's prompts where ``labels`` index them (a text-to-image target), else None."""
    if labels is None or target.conditions.kind != "prompt" or not target.conditions.names:
        return None
    return list(target.conditions.names)


def prompt_clip_score(scorer: ClipScorer, target, images: torch.Tensor, labels: torch.Tensor | None) -> float | None:
    """CLIP score of ``images`` against their prompts on a text-to-image target; None for other targets."""
    interval = prompt_clip_interval(scorer, target, images, labels)
    return None if interval is None else interval.value


def prompt_clip_interval(
    scorer: ClipScorer, target, images: torch.Tensor, labels: torch.Tensor | None
) -> Interval | None:
    """``prompt_clip_score`` with its bootstrap interval over the seeds."""
    prompts = prompt_labels(target, labels)
    return None if prompts is None else scorer.score_interval(images, labels, prompts)
