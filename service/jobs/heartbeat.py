"""Worker liveness: a heartbeat thread that advertises readiness, keeps the running job's lease, re-queues
jobs of dead workers, and enforces the hard time limit.

Readiness is a key with a TTL, so a worker that dies simply stops being ready. The lease of the running
job has the same TTL: when it lapses, any live worker (or the gateway) moves the job back to queued and
sends it again, seconds after the crash instead of after the broker's visibility timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from service.jobs.execution import RunningJob, WorkerContext
from service.jobs.queue import JobQueue
from service.jobs.records import JobError, JobStatus
from service.jobs.store import JobStore

log = logging.getLogger("realiz3d.heartbeat")


def requeue_lost_jobs(store: JobStore, queue: JobQueue, max_attempts: int) -> int:
    """Move jobs whose worker died back to the queue; returns how many were re-sent."""
    jobs = store.requeue_expired(max_attempts)
    for job in jobs:
        log.warning("job %s lost its worker; re-queued (attempt %d next)", job.id, job.attempts + 1)
        queue.enqueue(job)
    return len(jobs)


class WorkerHeartbeat:
    def __init__(
        self,
        ctx: WorkerContext,
        info: dict[str, Any],
        queue: JobQueue | None = None,
        on_hard_limit: Callable[[], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.info = info
        self.queue = queue
        self.on_hard_limit = on_hard_limit or (lambda: os._exit(70))
        self._stop = threading.Event()
        self._last_beat = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="realiz3d-heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):  # the broker may be gone at shutdown
            self.ctx.store.remove_worker(self.ctx.name)

    def seconds_since_beat(self) -> float:
        """Seconds since the last successful heartbeat (the worker's liveness signal)."""
        return time.monotonic() - self._last_beat

    def beat(self) -> None:
        s = self.ctx.settings
        self.ctx.store.heartbeat(self.ctx.name, self.info, s.heartbeat_ttl_seconds)
        self._last_beat = time.monotonic()
        for current in self.ctx.running_jobs():
            self.ctx.store.renew_lease(current.job_id, current.attempt, s.heartbeat_ttl_seconds)
            self._enforce_hard_limit(current)

    def _enforce_hard_limit(self, current: RunningJob) -> None:
        s = self.ctx.settings
        if time.monotonic() - current.started > s.job_time_limit:
            # A step hung past the hard limit: fail the job, then end the process (its supervisor
            # restarts it) because a stuck native call cannot be interrupted from Python.
            log.error("job %s ran past the hard time limit; failing it and exiting", current.job_id)
            error = JobError("time_limit", f"the job ran past the hard limit of {s.job_time_limit} s")
            self.ctx.store.finish(
                current.job_id, current.attempt, JobStatus.failed, ttl_seconds=s.job_ttl_seconds, error=error
            )
            self.on_hard_limit()

    def _loop(self) -> None:
        s = self.ctx.settings
        while not self._stop.wait(s.heartbeat_seconds):
            try:
                self.beat()
                if self.queue is not None:
                    requeue_lost_jobs(self.ctx.store, self.queue, s.job_max_attempts)
            except Exception:  # noqa: BLE001 - a broker blip must not kill the heartbeat
                log.exception("heartbeat failed")
