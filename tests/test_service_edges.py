"""The service's edges over real HTTP (gateway subprocesses, a real redis-server, Celery workers): the cost
bound, validation, idempotency before admission, exact cancel counts, pushed event streams, protocol
details, admission=queue (scale from zero), and Redis outages."""

from __future__ import annotations

import json
import struct
import threading
import time

import httpx
import pytest
import redis

from service.client import Realiz3DClient
from tests.fixtures.redis_server import start_redis_server, wait_until
from tests.service_helpers import box_glb, metric_value

pytestmark = pytest.mark.timeout(300)

SMALL = {"prompt": "a red cube", "num_views": 1, "steps": 2, "seed": 1}
DB = 4  # no other module's workers here: jobs stay queued until this module starts one
WEBHOOK_DB = 12


@pytest.fixture(scope="module")
def queue_gw(redis_server, service_launcher):
    """admission=queue and no worker yet: every job waits."""
    gw = service_launcher.gateway(redis_server.url(DB), REALIZ3D_ADMISSION="queue")
    yield gw
    gw.stop()


def post(gw, body, **kw) -> httpx.Response:  # noqa: ANN001
    return httpx.post(gw.url + "/v1/multiview", json=body, **kw)


def error_of(r: httpx.Response) -> dict:
    return r.json()["error"]


def test_requests_beyond_the_cost_bound_are_refused_naming_the_limit(queue_gw):
    r = post(queue_gw, {"prompt": "x", "resolution": 848})
    assert r.status_code == 422 and error_of(r)["code"] == "over_budget", r.text
    assert (
        "max_step_pixels" in error_of(r)["message"] and "REALIZ3D_MAX_STEP_PIXELS" in error_of(r)["message"]
    )
    r = post(queue_gw, {"prompt": "x", "num_views": 8, "resolution": 256, "steps": 150})
    assert r.status_code == 422 and "max_pixel_steps" in error_of(r)["message"], r.text
    params = json.dumps({"prompt": "x", "num_views": 1, "steps": 2, "atlas_size": 4096})
    r = httpx.post(
        queue_gw.url + "/v1/texture", files={"mesh": ("m.glb", box_glb()), "params": (None, params)}
    )
    assert r.status_code == 422 and "max_atlas_size" in error_of(r)["message"], r.text


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"prompt": "x", "num_views": 1, "azimuths_deg": [NaN]}', "azimuths_deg"),
        ('{"prompt": "x", "num_views": 1, "azimuths_deg": [1e999]}', "azimuths_deg"),
        ('{"prompt": "x", "elevation_deg": NaN}', "elevation_deg"),
        ('{"prompt": "x", "guidance_scale": Infinity}', "guidance_scale"),
        ('{"prompt": "x", "resolution": 36}', "resolution"),
    ],
)
def test_non_finite_numbers_and_off_grid_resolutions_are_422(queue_gw, raw, field):
    r = httpx.post(queue_gw.url + "/v1/multiview", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert error_of(r)["code"] == "invalid_request" and field in error_of(r)["message"]


def deep_glb(depth: int) -> bytes:
    doc = b"[" * depth + b"]" * depth
    doc += b" " * (-len(doc) % 4)
    return b"glTF" + struct.pack("<II", 2, 20 + len(doc)) + struct.pack("<II", len(doc), 0x4E4F534A) + doc


def test_a_deeply_nested_glb_is_a_4xx_not_a_500(queue_gw):
    params = json.dumps({"prompt": "x", "num_views": 1, "steps": 2, "atlas_size": 64})
    r = httpx.post(
        queue_gw.url + "/v1/texture",
        files={"mesh": ("deep.glb", deep_glb(100_000)), "params": (None, params)},
    )
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_mesh", r.text
    assert "nests" in error_of(r)["message"]


def test_concurrent_cancels_of_one_job_count_one_cancel(queue_gw):
    job = post(queue_gw, SMALL).json()
    before = metric_value(httpx.get(queue_gw.url + "/metrics").text, "realiz3d_jobs_total", status="canceled")
    answers: list[int] = []

    def cancel() -> None:
        answers.append(httpx.delete(f"{queue_gw.url}/v1/jobs/{job['id']}").status_code)

    threads = [threading.Thread(target=cancel) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [202] * 8
    after = metric_value(httpx.get(queue_gw.url + "/metrics").text, "realiz3d_jobs_total", status="canceled")
    assert after - before == 1


def test_idle_event_streams_do_not_poll_and_resume_from_last_event_id(queue_gw, redis_server):
    job = post(queue_gw, SMALL).json()
    r = redis.Redis(port=redis_server.port, db=DB)
    seen: list[list[str]] = []

    def follow() -> None:
        lines: list[str] = []
        seen.append(lines)
        try:
            with httpx.stream("GET", f"{queue_gw.url}/v1/jobs/{job['id']}/events", timeout=6) as response:
                for line in response.iter_lines():
                    lines.append(line)
        except httpx.ReadTimeout:
            pass

    streams = [threading.Thread(target=follow) for _ in range(3)]
    for t in streams:
        t.start()
    wait_until(
        lambda: len(seen) == 3 and all(any(x.startswith("event: status") for x in s) for s in seen),
        10,
        "streams",
    )
    reads = r.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)
    time.sleep(3)  # the job stays queued: nothing is pushed, nothing should be read
    idle_reads = r.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0) - reads
    assert idle_reads <= 1, f"{idle_reads} job reads by 3 idle streams in 3 s (polling)"
    httpx.delete(f"{queue_gw.url}/v1/jobs/{job['id']}")
    for t in streams:
        t.join()
    first_id = next(x for x in seen[0] if x.startswith("id: ")).removeprefix("id: ")
    assert any('"canceled"' in x for x in seen[0])  # the cancel was pushed to the open streams
    with Realiz3DClient(queue_gw.url) as client:
        events = list(client.events(job["id"], timeout=10, last_event_id=first_id))
        assert [e.data["status"] for e in events] == ["canceled"]  # only what the client had not seen
        final_id = events[-1].id
        assert list(client.events(job["id"], timeout=10, last_event_id=final_id)) == []


def test_event_streams_end_with_a_final_event_at_shutdown(redis_server, service_launcher):
    gw = service_launcher.gateway(redis_server.url(DB), REALIZ3D_ADMISSION="queue")
    job = post(gw, SMALL).json()
    lines: list[str] = []

    def follow() -> None:
        with httpx.stream("GET", f"{gw.url}/v1/jobs/{job['id']}/events", timeout=30) as response:
            lines.extend(response.iter_lines())

    t = threading.Thread(target=follow)
    t.start()
    wait_until(lambda: any(x.startswith("event: status") for x in lines), 10, "the stream to start")
    gw.stop()
    t.join(30)
    assert "event: shutdown" in lines, lines


def test_protocol_details(queue_gw):
    job_url = f"{queue_gw.url}/v1/jobs/{'A' * 22}"
    r = httpx.post(job_url)
    assert r.status_code == 405 and set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "DELETE"}
    params = json.dumps({"prompt": "a crate", "num_views": 1, "steps": 2, "atlas_size": 64})
    request = httpx.Request(
        "POST", queue_gw.url + "/v1/texture", files={"mesh": ("b.glb", box_glb()), "params": (None, params)}
    )
    request.headers["content-type"] = request.headers["content-type"].replace(
        "multipart/form-data", "Multipart/Form-Data"
    )
    r = httpx.Client().send(request)
    assert r.status_code == 202, r.text  # media types are case-insensitive
    httpx.delete(f"{queue_gw.url}/v1/jobs/{r.json()['id']}")
    spec = httpx.get(queue_gw.url + "/openapi.json").json()  # no keys: no security declared
    assert "securitySchemes" not in spec["components"]
    assert "security" not in spec["paths"]["/v1/multiview"]["post"]


def test_keys_tokens_timeouts_and_replays(redis_server, service_launcher):
    gw = service_launcher.gateway(
        redis_server.url(DB),
        REALIZ3D_ADMISSION="queue",
        REALIZ3D_API_KEYS="key-alice",
        REALIZ3D_RATE_LIMIT_PER_MINUTE="2",
        REALIZ3D_METRICS_TOKEN="scrape-me",
        REALIZ3D_PUBLIC_DOCS="false",
        REALIZ3D_BODY_TIMEOUT_SECONDS="1",
        REALIZ3D_MAX_MESH_FACES="5",
    )
    auth = {"Authorization": "Bearer key-alice"}
    try:
        # Idempotent replays answer before admission: never rate-counted, compared after defaults.
        first = post(gw, SMALL, headers={**auth, "Idempotency-Key": "k1"})
        assert first.status_code == 202
        for _ in range(5):
            again = post(gw, SMALL, headers={**auth, "Idempotency-Key": "k1"})
            assert again.status_code == 202 and again.json()["id"] == first.json()["id"], again.text
            assert again.headers["idempotent-replayed"] == "true"
        explicit = {  # (no "scheduler": omitted means the model's default_scheduler, not "ddim")
            **SMALL,
            "num_views": 1,
            "negative_prompt": "",
            "elevation_deg": 15.0,
        }
        same = post(gw, explicit, headers={**auth, "Idempotency-Key": "k1"})
        assert same.status_code == 202 and same.json()["id"] == first.json()["id"], same.text
        assert post(gw, SMALL, headers=auth).status_code == 202  # the second counted submission
        limited = post(gw, SMALL, headers=auth)
        assert limited.status_code == 429 and error_of(limited)["code"] == "rate_limited"

        assert httpx.get(gw.url + "/metrics").status_code == 401
        assert (
            httpx.get(gw.url + "/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 200
        )
        assert httpx.get(gw.url + "/docs").status_code == 404
        assert httpx.get(gw.url + "/openapi.json").status_code == 404

        # The upload limits are this deployment's settings, not the engine's defaults.
        params = json.dumps({"prompt": "a crate", "num_views": 1, "steps": 2, "atlas_size": 64})
        r = httpx.post(
            gw.url + "/v1/texture",
            files={"mesh": ("b.glb", box_glb()), "params": (None, params)},
            headers=auth,
        )
        assert r.status_code == 422 and "limit of 5" in error_of(r)["message"], r.text

        def slow_body():
            yield b'{"prompt": '
            time.sleep(2.5)
            yield b'"late"}'

        r = httpx.post(
            gw.url + "/v1/multiview",
            content=slow_body(),
            headers={**auth, "content-type": "application/json"},
        )
        assert r.status_code == 408 and error_of(r)["code"] == "body_timeout", r.text
    finally:
        gw.stop()


def test_jobs_wait_for_a_worker_started_after_the_submit(queue_gw, redis_server, service_launcher):
    """Scale from zero: with no worker the job is accepted and waits; a worker that comes up runs it.
    The worker enforces its own settings (mesh faces, cost) on jobs the gateway let through."""
    with Realiz3DClient(queue_gw.url) as client:
        job = client.submit_multiview(SMALL)
        assert client.get_job(job.id).status == "queued"
        # max_views 1: no planned views, so its cost is under the worker's bound and the face limit decides
        params = {"prompt": "a crate", "num_views": 1, "steps": 2, "atlas_size": 64, "max_views": 1}
        texture = client.submit_texture(box_glb(), params, filename="box.glb")
        pricey = client.submit_multiview({"prompt": "x", "num_views": 1, "steps": 40})
        worker = service_launcher.worker(
            redis_server.url(DB), REALIZ3D_MAX_MESH_FACES="5", REALIZ3D_MAX_PIXEL_STEPS="20000"
        )
        try:
            assert client.wait(job.id, timeout=180).status == "succeeded"
            tex = client.wait(texture.id, timeout=120)
            assert tex.status == "failed" and "limit of 5" in tex.error.message, tex
            over = client.wait(pricey.id, timeout=120)
            assert over.status == "failed" and over.error.code == "over_budget", over
        finally:
            worker.stop()


def test_a_job_no_worker_comes_for_fails_no_worker(redis_server, service_launcher):
    gw = service_launcher.gateway(
        redis_server.url(7), REALIZ3D_ADMISSION="queue", REALIZ3D_WORKER_WAIT_SECONDS="1"
    )
    try:
        with Realiz3DClient(gw.url) as client:
            job = client.wait(client.submit_multiview(SMALL).id, timeout=30)
            assert job.status == "failed" and job.error.code == "no_worker"
            assert metric_value(client.metrics(), "realiz3d_jobs_total", status="failed") == 1
    finally:
        gw.stop()


def test_every_route_answers_503_with_retry_after_while_redis_is_down(service_launcher, tmp_path):
    server = start_redis_server(tmp_path)
    gw = service_launcher.gateway(f"redis://127.0.0.1:{server.port}/0", REALIZ3D_ADMISSION="queue")
    try:
        job = post(gw, SMALL).json()
        server.proc.kill()
        server.proc.wait(5)
        for r in (
            httpx.get(f"{gw.url}/v1/jobs/{job['id']}"),
            httpx.delete(f"{gw.url}/v1/jobs/{job['id']}"),
            httpx.get(f"{gw.url}/v1/jobs/{job['id']}/events"),
            post(gw, SMALL),
            post(gw, SMALL, headers={"Idempotency-Key": "while-down"}),
        ):
            assert r.status_code == 503, (r.request.method, r.request.url, r.text)
            assert r.headers["retry-after"] == "2" and error_of(r)["code"] == "broker_unavailable"
        assert httpx.get(gw.url + "/readyz").status_code == 503
        assert httpx.get(gw.url + "/metrics").status_code == 200
        server = start_redis_server(tmp_path, port=server.port)  # back, empty (no persistence)
        wait_until(lambda: httpx.get(f"{gw.url}/v1/jobs/{job['id']}").status_code == 404, 20, "recovery")
    finally:
        gw.stop()
        server.proc.kill()


def test_webhooks_are_signed_retried_and_delivered_once(redis_server, service_launcher):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from service.api.webhooks import verify

    received: list[tuple[dict, bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers), body))
            self.send_response(500 if len(received) <= 2 else 204)  # two failures, then accepted
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    env = {
        "REALIZ3D_ADMISSION": "queue",
        "REALIZ3D_WEBHOOK_SECRET": "s3cret",
        "REALIZ3D_WEBHOOK_BACKOFF_SECONDS": "0.2",
        "REALIZ3D_WEBHOOK_ALLOWLIST": "127.0.0.1/32",  # the receiver is on loopback
    }
    # Its own database: the module's gateway (no secret) would otherwise race these two for the delivery.
    gateways = [service_launcher.gateway(redis_server.url(WEBHOOK_DB), **env) for _ in range(2)]
    try:
        hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        job = post(gateways[0], {**SMALL, "webhook_url": hook}).json()
        httpx.delete(f"{gateways[1].url}/v1/jobs/{job['id']}")
        wait_until(lambda: len(received) >= 3, 30, "the webhook and its retries")
        time.sleep(1.0)  # any second delivery (from the other gateway) would arrive by now
        assert len(received) == 3
        headers, body = received[-1]
        assert headers["Realiz3D-Event"] == "job.canceled" and headers["Realiz3D-Delivery"] == job["id"]
        assert verify("s3cret", body, headers["Realiz3D-Signature"])
        assert not verify("other", body, headers["Realiz3D-Signature"])
        assert json.loads(body)["status"] == "canceled"
        hook = httpx.get(f"{gateways[0].url}/v1/jobs/{job['id']}").json()["webhook"]
        assert hook["attempts"] == 3 and hook["last_status"] == "HTTP 204" and hook["delivered_at"]
    finally:
        for gw in gateways:
            gw.stop()
        receiver.shutdown()
