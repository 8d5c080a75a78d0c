"""The front's latencies confirmed side by side before the report is written.

Each cost structure is timed once, when its first trial runs; minutes or hours apart, on a machine whose load
changes, two plans' figures can differ by the load more than by the plans. Before the report, the plans on the
front, the standard configurations the report compares them with, and the reference are therefore timed again
together: ``cost.warmup`` untimed calls of each, then ``cost.repeats`` rounds in which each plan (and the reference)
is called once in turn (A B C ... A B C ...), all under the exclusive device lock (``autoaccel.measure.gate``), so a
slow spell hits every plan alike. The median of a plan's rounds is its confirmed latency; each round's figure is
kept, so a plan's speed-up over the reference has the interval of its per-round ratios
(``autoaccel.report.speedup``). A plan with runtime settings (``runtime_only`` techniques: precision, compilation,
kernels) is timed a second time without them, in the same rounds: its algorithmic part alone, which splits its
speed-up into an algorithmic and a runtime factor. The reference is timed once per round like the plans, unless the
search timed it with a single call (a call hundreds of steps long, ``LONG_CALL_STEPS``): then it is called once,
without warm-up, in the middle round, as the search did, so confirming costs one such call, not ``warmup + repeats``
of them.

A plan's pipeline is built the way the evaluator built it, from its stored artifacts (``train=False``): a plan
whose model is stored on another machine of a shared study keeps its search figure, and the report says so.
The confirmed figure holds for every trial of that cost structure (``cost_key``): they share one latency. With
the confirmed figures the front is built again; a plan that now joins it is timed too, with the others, up to
``MAX_PASSES`` times. What was confirmed is stored in the study (``CONFIRMATION``: search and confirmed figure
per structure, which plans left the front, the median change), where ``trials_frame`` and every later report
read it; ``cost.confirm=false`` turns the step off.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import pandas as pd

from autoaccel.front.pareto import front_frame, front_numbers
from autoaccel.measure import latency
from autoaccel.measure.evaluator import NotStored
from autoaccel.measure.kernels import deployment_kernels
from autoaccel.measure.measurement import describe_failure
from autoaccel.plan.candidate import Candidate
from autoaccel.reference.sampling import reference_pipeline
from autoaccel.search.ledger import CONFIRMATION, record_reference_row, reference_row
from autoaccel.targets.denoisers import execution_device
from autoaccel.techniques.base import without_runtime

MAX_PASSES = 3
REFERENCE = "reference"
ALGORITHMIC = "algorithmic:"  # a runtime plan timed without its runtime settings, under this prefix
SHARED_LOAD_CORES = 0.5  # other processes' CPU use beyond this while a plan was timed: shared load


def confirm_before_report(context, limits: list, log: Callable[[str], None], ran: int = 1) -> dict | None:
    """``confirm_front_latencies`` where ``cost.confirm`` is on and the study has trials not confirmed yet (a
    complete study reported again keeps its stored confirmation); says when latencies were timed under load."""
    warn_shared_load(context.ledger.trials_frame(limits, confirmed=False), log)
    if not context.config.cost.get("confirm", True):
        return None
    stored = context.ledger.study.user_attrs.get(CONFIRMATION)
    if stored and not ran:
        return stored
    try:
        return confirm_front_latencies(context, limits, log)
    except Exception as error:  # the search's own figures stand; the report says the confirmation did not run
        log(f"latency confirmation failed ({describe_failure(error)}); the report shows the search's latencies")
        return None


def confirm_front_latencies(context, limits: list, log: Callable[[str], None]) -> dict | None:
    """Re-times the front's plans and the reference side by side; stores and returns what it found (None when
    there is nothing to confirm)."""
    ledger, objectives = context.ledger, context.objectives
    searched = ledger.trials_frame(limits, confirmed=False)
    if searched.empty or "latency_ms" not in searched or "cost_key" not in searched:
        return None
    search_front = _front(searched, objectives)
    if not search_front:
        return None
    timed: dict[str, dict] = {}
    not_confirmed: dict[str, str] = {}
    reference: dict | None = None
    rounds = int(context.config.cost.repeats)
    passes = 0
    while passes < MAX_PASSES:
        front = front_numbers(_with(searched, timed), objectives)
        plans = _plans(searched, [*front, *_standards(searched)], not_confirmed)
        if passes and set(plans) <= set(timed):
            break
        passes += 1
        log(
            f"confirming the latency of {len(plans)} plan(s) (the front and the standard configurations) and the "
            f"reference: {rounds} interleaved rounds"
        )
        figures = _time_side_by_side(context, plans, searched, not_confirmed, rounds)
        reference = figures.pop(REFERENCE, reference)
        timed = {**timed, **figures}  # the latest side-by-side figures win
    final_front = _front(_with(searched, timed), objectives)
    changes = [
        abs(figure["latency_ms"] - figure["search_latency_ms"]) / figure["search_latency_ms"] * 100
        for figure in timed.values()
        if figure["search_latency_ms"] > 0
    ]
    confirmation = {
        "rounds": rounds,
        "warmup": int(context.config.cost.warmup),
        "passes": passes,
        "structures": timed,
        "reference": reference,
        "search_front": search_front,
        "front": final_front,
        "left_front": sorted(set(search_front) - set(final_front)),
        "joined_front": sorted(set(final_front) - set(search_front)),
        "moved_median_pct": round(statistics.median(changes), 1) if changes else None,
        "not_confirmed": not_confirmed,
        "timing_exclusive": context.evaluator.gate.across_processes,
    }
    ledger.study.set_user_attr(CONFIRMATION, confirmation)
    if reference is not None:
        _confirm_reference_row(ledger, reference)
    log(f"latency confirmation: {confirmation_sentence(confirmation)}")
    return confirmation


def shared_load_sentence(trials: pd.DataFrame) -> str | None:
    """Which latencies were taken under shared load, in one sentence (None: every one was timed alone): timed
    without the machine-wide device lock, or while other processes kept more than ``SHARED_LOAD_CORES`` CPU
    cores busy (load no lock keeps out: other programs)."""
    if trials.empty or "timing_exclusive" not in trials:
        return None
    timed = trials[trials["timing_exclusive"].notna()]
    lockless = timed["timing_exclusive"].astype(str).str.lower() != "true"
    cores = pd.to_numeric(timed.get("background_cores"), errors="coerce").fillna(0.0)
    loaded = lockless | (cores > SHARED_LOAD_CORES)
    if not loaded.any():
        return None
    reasons = []
    if (cores > SHARED_LOAD_CORES).any():
        reasons.append(f"other processes kept up to {cores.max():.1f} CPU cores busy while they were timed")
    if lockless.any():
        reasons.append(
            f"{int(lockless.sum())} timed without the machine-wide device lock (its folder was not writable)"
        )
    return f"{int(loaded.sum())} of {len(timed)} trials' latencies were taken under shared load: " + "; ".join(reasons)


def warn_shared_load(trials: pd.DataFrame, log: Callable[[str], None]) -> None:
    sentence = shared_load_sentence(trials)
    if sentence:
        log(f"note: {sentence}; the confirmation before the report times the front's plans again side by side")


def confirmation_sentence(confirmation: dict | None) -> str:
    """What the confirmation changed, in one sentence for the log and the report."""
    if not confirmation:
        return "not run (it runs before a search writes its report; cost.confirm=false turns it off)"
    moved = confirmation.get("moved_median_pct")
    left, joined = len(confirmation.get("left_front", [])), len(confirmation.get("joined_front", []))
    sentence = (
        f"the front's plans, the standard configurations and the reference were timed again side by side in "
        f"{confirmation['rounds']} interleaved "
        f"rounds: confirmation moved latencies by {'n/a' if moved is None else f'{moved:g}%'} (median), "
        f"{left} plan{'s' if left != 1 else ''} left the front" + (f", {joined} joined it" if joined else "")
    )
    skipped = confirmation.get("not_confirmed") or {}
    if skipped:
        sentence += f"; {len(skipped)} kept their search figure ({'; '.join(sorted(set(skipped.values())))})"
    return sentence


def _front(trials: pd.DataFrame, objectives: list[str]) -> list[int]:
    """The front's plans, one trial each (a plan that several trials ran counts once), as the report lists them."""
    return sorted(int(number) for number in front_frame(trials, front_numbers(trials, objectives))["trial"])


def _with(searched: pd.DataFrame, timed: dict[str, dict]) -> pd.DataFrame:
    """The trials with the latencies confirmed so far in place of their search figures."""
    frame = searched.copy()
    confirmed = frame["cost_key"].map(lambda key: timed.get(key, {}).get("latency_ms", math.nan))
    frame["latency_ms"] = confirmed.where(confirmed.notna(), frame["latency_ms"])
    return frame


def _standards(searched: pd.DataFrame) -> list[int]:
    """The standard configurations that completed: the report compares the recommended plans with them, so their
    latencies are confirmed beside the front's."""
    if "warm_start" not in searched:
        return []
    done = searched[(searched["state"] == "COMPLETE") & (searched["warm_start"].fillna("").astype(str) != "")]
    return [int(number) for number in done["trial"]]


def _plans(searched: pd.DataFrame, front: list[int], not_confirmed: dict[str, str]) -> dict[str, int]:
    """cost structure -> the first front trial with it, for the front's structures that can be timed."""
    plans: dict[str, int] = {}
    for _, row in searched[searched["trial"].isin(front)].sort_values("trial").iterrows():
        key = row.get("cost_key")
        if isinstance(key, str) and key and key not in not_confirmed:
            plans.setdefault(key, int(row["trial"]))
    return plans


def _time_side_by_side(
    context, plans: dict[str, int], searched: pd.DataFrame, not_confirmed: dict[str, str], rounds: int
) -> dict[str, dict]:
    """Builds each plan's pipeline and the reference's, then times them in interleaved rounds under the
    exclusive device lock; returns structure (or ``REFERENCE``) -> figures."""
    evaluator = context.evaluator
    pipelines = {}
    algorithmic: dict[str, str] = {}  # a runtime plan's structure -> the key its algorithmic part is timed under
    not_split: dict[str, str] = {}  # a runtime plan's structure -> why its algorithmic part could not be built
    for key, trial in plans.items():
        params = context.ledger.trial(trial).user_attrs["candidate"]
        try:
            pipelines[key] = evaluator.configured_pipeline(Candidate.from_params(params), train=False)
        except NotStored as reason:
            not_confirmed[key] = str(reason)
            continue
        except Exception as error:  # e.g. a damaged artifact: this plan keeps its search figure
            not_confirmed[key] = f"its pipeline could not be rebuilt: {describe_failure(error)}"
            continue
        plain = without_runtime(params, evaluator.space.techniques, context.target)
        if plain is not None:
            try:
                pipelines[ALGORITHMIC + key] = evaluator.configured_pipeline(Candidate.from_params(plain), train=False)
                algorithmic[key] = ALGORITHMIC + key
            except Exception as error:  # the plan is confirmed; only its speed-up is not split
                not_split[key] = describe_failure(error)
    reference = reference_pipeline(context.target)
    reference.set_schedule(execution_device(reference.denoiser))
    pipelines[REFERENCE] = reference
    seeds = evaluator.judge.deployment_seeds(int(context.config.cost.batch_size))
    on_cuda = str(execution_device(reference.denoiser)).startswith("cuda")
    recorded = reference_row(context.ledger.study) or {}
    single = {REFERENCE} if recorded.get("latency_method") == latency.SINGLE_CALL else set()
    times: dict[str, list[float]] = {key: [] for key in pipelines}
    with evaluator.gate.exclusive():
        for key, pipeline in pipelines.items():
            for _ in range(0 if key in single else int(context.config.cost.warmup)):
                _call(pipeline, seeds, on_cuda)
        for round_index in range(rounds):
            for key, pipeline in pipelines.items():
                if key not in single or round_index == rounds // 2:
                    times[key].append(_call(pipeline, seeds, on_cuda))
    search = searched.set_index("trial")["latency_ms"]
    figures = {}
    for key, values in times.items():
        if key.startswith(ALGORITHMIC):
            continue
        quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        before = (
            recorded.get("search_latency_ms", recorded.get("latency_ms")) if key == REFERENCE else search[plans[key]]
        )
        figures[key] = {
            "latency_ms": statistics.median(values),
            "latency_iqr_ms": quartiles[2] - quartiles[0],
            "search_latency_ms": float(before) if before is not None else math.nan,
            "trial": plans.get(key),
            "latency_samples": [round(value, 4) for value in values],  # one per round: paired speed-ups
        }
        if key in algorithmic:
            figures[key]["algorithmic_latency_ms"] = statistics.median(times[algorithmic[key]])
        elif key in not_split:
            figures[key]["algorithmic_not_timed"] = not_split[key]
    return figures


def _call(pipeline, seeds, on_cuda: bool) -> float:
    with deployment_kernels(pipeline):
        return latency.timed_call(pipeline, seeds, on_cuda)


def _confirm_reference_row(ledger, reference: dict) -> None:
    """The reference row's latency, confirmed beside the plans: every speed-up the report states uses it."""
    row = dict(reference_row(ledger.study) or {})
    if not row:
        return
    row.setdefault("search_latency_ms", row.get("latency_ms"))
    row["latency_ms"] = reference["latency_ms"]
    record_reference_row(ledger.study, row)
