"""Worker crashes over real Celery + Redis: the job that kills its worker is charged, its batch-mates
are not; dead runs leave no staging directory and no unacknowledged message; failures are counted."""

from __future__ import annotations

import time

import httpx
import pytest
import redis

from service.client import Realiz3DClient
from tests.fixtures.redis_server import wait_until
from tests.service_helpers import metric_value

pytestmark = pytest.mark.timeout(420)

FAULTY = {"REALIZ3D_PIPELINE_FACTORY": "tests.fixtures.pipelines:faulty", "REALIZ3D_BATCH_MAX_JOBS": "2"}


def test_a_poison_job_fails_alone_without_failing_its_batch_mates(redis_server, service_launcher):
    broker = redis_server.url(5)
    # One charged loss fails a job: the poison job is charged once it runs alone (after two batched
    # losses, which are free), while every job batched with it must survive each crash.
    # A TTL a busy CI machine cannot miss: a live worker's lease must never lapse in this test.
    env = {"REALIZ3D_JOB_MAX_ATTEMPTS": "1", "REALIZ3D_HEARTBEAT_TTL_SECONDS": "5"}
    gateway = service_launcher.gateway(broker, **env)
    artifacts = service_launcher.tmp / "artifacts"
    workers = [service_launcher.worker(broker, **FAULTY, **env)]
    service_launcher.wait_ready(gateway)
    with Realiz3DClient(gateway.url) as client:
        failed_before = metric_value(client.metrics(), "realiz3d_jobs_total", status="failed")
        mates = [
            client.submit_multiview({"prompt": f"mate {i}", "num_views": 1, "steps": 120}) for i in range(2)
        ]
        poison = client.submit_multiview({"prompt": "poison pill", "num_views": 1, "steps": 120})
        more = [
            client.submit_multiview({"prompt": f"later {i}", "num_views": 1, "steps": 20}) for i in range(2)
        ]
        kills = 0
        deadline = time.monotonic() + 360
        while client.get_job(poison.id).status not in ("failed", "succeeded"):
            assert time.monotonic() < deadline, [w.tail() for w in workers]
            if workers[-1].proc.poll() is not None:  # killed by the poison: its supervisor restarts it
                kills += 1
                workers.append(service_launcher.worker(broker, **FAULTY, **env))
            time.sleep(0.2)
        final = client.get_job(poison.id)
        assert final.status == "failed" and final.error.code == "worker_lost", final
        assert kills >= 3  # two batched losses (free), then one alone (charged)
        for job in mates + more:
            done = client.wait(job.id, timeout=240)
            assert done.status == "succeeded", (job.id, done.error)

        # The failure is counted exactly once, by the process that moved the job to failed. The last
        # worker may have been started after the last kill and still be loading: its counter once it is up.
        service_launcher.wait_ready(workers[-1])
        live = httpx.get(workers[-1].url + "/metrics").text
        failed = metric_value(client.metrics(), "realiz3d_jobs_total", status="failed") - failed_before
        assert failed + metric_value(live, "realiz3d_jobs_total", status="failed") == 1

        # The killed runs' staging directories and unacknowledged broker messages are cleaned up.
        staging = artifacts / ".staging"
        wait_until(lambda: not any(staging.iterdir()), 30, "dead runs' staging dirs to be swept")
        r = redis.Redis.from_url(broker)
        wait_until(lambda: r.hlen("unacked") == 0, 30, "dead workers' unacked messages to be settled")
        # Each job's files are those of the one run that finished it.
        for job in mates + more:
            runs = artifacts / "jobs" / job.id / "runs"
            assert [p.name for p in runs.iterdir()] == [str(client.get_job(job.id).attempts)]
    for sp in (*workers, gateway):
        sp.stop()
