"""Which model each stored artifact is: the artifact store is addressed by content (``<sha256>.safetensors``), so a
process that did not produce a model cannot find it by the plan that makes it. This index can: one small JSON
file per plan prefix (the model techniques up to and including one, with their versions and configs, on one
target), in ``artifacts/index/``, naming the artifact's sha256 and the training minutes it cost.

A resumed search, or a trial whose model was trained by an earlier trial no longer kept in memory, loads the
model from its artifact instead of training it again (``Evaluator.configured_pipeline``). Workers sharing a run
folder claim a model before making it (``claimed``, a file lock beside its index entry): a second worker wanting
a student another is training waits for it and loads it, instead of training it twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autoaccel.plan.candidate import to_plain
from autoaccel.util.artifacts import SHA256, ArtifactStore
from autoaccel.util.files import write_atomically
from autoaccel.util.interrupts import pause_point

try:
    import fcntl
except ImportError:  # not POSIX: no claim, a worker may make a model another is making
    fcntl = None

INDEX_DIR = "index"
WAIT_S = 0.2  # how often a worker waiting for another's model checks the lock (and for an interrupt)


def plan_prefix_key(target_hash: str, steps: list[tuple[Any, Any]]) -> str:
    """The identity of the model ``steps`` (model techniques in order) produce from the target's weights."""
    described = [[technique.name, technique.version, to_plain(asdict(config))] for technique, config in steps]
    text = json.dumps([target_hash, described], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def remember(store: ArtifactStore, key: str, technique: str, sha: str, train_minutes: float | None) -> None:
    """Indexes ``sha`` as the model of ``key``, in the run folder and the shared store (where there is one)."""
    entry = json.dumps({"technique": technique, "sha256": sha, "train_minutes": train_minutes})
    path = store.folder / INDEX_DIR / f"{key}.json"
    write_atomically(path, lambda temporary: temporary.write_text(entry))
    store.replace_shared(f"{INDEX_DIR}/{key}.json", entry.encode())


def lookup(store: ArtifactStore, key: str) -> tuple[Path, str, float | None] | None:
    """(file, sha256, training minutes) of the artifact stored under ``key``: indexed in the run folder, or in
    the shared store and fetched from it (its hash is checked when it is loaded)."""
    local = store.folder / INDEX_DIR / f"{key}.json"
    for text in (_read(local), _shared_text(store, key)):
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            entry = json.loads(text)
            sha = entry.get("sha256")
            if not (isinstance(sha, str) and SHA256.fullmatch(sha)):
                continue
            path = store.fetch(sha)
            if path is not None:
                minutes = entry.get("train_minutes")
                return path, sha, float(minutes) if isinstance(minutes, int | float) else None
    return None


def _read(path: Path) -> str | None:
    with contextlib.suppress(OSError):
        return path.read_text()
    return None


def _shared_text(store: ArtifactStore, key: str) -> str | None:
    data = store.shared(f"{INDEX_DIR}/{key}.json")
    return None if data is None else data.decode(errors="replace")


@contextlib.contextmanager
def claimed(store: ArtifactStore, key: str) -> Iterator[None]:
    """Holds the exclusive lock of ``key`` (``index/<key>.lock``) inside the block: one process makes that model
    while the others wait (interruptibly), then find it with ``lookup``. The lock goes with the process holding
    it, so a killed worker never leaves a model claimed."""
    if fcntl is None:
        yield
        return
    path = store.folder / INDEX_DIR / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pause_point()
                time.sleep(WAIT_S)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
