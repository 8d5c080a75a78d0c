"""What a study's figures mean, recorded with the study, so that a resumed run measures the same thing.

Every trial of a study is compared with every other and with the reference row measured once for the study: a
run that scored against other real images, other prompts, another reference call or on other seeds would put
incomparable figures on one front. ``settings_fingerprint`` lists everything that decides what a figure means,
each entry under the setting a user changes (``target.data``), holding the value that matters (a digest of the
images in use, not the folder's path). ``Ledger.check_settings`` stores it with a new study and refuses a resume
under other values. To add a setting, add one ``Entry`` to ``settings_fingerprint``.

A study stored by an older autoaccel lacks the entries added since. Such an entry is judged by the setting behind
it: the study's value is the one in the configuration it stored (``study.user_attrs["config"]``, written by every
run), or the setting's default where that configuration does not have it. The same setting now is compatible and
the entry is recorded from then on; another is refused like any change.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from autoaccel.config.schema import AutoaccelConfig
from autoaccel.measure.reference import HELD_OUT_REFERENCE, quality_options
from autoaccel.reference.sampling import describe_reference
from autoaccel.targets.conditions import PROMPT
from autoaccel.targets.denoisers import execution_device


@dataclass(frozen=True)
class Entry:
    """One fingerprinted value (JSON: compared between runs) and the configuration key it comes from (None: one
    every study has recorded since studies were fingerprinted)."""

    value: Any
    setting: str | None = None
    before: Any = None  # what a study recorded before the entry existed had, where that differs from ``value``


@dataclass(frozen=True)
class Fingerprint:
    entries: dict[str, Entry]
    config: dict  # the run's configuration, resolved: where the settings behind the entries are read

    @property
    def values(self) -> dict[str, Any]:
        """What a study stores."""
        return {key: entry.value for key, entry in self.entries.items()}

    def differences(self, stored: dict[str, Any], stored_config: dict | None) -> list[tuple[str, Any, Any]]:
        """(setting, the study's value, the value now) for every entry that differs from the study's ``stored``
        values; an entry the study did not record is judged by its setting in ``stored_config`` (module doc)."""
        changed = []
        for key, entry in self.entries.items():
            if key in stored:
                if stored[key] != entry.value:
                    changed.append((key, stored[key], entry.value))
                continue
            if entry.setting is None:
                if entry.before is not None and entry.before != entry.value:
                    changed.append((key, entry.before, entry.value))
                continue
            before, now = setting_value(stored_config, entry.setting), setting_value(self.config, entry.setting)
            if before != now:
                changed.append((entry.setting, before, now))
        return changed


def settings_fingerprint(config: DictConfig, target, space) -> Fingerprint:
    """What must not change between a study's runs, or its trials and its reference stop being comparable."""

    def setting(key: str) -> Entry:
        value = OmegaConf.select(config, key)
        return Entry(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value, key)

    entries = {
        "target_hash": Entry(target.content_hash),
        "space": Entry(space.source),
        "objectives": Entry(list(config.objectives)),
        "extractor": Entry(target.quality.extractor),
        "target.reference": Entry(describe_reference(target), "target.reference"),
        "target.data": Entry(real_data_description(target), "target.data"),
        "target.prompts": Entry(prompts_description(target), "target.prompts"),
        "device": Entry(torch.device(execution_device(target.denoiser)).type, "target.device"),
        # the optional figures measured: a model that needed network a run lacked changes them (and the objectives)
        "quality_figures": Entry(sorted(quality_options(target).measured())),
        # real-data FID is against the real images less those held out for the floor (before: all of them)
        **(
            {"fid_reference": Entry(HELD_OUT_REFERENCE, before="all real images")}
            if target.real_images is not None
            else {}
        ),
        **{
            key: setting(key)
            for key in (
                "quality.samples",
                "quality.seed",
                "quality.chunk_size",  # stochastic solvers draw from a generator seeded per chunk
                "quality.ode_steps",
                "quality.fid_std_rounds",
                "quality.clip_model",
                "quality.inception_weights",
                "quality.preference_model",
                "quality.preference_processor",
                "cost.batch_size",
                "fidelity.levels",
                "fidelity.train_shares",
            )
        },
    }
    return Fingerprint(entries, OmegaConf.to_container(config, resolve=True))


def real_data_description(target) -> str:
    """The real images (and labels) FID is measured against, by count and digest; or that there are none."""
    if target.real_images is None:
        return "none: FID against the reference call's own samples"
    digest = hashlib.sha256(target.real_images.contiguous().cpu().numpy().tobytes())
    labelled = target.real_labels is not None
    if labelled:
        digest.update(target.real_labels.contiguous().cpu().numpy().tobytes())
    return f"{len(target.real_images)} images{' and labels' if labelled else ''}, sha256 {digest.hexdigest()[:16]}"


def prompts_description(target) -> str:
    """The prompts images are conditioned on, by count and digest; or that the model takes none."""
    if target.conditions.kind != PROMPT:
        return "none"
    names = target.conditions.names
    return f"{len(names)} prompts, sha256 {hashlib.sha256(chr(10).join(names).encode()).hexdigest()[:16]}"


def setting_value(config: dict | None, key: str) -> Any:
    """``key`` (dotted) in a resolved configuration, or its default where the configuration lacks it."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _default(key)
        node = node[part]
    return node


# settings whose default changed, with the default a study stored before then ran with: fidelity.levels is null
# now (decided when a study starts, ``autoaccel.search.levels``), and was one level
EARLIER_DEFAULTS: dict[str, Any] = {"fidelity.levels": []}


def _default(key: str) -> Any:
    if key in EARLIER_DEFAULTS:
        return EARLIER_DEFAULTS[key]
    value = OmegaConf.select(OmegaConf.structured(AutoaccelConfig), key)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
