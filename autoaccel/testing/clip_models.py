"""Tiny random-weight CLIP models saved as folders, standing in for the CLIP and PickScore models users name by hub
id: the figures they give compute like the real ones' and mean nothing. Their config carries
``model_source.STAND_IN_MARK``, so a report says their figures are plumbing-only."""

from __future__ import annotations

from pathlib import Path

import torch

from autoaccel.metrics.model_source import STAND_IN_MARK
from autoaccel.testing.pipelines import _clip_tokenizer


def build_tiny_clip_folder(folder: Path, seed: int = 0, stand_in: bool = True, logit_scale: float = 2.6592) -> Path:
    """A ``CLIPModel`` (16-wide, one layer, 32x32 images, 8-d projections) with its ``CLIPProcessor`` in ``folder``,
    as ``save_pretrained`` writes them. ``stand_in`` marks its config as random weights (False: an unmarked folder,
    as a user's copy of a released model would be)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = _clip_tokenizer()
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=8, logit_scale_init_value=logit_scale)
    if stand_in:
        setattr(config, STAND_IN_MARK, True)
    torch.manual_seed(seed)
    model = CLIPModel(config)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return Path(folder)
