"""The fixed yardsticks every candidate of a run is scored against, computed once and cached on disk.

- seeds: the common initial noise and class labels;
- the reference: the pipeline's default call (e.g. 1000-step DDPM for a DDPMPipeline, 50 steps with guidance
  for Stable Diffusion) or the one ``target.reference`` names, on those seeds: the report's reference row and,
  for a model without its own data, the FID reference;
- the ODE reference: a deterministic many-step DPM-Solver++ solution from the same noise, against which each
  candidate image is compared pair by pair (PSNR, SSIM, feature distance; a stochastic DDPM sample cannot be
  matched image by image);
- the FID reference set: the target's real images, less as many as the judge scores (class for class as the seeds
  ask for them) held out for the floor; without real data, the reference call's own images on the same seeds;
- the FID floor (real data only): what the held-out real images score against the reference set, exactly as a plan's
  images are scored: the FID of a perfect sampler at this sample count. Whether two plans differ is not the floor's
  to say: the paired intervals of ``autoaccel.metrics.bootstrap`` say that, from the per-image features each
  scoring returns (``score_with_features``).

Optional figures (``configure_quality``): CLIP score and a preference score (PickScore) with models named by hub id
or local folder, Inception FID with torch-fidelity's weights (downloaded, or a local file); each carries its bootstrap
interval (``<figure>_lo``, ``<figure>_hi``). A model that needs network this run lacks is left out in one line
(``QualityOptions.unavailable``) and the search falls back to the figures that need nothing. Adherence wherever the
target carries a classifier of its domain.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autoaccel.errors import ConfigError
from autoaccel.measure.feature_store import (
    HELD_OUT,
    ODE,
    REFERENCE_CALL,
    REFERENCE_SET,
    FeatureSet,
    FeatureStore,
    kind_set,
)
from autoaccel.metrics.adherence import adherence_reader, target_adherence
from autoaccel.metrics.bootstrap import Interval, PairedBootstrap
from autoaccel.metrics.clip_score import load_clip_scorer, prompt_clip_interval
from autoaccel.metrics.extractor_names import GENERIC_EXTRACTOR
from autoaccel.metrics.features import ensemble_extractors
from autoaccel.metrics.model_source import MEANINGFUL, PLUMBING, FigureSource, FigureUnavailable
from autoaccel.metrics.preference import PREFERENCE, load_preference_scorer, prompt_preference
from autoaccel.metrics.quality import (
    distribution_metrics,
    frechet_distance,
    image_features,
    inception_features,
    inception_grade,
    load_inception,
    paired_feature_distance,
    psnr,
    ssim,
    tensor_digest,
)
from autoaccel.pipeline.seeds import SeedBatch, make_seed_batch, sample_in_chunks
from autoaccel.reference.sampling import (
    ODE_REFERENCE_STEPS,
    ode_reference_pipeline,
    parse_reference,
    reference_pipeline,
)
from autoaccel.targets.base import Target
from autoaccel.targets.conditions import CLASS, PROMPT
from autoaccel.targets.denoisers import execution_device
from autoaccel.techniques.base import sampler_adds_noise
from autoaccel.util.files import write_atomically
from autoaccel.util.imaging import to_uint8
from autoaccel.util.progress import Progress

HELD_OUT_REFERENCE = "real images less the floor's held-out set"  # what real-data FID is scored against
QUALITY_OPTIONS_KEY = "quality_options"  # target.metadata: the QualityOptions every judge of the target uses


OPTIONAL_FIGURES = {  # figure -> the option that names its model
    "clip_score": "quality.clip_model",
    "fid_inception": "quality.inception_weights",
    PREFERENCE: "quality.preference_model",
}


@dataclass
class QualityOptions:
    """Figures beyond the default ones, each needing weights: ``clip`` (a ``ClipScorer``) gives ``clip_score`` on
    text-to-image targets, ``preference`` (a ``PreferenceScorer``) gives ``pickscore`` on them, ``inception``
    (torch-fidelity's Inception-v3) gives ``fid_inception`` against the same reference images as ``fid``.
    ``unavailable``: figure -> the one line saying why it is not measured (its model needs network)."""

    clip: object | None = None
    inception: object | None = None
    inception_weights: str | None = None
    preference: object | None = None
    unavailable: dict[str, str] = field(default_factory=dict)

    def measured(self) -> list[str]:
        """The optional figures this run scores."""
        loaded = {"clip_score": self.clip, "fid_inception": self.inception, PREFERENCE: self.preference}
        return [figure for figure, model in loaded.items() if model is not None]

    def sources(self) -> list[FigureSource]:
        """Where each optional figure this run scores comes from, and whether it is meaningful."""
        found = [scorer.grade for scorer in (self.clip, self.preference) if scorer is not None and scorer.grade]
        if self.inception is not None:
            found.insert(1 if self.clip is not None else 0, inception_grade(str(self.inception_weights)))
        return found


def configure_quality(
    target: Target,
    clip_model: str | None = None,
    inception_weights: str | None = None,
    preference_model: str | None = None,
    preference_processor: str | None = None,
) -> QualityOptions:
    """Loads the optional scorers the ``quality.*`` options name (None: not used) and attaches them to ``target``,
    so every judge of it, at any sample count, scores them. A path that does not hold what it should is a one-line
    ConfigError naming it; a hub id or ``auto`` that needs network this run lacks is recorded in ``unavailable``
    (one line each) and its figure is not scored. A preference score on a target without prompts is refused."""
    options = QualityOptions()
    device = next(target.denoiser.parameters()).device
    if preference_model and (target.conditions.kind != PROMPT or not target.conditions.names):
        conditioned = "class labels" if target.conditions.kind == CLASS else "nothing"
        raise ConfigError(
            f"quality.preference_model={preference_model} rates images for their prompts; {target.name} is "
            f"conditioned on {conditioned}, not prompts: give a text-to-image model (e.g. target=digits_t2i) or null"
        )
    loaders = {
        "clip_score": (clip_model, lambda: load_clip_scorer(clip_model)),
        PREFERENCE: (preference_model, lambda: load_preference_scorer(preference_model, preference_processor)),
        "fid_inception": (inception_weights, lambda: load_inception(str(inception_weights))),
    }
    for figure, (named, load) in loaders.items():
        if not named:
            continue
        try:
            loaded = load()
        except FigureUnavailable as error:
            options.unavailable[figure] = str(error)
            continue
        if figure == "fid_inception":
            options.inception, options.inception_weights = loaded, str(inception_weights)
        else:
            loaded.model.to(device)
            setattr(options, "clip" if figure == "clip_score" else "preference", loaded)
    target.metadata[QUALITY_OPTIONS_KEY] = options
    return options


def quality_options(target: Target) -> QualityOptions:
    return target.metadata.get(QUALITY_OPTIONS_KEY) or QualityOptions()


def default_figure_sources(target: Target) -> list[FigureSource]:
    """Where the figures every run measures come from, and whether they are meaningful (``model_source``: the
    rule): the FID extractor's figures, the random-CNN ensemble's, the pixel figures and adherence."""
    extractor = target.quality.extractor
    extractor_figures = ("fid", "kid", "precision", "recall", "feature_dist_vs_ode")
    if extractor.startswith(GENERIC_EXTRACTOR):
        grade = FigureSource(
            extractor_figures, f"autoaccel's bundled random CNN ({extractor})", PLUMBING, "random features"
        )
    else:
        grade = FigureSource(
            extractor_figures,
            f"the model's own feature extractor {extractor}",
            MEANINGFUL,
            "trained on this model's domain; not comparable with Inception FIDs",
        )
    sources = [
        grade,
        FigureSource(("fid_ensemble",), f"{GENERIC_EXTRACTOR} and its redraws", PLUMBING, "random features"),
        FigureSource(
            ("psnr_vs_ode", "ssim_vs_ode"), "pixels, against the many-step ODE solution", MEANINGFUL, "no model"
        ),
    ]
    if adherence_reader(target) is not None:
        sources.append(FigureSource(("adherence",), "the model's own classifier", MEANINGFUL, "trained on its domain"))
    return sources


class QualityJudge:
    """Scores images made from ``seeds``: distribution metrics and paired fidelity to the ODE reference."""

    def __init__(
        self,
        target: Target,
        samples: int,
        seed: int,
        cache_dir: Path,
        chunk_size: int = 256,
        fid_std_rounds: int = 20,
    ) -> None:
        self.target = target
        self.samples = samples
        self.fid_std_rounds = fid_std_rounds
        self.cache_dir = Path(cache_dir)
        self.chunk_size = chunk_size
        self.seeds = make_seed_batch(target.sample_shape, samples, seed, target.condition_count)
        self._reference_call_images: torch.Tensor | None = None
        self._ode_images: torch.Tensor | None = None
        self._ode_features: torch.Tensor | None = None
        self._inception_reference: torch.Tensor | None = None
        self._ensemble_reference: dict[str, list[torch.Tensor]] = {}
        self._floor: dict | None = None
        self._held_out: torch.Tensor | None = None  # indices of the real images held out for the floor
        self._set_features: dict[str, torch.Tensor] = {}  # reference set, held-out set, reference call, ODE
        self._lock = threading.RLock()  # concurrent trials share one judge: references are made once
        self.log: Callable[[str], None] | None = None  # set by a search: reference sampling reports its progress

    def _progress(self, what: str) -> Progress:
        """Progress lines for sampling ``what`` (a reference call may take minutes): to ``log`` when a search set
        one, else to the running command's progress lines."""
        return Progress(what, self.samples, log=self.log)

    def _key(self, kind: str, seed: int) -> str:
        prompts = ""
        if self.target.conditions.names and self.target.conditions.kind == "prompt":  # other prompts, other images
            prompts = "-p" + hashlib.sha1("\n".join(self.target.conditions.names).encode()).hexdigest()[:10]
        return f"{self.target.content_hash[:16]}{prompts}-{kind}-n{self.samples}-seed{seed}"

    def _cached(self, kind: str, make, seed: int | None = None) -> torch.Tensor:
        path = self.cache_dir / "samples" / f"{self._key(kind, self.seeds.seed if seed is None else seed)}.pt"
        if path.exists():
            return torch.load(path, weights_only=True)
        images = make()
        write_atomically(path, lambda temporary: torch.save(images, temporary))
        return images

    def reference_call_images(self) -> torch.Tensor:
        with self._lock:
            return self._reference_call()

    def _reference_call(self) -> torch.Tensor:
        if self._reference_call_images is None:
            self._reference_call_images = self._cached(
                f"reference-{self.target.reference}",
                lambda: sample_in_chunks(
                    reference_pipeline(self.target), self.seeds, self.chunk_size, self._progress("reference")
                ),
            )
        return self._reference_call_images

    def ode_images(self) -> torch.Tensor:
        with self._lock:
            return self._ode()

    def _ode(self) -> torch.Tensor:
        if self._ode_images is None:
            self._ode_images = self._cached(
                f"ode{ODE_REFERENCE_STEPS}",
                lambda: sample_in_chunks(
                    ode_reference_pipeline(self.target), self.seeds, self.chunk_size, self._progress("ODE reference")
                ),
            )
        return self._ode_images

    def reference_images(self) -> tuple[torch.Tensor, str]:
        """uint8 reference images for FID and a cache key naming them: the real images less those held out for
        the floor, all of them where there are fewer than twice the judge's samples, or the reference call's."""
        real = self.target.real_images
        if real is not None:
            held_out = self.held_out_indices()
            if held_out is None:
                return real, f"real-{tensor_digest(real)}"
            keep = torch.ones(len(real), dtype=torch.bool)
            keep[held_out] = False
            return real[keep], f"real-{tensor_digest(real)}-less-{tensor_digest(held_out)}"
        call = to_uint8(self.reference_call_images())
        return call, f"reference-call-{tensor_digest(call)}"

    def held_out_indices(self) -> torch.Tensor | None:
        """Indices of the real images held out for the floor (see ``held_out_split``); None without real data or
        with fewer than twice the judge's samples."""
        real = self.target.real_images
        if real is None:
            return None
        if self._held_out is None:
            self._held_out = held_out_split(
                len(real), self.samples, self.seeds.seed, self.target.real_labels, self.seeds.class_labels
            )
        return self._held_out if len(self._held_out) else None

    def reference_set_text(self) -> str:
        """Which real images FID is scored against, where some are held out for the floor (else "")."""
        held_out = self.held_out_indices()
        if held_out is None:
            return ""
        count = len(self.target.real_images)
        return (
            f"; every FID (plans, reference, floor) is against {count - len(held_out):,} of the {count:,} real images, "
            f"{len(held_out):,} held out for the floor"
        )

    def set_features(self, kind: str) -> torch.Tensor | None:
        """Features of one of the fixed image sets (``feature_store.REFERENCE_SET``, ``HELD_OUT``,
        ``REFERENCE_CALL``, ``ODE``), computed once; None for a held-out set this target does not have."""
        with self._lock:
            if kind not in self._set_features:
                if kind == REFERENCE_SET:
                    images = self.reference_images()[0]
                elif kind == HELD_OUT:
                    held_out = self.held_out_indices()
                    if held_out is None:
                        return None
                    images = self.target.real_images[held_out]
                elif kind == REFERENCE_CALL:
                    images = to_uint8(self._reference_call())
                elif kind == ODE:
                    images = to_uint8(self._ode())
                else:
                    raise ValueError(f"unknown image set {kind!r}")
                self._set_features[kind] = image_features(images, self.target.quality.extractor)
            return self._set_features[kind]

    def keep_features(self, store: FeatureStore, reference_call: bool = True) -> None:
        """Writes the fixed sets' features to a run's store where they are not there yet (or were measured
        another way), so ``plan`` can compare plans from the run folder alone. ``reference_call`` False leaves out
        the sets that need the reference call and ODE images (before the reference was measured)."""
        kinds = (REFERENCE_SET, HELD_OUT, REFERENCE_CALL, ODE) if reference_call else (REFERENCE_SET, HELD_OUT)
        for kind in kinds:
            name = kind_set(kind, self.samples)
            stored = store.get(name)
            if stored is not None and self._matches(stored):
                continue
            features = self.set_features(kind)
            if features is not None:
                store.put(name, features, self.target.quality.extractor, self.seeds.seed)

    def _matches(self, stored: FeatureSet) -> bool:
        return (stored.extractor, stored.seed) == (self.target.quality.extractor, self.seeds.seed)

    def score(self, images: torch.Tensor) -> dict[str, float]:
        return self.score_with_features(images)[0]

    def score_with_features(self, images: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
        """The figures of ``images`` and their per-image FID features (seed order), which a run keeps for the
        paired bootstrap of its comparisons."""
        with self._lock:  # torch-fidelity's reference cache is written on first use
            return self._score(images)

    def _score(self, images: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:

        reference, reference_key = self.reference_images()
        extractor = self.target.quality.extractor
        metrics = distribution_metrics(
            images,
            reference,
            extractor,
            self.cache_dir,
            reference_key,
            cuda=str(execution_device(self.target.denoiser)).startswith("cuda"),
            fid_std_rounds=self.fid_std_rounds,
        )
        metrics["fid_ensemble"] = self._ensemble_fid(to_uint8(images), reference, reference_key)
        ode_images = self._ode()
        metrics["psnr_vs_ode"] = psnr(images, ode_images)
        metrics["ssim_vs_ode"] = ssim(images, ode_images)
        if self._ode_features is None:
            self._ode_features = image_features(to_uint8(ode_images), extractor)
        features = image_features(to_uint8(images), extractor)
        metrics["feature_dist_vs_ode"] = paired_feature_distance(features, self._ode_features)
        adherence = target_adherence(self.target, images, self.seeds.class_labels)
        if adherence is not None:
            metrics["adherence"] = adherence
        metrics.update(self._optional_figures(images, reference))
        return metrics, features

    def _optional_figures(self, images: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """CLIP score, the preference score and Inception FID where configured, each with its interval."""
        options = quality_options(self.target)
        labels = self.seeds.class_labels
        intervals: dict[str, Interval | None] = {}
        if options.clip is not None:
            intervals["clip_score"] = prompt_clip_interval(options.clip, self.target, images, labels)
        if options.preference is not None:
            intervals[PREFERENCE] = prompt_preference(options.preference, self.target, images, labels)
        if options.inception is not None:
            if self._inception_reference is None:
                self._inception_reference = inception_features(options.inception, reference)
            inception = inception_features(options.inception, to_uint8(images))
            paired = self.target.real_images is None  # against the reference call's own images on the same seeds
            # 2048-d features make each round costly (seconds, minutes at thousands of samples): the rounds are
            # quality.fid_std_rounds, as for fid_std, not the report's 500
            bootstrap = PairedBootstrap(
                {"plan": inception.numpy()}, self._inception_reference.numpy(), paired, rounds=self.fid_std_rounds
            )
            intervals["fid_inception"] = bootstrap.interval("plan")
        figures = {}
        for name, interval in intervals.items():
            if interval is not None:
                figures.update({name: interval.value, f"{name}_lo": interval.lo, f"{name}_hi": interval.hi})
        return figures

    def _ensemble_fid(self, images_uint8: torch.Tensor, reference: torch.Tensor, reference_key: str) -> float:
        """FID against the same reference images as ``fid``, averaged over ``ENSEMBLE_SIZE`` seeded random CNNs: a
        second opinion that does not hang on one random feature space (it ranked plans as well as ``fid`` in
        reports/bench/quality.md, within the intervals)."""
        extractors = ensemble_extractors()
        if reference_key not in self._ensemble_reference:
            self._ensemble_reference = {reference_key: [image_features(reference, name) for name in extractors]}
        distances = [
            frechet_distance(image_features(images_uint8, name), reference_features)
            for name, reference_features in zip(extractors, self._ensemble_reference[reference_key])
        ]
        return float(sum(distances) / len(distances))

    def fid_floor(self) -> dict | None:
        """What the real images held out score against the reference set, with its interval: the FID of a perfect
        sampler at this sample count, measured exactly as each plan is (the same set sizes, the same reference
        set). None without real data, or with too few real images to hold any out (``floor_absence`` says why)."""
        with self._lock:
            if self._floor is None and self.held_out_indices() is not None:
                self._floor = held_out_floor(
                    self.set_features(HELD_OUT),
                    self.set_features(REFERENCE_SET),
                    self.target.quality.extractor,
                    stratified=self._stratified(),
                )
            return self._floor

    def floor_absence(self) -> str:
        """Why there is no floor, in words (or "" when there is one)."""
        real = self.target.real_images
        if real is None:
            return (
                "no floor: FID is against the reference call's own images on the same seeds, so a plan identical to it "
                "scores 0; the paired intervals say which differences are noise"
            )
        if self.held_out_indices() is None:
            return (
                f"no floor: {len(real)} real images are fewer than twice quality.samples={self.samples}, too few "
                f"to hold {self.samples} out and score them the way plans are scored; the paired intervals say "
                "which differences are noise"
            )
        return ""

    def _stratified(self) -> bool:
        held_out = self.held_out_indices()
        labels = self.target.real_labels
        return held_out is not None and _class_counts(labels, self.seeds.class_labels, self.samples) is not None

    def deployment_seeds(self, batch_size: int) -> SeedBatch:
        if batch_size > self.samples:
            return make_seed_batch(self.target.sample_shape, batch_size, self.seeds.seed, self.target.condition_count)
        return self.seeds.head(batch_size)


def reference_is_stochastic(target: Target) -> bool:
    """Whether the reference call adds fresh noise at every step (ancestral DDPM): a deterministic plan then cannot
    reproduce its images from the same initial noise, only approach its distribution."""
    spec = parse_reference(target.reference)
    return sampler_adds_noise(spec.solver, target.scheduler_class)


def held_out_split(
    count: int,
    samples: int,
    seed: int,
    real_labels: torch.Tensor | None = None,
    seed_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indices of ``samples`` of ``count`` real images held out for the floor, drawn with ``seed``; empty when
    ``count`` is under twice ``samples`` (too few to leave a reference set as large as the held-out one). With
    ``real_labels`` and the seed batch's ``seed_labels``, each class is held out as often as the seeds ask for it
    (a class-balanced seed batch has no class-count noise, so an unstratified floor would be too high)."""
    if count < 2 * samples:
        return torch.empty(0, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    per_class = _class_counts(real_labels, seed_labels, samples)
    if per_class is None:
        return torch.randperm(count, generator=generator)[:samples].sort().values
    held_out = [members[torch.randperm(len(members), generator=generator)[:wanted]] for members, wanted in per_class]
    return torch.cat(held_out).sort().values


def held_out_floor(held_out: torch.Tensor, reference: torch.Tensor, extractor: str, stratified: bool = False) -> dict:
    """FID of the held-out real images' features against the reference set's, with its bootstrap interval."""
    bootstrap = PairedBootstrap({}, reference.numpy(), False, unpaired={HELD_OUT: held_out.numpy()})
    interval = bootstrap.interval(HELD_OUT)
    samples = len(held_out)
    classes = " (each class as often as the seeds ask for it)" if stratified else ""
    return {
        "fid": interval.value,
        "fid_lo": interval.lo,
        "fid_hi": interval.hi,
        "samples": samples,
        "reference_count": len(reference),
        "method": "real-data held-out split" + (", stratified by class" if stratified else ""),
        "extractor": extractor,
        "sentence": (
            f"a perfect sampler scores FID {interval.text()} at {samples} samples: {samples} real images held out"
            f"{classes}, scored against the other {len(reference):,}, the reference set every plan is scored against. "
            "It is the lowest FID a plan can be expected to show here; which plans differ is what the paired "
            "intervals say."
        ),
    }


def _class_counts(
    real_labels: torch.Tensor | None, seed_labels: torch.Tensor | None, samples: int
) -> list[tuple[torch.Tensor, int]] | None:
    """(indices of the real images of a class, how many the seed batch asks for) per class, or None when the
    labels are missing, do not cover the seeds' classes, or a class has too few images to leave half behind."""
    if real_labels is None or seed_labels is None or len(seed_labels) != samples:
        return None
    wanted = torch.bincount(seed_labels.long().cpu())
    groups = []
    for label, needed in enumerate(wanted.tolist()):
        members = torch.nonzero(real_labels.long().cpu() == label).flatten()
        if needed and len(members) < 2 * needed:
            return None
        if needed:
            groups.append((members, needed))
    return groups
