"""Accepting a job: limits, idempotency, readiness, then store and enqueue. Never waits for a worker."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from service.api.context import ServiceContext
from service.api.errors import ApiError
from service.jobs.records import JobKind, JobRecord, new_job_id
from service.jobs.store import IdempotencyConflict, QueueFull, worker_serves
from service.metrics import JOBS_TOTAL

log = logging.getLogger("realiz3d.api")

MESH_FORMATS = (".glb", ".gltf", ".obj", ".ply", ".zip")


def body_hash(params: dict[str, Any], extra: bytes = b"") -> str:
    h = hashlib.sha256(json.dumps(params, sort_keys=True, separators=(",", ":")).encode())
    h.update(extra)
    return h.hexdigest()


def check_admission(ctx: ServiceContext, kind: JobKind, owner: str | None) -> None:
    """Raise 429 (over rate) or 503 (no live worker for this kind) before anything is stored."""
    s = ctx.settings
    retry = {"Retry-After": str(s.retry_after_seconds)}
    if s.rate_limit_per_minute and ctx.store.hit_rate(owner or "anonymous") > s.rate_limit_per_minute:
        raise ApiError(429, "rate_limited", f"over {s.rate_limit_per_minute} submissions per minute", retry)
    try:
        workers = ctx.store.live_workers()
    except Exception as e:  # noqa: BLE001 - the broker being down is the server's problem, not the client's
        raise ApiError(503, "broker_unavailable", "the job broker is unreachable", retry) from e
    if not worker_serves(workers, kind):
        raise ApiError(503, "no_worker", f"no worker with a loaded model serves '{kind}' jobs", retry)


def submit(
    ctx: ServiceContext,
    kind: JobKind,
    params: dict[str, Any],
    owner: str | None,
    idempotency_key: str | None,
    mesh: tuple[str, bytes] | None = None,
) -> tuple[JobRecord, bool]:
    """Store and enqueue a validated job; returns (job, created). A repeated Idempotency-Key returns the
    first job (created=False) without enqueuing again."""
    s = ctx.settings
    check_admission(ctx, kind, owner)
    record = JobRecord(id=new_job_id(), kind=kind, params=params, owner=owner)
    if mesh is not None:
        record.input_name = "mesh" + mesh[0]
    # Keys are per client: two clients using the same key string get separate jobs.
    scoped_key = f"{owner or '-'}:{idempotency_key}" if idempotency_key else None
    digest = body_hash(params, hashlib.sha256(mesh[1]).digest() if mesh else b"")
    try:
        job, created = ctx.store.create(
            record,
            max_queue_depth=s.max_queue_depth,
            ttl_seconds=s.job_ttl_seconds,
            idempotency_key=scoped_key,
            body_hash=digest,
        )
    except QueueFull as e:
        raise ApiError(
            429,
            "queue_full",
            f"the {kind} queue is full ({s.max_queue_depth} jobs waiting); retry later",
            {"Retry-After": str(s.retry_after_seconds)},
        ) from e
    except IdempotencyConflict as e:
        raise ApiError(
            409, "idempotency_conflict", "this Idempotency-Key was used with a different request body"
        ) from e
    if not created:
        return job, False
    if mesh is not None:
        ctx.artifacts.put_input(job.id, job.input_name or "mesh", mesh[1])
    try:
        ctx.queue.enqueue(job)
    except Exception as e:  # noqa: BLE001 - do not leave a queued record that no message will ever run
        log.exception("enqueue of job %s failed", job.id)
        ctx.store.request_cancel(job.id, s.job_ttl_seconds)
        raise ApiError(503, "broker_unavailable", "the job could not be queued; retry later") from e
    JOBS_TOTAL.labels(kind.value, "queued").inc()
    return job, True
