"""One process at a time on a run folder's SQLite study.

Two searches on one SQLite ledger would sweep each other's live trials as interrupted, evaluate candidates
twice and time each other's work into the recorded latencies. A search therefore holds an exclusive lock on
``study.lock`` next to the ledger while it runs (and ``report`` while it rewrites the folder). The operating
system releases it when the process ends, however it ends, so a lock is only ever taken over from a dead process.
Several processes on one study share a PostgreSQL storage instead (``storage=postgresql://...``, ``python -m
autoaccel workers``); a shared study has no folder lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from autoaccel.errors import ConfigError

LOCK_FILE = "study.lock"


class StudyLock:
    """An exclusive ``flock`` on ``run_dir/study.lock``, holding who took it (for the message of the next one).

    A search holds it while it runs, and ``report`` while it writes the folder: a report rebuilt under a running
    search would rewrite its front and recipes beneath it, and its work would be timed into the search's
    latencies. ``searching`` says which of the two asks (their refusals say different things)."""

    def __init__(self, run_dir: Path, study_name: str, searching: bool = True) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.study_name = study_name
        self.searching = searching
        self._handle = None

    def acquire(self, wait: Callable[[str], None] | None = None) -> None:
        """Takes the lock, or refuses in one line naming the holder; with ``wait``, tells it what it waits for and
        waits until the holder ends."""
        while True:
            handle = self.path.open("a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = _describe(handle.read())
                if wait is None:
                    handle.close()
                    raise self._in_use(holder) from None
                wait(f"waiting for {holder} to finish with study {self.study_name!r} in {self.path.parent}")
                fcntl.flock(handle, fcntl.LOCK_EX)
            if _same_file(handle, self.path):
                break
            handle.close()  # the holder released and removed it between our open and our lock: take the new one
        handle.seek(0)
        handle.truncate()
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        handle.write(json.dumps({**holder, "command": " ".join(sys.argv)}))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Removes the lock file (while still holding it, so nobody locks a file that is going away) and unlocks."""
        if self._handle is not None:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def _in_use(self, holder: str) -> ConfigError:
        where = f"study {self.study_name!r} in {self.path.parent} is in use by {holder}"
        if not self.searching:
            return ConfigError(
                f"{where}; a search writes the report itself when it ends: run report with --wait to build it once "
                "the holder has finished, or stop the search (it resumes where it stopped)"
            )
        return ConfigError(
            f"{where}; wait for it to finish or stop it (it resumes where it stopped). To run several processes on "
            "one study, share a PostgreSQL storage: storage=postgresql://user:password@host/db, or "
            "`python -m autoaccel workers N storage=...`"
        )


def _same_file(handle, path: Path) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"process {holder['pid']} on {holder['host']} (since {holder['since']}: {holder['command']})"
    except (ValueError, KeyError, TypeError):
        return "another process"
