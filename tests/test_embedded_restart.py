"""Embedded mode keeps its jobs across a restart (service.jobs.local_records): a finished job and its
artifacts are still served after the process is killed and started again; a job that was queued or
running then reads as failed `interrupted`; expired records are dropped."""

from __future__ import annotations

import json
import time

import httpx

from service.jobs.local_records import DiskBackedJobStore
from service.jobs.records import Artifact, JobKind, JobRecord, JobStatus, new_job_id


def _record() -> JobRecord:
    return JobRecord(id=new_job_id(), kind=JobKind.multiview, params={"prompt": "a red cube"})


def test_records_survive_a_new_store(tmp_path):
    store = DiskBackedJobStore(tmp_path)
    done, running, queued = _record(), _record(), _record()
    for r in (done, running, queued):
        store.create(r, max_queue_depth=10, ttl_seconds=3600)
    for r in (done, running):
        store.start(r.id, "w", lease_seconds=60, ttl_seconds=3600)
    art = Artifact(name="grid.png", media_type="image/png", size_bytes=3)
    assert store.finish(
        done.id, 1, JobStatus.succeeded, ttl_seconds=3600, timings={"total": 1.0}, artifacts=[art]
    )
    for step in range(5):  # progress does not rewrite the file
        store.progress(running.id, 1, step, 5)
    assert json.loads((tmp_path / f"{running.id}.json").read_text())["status"] == "running"

    again = DiskBackedJobStore(tmp_path)  # the process restarted
    assert again.restored == 3
    got = again.get(done.id)
    assert got.status == JobStatus.succeeded and got.artifacts == [art] and got.timings == {"total": 1.0}
    for r in (running, queued):
        lost = again.get(r.id)
        assert lost.status == JobStatus.failed and lost.error.code == "interrupted", lost
        assert "submit it again" in lost.error.message
    # and so it stays after one more restart
    assert DiskBackedJobStore(tmp_path).get(running.id).error.code == "interrupted"


def test_expired_records_are_dropped(tmp_path):
    store = DiskBackedJobStore(tmp_path)
    r = _record()
    store.create(r, max_queue_depth=10, ttl_seconds=3600)
    path = tmp_path / f"{r.id}.json"
    data = json.loads(path.read_text())
    data["expires_at"] = time.time() - 1
    path.write_text(json.dumps(data))
    (tmp_path / "garbage.json").write_text("{not json")
    again = DiskBackedJobStore(tmp_path)
    assert again.get(r.id) is None and not path.exists() and again.restored == 0


def test_embedded_server_restart_keeps_jobs_and_artifacts(service_launcher, tmp_path):
    env = {"REALIZ3D_ARTIFACT_DIR": str(tmp_path / "artifacts")}
    first = service_launcher.embedded(**env)
    body = {"prompt": "a red cube", "num_views": 1, "steps": 2, "seed": 3}
    job_id = httpx.post(first.url + "/v1/multiview", json=body).json()["id"]
    deadline = time.monotonic() + 120
    while (job := httpx.get(f"{first.url}/v1/jobs/{job_id}").json())["status"] != "succeeded":
        assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.2)
    grid = httpx.get(f"{first.url}/v1/jobs/{job_id}/artifacts/grid.png").content
    first.stop(sig=9)  # no goodbye

    second = service_launcher.embedded(**env)
    again = httpx.get(f"{second.url}/v1/jobs/{job_id}")
    assert again.status_code == 200 and again.json()["status"] == "succeeded", again.text
    assert httpx.get(f"{second.url}/v1/jobs/{job_id}/artifacts/grid.png").content == grid
    assert "1 earlier jobs read back" in second.log.read_text()
