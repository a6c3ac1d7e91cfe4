"""`MemoryJobStore`: the job store of embedded mode (one process, no Redis), same semantics as Redis."""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

from service.jobs.records import Artifact, JobError, JobKind, JobRecord, JobStatus
from service.jobs.store import IdempotencyConflict, Listener, QueueFull, StartedJob


class MemoryJobStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, JobRecord] = {}
        self._expires: dict[str, float] = {}
        self._idem: dict[str, tuple[str, str]] = {}
        self._leases: dict[str, float] = {}
        self._cancel: set[str] = set()
        self._workers: dict[str, tuple[float, dict[str, Any]]] = {}
        self._rates: dict[tuple[str, int], int] = {}
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _changed(self, job: JobRecord) -> None:
        job.version += 1
        for listener in self._listeners:
            listener(job.id)

    def _sweep(self, now: float) -> None:
        for job_id in [j for j, t in self._expires.items() if t < now]:
            self._jobs.pop(job_id, None)
            self._expires.pop(job_id, None)
            self._cancel.discard(job_id)

    def ping(self) -> bool:
        return True

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
            depth = sum(
                1 for j in self._jobs.values() if j.kind == record.kind and j.status == JobStatus.queued
            )
            if depth >= max_queue_depth:
                raise QueueFull(record.kind)
            self._jobs[record.id] = copy.deepcopy(record)
            self._expires[record.id] = now + ttl_seconds
            if idempotency_key:
                self._idem[idempotency_key] = (record.id, body_hash)
            return copy.deepcopy(record), True

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return copy.deepcopy(job) if job else None

    def start(self, job_id: str, worker: str, lease_seconds: float) -> StartedJob | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status != JobStatus.queued:
                return None
            job.status = JobStatus.running
            job.started_at = time.time()
            job.worker = worker
            job.attempts += 1
            job.progress_step = 0
            self._leases[job_id] = time.monotonic() + lease_seconds
            self._changed(job)
            return StartedJob(copy.deepcopy(job), job.attempts)

    def progress(self, job_id: str, attempt: int, step: int, total: int) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job and job.status == JobStatus.running and job.attempts == attempt:
                job.progress_step, job.progress_total = step, total
                self._changed(job)

    def renew_lease(self, job_id: str, attempt: int, lease_seconds: float) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            if job and job.status == JobStatus.running and job.attempts == attempt:
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
    ) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status != JobStatus.running or job.attempts != attempt:
                return False
            job.status = status
            job.finished_at = time.time()
            job.timings = dict(timings or {})
            job.error = error
            job.artifacts = list(artifacts or [])
            self._leases.pop(job_id, None)
            self._cancel.discard(job_id)
            self._expires[job_id] = time.time() + ttl_seconds
            self._changed(job)
            return True

    def request_cancel(self, job_id: str, ttl_seconds: int) -> JobRecord | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status == JobStatus.queued:
                job.status = JobStatus.canceled
                job.finished_at = time.time()
                job.error = JobError("canceled", "canceled before it started")
                self._changed(job)
            elif job.status == JobStatus.running:
                self._cancel.add(job_id)
            return copy.deepcopy(job)

    def cancel_requested(self, job_id: str) -> bool:
        return job_id in self._cancel

    def requeue_expired(self, max_attempts: int) -> list[JobRecord]:
        requeued = []
        with self._lock:
            now = time.monotonic()
            for job_id, until in list(self._leases.items()):
                if until >= now:
                    continue
                del self._leases[job_id]
                job = self._jobs.get(job_id)
                if job is None or job.status != JobStatus.running:
                    continue
                if job.attempts >= max_attempts:
                    job.status = JobStatus.failed
                    job.finished_at = time.time()
                    job.error = JobError("worker_lost", f"the worker was lost {job.attempts} times")
                else:
                    job.status = JobStatus.queued
                    job.started_at = None
                    job.progress_step = 0
                    requeued.append(copy.deepcopy(job))
                self._changed(job)
        return requeued

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

    def hit_rate(self, owner: str, window_seconds: int = 60) -> int:
        window = int(time.time() // window_seconds)
        with self._lock:
            for key in [k for k in self._rates if k[1] < window]:
                del self._rates[key]
            self._rates[(owner, window)] = self._rates.get((owner, window), 0) + 1
            return self._rates[(owner, window)]
