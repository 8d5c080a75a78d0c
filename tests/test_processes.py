"""The ``processes`` fixture ends what a test started, also when the test run is interrupted (Ctrl-C), and with
it whatever those processes started in turn."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_a_child_and_its_own_child_are_gone_after_ctrl_c_in_the_test_that_started_them(tmp_path, processes):
    child_file, grandchild_file = tmp_path / "child.pid", tmp_path / "grandchild.pid"
    inner = tmp_path / "test_inner.py"
    inner.write_text(
        textwrap.dedent(
            f"""
            import pathlib

            def test_starts_a_worker_then_is_interrupted(processes):
                child = processes.start(["sh", "-c", "sleep 600 & echo $! > {grandchild_file}.tmp; "
                                         "mv {grandchild_file}.tmp {grandchild_file}; wait"])
                pathlib.Path("{child_file}").write_text(str(child.pid))
                child.wait()  # Ctrl-C lands here
            """
        )
    )
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    session = processes.start(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.processes", str(inner)],
        cwd=tmp_path,
        env=environment,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a terminal's Ctrl-C reaches it
    )
    while not (child_file.exists() and grandchild_file.exists()):  # the test body runs and holds both
        assert session.poll() is None, "the inner test run ended early"
        time.sleep(0.05)
    child, grandchild = int(child_file.read_text()), int(grandchild_file.read_text())
    assert _running(child) and _running(grandchild)
    session.send_signal(signal.SIGINT)
    assert session.wait(timeout=600) == 2  # pytest's exit code for an interrupted run
    assert not _running(child) and not _running(grandchild)
