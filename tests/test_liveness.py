"""Liveness on a shared study: heartbeats stamp the trials a worker holds, a sweep re-queues only the trials
of workers that went silent, and two sweepers never both re-queue one trial."""

from __future__ import annotations

import time

import optuna
import pytest

from autoaccel.errors import ConfigError
from autoaccel.search.ledger import Ledger, not_a_result
from autoaccel.search.liveness import BEAT, DEAD_WORKER, WORKER, Heartbeat, LivenessSettings, sweep_dead_workers


@pytest.fixture
def ledger(tmp_path):
    return Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", "liveness", ["minimize", "minimize"])


def _running_trial(ledger: Ledger, value: int) -> optuna.Trial:
    trial = ledger.study.ask()
    trial.suggest_int("x", value, value)
    trial.set_user_attr("candidate_key", f"key-{value}")
    return trial


def _next_beat(ledger: Ledger, trial: optuna.Trial, after: float) -> float:
    """Polls the ledger until ``trial`` carries a beat later than ``after`` (however slow the machine)."""
    while (beat := ledger.trial(trial.number).user_attrs[BEAT]) <= after:
        time.sleep(0.01)
    return beat


def test_heartbeat_stamps_held_trials_until_released(ledger):
    trial, clock = _running_trial(ledger, 1), _running_trial(ledger, 2)  # ``clock`` stays held: it counts beats
    with Heartbeat(ledger, interval_s=0.05) as heartbeat:
        heartbeat.hold(trial)
        heartbeat.hold(clock)
        first = ledger.trial(trial.number).user_attrs[BEAT]
        _next_beat(ledger, trial, first)  # it beats again
        assert ledger.trial(trial.number).user_attrs[WORKER] == heartbeat.name
        heartbeat.release(trial)
        tick = ledger.trial(clock.number).user_attrs[BEAT]
        for _ in range(2):  # two rounds of beats later, one begun after the release has ended
            tick = _next_beat(ledger, clock, tick)
        released = ledger.trial(trial.number).user_attrs[BEAT]
        _next_beat(ledger, clock, tick)  # and one more round: the released trial is not stamped again
        assert ledger.trial(trial.number).user_attrs[BEAT] == released


def test_sweep_requeues_only_silent_trials(ledger):
    silent, alive = _running_trial(ledger, 1), _running_trial(ledger, 2)
    ledger.set_trial_attr(silent.number, BEAT, time.time() - 100)
    ledger.set_trial_attr(alive.number, BEAT, time.time())
    assert sweep_dead_workers(ledger, grace_s=30) == [silent.number]
    swept = ledger.trial(silent.number)
    assert swept.state == optuna.trial.TrialState.FAIL and swept.user_attrs["failure"].startswith(DEAD_WORKER)
    assert not_a_result(swept.user_attrs["failure"])
    assert ledger.trial(alive.number).state == optuna.trial.TrialState.RUNNING
    waiting = ledger.study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [trial.system_attrs["fixed_params"] for trial in waiting] == [{"x": 1}]
    assert ledger.finished_count() == 0  # a dead worker's trial is not a result: the budget is not spent on it


def test_a_second_sweeper_does_not_requeue_again(ledger):
    silent = _running_trial(ledger, 3)
    ledger.set_trial_attr(silent.number, BEAT, time.time() - 100)
    stale_view = ledger.study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert sweep_dead_workers(ledger, grace_s=30) == [silent.number]
    # another worker that read the trial as RUNNING a moment ago loses the row-locked claim
    ledger.study.get_trials = lambda deepcopy=False, states=None: stale_view  # type: ignore[method-assign]
    assert sweep_dead_workers(ledger, grace_s=30) == []
    del ledger.study.get_trials
    assert len(ledger.study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 1


def test_a_trial_without_any_beat_counts_from_its_start(ledger):
    trial = _running_trial(ledger, 4)
    assert sweep_dead_workers(ledger, grace_s=30) == []
    assert sweep_dead_workers(ledger, grace_s=30, now=time.time() + 60) == [trial.number]


@pytest.mark.parametrize(("interval", "grace"), [(0, 10), (10, 10), (-1, 5)])
def test_liveness_settings_are_checked(interval, grace):
    with pytest.raises(ConfigError, match="interval_s"):
        LivenessSettings(interval, grace)


def test_a_trial_reuses_a_finished_twin_first_then_waits_for_an_earlier_running_one(ledger):
    """A re-queued candidate that another worker has meanwhile evaluated is reused, not evaluated again; of two
    trials running the same candidate only the later one waits; an interrupted twin is no result to reuse."""
    finished = _running_trial(ledger, 1)
    ledger.study.tell(finished, [1.0, 1.0])
    again = _running_trial(ledger, 1)
    assert ledger.twin(again, "key-1") == finished.number

    first, second = _running_trial(ledger, 2), _running_trial(ledger, 2)
    assert ledger.twin(second, "key-2") == first.number
    assert ledger.twin(first, "key-2") is None

    cut_short = _running_trial(ledger, 3)
    cut_short.set_user_attr("failure", DEAD_WORKER)
    ledger.study.tell(cut_short, state=optuna.trial.TrialState.FAIL)
    assert ledger.twin(_running_trial(ledger, 3), "key-3") is None


def test_a_resumed_optimizer_is_not_told_that_cut_short_trials_failed(ledger):
    """An interrupted or dead worker's trial is re-queued, not a failure of its candidate: it stays out of the
    history a resumed optimizer is rebuilt from, as it stays out of the finished count."""
    from autoaccel.search.ledger import INTERRUPTED

    done = _running_trial(ledger, 1)
    ledger.study.tell(done, [1.0, 2.0])
    failed = _running_trial(ledger, 2)
    failed.set_user_attr("failure", "NaN in the images")
    ledger.study.tell(failed, state=optuna.trial.TrialState.FAIL)
    for value, failure in ((3, INTERRUPTED), (4, f"{DEAD_WORKER} (host:1)")):
        cut_short = _running_trial(ledger, value)
        cut_short.set_user_attr("failure", failure)
        ledger.study.tell(cut_short, state=optuna.trial.TrialState.FAIL)
    assert ledger.history() == [({"x": 1}, [1.0, 2.0]), ({"x": 2}, None)]
    assert ledger.finished_count() == len(ledger.history())


def _worker_ledger(tmp_path) -> Ledger:
    """The same study as another worker opens it: its own storage object and connections."""
    return Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", "liveness", ["minimize", "minimize"])


def test_work_once_per_study_is_done_by_one_worker_while_the_others_wait_for_it(ledger, tmp_path):
    """Two workers reach the reference together: the one that claims it measures it, the other waits for its row
    and does not measure it again."""
    import threading

    from autoaccel.search.liveness import claim_once

    settings = LivenessSettings(interval_s=0.05, grace_s=30)
    other = _worker_ledger(tmp_path)
    measured: list[str] = []
    waiting = threading.Event()

    def done(worker_ledger) -> bool:
        return "row" in worker_ledger.study.user_attrs

    def measure(worker_ledger, name):
        def work():
            measured.append(name)
            assert waiting.wait(timeout=600), "the second worker never waited"  # it asked while we measured
            worker_ledger.study.set_user_attr("row", name)

        return work

    first = threading.Thread(
        target=claim_once, args=(ledger, "row", lambda: done(ledger), measure(ledger, "first"), settings)
    )
    first.start()
    while not any(name.endswith(".claim-row") for name in optuna.get_all_study_names(ledger.storage)):
        time.sleep(0.01)  # the first worker holds the claim
    did = claim_once(
        other, "row", lambda: done(other), measure(other, "second"), settings, log=lambda message: waiting.set()
    )
    first.join()
    assert not did and measured == ["first"] and other.study.user_attrs["row"] == "first"
    assert optuna.get_all_study_names(ledger.storage) == ["liveness"]  # the claim is gone with the work


def test_a_claim_whose_worker_went_silent_is_taken_over(ledger, tmp_path):
    from autoaccel.search.liveness import claim_once

    storage = ledger.optuna_storage
    dead = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "liveness.claim-row")
    storage.set_study_user_attr(dead, WORKER, "gone:1")
    storage.set_study_user_attr(dead, BEAT, time.time() - 60)  # its last beat, a minute ago
    messages: list[str] = []
    settings = LivenessSettings(interval_s=0.05, grace_s=30)

    def work():
        ledger.study.set_user_attr("row", "taken over")

    did = claim_once(
        _worker_ledger(tmp_path), "row", lambda: "row" in ledger.study.user_attrs, work, settings, messages.append
    )
    assert did and ledger.study.user_attrs["row"] == "taken over"
    assert any("gone:1" in message and "taking it over" in message for message in messages)


def test_an_interrupted_claim_is_released_for_the_next_worker(ledger, tmp_path):
    from autoaccel.search.liveness import claim_once

    settings = LivenessSettings(interval_s=0.05, grace_s=30)

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        claim_once(ledger, "row", lambda: "row" in ledger.study.user_attrs, interrupted, settings)
    did = claim_once(
        _worker_ledger(tmp_path),
        "row",
        lambda: "row" in ledger.study.user_attrs,
        lambda: ledger.study.set_user_attr("row", 1),
        settings,
    )
    assert did and ledger.study.user_attrs["row"] == 1


def test_autoaccel_reaches_optuna_only_through_its_public_api():
    """The study's ``_storage`` and a trial's ``_trial_id`` are optuna internals that may change in any release:
    the ledger keeps the storage it opened the study on and asks it for trial ids."""
    import re
    from pathlib import Path

    import autoaccel

    private = re.compile(r"\.(_storage|_trial_id|_study_id)\b")
    package = Path(autoaccel.__file__).parent
    found = [
        f"{path.relative_to(package)}:{number}"
        for path in sorted(package.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert found == []


def test_a_trial_is_marked_through_the_ledger_whichever_worker_asked_it(ledger, tmp_path):
    trial = _running_trial(ledger, 5)
    other_worker = _worker_ledger(tmp_path)  # another process's view of the same study
    other_worker.set_trial_attr(trial.number, "note", "seen")
    assert ledger.trial(trial.number).user_attrs["note"] == "seen"
    assert other_worker.trial_id(trial.number) == ledger.trial_id(trial.number)
