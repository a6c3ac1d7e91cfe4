"""The job store interface: the one place job records, queue depth, leases and worker heartbeats live.

Two implementations keep the same semantics: `RedisJobStore` (gateway + Celery workers, many processes)
and `MemoryJobStore` (embedded mode, one process, no Redis). Every state change is a single atomic step
(a Lua script in Redis, a lock in memory), so a cancel racing a start, or two workers racing for a
re-queued job, can never both win.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.jobs.records import Artifact, JobError, JobKind, JobRecord, JobStatus

# Channel (Redis) / listener (memory) message: the id of a job whose record changed.
EVENTS_CHANNEL = "realiz3d:job-events"
# ... and the id of a job that reached a terminal status (webhooks), once per job.
DONE_CHANNEL = "realiz3d:job-done"


class QueueFull(Exception):
    """The job's queue already holds `max_queue_depth` waiting jobs."""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


class RateLimited(Exception):
    """The client is over its rate limit (not counted): `wait` seconds until a submission would pass."""

    def __init__(self, wait: float) -> None:
        super().__init__(wait)
        self.wait = wait


class StaleWorkers(Exception):
    """The live workers are no longer those of the snapshot a submission decided by: nothing was done."""


class AdmissionRefused(Exception):
    """Admission refused the job (`code`, e.g. `no_worker`) after it was counted against the rate limit."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class StartedJob:
    record: JobRecord
    attempt: int  # this run's number; finish/progress from an older run are ignored


@dataclass
class CancelOutcome:
    record: JobRecord
    #: True for the one request that moved a queued job to canceled (concurrent DELETEs: only one)
    canceled_now: bool


@dataclass
class LostJobs:
    """What one pass over lapsed leases did: jobs sent back to the queue, and jobs that failed."""

    requeued: list[JobRecord] = field(default_factory=list)
    failed: list[JobRecord] = field(default_factory=list)


# Job phases (JobRecord.phase) a worker reports once a run computes; see records.py.
PHASE_BATCHED = "batched"
PHASE_SOLO = "solo"
# Runs lost while batched before a job must run alone on its next attempt.
LOSSES_BEFORE_SOLO = 2


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

    def find_idempotent(self, idempotency_key: str, body_hash: str) -> JobRecord | None:
        """The live job stored under this key, if any; IdempotencyConflict if its body differs."""
        ...

    def get(self, job_id: str) -> JobRecord | None: ...

    def start(self, job_id: str, worker: str, lease_seconds: float, ttl_seconds: int) -> StartedJob | None:
        """queued -> running, take the lease and refresh the job's TTL; None when the job is not
        queued (canceled, taken, gone)."""
        ...

    def set_phase(self, job_id: str, attempt: int, phase: str) -> bool:
        """Record how this run computes (PHASE_BATCHED or PHASE_SOLO); False if the run lost the job."""
        ...

    def progress(self, job_id: str, attempt: int, step: int, total: int) -> None: ...

    def stage(self, job_id: str, attempt: int, name: str, fraction: float) -> None:
        """A texture job's current stage and how far into it (0-1); ignored if the run lost the job."""
        ...

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
        warnings: list[str] | None = None,
    ) -> bool:
        """running -> terminal, only for the run that holds the job (same attempt)."""
        ...

    def request_cancel(self, job_id: str, ttl_seconds: int) -> CancelOutcome | None:
        """A queued job is canceled at once; a running one gets a flag its worker checks every step."""
        ...

    def run_check(self, job_id: str, attempt: int) -> str | None:
        """Polled by a run before each step: "lost" (this run no longer owns the job), "canceled"
        (a cancel was requested) or None (go on)."""
        ...

    def requeue_expired(self, max_attempts: int) -> LostJobs:
        """Running jobs whose lease lapsed (worker died) go back to queued. Only a run lost while solo is
        charged: a job fails `worker_lost` after `max_attempts` charged runs.

        The caller sends the re-queued jobs to the queue again.
        """
        ...

    def fail_waiting(self, kind: JobKind, older_than: float, error: JobError) -> list[JobRecord]:
        """Queued jobs of `kind` created before `older_than` (epoch s) fail with `error`."""
        ...

    def queue_depths(self) -> dict[str, int]: ...

    def heartbeat(self, worker: str, info: dict[str, Any], ttl_seconds: float) -> None: ...

    def remove_worker(self, worker: str) -> None: ...

    def live_workers(self) -> list[dict[str, Any]]: ...

    def claim_delivery(self, job_id: str, ttl_seconds: int) -> bool:
        """True for the one caller that gets to deliver this job's webhook (for `ttl_seconds`: a claim
        whose gateway died lapses, and the delivery is taken up again)."""
        ...

    # A job created with a webhook_url is pending (atomically with its creation) until its webhook is
    # settled; gateways sweep the pending jobs that ended, so no terminal job misses its webhook.
    def pending_webhooks(self, limit: int = 1000) -> list[str]: ...

    def webhook_states(self, job_ids: list[str]) -> dict[str, JobStatus | None]:
        """Each job's status (None: expired)."""
        ...

    def webhook_pending(self, job_id: str) -> bool: ...

    def settle_webhook(self, job_id: str) -> None:
        """Delivered, given up or expired: never swept again."""
        ...

    def record_webhook(self, job_id: str, attempts: int, status: str, delivered_at: float | None) -> None:
        """The delivery's outcome so far, on the job (`webhook` in GET /v1/jobs/{id})."""
        ...

    def shared_secret(self, name: str, candidate: str) -> str:
        """The value every gateway of this store agrees on: `candidate` if none was stored yet."""
        ...

    def take_rate(self, owner: str, limit: int, window_seconds: float = 60.0) -> float:
        """Sliding-window rate limit: admit (and count) one submission by `owner` if fewer than `limit`
        were admitted in the last `window_seconds`, returning 0.0; else return the seconds until one
        would be admitted (a refused attempt is not counted)."""
        ...


def worker_serves(workers: list[dict[str, Any]], kind: JobKind | str) -> bool:
    return any(str(kind) in w.get("queues", []) for w in workers)


Listener = Callable[[str], None]
__all__ = [
    "CancelOutcome",
    "LostJobs",
    "DONE_CHANNEL",
    "EVENTS_CHANNEL",
    "IdempotencyConflict",
    "JobStore",
    "Listener",
    "QueueFull",
    "RateLimited",
    "AdmissionRefused",
    "StaleWorkers",
    "StartedJob",
    "worker_serves",
    "JobKind",
    "JobStatus",
]
