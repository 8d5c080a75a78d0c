"""Which prompts a text-to-image target is scored on: ``target.prompts=FILE`` (one per line), a bundled set by name,
or by default the folder's own ``prompts.txt``, else the bundled ``general`` set. Every candidate is scored on
the same prompts and seeds."""

from __future__ import annotations

from pathlib import Path

from autoaccel.errors import TargetError
from autoaccel.targets.digits.latent.prompts import PROMPTS as DIGIT_PROMPTS
from autoaccel.targets.prompts import load_prompts

# Short, varied prompts for a model of any domain: enough distinct conditions to see prompt adherence change,
# few enough that each is sampled several times at the default sample count.
GENERAL_PROMPTS = (
    "a photograph of a red apple on a wooden table",
    "a watercolor painting of a lighthouse at dusk",
    "a close-up of a cat's face",
    "a mountain lake under a clear blue sky",
    "an astronaut riding a horse",
    "a bowl of noodles seen from above",
    "a city street at night in the rain",
    "a pencil sketch of an old oak tree",
    "a yellow taxi in front of a brick building",
    "a field of sunflowers",
    "a portrait of an elderly man with a beard",
    "a small boat on a calm sea",
    "a plate of sushi",
    "a snowy forest with a wooden cabin",
    "a vintage car parked on a beach",
    "a bookshelf full of colorful books",
)


def bundled_sets() -> dict[str, list[str]]:

    return {"general": list(GENERAL_PROMPTS), "digits": [prompt for prompt, _ in DIGIT_PROMPTS]}


def resolve_prompts(prompts: str | list[str] | None, folder: Path | None = None) -> list[str]:
    """The prompt list ``prompts`` names (a file, or a bundled set; a list is taken as it is), or the default
    for ``folder``."""
    if isinstance(prompts, list | tuple):
        return [str(prompt) for prompt in prompts]
    if prompts is None:
        own = folder / "prompts.txt" if folder is not None else None
        return load_prompts(own) if own is not None and own.is_file() else list(GENERAL_PROMPTS)
    sets = bundled_sets()
    if str(prompts) in sets:
        return sets[str(prompts)]
    path = Path(str(prompts)).expanduser()
    if path.is_file():
        return load_prompts(path)
    raise TargetError(
        f"target.prompts={str(prompts)!r} is neither a prompt file nor a bundled set; valid: a text file with one "
        f"prompt per line, or one of {', '.join(sorted(sets))}"
    )
