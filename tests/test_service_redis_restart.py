"""A Redis restart under running jobs (AOF on, the supported topology) fails no job and kills no worker.

A real redis-server with AOF, a gateway and a batching Celery worker run as subprocesses. Redis is
SIGKILLed while jobs run, and restarted on the same port loading slowly (`--key-load-delay` over padding
keys in the AOF's RDB base): first every connection is refused, then for about two seconds every command
answers -LOADING (redis-py's BusyLoadingError), the two errors that failed running jobs in issue 22.
Every job must succeed in its first run, and the worker process must still be alive and serving
afterwards. The worker has a free slot when Redis goes away, so its consumer is waiting in BRPOP: the state
in which celery 5.7.0 + kombu 5.7.0 used to exit the worker (`service.jobs.celery_app._Channel`).
"""

from __future__ import annotations

import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.client import Realiz3DClient
from service.jobs.records import JobKind, JobRecord, JobStatus
from service.jobs.redis_store import RedisJobStore
from tests.fixtures.redis_server import RedisServer, ServiceProcess, free_port, start_redis_server, wait_until

pytestmark = pytest.mark.timeout(420)

TERMINAL = ("succeeded", "failed", "canceled")
# admission=queue: a submission during the restart is never turned away for want of a live worker.
# Every step's progress is written, so the outage hits the jobs' own writes at once.
ENV = {
    "REALIZ3D_HEARTBEAT_SECONDS": "0.5",
    "REALIZ3D_HEARTBEAT_TTL_SECONDS": "8",
    "REALIZ3D_ADMISSION": "queue",
    "REALIZ3D_PIPELINE_FACTORY": "tests.fixtures.pipelines:faulty",
    "REALIZ3D_BATCH_MAX_JOBS": "4",
    "REALIZ3D_PROGRESS_INTERVAL_MS": "0",
}
#: padding keys in the RDB base of the AOF, each loaded LOAD_DELAY_US late: a ~2 s LOADING window
PAD_KEYS = 2000
LOAD_DELAY_US = 1000


def pad_aof(server: RedisServer) -> None:
    """Keys in database 15 (no job's), rewritten into the AOF's RDB base, where --key-load-delay applies."""
    r = redis.Redis(port=server.port, db=15)
    for start in range(0, PAD_KEYS, 500):
        r.mset({f"pad:{i}": "x" for i in range(start, min(start + 500, PAD_KEYS))})
    r.bgrewriteaof()
    wait_until(lambda: r.info("persistence")["aof_rewrite_in_progress"] == 0, 30, "the AOF rewrite", 0.1)
    r.close()


def restart(server: RedisServer, workdir) -> tuple[RedisServer, float]:  # noqa: ANN001
    """SIGKILL (after appendfsync everysec put the last second on disk), then restart slowly loading.
    Returns the new server and how long it answered LOADING."""
    time.sleep(1.2)
    server.proc.kill()
    server.proc.wait(5)
    time.sleep(1.0)
    slow = ("--key-load-delay", str(LOAD_DELAY_US), "--loading-process-events-interval-bytes", "1024")
    server = start_redis_server(workdir, port=server.port, appendonly=True, extra=slow)
    # No retries of its own (redis-py's default Retry would wait through LOADING and hide it).
    probe = redis.Redis(port=server.port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    t0 = time.monotonic()
    loading = 0.0
    while time.monotonic() - t0 < 60:
        try:
            probe.ping()
            break
        except redis.BusyLoadingError:
            loading = time.monotonic() - t0
            time.sleep(0.05)
    probe.close()
    return server, loading


def dying(worker: ServiceProcess) -> bool:
    return worker.proc.poll() is not None or "Unrecoverable error" in worker.log.read_text(errors="replace")


def settled(client: Realiz3DClient, ids: list[str]) -> bool:
    try:
        return all(client.get_job(i).status in TERMINAL for i in ids)
    except Exception:  # noqa: BLE001 - the gateway answers 503 while Redis loads
        return False


def test_redis_restart_under_running_jobs_fails_no_job(service_launcher, tmp_path):
    server = start_redis_server(tmp_path, appendonly=True)
    pad_aof(server)
    broker = f"redis://127.0.0.1:{server.port}/0"
    gateway = service_launcher.gateway(broker, healthz_timeout=300, **ENV)
    worker = service_launcher.worker(broker, **ENV)
    try:
        service_launcher.wait_ready(gateway, timeout=300)
        with Realiz3DClient(gateway.url) as client:
            # 3 jobs of ~8 s each run at once on the 4 slots; the restart falls in the middle of them.
            ids = [
                client.submit_multiview({"prompt": f"pace 0.25 restart {i}", "num_views": 1, "steps": 30}).id
                for i in range(3)
            ]
            wait_until(lambda: all(client.get_job(i).progress.step >= 2 for i in ids), 120, "the jobs to run")
            server, loading = restart(server, tmp_path)
            assert loading > 0.5, "the restarted Redis never answered LOADING: the test lost its teeth"
            # A dying worker fails the test at once (a Celery worker that hit an unrecoverable error first
            # finishes its running tasks, then exits).
            wait_until(lambda: dying(worker) or settled(client, ids), 180, "the jobs", 0.5)
            assert not dying(worker), f"the worker is exiting:\n{worker.tail(60)}"
            jobs = [client.get_job(i) for i in ids]
            outcome = {j.id: (j.status, j.error.code if j.error else None, j.attempts) for j in jobs}
            assert all(j.status == "succeeded" for j in jobs), f"{outcome}\n{worker.tail(80)}"
            # ...in their first run: the runs that Redis restarted under carried on (a run that failed on
            # the outage, and whose failure was lost with Redis, would show as a second attempt).
            assert all(j.attempts == 1 for j in jobs), outcome
            # Still serving after the restart: a new job runs to the end on the same worker process.
            after = client.submit_multiview({"prompt": "after the restart", "num_views": 1, "steps": 4})
            wait_until(lambda: dying(worker) or settled(client, [after.id]), 120, "a job after the restart")
            assert client.get_job(after.id).status == "succeeded"
            assert not dying(worker)
        assert "Connection to broker lost" in worker.log.read_text(errors="replace")  # it saw the restart
    finally:
        worker.stop()
        gateway.stop()
        server.proc.kill()
        server.proc.wait(5)


def test_store_scripts_are_idempotent_under_a_retry(redis_server):
    """A retry whose first try ran (its reply lost to a dropped connection) finds its own write: start()
    returns the same run and finish() reports success, while another run's replay is still refused."""
    store = RedisJobStore(redis_server.url(13), retry_seconds=5)
    job = "r" * 22
    store.create(JobRecord(id=job, kind=JobKind.multiview, params={}), max_queue_depth=5, ttl_seconds=60)
    keys = ["realiz3d:job:" + job, "realiz3d:queued:multiview", "realiz3d:running", "realiz3d:lease:" + job]
    argv = [job, "w1", 1234.5, 5000, 60]
    first, replay = store._start(keys, argv), store._start(keys, argv)
    assert first[0] == 1 and str(replay[0]) == "1"
    assert not store._start(keys, [job, "w2", 1234.5, 5000, 60])  # another worker's start: refused
    fkeys = ["realiz3d:job:" + job, "realiz3d:running", "realiz3d:lease:" + job, "realiz3d:cancel:" + job]
    fargv = [job, 1, JobStatus.succeeded.value, 2000.25, 60, "phase", ""]
    assert store._finish(fkeys, fargv) == 1 and store._finish(fkeys, fargv) == 1
    assert store._finish(fkeys, [job, 1, JobStatus.failed.value, 2001.0, 60, "phase", ""]) == 0
    assert store.get(job).status == JobStatus.succeeded
    store.close()


def test_store_without_redis_waits_a_bounded_time_and_never_for_progress():
    """Nothing listens: a worker's write retries for its bound and raises; a progress write is dropped
    and the run check says go on, both at once; the gateway's store (no retry) fails at once."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    worker_store, gateway_store = RedisJobStore(url, retry_seconds=1.5), RedisJobStore(url)
    t0 = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        worker_store.renew_lease("x" * 22, 1, 5)
    assert 1.5 <= time.monotonic() - t0 < 5  # the bound, plus at most one backoff step (1 s)
    t0 = time.monotonic()
    worker_store.progress("x" * 22, 1, 3, 10)
    worker_store.stage("x" * 22, 1, "bake", 0.5)
    assert worker_store.run_check("x" * 22, 1) is None
    assert worker_store.ping() is False
    with pytest.raises(redis.ConnectionError):
        gateway_store.get("x" * 22)
    assert time.monotonic() - t0 < 1
