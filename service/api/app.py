"""The FastAPI app: `create_app(context)`, plus the two ways to build a context (gateway, embedded)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.auth import ApiKeys
from service.api.context import ServiceContext
from service.api.errors import install_error_handlers
from service.api.events import listen_redis
from service.api.playground import install_playground
from service.api.routes import router
from service.api.uploads import BodyLimitMiddleware
from service.metrics import HTTP_REQUEST_DURATION
from service.settings import Settings
from service.storage import LocalArtifactStore

log = logging.getLogger("realiz3d.api")

DESCRIPTION = """Photorealistic, 3D-consistent multi-view generation and mesh texturing.

Submit a job (`POST /v1/multiview` or `POST /v1/texture`, answered 202 at once), follow it with
`GET /v1/jobs/{id}` or the Server-Sent Events of `/v1/jobs/{id}/events`, then download its artifacts.
Errors are `{"error": {"code", "message"}}`."""


class RequestMetricsMiddleware:
    """`realiz3d_http_request_duration_seconds{route, method, status}`, labelled by route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
            HTTP_REQUEST_DURATION.labels(label, scope["method"], str(status)).observe(
                time.perf_counter() - start
            )


def create_app(
    context: ServiceContext,
    background: Callable[[ServiceContext], list[Callable[[], object]]] | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """The HTTP API over `context`. `background(ctx)` returns coroutine factories run for the app's life."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context.hub.bind(asyncio.get_running_loop())
        tasks = [asyncio.create_task(factory()) for factory in (background(context) if background else [])]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            if on_shutdown:
                on_shutdown()

    app = FastAPI(title="Realiz3D Serve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.context = context
    install_error_handlers(app)
    app.include_router(router)
    install_playground(app)
    app.add_middleware(BodyLimitMiddleware, limit=context.settings.max_upload_bytes)
    app.add_middleware(RequestMetricsMiddleware)
    return app


async def maintenance_loop(ctx: ServiceContext, requeue: bool) -> None:
    """Re-queue jobs of dead workers (gateway) and delete expired artifacts, every heartbeat period."""
    from service.jobs.heartbeat import requeue_lost_jobs

    s = ctx.settings
    last_sweep = 0.0
    while True:
        await asyncio.sleep(s.heartbeat_seconds)
        try:
            if requeue:
                await asyncio.to_thread(requeue_lost_jobs, ctx.store, ctx.queue, s.job_max_attempts)
            if time.monotonic() - last_sweep > 300:
                last_sweep = time.monotonic()
                await asyncio.to_thread(ctx.artifacts.delete_expired, s.job_ttl_seconds + 60)
        except Exception:  # noqa: BLE001 - keep the loop alive through broker blips
            log.exception("maintenance pass failed")


def create_gateway_app(settings: Settings) -> FastAPI:
    """Gateway mode: job records in Redis, jobs to Celery workers; this process never runs a job."""
    from service.jobs.celery_app import make_celery_app
    from service.jobs.queue import CeleryJobQueue
    from service.jobs.redis_store import RedisJobStore
    from service.jobs.store import EVENTS_CHANNEL

    if not settings.broker_url:
        raise ValueError("gateway mode needs a broker URL")
    store = RedisJobStore(settings.broker_url)
    celery_app = make_celery_app(settings)
    ctx = ServiceContext(
        settings=settings,
        store=store,
        queue=CeleryJobQueue(celery_app),
        artifacts=LocalArtifactStore(settings.artifact_dir),
        keys=ApiKeys(settings.api_keys),
        mode="gateway",
    )
    url = settings.broker_url

    def background(c: ServiceContext) -> list[Callable[[], object]]:
        return [lambda: listen_redis(url, EVENTS_CHANNEL, c.hub), lambda: maintenance_loop(c, requeue=True)]

    def shutdown() -> None:
        store.close()
        celery_app.close()

    return create_app(ctx, background, shutdown)
