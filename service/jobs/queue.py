"""Job queues: how the gateway hands a stored job to a worker. Celery (Redis) or in-process (embedded)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from service.jobs.records import JobRecord

log = logging.getLogger("realiz3d.queue")


class JobQueue(Protocol):
    def enqueue(self, job: JobRecord) -> None:
        """Send a stored, queued job to the workers of its kind; returns without waiting."""
        ...


class CeleryJobQueue:
    def __init__(self, app) -> None:  # noqa: ANN001 - celery.Celery, imported lazily by callers
        from service.jobs.celery_app import RUN_JOB_TASK

        self._app = app
        self._task = RUN_JOB_TASK

    def enqueue(self, job: JobRecord) -> None:
        self._app.send_task(self._task, args=[job.id], queue=job.kind.value)


class InProcessJobQueue:
    """Embedded mode: a FIFO drained by worker threads in this process."""

    def __init__(self) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    def enqueue(self, job: JobRecord) -> None:
        self._queue.put(job.id)

    def start(self, run: Callable[[str], object], threads: int = 1) -> None:
        for i in range(threads):
            t = threading.Thread(target=self._drain, args=(run,), name=f"realiz3d-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _drain(self, run: Callable[[str], object]) -> None:
        while (job_id := self._queue.get()) is not None:
            try:
                run(job_id)
            except Exception:  # noqa: BLE001 - keep draining; the job itself was marked failed
                log.exception("job %s crashed the in-process worker loop", job_id)

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
