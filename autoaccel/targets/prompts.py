"""Text conditioning for text-to-image pipelines, computed once by each pipeline's own ``encode_prompt``.

A search runs the denoiser thousands of times on the same prompts, so the text encoders run once here and the
denoiser gets the cached rows. Encoding goes through the pipeline's ``encode_prompt`` with the defaults of its
``__call__`` (sequence lengths, caption cleaning), so the rows are exactly what ``pipeline(prompt=...)`` would feed
its denoiser; text encoding is never re-implemented here.
"""

from __future__ import annotations

import copy
import inspect
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autoaccel.errors import TargetError
from autoaccel.targets.denoisers import sample_shape
from autoaccel.util.precision import cast_module, module_dtype

MAX_PROMPTS = 10_000
MAX_PROMPT_CHARS = 1_000
# The longest line read whole: a prompt of MAX_PROMPT_CHARS characters of up to 4 UTF-8 bytes, with room for the
# spaces around it; a longer line is refused without reading the rest.
MAX_LINE_BYTES = 8 * MAX_PROMPT_CHARS
# Prompts per encode_prompt call: bounds the text encoders' activation memory for long prompt files.
ENCODE_CHUNK = 64


@dataclass
class EncodedPrompts:
    """Denoiser keyword arguments for a list of prompts.

    ``embeds`` maps a denoiser ``forward`` keyword to a tensor with one row per prompt (P, ...), so a sampler passes
    ``{k: v[indices] for k, v in embeds.items()}``. ``null`` holds the same keywords for the negative (by default
    empty) prompt with one row (1, ...), for classifier-free guidance; it is empty for a pipeline whose default call
    runs no unconditional branch. ``fixed`` holds keywords that are the same for every sample.
    """

    embeds: dict[str, torch.Tensor]
    null: dict[str, torch.Tensor]
    fixed: dict[str, Any] = field(default_factory=dict)

    @property
    def num_prompts(self) -> int:
        return next(iter(self.embeds.values())).shape[0]


def load_prompts(path: str | Path) -> list[str]:
    """Prompts of a text file: one per line; blank lines and lines starting with '#' are skipped.

    The file is read a line at a time, each line at most a little longer than a prompt may be, and reading stops
    at the first line past the limits: a huge file costs no more memory than the prompts it may hold."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist" if not path.exists() else None
        what = what or "is not a regular file"
        raise TargetError(f"prompt file {path} {what}; give a UTF-8 text file with one prompt per line")
    prompts = []
    try:
        with path.open("rb") as file:
            for line_number, prompt in _lines(file, path):
                if not prompt or prompt.startswith("#"):
                    continue
                if len(prompt) > MAX_PROMPT_CHARS:
                    raise TargetError(
                        f"prompt file {path} line {line_number} has {len(prompt)} characters; "
                        f"at most {MAX_PROMPT_CHARS}"
                    )
                if len(prompts) == MAX_PROMPTS:
                    raise TargetError(
                        f"prompt file {path} holds more than {MAX_PROMPTS} prompts; keep at most {MAX_PROMPTS}"
                    )
                prompts.append(prompt)
    except OSError as error:
        raise TargetError(f"prompt file {path} cannot be read: {error.strerror or error}") from None
    if not prompts:
        raise TargetError(f"prompt file {path} holds no prompts (only blank or '#' lines); write one prompt per line")
    return prompts


def _lines(file, path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of each line of ``file``, none read longer than MAX_LINE_BYTES."""
    offset = 0
    for line_number in itertools.count(1):
        raw = file.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES:
            raise TargetError(
                f"prompt file {path} line {line_number} has more than {MAX_PROMPT_CHARS} characters; "
                f"at most {MAX_PROMPT_CHARS}"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise TargetError(
                f"prompt file {path} is not UTF-8 text (bad byte at offset {offset + error.start})"
            ) from None
        yield line_number, text.strip()
        offset += len(raw)


def encode_prompts(
    pipeline, prompts: list[str], negative_prompt: str = "", device: str | torch.device = "cpu"
) -> EncodedPrompts:
    """Encode `prompts` (and `negative_prompt` as the null row) with `pipeline.encode_prompt` on `device`."""
    prompts = list(prompts)
    if not prompts:
        raise TargetError("no prompts to encode; give at least one prompt")
    encode = _encoder_for(pipeline)
    with torch.no_grad():
        return encode(pipeline, prompts, negative_prompt, torch.device(device))


@dataclass(frozen=True)
class PromptEncoder:
    """Encodes prompts with a pipeline's own text encoder(s) on ``device``, as a deployment does on every call."""

    pipeline: Any
    device: str | torch.device = "cpu"

    def __call__(self, prompts: list[str]) -> EncodedPrompts:
        return encode_prompts(self.pipeline, prompts, device=self.device)

    @property
    def dtype(self) -> torch.dtype | None:
        """The precision of the pipeline's first text encoder (None: it has none)."""
        for name, module in sorted(self.pipeline.components.items()):
            if name.startswith("text_encoder") and isinstance(module, torch.nn.Module):
                return module_dtype(module)
        return None

    def cast(self, dtype: torch.dtype) -> PromptEncoder:
        """The same encoding on copies of the text encoders cast to ``dtype`` (a plan's runtime precision); the
        pipeline's own encoders stay as they are, since the reference and the other plans run them."""
        pipeline = copy.copy(self.pipeline)
        for name, module in self.pipeline.components.items():
            if name.startswith("text_encoder") and isinstance(module, torch.nn.Module):
                object.__setattr__(pipeline, name, cast_module(copy.deepcopy(module), dtype))
        return PromptEncoder(pipeline, self.device)


def _encoder_for(pipeline) -> Callable[..., EncodedPrompts]:
    import diffusers

    for class_name, encode in _ENCODERS:
        if isinstance(pipeline, getattr(diffusers, class_name)):
            return encode
    supported = ", ".join(class_name for class_name, _ in _ENCODERS)
    raise TargetError(f"{type(pipeline).__name__} has no supported prompt encoding; supported: {supported}")


def _call_default(pipeline, name: str) -> Any:
    """The default of `name` in the pipeline's ``__call__``: what a plain ``pipeline(prompt)`` would use."""
    return inspect.signature(type(pipeline).__call__).parameters[name].default


def _chunks(prompts: Sequence[str]) -> list[list[str]]:
    return [list(prompts[start : start + ENCODE_CHUNK]) for start in range(0, len(prompts), ENCODE_CHUNK)]


def _concat(rows: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.cat(parts, dim=0) for parts in zip(*rows))


def _encode_stable_diffusion(pipeline, prompts, negative_prompt, device) -> EncodedPrompts:
    # encode_prompt(prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt, ...)
    (hidden,) = _concat([(pipeline.encode_prompt(chunk, device, 1, False)[0],) for chunk in _chunks(prompts)])
    # The null row comes from encode_prompt's own negative branch; the prompt passed alongside it is discarded.
    _, null_hidden = pipeline.encode_prompt([negative_prompt], device, 1, True, negative_prompt=[negative_prompt])
    return EncodedPrompts(embeds={"encoder_hidden_states": hidden}, null={"encoder_hidden_states": null_hidden})


def _encode_masked(pipeline, prompts, negative_prompt, device) -> EncodedPrompts:
    """PixArt and Sana: T5 or Gemma-2 hidden states with their attention masks, encoded with the defaults of the
    pipeline's ``__call__``: captions cleaned (encode_prompt falls back to lower-casing when bs4/ftfy are missing),
    its sequence length, and Sana's complex human instruction, which ``encode_prompt`` puts before each prompt (not
    the negative one), keeping the first token and the last ``max_sequence_length - 1``."""
    from diffusers.utils import is_bs4_available, is_ftfy_available

    called = inspect.signature(type(pipeline).__call__).parameters
    options = {
        "device": device,
        "num_images_per_prompt": 1,
        "clean_caption": bool(_call_default(pipeline, "clean_caption")) and is_bs4_available() and is_ftfy_available(),
        **{name: _call_default(pipeline, name) for name in CALL_DEFAULTS if name in called},
    }
    hidden, mask = _concat(
        [pipeline.encode_prompt(chunk, do_classifier_free_guidance=False, **options)[:2] for chunk in _chunks(prompts)]
    )
    _, _, null_hidden, null_mask = pipeline.encode_prompt(
        [negative_prompt], do_classifier_free_guidance=True, negative_prompt=negative_prompt, **options
    )
    return EncodedPrompts(
        embeds={"encoder_hidden_states": hidden, "encoder_attention_mask": mask},
        null={"encoder_hidden_states": null_hidden, "encoder_attention_mask": null_mask},
    )


# __call__ defaults the masked encoders pass on to encode_prompt, where the pipeline's __call__ has them
CALL_DEFAULTS = ("max_sequence_length", "complex_human_instruction")


def _encode_stable_diffusion_3(pipeline, prompts, negative_prompt, device) -> EncodedPrompts:
    options = {
        "prompt_2": None,
        "prompt_3": None,
        "device": device,
        "num_images_per_prompt": 1,
        "max_sequence_length": _call_default(pipeline, "max_sequence_length"),
    }
    rows = []
    for chunk in _chunks(prompts):
        hidden, _, pooled, _ = pipeline.encode_prompt(chunk, do_classifier_free_guidance=False, **options)
        rows.append((hidden, pooled))
    hidden, pooled = _concat(rows)
    _, null_hidden, _, null_pooled = pipeline.encode_prompt(
        [negative_prompt], do_classifier_free_guidance=True, negative_prompt=[negative_prompt], **options
    )
    return EncodedPrompts(
        embeds={"encoder_hidden_states": hidden, "pooled_projections": pooled},
        null={"encoder_hidden_states": null_hidden, "pooled_projections": null_pooled},
    )


def _encode_stable_diffusion_xl(pipeline, prompts, negative_prompt, device) -> EncodedPrompts:
    """Both CLIP encoders' hidden states, the second's pooled embedding and the size conditioning
    (``add_time_ids``: original size, crop, target size) of the default call, through the pipeline's own methods.
    The empty negative prompt is the default call's: zeros where the model's ``force_zeros_for_empty_prompt``
    says so (SDXL base), else the encoded empty string."""
    options = {"prompt_2": None, "device": device, "num_images_per_prompt": 1}
    rows = []
    for chunk in _chunks(prompts):
        hidden, _, pooled, _ = pipeline.encode_prompt(chunk, do_classifier_free_guidance=False, **options)
        rows.append((hidden, pooled))
    hidden, pooled = _concat(rows)
    negative = None if negative_prompt == "" else [negative_prompt]
    _, null_hidden, _, null_pooled = pipeline.encode_prompt(
        [""] if negative is None else negative, do_classifier_free_guidance=True, negative_prompt=negative, **options
    )
    _, height, width = sample_shape(pipeline.unet)
    size = (height * pipeline.vae_scale_factor, width * pipeline.vae_scale_factor)
    encoder_2 = pipeline.text_encoder_2
    projection = int(pooled.shape[-1]) if encoder_2 is None else encoder_2.config.projection_dim
    time_ids = pipeline._get_add_time_ids(size, (0, 0), size, hidden.dtype, text_encoder_projection_dim=projection)
    time_ids = time_ids.to(device)
    return EncodedPrompts(
        embeds={
            "encoder_hidden_states": hidden,
            "added_cond_kwargs.text_embeds": pooled,
            "added_cond_kwargs.time_ids": time_ids.repeat(len(prompts), 1),
        },
        null={
            "encoder_hidden_states": null_hidden,
            "added_cond_kwargs.text_embeds": null_pooled,
            "added_cond_kwargs.time_ids": time_ids,
        },
    )


def _encode_flux(pipeline, prompts, negative_prompt, device) -> EncodedPrompts:
    """T5 hidden states and the CLIP pooled embedding; the text position ids are the same for every prompt. No
    null row: Flux's default call runs no unconditional branch (guidance is an input of FLUX.1-dev's model)."""
    options = {"prompt_2": None, "device": device, "num_images_per_prompt": 1}
    options["max_sequence_length"] = _call_default(pipeline, "max_sequence_length")
    rows, text_ids = [], None
    for chunk in _chunks(prompts):
        hidden, pooled, text_ids = pipeline.encode_prompt(chunk, **options)
        rows.append((hidden, pooled))
    hidden, pooled = _concat(rows)
    return EncodedPrompts(
        embeds={"encoder_hidden_states": hidden, "pooled_projections": pooled}, null={}, fixed={"txt_ids": text_ids}
    )


# Checked in order with isinstance, so a subclass is encoded like its base pipeline.
_ENCODERS: tuple[tuple[str, Callable[..., EncodedPrompts]], ...] = (
    ("StableDiffusionPipeline", _encode_stable_diffusion),
    ("PixArtAlphaPipeline", _encode_masked),
    ("PixArtSigmaPipeline", _encode_masked),
    ("StableDiffusion3Pipeline", _encode_stable_diffusion_3),
    ("StableDiffusionXLPipeline", _encode_stable_diffusion_xl),
    ("FluxPipeline", _encode_flux),
    ("SanaPipeline", _encode_masked),
)
