"""Running one job: the straight line from a queued record to artifacts and a terminal status.

Shared by the Celery task (workers) and the in-process queue (embedded mode). The pipeline is whatever
`load_pipeline()` returned (engines.pipelines.Realiz3DPipeline in production); this module never imports
torch or the engines' compute code.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from engines.errors import JobCanceled, UserInputError
from engines.requests import MultiviewRequest, TextureRequest
from service import metrics
from service.jobs.progress import ProgressThrottle
from service.jobs.records import JobError, JobKind, JobRecord, JobStatus
from service.jobs.store import JobStore, StartedJob
from service.settings import Settings
from service.storage import ArtifactStore

log = logging.getLogger("realiz3d.worker")


class JobTimeLimitExceeded(Exception):
    """The job ran past `job_soft_time_limit`; it stops at the next step and fails."""


@dataclass
class RunningJob:
    """What the heartbeat thread needs to keep a running job's lease and enforce the hard limit."""

    job_id: str
    attempt: int
    started: float = field(default_factory=time.monotonic)


@dataclass
class WorkerContext:
    """Everything a worker process loads once and reuses for every job."""

    settings: Settings
    store: JobStore
    artifacts: ArtifactStore
    pipeline: Any
    name: str
    backend: str = "torch"
    #: Jobs this process runs now (several when the step batcher shares UNet calls between them).
    running: dict[str, RunningJob] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def running_jobs(self) -> list[RunningJob]:
        with self.lock:
            return list(self.running.values())


def execute_job(ctx: WorkerContext, job_id: str) -> JobStatus | None:
    """Run job `job_id` if it is still queued; returns its final status (None = not ours to run)."""
    started = ctx.store.start(job_id, ctx.name, ctx.settings.heartbeat_ttl_seconds)
    if started is None:
        log.info("job %s is no longer queued; skipping", job_id)
        return None
    with ctx.lock:
        ctx.running[job_id] = RunningJob(job_id, started.attempt)
        metrics.WORKER_BUSY.set(len(ctx.running))
    try:
        return _run(ctx, started)
    finally:
        with ctx.lock:
            ctx.running.pop(job_id, None)
            metrics.WORKER_BUSY.set(len(ctx.running))
        metrics.update_gpu_memory()


def _run(ctx: WorkerContext, started: StartedJob) -> JobStatus:
    job, attempt, settings = started.record, started.attempt, ctx.settings
    queue_wait = max(0.0, (job.started_at or time.time()) - job.created_at)
    metrics.JOB_STAGE_SECONDS.labels(job.kind, "queue_wait").observe(queue_wait)
    deadline = time.monotonic() + settings.job_soft_time_limit
    # A pipeline without the on_unet_call hook: estimate UNet metrics from progress ticks instead.
    views = int(job.params.get("num_views") or 1)
    guidance = job.params.get("guidance_scale")
    batch = views * (2 if guidance is None or float(guidance) > 1 else 1)
    step_clock = _StepClock(ctx.backend, batch) if not hasattr(ctx.pipeline, "on_unet_call") else None
    timed_out = False
    write_progress = ProgressThrottle(
        lambda step, total: ctx.store.progress(job.id, attempt, step, total),
        settings.progress_interval_ms / 1e3,
    )

    def progress(step: int, total: int) -> None:
        if step_clock is not None:
            step_clock.tick(step)
        write_progress(step, total)

    def should_cancel() -> bool:
        nonlocal timed_out
        if time.monotonic() > deadline:
            timed_out = True
            return True
        return ctx.store.cancel_requested(job.id)

    out_dir = ctx.artifacts.staging_dir()
    status, timings, error, artifacts = JobStatus.failed, {}, None, []
    try:
        result = _call_pipeline(ctx, job, progress, should_cancel)
        timings = {k: float(v) for k, v in (result.timings or {}).items()}
        result.save(out_dir)
        artifacts = ctx.artifacts.put_tree(job.id, out_dir)
        status = JobStatus.succeeded
    except JobCanceled:
        if timed_out:
            error = JobError("time_limit", f"the job ran past {settings.job_soft_time_limit} s")
        else:
            status, error = JobStatus.canceled, JobError("canceled", "canceled while running")
    except UserInputError as e:
        error = JobError(e.code, str(e))
    except Exception as e:  # noqa: BLE001 - a bug fails this job, never the worker
        log.exception("job %s failed", job.id)
        error = JobError("internal_error", f"{type(e).__name__}: the job failed inside the worker")
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    timings["queue_wait"] = queue_wait
    if ctx.store.finish(
        job.id,
        attempt,
        status,
        ttl_seconds=settings.job_ttl_seconds,
        timings=timings,
        error=error,
        artifacts=artifacts,
    ):
        metrics.JOBS_TOTAL.labels(job.kind, status.value).inc()
        if status == JobStatus.succeeded:
            metrics.observe_job_timings(job.kind, {k: v for k, v in timings.items() if k != "queue_wait"})
    else:
        log.warning("job %s: run %d lost its lease before finishing; result dropped", job.id, attempt)
    return status


def _call_pipeline(ctx: WorkerContext, job: JobRecord, progress, should_cancel):  # noqa: ANN001, ANN202
    if job.kind == JobKind.multiview:
        request = MultiviewRequest.model_validate(job.params)
        return ctx.pipeline.multiview(request, progress=progress, should_cancel=should_cancel)
    request = TextureRequest.model_validate(job.params)
    mesh_path = ctx.artifacts.input_path(job.id, job.input_name or "mesh.glb")
    return ctx.pipeline.texture(
        request, mesh_path, progress=progress, should_cancel=should_cancel, limits=ctx.settings.mesh_limits()
    )


class _StepClock:
    """Time between consecutive progress callbacks = one denoising step (UNet + scheduler update)."""

    def __init__(self, backend: str, batch_size: int) -> None:
        self._hist = metrics.UNET_STEP_SECONDS.labels(backend)
        self._batch_size = batch_size
        self._last: float | None = None
        self._last_step = -1

    def tick(self, step: int) -> None:
        now = time.perf_counter()
        if self._last is not None and step == self._last_step + 1:
            self._hist.observe(now - self._last)
            metrics.UNET_BATCH_SIZE.observe(self._batch_size)
        self._last, self._last_step = now, step
