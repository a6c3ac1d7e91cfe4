"""Embedded mode (`realiz3d serve` without a broker, no Redis at all) end to end over real HTTP."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from service.client import AsyncRealiz3DClient, Realiz3DClient
from tests.service_helpers import metric_value

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def embedded(service_launcher):
    server = service_launcher.embedded()
    yield server
    server.stop()


def test_embedded_multiview_and_cancel(embedded):
    with Realiz3DClient(embedded.url) as client:
        job = client.submit_multiview({"prompt": "a teapot", "num_views": 2, "steps": 2, "seed": 0})
        events = list(client.events(job.id, timeout=120))
        assert [e.data["step"] for e in events if e.event == "progress"][-1] == 2
        done = client.get_job(job.id)
        assert done.status == "succeeded"
        Image.open(io.BytesIO(client.download(job.id, "view_01.png"))).load()

        long = client.submit_multiview({"prompt": "a long one", "num_views": 1, "steps": 150})
        for ev in client.events(long.id, timeout=60):
            if ev.event == "progress" and ev.data["step"] >= 1:
                break
        at = client.cancel(long.id).progress.step
        final = client.wait(long.id, timeout=60)
        assert final.status == "canceled" and final.progress.step <= at + 1
        assert "realiz3d_jobs_total" in client.metrics()


def test_embedded_async_client(embedded):
    async def run() -> None:
        async with AsyncRealiz3DClient(embedded.url) as client:
            assert await client.ready()
            jobs = [
                await client.submit_multiview({"prompt": f"object {i}", "num_views": 1, "steps": 2})
                for i in range(2)
            ]
            results = await asyncio.gather(*(client.wait(j.id, timeout=120) for j in jobs))
            assert [r.status for r in results] == ["succeeded", "succeeded"]
            png = await client.download(jobs[0].id, "grid.png")
            assert png[:8] == b"\x89PNG\r\n\x1a\n"

    asyncio.run(run())


def test_embedded_hard_limit_fails_the_job_not_the_server(service_launcher):
    """A step hung past the hard limit fails its job; the server, and jobs after it, carry on. Jobs
    submitted while the model is still loading are accepted and run once it is up."""
    server = service_launcher.gateway(
        None,
        REALIZ3D_BROKER_URL="",
        REALIZ3D_PIPELINE_FACTORY="tests.fixtures.pipelines:faulty",
        REALIZ3D_JOB_SOFT_TIME_LIMIT="1",
        REALIZ3D_JOB_TIME_LIMIT="3",
    )
    try:
        with Realiz3DClient(server.url) as client:
            early = client.submit_multiview({"prompt": "early bird", "num_views": 1, "steps": 2})
            assert not client.ready()  # accepted during warm-up, not refused with 503 no_worker
            hung = client.submit_multiview({"prompt": "hang 8", "num_views": 1, "steps": 4})
            assert client.wait(early.id, timeout=120).status == "succeeded"
            job = client.wait(hung.id, timeout=60)
            assert job.status == "failed" and job.error.code == "time_limit", job
            assert "hard limit" in job.error.message
            after = client.submit_multiview({"prompt": "after", "num_views": 1, "steps": 2})
            assert client.wait(after.id, timeout=60).status == "succeeded"
            assert server.proc.poll() is None
            assert metric_value(client.metrics(), "realiz3d_jobs_total", status="failed") == 1
    finally:
        server.stop()
