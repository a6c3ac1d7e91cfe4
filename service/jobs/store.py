"""The job store interface: the one place job records, queue depth, leases and worker heartbeats live.

Two implementations keep the same semantics: `RedisJobStore` (gateway + Celery workers, many processes)
and `MemoryJobStore` (embedded mode, one process, no Redis). Every state change is a single atomic step
(a Lua script in Redis, a lock in memory), so a cancel racing a start, or two workers racing for a
re-queued job, can never both win.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from service.jobs.records import Artifact, JobError, JobKind, JobRecord, JobStatus

# Channel (Redis) / listener (memory) message: the id of a job whose record changed.
EVENTS_CHANNEL = "realiz3d:job-events"


class QueueFull(Exception):
    """The job's queue already holds `max_queue_depth` waiting jobs."""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


@dataclass
class StartedJob:
    record: JobRecord
    attempt: int  # this run's number; finish/progress from an older run are ignored


class JobStore(Protocol):
    def ping(self) -> bool: ...

    def create(
        self,
        record: JobRecord,
        *,
        max_queue_depth: int,
        ttl_seconds: int,
        idempotency_key: str | None = None,
        body_hash: str = "",
    ) -> tuple[JobRecord, bool]:
        """Store a queued job; returns (job, created). An Idempotency-Key seen before returns its job."""
        ...

    def get(self, job_id: str) -> JobRecord | None: ...

    def start(self, job_id: str, worker: str, lease_seconds: float) -> StartedJob | None:
        """queued -> running and take the lease; None when the job is not queued (canceled, taken, gone)."""
        ...

    def progress(self, job_id: str, attempt: int, step: int, total: int) -> None: ...

    def renew_lease(self, job_id: str, attempt: int, lease_seconds: float) -> bool: ...

    def finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        *,
        ttl_seconds: int,
        timings: dict[str, float] | None = None,
        error: JobError | None = None,
        artifacts: list[Artifact] | None = None,
    ) -> bool:
        """running -> terminal, only for the run that holds the job (same attempt)."""
        ...

    def request_cancel(self, job_id: str, ttl_seconds: int) -> JobRecord | None:
        """A queued job is canceled at once; a running one gets a flag its worker checks every step."""
        ...

    def cancel_requested(self, job_id: str) -> bool: ...

    def requeue_expired(self, max_attempts: int) -> list[JobRecord]:
        """Running jobs whose lease lapsed (worker died) go back to queued, or fail after max_attempts.

        Returns the re-queued records: the caller sends them to the queue again.
        """
        ...

    def queue_depths(self) -> dict[str, int]: ...

    def heartbeat(self, worker: str, info: dict[str, Any], ttl_seconds: float) -> None: ...

    def remove_worker(self, worker: str) -> None: ...

    def live_workers(self) -> list[dict[str, Any]]: ...

    def hit_rate(self, owner: str, window_seconds: int = 60) -> int:
        """Count one submission by `owner` in the current window; returns the count so far."""
        ...


def worker_serves(workers: list[dict[str, Any]], kind: JobKind | str) -> bool:
    return any(str(kind) in w.get("queues", []) for w in workers)


Listener = Callable[[str], None]
__all__ = [
    "EVENTS_CHANNEL",
    "IdempotencyConflict",
    "JobStore",
    "Listener",
    "QueueFull",
    "StartedJob",
    "worker_serves",
    "JobKind",
    "JobStatus",
]
