"""Embedded mode's job records survive a restart: `DiskBackedJobStore` is the in-memory store plus one small
JSON file per job beside the artifacts (`<artifact_dir>/.job-records/<id>.json`).

A job's file is written when its status changes (queued, running, its end; never per progress step), so
a restart, even after a SIGKILL, reads every job back: finished ones as they were (their artifacts are on
disk), and one that was queued or running as failed `interrupted` ("submit it again"). Files of expired
jobs are removed with them. Idempotency keys and webhook deliveries still live in memory only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

from service.jobs.memory_store import MemoryJobStore
from service.jobs.records import JobError, JobRecord, JobStatus

log = logging.getLogger("realiz3d.embedded")

RECORDS_DIR = ".job-records"
INTERRUPTED = JobError(
    "interrupted", "the server stopped before this job finished (embedded mode); submit it again"
)


class DiskBackedJobStore(MemoryJobStore):
    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._written: dict[str, JobStatus] = {}
        self.restored = self._restore()

    # -- writes (under the store's lock, so a file never goes back to an older status) ----------------

    def _path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.json"

    def _write(self, job: JobRecord) -> None:
        if self._written.get(job.id) == job.status:
            return
        data = {**job.to_dict(), "kind": job.kind.value, "status": job.status.value}
        data["expires_at"] = self._expires.get(job.id)
        tmp = self._path(job.id).with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data, default=str))
            os.replace(tmp, self._path(job.id))
            self._written[job.id] = job.status
        except OSError as e:  # a full disk loses the record after a restart, never the job now
            log.warning("could not write the record of job %s: %s", job.id, e)

    def _changed(self, job: JobRecord) -> None:
        super()._changed(job)
        self._write(job)

    def create(self, record: JobRecord, **kwargs) -> tuple[JobRecord, bool]:  # noqa: ANN003 - the base's
        job, created = super().create(record, **kwargs)
        if created:
            with self._lock:
                stored = self._jobs.get(job.id)
                if stored is not None and job.id not in self._written:
                    self._write(stored)
        return job, created

    def _sweep(self, now: float) -> None:
        expired = [j for j, t in self._expires.items() if t < now]
        super()._sweep(now)
        for job_id in expired:
            self._written.pop(job_id, None)
            with contextlib.suppress(OSError):
                self._path(job_id).unlink()

    # -- restart -------------------------------------------------------------------------------------

    def _restore(self) -> int:
        now = time.time()
        restored = 0
        for path in sorted(self.folder.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                expires_at = data.pop("expires_at", None) or now
                job = JobRecord.from_dict(data)
            except (OSError, ValueError, TypeError, KeyError) as e:
                log.warning("skipping the unreadable job record %s: %s", path.name, e)
                continue
            if expires_at < now:
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if not job.status.terminal:
                job.status = JobStatus.failed
                job.error = INTERRUPTED
                job.finished_at = now
            self._jobs[job.id] = job
            self._expires[job.id] = expires_at
            self._written[job.id] = JobStatus.queued  # rewritten below with its status now
            self._write(job)
            restored += 1
        for tmp in self.folder.glob("*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
        return restored
