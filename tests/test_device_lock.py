"""The device lock every autoaccel process of a machine shares: a cost measurement in one worker keeps every
other worker's sampling and training off the device while it times, training steps aside for a waiting timer,
and an interrupted evaluation stops waiting for the lock."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from autoaccel.measure.gate import LOCK_DIR_ENV, MeasurementGate
from autoaccel.util.interrupts import Cancelled, cancellable, pause_point

REPO = Path(__file__).resolve().parents[1]

# Another worker on this machine: takes the device lock (shared or exclusive), says so, holds it until told to
# let go (a line on stdin), writes a marker just before letting go, and exits.
OTHER_WORKER = textwrap.dedent(
    """
    import pathlib, signal, sys
    from autoaccel.measure.gate import MeasurementGate

    signal.alarm(600)  # never outlives a test that failed to release it
    mode, marker = sys.argv[1], pathlib.Path(sys.argv[2])
    gate = MeasurementGate("cpu")
    with getattr(gate, mode)():
        print("held", flush=True)
        sys.stdin.readline()
        marker.touch()
    print("released", flush=True)
    """
)


@pytest.fixture
def lock_dir(tmp_path, monkeypatch):
    folder = tmp_path / "locks"
    monkeypatch.setenv(LOCK_DIR_ENV, str(folder))  # this process and the workers it starts share it
    return folder


def _other_worker(mode: str, marker: Path, processes) -> subprocess.Popen:
    worker = processes.start(
        [sys.executable, "-c", OTHER_WORKER, mode, str(marker)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout.readline().strip() == "held"
    return worker


def _turnstile_busy(gate: MeasurementGate) -> bool:
    """Whether someone waits at the gate's turnstile (a timer waiting for sharers to leave)."""
    with gate.turnstile.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def test_a_timer_waits_for_another_workers_sampling_and_then_times_alone(lock_dir, tmp_path, processes):
    gate = MeasurementGate("cpu")
    assert gate.across_processes and gate.path.parent == lock_dir
    marker = tmp_path / "sampling-done"
    sampler = _other_worker("shared", marker, processes)
    timed_after_sampling = []
    timer = threading.Thread(target=lambda: _time(gate, marker, timed_after_sampling))
    timer.start()
    while not _turnstile_busy(gate):  # the timer waits at the turnstile: new sharers now queue behind it
        assert timer.is_alive(), "the timer did not wait for the other worker's sampling"
        time.sleep(0.01)
    sampler.stdin.write("go\n")
    sampler.stdin.flush()
    timer.join()
    assert timed_after_sampling == [True]  # it timed only once the other worker's sampling had ended


def _time(gate: MeasurementGate, marker: Path, seen: list) -> None:
    with gate.exclusive():
        seen.append(marker.exists())


def test_sampling_waits_while_another_worker_times(lock_dir, tmp_path, processes):
    gate = MeasurementGate("cpu")
    marker = tmp_path / "timing-done"
    timer = _other_worker("exclusive", marker, processes)
    entered_after_timing = []

    def sample():
        with gate.shared():
            entered_after_timing.append(marker.exists())

    sampler = threading.Thread(target=sample)
    sampler.start()
    while not _turnstile_busy(gate):  # the sampler waits for the lock, holding the turnstile
        assert sampler.is_alive(), "the sampler did not wait for the other worker's timing"
        time.sleep(0.01)
    timer.stdin.write("go\n")
    timer.stdin.flush()
    sampler.join()
    assert entered_after_timing == [True]


def test_training_steps_aside_at_its_next_iteration_for_a_waiting_timer(lock_dir, tmp_path, processes):
    """A long training run holds the device shared; a timer in another worker gets it at the trainer's next
    pause point, not after the whole run."""
    gate = MeasurementGate("cpu")
    timed = tmp_path / "timed"
    code = textwrap.dedent(
        f"""
        import pathlib, signal
        from autoaccel.measure.gate import MeasurementGate

        signal.alarm(600)
        with MeasurementGate("cpu").exclusive():
            pathlib.Path({str(timed)!r}).touch()
        """
    )
    iterations = 0
    with gate.shared():
        timer = processes.start([sys.executable, "-c", code], cwd=REPO)
        while not timed.exists():  # training iterations, each ending at a pause point
            assert timer.poll() is None, "the timer gave up"
            pause_point()
            iterations += 1
            time.sleep(0.001)
        still_training = True
    assert timer.wait() == 0 and still_training and iterations > 0


def test_an_interrupted_evaluation_stops_waiting_for_the_device(lock_dir, tmp_path, processes):
    gate = MeasurementGate("cpu")
    timer = _other_worker("exclusive", tmp_path / "marker", processes)
    stop = threading.Event()
    stop.set()  # the run was interrupted while this evaluation waited for another worker's timing
    with pytest.raises(Cancelled):
        cancellable(stop, lambda: gate.shared().__enter__())
    assert timer.poll() is None  # the other worker still times; nobody waited for it


def test_an_unwritable_lock_folder_keeps_threads_apart_and_says_timing_was_not_exclusive(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(LOCK_DIR_ENV, str(blocked / "locks"))
    gate = MeasurementGate("cpu")
    assert not gate.across_processes and gate.path.parent.is_dir()
    with gate.exclusive():  # still a working lock for this process's threads
        assert not _turnstile_busy(gate)
