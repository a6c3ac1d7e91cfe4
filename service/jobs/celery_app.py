"""The Celery app: Redis broker, one queue per job kind, at-least-once delivery.

The job record in Redis (not Celery's result) is the source of truth; the task only carries the job id.
Delivery settings, and why:
- `task_acks_late` + `task_reject_on_worker_lost`: a job is acknowledged after it ran, so a worker that
  dies mid-job does not lose it.
- prefetch 1: a busy worker does not hoard queued jobs another worker could run now.
- visibility timeout longer than the longest job: Redis redelivers unacked messages only after it, so
  it must never fire for a healthy long job. Fast recovery from a dead worker is the job lease's work
  (`RedisJobStore.requeue_expired`), not this timeout's.
- soft/hard time limits: Celery enforces them in prefork pools; the solo and thread pools our workers use get the
  same limits from the per-step check and the heartbeat watchdog (service.worker).
"""

from __future__ import annotations

from celery import Celery

from service.jobs.records import JobKind
from service.settings import Settings

RUN_JOB_TASK = "realiz3d.run_job"


def make_celery_app(settings: Settings, broker_url: str | None = None) -> Celery:
    url = broker_url or settings.broker_url
    if not url:
        raise ValueError("a broker URL is needed for the Celery app (REALIZ3D_BROKER_URL or --broker)")
    app = Celery("realiz3d", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=JobKind.multiview.value,
        task_create_missing_queues=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        task_soft_time_limit=settings.job_soft_time_limit,
        task_time_limit=settings.job_time_limit,
        result_expires=settings.job_ttl_seconds,
        task_ignore_result=False,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
    )
    return app
