"""Weights a technique produced (a pruned and recovered unet), stored once and named by their content.

Each artifact is a safetensors file named ``<sha256>.safetensors`` in ``<run folder>/artifacts/``; the hash is of
the file's bytes, so two trials that produce the same weights share one file and a changed byte is caught. A
recipe names its artifacts by their path from the recipe file's folder, ``../artifacts/<sha>.safetensors`` (a
run's ``recipes/`` beside its ``artifacts/``), and no other: copy a run's ``recipes/`` and ``artifacts/`` folders
together and the recipes apply there, and a recipe cannot make autoaccel read a file anywhere else.
safetensors holds tensors and string metadata only: loading one never runs code.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autoaccel.errors import ConfigError, RecipeError
from autoaccel.util.files import write_atomically

ARTIFACTS_DIR = "artifacts"
SUFFIX = ".safetensors"
SHA256 = re.compile(r"[0-9a-f]{64}")
HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class ArtifactRef:
    """Where an artifact is (relative to some folder: the run folder in the ledger, the recipe's in a recipe)
    and the sha256 its bytes must have."""

    path: str
    sha256: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, entry: Any, source: str = "artifact") -> ArtifactRef:
        """Checks a stored reference (a recipe users may edit): a relative path and a 64-digit hex sha256."""
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or "sha256" not in entry:
            raise RecipeError(f"{source} must be a mapping with path and sha256; got {entry!r}")
        sha = entry["sha256"]
        if not isinstance(sha, str) or not SHA256.fullmatch(sha):
            raise RecipeError(f"{source}.sha256={sha!r} must be 64 lowercase hex digits")
        expected = relative_path(sha)
        if posixpath.normpath(entry["path"]) != expected:
            raise RecipeError(
                f"{source}.path={entry['path'][:200]!r} is not valid; a recipe's artifacts are read only from the "
                f"{ARTIFACTS_DIR}/ folder beside its own folder, by hash: {expected}"
            )
        return cls(entry["path"], sha)


def relative_path(sha: str) -> str:
    """Where a recipe's artifact is, from the recipe file's folder: the only place it is read from."""
    return f"../{ARTIFACTS_DIR}/{sha}{SUFFIX}"


@dataclass(frozen=True)
class Artifact:
    """What a technique stores: its tensors and string metadata (e.g. a quantization plan as JSON)."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]


class ArtifactStore:
    """The content-addressed folder of one run, and optionally a shared store every worker reaches.

    ``remote`` (``artifacts.store``): a folder or fsspec URL (``s3://bucket/prefix``, ``gs://...``,
    ``file:///shared/...``) that every artifact is also written to, once per sha256 (a second writer of the same
    bytes finds the object and writes nothing), through a temporary name moved into place when whole: an object
    under its final name is complete, and its hash is checked again when it is read. A run folder lacking an
    artifact fetches it from there (``fetch``), so a report built elsewhere, or a worker on another machine, loads
    what another process made instead of making it again."""

    def __init__(self, folder: Path, remote: str | None = None) -> None:
        self.folder = Path(folder)
        self.remote = str(remote).rstrip("/") if remote else None
        if self.remote is not None:  # an unknown scheme or a missing filesystem package is named before any trial
            try:
                _filesystem(self.remote)
            except (ValueError, ImportError) as error:
                raise ConfigError(
                    f"artifacts.store={remote!r} is not usable: {error} (a folder, or an fsspec URL such as "
                    "s3://bucket/prefix with s3fs installed)"
                ) from None

    def put(self, artifact: Artifact) -> str:
        """Stores ``artifact`` unless the same bytes are already there; returns its sha256."""
        from safetensors.torch import save

        tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in artifact.tensors.items()}
        data = save(tensors, metadata=dict(artifact.metadata))
        sha = hashlib.sha256(data).hexdigest()
        path = self.path_of(sha)
        if not path.is_file() or _sha256(path) != sha:
            write_atomically(path, lambda temporary: temporary.write_bytes(data))
        self.share(f"{sha}{SUFFIX}", data)
        return sha

    def path_of(self, sha: str) -> Path:
        return self.folder / f"{sha}{SUFFIX}"

    def fetch(self, sha: str) -> Path | None:
        """The local file of artifact ``sha``: the run folder's, or else the shared store's copied into it (only
        if its bytes hash to ``sha``); None where neither has it. The copy streams to disk and is hashed there, so
        a large artifact is never held in memory whole."""
        path = self.path_of(sha)
        if path.is_file():
            return path
        if self.remote is None:
            return None
        fs, root = _filesystem(self.remote)

        def download(temporary: Path) -> None:
            fs.get_file(f"{root}/{sha}{SUFFIX}", str(temporary))
            if _sha256(temporary) != sha:
                raise _OtherBytes(sha)

        try:
            return write_atomically(path, download)
        except (FileNotFoundError, _OtherBytes):
            return None

    def share(self, name: str, data: bytes) -> None:
        """Writes ``name`` to the shared store once: an existing object is left as it is (content-addressed
        names hold the same bytes), a new one appears whole or not at all."""
        if self.remote is None:
            return
        fs, root = _filesystem(self.remote)
        if not fs.exists(f"{root}/{name}"):
            _write_whole(fs, root, name, data)

    def shared(self, name: str) -> bytes | None:
        """The shared store's bytes of ``name``; None without a shared store or such an object."""
        if self.remote is None:
            return None
        fs, root = _filesystem(self.remote)
        try:
            return fs.cat_file(f"{root}/{name}")
        except FileNotFoundError:
            return None

    def replace_shared(self, name: str, data: bytes) -> None:
        """Writes ``name`` to the shared store whole, replacing what is there (a small index entry, whose last
        writer names the same model's artifact)."""
        if self.remote is None:
            return
        _write_whole(*_filesystem(self.remote), name, data)


def _write_whole(fs, root: str, name: str, data: bytes) -> None:
    """``data`` as ``root/name``, written under a temporary name and moved into place: a reader finds the whole
    object or none (a writer killed half way leaves only its temporary object)."""
    incoming = f"{root}/{INCOMING}/{uuid.uuid4().hex}-{posixpath.basename(name)}"
    fs.makedirs(posixpath.dirname(incoming), exist_ok=True)
    fs.pipe_file(incoming, data)
    fs.makedirs(posixpath.dirname(f"{root}/{name}"), exist_ok=True)
    fs.mv(incoming, f"{root}/{name}")


INCOMING = ".incoming"  # a shared store's objects being written, moved to their final names when whole


class _OtherBytes(Exception):
    """A shared object whose bytes do not hash to its name: not read as that artifact."""


def _filesystem(url: str):
    """(fsspec filesystem, root path) of a folder or URL; a plain path is the local filesystem."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    return fs, root.rstrip("/")


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return _streamed_sha256(file)


def _streamed_sha256(file) -> str:
    """The sha256 of what is left in ``file``, read a block at a time: a file is hashed before it is loaded."""
    digest = hashlib.sha256()
    while block := file.read(HASH_BLOCK):
        digest.update(block)
    return digest.hexdigest()


def read_artifact(path: Path, sha: str) -> Artifact:
    """The artifact at ``path`` if its bytes hash to ``sha``; else a one-line RecipeError naming the file.

    The file is hashed a block at a time and loaded only when the hash matches, so a wrong file (however large)
    costs no memory; anything but a regular file (a folder, a FIFO, a device) is refused before it is opened."""
    from safetensors.torch import load

    path = Path(path)
    if not path.exists():
        raise RecipeError(
            f"artifact {path} does not exist; copy the run's artifacts/ folder beside its recipes/ folder "
            "(applying never trains the weights again)"
        )
    if not stat.S_ISREG(path.stat().st_mode):
        raise RecipeError(f"artifact {path} is not a regular file; restore the file from the run's artifacts/ folder")
    with path.open("rb") as file:
        actual = _streamed_sha256(file)
        if actual != sha:
            raise RecipeError(
                f"artifact {path} hashes to {actual[:16]}..., not the recipe's {sha[:16]}...: it was changed or "
                "damaged; restore it from the run folder"
            )
        file.seek(0)
        data = file.read()
    try:
        tensors = load(data)
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        metadata = {str(key): str(value) for key, value in (header.get("__metadata__") or {}).items()}
    except Exception as error:  # a file with the right hash but not safetensors: only if it was stored so
        raise RecipeError(f"artifact {path} is not a safetensors file: {error}") from None
    return Artifact(tensors, metadata)
