"""What ``search --help`` and ``workers --help`` print: the main keys with their defaults (read
from the schema, so the text cannot drift from the code) and what each command does."""

from __future__ import annotations

# The main overrides of ``search`` and ``workers`` (every key: conf/config.yaml); defaults come from the schema.
MAIN_KEYS = (
    ("target, target.path, target.device", None, "digits (embedded) or pipeline (a diffusers folder); auto/cpu/cuda"),
    ("target.dtype, target.offload", None, "precision the weights are read in; none, model or sequential offload"),
    ("space", "auto", "a bundled space (sampler, guided_sampler, flow_sampler, timesteps, ...) or a YAML path"),
    ("optimizer, optimizer.population_size", None, "a backend of conf/optimizer/; the population of NSGA/SMS-EMOA"),
    ("objectives", None, "metrics to optimise; the first is the quality axis"),
    ("budget.trials", None, "trials in the study, standard configurations included"),
    ("budget.concurrent", None, "candidates evaluated at once (cost is always measured alone)"),
    ("budget.max_minutes, budget.max_latency_ms, budget.max_nfe", None, "time budget and deployment limits"),
    ("budget.max_train_minutes", None, "cap on one candidate's training (distillation, recovery); longer fails it"),
    ("budget.max_memory_mb, budget.max_bytes", None, "more deployment limits"),
    ("budget.max_fid, budget.max_fid_ratio, budget.min_psnr", None, "quality limits (ratio: to the reference's FID)"),
    ("budget.min_adherence", None, "share (0-1) of images read as their requested class (embedded digit models)"),
    ("budget.min_recall", None, "recall of the images against the real ones, 0-1: the diversity a plan keeps"),
    ("budget.min_pickscore", None, "PickScore of the images for their prompts (needs quality.preference_model)"),
    ("quality.clip_model, quality.preference_model", None, "CLIP and PickScore models: hub ids or local folders"),
    ("quality.inception_weights", None, "auto (downloaded by torch-fidelity) or a weights file: fid_inception"),
    ("quality.samples, quality.seed", None, "images per candidate and the seed fixing their noise and labels"),
    ("fidelity.levels, fidelity.z", None, "multi-fidelity sample counts (null: a ladder past an hour; [] one level)"),
    ("fidelity.train_shares", None, "share of each candidate's training done per level; promoted ones continue"),
    ("cost.batch_size, cost.warmup, cost.repeats", None, "how latency is measured"),
    ("cost.confirm", None, "time the front's plans again side by side before the report"),
    ("study_name, storage", "<target>-<space>, SQLite in the run folder", "the ledger; the same name resumes"),
    ("report.dir, report.grid_images", None, "where runs go (<report.dir>/<study_name>/), images per grid"),
    ("report.wandb", None, "also log the run to W&B"),
    ("cache_dir", "$AUTOACCEL_CACHE_DIR or ~/.cache/autoaccel", "cached reference samples and FID statistics"),
)


def _schema_default(key: str, root) -> str:
    """A key's default as a user would type it, from the schema dataclasses under ``root`` (no Hydra composition)."""
    value = root
    for part in key.split("."):
        value = getattr(value, part)
    if not isinstance(value, str) and hasattr(value, "name"):  # a group (target, optimizer) is named by its name
        value = value.name
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return f"[{', '.join(map(str, value))}]"
    return str(value)


def key_table(rows, root=None) -> str:
    """Rows of key, default, meaning, aligned like the README's Configuration table; defaults are read from ``root``
    (a schema instance; the search schema's when None)."""
    from autoaccel.config.schema import AutoaccelConfig

    root = AutoaccelConfig() if root is None else root
    lines = []
    for keys, default, meaning in rows:
        shown = default or ", ".join(_schema_default(key, root) for key in keys.split(", "))
        lines.append(f"  {keys}\n      {meaning} (default {shown})")
    return "\n".join(lines)


def search_help(command: str) -> str:
    if command == "workers":
        usage = "python -m autoaccel workers N storage=URL [key=value ...]"
        what = (
            "Starts N search processes on one shared study (one per GPU where there are GPUs), then builds its\n"
            "report once. storage must be shared by several processes (postgresql://...), not SQLite. N is at\n"
            "most max(4, CPU cores), 2 per GPU, and what the database's free connections allow."
        )
    else:
        usage = "python -m autoaccel search [key=value ...] | --multirun key=a,b ... | --cfg job | --info"
        what = (
            "Runs (or resumes) a search and writes <report.dir>/<study_name>/: trials, front, report, recipes.\n"
            "Hydra's own options work too: --multirun (-m) sweeps (space=sampler,cached, range(), glob()), each run\n"
            "its own study, with <report.dir>/sweeps/<time>/sweep-summary.md at the end; --cfg job|hydra|all prints\n"
            "the composed configuration; --info, --shell-completion, hydra.* settings, hydra/launcher=...;\n"
            "--hydra-help for Hydra's own help."
        )
    return (
        f"usage: {usage}\n\n{what}\n\nmain keys (every key is in conf/config.yaml; a bad key or value stops with "
        f"one line naming it):\n{key_table(MAIN_KEYS)}\n\nexample: python -m autoaccel {command} "
        f"{'4 storage=postgresql://user@host/db ' if command == 'workers' else ''}budget.trials=20 space=solver"
    )
