"""Worker liveness for shared studies: heartbeats on the trials a worker holds, and a sweep of dead ones.

optuna's own heartbeat only runs inside ``Study.optimize``; autoaccel drives optuna by ask/tell, so each
worker keeps its own record: a background thread stamps ``liveness.beat`` (the storage's clock is not
available portably, so it is the worker's wall clock: machines must agree on the time within the grace
period, as NTP gives) and ``liveness.worker`` on every trial in hand. Any worker sweeps: a RUNNING trial whose
last beat is older than ``grace_s`` belonged to a worker that died (kill -9, power loss, lost network); it is
marked failed with that reason and its parameters are queued again, so the candidate is evaluated again and
nothing is lost. Claiming a stale trial goes through optuna's row-locked state update, so two sweepers never
both re-queue it.

Work done once per study (the reference row) is claimed the same way (``claim_once``): one worker does it and
beats, the others wait for its result, and a claim whose worker went silent is taken over.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna

from autoaccel.errors import ConfigError

BEAT = "liveness.beat"
WORKER = "liveness.worker"
DEAD_WORKER = "its worker stopped sending heartbeats (killed or lost); evaluated again"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class LivenessSettings:
    interval_s: float = 10.0
    grace_s: float = 60.0

    def __post_init__(self) -> None:

        if not 0 < self.interval_s < self.grace_s:
            raise ConfigError(
                f"liveness.interval_s={self.interval_s} and liveness.grace_s={self.grace_s} are not valid; "
                "need 0 < interval_s < grace_s (a few beats fit in the grace period)"
            )


class Heartbeat:
    """Stamps every trial this worker holds, now and every ``interval_s`` until it is told or released."""

    def __init__(self, ledger, interval_s: float) -> None:
        self.ledger = ledger
        self.interval_s = interval_s
        self.name = worker_name()
        self._held: dict[int, int] = {}  # trial number -> the storage's trial id, which the beats write to
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="autoaccel-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def hold(self, trial: optuna.Trial) -> None:
        trial_id = self.ledger.trial_id(trial.number)
        self.ledger.optuna_storage.set_trial_user_attr(trial_id, WORKER, self.name)
        self._beat(trial.number, trial_id)
        with self._lock:
            self._held[trial.number] = trial_id

    def release(self, trial: optuna.Trial) -> None:
        with self._lock:
            self._held.pop(trial.number, None)

    def _beat(self, number: int, trial_id: int) -> None:
        try:
            self.ledger.optuna_storage.set_trial_user_attr(trial_id, BEAT, time.time())
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            with self._lock:  # finished meanwhile (told, or swept by another worker): nothing left to stamp
                self._held.pop(number, None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                held = list(self._held.items())
            for number, trial_id in held:
                try:
                    self._beat(number, trial_id)
                except Exception:  # a storage hiccup must not kill the beat; the next one retries
                    continue


def sweep_dead_workers(ledger, grace_s: float, now: float | None = None) -> list[int]:
    """Fails and re-queues RUNNING trials whose last heartbeat is older than ``grace_s``; returns their numbers.

    A RUNNING trial with no beat at all (its worker died between ask and its first beat) counts from the
    trial's start time.
    """
    now = time.time() if now is None else now
    storage = ledger.optuna_storage
    swept = []
    for frozen in ledger.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        beat = frozen.user_attrs.get(BEAT)
        if beat is None and frozen.datetime_start is not None:
            beat = frozen.datetime_start.timestamp()
        if beat is None or now - float(beat) <= grace_s:
            continue
        trial_id = ledger.trial_id(frozen.number)
        try:
            storage.set_trial_user_attr(trial_id, "failure", f"{DEAD_WORKER} ({frozen.user_attrs.get(WORKER)})")
            claimed = storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another sweeper, or the worker itself, finished it first
        if claimed:
            swept.append(frozen.number)
            if frozen.user_attrs.get("candidate_key"):  # it died before choosing a whole candidate: nothing to redo
                ledger.requeue(frozen.params, frozen.user_attrs)
    return swept


CLAIM_SUFFIX = ".claim-"  # a claim on ``<study>`` for ``what`` is the study ``<study>.claim-<what>``


def claim_once(
    ledger,
    what: str,
    done: Callable[[], bool],
    work: Callable[[], None],
    settings: LivenessSettings,
    log: Callable[[str], None] = lambda message: None,
) -> bool:
    """Does ``work`` once for a study several workers share: the worker that claims it does it, the others wait
    until ``done()``; returns whether this worker did it.

    The claim is a study of its own in the same storage, ``<study>.claim-<what>``: the storage's unique study
    name makes exactly one creator win, whatever the database. The winner stamps it every ``interval_s`` and
    removes it when the work ends (done, failed or interrupted: a waiting worker then claims it). A claim
    silent for ``grace_s`` belonged to a dead worker: it is removed by its id, so of two workers that take it
    over, one removes it and the other finds the new claim, and the work is claimed again.
    """
    storage = ledger.optuna_storage
    name = f"{ledger.study_name}{CLAIM_SUFFIX}{what}"
    silent_since: dict[int, float] = {}  # claims seen without a beat yet: the grace counts from first sight
    told = False
    while not done():
        try:
            claim = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
        except optuna.exceptions.DuplicatedStudyError:
            try:
                holder = storage.get_study_id_from_name(name)
                attrs = storage.get_study_user_attrs(holder)
            except KeyError:
                continue  # released meanwhile: claim it
            beat = attrs.get(BEAT, silent_since.setdefault(holder, time.time()))
            if time.time() - float(beat) > settings.grace_s:
                log(f"{what}: the worker measuring it ({attrs.get(WORKER, 'unknown')}) stopped; taking it over")
                with contextlib.suppress(KeyError):  # another worker removed it first
                    storage.delete_study(holder)
                continue
            if not told:
                log(f"{what}: waiting for worker {attrs.get(WORKER, '(starting)')}, which measures it for the study")
                told = True
            time.sleep(min(1.0, settings.interval_s))
            continue
        with _ClaimBeat(storage, claim, settings.interval_s):
            try:
                if not done():  # finished between our check and our claim
                    work()
                    return True
                return False
            finally:
                with contextlib.suppress(KeyError):  # taken over while this worker was silent
                    storage.delete_study(claim)
    return False


class _ClaimBeat:
    """Stamps a claim with this worker's name and the time, now and every ``interval_s`` until the block ends."""

    def __init__(self, storage, claim: int, interval_s: float) -> None:
        self.storage, self.claim, self.interval_s = storage, claim, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="autoaccel-claim-beat", daemon=True)

    def __enter__(self) -> _ClaimBeat:
        self.storage.set_study_user_attr(self.claim, WORKER, worker_name())
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        with contextlib.suppress(Exception):  # removed by a sweeper, or a storage hiccup: the next beat retries
            self.storage.set_study_user_attr(self.claim, BEAT, time.time())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._beat()
