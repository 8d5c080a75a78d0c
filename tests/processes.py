"""Processes a test starts, ended in its finaliser however the test ends (failed, or interrupted by Ctrl-C:
pytest tears fixtures down then too). Each is started in a process group of its own, so the finaliser also ends
what it started in turn (the workers of ``python -m autoaccel workers``), and is reaped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator

import pytest


class Processes:
    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, command: list[str], **options) -> subprocess.Popen:
        """``subprocess.Popen(command, **options)`` in a new process group, ended when the test ends."""
        process = subprocess.Popen(command, start_new_session=True, **options)
        self.started.append(process)
        return process

    def run(self, command: list[str], timeout: float, **options) -> subprocess.CompletedProcess:
        """``subprocess.run(command, capture_output=True, text=True, ...)`` for a process this fixture ends."""
        process = self.start(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options)
        stdout, stderr = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)

    def end_all(self) -> None:
        """Kills every started process's group and reaps the process."""
        for process in self.started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # its group: the process and what it started
        for process in self.started:
            process.wait()
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def processes() -> Iterator[Processes]:
    started = Processes()
    try:
        yield started
    finally:
        started.end_all()
