"""``python -m autoaccel bench schedules``: found plans vs standard solvers vs the 1000-step reference call.

For each NFE: a search over schedules and solvers with the step count fixed (no guidance, so NFE = steps),
scored on the search seeds; then the best found plan, uniform DDIM, DPM-Solver++ 2M, UniPC and the reference
are all re-scored on fresh seed sets, so the winner's FID is not the luck of the seeds it was picked on.
Latencies are measured side by side in this one process and given as ratios to the reference's.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from autoaccel.measure.reference import QualityJudge
from autoaccel.plan.candidate import Candidate
from autoaccel.search.loop import standard_configurations
from autoaccel.space.spaces import load_space
from autoaccel.util.resources import resource_dir
from benchmarks.common import mean_std, one_level_unless

SOLVERS_AT_ONE_CALL_PER_STEP = ["ddim", "dpmsolver++", "dpmsolver_single", "unipc", "deis", "euler", "ddpm"]


def fixed_nfe_space(nfe: int, folder: Path) -> Path:
    """The sampler space with the step count pinned to ``nfe`` and one unet call per step."""
    document = yaml.safe_load((resource_dir("search_spaces") / "sampler.yaml").read_text())
    document["name"] = f"sampler-nfe{nfe}"
    document["dimensions"]["timesteps.steps"] = {"type": "int", "low": nfe, "high": nfe}
    document["dimensions"]["solver.name"]["choices"] = SOLVERS_AT_ONE_CALL_PER_STEP
    document["dimensions"].pop("solver.guidance", None)
    document.setdefault("fixed", {})["solver.guidance"] = 1.0
    path = folder / f"sampler-nfe{nfe}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def run_schedules_benchmark(config: DictConfig, log=print) -> Path:
    """The embedded digits model against its 1000-step sampler (this module); any other target against its
    pipeline's default call (``benchmarks.default_call``)."""
    if str(config.target.name) != "digits":
        from benchmarks.default_call import run_default_call_benchmark

        return run_default_call_benchmark(config, log)
    from autoaccel.cli.search_command import search
    from autoaccel.config import compose_config
    from autoaccel.search.run import evaluator_from_config, load_target

    bench_dir = Path(config.bench.dir)
    runs_dir = bench_dir / "runs"
    target = load_target(config)
    found: dict[int, tuple[str, dict]] = {}
    for nfe in config.bench.nfes:
        space_path = fixed_nfe_space(int(nfe), runs_dir / "spaces")
        run_config = compose_config(
            [
                f"space={space_path.resolve()}",
                f"study_name=bench-schedules-nfe{nfe}",
                f"report.dir={runs_dir}",
                f"budget.trials={config.bench.trials}",
                f"budget.warm_start_steps=[{nfe}]",
                f"quality.samples={config.quality.samples}",
                f"quality.seed={config.quality.seed}",
                f"target.device={config.target.device}",
                f"cost.batch_size={config.cost.batch_size}",
                f"seed={config.seed}",
                f"optimizer={config.optimizer.name}",
                *one_level_unless([]),
            ]
        )
        log(f"== NFE {nfe}: searching ({config.bench.trials} trials on seed {config.quality.seed})")
        search(run_config, log=log)
        from autoaccel.search.run import open_run

        context = open_run(runs_dir / f"bench-schedules-nfe{nfe}")
        trials = context.ledger.trials_frame()
        complete = trials[trials["state"] == "COMPLETE"].sort_values("fid")
        best_trial = context.ledger.trial(int(complete.iloc[0]["trial"]))
        found[int(nfe)] = (f"found (trial {best_trial.number})", best_trial.user_attrs["candidate"])

    sampler_space = load_space("sampler").for_target(target.capabilities)
    cost_cache: dict = {}
    rows: dict[tuple[int, str], dict] = {}
    reference_rows = []
    floor_fids = []
    for seed in config.bench.confirm_seeds:
        evaluator = evaluator_from_config(config, target, sampler_space, seed=int(seed))
        judge = evaluator.judge
        evaluator.cost_cache = cost_cache
        log(f"== confirming on seed set {seed}")
        reference = evaluator.evaluate_reference()
        reference_rows.append({**reference.metrics, "device": reference.details.get("device")})
        if (floor := real_data_floor(judge)) is not None:
            floor_fids.append(floor)
        for nfe in config.bench.nfes:
            configurations = [
                (label, sampler_space.complete(params))
                for label, params in standard_configurations(sampler_space, [int(nfe)])
            ]
            configurations.append(found[int(nfe)])
            for label, params in configurations:
                measurement = evaluator.evaluate(Candidate.from_params(params))
                entry = rows.setdefault(
                    (int(nfe), label),
                    {
                        "fid": [],
                        "kid": [],
                        "precision": [],
                        "recall": [],
                        "latency_ms": [],
                        "failures": [],
                        "params": params,
                        "timesteps": None,
                    },
                )
                if measurement.ok:
                    for key in ("fid", "kid", "precision", "recall", "latency_ms"):
                        entry[key].append(measurement.metrics[key])
                    entry["timesteps"] = measurement.details.get("timesteps")
                else:
                    entry["failures"].append(measurement.failure)
                log(
                    f"   nfe {nfe} {label}: "
                    + (f"fid {measurement.metrics['fid']:.3f}" if measurement.ok else f"FAILED {measurement.failure}")
                )
    return write_table(config, bench_dir, rows, reference_rows, floor_fids, target)


def real_data_floor(judge: QualityJudge) -> float | None:
    """What a perfect sampler scores at this sample count: as many real images as candidates get, held out and
    scored against the reference set the candidates are scored against (``QualityJudge.fid_floor``)."""
    floor = judge.fid_floor()
    return None if floor is None else floor["fid"]


def write_table(
    config, bench_dir: Path, rows: dict, reference_rows: list[dict], floor_fids: list[float], target
) -> Path:
    reference_fid, reference_fid_std = mean_std([row["fid"] for row in reference_rows])
    reference_latency = statistics.median(row["latency_ms"] for row in reference_rows)
    seeds = list(config.bench.confirm_seeds)
    lines = [
        "# Schedules benchmark: found plans vs standard solvers vs the reference",
        "",
        f"Generated by `python -m autoaccel bench schedules` on the embedded `{target.name}` model "
        f"(weights {target.content_hash[:12]}). Quality: {target.quality.description}; "
        f"{config.quality.samples} samples per seed set, FID mean ± std over seed sets {seeds} "
        f"(the search itself scored candidates on seed set {config.quality.seed} only). "
        f"Latency: median of {config.cost.repeats} calls at batch {config.cost.batch_size} on "
        f"{reference_rows[0].get('device', 'this machine') if reference_rows else 'this machine'}, "
        "measured side by side in one run, given as a ratio to the reference's.",
        "",
        "| NFE | plan | FID | KID ×1e3 | precision | recall | latency / reference | timesteps | solver |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| 1000 | reference (DDPM, all steps) | {reference_fid:.2f} ± {reference_fid_std:.2f} | "
        f"{statistics.fmean(r['kid'] for r in reference_rows) * 1e3:.2f} | "
        f"{statistics.fmean(r['precision'] for r in reference_rows):.3f} | "
        f"{statistics.fmean(r['recall'] for r in reference_rows):.3f} | 1 | all | DDPM |",
    ]
    if floor_fids:
        floor, floor_std = mean_std(floor_fids)
        lines.append(
            f"| - | real digits ({config.quality.samples} held out per seed set) | {floor:.2f} ± {floor_std:.2f} "
            "| | | | | | |"
        )
    verdicts = []
    for nfe in config.bench.nfes:
        nfe_rows = {label: entry for (row_nfe, label), entry in rows.items() if row_nfe == int(nfe)}
        standard_fids = {}
        found_fid = None
        for label, entry in nfe_rows.items():
            if not entry["fid"]:
                lines.append(f"| {nfe} | {label} | failed: {entry['failures'][0]} | | | | | | |")
                continue
            fid, fid_std = mean_std(entry["fid"])
            if label.startswith("found"):
                found_fid = fid
            else:
                standard_fids[label] = fid
            params = entry["params"]
            solver = params.get("solver.name", "")
            if params.get("solver.order"):
                solver += f" (order {params['solver.order']})"
            lines.append(
                f"| {nfe} | {label} | {fid:.2f} ± {fid_std:.2f} | {statistics.fmean(entry['kid']) * 1e3:.2f} | "
                f"{statistics.fmean(entry['precision']):.3f} | {statistics.fmean(entry['recall']):.3f} | "
                f"{statistics.median(entry['latency_ms']) / reference_latency:.4f} | {entry['timesteps']} | {solver} |"
            )
        if found_fid is not None and standard_fids:
            best_label = min(standard_fids, key=standard_fids.get)
            verdicts.append(
                f"- NFE {nfe}: found plan FID {found_fid:.2f} = {found_fid / standard_fids[best_label]:.2f}x the best "
                f"standard configuration ({best_label}, {standard_fids[best_label]:.2f}) and "
                f"{found_fid / reference_fid:.2f}x the 1000-step reference ({reference_fid:.2f}), at "
                f"{1000 / int(nfe):.0f}x fewer steps."
            )
    lines += [
        "",
        "## Summary",
        "",
        *verdicts,
        "",
        "FID here is computed with autoaccel's digit-classifier features at a fixed sample count: compare "
        "rows with each other, not with Inception FIDs published elsewhere.",
        "",
    ]
    bench_dir.mkdir(parents=True, exist_ok=True)
    path = bench_dir / "schedules.md"
    path.write_text("\n".join(lines))
    (bench_dir / "schedules.config.yaml").write_text(OmegaConf.to_yaml(config))
    return path
