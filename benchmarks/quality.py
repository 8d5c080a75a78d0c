"""``python -m autoaccel bench quality``: which quality figure should a model without its own data be searched on?

On the embedded digits model FID against all 1,797 real digits, with the features of autoaccel's digit
classifier, is ground truth. About forty varied plans (the standard solvers at 4, 6 and 10 steps, and random
points of ``search_spaces/sampler.yaml``, many of which start below the reference's first timestep or use
guidance) are sampled once on common seeds, and every figure that needs no real data is computed from the same
images: FID against the reference's samples with the generic random-CNN extractor (and averaged over several
random extractors, and with a digits autoencoder's features), FID against the deterministic ODE solution's images,
and the paired figures against that solution (PSNR, SSIM, feature distance). Each figure's Spearman rank
correlation with the ground truth says how well it would steer a search; ``reports/bench/quality.md`` holds the
table, and ``autoaccel.front.objectives.NO_DATA_QUALITY`` names the winner by the judge's name (``JUDGE_FIGURES``).
"""

from __future__ import annotations

import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoaccel.metrics.features import ENSEMBLE_SIZE
from autoaccel.plan.candidate import Candidate
from benchmarks.config import compose_benchmark_config

STUDY_PLANS = 40
STUDY_SAMPLES = 256
STUDY_SEED = 0
PLAN_SEED = 20261201  # draws the random plans
GUIDED_SHARE = 1 / 4  # random plans that also draw a guidance scale (each guided step costs two calls)
BOOTSTRAP_ROUNDS = 2000
# The stochastic reference whose samples the no-data figures compare with: ancestral DDPM like the model's default
# call, on 100 instead of 1000 steps so that the study fits in about 20 minutes on two shared cores.
STUDY_REFERENCE = "ddpm-100"
START_TOLERANCE = 0.01  # a plan "starts where the reference starts" within 1% of the trained range


@dataclass
class PlanResult:
    label: str
    params: dict[str, Any]
    first_step: float
    aligned: bool
    nfe: int
    seconds: float
    figures: dict[str, float] = field(default_factory=dict)


# Candidate figures: name -> (description, direction). "hybrid" is rank-level, defined in ``hybrid_ranks``.
CANDIDATES: dict[str, tuple[str, str]] = {
    "fid_generic_vs_reference": ("FID vs the reference's samples, generic random-CNN features (today)", "minimize"),
    "fid_ensemble_vs_reference": (f"FID vs the reference's samples, mean over {ENSEMBLE_SIZE} random CNNs", "minimize"),
    "fid_vae_vs_reference": ("FID vs the reference's samples, a digits autoencoder's encoder features", "minimize"),
    "fid_generic_vs_ode": ("FID vs the ODE solution's images (same noise), generic features", "minimize"),
    "psnr_vs_ode": ("PSNR to the ODE solution from the same noise", "maximize"),
    "ssim_vs_ode": ("SSIM to the ODE solution from the same noise", "maximize"),
    "feature_dist_vs_ode": ("paired generic-feature distance to the ODE solution", "minimize"),
    "hybrid": ("paired PSNR among plans that start where the reference starts, FID vs reference elsewhere", "minimize"),
    "adherence": ("share of images the digit classifier reads as the requested digit (needs a classifier)", "maximize"),
}


# The judge's metric names for the study's figures on a model without data.
JUDGE_FIGURES = {
    "fid": "fid_generic_vs_reference",
    "fid_ensemble": "fid_ensemble_vs_reference",
    "psnr_vs_ode": "psnr_vs_ode",
    "ssim_vs_ode": "ssim_vs_ode",
    "feature_dist_vs_ode": "feature_dist_vs_ode",
}


def random_plans(space, count: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """``count`` random points of ``space``: uniform (log-uniform where the dimension says so); a share of them
    draws a guidance scale, the others keep the reference's 1.0."""
    from autoaccel.space.spaces import active_params

    rng = np.random.default_rng(seed)
    plans = []
    for index in range(count):
        guided = rng.random() < GUIDED_SHARE

        def pick(dimension, guided=guided):
            if dimension.name == "solver.guidance" and not guided:
                return 1.0
            if dimension.kind == "categorical":
                return dimension.choices[int(rng.integers(len(dimension.choices)))]
            if dimension.kind == "int":
                return int(rng.integers(int(dimension.low), int(dimension.high) + 1))
            if dimension.log:
                return float(math.exp(rng.uniform(math.log(dimension.low), math.log(dimension.high))))
            return float(rng.uniform(dimension.low, dimension.high))

        plans.append((f"random-{index}", space.complete(active_params(space, pick))))
    return plans


def study_plans(space, count: int = STUDY_PLANS, seed: int = PLAN_SEED) -> list[tuple[str, dict[str, Any]]]:
    """The nine standard configurations (DDIM, DPM-Solver++ 2M, UniPC at 4, 6 and 10 steps) and random points."""
    from autoaccel.search.loop import standard_configurations

    standard = [(label, space.complete(params)) for label, params in standard_configurations(space, [4, 6, 10])]
    return standard + random_plans(space, max(0, count - len(standard)), seed)


def first_step(pipeline) -> float:
    """Where a plan starts: its first timestep (DDPM family) or sigma (flow matching)."""
    schedule = pipeline.plan.schedule()
    if schedule:
        return float(schedule[0])
    pipeline.set_schedule(pipeline.denoiser.device)
    return float(pipeline.scheduler.timesteps[0])


def starts_with_reference(plan_start: float, reference_start: float, target) -> bool:
    """Whether a plan's first step is the reference's (within ``START_TOLERANCE`` of the trained range): only
    then do the plan and the ODE solution map the same noise to the same image."""
    span = 1.0 if target.schedule_family == "flow" else float(target.num_train_timesteps)
    return plan_start >= reference_start - START_TOLERANCE * span


def hybrid_ranks(results: list[PlanResult]) -> list[float]:
    """Ranks (1 = best) under the rule "paired PSNR decides among plans that start where the reference starts,
    FID vs the reference places everything else": plans are ranked by FID vs the reference; the aligned plans
    then keep the set of rank positions they hold but are reordered among them by PSNR."""
    from scipy.stats import rankdata

    fid_ranks = rankdata([result.figures["fid_generic_vs_reference"] for result in results])
    aligned = [index for index, result in enumerate(results) if result.aligned]
    positions = sorted(fid_ranks[index] for index in aligned)
    by_psnr = sorted(aligned, key=lambda index: -results[index].figures["psnr_vs_ode"])
    ranks = list(fid_ranks)
    for position, index in zip(positions, by_psnr):
        ranks[index] = position
    return ranks


def oriented(values: list[float], direction: str) -> list[float]:
    """Values turned so that lower is better."""
    return [value if direction == "minimize" else -value for value in values]


def spearman_with_interval(proxy: list[float], truth: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Spearman's rho and a 95% bootstrap interval over plans."""
    from scipy.stats import spearmanr

    proxy_array, truth_array = np.asarray(proxy, dtype=float), np.asarray(truth, dtype=float)
    rho = float(spearmanr(proxy_array, truth_array).statistic)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(BOOTSTRAP_ROUNDS):
        index = rng.integers(0, len(proxy_array), len(proxy_array))
        if len(set(index.tolist())) < 3:
            continue
        value = spearmanr(proxy_array[index], truth_array[index]).statistic
        if np.isfinite(value):
            draws.append(value)
    low, high = np.percentile(draws, [2.5, 97.5]) if draws else (math.nan, math.nan)
    return rho, float(low), float(high)


class FeatureSets:
    """Features of one image set under every extractor the study compares, computed once."""

    def __init__(self, extractors: list[str], vae) -> None:
        self.extractors = extractors
        self.vae = vae

    def of(self, images_uint8: torch.Tensor) -> dict[str, torch.Tensor]:
        from autoaccel.metrics.features import vae_encoder_features
        from autoaccel.metrics.quality import image_features

        features = {name: image_features(images_uint8, name) for name in self.extractors}
        if self.vae is not None:
            upsampled = torch.nn.functional.interpolate(images_uint8.float(), scale_factor=2, mode="nearest")
            features["vae"] = vae_encoder_features(self.vae, upsampled.round().to(torch.uint8))
        return features


def load_digits_vae():
    """The latent digits models' autoencoder (16x16 digits -> 4x4x4), if it is in the package."""
    from autoaccel.targets.digits.weights import WEIGHTS_DIR

    folder = WEIGHTS_DIR / "vae"
    if not (folder / "config.json").exists():
        return None
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(folder).eval().requires_grad_(False)


def digit_adherence(target):
    """The target's own adherence reader, or the digit classifier's argmax for the 8x8 model."""
    if target.metadata.get("adherence") is not None:
        return target.metadata["adherence"]
    from autoaccel.targets.digits.classifier import load_classifier
    from autoaccel.targets.digits.weights import classifier_weights_path

    classifier = load_classifier(classifier_weights_path())

    def predict(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return classifier(images.float().clamp(-1, 1)).argmax(dim=1)

    return predict


def evaluate_plans(config, log=print, count: int = STUDY_PLANS, samples: int = STUDY_SAMPLES, seed: int = STUDY_SEED):
    """Samples every plan once on the judge's seeds and computes all candidate figures and the ground truth."""
    from autoaccel.metrics.adherence import adherence_share
    from autoaccel.metrics.features import GENERIC_EXTRACTOR, seeded_random_extractor
    from autoaccel.metrics.quality import frechet_distance, image_features, paired_feature_distance, psnr, ssim
    from autoaccel.pipeline.seeds import sample_in_chunks
    from autoaccel.reference.sampling import ode_reference_pipeline
    from autoaccel.search.run import describe_reference, evaluator_from_config, load_target
    from autoaccel.space.spaces import load_space
    from autoaccel.util.imaging import to_uint8

    target = load_target(config)
    if target.real_images is None:
        raise SystemExit("the quality study needs a target with real data (the embedded digits model)")
    if target.real_labels is None and target.name == "digits":  # a class-stratified floor, like the seed batch
        from autoaccel.targets.digits.data import load_digits_tensors

        target.real_labels = load_digits_tensors()[1]
    space = load_space("sampler").for_target(target.capabilities, **target.limits)
    evaluator = evaluator_from_config(config, target, space, seed=seed, samples=samples)
    judge = evaluator.judge
    started = time.perf_counter()
    log(f"the ODE solution on {samples} seeds (cached in {judge.cache_dir})")
    ode_images = judge.ode_images()
    log(f"  ready after {time.perf_counter() - started:.0f}s")
    extractors = [seeded_random_extractor(index) for index in range(ENSEMBLE_SIZE)]
    feature_sets = FeatureSets(extractors, load_digits_vae())
    ode_features = feature_sets.of(to_uint8(ode_images))
    truth_extractor = target.quality.extractor
    real_features = image_features(target.real_images, truth_extractor)
    classify = digit_adherence(target)
    reference_start = first_step(ode_reference_pipeline(target))
    results: list[PlanResult] = []
    plan_features: list[dict[str, torch.Tensor]] = []
    for label, params in study_plans(space, count):
        plan_started = time.perf_counter()
        pipeline = evaluator.configured_pipeline(Candidate.from_params(params))
        images = sample_in_chunks(pipeline, judge.seeds, judge.chunk_size)
        start = first_step(pipeline)
        if not torch.isfinite(images).all():
            log(f"  {label}: non-finite images, left out")
            continue
        images_uint8 = to_uint8(images)
        features = feature_sets.of(images_uint8)
        figures = {
            "truth_fid": frechet_distance(image_features(images_uint8, truth_extractor), real_features),
            "fid_generic_vs_ode": frechet_distance(features[GENERIC_EXTRACTOR], ode_features[GENERIC_EXTRACTOR]),
            "psnr_vs_ode": psnr(images, ode_images),
            "ssim_vs_ode": ssim(images, ode_images),
            "feature_dist_vs_ode": paired_feature_distance(
                features[GENERIC_EXTRACTOR], ode_features[GENERIC_EXTRACTOR]
            ),
            "adherence": adherence_share(images, judge.seeds.class_labels, classify),
        }
        result = PlanResult(
            label,
            params,
            start,
            starts_with_reference(start, reference_start, target),
            int(pipeline.denoiser_calls),
            time.perf_counter() - plan_started,
            figures,
        )
        results.append(result)
        plan_features.append(features)
        log(
            f"  {label:<10} nfe {result.nfe:>2}  start {start:>4.0f}  truth FID {figures['truth_fid']:.3f}  "
            f"FID vs ODE {figures['fid_generic_vs_ode']:.3f}  psnr {figures['psnr_vs_ode']:.2f}  "
            f"({result.seconds:.0f}s)"
        )
    log(f"the reference images ({target.reference}) on {samples} seeds (cached in {judge.cache_dir})")
    reference_uint8 = to_uint8(judge.reference_call_images())
    reference_features = feature_sets.of(reference_uint8)
    yardsticks = {
        "reference": frechet_distance(image_features(reference_uint8, truth_extractor), real_features),
        "ode": frechet_distance(image_features(to_uint8(ode_images), truth_extractor), real_features),
    }
    for result, features in zip(results, plan_features):
        result.figures["fid_generic_vs_reference"] = frechet_distance(
            features[GENERIC_EXTRACTOR], reference_features[GENERIC_EXTRACTOR]
        )
        result.figures["fid_ensemble_vs_reference"] = float(
            np.mean([frechet_distance(features[name], reference_features[name]) for name in extractors])
        )
        if "vae" in features:
            result.figures["fid_vae_vs_reference"] = frechet_distance(features["vae"], reference_features["vae"])
    context = {
        "target": target,
        "samples": samples,
        "seed": seed,
        "reference_start": reference_start,
        "seconds": time.perf_counter() - started,
        "reference": describe_reference(target),
        "floor": judge.fid_floor(),
        "floor_absence": judge.floor_absence(),
        "truth_of": yardsticks,
        "machine": machine(),
    }
    return results, context


def correlations(results: list[PlanResult]) -> dict[str, dict[str, Any]]:
    """Spearman's rho of each candidate figure with the ground truth: over all plans, and over the plans that
    start where the reference starts and those that start lower."""
    truth = [result.figures["truth_fid"] for result in results]
    table: dict[str, dict[str, Any]] = {}
    for name, (_, direction) in CANDIDATES.items():
        if name == "hybrid":
            proxy = hybrid_ranks(results)
        elif all(name in result.figures for result in results):
            proxy = oriented([result.figures[name] for result in results], direction)
        else:
            continue
        row = {"all": spearman_with_interval(proxy, truth)}
        median = float(np.median(truth))
        subsets = {
            "aligned": [i for i, result in enumerate(results) if result.aligned],
            "truncated": [i for i, result in enumerate(results) if not result.aligned],
            "better half": [i for i, value in enumerate(truth) if value <= median],
        }
        for subset, index in subsets.items():
            if len(index) >= 5:
                row[subset] = spearman_with_interval([proxy[i] for i in index], [truth[i] for i in index])
        table[name] = row
    return table


def write_report(results: list[PlanResult], context: dict, path: Path) -> Path:
    table = correlations(results)
    no_data = [name for name in table if name != "adherence"]
    best = max(no_data, key=lambda name: table[name]["all"][0])
    target = context["target"]
    aligned = sum(result.aligned for result in results)
    floor = context["floor"]
    floor_text = floor["sentence"] if floor else context.get("floor_absence", "not measured.")
    lines = [
        "# Quality objectives: which figure ranks plans like real-data FID?",
        "",
        f"Generated by `python -m autoaccel bench quality --plans={len(results)} --samples={context['samples']}` "
        f"on the embedded `{target.name}` model (weights "
        f"{target.content_hash[:12]}), {len(results)} plans, {context['samples']} samples each on seed set "
        f"{context['seed']} (the same noise and labels for every plan), plans drawn with seed {PLAN_SEED}. "
        f"Ground truth: {target.quality.description}. Machine: {context.get('machine') or machine()}; "
        f"{context['seconds'] / 60:.1f} min wall time (the ODE solution was cached, the reference images were "
        "made in the run; the machine was shared with other jobs, so the time says little).",
        "",
        f"Reference: {context['reference']}; the ODE solution is "
        f"DPM-Solver++ 2M on 200 steps from the same noise, first timestep {context['reference_start']:.0f}. "
        f"{aligned} plans start there ('aligned'); {len(results) - aligned} start lower ('truncated'). 'Better half': "
        "the plans whose ground-truth FID is at most the median, the region a search's front lives in.",
        "",
        f"FID floor of the ground truth: {floor_text} Real-data FID of the reference's own images "
        f"{context['truth_of']['reference']:.3f}, of the ODE solution {context['truth_of']['ode']:.3f}"
        + (
            ": the ODE solution is itself a worse sampler than the reference here, so a paired figure rewards plans "
            "for converging on it, and plans that beat it (most start below the reference's first timestep) look "
            "worse than they are."
            if context["truth_of"]["ode"] > context["truth_of"]["reference"]
            else "."
        ),
        "",
        "Spearman's rho with real-data FID (both oriented so that higher rho = ranks plans more like the ground "
        "truth); 95% bootstrap interval over plans in brackets.",
        "",
        "| candidate figure | needs | rho, all plans | rho, aligned | rho, truncated | rho, better half |",
        "|---|---|---|---|---|---|",
    ]

    def cell(row: dict, key: str) -> str:
        if key not in row:
            return "-"
        rho, low, high = row[key]
        if not math.isfinite(rho):
            return "-"
        return f"{rho:.3f} [{low:.2f}, {high:.2f}]"

    for name, row in sorted(table.items(), key=lambda item: -item[1]["all"][0]):
        description = CANDIDATES[name][0]
        needs = "a classifier" if name == "adherence" else ("a VAE" if "vae" in name else "nothing")
        lines.append(
            f"| `{name}`: {description} | {needs} | {cell(row, 'all')} | {cell(row, 'aligned')} | "
            f"{cell(row, 'truncated')} | {cell(row, 'better half')} |"
        )
    from autoaccel.front.objectives import NO_DATA_QUALITY

    best_half = max(no_data, key=lambda name: table[name].get("better half", (-2.0,))[0])
    lines += [
        "",
        "Definitions. `hybrid`: plans are ranked by generic FID vs the reference; the aligned plans then keep the "
        "rank positions they hold but are reordered among them by PSNR (paired where pairing is meaningful, "
        "distributional elsewhere). `fid_vae_vs_reference`: this pixel model has no VAE, so the encoder of the "
        "latent digits models' autoencoder (trained on the same digits at 16x16; images upsampled 2x) stands in "
        "for a model's own VAE, 4x4x4 posterior means as features. `feature_dist_vs_ode`: mean per-pair distance "
        "in the generic extractor's features, over the mean distance of unrelated reference pairs.",
        "",
        f"Best figure that needs no data and no classifier, over all plans: `{best}` (rho "
        f"{table[best]['all'][0]:.3f}); among the better half: `{best_half}` (rho "
        f"{table[best_half]['better half'][0]:.3f}). The default quality of a model without data "
        f"(`autoaccel.front.objectives.NO_DATA_QUALITY`) is `{NO_DATA_QUALITY}`, the judge's name for "
        f"`{JUDGE_FIGURES.get(NO_DATA_QUALITY, NO_DATA_QUALITY)}` on a model without data.",
        "",
        "## Per plan",
        "",
        "| plan | NFE | first timestep | truth FID | generic FID vs ref | ensemble FID vs ref | FID vs ODE | "
        "PSNR | SSIM | feature dist | adherence |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in sorted(results, key=lambda result: result.figures["truth_fid"]):
        figures = result.figures
        lines.append(
            f"| {describe_plan(result)} | {result.nfe} | {result.first_step:.0f} | {figures['truth_fid']:.3f} | "
            f"{figures['fid_generic_vs_reference']:.3f} | {figures['fid_ensemble_vs_reference']:.3f} | "
            f"{figures['fid_generic_vs_ode']:.3f} | {figures['psnr_vs_ode']:.2f} | {figures['ssim_vs_ode']:.3f} | "
            f"{figures['feature_dist_vs_ode']:.3f} | {figures['adherence']:.3f} |"
        )
    lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def machine() -> str:
    """The CPU model, core count and library versions: what the study's timings and numerics ran on."""
    import os

    model = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return (
        f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"Python {sys.version.split()[0]}"
    )


def describe_plan(result: PlanResult) -> str:
    params = result.params
    solver = str(params.get("solver.name", ""))
    if params.get("solver.order"):
        solver += f" o{params['solver.order']}"
    guidance = params.get("solver.guidance", 1.0)
    extra = f", cfg {guidance:.2f}" if guidance and guidance != 1.0 else ""
    return f"{result.label}: {params.get('timesteps.family')} x{params.get('timesteps.steps')}, {solver}{extra}"


def save_results(results: list[PlanResult], context: dict, path: Path) -> Path:
    """The per-plan figures and the study's context as JSON, so the report can be rewritten without sampling."""
    import json
    from dataclasses import asdict

    target = context["target"]
    document = {
        "results": [asdict(result) for result in results],
        "context": {key: value for key, value in context.items() if key != "target"},
        "target": {"name": target.name, "content_hash": target.content_hash, "quality": target.quality.description},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, default=str))
    return path


def load_results(path: Path) -> tuple[list[PlanResult], dict]:
    import json
    from types import SimpleNamespace

    document = json.loads(Path(path).read_text())
    results = [PlanResult(**result) for result in document["results"]]
    stored = document["target"]
    target = SimpleNamespace(
        name=stored["name"], content_hash=stored["content_hash"], quality=SimpleNamespace(description=stored["quality"])
    )
    return results, {**document["context"], "target": target}


def run_quality_study(
    overrides: list[str] | None = None, log=print, plans: int = STUDY_PLANS, samples: int = STUDY_SAMPLES
) -> Path:
    overrides = list(overrides or [])
    if not any(override.startswith("target.reference=") for override in overrides):
        overrides.append(f"target.reference={STUDY_REFERENCE}")
    config = compose_benchmark_config(overrides)
    torch.manual_seed(0)
    results, context = evaluate_plans(config, log=log, count=plans, samples=samples)
    saved = save_results(results, context, Path(config.cache_dir) / "bench" / f"quality-n{samples}-p{plans}.json")
    log(f"per-plan figures saved to {saved}")
    path = write_report(results, context, Path(config.bench.dir) / "quality.md")
    log(f"wrote {path}")
    return path


def main(arguments: list[str]) -> None:
    """``--plans=N`` and ``--samples=N`` size the study; every other argument is a configuration override
    (``cache_dir=...``, ``target.reference=...``, ``bench.dir=...``)."""
    if any(argument in ("-h", "--help") for argument in arguments):
        print(
            "usage: python -m autoaccel bench quality [--plans=N] [--samples=N] [--from=FILE.json] [key=value ...]\n\n"
            + __doc__.strip().splitlines()[0]
        )
        return
    options = {"plans": STUDY_PLANS, "samples": STUDY_SAMPLES}
    overrides = []
    for argument in arguments:
        if argument.startswith("--from="):  # rewrite the report from saved figures
            results, context = load_results(Path(argument.partition("=")[2]))
            print(write_report(results, context, Path("reports/bench/quality.md")))
            return
        name, _, value = argument.partition("=")
        if name.lstrip("-") in options and name.startswith("--"):
            options[name.lstrip("-")] = int(value)
        else:
            overrides.append(argument)
    run_quality_study(overrides, plans=options["plans"], samples=options["samples"])


if __name__ == "__main__":
    main(sys.argv[1:])
