"""Running one job: the straight line from a queued record to artifacts and a terminal status.

Shared by the Celery task (workers) and the in-process queue (embedded mode). The pipeline is whatever
`load_pipeline()` returned (engines.pipelines.Realiz3DPipeline in production); this module never imports
torch or the engines' compute code.

A run owns its job from `start()` to `finish()`, both checked by attempt number in the store. Before each
step it asks the store whether it still owns the job (`run_check`): a run whose lease was taken over
stops at once, and its files, written under its own attempt, are deleted instead of promoted.
Who is charged for a lost worker: a run reports its phase once it computes, solo (alone on the worker:
one slot, or a job that was lost twice and now runs unbatched) or batched. Only a solo run's loss counts
toward `job_max_attempts` (service.jobs.store).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.errors import JobCanceled, UserInputError
from engines.requests import MultiviewRequest, TextureRequest
from service import metrics
from service.eta import WorkerCosts
from service.jobs.cost import check_cost, job_cost
from service.jobs.progress import ProgressThrottle, StageThrottle
from service.jobs.records import JobError, JobKind, JobRecord, JobStatus
from service.jobs.store import PHASE_BATCHED, PHASE_SOLO, JobStore, StartedJob
from service.settings import Settings
from service.storage import ArtifactStore

log = logging.getLogger("realiz3d.worker")


@dataclass
class RunningJob:
    """What the heartbeat thread needs to keep a running job's lease and enforce the hard limit."""

    job_id: str
    attempt: int
    started: float = field(default_factory=time.monotonic)  # reset when the run starts computing
    #: the store says another run owns the job now (lease lapsed): stop at the next step, publish nothing
    lost: bool = False
    #: failed by the hard limit while a step hung: the heartbeat leaves it alone from then on
    abandoned: bool = False


class RunGate:
    """Batched runs share the worker; a solo run waits for them to finish and keeps new ones out.

    A readers-writer lock with writer preference: a solo run waiting blocks new batched runs, so it
    cannot starve behind a stream of them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._batched = 0
        self._solo = False
        self._solo_waiting = 0

    @contextmanager
    def hold(self, solo: bool) -> Iterator[None]:
        with self._cond:
            if solo:
                self._solo_waiting += 1
                self._cond.wait_for(lambda: not self._solo and self._batched == 0)
                self._solo_waiting -= 1
                self._solo = True
            else:
                self._cond.wait_for(lambda: not self._solo and self._solo_waiting == 0)
                self._batched += 1
        try:
            yield
        finally:
            with self._cond:
                if solo:
                    self._solo = False
                else:
                    self._batched -= 1
                self._cond.notify_all()


@dataclass
class WorkerContext:
    """Everything a worker process loads once and reuses for every job."""

    settings: Settings
    store: JobStore
    artifacts: ArtifactStore
    pipeline: Any
    name: str
    backend: str = "torch"
    slots: int = 1  # jobs this worker runs at once (batched); 1 = every run is solo
    #: Jobs this process runs now (several when the step batcher shares UNet calls between them).
    running: dict[str, RunningJob] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    gate: RunGate = field(default_factory=RunGate)
    #: what its steps and jobs cost, published with its heartbeat (service/eta.py); None: the pipeline's
    costs: WorkerCosts | None = None

    def __post_init__(self) -> None:
        if self.costs is None:
            self.costs = WorkerCosts.of(self.pipeline)

    def running_jobs(self) -> list[RunningJob]:
        with self.lock:
            return list(self.running.values())


def model_info(pipeline: Any) -> dict[str, Any]:
    """The heartbeat's `model` entry: what the loaded model can serve (`engines.requests.ModelCapabilities`:
    native resolution, resolution step, geometry, block sites); the gateway refuses the rest."""
    if not hasattr(pipeline, "capabilities"):
        return {}
    return pipeline.capabilities().model_dump()


def execute_job(ctx: WorkerContext, job_id: str) -> JobStatus | None:
    """Run job `job_id` if it is still queued; returns its final status (None = not ours to run)."""
    s = ctx.settings
    started = ctx.store.start(job_id, ctx.name, s.heartbeat_ttl_seconds, s.job_ttl_seconds)
    if started is None:
        log.info("job %s is no longer queued; skipping", job_id)
        return None
    running = RunningJob(job_id, started.attempt)
    with ctx.lock:
        ctx.running[job_id] = running
        metrics.WORKER_BUSY.set(len(ctx.running))
    try:
        solo = ctx.slots == 1 or started.record.run_alone
        with ctx.gate.hold(solo):
            running.started = time.monotonic()  # the hard limit counts compute, not the wait for the gate
            if not ctx.store.set_phase(job_id, started.attempt, PHASE_SOLO if solo else PHASE_BATCHED):
                log.warning("job %s: run %d lost the job before it computed", job_id, started.attempt)
                return None
            return _run(ctx, started, running)
    finally:
        with ctx.lock:
            ctx.running.pop(job_id, None)
            metrics.WORKER_BUSY.set(len(ctx.running))
        metrics.update_gpu_memory()


def _run(ctx: WorkerContext, started: StartedJob, running: RunningJob) -> JobStatus | None:
    job, attempt, settings = started.record, started.attempt, ctx.settings
    queue_wait = max(0.0, (job.started_at or time.time()) - job.created_at)
    metrics.JOB_STAGE_SECONDS.labels(job.kind, "queue_wait").observe(queue_wait)
    deadline = time.monotonic() + settings.job_soft_time_limit
    # A pipeline without the on_unet_call hook: estimate UNet metrics from progress ticks instead.
    views = int(job.params.get("num_views") or 1)
    guidance = job.params.get("guidance_scale")
    batch = views * (2 if guidance is None or float(guidance) > 1 else 1)
    step_clock = _StepClock(ctx.backend, batch) if not hasattr(ctx.pipeline, "on_unet_call") else None
    stop_reason = ""
    write_progress = ProgressThrottle(
        lambda step, total: ctx.store.progress(job.id, attempt, step, total),
        settings.progress_interval_ms / 1e3,
    )

    write_stage = StageThrottle(
        lambda name, fraction: ctx.store.stage(job.id, attempt, name, fraction),
        settings.progress_interval_ms / 1e3,
    )

    def progress(step: int, total: int) -> None:
        if step_clock is not None:
            step_clock.tick(step)
        write_progress(step, total)

    def should_cancel() -> bool:
        nonlocal stop_reason
        if running.lost or running.abandoned:
            stop_reason = "lost"
        elif time.monotonic() > deadline:
            stop_reason = "time_limit"
        else:
            state = ctx.store.run_check(job.id, attempt)
            if state == "lost":
                running.lost = True
            stop_reason = state or ""
        return bool(stop_reason)

    staging = ctx.artifacts.staging_dir(job.id, attempt)
    out_dir = staging / "out"
    status, timings, error, artifacts = JobStatus.failed, {}, None, []
    warnings: list[str] = []
    try:
        check_cost(job_cost(job.kind, job.params, _native_resolution(ctx)), settings)
        result = _call_pipeline(ctx, job, staging, progress, should_cancel, write_stage)
        timings = {k: float(v) for k, v in (result.timings or {}).items()}
        warnings = [str(w) for w in (getattr(result, "meta", None) or {}).get("warnings") or []]
        if running.lost or ctx.store.run_check(job.id, attempt) == "lost":
            running.lost = True  # taken over while it computed its last stage: publish nothing
            raise JobCanceled("the run lost its job")
        result.save(out_dir)
        artifacts = ctx.artifacts.put_run(job.id, attempt, out_dir)
        status = JobStatus.succeeded
        if ctx.costs is not None:
            ctx.costs.record_job(job.kind, time.monotonic() - running.started, timings.get("denoise", 0.0))
    except JobCanceled:
        if stop_reason == "time_limit":
            error = JobError("time_limit", f"the job ran past {settings.job_soft_time_limit} s")
        elif stop_reason == "canceled":
            status, error = JobStatus.canceled, JobError("canceled", "canceled while running")
    except UserInputError as e:
        log.warning("job %s: %s (%s)", job.id, e, e.code)  # the request or the model folder is at fault
        error = JobError(e.code, str(e))
    except Exception as e:  # noqa: BLE001 - a bug fails this job, never the worker
        log.exception("job %s failed", job.id)
        error = JobError("internal_error", f"{type(e).__name__}: the job failed inside the worker")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    timings["queue_wait"] = queue_wait
    if (
        running.lost
        or running.abandoned
        or not ctx.store.finish(
            job.id,
            attempt,
            status,
            ttl_seconds=settings.job_ttl_seconds,
            timings=timings,
            error=error,
            artifacts=artifacts,
            warnings=warnings,
        )
    ):
        log.warning("job %s: run %d lost its job before finishing; its result is dropped", job.id, attempt)
        ctx.artifacts.discard_run(job.id, attempt)
        return None
    metrics.JOBS_TOTAL.labels(job.kind, status.value).inc()
    if status == JobStatus.succeeded:
        metrics.observe_job_timings(job.kind, {k: v for k, v in timings.items() if k != "queue_wait"})
    return status


def _native_resolution(ctx: WorkerContext) -> int:
    return model_info(ctx.pipeline).get("resolution", 512)


def _call_pipeline(ctx: WorkerContext, job: JobRecord, staging, progress, should_cancel, stage_progress):  # noqa: ANN001, ANN202
    if job.kind == JobKind.multiview:
        request = MultiviewRequest.model_validate(job.params)
        return ctx.pipeline.multiview(request, progress=progress, should_cancel=should_cancel)
    request = TextureRequest.model_validate(job.params)
    mesh_path = _as_uploaded(
        ctx.artifacts.fetch_input(job.id, job.input_name or "mesh.glb", staging), job, staging
    )
    result = ctx.pipeline.texture(
        request,
        mesh_path,
        progress=progress,
        should_cancel=should_cancel,
        limits=ctx.settings.mesh_limits(),
        stage_progress=stage_progress,
    )
    if job.upload_name and isinstance(getattr(result, "meta", None), dict):
        # meta.json names what the client sent (a .gltf with its parts arrives here as a zip)
        result.meta.setdefault("mesh", {})["source"] = job.upload_name
    return result


def _as_uploaded(path: Path, job: JobRecord, staging: Path) -> Path:
    """The staged input under the client's file name (its stem, the stored suffix, which says the format),
    so that messages about the mesh name it; the stored name when the upload had none usable."""
    stem = Path(Path(job.upload_name or "").name).stem.strip()
    stem = "".join(c for c in stem if c.isprintable() and c not in '/\\:*?"<>|')[:120].strip(" .")
    if not stem:
        return path
    named = Path(staging) / "upload" / f"{stem}{path.suffix}"
    named.parent.mkdir(parents=True, exist_ok=True)
    try:
        named.symlink_to(path.resolve())  # the stored input stays where it is (a retry reads it again)
    except OSError:
        shutil.copyfile(path, named)
    return named


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
