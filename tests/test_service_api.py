"""End to end over real HTTP: gateway (uvicorn) + Celery worker subprocesses + a real redis-server."""

from __future__ import annotations

import io
import json
import threading

import httpx
import pytest
from PIL import Image

from service.client import Realiz3DAPIError, Realiz3DClient
from tests.fixtures.gltf_validator import assert_valid_glb
from tests.fixtures.redis_server import wait_until
from tests.service_helpers import box_glb, metric_value

pytestmark = pytest.mark.timeout(300)

SMALL = {"prompt": "a red cube", "num_views": 2, "steps": 2, "seed": 1}
LONG = {"prompt": "a slow cube", "num_views": 1, "steps": 150, "seed": 2}


@pytest.fixture(scope="module")
def stack(redis_server, service_launcher):
    broker = redis_server.url(0)
    # Two job slots: jobs share batched UNet calls (the step batcher) in this worker.
    worker = service_launcher.worker(broker, REALIZ3D_BATCH_MAX_JOBS="2")
    service_launcher.wait_ready(worker)
    gateway = service_launcher.gateway(broker, REALIZ3D_MAX_QUEUE_DEPTH="3")
    service_launcher.wait_ready(gateway)
    yield gateway, worker
    gateway.stop()
    worker.stop()


@pytest.fixture()
def client(stack):
    with Realiz3DClient(stack[0].url) as c:
        yield c


def wait_running(client: Realiz3DClient, job_id: str, min_step: int = 1) -> int:
    for ev in client.events(job_id, timeout=120):
        if ev.event == "progress" and ev.data["step"] >= min_step:
            return ev.data["step"]
        assert not ev.terminal, ev
    raise AssertionError("stream ended before the job ran")


def test_multiview_job_end_to_end(client):
    accepted = client.submit_multiview(SMALL)
    assert accepted.status == "queued" and accepted.links.events.endswith("/events")
    events = list(client.events(accepted.id, timeout=120))
    steps = [e.data["step"] for e in events if e.event == "progress"]
    assert steps and steps[-1] == SMALL["steps"] and steps == sorted(steps)
    final = events[-1]
    assert final.event == "status" and final.data["status"] == "succeeded", final
    job = client.get_job(accepted.id)
    assert job.progress.step == job.progress.total == SMALL["steps"]
    assert {"denoise", "total", "queue_wait"} <= set(job.timings)
    names = {a.name for a in job.artifacts}
    assert {"view_00.png", "view_01.png", "grid.png", "cameras.json", "meta.json"} <= names
    for name in ("view_00.png", "grid.png"):
        img = Image.open(io.BytesIO(client.download(job.id, name)))
        img.load()
        assert img.format == "PNG" and img.width > 0
    assert json.loads(client.download(job.id, "meta.json"))["seed"] == SMALL["seed"]


def test_texture_job_with_a_small_mesh(client):
    params = {"prompt": "a wooden crate", "num_views": 2, "steps": 2, "atlas_size": 64, "seed": 3}
    accepted = client.submit_texture(box_glb(), params, filename="box.glb")
    job = client.wait(accepted.id, timeout=240)
    assert job.status == "succeeded", job.error
    assert (job.progress.stage, job.progress.stage_fraction) == ("fill", 1.0)  # the last stage, done
    names = {a.name for a in job.artifacts}
    assert {"texture.png", "textured.glb", "meta.json"} <= names
    assert any(n.startswith("views/") for n in names)
    view = next(n for n in sorted(names) if n.startswith("views/"))
    Image.open(io.BytesIO(client.download(job.id, view))).load()
    glb = client.download(job.id, "textured.glb")
    assert glb[:4] == b"glTF"
    assert_valid_glb(glb)


def test_a_gltf_with_its_files_as_parts_is_textured_and_bad_part_names_are_refused(client):
    from tests.test_texturing_inputs import _external_gltf

    doc, files = _external_gltf()  # scene.gltf -> data.bin, textures/albedo.png
    params = {"prompt": "a tile", "num_views": 2, "steps": 2, "atlas_size": 64, "seed": 3}
    gltf = json.dumps(doc).encode()
    accepted = client.submit_texture(gltf, params, filename="scene.gltf", files=files)
    job = client.wait(accepted.id, timeout=240)
    assert job.status == "succeeded", job.error
    assert_valid_glb(client.download(job.id, "textured.glb"))
    with pytest.raises(Realiz3DAPIError) as e:
        client.submit_texture(gltf, params, filename="scene.gltf", files={"../data.bin": files["data.bin"]})
    assert e.value.status == 422 and "relative path" in str(e.value)
    # the geometry's part missing: refused at submission, naming it (the gateway reads the packed parts)
    with pytest.raises(Realiz3DAPIError) as e:
        client.submit_texture(gltf, params, filename="scene.gltf", files={"textures/albedo.png": b"png"})
    assert e.value.status == 422 and e.value.code == "invalid_mesh" and "'data.bin'" in e.value.message


def test_cancel_stops_a_running_job_within_one_step(client):
    accepted = client.submit_multiview(LONG)
    wait_running(client, accepted.id, min_step=2)
    at_cancel = client.cancel(accepted.id).progress.step
    job = client.wait(accepted.id, timeout=60)
    assert job.status == "canceled"
    assert job.error is not None and job.error.code == "canceled"
    # the step in flight when the flag was set may complete; the next one never starts
    assert job.progress.step <= at_cancel + 1 < LONG["steps"]


def test_idempotency_key_returns_the_same_job(client):
    first = client.submit_multiview(SMALL, idempotency_key="retry-me-1")
    again = client.submit_multiview(SMALL, idempotency_key="retry-me-1")
    assert again.id == first.id
    with pytest.raises(Realiz3DAPIError) as e:
        client.submit_multiview({**SMALL, "seed": 99}, idempotency_key="retry-me-1")
    assert e.value.status == 409 and e.value.code == "idempotency_conflict"
    assert client.wait(first.id, timeout=120).status == "succeeded"


def test_full_queue_answers_429_with_retry_after(client):
    busy_jobs = [client.submit_multiview(LONG) for _ in range(2)]  # fill both slots of the worker
    for job in busy_jobs:
        wait_running(client, job.id, min_step=1)
    queued = [client.submit_multiview(SMALL) for _ in range(3)]  # REALIZ3D_MAX_QUEUE_DEPTH=3
    with pytest.raises(Realiz3DAPIError) as e:
        client.submit_multiview(SMALL)
    assert e.value.status == 429 and e.value.code == "queue_full" and e.value.retry_after == 2
    for job in queued:
        assert client.cancel(job.id).status == "canceled"  # queued: canceled at once
    for busy in busy_jobs:
        client.cancel(busy.id)
        assert client.wait(busy.id, timeout=60).status == "canceled"
    room = client.submit_multiview(SMALL)  # room again
    assert client.wait(room.id, timeout=120).status == "succeeded"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"prompt": "x", "num_views": "many"}, 422, "num_views"),
        ({"prompt": "x", "num_views": 9}, 422, "num_views"),
        ({"prompt": "x", "steps": 0}, 422, "steps"),
        ({"prompt": "x", "steps": 151}, 422, "steps"),
        ({"prompt": "x", "cache_interval": 0}, 422, "cache_interval"),
        ({"prompt": "x", "cache_interval": -2}, 422, "cache_interval"),
        ({"prompt": "   "}, 422, "prompt"),
        ({"num_views": 2}, 422, "prompt"),
        ({"prompt": "x", "schedule": {"split": 1.5}}, 422, "schedule"),
        ({"prompt": "x", "schedule": {"domain": "cartoon"}}, 422, "schedule"),
        ({"prompt": "x", "colour": "red"}, 422, "colour"),
        ({"prompt": "x", "num_views": 2, "azimuths_deg": [0]}, 422, "azimuths_deg"),
    ],
)
def test_invalid_multiview_fields_are_422(stack, body, status, field):
    r = httpx.post(stack[0].url + "/v1/multiview", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and field in err["message"]


def test_bad_requests_get_the_right_4xx_never_500(stack):
    url = stack[0].url
    params = json.dumps({"prompt": "a crate", "num_views": 1, "steps": 2, "atlas_size": 64})
    cases = [
        (
            httpx.post(
                url + "/v1/multiview", content=b"{not json", headers={"content-type": "application/json"}
            ),
            400,
            "invalid_json",
        ),
        (
            httpx.post(
                url + "/v1/texture", files={"mesh": ("m.glb", b"garbage bytes"), "params": (None, params)}
            ),
            422,
            "invalid_mesh",
        ),
        (
            httpx.post(url + "/v1/texture", files={"mesh": ("m.txt", box_glb()), "params": (None, params)}),
            415,
            "unsupported_mesh_format",
        ),
        (
            httpx.post(
                url + "/v1/texture", files={"mesh": ("m.glb", box_glb()), "params": (None, '{"steps": 2}')}
            ),
            422,
            "invalid_request",
        ),
        (httpx.post(url + "/v1/texture", files={"params": (None, params)}), 422, "invalid_request"),
        (httpx.post(url + "/v1/texture", json={"prompt": "x"}), 415, "unsupported_media_type"),
        (
            httpx.post(
                url + "/v1/texture",
                files={"mesh": ("big.glb", b"\0" * (3 * 1024 * 1024)), "params": (None, params)},
            ),
            413,
            "payload_too_large",
        ),
        (httpx.get(url + "/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA"), 404, "not_found"),
        (httpx.get(url + "/v1/jobs/short"), 422, "invalid_request"),
        (httpx.get(url + "/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA/artifacts/../../etc/passwd"), 404, "not_found"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert response.json()["error"]["code"] == code, response.text


def test_oversized_streamed_upload_is_413(stack):
    def chunks():
        for _ in range(48):
            yield b"\0" * 65536  # 3 MiB without a Content-Length: stopped while streaming

    r = httpx.post(
        stack[0].url + "/v1/multiview", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_metrics_count_the_jobs_run(client, stack):
    gateway, worker = stack
    before_w = httpx.get(worker.url + "/metrics").text
    before_g = client.metrics()
    jobs = [client.submit_multiview({**SMALL, "seed": 10 + i}) for i in range(2)]
    for job in jobs:
        assert client.wait(job.id, timeout=120).status == "succeeded"
    after_w = httpx.get(worker.url + "/metrics").text
    after_g = client.metrics()

    def delta(before: str, after: str, name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta(before_w, after_w, "realiz3d_jobs_total", kind="multiview", status="succeeded") == 2
    assert delta(before_g, after_g, "realiz3d_jobs_total", kind="multiview", status="queued") == 2
    assert (
        delta(before_w, after_w, "realiz3d_job_stage_seconds_count", kind="multiview", stage="denoise") == 2
    )
    assert (
        delta(before_w, after_w, "realiz3d_job_stage_seconds_count", kind="multiview", stage="queue_wait")
        == 2
    )
    assert delta(before_w, after_w, "realiz3d_unet_step_seconds_count", backend="torch") >= 2
    route = {"route": "/v1/multiview", "method": "POST", "status": "202"}
    assert delta(before_g, after_g, "realiz3d_http_request_duration_seconds_count", **route) == 2
    assert "realiz3d_queue_depth" in after_g and "realiz3d_worker_busy" in after_w


def test_api_keys_guard_jobs(stack, service_launcher, redis_server):
    gateway = service_launcher.gateway(redis_server.url(0), REALIZ3D_API_KEYS="key-alice,key-bob")
    try:
        assert httpx.post(gateway.url + "/v1/multiview", json=SMALL).status_code == 401
        bad = httpx.post(gateway.url + "/v1/multiview", json=SMALL, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized"
        assert bad.headers["www-authenticate"] == "Bearer"
        # checked before the body is validated or the path routed: an unknown caller learns neither
        invalid = httpx.post(gateway.url + "/v1/multiview", json={"num_views": 99})
        assert invalid.status_code == 401, invalid.text
        assert httpx.get(gateway.url + "/v1/no-such-route").status_code == 401
        assert httpx.get(gateway.url + "/healthz").status_code == 200  # outside /v1: open
        with (
            Realiz3DClient(gateway.url, api_key="key-alice") as alice,
            Realiz3DClient(gateway.url, api_key="key-bob") as bob,
        ):
            job = alice.submit_multiview(SMALL)
            assert alice.get_job(job.id).id == job.id
            with pytest.raises(Realiz3DAPIError) as e:
                bob.get_job(job.id)
            assert e.value.status == 404
            # the same Idempotency-Key from two clients makes two jobs
            a = alice.submit_multiview(SMALL, idempotency_key="shared")
            b = bob.submit_multiview(SMALL, idempotency_key="shared")
            assert a.id != b.id
            for jid, c in ((job.id, alice), (a.id, alice), (b.id, bob)):
                assert c.wait(jid, timeout=120).status == "succeeded"
    finally:
        gateway.stop()


def test_openapi_documents_the_routes(stack):
    spec = httpx.get(stack[0].url + "/openapi.json").json()
    for path in (
        "/v1/multiview",
        "/v1/texture",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/artifacts/{name}",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in spec["paths"], path
    body = spec["paths"]["/v1/multiview"]["post"]["requestBody"]["content"]["application/json"]
    assert body.get("examples")
    assert "multipart/form-data" in spec["paths"]["/v1/texture"]["post"]["requestBody"]["content"]


def test_concurrent_event_streams(client):
    jobs = [client.submit_multiview({**SMALL, "seed": 30 + i}) for i in range(3)]
    results: dict[str, str] = {}

    def follow(job_id: str) -> None:
        with Realiz3DClient(client._http.base_url.__str__()) as c:
            results[job_id] = c.wait(job_id, timeout=180).status

    threads = [threading.Thread(target=follow, args=(j.id,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {j.id: "succeeded" for j in jobs}
    wait_until(lambda: client.get_job(jobs[-1].id).status == "succeeded", 5, "final status")
