"""CLIP score of a text-to-image plan's images against the prompts they were made for, with a local CLIP.

``quality.clip_model=PATH`` names a folder holding a transformers ``CLIPModel`` with its processor (image
processor and tokenizer), as ``save_pretrained`` writes them; nothing is downloaded. The score is the standard
one (Hessel et al. 2021 with torchmetrics' weight): 100 x the cosine similarity of the image and prompt
embeddings, averaged over images and floored at 0. Higher is better. Only real CLIP weights make the number
meaningful: a randomly initialised CLIP gives a figure that measures nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from autoaccel.errors import ConfigError
from autoaccel.util.imaging import to_uint8


def _embedding(output) -> torch.Tensor:
    """transformers 4 returns the projected embedding; 5 returns an output whose ``pooler_output`` holds it."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output


class ClipScorer:
    """A loaded CLIP model and processor; prompt embeddings are computed once per prompt list."""

    def __init__(self, model, processor, source: str = "<memory>") -> None:
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.source = source
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

    def score(self, images: torch.Tensor, labels: torch.Tensor, prompts: list[str]) -> float:
        """Mean of 100 x cos(image, its prompt), floored at 0 (torchmetrics' CLIPScore)."""
        text = self.prompt_embeddings(prompts).cpu()[labels.long().cpu()]
        cosine = (self.image_embeddings(images) * text).sum(dim=-1)
        return float(torch.clamp(100 * cosine.mean(), min=0.0))


def load_clip_scorer(path: str | Path) -> ClipScorer:
    """The CLIP model and processor saved in ``path``; a one-line error naming the path when they are not there."""
    from transformers import CLIPModel, CLIPProcessor

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"quality.clip_model={path} is not a folder; give a CLIPModel saved with save_pretrained")
    try:
        model = CLIPModel.from_pretrained(folder)
        processor = CLIPProcessor.from_pretrained(folder)
    except Exception as error:  # transformers raises many kinds; the user needs the path and the reason
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"quality.clip_model={path} does not hold a CLIPModel with its processor and tokenizer: {reason}"
        ) from None
    return ClipScorer(model, processor, str(folder))


def prompt_clip_score(scorer: ClipScorer, target, images: torch.Tensor, labels: torch.Tensor | None) -> float | None:
    """CLIP score of ``images`` against their prompts on a text-to-image target; None for other targets."""
    if labels is None or target.conditions.kind != "prompt" or not target.conditions.names:
        return None
    return scorer.score(images, labels, list(target.conditions.names))
