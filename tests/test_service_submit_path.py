"""The gateway's submission hot path (POST /v1/multiview on the event loop, `AsyncSubmitStore`): the Celery
message it builds itself is kombu's byte for byte and a real Celery worker runs it; one script stores the
job with its message; the answers (replay, conflict, rate limit, no_worker, queue_full) are the threaded
path's, in the same order."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
import redis

from service.jobs.celery_app import RUN_JOB_TASK, make_celery_app
from service.jobs.queue import CeleryJobQueue
from service.jobs.records import JobKind, JobRecord
from service.jobs.redis_store import AsyncSubmitStore, RedisJobStore
from service.jobs.store import AdmissionRefused, IdempotencyConflict, QueueFull, RateLimited, StaleWorkers
from service.settings import Settings
from tests.fixtures.redis_server import wait_until

DB = 14  # this module's own Redis database
JOB_ID = "Lb3kfq1GQz3pWp0o8m1c1A"
SMALL = {"prompt": "a cube", "num_views": 1, "steps": 1}


@pytest.fixture
def url(redis_server) -> str:
    client = redis.Redis.from_url(redis_server.url(DB))
    client.flushdb()
    client.close()
    return redis_server.url(DB)


@pytest.mark.parametrize("kind", list(JobKind))
def test_the_hand_built_task_message_is_what_kombu_writes_byte_for_byte(url, kind):
    queue = CeleryJobQueue(make_celery_app(Settings(broker_url=url)))
    job = JobRecord(id=JOB_ID, kind=kind, params={})
    r = redis.Redis.from_url(url, decode_responses=True)
    queue.enqueue(job)  # celery's send_task through kombu's producer
    assert r.llen(kind.value) == 1
    by_kombu = r.lpop(kind.value)
    name, mine = queue.message(job)
    assert name == kind.value
    ours, theirs = json.loads(mine), json.loads(by_kombu)
    # the two random parts (task id, delivery tag) differ; with kombu's put in, not one byte does
    for random_part in (("headers", "id"), ("properties", "delivery_tag")):
        mine = mine.replace(ours[random_part[0]][random_part[1]], theirs[random_part[0]][random_part[1]])
    assert mine == by_kombu
    assert ours["headers"]["id"].startswith(JOB_ID + ":") and ours["headers"]["id"] != theirs["headers"]["id"]
    r.close()


def test_a_real_celery_worker_runs_the_message_the_submission_script_pushed(url):
    from celery.contrib.testing.worker import start_worker

    app = make_celery_app(Settings(broker_url=url))
    ran: list[str] = []

    @app.task(name=RUN_JOB_TASK, ignore_result=True)
    def run_job(job_id: str) -> None:
        ran.append(job_id)

    queue = CeleryJobQueue(app)
    record = JobRecord(id=JOB_ID, kind=JobKind.multiview, params=SMALL)
    store = AsyncSubmitStore(url)

    async def submit() -> None:
        job, created = await store.create(
            record,
            queue.message(record),
            max_queue_depth=5,
            ttl_seconds=60,
            idempotency_key=None,
            body_hash="h",
            stale="",
            rate=None,
            refusal="",
        )
        assert created and job is record
        await store.close()

    asyncio.run(submit())
    r = redis.Redis.from_url(url, decode_responses=True)
    assert r.llen("multiview") == 1 and r.hget("realiz3d:job:" + JOB_ID, "status") == "queued"
    with start_worker(app, pool="solo", concurrency=1, perform_ping_check=False, queues=["multiview"]):
        wait_until(lambda: ran == [JOB_ID], 30, "the worker to run the job's task")
        # acked (acks_late): nothing left in the queue nor in kombu's unacked hash
        wait_until(lambda: r.llen("multiview") == 0 and r.hlen("unacked") == 0, 10, "the ack")
    r.close()


def _create(store: AsyncSubmitStore, record: JobRecord, **kw):  # noqa: ANN003, ANN202
    args = {
        "max_queue_depth": 5,
        "ttl_seconds": 60,
        "idempotency_key": None,
        "body_hash": "h",
        "stale": "",
        "rate": None,
        "refusal": "",
        **kw,
    }
    return store.create(record, ("multiview", "message of " + record.id), **args)


def test_one_script_stores_the_job_its_webhook_key_and_message_or_nothing(url):
    store, sync = AsyncSubmitStore(url), RedisJobStore(url)
    r = redis.Redis.from_url(url, decode_responses=True)
    webhook = JobRecord(id="w" * 22, kind=JobKind.multiview, params={}, webhook_url="https://example.com/h")

    async def go() -> None:
        assert (await _create(store, webhook, idempotency_key="c:k", body_hash="hash"))[1]
        assert r.lrange("multiview", 0, -1) == ["message of " + webhook.id]
        assert r.zscore("realiz3d:webhooks:pending", webhook.id) is not None
        assert r.zscore("realiz3d:queued:multiview", webhook.id) is not None
        assert r.get("realiz3d:idem:c:k") == webhook.id + "|hash"
        assert sync.get(webhook.id).webhook_url == "https://example.com/h"
        # the same key: found by lookup (a replay), a race loser gets the first job, another body 409
        raw, job, workers = await store.lookup("c:k")
        assert raw == webhook.id + "|hash" and job.id == webhook.id and workers.workers == []
        other = JobRecord(id="o" * 22, kind=JobKind.multiview, params={})
        assert await _create(store, other, idempotency_key="c:k", body_hash="hash") == (job, False)
        with pytest.raises(IdempotencyConflict):
            await _create(store, other, idempotency_key="c:k", body_hash="else")
        # refused and full: nothing written (no record, no message)
        with pytest.raises(AdmissionRefused) as e:
            await _create(store, other, refusal="no_worker")
        assert e.value.code == "no_worker"
        with pytest.raises(QueueFull):
            await _create(store, other, max_queue_depth=1)
        assert not r.exists("realiz3d:job:" + other.id) and r.llen("multiview") == 1
        await store.close()

    asyncio.run(go())
    sync.close()
    r.close()


def test_the_rate_limit_counts_refused_jobs_but_not_429s_nor_replays(url):
    store = AsyncSubmitStore(url)

    def job(i: int) -> JobRecord:
        return JobRecord(id=f"{i:022d}", kind=JobKind.multiview, params={})

    async def go() -> None:
        rate = ("alice", 2, 60.0)
        assert (await _create(store, job(1), rate=rate, idempotency_key="alice:k"))[1]
        with pytest.raises(AdmissionRefused):  # passed the limit, then refused: counted
            await _create(store, job(2), rate=rate, refusal="no_worker")
        for _ in range(3):  # over the limit: 429 with the real wait, never counted
            with pytest.raises(RateLimited) as e:
                await _create(store, job(3), rate=rate)
            assert 59 < e.value.wait <= 60
        # a concurrent replay of the first job's key is answered before the rate limit
        assert (await _create(store, job(4), rate=rate, idempotency_key="alice:k"))[0].id == job(1).id
        assert (await _create(store, job(5), rate=("bob", 2, 60.0)))[1]  # clients are counted apart
        await store.close()

    asyncio.run(go())


def gateway_client(url: str, **kw):  # noqa: ANN003, ANN201
    from fastapi.testclient import TestClient

    from service.api.app import create_gateway_app

    return TestClient(create_gateway_app(Settings(broker_url=url, **kw)))


def test_the_gateway_answers_from_the_async_path_as_from_the_threaded_one(url):
    r = redis.Redis.from_url(url, decode_responses=True)
    with gateway_client(url, admission="require-worker", rate_limit_per_minute=3) as client:
        assert client.app.state.context.submit_store is not None
        first = client.post("/v1/multiview", json=SMALL, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 503 and first.json()["error"]["code"] == "no_worker"
        assert first.headers["Retry-After"] == str(Settings().retry_after_seconds)
        RedisJobStore(url).heartbeat("w1", {"queues": ["multiview"]}, 60)
        accepted = client.post("/v1/multiview", json=SMALL, headers={"Idempotency-Key": "k1"})
        assert accepted.status_code == 202 and accepted.headers["Location"].endswith(accepted.json()["id"])
        job_id = accepted.json()["id"]
        assert r.hget("realiz3d:job:" + job_id, "status") == "queued"
        (message,) = r.lrange("multiview", 0, -1)
        assert json.loads(message)["headers"]["id"].startswith(job_id + ":")
        # replay: same job, not counted; same key, other body: 409
        replay = client.post(
            "/v1/multiview", json={**SMALL, "num_views": 1}, headers={"Idempotency-Key": "k1"}
        )
        assert replay.status_code == 202 and replay.json()["id"] == job_id
        assert replay.headers["Idempotent-Replayed"] == "true"
        conflict = client.post("/v1/multiview", json={**SMALL, "steps": 2}, headers={"Idempotency-Key": "k1"})
        assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_conflict"
        assert client.post("/v1/multiview", json=SMALL).status_code == 202  # the third counted
        limited = client.post("/v1/multiview", json=SMALL)
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
        assert 55 <= int(limited.headers["Retry-After"]) <= 60
        assert r.llen("multiview") == 2  # one message per created job, none for the refused ones
    r.close()


def test_concurrent_submissions_each_get_one_job_and_one_message(url):
    with gateway_client(url, admission="queue", max_queue_depth=1000) as client:
        ids: list[str] = []
        lock = threading.Lock()

        def post() -> None:
            for _ in range(10):
                answer = client.post("/v1/multiview", json=SMALL)
                assert answer.status_code == 202
                with lock:
                    ids.append(answer.json()["id"])

        threads = [threading.Thread(target=post) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    r = redis.Redis.from_url(url, decode_responses=True)
    pushed = [json.loads(m)["headers"]["id"].partition(":")[0] for m in r.lrange("multiview", 0, -1)]
    assert len(ids) == 40 and sorted(pushed) == sorted(ids)
    r.close()


def test_more_submissions_at_once_than_connections_wait_for_one(url):
    store = AsyncSubmitStore(url, connections=4)
    r = redis.Redis.from_url(url, decode_responses=True)

    async def go() -> list[bool]:
        jobs = [JobRecord(id=f"{i:022d}", kind=JobKind.multiview, params={}) for i in range(150)]
        created = await asyncio.gather(*[_create(store, j, max_queue_depth=1000) for j in jobs])
        # (a redis.asyncio pool of 4 alone would refuse the 5th at once: "Too many connections")
        await store.close()
        return [c for _, c in created]

    assert asyncio.run(go()) == [True] * 150
    assert r.llen("multiview") == 150
    r.close()


def test_the_record_is_stored_byte_for_byte_whatever_its_text(url):
    prompt = 'a "quoted" \\ back\nslash \x01 \u00e9t\u00e9 \U0001f600 \u4e2d\u6587 \x00 end'
    record = JobRecord(id=JOB_ID, kind=JobKind.multiview, params={"prompt": prompt, "num_views": 2})
    store, sync = AsyncSubmitStore(url), RedisJobStore(url)

    async def go() -> None:
        await _create(store, record)
        await store.close()

    asyncio.run(go())
    assert sync.get(JOB_ID).to_dict() == record.to_dict()
    sync.close()


def test_a_redis_that_never_answers_is_a_redis_error_within_the_timeout():
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the kernel does), never answers a command
    store = AsyncSubmitStore(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", timeout=0.5)

    async def go() -> None:
        start = time.monotonic()
        with pytest.raises(redis.TimeoutError):  # a RedisError: the API answers 503 broker_unavailable
            await store.lookup(None)
        assert time.monotonic() - start < 3
        await store.close()

    try:
        asyncio.run(go())
    finally:
        silent.close()


CAPS = {"name": "m", "geometry": True, "block_sites": 18, "resolution": 64}


def test_a_snapshot_of_the_workers_that_changed_is_stale_and_nothing_is_done(url):
    store, sync = AsyncSubmitStore(url), RedisJobStore(url)
    r = redis.Redis.from_url(url, decode_responses=True)
    sync.heartbeat("w1", {"queues": ["multiview"], "model": {**CAPS, "resolution_step": 8}}, 60)
    rate = ("alice", 100, 60.0)

    async def go() -> None:
        _, _, snap = await store.lookup(None)
        assert store.snapshot() is snap and [w["model"]["resolution_step"] for w in snap.workers] == [8]
        job = JobRecord(id="a" * 22, kind=JobKind.multiview, params={})
        for change in (
            lambda: sync.heartbeat("w2", {"queues": ["texture"]}, 60),  # one joins
            lambda: sync.heartbeat(
                "w1", {"queues": ["multiview"], "model": {**CAPS, "resolution_step": 16}}, 60
            ),
            lambda: sync.remove_worker("w2"),  # one leaves
            lambda: sync.heartbeat("w1", {"queues": ["multiview"]}, -1),  # one's heartbeat lapses
        ):
            change()
            with pytest.raises(StaleWorkers):
                await _create(store, job, workers=snap, rate=rate)
            assert store.snapshot() is None  # the next submission reads the workers again
            assert not r.exists("realiz3d:job:" + job.id) and r.llen("multiview") == 0
            assert not r.exists("realiz3d:rate:alice")  # not counted
            _, _, snap = await store.lookup(None)
        assert snap.workers == [] and (await _create(store, job, workers=snap, rate=rate))[1]
        await store.close()

    asyncio.run(go())
    sync.close()
    r.close()


def test_submissions_decide_on_the_live_workers_not_on_a_stale_snapshot(url):
    """A snapshot read while the only worker refused resolution 40 (step 16) is not what refuses the next
    submission once a worker that takes it (step 8) replaced it; nor admits one once no worker is left."""
    sync = RedisJobStore(url)
    sync.heartbeat("w16", {"queues": ["multiview"], "model": {**CAPS, "resolution_step": 16}}, 60)
    body = {**SMALL, "resolution": 40}
    with gateway_client(url, admission="require-worker") as client:
        refused = client.post("/v1/multiview", json=body)
        assert refused.status_code == 422 and "multiple of 16" in refused.json()["error"]["message"]
        sync.remove_worker("w16")
        sync.heartbeat("w8", {"queues": ["multiview"], "model": {**CAPS, "resolution_step": 8}}, 60)
        assert client.post("/v1/multiview", json=body).status_code == 202
        assert client.post("/v1/multiview", json=body).status_code == 202  # on the snapshot, verified
        sync.remove_worker("w8")
        gone = client.post("/v1/multiview", json=body)
        assert gone.status_code == 503 and gone.json()["error"]["code"] == "no_worker"
    assert redis.Redis.from_url(url).llen("multiview") == 2
    sync.close()
