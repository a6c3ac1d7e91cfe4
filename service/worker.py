"""Worker bootstrap (`realiz3d worker`): load the model once, warm up, then consume jobs from Celery.

Order matters: the heartbeat (readiness) starts only after the model is loaded and warmed up, so
`/readyz` and the gateway's 503 check see a worker only when it can really run a job. The worker uses
Celery's solo pool when it runs one job at a time, or its thread pool with `REALIZ3D_BATCH_MAX_JOBS` slots
whose jobs share batched UNet calls through the pipeline's step batcher; either way the model lives in
the one process (no fork after loading a model onto a GPU). A SIGKILL takes the whole worker down (the
leases of its jobs lapse and they are re-queued), and SIGTERM is Celery's warm shutdown: running jobs
finish, unstarted messages go back to Redis.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from service import metrics
from service.jobs.execution import WorkerContext, execute_job, model_info
from service.settings import Settings

log = logging.getLogger("realiz3d.worker")


def default_worker_name(settings: Settings) -> str:
    return settings.worker_name or f"{socket.gethostname()}:{os.getpid()}"


def load_pipeline(settings: Settings) -> Any:
    """The pipeline this worker serves (`engines.pipelines.Realiz3DPipeline` unless a factory is set),
    with its UNet-call hook feeding `realiz3d_unet_step_seconds` and `realiz3d_unet_batch_size`; the
    engine cache's hits, misses and build seconds feed `realiz3d_engine_cache_*` from before the load
    (a load may build engines)."""
    if not settings.pipeline_factory:
        metrics.watch_engine_cache(settings.backend)
    pipeline = _build_pipeline(settings)
    if hasattr(pipeline, "on_unet_call"):
        step_seconds = metrics.UNET_STEP_SECONDS.labels(settings.backend)

        def observe(images: int, jobs: int, seconds: float) -> None:
            step_seconds.observe(seconds)
            metrics.UNET_BATCH_SIZE.observe(images)

        pipeline.on_unet_call = observe
    return pipeline


def _build_pipeline(settings: Settings) -> Any:
    if settings.pipeline_factory:
        module, _, attr = settings.pipeline_factory.partition(":")
        return getattr(importlib.import_module(module), attr)(settings)
    from engines.pipelines import Realiz3DPipeline  # lazy: pulls torch, only in worker processes

    return Realiz3DPipeline.load(
        settings.model_dir,
        backend=settings.backend,
        adapters=settings.adapters,
        device=settings.device,
        precision=settings.precision,
        engine_cache_dir=settings.engine_cache_dir,
        max_objects=settings.batch_max_jobs,  # one step of every batched job fits one engine call
        engine_memory_budget_bytes=(
            settings.engine_memory_budget_mb * 2**20 if settings.engine_memory_budget_mb else None
        ),
        cuda_graphs=settings.cuda_graphs,
    )


def prepare_compute(settings: Settings) -> int | None:
    """Process setup on the thread that will load the model, before it does: glibc's allocator
    thresholds and, with batching on, this thread's intra-op threads handed over to the step batcher's
    thread (returned), since a thread that once runs with several makes an OpenMP team that slows the
    batcher's (engines/runtime/cpu_setup.py)."""
    if settings.pipeline_factory:
        return None  # a pipeline of its own (tests, benches): nothing of ours to tune
    from engines.runtime.cpu_setup import compute_threads, helper_thread, tune_allocator

    log.info("allocator: %s", tune_allocator())
    if settings.batch_max_jobs <= 1:
        return None  # one job at a time: no batcher thread to hand the threads to
    threads = compute_threads()
    helper_thread()
    return threads


def pipeline_alive(pipeline: Any) -> bool:
    """False once the pipeline can run no job (its step batcher's thread died)."""
    alive = getattr(pipeline, "alive", None)
    return True if alive is None else bool(alive())


def enable_batching(pipeline: Any, settings: Settings, threads: int | None = None) -> int:
    """Job slots of this worker: `batch_max_jobs` concurrent jobs sharing batched UNet calls, run on the
    batcher's thread with `threads` intra-op threads (None: the calling thread's count). Sets the
    pipeline's image budget per UNet call (`batch_max_images`) either way.

    Returns 1 (one job at a time, no batcher) when batching is off or the pipeline cannot batch.
    """
    if hasattr(pipeline, "set_image_budget"):
        pipeline.set_image_budget(settings.batch_max_images)
    if settings.batch_max_jobs <= 1 or not hasattr(pipeline, "enable_batching"):
        return 1
    pipeline.enable_batching(
        max_jobs=settings.batch_max_jobs, max_wait_ms=settings.batch_max_wait_ms, threads=threads
    )
    return settings.batch_max_jobs


class ProbeServer:
    """The worker's own HTTP port: `/metrics`, `/healthz` (up), `/readyz` (model loaded, broker up)."""

    def __init__(
        self, host: str, port: int, ready: Callable[[], bool], healthy: Callable[[], bool] = lambda: True
    ) -> None:
        ready_fn, healthy_fn = ready, healthy

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?")[0]
                if path == "/metrics":
                    body, ctype = metrics.render()
                    self._send(200, body, ctype)
                elif path == "/healthz":
                    # Unhealthy when the heartbeat thread stalls: the liveness probe restarts the pod.
                    if healthy_fn():
                        self._send(200, b'{"status":"ok"}', "application/json")
                    else:
                        self._send(503, b'{"status":"heartbeat stalled"}', "application/json")
                elif path == "/readyz":
                    ok = ready_fn()
                    self._send(200 if ok else 503, json.dumps({"ready": ok}).encode(), "application/json")
                else:
                    self._send(
                        404, b'{"error":{"code":"not_found","message":"no such path"}}', "application/json"
                    )

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # scrapes every few seconds: keep logs quiet
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="realiz3d-probes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()


def run_worker(settings: Settings) -> int:
    """Run a Celery worker for `settings.queue_names` until SIGTERM/SIGINT; returns the exit code."""
    from service.jobs.celery_app import RUN_JOB_TASK, make_celery_app
    from service.jobs.heartbeat import WorkerHeartbeat
    from service.jobs.queue import CeleryJobQueue
    from service.jobs.redis_store import RedisJobStore
    from service.storage import make_artifact_store

    if not settings.broker_url:
        raise ValueError("realiz3d worker needs --broker URL (or REALIZ3D_BROKER_URL)")
    name = default_worker_name(settings)
    store = RedisJobStore(
        settings.broker_url,
        retry_seconds=settings.redis_retry_seconds,
        lease_grace_seconds=settings.heartbeat_ttl_seconds,
    )
    state: dict[str, bool] = {"loaded": False}
    pipeline: Any = None
    beats: list[WorkerHeartbeat] = []

    def healthy() -> bool:  # before the heartbeat starts (model loading) the process is healthy
        return not beats or beats[0].seconds_since_beat() < 3 * settings.heartbeat_ttl_seconds

    probes = ProbeServer(
        settings.worker_probe_host,
        settings.worker_metrics_port,
        lambda: state["loaded"] and pipeline_alive(pipeline) and store.ping(),
        healthy,
    )
    probes.start()
    log.info("worker %s: probes on port %d; loading the model", name, probes.port)

    t0 = time.perf_counter()
    threads = prepare_compute(settings)
    pipeline = load_pipeline(settings)
    slots = enable_batching(pipeline, settings, threads)
    pipeline.warmup()  # after batching is on: compiles and warms up on the thread that will compute
    state["loaded"] = True
    log.info("worker %s: model loaded and warmed up in %.1f s", name, time.perf_counter() - t0)

    ctx = WorkerContext(
        settings=settings,
        store=store,
        artifacts=make_artifact_store(settings),
        pipeline=pipeline,
        name=name,
        backend=settings.backend,
        slots=slots,
    )
    app = make_celery_app(settings)

    @app.task(name=RUN_JOB_TASK, acks_late=True, ignore_result=True)
    def run_job(job_id: str) -> None:
        execute_job(ctx, job_id)

    info = {
        "name": name,
        "queues": settings.queue_names,
        "backend": settings.backend,
        "metrics_port": probes.port,
        "pid": os.getpid(),
        "slots": slots,
        "model": model_info(pipeline),
    }
    heartbeat = WorkerHeartbeat(
        ctx,
        info,
        queue=CeleryJobQueue(
            app, 3 * settings.heartbeat_ttl_seconds, publish_retry_seconds=settings.redis_retry_seconds
        ),
        ready=lambda: pipeline_alive(pipeline),
    )
    heartbeat.start()
    beats.append(heartbeat)
    worker = app.Worker(
        hostname=f"realiz3d@{name}",
        queues=settings.queue_names,
        # One slot: the solo pool. Several: one thread per job, all feeding the one step batcher that
        # owns the model; each thread acks its own message after its job ends (acks_late still holds).
        pool="solo" if slots == 1 else "threads",
        concurrency=slots,
        prefetch_multiplier=1,
        loglevel="INFO",
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
        optimization="fair",
    )
    try:
        worker.start()
    finally:
        heartbeat.stop()
        probes.stop()
    return int(worker.exitcode or 0)
