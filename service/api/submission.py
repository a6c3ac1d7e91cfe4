"""Accepting a job: idempotency, limits, cost, admission, then store and enqueue. Never waits for a worker.

Order matters. An Idempotency-Key seen before answers the first job at once: a client's retry is never
rate-counted nor refused for want of a worker. Then the request's cost and the model envelope (what a
202 promises: the job can run), then admission (rate limit, a worker for the kind), then the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from typing import Any

from engines.requests import ModelCapabilities
from service.api.context import ServiceContext
from service.api.errors import ApiError
from service.jobs.cost import OverBudget, check_cost, job_cost
from service.jobs.records import JobKind, JobRecord, new_job_id
from service.jobs.store import (
    AdmissionRefused,
    IdempotencyConflict,
    QueueFull,
    RateLimited,
    StaleWorkers,
    worker_serves,
)
from service.metrics import JOBS_TOTAL

log = logging.getLogger("realiz3d.api")

MESH_FORMATS = (".glb", ".gltf", ".obj", ".ply", ".zip")


def body_hash(params: dict[str, Any], extra: bytes = b"") -> str:
    h = hashlib.sha256(json.dumps(params, sort_keys=True, separators=(",", ":")).encode())
    h.update(extra)
    return h.hexdigest()


def model_refusal(workers: list[dict[str, Any]], kind: JobKind, params: dict[str, Any]) -> str | None:
    """Why no live worker's model can serve this job (None when one can, or one does not say)."""
    reasons = []
    for worker in workers:
        if str(kind) not in worker.get("queues", []):
            continue
        if not isinstance(worker.get("model"), dict):
            return None  # a worker that advertises no capabilities decides when it runs the job
        reason = ModelCapabilities.model_validate(worker["model"]).refusal(str(kind), params)
        if reason is None:
            return None
        reasons.append(reason)
    return reasons[0] if reasons else None


def _retry(ctx: ServiceContext) -> dict[str, str]:
    return {"Retry-After": str(ctx.settings.retry_after_seconds)}


def check_request(
    ctx: ServiceContext, kind: JobKind, params: dict[str, Any], workers: list[dict[str, Any]]
) -> None:
    """422 when the job could not run: no serving model can take it (its capabilities, from the live
    workers' heartbeats: resolution step, geometry, block sites), or it is over the cost bound.

    With no live worker (admission=queue, scaled to zero) the worker checks what needs the model."""
    reason = model_refusal(workers, kind, params)
    if reason is not None:
        raise ApiError(422, "unsupported_by_model", reason)
    envelopes = [w.get("model") or {} for w in workers if str(kind) in w.get("queues", [])]
    envelope = next((e for e in envelopes if e), {})
    field = "resolution" if kind == JobKind.multiview else "view_resolution"
    requested = params.get(field)
    native = envelope.get("resolution")
    if requested is None and native is None:
        cost_params = {**params, field: 0}  # steps and views still checked; pixels by the worker
    else:
        cost_params = params
    try:
        check_cost(job_cost(kind, cost_params, int(native or 0)), ctx.settings)
    except OverBudget as e:
        raise ApiError(422, e.code, str(e)) from e


def admitted(ctx: ServiceContext, kind: JobKind, workers: list[dict[str, Any]]) -> bool:
    """False when admission=require-worker and no live worker serves this kind (nor is one warming)."""
    return ctx.settings.admission == "queue" or ctx.warming() or worker_serves(workers, kind)


def _no_worker(ctx: ServiceContext, kind: JobKind) -> ApiError:
    return ApiError(503, "no_worker", f"no worker with a loaded model serves '{kind}' jobs", _retry(ctx))


def _rate_limited(limit: int, wait: float) -> ApiError:
    return ApiError(
        429,
        "rate_limited",
        f"over {limit} submissions per minute; the next one passes in {math.ceil(wait)} s",
        {"Retry-After": str(max(1, math.ceil(wait)))},
    )


def _queue_full(ctx: ServiceContext, kind: JobKind) -> ApiError:
    n = ctx.settings.max_queue_depth
    return ApiError(
        429, "queue_full", f"the {kind} queue is full ({n} jobs waiting); retry later", _retry(ctx)
    )


def _conflict() -> ApiError:
    return ApiError(
        409, "idempotency_conflict", "this Idempotency-Key was used with a different request body"
    )


def check_admission(
    ctx: ServiceContext, kind: JobKind, owner: str | None, workers: list[dict[str, Any]]
) -> None:
    """Raise 429 (over rate) or 503 (no live worker for this kind, with admission=require-worker)."""
    check_rate(ctx, owner)
    if not admitted(ctx, kind, workers):
        raise _no_worker(ctx, kind)


def check_rate(ctx: ServiceContext, owner: str | None) -> None:
    """429 when the client was admitted `rate_limit_per_minute` times in the last 60 s (a sliding window,
    not fixed minutes), with Retry-After = the whole seconds until its next submission would pass."""
    limit = ctx.settings.rate_limit_per_minute
    if not limit:
        return
    wait = ctx.store.take_rate(owner or "anonymous", limit, 60.0)
    if wait > 0:
        raise _rate_limited(limit, wait)


def submit(
    ctx: ServiceContext,
    kind: JobKind,
    params: dict[str, Any],
    owner: str | None,
    idempotency_key: str | None,
    mesh: tuple[str, bytes] | tuple[str, bytes, str] | None = None,
    compare: dict[str, Any] | None = None,
    webhook_url: str | None = None,
) -> tuple[JobRecord, bool]:
    """Store and enqueue a validated job; returns (job, created). A repeated Idempotency-Key returns the
    first job (created=False) without enqueuing again. `compare`: the request with its defaults filled
    in, which is what two bodies under one key are compared by (default: `params`)."""
    s = ctx.settings
    if webhook_url is not None:
        ctx.webhooks.check_target(webhook_url)  # 422 for an internal address (SSRF)
    # Keys are per client: two clients using the same key string get separate jobs.
    scoped_key = f"{owner or '-'}:{idempotency_key}" if idempotency_key else None
    digest = body_hash(compare or params, hashlib.sha256(mesh[1]).digest() if mesh else b"")
    try:
        if scoped_key and (replay := ctx.store.find_idempotent(scoped_key, digest)) is not None:
            return replay, False
        workers = ctx.workers_seen = ctx.store.live_workers()
        check_request(ctx, kind, params, workers)
        check_admission(ctx, kind, owner, workers)
        record = JobRecord(id=new_job_id(), kind=kind, params=params, owner=owner, webhook_url=webhook_url)
        if mesh is not None:
            record.input_name = "mesh" + mesh[0]
            record.upload_name = mesh[2] if len(mesh) > 2 else None
        job, created = ctx.store.create(
            record,
            max_queue_depth=s.max_queue_depth,
            ttl_seconds=s.job_ttl_seconds,
            idempotency_key=scoped_key,
            body_hash=digest,
        )
    except QueueFull as e:
        raise _queue_full(ctx, kind) from e
    except IdempotencyConflict as e:
        raise _conflict() from e
    if not created:
        return job, False
    try:
        if mesh is not None:
            ctx.artifacts.put_input(job.id, job.input_name or "mesh", mesh[1])
        ctx.queue.enqueue(job)
    except Exception as e:  # noqa: BLE001 - do not leave a queued record that no message will ever run
        log.exception("enqueue of job %s failed", job.id)
        ctx.store.request_cancel(job.id, s.job_ttl_seconds)
        raise ApiError(
            503, "broker_unavailable", "the job could not be queued; retry later", _retry(ctx)
        ) from e
    JOBS_TOTAL.labels(kind.value, "queued").inc()
    return job, True


#: submissions verified against a snapshot of the live workers that turned out stale, before the next
#: attempt decides on a fresh read without verifying it (as `submit()` does): workers join and leave far
#: less often than this many round trips
VERIFIED_ATTEMPTS = 2


async def submit_async(
    ctx: ServiceContext,
    kind: JobKind,
    params: dict[str, Any],
    owner: str | None,
    idempotency_key: str | None,
    compare: dict[str, Any] | None = None,
    webhook_url: str | None = None,
) -> tuple[JobRecord, bool]:
    """`submit()` of a job without an upload on the event loop, through `ctx.submit_store` (the gateway's
    `AsyncSubmitStore`): the same checks in the same order with the same answers. One Redis round trip
    while the live workers stay as they are: the model envelope, cost and admission are checked against
    the store's snapshot of the live workers, and the script that counts the rate, refuses (no_worker),
    bounds the queue, stores the record and pushes its message (a job is never stored without its message,
    nor its message sent without it) first verifies that snapshot is exactly the live workers now; if not
    (StaleWorkers, nothing done), the workers are read again and the job decided again. A refusal (422) is
    only answered on workers just read. An Idempotency-Key is read first (one more round trip, which also
    reads the workers): a replay is answered before anything else."""
    s = ctx.settings
    store = ctx.submit_store
    assert store is not None
    if webhook_url is not None:
        ctx.webhooks.check_target(webhook_url)  # 422 for an internal address (SSRF)
    scoped_key = f"{owner or '-'}:{idempotency_key}" if idempotency_key else None
    digest = body_hash(compare or params) if scoped_key else ""  # compared only under a key
    raw, workers = "", store.snapshot()
    fresh = scoped_key is not None or workers is None
    if fresh:
        raw, replay, workers = await store.lookup(scoped_key)
        if replay is not None:
            if raw.partition("|")[2] != digest:
                raise _conflict()
            return replay, False
    limit = s.rate_limit_per_minute
    record = JobRecord(id=new_job_id(), kind=kind, params=params, owner=owner, webhook_url=webhook_url)
    message = ctx.queue.message(record)
    verify = VERIFIED_ATTEMPTS
    while True:
        assert workers is not None
        try:
            check_request(ctx, kind, params, workers.workers)
        except ApiError:
            if fresh:
                raise
            workers, fresh = (await store.lookup(None))[2], True  # refuse on the workers as they are
            continue
        try:
            job, created = await store.create(
                record,
                message,
                max_queue_depth=s.max_queue_depth,
                ttl_seconds=s.job_ttl_seconds,
                idempotency_key=scoped_key,
                body_hash=digest,
                stale=raw,  # a key whose job expired: overwritten, unless another request wins the race
                rate=(owner or "anonymous", limit, 60.0) if limit else None,
                refusal="" if admitted(ctx, kind, workers.workers) else "no_worker",
                workers=workers if verify > 0 else None,
            )
        except StaleWorkers:
            verify -= 1
            workers, fresh = (await store.lookup(None))[2], True
            continue
        except RateLimited as e:
            raise _rate_limited(limit, e.wait) from e
        except AdmissionRefused as e:
            raise _no_worker(ctx, kind) from e
        except QueueFull as e:
            raise _queue_full(ctx, kind) from e
        except IdempotencyConflict as e:
            raise _conflict() from e
        break
    ctx.workers_seen = workers.workers
    if created:
        JOBS_TOTAL.labels(kind.value, "queued").inc()
    return job, created
