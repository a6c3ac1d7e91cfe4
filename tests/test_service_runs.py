"""Runs and their ownership, in process: a run that lost its lease stops at its next step and publishes
nothing; solo runs exclude batched ones; the model envelope and cost bound; the Redis store's scripts."""

from __future__ import annotations

import re
import threading
import time

import pytest

from service.api.errors import ApiError
from service.api.schemas import job_out
from service.api.submission import check_request
from service.jobs import redis_store
from service.jobs.execution import RunGate, WorkerContext, execute_job
from service.jobs.memory_store import MemoryJobStore
from service.jobs.records import JobKind, JobRecord, JobStatus
from service.settings import Settings
from service.storage.local import LocalArtifactStore
from tests.fixtures.redis_server import wait_until

JOB = "L" * 22


def test_a_run_that_lost_its_lease_stops_and_never_promotes_its_files(tmp_path, tiny_model_dir):
    from engines.pipelines import Realiz3DPipeline

    pipeline = Realiz3DPipeline.load(tiny_model_dir, device="cpu")
    calls: list[int] = []
    pipeline.on_unet_call = lambda images, jobs, seconds: calls.append(images)
    store, artifacts = MemoryJobStore(), LocalArtifactStore(tmp_path)
    settings = Settings(artifact_dir=tmp_path, heartbeat_ttl_seconds=60, progress_interval_ms=0)
    ctx = WorkerContext(settings, store, artifacts, pipeline, name="w1")
    params = {"prompt": "a long job", "num_views": 1, "steps": 150, "guidance_scale": 1.0}
    store.create(JobRecord(id=JOB, kind=JobKind.multiview, params=params), max_queue_depth=5, ttl_seconds=60)
    result: list[object] = []
    run = threading.Thread(target=lambda: result.append(execute_job(ctx, JOB)))
    run.start()
    wait_until(lambda: store.get(JOB).progress_step >= 2, 300, "the first run to take a few steps")
    # The first run's lease lapses (as if its worker stalled); the job is re-queued and another run
    # takes it, while the first one is still computing.
    with store._lock:
        store._leases[JOB] = 0.0
    assert [j.id for j in store.requeue_expired(max_attempts=3).requeued] == [JOB]
    second = store.start(JOB, "w2", lease_seconds=60, ttl_seconds=60)
    assert second is not None and second.attempt == 2
    run.join(60)
    assert result == [None]  # the lost run reports nothing
    assert len(calls) < 50  # it stopped at its next step, far from its 150
    job = store.get(JOB)
    assert job.status == JobStatus.running and job.worker == "w2" and job.attempts == 2
    assert not (tmp_path / "jobs" / JOB / "runs" / "1").exists()  # its files were never promoted
    assert not any((tmp_path / ".staging").iterdir())


def test_a_solo_run_waits_for_batched_ones_and_keeps_new_ones_out():
    gate, log, lock = RunGate(), [], threading.Lock()

    def run(name: str, solo: bool, hold: float) -> None:
        with gate.hold(solo):
            with lock:
                log.append(("start", name))
            time.sleep(hold)
            with lock:
                log.append(("end", name))

    first = threading.Thread(target=run, args=("b1", False, 0.3))
    first.start()
    time.sleep(0.05)
    solo = threading.Thread(target=run, args=("solo", True, 0.2))
    solo.start()
    time.sleep(0.05)
    late = threading.Thread(target=run, args=("b2", False, 0.0))
    late.start()
    for t in (first, solo, late):
        t.join(5)
    assert log == [
        ("start", "b1"),
        ("end", "b1"),
        ("start", "solo"),
        ("end", "solo"),
        ("start", "b2"),
        ("end", "b2"),
    ]


def test_requests_are_checked_against_the_served_model_envelope():
    from service.api.context import ServiceContext

    ctx = ServiceContext(settings=Settings(), store=None, queue=None, artifacts=None, keys=None)  # type: ignore[arg-type]
    caps = {"name": "m", "geometry": True, "block_sites": 18}
    workers = [{"queues": ["multiview"], "model": {**caps, "resolution": 64, "resolution_step": 16}}]
    check_request(ctx, JobKind.multiview, {"prompt": "x", "resolution": 48}, workers)
    with pytest.raises(ApiError) as e:
        check_request(ctx, JobKind.multiview, {"prompt": "x", "resolution": 40}, workers)
    assert e.value.status_code == 422 and "multiple of 16" in e.value.detail
    with pytest.raises(ApiError) as e:  # a block split beyond the served model's sites
        check_request(
            ctx, JobKind.multiview, {"prompt": "x", "schedule": {"split": 0.4, "blocks": 19}}, workers
        )
    assert e.value.status_code == 422 and "18 block sites" in e.value.detail
    big = [{"queues": ["multiview"], "model": {**caps, "resolution": 1024, "resolution_step": 8}}]
    with pytest.raises(ApiError) as e:  # the native resolution counts when the request omits one
        check_request(ctx, JobKind.multiview, {"prompt": "x", "num_views": 4}, big)
    assert e.value.code == "over_budget"


def test_redis_scripts_declare_every_key_they_touch():
    scripts = [
        v for k, v in vars(redis_store).items() if k.isupper() and k.startswith("_") and isinstance(v, str)
    ]
    assert len(scripts) >= 8
    for script in scripts:
        literals = re.findall(r"'(realiz3d:[^']*)'", script)
        assert set(literals) <= {"realiz3d:job-events", "realiz3d:job-done"}, literals  # channels, not keys


def test_starting_a_job_refreshes_its_ttl(redis_server):
    store = redis_store.RedisJobStore(redis_server.url(8))
    job, _ = store.create(
        JobRecord(id=JOB, kind=JobKind.multiview, params={}), max_queue_depth=5, ttl_seconds=60
    )
    assert store.redis.ttl("realiz3d:job:" + JOB) <= 60
    assert store.start(JOB, "w", lease_seconds=5, ttl_seconds=3600) is not None
    assert store.redis.ttl("realiz3d:job:" + JOB) > 3000
    store.redis.flushdb()
    store.close()


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_texture_jobs_stage_is_stored_for_its_own_run_only(kind, redis_server):
    store = MemoryJobStore() if kind == "memory" else redis_store.RedisJobStore(redis_server.url(8))
    try:
        store.create(JobRecord(id=JOB, kind=JobKind.texture, params={}), max_queue_depth=5, ttl_seconds=60)
        attempt = store.start(JOB, "w", lease_seconds=5, ttl_seconds=60).attempt
        store.stage(JOB, attempt, "unwrap", 0.25)
        job = store.get(JOB)
        assert (job.stage, job.stage_fraction) == ("unwrap", 0.25)
        store.stage(JOB, attempt + 1, "bake", 0.0)  # a run that does not own the job writes nothing
        assert store.get(JOB).stage == "unwrap"
        assert job_out(store.get(JOB)).progress.stage_fraction == 0.25  # what GET /v1/jobs/{id} shows
    finally:
        if kind == "redis":
            store.redis.flushdb()
            store.close()
