"""``artifacts.store``: a shared artifact store every worker reaches, tested against a real S3-speaking server
(moto's server mode). Artifacts are written once under their sha256, read back by hash, and a student another
process stored is fetched instead of trained again; a report built in a clean folder elsewhere applies every
front recipe without training; an upload killed half way is never read as an artifact."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from autoaccel.plan import artifact_index
from autoaccel.util.artifacts import INCOMING, Artifact, ArtifactStore

REPO = Path(__file__).resolve().parents[1]
BUCKET = "autoaccel-test"
S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}

TINY_DISTILLED_SPACE = """
name: tiny_distilled
techniques: [distillation, solver, timesteps]
fixed:
  distillation.iterations: 3
  distillation.batch_size: 8
  distillation.data_samples: 16
dimensions:
  distillation.method: {type: categorical, choices: [consistency]}
  distillation.steps: {type: categorical, choices: [1, 2]}
"""


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on a free port, with the environment s3fs (through botocore) reads its endpoint and
    credentials from; yields the environment for child processes."""
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    environment = {**S3_ENV, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    try:
        yield environment
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _objects(prefix: str) -> dict[str, str]:
    import boto3

    listed = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {item["Key"]: item["ETag"] for item in listed}


def _artifact(seed: int = 0, size: int = 64) -> Artifact:
    weights = torch.randn(size, generator=torch.Generator().manual_seed(seed))
    return Artifact({"weight": weights}, {"technique": "test"})


def test_an_unusable_store_is_named_in_one_line(tmp_path):
    from autoaccel.errors import ConfigError

    with pytest.raises(ConfigError, match=r"artifacts.store='nosuch://b/p' is not usable: Protocol not known"):
        ArtifactStore(tmp_path, remote="nosuch://b/p")


@pytest.mark.slow
@pytest.mark.integration
def test_an_artifact_is_written_once_by_hash_and_read_back_checked_from_a_clean_folder(s3_server, tmp_path):
    prefix = f"once-{uuid.uuid4().hex[:8]}"
    remote = f"s3://{BUCKET}/{prefix}"
    first = ArtifactStore(tmp_path / "a", remote=remote)
    sha = first.put(_artifact())
    written = _objects(prefix)
    assert list(written) == [f"{prefix}/{sha}.safetensors"]
    assert ArtifactStore(tmp_path / "b", remote=remote).put(_artifact()) == sha  # a second writer: a no-op
    assert _objects(prefix) == written

    clean = ArtifactStore(tmp_path / "clean", remote=remote)
    path = clean.fetch(sha)
    assert path == clean.path_of(sha) and hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert ArtifactStore(tmp_path / "none").fetch(sha) is None  # no shared store: only the run folder's

    import boto3

    boto3.client("s3").put_object(Bucket=BUCKET, Key=f"{prefix}/{'0' * 64}.safetensors", Body=b"damaged")
    assert ArtifactStore(tmp_path / "other", remote=remote).fetch("0" * 64) is None  # bytes not of that hash

    artifact_index.remember(first, "key1", "distillation", sha, 2.5)
    found = artifact_index.lookup(ArtifactStore(tmp_path / "third", remote=remote), "key1")
    assert found is not None and found[1:] == (sha, 2.5) and found[0].is_file()


UPLOAD_KILLED = """
import sys, time
import s3fs
import torch
from autoaccel.util.artifacts import Artifact, ArtifactStore
s3fs.S3FileSystem.mv = lambda *args, **kwargs: time.sleep(600)  # the worker dies before the object is in place
ArtifactStore(sys.argv[1], remote=sys.argv[2]).put(Artifact({"weight": torch.ones(1 << 20)}, {}))
"""


@pytest.mark.slow
@pytest.mark.integration
def test_a_worker_killed_mid_upload_leaves_nothing_read_as_an_artifact(s3_server, tmp_path):
    prefix = f"killed-{uuid.uuid4().hex[:8]}"
    remote = f"s3://{BUCKET}/{prefix}"
    environment = {**os.environ, **s3_server}
    child = subprocess.Popen([sys.executable, "-c", UPLOAD_KILLED, str(tmp_path / "dying"), remote], env=environment)
    deadline = time.monotonic() + 300
    while not any(INCOMING in key for key in _objects(prefix)) and time.monotonic() < deadline:
        assert child.poll() is None, "the uploading worker ended before it was killed"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    sha = ArtifactStore(tmp_path / "local").put(Artifact({"weight": torch.ones(1 << 20)}, {}))  # no shared store
    assert f"{prefix}/{sha}.safetensors" not in _objects(prefix)  # only the half-way object, under .incoming/
    assert ArtifactStore(tmp_path / "reader", remote=remote).fetch(sha) is None
    retried = ArtifactStore(tmp_path / "retry", remote=remote)
    assert retried.put(Artifact({"weight": torch.ones(1 << 20)}, {})) == sha  # the next writer puts it in place
    assert ArtifactStore(tmp_path / "reader2", remote=remote).fetch(sha) is not None


@pytest.mark.slow
@pytest.mark.integration
def test_a_report_elsewhere_and_a_second_worker_load_the_stored_students_instead_of_training(
    s3_server, postgres_url, fast_overrides, tmp_path, forbid_training
):
    from autoaccel.cli.main import main
    from autoaccel.cli.search_command import search
    from autoaccel.config import compose_config

    space = tmp_path / "tiny_distilled.yaml"
    space.write_text(TINY_DISTILLED_SPACE)
    remote = f"s3://{BUCKET}/shared-{uuid.uuid4().hex[:8]}"
    study = f"s3-{uuid.uuid4().hex[:8]}"
    common = [
        *[item for item in fast_overrides if not item.startswith("report.dir=")],
        f"space={space}",
        "budget.trials=3",
        "budget.warm_start_steps=[]",
        f"artifacts.store={remote}",
    ]
    first = [*common, f"report.dir={tmp_path / 'first'}", f"storage={postgres_url}", f"study_name={study}"]
    search(compose_config(first), log=lambda message: None)
    students = [key for key in _objects(remote.split("/", 3)[3]) if key.endswith(".safetensors")]
    assert students, "the first worker's students are in the shared store"

    forbid_training()  # from here, any training fails the test
    elsewhere = tmp_path / "elsewhere" / "run"
    assert main(["report", str(elsewhere), "--storage", postgres_url, "--study", study]) == 0
    recipes = sorted((elsewhere / "recipes").glob("trial-*.yaml"))
    assert recipes and all("artifacts" in recipe.read_text() for recipe in recipes)
    assert any((elsewhere / "artifacts").glob("*.safetensors"))

    second = [*common, f"report.dir={tmp_path / 'second'}", "study_name=second"]  # same seed: the same students
    index = search(compose_config(second), log=lambda message: None)
    assert (index.parent / "trials.csv").exists()
    assert any((tmp_path / "second" / "second" / "artifacts").glob("*.safetensors"))
