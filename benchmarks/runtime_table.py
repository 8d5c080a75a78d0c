"""The runtime benchmark's table (``reports/bench/runtime.md``, one section per target): what each row measured,
and a short "why" for every refused, tied or slower row, read off the measurements (the stage that grew, the
CPU's instruction set for a precision, the FID bound it missed)."""

from __future__ import annotations

from dataclasses import fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from omegaconf import DictConfig

from autoaccel.reference.sampling import describe_reference
from benchmarks.common import mean_std
from benchmarks.config import RuntimeBenchConfig
from benchmarks.quality import machine

# a precision a CPU runs fast only with these instructions (/proc/cpuinfo flags)
PRECISION_FLAGS = {"bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512_fp16", "amx_fp16")}


def cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def command_of(config: DictConfig) -> str:
    """The command that writes this table: the bench.runtime keys (and deployment keys) that differ from the
    defaults."""
    defaults = RuntimeBenchConfig()
    words = ["python -m autoaccel bench runtime"]
    for item in fields(RuntimeBenchConfig):
        value = config.bench.runtime[item.name]
        plain = list(value) if not isinstance(value, str | int | float) else value
        if plain != getattr(defaults, item.name):
            shown = f"[{','.join(str(part) for part in plain)}]" if isinstance(plain, list) else plain
            words.append(f"bench.runtime.{item.name}={shown}")
    if int(config.cost.batch_size) != 16:
        words.append(f"cost.batch_size={config.cost.batch_size}")
    if str(config.target.device) != "auto":
        words.append(f"target.device={config.target.device}")
    if not list(config.bench.runtime.targets):
        words.append(f"target={config.target.name}")
    return " ".join(words)


def fid_ratio(entry: dict, reference: dict) -> tuple[float, float] | None:
    """Row FID over reference FID per seed set, mean and std; None unless both scored on every set."""
    if not entry["fid"] or entry["failures"] or len(entry["fid"]) != len(reference["fid"]):
        return None
    return mean_std([fid / base for fid, base in zip(entry["fid"], reference["fid"])])


def _fid(entry: dict) -> str:
    fid, spread = mean_std(entry["fid"])
    return f"{fid:.2f} ± {spread:.2f}"


def _ratio(entry: dict, reference: dict) -> str:
    ratio = fid_ratio(entry, reference)
    return "" if ratio is None else f"{ratio[0]:.3f} ± {ratio[1]:.3f}"


def _speed(timing: dict | None) -> str:
    if timing is None:
        return ""
    return f"{timing['speedup']:.2f}x ({timing['low']:.2f}-{timing['high']:.2f})"


def _refusal(entry: dict) -> str:
    reasons = "; ".join(dict.fromkeys(entry["failures"])) or "not scored on every seed set"
    return f"refused: {' '.join(reasons.split())}"


def _number(value, digits: int) -> str:
    return "" if value is None else f"{float(value):.{digits}f}"


def _minutes(value) -> str:
    """Training minutes to three significant figures: a small model's seconds of training show, not as 0.00."""
    return "" if value is None else f"{float(value):.3g}"


def why(changes: dict, entry: dict, timing: dict | None, reference: dict, ratio: float, flags: set[str] | None) -> str:
    """Why a row is refused, tied, slower or outside the bound, from what was measured; "passes" otherwise."""
    if timing is None:
        return _refusal(entry)
    notes = []
    measured = fid_ratio(entry, reference)
    if measured[0] > ratio:
        notes.append(f"FID {measured[0]:.3f}x the reference's, above {ratio}x")
    if timing["low"] <= 1.0 <= timing["high"] and timing["low"] < timing["high"]:
        notes.append("a tie: its speed-up interval holds 1")
    elif timing["speedup"] < 1.0:
        stages = timing["stage_ms"]
        base = timing["reference_stage_ms"]
        grown = max(stages, key=lambda stage: stages[stage] - base.get(stage, 0.0), default=None)
        if grown is not None:
            notes.append(f"slower: {grown} {stages[grown]:.1f} ms against the reference's {base.get(grown, 0):.1f} ms")
        needed = PRECISION_FLAGS.get(changes.get("runtime.dtype"), ())
        if flags is not None and needed and not flags & set(needed):
            notes.append(f"this CPU has no {changes['runtime.dtype']} matrix instructions ({' or '.join(needed)})")
    return "; ".join(notes) or "passes"


def _setting_lines(section: dict, ratio: float, flags) -> list[str]:
    reference = section["reference"]
    lines = [
        "| setting | changes | FID | FID / reference | speed-up (IQR) | ms | compile s | decoder train min | why |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    first = next((row["timing"] for row in section["rows"] if row["timing"]), None)
    lines.append(
        f"| reference | {describe_reference(section['target'])}, float32 eager | {_fid(reference)} | 1 | 1 | "
        f"{_number(first and first['reference_ms'], 1)} | | | |"
    )
    for row in section["rows"]:
        entry, timing = row["entry"], row["timing"]
        changes = ", ".join(f"{key}={value}" for key, value in row["changes"].items())
        if timing is None:
            lines.append(f"| {row['label']} | {changes} | refused | | | | | | {_refusal(entry)} |")
            continue
        reason = why(row["changes"], entry, timing, reference, ratio, flags)
        lines.append(
            f"| {row['label']} | {changes} | {_fid(entry)} | {_ratio(entry, reference)} | {_speed(timing)} | "
            f"{timing['latency_ms']:.1f} | {_number(entry.get('compile_seconds'), 1)} | "
            f"{_minutes(entry.get('train_minutes'))} | {reason} |"
        )
    return lines


def _combination_lines(section: dict, ratio: float) -> list[str]:
    reference = section["reference"]
    steps = section["steps"]
    lines = [f"### Best runtime-only plan within {ratio}x the reference's FID", ""]
    if not steps:
        return [
            *lines,
            f"No setting was both within {ratio}x the reference's FID and faster alone: the best "
            "runtime-only plan is the reference itself.",
            "",
        ]
    lines += [
        "Greedy, fastest alone first; each combination timed side by side with the reference and the combination "
        "so far (its speed-up in that timing in the last column).",
        "",
        "| combination | FID | FID / reference | speed-up (IQR) | so far | compile s | decoder train min | decision |",
        "|---|---|---|---|---|---|---|---|",
        *_step_rows(steps, reference),
    ]
    kept = [step for step in steps if step["kept"]]
    best = kept[-1]
    lines += [
        "",
        f"Best runtime-only plan: **{best['label']}**, {_speed(best['timing'])} at FID "
        f"{_ratio(best['entry'], reference)}x the reference's.",
        "",
    ]
    return lines


def _step_rows(steps: list[dict], reference: dict) -> list[str]:
    """One row per step of a greedy combination: its figures, its speed-up beside the combination so far, and
    the decision."""
    rows = []
    for step in steps:
        entry, timing = step["entry"], step["timing"]
        if entry is None or timing is None:
            rows.append(f"| {step['label']} | | | | | | | {step['decision']} |")
            continue
        rows.append(
            f"| {step['label']} | {_fid(entry)} | {_ratio(entry, reference)} | {_speed(timing)} | "
            f"{_speed(step.get('best_timing'))} | {_number(entry.get('compile_seconds'), 1)} | "
            f"{_minutes(entry.get('train_minutes'))} | {step['decision']} |"
        )
    return rows


def _own_combination_lines(section: dict) -> list[str]:
    """The fastest eager plans' own greedy runtime combinations, step by step."""
    reference = section["reference"]
    lines = []
    for result in section.get("own", []):
        lines += [
            f"#### {result['plan']}'s own runtime combination (the fastest plan in float32 eager within "
            f"{result['bound']}x the reference's FID)",
            "",
            "Settings within the runtime bound alone and not slower alone, fastest first; each combination timed "
            "side by side with the reference and the combination so far; kept when the plan stays within "
            f"{result['bound']}x and gets faster.",
            "",
            "| combination | FID | FID / reference | speed-up (IQR) | so far | compile s | train min | decision |",
            "|---|---|---|---|---|---|---|---|",
            *_step_rows(result["steps"], reference),
        ]
        if result["final_timing"] is not None:
            lines += [
                "",
                f"Timed once more beside the plan in float32 eager: {_speed(result['eager_timing'])} eager, "
                f"{_speed(result['final_timing'])} under its own combination.",
            ]
        lines.append("")
    return lines


def _plan_lines(section: dict) -> list[str]:
    reference = section["reference"]
    combination = ", ".join(f"{key}={value}" for key, value in section["best_changes"].items()) or "none"
    lines = [
        "### Whole plans: sampler plans in float32 eager and under the runtime combination",
        "",
        f"Runtime combination: {combination}. All rows of this table timed side by side in one group.",
        "",
        "| plan | runtime | FID | FID / reference | speed-up (IQR) | ms | compile s | train min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for plan in section["plans"]:
        for form in ("eager", "runtime"):
            entry, timing = plan[form], plan[f"{form}_timing"]
            if entry is None:
                continue
            words = "float32 eager" if form == "eager" else "combination"
            if timing is None:
                lines.append(f"| {plan['label']} | {words} | {_refusal(entry)} | | | | | |")
                continue
            lines.append(
                f"| {plan['label']} | {words} | {_fid(entry)} | {_ratio(entry, reference)} | {_speed(timing)} | "
                f"{timing['latency_ms']:.1f} | {_number(entry.get('compile_seconds'), 1)} | "
                f"{_minutes(entry.get('train_minutes'))} |"
            )
    lines.append("")
    lines += _own_combination_lines(section)
    for bound, best in section["best"].items():
        if best is None:
            lines.append(f"- Best whole plan within {bound}x the reference's FID: none stays within it.")
            continue
        form = {
            "eager": "float32 eager",
            "runtime": "under the combination",
            "own": "under its own combination ("
            + ", ".join(f"{key}={value}" for key, value in best.get("changes", {}).items())
            + ")",
        }[best["form"]]
        lines.append(
            f"- Best whole plan within {bound}x the reference's FID: **{best['label']}, {form}**, "
            f"{best['timing']['speedup']:.2f}x = {best['algorithmic']:.2f}x algorithmic (reference / the plan in "
            f"float32 eager) x {best['runtime']:.2f}x runtime (the plan in float32 eager / as deployed), "
            f"FID {_ratio(best['entry'], reference)}x."
        )
    return [*lines, ""]


def section_lines(section: dict, flags: set[str] | None) -> list[str]:
    config = section["config"]
    target = section["target"]
    reference = section["reference"]
    ratio = float(config.bench.runtime.quality_ratio)
    lines = [
        f"## {target.name}",
        "",
        f"Reference: {describe_reference(target)}, float32 eager (weights {target.content_hash[:12]}). Quality: "
        f"{target.quality.description}.",
        "",
    ]
    if "rows" not in section:
        return [*lines, f"The reference call failed ({_refusal(reference)}): nothing to compare with.", ""]
    lines += ["### Each setting alone at the default call", "", *_setting_lines(section, ratio, flags), ""]
    lines += _combination_lines(section, ratio)
    lines += _plan_lines(section)
    return lines


def write_runtime_table(config: DictConfig, sections: list[dict], pending: list[str]) -> Path:
    settings = config.bench.runtime
    device = str(sections[0]["target"].denoiser.device)
    flags = cpu_flags() if device == "cpu" else None
    lines = [
        "# Runtime benchmark: deployment settings against the reference call",
        "",
        f"Generated by `{command_of(config)}` on {machine()}, torchao {_version('torchao')}, diffusers "
        f"{_version('diffusers')}, device {device}. One section per target. Every row scores "
        f"{settings.samples} images on each of the seed sets {list(settings.seed_sets)}: FID mean ± std over them; "
        "FID / reference is the row's FID over the reference's on the same seed set, mean ± std. Speed-up: the "
        "reference's median latency over the row's, whole pipeline calls (text encoding, every step, the decode) "
        f"at batch {config.cost.batch_size}, each group of rows timed side by side with the reference, one call of "
        f"each in turn, {config.bench.latency_repeats} times after a warm-up call; in brackets the quartiles of "
        "the per-repeat ratios (a tie where they hold 1). Search cost, per row: compile s is the seconds "
        "torch.compile spent (paid once, in the warm-up calls), decoder train min the minutes the tiny decoder "
        "(or a student) trained. A row a model or machine refuses says why.",
        "",
    ]
    for section in sections:
        lines += section_lines(section, flags)
    if pending:
        lines += [f"Not yet measured (the run stopped or is still going): {', '.join(pending)}.", ""]
    path = Path(config.bench.dir) / str(settings.get("file") or "runtime.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
