"""The fixed yardsticks every candidate of a run is scored against, computed once and cached on disk.

- seeds: the common initial noise and class labels;
- the reference: the pipeline's default call (e.g. 1000-step DDPM for a DDPMPipeline, 50 steps with guidance
  for Stable Diffusion) or the one ``target.reference`` names, on those seeds: the report's reference row and,
  for a model without its own data, the FID reference;
- the ODE reference: a deterministic many-step DPM-Solver++ solution from the same noise, against which each
  candidate image is compared pair by pair (PSNR, SSIM, feature distance; a stochastic DDPM sample cannot be
  matched image by image);
- the FID floor: what two independent reference sets of the judge's sample count score against each other, below
  which FID differences are sampling noise.

Optional figures (``configure_quality``): CLIP score with a local CLIP model, Inception FID with local weights;
adherence wherever the target carries a classifier of its domain.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from autoaccel.files import write_atomically
from autoaccel.measure.adherence import target_adherence
from autoaccel.measure.quality import (
    distribution_metrics,
    frechet_distance,
    image_features,
    kernel_distance,
    paired_feature_distance,
    psnr,
    ssim,
    tensor_digest,
)
from autoaccel.progress import Progress
from autoaccel.seeds import SeedBatch, make_seed_batch, sample_in_chunks
from autoaccel.targets.base import Target
from autoaccel.teacher import ODE_REFERENCE_STEPS, ode_reference_pipeline, teacher_pipeline

QUALITY_OPTIONS_KEY = "quality_options"  # target.metadata: the QualityOptions every judge of the target uses
FLOOR_SEED_OFFSET = 1_000_003  # the second reference set of a teacher-samples floor is drawn on seed + this
FLOOR_SPLITS = 5  # real-data floors: random held-out splits averaged


@dataclass
class QualityOptions:
    """Figures beyond the default ones, each needing local weights: ``clip`` (a ``ClipScorer``) gives
    ``clip_score`` on text-to-image targets, ``inception`` (torch-fidelity's Inception-v3) gives ``fid_inception``
    against the same reference images as ``fid``."""

    clip: object | None = None
    inception: object | None = None
    inception_weights: str | None = None


def configure_quality(target: Target, clip_model: str | None = None, inception_weights: str | None = None) -> None:
    """Loads the optional scorers ``quality.clip_model`` and ``quality.inception_weights`` name (None: not used)
    and attaches them to ``target``, so every judge of it, at any sample count, scores them. A path that does not
    hold what it should is a one-line ConfigError naming it. The figures mean something only with real weights."""
    options = QualityOptions()
    if clip_model:
        from autoaccel.measure.clip_score import load_clip_scorer

        options.clip = load_clip_scorer(clip_model)
        options.clip.model.to(next(target.denoiser.parameters()).device)
    if inception_weights:
        from autoaccel.measure.quality import load_inception

        options.inception = load_inception(str(inception_weights))
        options.inception_weights = str(inception_weights)
    target.metadata[QUALITY_OPTIONS_KEY] = options


def quality_options(target: Target) -> QualityOptions:
    return target.metadata.get(QUALITY_OPTIONS_KEY) or QualityOptions()


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
        self._teacher_images: torch.Tensor | None = None
        self._ode_images: torch.Tensor | None = None
        self._ode_features: torch.Tensor | None = None
        self._inception_reference: torch.Tensor | None = None
        self._ensemble_reference: dict[str, list[torch.Tensor]] = {}
        self._floor: dict | None = None
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

    def teacher_images(self) -> torch.Tensor:
        with self._lock:
            return self._teacher()

    def _teacher(self) -> torch.Tensor:
        if self._teacher_images is None:
            self._teacher_images = self._cached(
                f"reference-{self.target.reference}",
                lambda: sample_in_chunks(
                    teacher_pipeline(self.target), self.seeds, self.chunk_size, self._progress("reference")
                ),
            )
        return self._teacher_images

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
        """uint8 reference images for FID and a cache key naming them."""
        from autoaccel.imaging import to_uint8

        if self.target.real_images is not None:
            real = self.target.real_images
            return real, f"real-{tensor_digest(real)}"
        teacher = to_uint8(self.teacher_images())
        return teacher, f"teacher-{tensor_digest(teacher)}"

    def score(self, images: torch.Tensor) -> dict[str, float]:
        with self._lock:  # torch-fidelity's reference cache is written on first use
            return self._score(images)

    def _score(self, images: torch.Tensor) -> dict[str, float]:
        from autoaccel.imaging import to_uint8

        reference, reference_key = self.reference_images()
        extractor = self.target.quality.extractor
        metrics = distribution_metrics(
            images,
            reference,
            extractor,
            self.cache_dir,
            reference_key,
            cuda=str(self.target.denoiser.device).startswith("cuda"),
            fid_std_rounds=self.fid_std_rounds,
        )
        metrics["fid_ensemble"] = self._ensemble_fid(to_uint8(images), reference, reference_key)
        ode_images = self._ode()
        metrics["psnr_vs_ode"] = psnr(images, ode_images)
        metrics["ssim_vs_ode"] = ssim(images, ode_images)
        if self._ode_features is None:
            self._ode_features = image_features(to_uint8(ode_images), extractor)
        metrics["feature_dist_vs_ode"] = paired_feature_distance(
            image_features(to_uint8(images), extractor), self._ode_features
        )
        adherence = target_adherence(self.target, images, self.seeds.class_labels)
        if adherence is not None:
            metrics["adherence"] = adherence
        options = quality_options(self.target)
        if options.clip is not None:
            from autoaccel.measure.clip_score import prompt_clip_score

            clip = prompt_clip_score(options.clip, self.target, images, self.seeds.class_labels)
            if clip is not None:
                metrics["clip_score"] = clip
        if options.inception is not None:
            from autoaccel.measure.quality import inception_features

            if self._inception_reference is None:
                self._inception_reference = inception_features(options.inception, reference)
            features = inception_features(options.inception, to_uint8(images))
            metrics["fid_inception"] = frechet_distance(features, self._inception_reference)
        return metrics

    def _ensemble_fid(self, images_uint8: torch.Tensor, reference: torch.Tensor, reference_key: str) -> float:
        """FID against the same reference images as ``fid``, averaged over ``ENSEMBLE_SIZE`` seeded random CNNs: a
        second opinion that does not hang on one random feature space (it ranked plans as well as ``fid`` in
        reports/bench/quality.md, within the intervals)."""
        from autoaccel.measure.features import ensemble_extractors

        extractors = ensemble_extractors()
        if reference_key not in self._ensemble_reference:
            self._ensemble_reference = {reference_key: [image_features(reference, name) for name in extractors]}
        distances = [
            frechet_distance(image_features(images_uint8, name), reference_features)
            for name, reference_features in zip(extractors, self._ensemble_reference[reference_key])
        ]
        return float(sum(distances) / len(distances))

    def fid_floor(self) -> dict:
        """FID and KID between two independent reference sets of this judge's sample count, cached on disk: FID
        differences below it are sampling noise at this many samples. See ``fid_floor_of`` for how each kind of
        reference is split."""
        with self._lock:
            if self._floor is None:
                self._floor = self._cached_floor()
            return self._floor

    def has_floor(self) -> bool:
        """Whether ``fid_floor`` is already measured (in memory or on disk), so asking for it costs nothing."""
        return self._floor is not None or self._floor_path().exists()

    def _floor_path(self) -> Path:
        _, reference_key = self.reference_images()
        labels = "" if self.target.real_labels is None else tensor_digest(self.target.real_labels)
        key = f"{self._key('floor', self.seeds.seed)}-{self.target.quality.extractor}-{reference_key}-{labels}"
        return self.cache_dir / "floors" / f"{hashlib.sha1(key.encode()).hexdigest()[:24]}.json"

    def _cached_floor(self) -> dict:
        reference, _ = self.reference_images()
        extractor = self.target.quality.extractor
        path = self._floor_path()
        if path.exists():
            return json.loads(path.read_text())
        if self.target.real_images is not None:
            floor = real_data_floor(
                reference,
                self.samples,
                extractor,
                self.seeds.seed,
                real_labels=self.target.real_labels,
                seed_labels=self.seeds.class_labels,
            )
        else:
            floor = teacher_samples_floor(reference, self._second_reference_set(), extractor)
        write_atomically(path, lambda temporary: Path(temporary).write_text(json.dumps(floor, indent=2) + "\n"))
        return floor

    def _second_reference_set(self) -> torch.Tensor:
        """The reference call on another seed set of the same size (as costly as the first; cached)."""
        from autoaccel.imaging import to_uint8

        seed = self.seeds.seed + FLOOR_SEED_OFFSET
        seeds = make_seed_batch(self.target.sample_shape, self.samples, seed, self.target.condition_count)
        images = self._cached(
            f"reference-{self.target.reference}",
            lambda: sample_in_chunks(
                teacher_pipeline(self.target), seeds, self.chunk_size, self._progress("second reference set (floor)")
            ),
            seed=seed,
        )
        return to_uint8(images)

    def deployment_seeds(self, batch_size: int) -> SeedBatch:
        if batch_size > self.samples:
            return make_seed_batch(self.target.sample_shape, batch_size, self.seeds.seed, self.target.condition_count)
        return self.seeds.head(batch_size)


def floor_sentence(fid: float, samples: int, how: str) -> str:
    return f"FID below {fid:.3g} cannot tell plans apart at {samples} samples ({how})."


def real_data_floor(
    real_uint8: torch.Tensor,
    samples: int,
    extractor: str,
    seed: int,
    real_labels: torch.Tensor | None = None,
    seed_labels: torch.Tensor | None = None,
) -> dict:
    """A perfect sampler's FID at ``samples`` images: ``samples`` real images held out at random, scored against
    the other real images (disjoint sets; the reference is nearly the whole set candidates face), averaged over
    ``FLOOR_SPLITS`` splits. With ``real_labels`` and the seed batch's ``seed_labels``, the held-out images take
    each class as often as the seeds do (a class-balanced seed batch has no class-count noise, so an unstratified
    floor would be too high). With fewer than twice ``samples`` real images, the held-out set is drawn with
    replacement and scored against all of them: the sets then share images and the floor is optimistic."""
    features = image_features(real_uint8, extractor)
    count = len(features)
    disjoint = count >= 2 * samples
    per_class = _class_counts(real_labels, seed_labels, samples) if disjoint else None
    fids, kids = [], []
    for split in range(FLOOR_SPLITS):
        generator = torch.Generator().manual_seed(seed * 1_000 + split)
        if not disjoint:
            held_out = torch.randint(0, count, (samples,), generator=generator)
        elif per_class is None:
            held_out = torch.randperm(count, generator=generator)[:samples]
        else:
            held_out = torch.cat(
                [members[torch.randperm(len(members), generator=generator)[:wanted]] for members, wanted in per_class]
            )
        rest = features
        if disjoint:
            keep = torch.ones(count, dtype=torch.bool)
            keep[held_out] = False
            rest = features[keep]
        fids.append(frechet_distance(features[held_out], rest))
        kids.append(kernel_distance(features[held_out], rest))
    fid, kid = torch.tensor(fids), torch.tensor(kids)
    stratified = " (each class as often as in the seed batch)" if per_class is not None else ""
    if disjoint:
        how = (
            f"{samples} real images held out at random{stratified} score FID {fid.mean():.3g} ± {fid.std():.2g} "
            f"against the other {count - samples}, over {FLOOR_SPLITS} splits"
        )
    else:
        how = (
            f"only {count} real images, fewer than twice {samples}: {samples} drawn with replacement score FID "
            f"{fid.mean():.3g} ± {fid.std():.2g} against all of them, sets that share images, so the true floor is "
            "higher"
        )
    method = "real-data with replacement"
    if disjoint:
        method = "real-data held-out split" + (", stratified by class" if per_class is not None else "")
    return {
        "fid": float(fid.mean()),
        "fid_std": float(fid.std()),
        "kid": float(kid.mean()),
        "kid_std": float(kid.std()),
        "samples": samples,
        "reference_count": count,
        "method": method,
        "extractor": extractor,
        "sentence": floor_sentence(float(fid.mean()), samples, how),
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


def teacher_samples_floor(reference_uint8: torch.Tensor, second_uint8: torch.Tensor, extractor: str) -> dict:
    """The reference call's own FID on a second seed set against the reference images candidates are scored
    against: what a plan identical to the reference would score."""
    from autoaccel.measure.features import to_unit_range
    from autoaccel.measure.quality import fid_bootstrap_std

    second = image_features(second_uint8, extractor)
    reference = image_features(reference_uint8, extractor)
    fid = frechet_distance(second, reference)
    spread = fid_bootstrap_std(
        to_unit_range(second_uint8), reference_uint8, extractor, f"floor-{tensor_digest(reference_uint8)}"
    )
    samples = len(second_uint8)
    how = (
        f"the reference call on another seed set of {samples} scores FID {fid:.3g} (bootstrap std {spread:.2g}) "
        f"against the reference images of the run's seeds"
    )
    return {
        "fid": fid,
        "fid_std": spread,
        "kid": kernel_distance(second, reference),
        "kid_std": None,  # one pair of sets: no spread over subsets
        "samples": samples,
        "reference_count": len(reference_uint8),
        "method": "teacher samples on a second seed set",
        "extractor": extractor,
        "sentence": floor_sentence(fid, samples, how),
    }
