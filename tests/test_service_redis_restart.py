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
from tests.fixtures.redis_server import RedisServer, ServiceProcess, start_redis_server, wait_until

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
