"""Artifact stores: the local directory (never follows symlinks, one folder per run) and the S3 store,
against a real S3 API server process (moto's standalone server), then end to end through the service."""

from __future__ import annotations

import os

import httpx
import pytest

from service.client import Realiz3DClient
from service.storage.local import LocalArtifactStore
from service.storage.s3 import S3ArtifactStore
from tests.service_helpers import box_glb

pytestmark = pytest.mark.timeout(300)

JOB = "J" * 22


def _run_files(store, attempt: int = 1, text: bytes = b"one") -> None:  # noqa: ANN001
    staging = store.staging_dir(JOB, attempt)
    (staging / "views").mkdir()
    (staging / "views" / "view_00.png").write_bytes(text)
    (staging / "meta.json").write_bytes(b"{}")
    return staging


def test_local_store_never_follows_symlinks(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve me")
    store = LocalArtifactStore(tmp_path / "artifacts")
    staging = _run_files(store)
    os.symlink(secret, staging / "leak.txt")  # a link in a run's output is not published
    artifacts = store.put_run(JOB, 1, staging)
    assert [a.name for a in artifacts] == ["meta.json", "views/view_00.png"]
    assert store.open(JOB, 1, "views/view_00.png").read() == b"one"
    run_dir = tmp_path / "artifacts" / "jobs" / JOB / "runs" / "1"
    os.symlink(secret, run_dir / "planted.json")  # planted after the fact: still refused
    assert store.open(JOB, 1, "planted.json") is None
    (run_dir / "views" / "view_00.png").unlink()
    os.rmdir(run_dir / "views")
    os.symlink(tmp_path, run_dir / "views")  # a directory swapped for a link
    (tmp_path / "view_00.png").write_text("outside")
    assert store.open(JOB, 1, "views/view_00.png") is None


def test_local_store_keeps_runs_apart_and_sweeps_dead_staging(tmp_path):
    store = LocalArtifactStore(tmp_path)
    store.put_run(JOB, 1, _run_files(store, 1, b"first"))
    store.put_run(JOB, 2, _run_files(store, 2, b"second"))
    assert store.open(JOB, 1, "views/view_00.png").read() == b"first"
    assert store.open(JOB, 2, "views/view_00.png").read() == b"second"
    store.discard_run(JOB, 1)
    assert store.open(JOB, 1, "views/view_00.png") is None
    dead, alive = store.staging_dir(JOB, 3), store.staging_dir(JOB, 4)
    assert store.sweep_staging(lambda job_id, attempt: attempt == 4, grace_s=0) == 1
    assert not dead.exists() and alive.exists()


def test_s3_store_against_a_real_s3_server(s3_server, tmp_path, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    store = S3ArtifactStore(
        s3_server.bucket, prefix="t1", endpoint_url=s3_server.endpoint, staging_root=tmp_path / "staging"
    )
    artifacts = store.put_run(JOB, 1, _run_files(store, 1, b"png bytes"))
    assert [(a.name, a.media_type, a.size_bytes) for a in artifacts] == [
        ("meta.json", "application/json", 2),
        ("views/view_00.png", "image/png", 9),
    ]
    assert not (tmp_path / "staging" / f"{JOB}.1").exists()  # staging removed once uploaded
    assert store.open(JOB, 1, "views/view_00.png").read() == b"png bytes"
    assert store.open(JOB, 2, "views/view_00.png") is None  # another run's files are not these
    assert store.open(JOB, 1, "../1/meta.json") is None
    url = store.download_url(JOB, 1, "views/view_00.png", 60)
    assert httpx.get(url).content == b"png bytes"  # presigned: no credentials needed

    store.put_input(JOB, "mesh.glb", b"glTF...")
    assert store.fetch_input(JOB, "mesh.glb", tmp_path / "work").read_bytes() == b"glTF..."
    store.discard_run(JOB, 1)
    assert store.open(JOB, 1, "views/view_00.png") is None
    keys = [
        o["Key"]
        for o in s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="t1/")["Contents"]
    ]
    assert keys == [f"t1/jobs/{JOB}/_inputs/mesh.glb"]
    assert store.delete_expired(-60) == 1  # everything is "older" than a minute in the future
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="t1/")


@pytest.fixture(scope="module")
def s3_stack(redis_server, service_launcher, s3_server, tmp_path_factory):
    broker = redis_server.url(6)
    staging = str(tmp_path_factory.mktemp("s3-staging"))
    env = s3_server.env(REALIZ3D_S3_PREFIX="e2e", REALIZ3D_STAGING_DIR=staging)
    # No shared artifact directory: each process gets its own, so only the bucket can carry files.
    worker = service_launcher.worker(broker, REALIZ3D_ARTIFACT_DIR=staging + "/w", **env)
    gateway = service_launcher.gateway(broker, REALIZ3D_ARTIFACT_DIR=staging + "/g", **env)
    presigned = service_launcher.gateway(
        broker, REALIZ3D_ARTIFACT_DIR=staging + "/p", REALIZ3D_ARTIFACT_DOWNLOAD="presigned", **env
    )
    service_launcher.wait_ready(gateway)
    yield gateway, presigned
    for sp in (presigned, gateway, worker):
        sp.stop()


def test_jobs_store_artifacts_and_uploads_in_s3(s3_stack, s3_server):
    gateway, presigned = s3_stack
    with Realiz3DClient(gateway.url) as client:
        job = client.wait(client.submit_multiview({"prompt": "a cube", "num_views": 2, "steps": 2}).id, 120)
        assert job.status == "succeeded", job.error
        png = client.download(job.id, "view_00.png")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        params = {"prompt": "a crate", "num_views": 1, "steps": 2, "atlas_size": 64}
        tex = client.wait(client.submit_texture(box_glb(), params, filename="box.glb").id, 240)
        assert tex.status == "succeeded", tex.error  # the worker read the upload from the bucket
        assert client.download(tex.id, "textured.glb")[:4] == b"glTF"
    keys = {
        o["Key"]
        for o in s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="e2e/")["Contents"]
    }
    assert f"e2e/jobs/{job.id}/runs/1/view_00.png" in keys
    assert f"e2e/jobs/{tex.id}/_inputs/mesh.glb" in keys
    r = httpx.get(f"{presigned.url}/v1/jobs/{job.id}/artifacts/view_00.png")
    assert r.status_code == 307 and r.headers["location"].startswith(s3_server.endpoint)
    with Realiz3DClient(presigned.url) as client:
        assert client.download(job.id, "view_00.png") == png  # the client follows the redirect
