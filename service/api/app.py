"""The FastAPI app: `create_app(context)`, plus the two ways to build a context (gateway, embedded)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.access_log import access_log_enabled, log_request
from service.api.auth import ApiKeyMiddleware, ApiKeys
from service.api.context import ServiceContext
from service.api.docs_pages import install_docs
from service.api.errors import install_error_handlers
from service.api.events import listen_redis
from service.api.playground import install_playground
from service.api.routes import router
from service.api.uploads import BodyLimitMiddleware
from service.metrics import HTTP_REQUEST_DURATION, JOBS_TOTAL
from service.settings import Settings
from service.storage import make_artifact_store

log = logging.getLogger("realiz3d.api")

DESCRIPTION = """Photorealistic, 3D-consistent multi-view generation and mesh texturing.

Submit a job (`POST /v1/multiview` or `POST /v1/texture`, answered 202 at once), follow it with
`GET /v1/jobs/{id}` or the Server-Sent Events of `/v1/jobs/{id}/events`, then download its artifacts.
Errors are `{"error": {"code", "message"}}`."""


class RequestMetricsMiddleware:
    """`realiz3d_http_request_duration_seconds{route, method, status}`, labelled by route template, and
    with `access_log` the request's access-log line: one layer observes every request once."""

    def __init__(self, app: ASGIApp, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log
        # the histogram's child per (route, method, status): `labels()` resolves one under a lock each call
        self._observers: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            seconds = time.perf_counter() - start
            key = (label, scope["method"], status)
            observer = self._observers.get(key)
            if observer is None:
                observer = self._observers[key] = HTTP_REQUEST_DURATION.labels(label, key[1], str(status))
            observer.observe(seconds)
            if self.access_log:
                log_request(scope, status, seconds)


def create_app(
    context: ServiceContext,
    background: Callable[[ServiceContext], list[Callable[[], object]]] | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """The HTTP API over `context`. `background(ctx)` returns coroutine factories run for the app's life."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context.hub.bind(asyncio.get_running_loop())
        context.webhooks.bind(asyncio.get_running_loop())
        tasks = [asyncio.create_task(factory()) for factory in (background(context) if background else [])]
        if context.mode == "gateway":
            # Its startup heap (modules, the app, its schemas: ~100k objects) is never garbage. Frozen, no
            # collection walks it again: at 50 clients objects of requests in flight reach the oldest
            # generation fast, and each full collection of that heap was a ~70 ms pause every second.
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            await context.webhooks.close()
            if context.submit_store is not None:
                await context.submit_store.close()
            if on_shutdown:
                on_shutdown()

    s = context.settings
    hide_docs = context.keys.enabled and not s.public_docs
    app = FastAPI(
        title="Realiz3D Serve",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # both served from vendored files (docs_pages): FastAPI's load a CDN
        redoc_url=None,
        openapi_url=None if hide_docs else "/openapi.json",
    )
    app.state.context = context
    install_error_handlers(app)
    app.include_router(router)
    install_playground(app)
    if not hide_docs:
        install_docs(app, "/docs", "/redoc")
    if context.keys.enabled:  # innermost of ours: the metrics and the body limit see its 401s
        app.add_middleware(ApiKeyMiddleware, keys=context.keys)
    app.add_middleware(BodyLimitMiddleware, limit=s.max_upload_bytes, timeout_s=s.body_timeout_seconds)
    app.add_middleware(RequestMetricsMiddleware, access_log=access_log_enabled(s.access_log, context.mode))
    if context.keys.enabled:
        declare_security(app)
    return app


def declare_security(app: FastAPI) -> None:
    """The OpenAPI names the API-key scheme (`Authorization: Bearer KEY`, or `X-API-Key`) on every job
    route, so generated clients send it. Only when keys are configured: without them no route asks for
    one, and the spec says so."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        spec = build()
        spec.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "an API key (REALIZ3D_API_KEYS)"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        for path, operations in spec.get("paths", {}).items():
            if path.startswith("/v1/"):
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}, {"apiKey": []}]
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def fail_unserved(ctx: ServiceContext) -> int:
    """Queued jobs of a kind no live worker serves fail `no_worker` after `worker_wait_seconds` (with
    admission=queue the autoscaler had that long to bring one up). Returns how many failed."""
    from service.jobs.records import JobError, JobKind
    from service.jobs.store import worker_serves

    s = ctx.settings
    if ctx.warming():
        return 0
    workers = ctx.workers_seen = ctx.store.live_workers()
    failed = 0
    for kind in JobKind:
        if worker_serves(workers, kind):
            continue
        error = JobError("no_worker", f"no worker served '{kind}' jobs within {s.worker_wait_seconds} s")
        for job in ctx.store.fail_waiting(kind, time.time() - s.worker_wait_seconds, error):
            JOBS_TOTAL.labels(job.kind.value, "failed").inc()
            failed += 1
    return failed


async def maintenance_loop(ctx: ServiceContext, requeue: bool) -> None:
    """Every heartbeat period: re-queue jobs of dead workers (gateway), fail jobs no worker came for;
    now and then: delete expired artifacts and dead runs' staging directories."""
    from service.jobs.heartbeat import SWEEP_EVERY_BEATS, requeue_lost_jobs, sweep_staging

    s = ctx.settings
    last_expiry = last_sweep = 0.0
    while True:
        await asyncio.sleep(s.heartbeat_seconds)
        try:
            if requeue:
                await asyncio.to_thread(requeue_lost_jobs, ctx.store, ctx.queue, s.job_max_attempts)
            await asyncio.to_thread(fail_unserved, ctx)
            if time.monotonic() - last_sweep > SWEEP_EVERY_BEATS * s.heartbeat_seconds:
                last_sweep = time.monotonic()
                await asyncio.to_thread(sweep_staging, ctx.store, ctx.artifacts)
            if time.monotonic() - last_expiry > 300:
                last_expiry = time.monotonic()
                await asyncio.to_thread(ctx.artifacts.delete_expired, s.job_ttl_seconds + 60)
        except Exception:  # noqa: BLE001 - keep the loop alive through broker blips
            log.exception("maintenance pass failed")


def create_gateway_app(settings: Settings) -> FastAPI:
    """Gateway mode: job records in Redis, jobs to Celery workers; this process never runs a job."""
    from service.jobs.celery_app import make_celery_app
    from service.jobs.queue import CeleryJobQueue
    from service.jobs.redis_store import AsyncSubmitStore, RedisJobStore
    from service.jobs.store import DONE_CHANNEL, EVENTS_CHANNEL

    if not settings.broker_url:
        raise ValueError("gateway mode needs a broker URL")
    store = RedisJobStore(settings.broker_url)
    celery_app = make_celery_app(settings)
    ctx = ServiceContext(
        settings=settings,
        store=store,
        queue=CeleryJobQueue(celery_app, 3 * settings.heartbeat_ttl_seconds),
        artifacts=make_artifact_store(settings),
        keys=ApiKeys(settings.api_keys),
        mode="gateway",
        submit_store=AsyncSubmitStore(settings.broker_url),
    )
    url = settings.broker_url

    def background(c: ServiceContext) -> list[Callable[[], object]]:
        channels = {EVENTS_CHANNEL: c.hub.notify, DONE_CHANNEL: c.webhooks.job_done}
        return [lambda: listen_redis(url, channels, c.hub), lambda: maintenance_loop(c, requeue=True)]

    def shutdown() -> None:
        store.close()
        celery_app.close()

    return create_app(ctx, background, shutdown)
