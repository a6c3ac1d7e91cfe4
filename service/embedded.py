"""Embedded mode (`realiz3d serve` without `--broker`): gateway, queue and worker in one process.

Same routes, same job records (an in-memory store with the Redis store's semantics, each record also
written to disk beside the artifacts so a restart keeps the jobs: service.jobs.local_records), same job
execution code as a Celery worker; no Redis needed, so the service runs on a fresh machine. The model
loads in the background: `/readyz` turns true, and submissions stop answering 503, once it is warm.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fastapi import FastAPI

from service.api.app import create_app, maintenance_loop
from service.api.auth import ApiKeys
from service.api.context import ServiceContext
from service.jobs.execution import WorkerContext, execute_job, model_info
from service.jobs.heartbeat import WorkerHeartbeat
from service.jobs.local_records import RECORDS_DIR, DiskBackedJobStore
from service.jobs.queue import InProcessJobQueue
from service.settings import Settings
from service.storage import make_artifact_store

log = logging.getLogger("realiz3d.embedded")


def create_embedded_app(settings: Settings) -> FastAPI:
    # In memory, with each job's record also on disk beside the artifacts: a restart keeps the jobs.
    store = DiskBackedJobStore(settings.artifact_dir / RECORDS_DIR)
    if store.restored:
        log.info("%d earlier jobs read back from %s", store.restored, store.folder)
    queue = InProcessJobQueue()
    artifacts = make_artifact_store(settings)
    loading = {"state": "warming"}  # -> ready | failed
    ctx = ServiceContext(
        settings=settings,
        store=store,
        queue=queue,
        artifacts=artifacts,
        keys=ApiKeys(settings.api_keys),
        mode="embedded",
        # Jobs are accepted while the model loads (they wait in the queue), not once loading failed.
        warming=lambda: loading["state"] == "warming",
    )
    store.add_listener(ctx.hub.notify_threadsafe)
    store.add_done_listener(ctx.webhooks.job_done_threadsafe)
    stop = threading.Event()
    heartbeat: list[WorkerHeartbeat] = []

    def start_worker() -> None:
        from service.worker import enable_batching, load_pipeline, prepare_compute

        t0 = time.perf_counter()
        log.info(
            "loading the model (%s, backend %s, device %s); jobs submitted meanwhile wait in the queue",
            settings.model_dir or "the embedded default model",
            settings.backend,
            settings.device,
        )
        try:
            threads = prepare_compute(settings)
            pipeline = load_pipeline(settings)
            slots = enable_batching(pipeline, settings, threads)
            pipeline.warmup()  # after batching is on: warms up the thread that will compute
        except Exception:
            loading["state"] = "failed"
            log.exception("the embedded worker could not load the model; /readyz stays false")
            return
        if stop.is_set():
            return
        wctx = WorkerContext(
            settings=settings,
            store=store,
            artifacts=artifacts,
            pipeline=pipeline,
            name="embedded",
            backend=settings.backend,
            slots=slots,
        )
        queue.start(lambda job_id: execute_job(wctx, job_id), threads=slots)
        info = {"name": "embedded", "queues": ["multiview", "texture"], "model": model_info(pipeline)}
        # A hung step past the hard limit fails its job and loses one thread, never the server.
        hb = WorkerHeartbeat(wctx, info, queue=queue, on_hard_limit=lambda job: queue.replace_stuck_thread())
        hb.start()
        heartbeat.append(hb)
        loading["state"] = "ready"
        name = info["model"].get("name", "model") if isinstance(info["model"], dict) else "model"
        log.info(
            "ready: %s loaded and warmed up in %.1f s; jobs run now (%s at once)",
            name,
            time.perf_counter() - t0,
            slots,
        )

    def background(c: ServiceContext) -> list[Callable[[], object]]:
        threading.Thread(target=start_worker, name="realiz3d-model-load", daemon=True).start()
        return [lambda: maintenance_loop(c, requeue=False)]

    def shutdown() -> None:
        stop.set()
        for hb in heartbeat:
            hb.stop()
        queue.stop()

    return create_app(ctx, background, shutdown)
