"""Readiness and recovery: no worker -> not ready and 503; SIGKILL a worker mid-job -> another finishes it."""

from __future__ import annotations

import signal

import httpx
import pytest

from service.client import Realiz3DAPIError, Realiz3DClient
from tests.fixtures.redis_server import wait_until

pytestmark = pytest.mark.timeout(300)


def test_readyz_and_sigkill_recovery(redis_server, service_launcher):
    broker = redis_server.url(1)  # its own database: no other test's worker can take these jobs
    gateway = service_launcher.gateway(broker)
    client = Realiz3DClient(gateway.url)
    try:
        r = httpx.get(gateway.url + "/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        with pytest.raises(Realiz3DAPIError) as e:
            client.submit_multiview({"prompt": "x", "steps": 2, "num_views": 1})
        assert e.value.status == 503 and e.value.code == "no_worker" and e.value.retry_after

        first = service_launcher.worker(broker)
        service_launcher.wait_ready(gateway)
        assert httpx.get(gateway.url + "/readyz").json()["ready"] is True

        job = client.submit_multiview({"prompt": "a sturdy cube", "num_views": 1, "steps": 40, "seed": 5})
        wait_until(lambda: client.get_job(job.id).progress.step >= 2, 120, "the job to run")
        first.stop(signal.SIGKILL)
        wait_until(lambda: httpx.get(gateway.url + "/readyz").status_code == 503, 30, "readiness to drop")

        second = service_launcher.worker(broker)
        done = client.wait(job.id, timeout=180)
        assert done.status == "succeeded", done.error
        assert done.attempts == 2  # the killed run and the one that finished
        assert done.progress.step == 40
        assert {a.name for a in done.artifacts} >= {"view_00.png", "grid.png"}
        second.stop()
    finally:
        client.close()
        gateway.stop()
