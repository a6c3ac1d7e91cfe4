"""`MemoryJobStore`: the job store of embedded mode (one process, no Redis), same semantics as Redis."""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

from service.jobs.records import Artifact, JobError, JobKind, JobRecord, JobStatus
from service.jobs.store import (
    LOSSES_BEFORE_SOLO,
    PHASE_BATCHED,
    PHASE_SOLO,
    CancelOutcome,
    IdempotencyConflict,
    Listener,
    LostJobs,
    QueueFull,
    StartedJob,
)


class MemoryJobStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, JobRecord] = {}
        self._expires: dict[str, float] = {}
        self._idem: dict[str, tuple[str, str]] = {}
        self._leases: dict[str, float] = {}
        self._cancel: set[str] = set()
        self._workers: dict[str, tuple[float, dict[str, Any]]] = {}
        self._rates: dict[str, list[float]] = {}  # a client's admitted submissions (monotonic s)
        self._listeners: list[Listener] = []
        self._done_listeners: list[Listener] = []
        self._claims: dict[str, float] = {}  # job id -> until (monotonic s): a webhook delivery's claim
        self._webhooks_pending: dict[str, float] = {}  # job id -> created_at: webhooks not yet settled

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def add_done_listener(self, listener: Listener) -> None:
        """Called with a job's id once it reaches a terminal status."""
        self._done_listeners.append(listener)

    def _changed(self, job: JobRecord) -> None:
        job.version += 1
        for listener in self._listeners:
            listener(job.id)
        if job.status.terminal:
            for listener in self._done_listeners:
                listener(job.id)

    def claim_delivery(self, job_id: str, ttl_seconds: int) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._claims.get(job_id, 0.0) > now:
                return False
            self._claims[job_id] = now + ttl_seconds
            return True

    def pending_webhooks(self, limit: int = 1000) -> list[str]:
        with self._lock:
            return sorted(self._webhooks_pending, key=self._webhooks_pending.__getitem__)[:limit]

    def webhook_states(self, job_ids: list[str]) -> dict[str, JobStatus | None]:
        with self._lock:
            return {j: self._jobs[j].status if j in self._jobs else None for j in job_ids}

    def webhook_pending(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._webhooks_pending

    def settle_webhook(self, job_id: str) -> None:
        with self._lock:
            self._webhooks_pending.pop(job_id, None)
            self._claims.pop(job_id, None)

    def record_webhook(self, job_id: str, attempts: int, status: str, delivered_at: float | None) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                job.webhook_attempts, job.webhook_status = attempts, status
                job.webhook_delivered_at = delivered_at

    def shared_secret(self, name: str, candidate: str) -> str:
        return candidate  # one process: nothing to agree with

    def _sweep(self, now: float) -> None:
        for job_id in [j for j, t in self._expires.items() if t < now]:
            self._jobs.pop(job_id, None)
            self._expires.pop(job_id, None)
            self._cancel.discard(job_id)

    def ping(self) -> bool:
        return True

    def find_idempotent(self, idempotency_key: str, body_hash: str) -> JobRecord | None:
        with self._lock:
            job_id, seen_hash = self._idem.get(idempotency_key, ("", ""))
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if seen_hash != body_hash:
                raise IdempotencyConflict(idempotency_key)
            return copy.deepcopy(job)

    def create(
        self,
        record: JobRecord,
        *,
        max_queue_depth: int,
        ttl_seconds: int,
        idempotency_key: str | None = None,
        body_hash: str = "",
    ) -> tuple[JobRecord, bool]:
        with self._lock:
            now = time.time()
            self._sweep(now)
            if idempotency_key and idempotency_key in self._idem:
                job_id, seen_hash = self._idem[idempotency_key]
                if job_id in self._jobs:
                    if seen_hash != body_hash:
                        raise IdempotencyConflict(idempotency_key)
                    return copy.deepcopy(self._jobs[job_id]), False
            active = [j for j in self._jobs.values() if j.status in (JobStatus.queued, JobStatus.running)]
            depth = sum(1 for j in active if j.kind == record.kind and j.status == JobStatus.queued)
            if depth >= max_queue_depth:
                raise QueueFull(record.kind)
            record = copy.deepcopy(record)
            record.ahead = len(active)  # the queue ahead, as the Redis store's create script counts it
            self._jobs[record.id] = record
            self._expires[record.id] = now + ttl_seconds
            if record.webhook_url:
                self._webhooks_pending[record.id] = record.created_at
            if idempotency_key:
                self._idem[idempotency_key] = (record.id, body_hash)
            return copy.deepcopy(record), True

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return copy.deepcopy(job) if job else None

    def start(self, job_id: str, worker: str, lease_seconds: float, ttl_seconds: int) -> StartedJob | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status != JobStatus.queued:
                return None
            job.status = JobStatus.running
            job.started_at = time.time()
            job.worker = worker
            job.attempts += 1
            job.progress_step = 0
            job.phase = ""
            job.stage, job.stage_fraction = "", None
            self._leases[job_id] = time.monotonic() + lease_seconds
            self._expires[job_id] = time.time() + ttl_seconds
            self._changed(job)
            return StartedJob(copy.deepcopy(job), job.attempts)

    def _owned(self, job_id: str, attempt: int) -> JobRecord | None:
        job = self._jobs.get(job_id)
        return job if job and job.status == JobStatus.running and job.attempts == attempt else None

    def set_phase(self, job_id: str, attempt: int, phase: str) -> bool:
        with self._lock:
            job = self._owned(job_id, attempt)
            if job is not None:
                job.phase = phase
            return job is not None

    def progress(self, job_id: str, attempt: int, step: int, total: int) -> None:
        with self._lock:
            job = self._owned(job_id, attempt)
            if job is not None:
                job.progress_step, job.progress_total = step, total
                self._changed(job)

    def stage(self, job_id: str, attempt: int, name: str, fraction: float) -> None:
        with self._lock:
            job = self._owned(job_id, attempt)
            if job is not None:
                job.stage, job.stage_fraction = name, float(fraction)
                self._changed(job)

    def renew_lease(self, job_id: str, attempt: int, lease_seconds: float) -> bool:
        with self._lock:
            if self._owned(job_id, attempt) is not None:
                self._leases[job_id] = time.monotonic() + lease_seconds
                return True
            return False

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
        with self._lock:
            job = self._owned(job_id, attempt)
            if job is None:
                return False
            job.status = status
            job.phase = ""
            job.finished_at = time.time()
            job.timings = dict(timings or {})
            job.warnings = list(warnings or [])
            job.error = error
            job.artifacts = list(artifacts or [])
            self._leases.pop(job_id, None)
            self._cancel.discard(job_id)
            self._expires[job_id] = time.time() + ttl_seconds
            self._changed(job)
            return True

    def request_cancel(self, job_id: str, ttl_seconds: int) -> CancelOutcome | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            canceled_now = job.status == JobStatus.queued
            if canceled_now:
                job.status = JobStatus.canceled
                job.finished_at = time.time()
                job.error = JobError("canceled", "canceled before it started")
                self._changed(job)
            elif job.status == JobStatus.running:
                self._cancel.add(job_id)
            return CancelOutcome(copy.deepcopy(job), canceled_now)

    def run_check(self, job_id: str, attempt: int) -> str | None:
        with self._lock:
            if self._owned(job_id, attempt) is None:
                return "lost"
            return "canceled" if job_id in self._cancel else None

    def requeue_expired(self, max_attempts: int) -> LostJobs:
        lost = LostJobs()
        with self._lock:
            now = time.monotonic()
            for job_id, until in list(self._leases.items()):
                if until >= now:
                    continue
                del self._leases[job_id]
                job = self._jobs.get(job_id)
                if job is None or job.status != JobStatus.running:
                    continue
                if job.phase == PHASE_SOLO:
                    job.charged_runs += 1
                elif job.phase == PHASE_BATCHED:
                    job.lost_runs += 1
                    job.run_alone = job.run_alone or job.lost_runs >= LOSSES_BEFORE_SOLO
                job.phase = ""
                if job.charged_runs >= max_attempts:
                    job.status = JobStatus.failed
                    job.finished_at = time.time()
                    job.error = JobError(
                        "worker_lost", f"its worker was lost {max_attempts} times while it ran alone"
                    )
                    lost.failed.append(job)
                else:
                    job.status = JobStatus.queued
                    job.started_at = None
                    job.progress_step = 0
                    lost.requeued.append(job)
                self._changed(job)
            lost.requeued = [copy.deepcopy(j) for j in lost.requeued]
            lost.failed = [copy.deepcopy(j) for j in lost.failed]
        return lost

    def fail_waiting(self, kind: JobKind, older_than: float, error: JobError) -> list[JobRecord]:
        failed = []
        with self._lock:
            for job in self._jobs.values():
                if job.kind == kind and job.status == JobStatus.queued and job.created_at < older_than:
                    job.status = JobStatus.failed
                    job.finished_at = time.time()
                    job.error = error
                    self._changed(job)
                    failed.append(copy.deepcopy(job))
        return failed

    def queue_depths(self) -> dict[str, int]:
        with self._lock:
            depths = {k.value: 0 for k in JobKind}
            for job in self._jobs.values():
                if job.status == JobStatus.queued:
                    depths[job.kind.value] += 1
            return depths

    def heartbeat(self, worker: str, info: dict[str, Any], ttl_seconds: float) -> None:
        with self._lock:
            self._workers[worker] = (time.monotonic() + ttl_seconds, dict(info))

    def remove_worker(self, worker: str) -> None:
        with self._lock:
            self._workers.pop(worker, None)

    def live_workers(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self._lock:
            return [dict(info) for until, info in self._workers.values() if until >= now]

    def take_rate(self, owner: str, limit: int, window_seconds: float = 60.0) -> float:
        """The Redis store's sliding window: 0.0 (admitted and counted) or the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            for client in [
                c for c, times in self._rates.items() if not times or times[-1] <= now - window_seconds
            ]:
                del self._rates[client]  # nothing left in its window
            times = [t for t in self._rates.get(owner, []) if t > now - window_seconds]
            if len(times) < limit:
                times.append(now)
                self._rates[owner] = times
                return 0.0
            self._rates[owner] = times
            return max(times[len(times) - limit] + window_seconds - now, 0.001)
