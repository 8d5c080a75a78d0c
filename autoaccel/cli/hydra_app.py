"""``python -m autoaccel search`` with Hydra's own command line: ``--multirun``/``-m`` sweeps (``space=a,b``,
``range()``, ``glob()``), ``--cfg job|hydra|all``, ``--info``, ``--shell-completion``, ``hydra.*`` settings and
``hydra/launcher=...``.

A command line without any of these runs exactly as before (``autoaccel.config.compose``): this path is taken only
when Hydra is asked for by name. Each run of a sweep is its own study: without an explicit ``study_name`` it is
``<target>-<space>`` followed by the run's values of the swept keys (target and space are in the name already),
so two runs never resume one another; a sweep over ``worker`` (``worker='range(16)'`` with a shared ``storage``)
puts that many workers on one study instead, whose report is built once when the sweep ends. A run's folder is
``report.dir/study_name`` as always; Hydra's ``hydra.sweep.dir`` (default ``<report.dir>/sweeps/<time>``) holds
one folder per run with its ``summary.json`` and the sweep's ``sweep-summary.md`` (``autoaccel.cli.sweep_summary``);
``hydra.run.dir`` is the working folder and is left as it is (no chdir, no Hydra log files).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from autoaccel.cli.sweep_summary import SUMMARY_FILE
from autoaccel.config.compose import register_schema
from autoaccel.errors import AutoaccelError
from autoaccel.util.resources import resource_dir

# swept keys a run's study is not named by: the default name holds target and space already, and a sweep over
# worker puts workers on one study
KEYS_NOT_NAMED = ("target", "space", "worker")
# Hydra's flags (hydra/_internal/utils.py get_args_parser): any of them, or a hydra.* override, asks for Hydra
HYDRA_FLAGS = frozenset(
    {
        "-m",
        "--multirun",
        "-c",
        "--cfg",
        "-i",
        "--info",
        "-sc",
        "--shell-completion",
        "--resolve",
        "-p",
        "--package",
        "--hydra-help",
        "--version",
        "-cp",
        "--config-path",
        "-cn",
        "--config-name",
        "-cd",
        "--config-dir",
        "--experimental-rerun",
    }
)


def wants_hydra(args: list[str]) -> bool:
    """Whether a command line uses Hydra's own options (a flag, or a ``hydra.``/``hydra/`` override)."""
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in HYDRA_FLAGS or re.match(r"^[+~]{0,2}hydra[./]", arg):
            return True
    return False


def run_hydra_app(args: list[str], search: Callable[[DictConfig], object]) -> int:
    """Runs ``search`` (config -> run summary dict) as the task of a Hydra application over autoaccel's ``conf/``,
    with ``args`` as its command line."""
    import hydra

    register_schema()
    swept = swept_keys(args)
    failures: list[str] = []
    task = hydra.main(config_path=str(resource_dir("conf")), config_name="config", version_base="1.3")(
        lambda config: _task(config, search, swept, failures)
    )
    saved = sys.argv
    sys.argv = ["autoaccel", *args]  # the command Hydra's shell completion registers for: the console script
    try:
        task()
    finally:
        sys.argv = saved
    return 1 if failures else 0


def swept_keys(args: list[str]) -> list[str]:
    """The keys a sweep varies (``space=a,b``, ``range()``, ``glob()``, ...), in command-line order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [arg for arg in args if not arg.startswith("-") and "=" in arg]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # a malformed override: Hydra names it when it composes
        return []
    return [override.key_or_group for override in parsed if override.is_sweep_override()]


def _task(config: DictConfig, search: Callable[[DictConfig], object], swept: list[str], failures: list[str]) -> dict:
    """One Hydra job: the resolved configuration (a sweep's run named apart), searched; its summary is kept in the
    job's folder for the sweep summary. A run that stops on bad input is one line naming it, recorded in the sweep
    summary, and the sweep goes on to its next run (the command's exit code says one failed)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from autoaccel.search.run_folder import study_name_for

    hydra_config = HydraConfig.get()
    OmegaConf.resolve(config)
    sweeping = hydra_config.mode == RunMode.MULTIRUN
    values = [item for item in hydra_config.overrides.task if _key_of(item) in swept]
    if sweeping and config.study_name is None:
        named = [item for item in values if _key_of(item) not in KEYS_NOT_NAMED]
        with open_dict(config):
            config.study_name = sweep_study_name(study_name_for(config), ",".join(named))
    try:
        summary = search(config)
    except AutoaccelError as error:
        print(f"autoaccel search: error: {error}", file=sys.stderr, flush=True)
        failures.append(str(error))
        summary = {"study": config.study_name, "fastest": f"failed: {error}"}
    if sweeping:
        out = Path(hydra_config.runtime.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        record = {"overrides": values, **(summary or {})}
        (out / SUMMARY_FILE).write_text(json.dumps(record, default=str))
    return summary


def _key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def sweep_study_name(base: str, overrides: str) -> str:
    """``base`` with a run's swept values in a name a folder and a study can carry (``budget.trials=4,seed=1`` ->
    ``base-budget.trials=4-seed=1``)."""
    if not overrides:
        return base
    safe = re.sub(r"[^A-Za-z0-9_.=+-]+", "-", overrides.replace(",", "-")).strip("-")
    return f"{base}-{safe}"[:200]
