"""Worker liveness: a heartbeat thread that advertises readiness, keeps the running jobs' leases, re-queues
jobs of dead workers, cleans what dead runs left, and enforces the hard time limit.

Readiness is a key with a TTL, so a worker that dies simply stops being ready. The lease of a running
job has the same TTL: when it lapses, any live worker (or the gateway) moves the job back to queued and
sends it again, seconds after the crash instead of after the broker's visibility timeout. The same pass
drops the dead run's broker message and, every `SWEEP_SECONDS`, its staging directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from service import metrics
from service.jobs.execution import RunningJob, WorkerContext
from service.jobs.queue import JobQueue
from service.jobs.records import JobError, JobStatus
from service.jobs.store import JobStore
from service.storage import ArtifactStore

log = logging.getLogger("realiz3d.heartbeat")

#: Heartbeats between two sweeps of staging directories.
SWEEP_EVERY_BEATS = 10


def requeue_lost_jobs(store: JobStore, queue: JobQueue, max_attempts: int) -> int:
    """Move jobs whose worker died back to the queue (or fail them); returns how many were re-sent.

    The process that moves a job to failed counts it in `realiz3d_jobs_total`. A queue that keeps
    delivered messages (Celery's unacked hash) forgets those of the lost runs before the new ones go out.
    """
    lost = store.requeue_expired(max_attempts)
    for job in lost.failed:
        log.error("job %s failed: %s", job.id, job.error.message if job.error else "worker lost")
        metrics.JOBS_TOTAL.labels(job.kind.value, JobStatus.failed.value).inc()
    reclaim = getattr(queue, "reclaim", None)
    if reclaim is not None:
        reclaim(store, {j.id for j in lost.requeued + lost.failed})
    for job in lost.requeued:
        log.warning("job %s lost its worker; re-queued (run %d next)", job.id, job.attempts + 1)
        queue.enqueue(job)
    return len(lost.requeued)


def sweep_staging(store: JobStore, artifacts: ArtifactStore) -> int:
    """Remove staging directories of runs that are over (a killed worker leaves its own behind)."""

    def live(job_id: str, attempt: int) -> bool:
        job = store.get(job_id)
        return job is not None and job.status == JobStatus.running and job.attempts == attempt

    return artifacts.sweep_staging(live)


def exit_process() -> None:
    """A Celery worker's answer to a hung step: end the process (its supervisor restarts it), since a
    stuck native call cannot be interrupted from Python."""
    os._exit(70)


class WorkerHeartbeat:
    def __init__(
        self,
        ctx: WorkerContext,
        info: dict[str, Any],
        queue: JobQueue | None = None,
        on_hard_limit: Callable[[RunningJob], None] | None = None,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        """`ready()`: False once the worker can run no job (its step batcher died); the heartbeat then
        withdraws the worker and stops beating, so the gateway routes around it and /healthz fails (the
        pod restarts)."""
        self.ctx = ctx
        self.ready = ready
        self.info = info
        self.queue = queue
        self.on_hard_limit = on_hard_limit or (lambda job: exit_process())
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by stop() and when the step costs gain a measured call size
        if ctx.costs is not None:
            ctx.costs.listen(self._wake.set)
        self._last_beat = time.monotonic()
        self._last_sweep = 0.0
        self._thread = threading.Thread(target=self._loop, name="realiz3d-heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):  # the broker may be gone at shutdown
            self.ctx.store.remove_worker(self.ctx.name)

    def seconds_since_beat(self) -> float:
        """Seconds since the last successful heartbeat (the worker's liveness signal)."""
        return time.monotonic() - self._last_beat

    def beat(self) -> None:
        s = self.ctx.settings
        if not self.ready():
            log.error("worker %s can run no job (its step batcher died); withdrawing it", self.ctx.name)
            self.ctx.store.remove_worker(self.ctx.name)
            return
        costs = self.ctx.costs.entry() if self.ctx.costs is not None else None
        info = self.info if costs is None else {**self.info, "step_costs": costs}
        self.ctx.store.heartbeat(self.ctx.name, info, s.heartbeat_ttl_seconds)
        self._last_beat = time.monotonic()
        for current in self.ctx.running_jobs():
            if current.abandoned:
                continue
            if not self.ctx.store.renew_lease(current.job_id, current.attempt, s.heartbeat_ttl_seconds):
                current.lost = True  # re-queued meanwhile: the run stops at its next step
            self._enforce_hard_limit(current)

    def _enforce_hard_limit(self, current: RunningJob) -> None:
        s = self.ctx.settings
        if time.monotonic() - current.started <= s.job_time_limit:
            return
        # A step hung past the hard limit: fail the job here, since its own thread is stuck.
        log.error("job %s ran past the hard time limit of %d s", current.job_id, s.job_time_limit)
        current.abandoned = True
        error = JobError("time_limit", f"the job ran past the hard limit of {s.job_time_limit} s")
        if self.ctx.store.finish(
            current.job_id, current.attempt, JobStatus.failed, ttl_seconds=s.job_ttl_seconds, error=error
        ):
            job = self.ctx.store.get(current.job_id)
            kind = job.kind.value if job else "multiview"
            metrics.JOBS_TOTAL.labels(kind, JobStatus.failed.value).inc()
        self.on_hard_limit(current)

    def _loop(self) -> None:
        s = self.ctx.settings
        while True:
            self._wake.wait(s.heartbeat_seconds)  # a period, or sooner: new step costs to publish
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.beat()
                if self.queue is not None:
                    requeue_lost_jobs(self.ctx.store, self.queue, s.job_max_attempts)
                if time.monotonic() - self._last_sweep > SWEEP_EVERY_BEATS * s.heartbeat_seconds:
                    self._last_sweep = time.monotonic()
                    sweep_staging(self.ctx.store, self.ctx.artifacts)
            except Exception:  # noqa: BLE001 - a broker blip must not kill the heartbeat
                log.exception("heartbeat failed")
