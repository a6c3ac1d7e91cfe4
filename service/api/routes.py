"""The HTTP routes of the contract. Thin: parse, authorize, call submission/store, shape the response."""

from __future__ import annotations

import asyncio
import hmac
import weakref
from pathlib import PurePosixPath
from typing import Annotated
from urllib.parse import quote

from anyio import CapacityLimiter, to_thread
from fastapi import APIRouter, Body, Depends, Header, Path, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from engines.errors import MeshError
from service.api.auth import presented_key, request_owner
from service.api.context import ServiceContext, get_context
from service.api.errors import ApiError, validation_message
from service.api.events import job_event_stream
from service.api.job_requests import MultiviewJob, TextureJob, engine_params, webhook_of
from service.api.schemas import ErrorResponse, JobAccepted, JobOut, job_accepted, job_out
from service.api.submission import MESH_FORMATS, submit, submit_async
from service.api.texture_form import texture_request_body
from service.api.uploads import check_gltf_json, read_mesh_upload
from service.eta import estimate_record
from service.jobs.records import JobKind, JobRecord
from service.metrics import JOBS_TOTAL, QueueDepthCollector, render
from service.settings import Settings

router = APIRouter()

JOB_ID = Path(..., pattern=r"^[A-Za-z0-9_-]{16,64}$", description="the job id returned on submission")
IDEMPOTENCY_KEY = Header(
    None,
    alias="Idempotency-Key",
    max_length=200,
    description="a retry with the same key returns the same job",
)
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 415, 422, 429, 503)}

_MULTIVIEW_EXAMPLES = {
    "four_views": {
        "summary": "4 views, default schedule",
        "value": {"prompt": "a wooden chair", "num_views": 4, "steps": 30, "guidance_scale": 7.5, "seed": 0},
    },
    "split_schedule": {
        "summary": "step-split domain schedule",
        "value": {
            "prompt": "a ceramic vase",
            "num_views": 6,
            "elevation_deg": 15,
            "steps": 30,
            "schedule": {"split": 0.4},
        },
    },
    "block_split_schedule": {
        "summary": "step split, then the first 6 block sites stay synthetic",
        "value": {
            "prompt": "a ceramic vase",
            "num_views": 4,
            "steps": 30,
            "schedule": {"split": 0.4, "blocks": 6},
        },
    },
    "real_domain": {
        "summary": "all steps in the real domain",
        "value": {"prompt": "a leather boot", "num_views": 2, "steps": 20, "schedule": {"domain": "real"}},
    },
}


Ctx = Annotated[ServiceContext, Depends(get_context)]


#: threads one gateway process submits on at once. submit() is a few Redis round trips and a Celery publish;
#: more threads than this only contend for the GIL (at 50 clients: same req/s, p99 1.8x worse with 40).
SUBMIT_THREADS = 8
_submit: tuple[weakref.ref | None, CapacityLimiter | None] = (None, None)  # (its event loop, the limiter)


def _submit_limiter() -> CapacityLimiter:
    """The limiter of this process's event loop (a CapacityLimiter belongs to the loop it was first used in;
    a process serves from one loop, so a new loop, as in tests, simply gets a new limiter)."""
    global _submit
    loop = asyncio.get_running_loop()
    ref, limiter = _submit
    if limiter is None or ref is None or ref() is not loop:
        limiter = CapacityLimiter(SUBMIT_THREADS)
        _submit = (weakref.ref(loop), limiter)
    return limiter


def _accepted(ctx: ServiceContext, response: Response, job: JobRecord, created: bool) -> JobAccepted:
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return job_accepted(job, estimate_record(ctx.workers_seen, job))


def _accepted_response(ctx: ServiceContext, job: JobRecord, created: bool) -> Response:
    """`_accepted` as the finished response: the body serialized once by JobAccepted's own serializer (the
    bytes FastAPI writes for the response_model), without FastAPI validating the returned model again."""
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    body = job_accepted(job, estimate_record(ctx.workers_seen, job)).model_dump_json()
    return Response(body, status_code=202, headers=headers, media_type="application/json")


def _owned(ctx: ServiceContext, job: JobRecord | None, job_id: str, owner: str | None) -> JobRecord:
    # Another client's job answers exactly like a missing one: ids are not probeable.
    if job is None or (ctx.keys.enabled and job.owner != owner):
        raise ApiError(404, "not_found", f"no job {job_id}")
    return job


def _owned_job(ctx: ServiceContext, job_id: str, owner: str | None) -> JobRecord:
    return _owned(ctx, ctx.store.get(job_id), job_id, owner)


# The hottest route (clients poll it) is declared first: the router tries routes in order.
@router.get("/v1/jobs/{job_id}", response_model=JobOut, responses=_ERRORS, tags=["jobs"])
async def get_job(request: Request, job_id: str = JOB_ID) -> Response:
    """Status, progress, timings per stage, error and artifacts of a job."""
    # The hot path, like POST's: the context and the caller read here, not as dependencies (FastAPI solves
    # each Depends per request); in the gateway the job hash read on the event loop (one HGETALL, no thread
    # hop), elsewhere one explicit hop for the store read; the body serialized once by JobOut's own
    # serializer (no second validation of the response_model).
    ctx: ServiceContext = request.app.state.context
    owner = request_owner(request)
    if ctx.submit_store is not None:
        job = _owned(ctx, await ctx.submit_store.get(job_id), job_id, owner)
    else:
        job = await run_in_threadpool(_owned_job, ctx, job_id, owner)
    return Response(
        job_out(job, estimate_record(ctx.workers_seen, job)).model_dump_json(), media_type="application/json"
    )


@router.post(
    "/v1/multiview",
    status_code=202,
    response_model=JobAccepted,
    responses=_ERRORS,
    tags=["jobs"],
    summary="Generate N views of an object from a prompt",
)
async def create_multiview(
    request_body: Annotated[MultiviewJob, Body(openapi_examples=_MULTIVIEW_EXAMPLES)],
    request: Request,
    idempotency_key: str | None = IDEMPOTENCY_KEY,
) -> Response:
    # the hot path: the context and the caller read here, not as dependencies (FastAPI solves each Depends
    # per request), and the full body dumped only for an Idempotency-Key to compare it by
    ctx: ServiceContext = request.app.state.context
    owner = request_owner(request)
    params = engine_params(request_body)
    full = request_body.model_dump(mode="json") if idempotency_key else None
    webhook_url = webhook_of(request_body)
    if ctx.submit_store is not None:  # the gateway: on the event loop, two Redis round trips, no thread
        job, created = await submit_async(
            ctx, JobKind.multiview, params, owner, idempotency_key, compare=full, webhook_url=webhook_url
        )
        return _accepted_response(ctx, job, created)
    job, created = await to_thread.run_sync(
        lambda: submit(
            ctx, JobKind.multiview, params, owner, idempotency_key, compare=full, webhook_url=webhook_url
        ),
        limiter=_submit_limiter(),
    )
    return _accepted_response(ctx, job, created)


@router.post(
    "/v1/texture",
    status_code=202,
    response_model=JobAccepted,
    responses=_ERRORS,
    tags=["jobs"],
    summary="Texture a mesh (GLB, OBJ or PLY) from a prompt",
    # mesh + `params` JSON and/or each parameter as a plain form field (texture_form)
    openapi_extra={"requestBody": texture_request_body()},
)
async def create_texture(
    request: Request,
    response: Response,
    ctx: Ctx,
    idempotency_key: str | None = IDEMPOTENCY_KEY,
) -> JobAccepted:
    owner = request_owner(request)
    upload = await read_mesh_upload(request)
    try:
        params = TextureJob.model_validate_json(upload.params_json)
    except ValidationError as e:
        raise ApiError(422, "invalid_request", validation_message(e.errors())) from e
    suffix = PurePosixPath(upload.filename).suffix.lower()
    if suffix not in MESH_FORMATS:
        raise ApiError(415, "unsupported_mesh_format", f"mesh must be one of {', '.join(MESH_FORMATS)}")
    await run_in_threadpool(validate_mesh, upload.data, upload.filename, ctx.settings)
    job, created = await run_in_threadpool(
        submit,
        ctx,
        JobKind.texture,
        engine_params(params),
        owner,
        idempotency_key,
        (suffix, upload.data, upload.display_name or upload.filename),
        params.model_dump(mode="json"),
        webhook_of(params),
    )
    return _accepted(ctx, response, job, created)


def validate_mesh(data: bytes, filename: str, settings: Settings) -> None:
    """Cheap parse before queuing, so a garbage upload is a 422 now rather than a failed job later.

    The limits are this deployment's (`REALIZ3D_MAX_UPLOAD_BYTES`, `REALIZ3D_MAX_MESH_FACES`); a GLB's
    JSON chunk is bounded in size and nesting before any parser sees it."""
    if not data:
        raise ApiError(422, "invalid_mesh", "mesh: the file is empty")
    try:
        check_gltf_json(data)
    except MeshError as e:
        raise ApiError(422, e.code, f"mesh: {e}") from e
    try:
        from engines.texturing.mesh_io import validate_mesh_bytes
    except ImportError:  # a gateway-only install without the texturing extras: the worker validates
        return
    try:
        validate_mesh_bytes(data, filename, settings.mesh_limits())
    except MeshError as e:
        raise ApiError(422, e.code, f"mesh: {e}") from e
    except RecursionError as e:  # a parser's stack is not a client's business: still a bad mesh
        raise ApiError(422, "invalid_mesh", "mesh: the file is nested too deeply to read") from e


@router.delete("/v1/jobs/{job_id}", status_code=202, response_model=JobOut, responses=_ERRORS, tags=["jobs"])
def cancel_job(ctx: Ctx, request: Request, job_id: str = JOB_ID) -> JobOut:
    """Cancel: a queued job at once, a running one at its next denoising step. Finished jobs stay as they are."""
    _owned_job(ctx, job_id, request_owner(request))
    outcome = ctx.store.request_cancel(job_id, ctx.settings.job_ttl_seconds)
    if outcome is None:
        raise ApiError(404, "not_found", f"no job {job_id}")
    if outcome.canceled_now:  # concurrent DELETEs: only the one that canceled it counts
        JOBS_TOTAL.labels(outcome.record.kind.value, "canceled").inc()
    return job_out(outcome.record)


@router.get(
    "/v1/jobs/{job_id}/artifacts/{name:path}",
    responses=_ERRORS,
    tags=["jobs"],
    response_class=StreamingResponse,
    summary="Download an artifact (PNG, GLB, JSON) by its name",
    description="Streamed by the gateway, or (REALIZ3D_ARTIFACT_DOWNLOAD=presigned with object storage) "
    "a 307 redirect to a presigned URL of the object store.",
)
def get_artifact(ctx: Ctx, request: Request, job_id: str = JOB_ID, name: str = Path(..., max_length=300)):  # noqa: ANN201
    job = _owned_job(ctx, job_id, request_owner(request))
    artifact = next((a for a in job.artifacts if a.name == name), None)
    s = ctx.settings
    if artifact is not None and s.artifact_download == "presigned":
        url = ctx.artifacts.download_url(job_id, job.attempts, name, s.presigned_url_seconds)
        if url is not None:
            return RedirectResponse(url, status_code=307)
    body = ctx.artifacts.open(job_id, job.attempts, name) if artifact else None
    if artifact is None or body is None:
        raise ApiError(404, "not_found", f"job {job_id} has no artifact {name!r}")
    filename = quote(PurePosixPath(name).name)
    headers = {"Content-Disposition": f"attachment; filename*=utf-8''{filename}"}
    if artifact.size_bytes is not None:
        headers["Content-Length"] = str(artifact.size_bytes)
    return StreamingResponse(_chunks(body), media_type=artifact.media_type, headers=headers)


def _chunks(body, size: int = 1 << 16):  # noqa: ANN001, ANN202 - a binary file object
    try:
        while chunk := body.read(size):
            yield chunk
    finally:
        body.close()


@router.get(
    "/v1/jobs/{job_id}/events",
    responses=_ERRORS,
    tags=["jobs"],
    summary="Server-Sent Events: `status` (whole job) on each status change, `progress` per step",
    response_class=StreamingResponse,
)
async def job_events(
    ctx: Ctx,
    request: Request,
    job_id: str = JOB_ID,
    last_event_id: str | None = Header(None, alias="Last-Event-ID", max_length=32),
) -> StreamingResponse:
    owner = request_owner(request)
    await run_in_threadpool(_owned_job, ctx, job_id, owner)

    async def load(jid: str) -> JobRecord | None:
        return await run_in_threadpool(ctx.store.get, jid)

    stream = job_event_stream(
        job_id,
        load,
        ctx.hub,
        ctx.settings.sse_poll_seconds,
        last_event_id,
        lambda record: estimate_record(ctx.workers_seen, record),
    )
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


@router.get("/healthz", tags=["ops"])
def healthz() -> dict:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"], responses={503: {"description": "not ready"}})
def readyz(ctx: Ctx, response: Response) -> dict:
    """Ready when the broker answers and a worker with a loaded model is alive."""
    broker = ctx.store.ping()
    workers = ctx.store.live_workers() if broker else []
    ready = broker and bool(workers)
    response.status_code = 200 if ready else 503
    # the models the live workers serve (name, native resolution): the playground says what it talks to
    models = {(m.get("name"), m.get("resolution")) for w in workers if isinstance(m := w.get("model"), dict)}
    return {
        "ready": ready,
        "broker": broker,
        "workers": len(workers),
        "mode": ctx.mode,
        "warming": ctx.warming(),
        "models": [{"name": n, "resolution": r} for n, r in sorted(models, key=str) if n],
    }


@router.get("/metrics", tags=["ops"], response_class=Response, responses={401: {"model": ErrorResponse}})
def metrics_endpoint(ctx: Ctx, request: Request) -> Response:
    """Prometheus text format; with REALIZ3D_METRICS_TOKEN set, only for `Authorization: Bearer TOKEN`."""
    token = ctx.settings.metrics_token
    if token and not hmac.compare_digest(presented_key(request) or "", token):
        raise ApiError(
            401, "unauthorized", "/metrics needs the metrics token", {"WWW-Authenticate": "Bearer"}
        )
    body, content_type = render((QueueDepthCollector(ctx.store.queue_depths),))
    return Response(body, media_type=content_type)
