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
- `broker_transport` is `RedisTransport` below: kombu's Redis transport with one fix that keeps a worker
  alive through a Redis restart (celery 5.7.0 + kombu 5.7.0; see the class).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery
from kombu.transport import redis as kombu_redis

from service.jobs.records import JobKind
from service.settings import Settings

RUN_JOB_TASK = "realiz3d.run_job"
log = logging.getLogger("realiz3d.celery")


class _Channel(kombu_redis.Channel):
    """kombu's Redis channel, able to reopen its pool after its transport was closed under it.

    The bug it works around (a worker exits "Unrecoverable error: AttributeError("'NoneType' object has no
    attribute 'hostname'")" after a Redis restart, in most restarts of a worker with free slots):
    1. The connection drops while the consumer's channel waits in BRPOP.
    2. celery 5.7.0's `Consumer.on_connection_error_after_connected` calls `connection.collect()`: its
       `Channel.close()` raises a ConnectionError from `_brpop_read()` before the channel is marked closed
       (the error is swallowed), and collect() then sets `transport.client = None`.
    3. celery then calls `connection.close()` (new in 5.7.0; 5.6.3 only collected). It closes the same
       channel again: `_disconnect_pools()`, then `QoS.restore_unacked_once()` for the delivered, unacked
       messages of the running tasks needs a new pool, and `_connparams()` reads
       `self.connection.client.hostname` from the closed transport: AttributeError. `ignore_errors()`
       passes only connection and channel errors, so it reaches the worker, which exits.
    The same path is kombu#582 (2016, via Gossip). Here the channel keeps the connection parameters it was
    opened with and uses them once its transport is gone, so the second close (and the acks of tasks
    that finish after the reconnect, which go to this channel) work as with an open transport; a Redis
    still down raises redis' ConnectionError, which both callers handle."""

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        saved: dict[bool, dict[str, Any]] = self.__dict__.setdefault("_realiz3d_connparams", {})
        if self.connection.client is not None:
            if not saved:  # both kinds now, while the transport is there to read them from
                saved[not asynchronous] = super()._connparams(asynchronous=not asynchronous)
            saved[asynchronous] = super()._connparams(asynchronous=asynchronous)
            return saved[asynchronous]
        if asynchronous not in saved:
            raise redis.ConnectionError("the broker connection was closed")
        log.info("broker channel %s: reopened with its own parameters after its transport closed", id(self))
        return dict(saved[asynchronous])


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with `_Channel` (`broker_transport`; the URL stays `redis://`)."""

    Channel = _Channel


#: `broker_transport`: a dotted path, as kombu resolves it
BROKER_TRANSPORT = f"{__name__}:RedisTransport"


def make_celery_app(settings: Settings, broker_url: str | None = None) -> Celery:
    url = broker_url or settings.broker_url
    if not url:
        raise ValueError("a broker URL is needed for the Celery app (REALIZ3D_BROKER_URL or --broker)")
    app = Celery("realiz3d", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        broker_transport=BROKER_TRANSPORT,
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
