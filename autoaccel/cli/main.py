"""Command line: ``python -m autoaccel COMMAND [options | key=value overrides]``.

search [key=value ...]                  run (or resume) a search; writes reports/<run>/
workers N storage=URL [key=value ...]   N search processes on one shared study (one per GPU), then its report
report RUN [--wait] [--storage URL --study S]   rebuild a run's report from its ledger (or a shared study's)
plan RUN [--max-fid-ratio R] [--max-latency-ms X] ... [--storage URL --study S]   the plan you ask for, from the
                                        run's ledger (or a shared study's), e.g. the fastest within 1.25x FID
apply RECIPE --out DIR [--n N] [--overwrite]   write N images with a recipe's plan
bench schedules [key=value ...]         the schedule benchmark -> reports/bench/schedules.md (from a source checkout)
bench NAME | bench --help               the other benchmarks (optimizers, compression, ...) -> reports/bench/*.md
train-teacher / train-classifier        retrain the embedded model / its FID feature extractor
train-latent-models [--only vae|t2i|dit]   retrain the embedded latent models (digits_t2i, digits_dit)
wandb-report RUN [--entity E]           create the W&B Report of a run logged with report.wandb=true (online)
COMMAND --help                          what a command takes (search, workers: the main keys)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from autoaccel.cli.usage import search_help
from autoaccel.errors import AutoaccelError
from autoaccel.util.progress import StageLine, reporting
from autoaccel.util.resources import CHECKOUT_MARKER, PACKAGE_DIR

# Importing diffusers imports torchao (a dependency: real quantized kernels), and both log version chatter on every
# command that a user can do nothing about: torch's pytree deprecation of torchao's enum registrations, and
# diffusers' note that torchao 0.18 no longer has the tensor classes its old checkpoint loader looked for.
QUIETED_LOGGERS = ("torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer")
for _name in QUIETED_LOGGERS:
    logging.getLogger(_name).setLevel(logging.ERROR)

COMMANDS = (
    "search",
    "workers",
    "report",
    "plan",
    "apply",
    "bench",
    "train-teacher",
    "train-classifier",
    "train-latent-models",
    "wandb-report",
)


def _log(quiet: bool = False):
    """Prints what a command says; quiet keeps one line per long stage (the line that closes it)."""

    def log(message: str) -> None:
        if not quiet or isinstance(message, StageLine):
            print(message, flush=True)

    return log


def _interrupt_on_sigterm() -> None:
    """SIGTERM (a scheduler stopping the job, ``kill``) ends a search like Ctrl-C: trials in hand are marked
    and queued again, the ledger stays consistent, and the same command resumes."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def _wants_help(args: list[str]) -> bool:
    """Overrides never start with a dash, so -h/--help anywhere asks for help rather than naming a key."""
    return any(arg in ("-h", "--help") for arg in args)


def cmd_search(overrides: list[str]) -> int:
    from autoaccel.cli.hydra_app import run_hydra_app, wants_hydra
    from autoaccel.cli.search_command import search
    from autoaccel.cli.sweep_summary import run_summary
    from autoaccel.cli.workers_command import as_worker
    from autoaccel.config import compose_config

    if _wants_help(overrides):
        print(search_help("search"))
        return 0
    _interrupt_on_sigterm()
    if wants_hydra(overrides):  # Hydra's own command line: sweeps, --cfg, launchers

        def searched(config) -> dict:
            config = as_worker(config)
            index = search(config, log=_log(bool(config.quiet)))
            if config.worker is not None:  # one report for all workers, when the sweep ends
                return {"worker": int(config.worker), "study": index.parent.name}
            return run_summary(index.parent)

        return run_hydra_app(overrides, searched)
    config = as_worker(compose_config(overrides))
    search(config, log=_log(bool(config.quiet)))
    return 0


def cmd_workers(args: list[str]) -> int:
    """``workers N key=value ...``: N search processes on one shared study, then one report."""
    from autoaccel.cli.workers_command import run_workers

    if _wants_help(args):
        print(search_help("workers"))
        return 0
    if not args or not args[0].isdigit() or int(args[0]) < 1:
        raise AutoaccelError(f"workers needs a worker count >= 1 first, e.g. workers 4 storage=...; got {args[:1]}")
    _interrupt_on_sigterm()
    return run_workers(int(args[0]), args[1:], log=_log())


def cmd_report(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="autoaccel report", description="Rebuild a run's report from its ledger.")
    parser.add_argument("run", type=Path, help="the run folder, e.g. reports/digits-sampler")
    parser.add_argument("--storage", help="a shared study's storage URL: rebuild the run folder from it")
    parser.add_argument("--study", help="the study name in --storage")
    parser.add_argument(
        "--wait", action="store_true", help="a search still running on the folder: wait for it to end, then build"
    )
    parser.add_argument(
        "--skip-missing-artifacts",
        action="store_true",
        help="build the report even where front plans' stored weights are missing (another machine's worker kept "
        "them): those plans get no recipe and no grid; default: refuse on a run folder's own study, skip on a shared "
        "one",
    )
    options = parser.parse_args(args)
    from autoaccel.report.build import build_report
    from autoaccel.search.run import open_run, open_shared_run

    if bool(options.storage) != bool(options.study):
        raise AutoaccelError("report --storage and --study go together (a shared study's URL and name)")
    if options.storage is not None:
        context = open_shared_run(options.storage, options.study, options.run)
    else:
        waiting = (lambda message: print(message, file=sys.stderr, flush=True)) if options.wait else None
        context = open_run(options.run, hold=True, wait=waiting)
    try:
        with reporting(_log()):
            print(build_report(context, skip_missing_artifacts=options.skip_missing_artifacts or None))
    finally:
        if context.lock is not None:
            context.lock.release()
    return 0


def cmd_plan(args: list[str]) -> int:
    from autoaccel.front.limits import LIMIT_OPTIONS

    parser = argparse.ArgumentParser(
        prog="autoaccel plan",
        description="The plan you ask for, chosen on a run's front: e.g. --max-fid-ratio 1.25 for the fastest plan "
        "within 1.25x of the reference's FID. Exit code 3 when no plan fits (the closest is printed).",
    )
    parser.add_argument("run", type=Path, help="the run folder, e.g. reports/digits-sampler")
    for option in LIMIT_OPTIONS.values():
        bound = "upper" if option.upper else "lower"
        parser.add_argument(option.flag, metavar="VALUE", default=None, help=f"{bound} bound on the {option.meaning}")
    parser.add_argument(
        "--minimize",
        default=None,
        help="the metric to optimise (in its direction: psnr, precision and recall are maximised); default: "
        "latency_ms when a quality limit is given, else --quality",
    )
    parser.add_argument("--quality", default="fid", help="the quality metric shown and ranked by (default fid)")
    parser.add_argument("--storage", help="a shared study's storage URL: plan on that study (RUN: its report's folder)")
    parser.add_argument("--study", help="the study name in --storage")
    options = parser.parse_args(_values_joined(args, {option.flag for option in LIMIT_OPTIONS.values()}))
    from autoaccel.cli.plan_command import explain_plan

    if bool(options.storage) != bool(options.study):
        raise AutoaccelError("plan --storage and --study go together (a shared study's URL and name)")
    values = {name: _number_or_text(getattr(options, name)) for name in LIMIT_OPTIONS}
    shared = (options.storage, options.study)
    message, found = explain_plan(options.run, values, options.minimize, options.quality, *shared)
    print(message)
    return 0 if found else 3


def _values_joined(args: list[str], flags: set[str]) -> list[str]:
    """``--min-psnr -inf`` as ``--min-psnr=-inf``: argparse reads a value starting with a dash that is not a plain
    negative number (``-inf``, ``-1e3``) as another option, so a flag's value is joined to it before parsing."""
    joined: list[str] = []
    index = 0
    while index < len(args):
        if args[index] in flags and index + 1 < len(args) and not args[index + 1].startswith("--"):
            joined.append(f"{args[index]}={args[index + 1]}")
            index += 2
        else:
            joined.append(args[index])
            index += 1
    return joined


def _number_or_text(text: str | None) -> float | str | None:
    """A limit flag's value as a number where it reads as one; the text otherwise, which the limit check refuses
    with the valid range."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def cmd_apply(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="autoaccel apply", description="Write images with a recipe's plan.")
    parser.add_argument("recipe", type=Path, help="a recipe file, e.g. reports/digits-sampler/recipes/trial-0012.yaml")
    parser.add_argument("--out", type=Path, required=True, help="the folder for the images (created if missing)")
    parser.add_argument(
        "--overwrite", action="store_true", help="write into a folder that already holds images, replacing ours"
    )
    parser.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    parser.add_argument("--seed", type=int, default=None, help="noise seed (default: the recipe's)")
    parser.add_argument("--model", default=None, help="model folder (default: the recipe's base model)")
    parser.add_argument("--device", default="auto")
    options = parser.parse_args(args)
    from autoaccel.cli.apply_command import write_images

    paths = write_images(
        options.recipe, options.out, options.n, options.seed, options.model, options.device, options.overwrite
    )
    print(f"wrote {len(paths) - 1} images and {paths[-1].name} to {options.out}")
    return 0


NO_CHECKOUT = (
    "benchmarks run from a source checkout of autoaccel (they are not in the wheel): clone the repository and run "
    "python -m autoaccel bench NAME from its root"
)


def _benchmark_registry():
    """The checkout's ``benchmarks.registry`` (importable from the checkout's root, or found beside this package
    when autoaccel itself runs from a checkout); None from an installed wheel, which carries no benchmarks."""
    checkout = PACKAGE_DIR.parent
    if (checkout / CHECKOUT_MARKER).is_file() and (checkout / "benchmarks").is_dir() and str(checkout) not in sys.path:
        sys.path.append(str(checkout))
    try:
        from benchmarks import registry
    except ModuleNotFoundError as error:
        if error.name in ("benchmarks", "benchmarks.registry"):
            return None
        raise
    return registry


def cmd_bench(args: list[str]) -> int:
    registry = _benchmark_registry()
    if registry is None:
        raise AutoaccelError(NO_CHECKOUT)
    named = registry.BENCHMARKS.get(args[0]) if args else None
    if _wants_help(args[:1] if named and named.takes == "command" else args):  # a command benchmark has its own
        print(registry.bench_help())
        return 0
    if not args:
        raise AutoaccelError(f"bench needs a benchmark name; valid: {', '.join(registry.BENCHMARKS)} (got nothing)")
    return registry.run(args[0], args[1:], make_log=_log)


MAX_TRAIN_STEPS = 1_000_000  # train-teacher: the embedded teacher trains 2400
MAX_EPOCHS = 10_000  # train-classifier: the embedded classifier trains 40


def cmd_train_teacher(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="autoaccel train-teacher")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder (default: the embedded teacher's, replaced)")
    options = parser.parse_args(args)
    from autoaccel.config.values import check_flag_range, check_folder, check_seed_flag
    from autoaccel.targets.digits.weights import teacher_dir

    check_flag_range("--steps", options.steps, 1, MAX_TRAIN_STEPS)
    check_seed_flag(options.seed)
    out = options.out or teacher_dir()
    check_folder("--out", out, writable=True)
    from autoaccel.targets.digits.teacher import train_teacher

    train_teacher(out, steps=options.steps, seed=options.seed)
    return 0


def cmd_train_classifier(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="autoaccel train-classifier")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="weights file (default: the embedded one, replaced)")
    options = parser.parse_args(args)
    from autoaccel.config.values import check_file_destination, check_flag_range, check_seed_flag
    from autoaccel.targets.digits.weights import classifier_weights_path

    check_flag_range("--epochs", options.epochs, 1, MAX_EPOCHS)
    check_seed_flag(options.seed)
    out = options.out or classifier_weights_path()
    check_file_destination("--out", out)
    from autoaccel.targets.digits.classifier_training import train_classifier

    train_classifier(out, epochs=options.epochs, seed=options.seed)
    return 0


def cmd_train_latent_models(args: list[str]) -> int:
    from autoaccel.targets.digits.latent.train import run_cli

    return run_cli(args)


def cmd_wandb_report(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="autoaccel wandb-report",
        description="Create the W&B Report of a run logged with report.wandb=true (its wandb-report.json), once its "
        "W&B runs are synced (wandb sync RUN/wandb/offline-run-*) and W&B is logged in.",
    )
    parser.add_argument("run", type=Path, help="the run folder, e.g. reports/digits-sampler")
    parser.add_argument("--entity", help="the W&B entity (default: the logged-in user's)")
    options = parser.parse_args(args)
    from autoaccel.report.wandb_workspace import SPEC_FILE, create_report

    if not (options.run / SPEC_FILE).is_file():
        raise AutoaccelError(f"{options.run / SPEC_FILE} does not exist; run the search with report.wandb=true first")
    print(f"W&B report: {create_report(options.run, options.entity)}")
    return 0


HANDLERS = {
    "search": cmd_search,
    "workers": cmd_workers,
    "report": cmd_report,
    "plan": cmd_plan,
    "apply": cmd_apply,
    "bench": cmd_bench,
    "train-teacher": cmd_train_teacher,
    "train-classifier": cmd_train_classifier,
    "train-latent-models": cmd_train_latent_models,
    "wandb-report": cmd_wandb_report,
}


COMPLETION_FLAGS = ("-sc", "--shell-completion")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if argv[0] in COMPLETION_FLAGS:  # the shell's completion asks the console script: `autoaccel search ...`
        argv = ["search", *argv]
        line = os.environ.get("COMP_LINE", "")
        if line.split()[:2] == ["autoaccel", "search"]:  # Hydra completes the overrides after the command
            os.environ["COMP_LINE"] = "autoaccel" + line[len("autoaccel search") :]
    command, rest = argv[0], argv[1:]
    if command not in HANDLERS:
        print(f"autoaccel: unknown command {command!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # 2-thread torch stalls badly when the CPU is shared
    started = time.perf_counter()
    try:
        return HANDLERS[command](rest)
    except AutoaccelError as error:
        print(f"autoaccel {command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"autoaccel {command}: interrupted after {time.perf_counter() - started:.0f}s; "
            "everything measured is in the ledger, and the same command resumes",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:  # the reader of stdout left (``| head``, ``| grep -q``): nothing more to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the interpreter's final flush is quiet
        return 0
