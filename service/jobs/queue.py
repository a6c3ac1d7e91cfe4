"""Job queues: how the gateway hands a stored job to a worker. Celery (Redis) or in-process (embedded)."""

from __future__ import annotations

import base64
import functools
import json
import logging
import math
import os
import queue
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Protocol

from service.jobs.records import JobRecord, JobStatus
from service.jobs.store import JobStore

log = logging.getLogger("realiz3d.queue")

#: a task message body's third part (protocol 2 "embed"): no callbacks, errbacks, chain or chord
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
#: the parts of a task message that vary, in the layout below
_VARIABLE = ("body", "task_id", "argsrepr", "origin", "reply_to", "queue", "delivery_tag")


def _layout(task: str, v: dict[str, str]) -> dict:
    """The task message as kombu writes it (key order included), its variable parts from `v`."""
    headers = {
        "lang": "py",
        "task": task,
        "id": v["task_id"],
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": v["task_id"],
        "parent_id": None,
        "argsrepr": v["argsrepr"],
        "kwargsrepr": "{}",
        "origin": v["origin"],
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    properties = {
        "correlation_id": v["task_id"],
        "reply_to": v["reply_to"],
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": v["queue"]},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": v["delivery_tag"],
    }
    return {
        "body": v["body"],
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": properties,
    }


@functools.cache
def _template(task: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The message's JSON text cut where its variable parts go: (the constant parts, the variable parts'
    names between them). json.dumps of the layout once, with a marker in each variable place."""
    text = json.dumps(_layout(task, {name: f"\0{name}\0" for name in _VARIABLE}))
    cut = re.split(r'"\\u0000(\w+)\\u0000"', text)
    return tuple(cut[0::2]), tuple(cut[1::2])


_origin: tuple[int, str] = (0, "")  # (pid, celery's name of this process)


def task_message(task: str, job_id: str, task_id: str, queue: str, reply_to: str) -> str:
    """The entry kombu 5.7's Redis transport LPUSHes onto the list `queue` for celery 5.7's
    `send_task(task, args=[job_id], queue=queue, task_id=task_id, ignore_result=True)`, built without
    kombu's producer (its connection pool, declares, retry wrapper and signals cost ~0.3 ms of CPU per
    job): task protocol 2 (headers, properties, body `[args, kwargs, embed]`), JSON, the body base64, the
    anonymous exchange with the queue as routing key, priority 0 (so the list is the queue's own name).
    The constant text is made once (`_template`): ~8 us a message instead of ~45 for json.dumps of it.
    tests/test_service_submit_path.py holds it byte for byte to what kombu writes and has a real worker
    run one."""
    global _origin
    if _origin[0] != os.getpid():  # celery's anon_nodename(): "gen<pid>@<host>"
        from celery.utils.nodenames import anon_nodename

        _origin = (os.getpid(), anon_nodename())
    body = base64.b64encode(json.dumps([[job_id], {}, _EMBED]).encode()).decode()
    values = {
        "body": body,
        "task_id": task_id,
        "argsrepr": repr([job_id]),  # celery's saferepr() of a job id's list (ids are short, URL-safe)
        "origin": _origin[1],
        "reply_to": reply_to,
        "queue": queue,
        "delivery_tag": str(uuid.uuid4()),  # kombu's uuid()
    }
    constants, names = _template(task)
    out = [constants[0]]
    for name, constant in zip(names, constants[1:], strict=True):
        out += (encode_basestring_ascii(values[name]), constant)  # as json.dumps quotes a str
    return "".join(out)


class JobQueue(Protocol):
    def enqueue(self, job: JobRecord) -> None:
        """Send a stored, queued job to the workers of its kind; returns without waiting."""
        ...


class CeleryJobQueue:
    """Celery over Redis. Each message's task id is `{job_id}:{random}`, so the queue can tell which job a
    delivered-but-unacknowledged message (kombu's `unacked` hash) belongs to.

    With acks_late, a worker killed mid-job leaves its messages unacknowledged, and Redis would
    redeliver them only after the visibility timeout (hours). `reclaim()` settles them early: the
    messages of jobs the store just re-queued or failed are dropped (the store's new message replaces
    them), and a message held for `stale_after_s` by a worker that never started its job (a dead
    worker's prefetched one) is sent again."""

    UNACKED = "unacked"
    UNACKED_INDEX = "unacked_index"

    def __init__(self, app, stale_after_s: float = 30.0, publish_retry_seconds: float = 0.0) -> None:  # noqa: ANN001 - celery.Celery
        """`publish_retry_seconds` > 0 (a worker re-sending a lost job: the store already moved it back to
        queued, so its message must not be lost to a Redis restart): the publish retries for about that
        long instead of Celery's default ~1 s."""
        from service.jobs.celery_app import RUN_JOB_TASK

        self._app = app
        self._task = RUN_JOB_TASK
        self._stale_after_s = stale_after_s
        self._redis = None
        self._publish: dict = {}
        if publish_retry_seconds > 0:
            policy = {"max_retries": math.ceil(publish_retry_seconds) + 1, "interval_start": 0}
            self._publish = {
                "retry": True,
                "retry_policy": {**policy, "interval_step": 0.5, "interval_max": 1},
            }

    @staticmethod
    def task_id(job: JobRecord) -> str:
        return f"{job.id}:{secrets.token_hex(6)}"

    def message(self, job: JobRecord) -> tuple[str, str]:
        """(the Redis list, the entry) that `enqueue(job)` would push, for a caller that pushes it itself
        (the gateway's submission script pushes it atomically with the job's creation)."""
        queue = job.kind.value
        return queue, task_message(self._task, job.id, self.task_id(job), queue, self._app.thread_oid)

    def enqueue(self, job: JobRecord) -> None:
        task_id = self.task_id(job)
        # ignore_result: the job record is the result (the task is ignore_result too). Without it, every
        # send subscribes to the task's result channel and unsubscribes when the AsyncResult is dropped:
        # two more Redis round trips per submission, serialized on one pub/sub connection.
        self._app.send_task(
            self._task,
            args=[job.id],
            queue=job.kind.value,
            task_id=task_id,
            ignore_result=True,
            **self._publish,
        )

    def _broker(self):  # noqa: ANN202
        if self._redis is None:
            import redis

            url = self._app.conf.broker_url
            self._redis = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)
        return self._redis

    def reclaim(self, store: JobStore, lost_job_ids: set[str]) -> int:
        """Drop unacked messages of `lost_job_ids`; re-send stale ones of still-queued jobs. Returns how
        many messages it removed."""
        r = self._broker()
        held = dict(r.zrange(self.UNACKED_INDEX, 0, -1, withscores=True))
        if not held:
            return 0
        now, removed = time.time(), 0
        for tag, raw in r.hscan_iter(self.UNACKED):
            try:
                payload = json.loads(raw)[0]
                job_id = str(payload["headers"]["id"]).partition(":")[0]
            except (ValueError, KeyError, IndexError, TypeError):
                continue
            resend = None
            if job_id not in lost_job_ids:
                if now - held.get(tag, now) < self._stale_after_s:
                    continue
                job = store.get(job_id)
                if job is not None and job.status == JobStatus.running:
                    continue  # a live run holds it (its lease is what tells a dead one)
                if job is not None and job.status == JobStatus.queued:
                    resend = job  # prefetched by a worker that died before it started the job
            pipe = r.pipeline()
            pipe.zrem(self.UNACKED_INDEX, tag)
            pipe.hdel(self.UNACKED, tag)
            if not pipe.execute()[1]:
                continue  # another process settled it first
            removed += 1
            if resend is not None:
                log.warning("job %s: its message was held by a lost worker; sent again", job_id)
                self.enqueue(resend)
        return removed


class InProcessJobQueue:
    """Embedded mode: a FIFO drained by worker threads in this process."""

    def __init__(self) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._run: Callable[[str], object] | None = None
        self._lock = threading.Lock()
        self._retire = 0  # threads to end after their current job (replaced while they hung)

    def enqueue(self, job: JobRecord) -> None:
        self._queue.put(job.id)

    def start(self, run: Callable[[str], object], threads: int = 1) -> None:
        self._run = run
        for _ in range(threads):
            self._spawn()

    def _spawn(self) -> None:
        i = len(self._threads)
        t = threading.Thread(target=self._drain, name=f"realiz3d-worker-{i}", daemon=True)
        t.start()
        self._threads.append(t)

    def replace_stuck_thread(self) -> None:
        """A job's thread hangs in a step past the hard limit: a new thread takes its slot, and the stuck
        one ends when (if ever) its step returns, instead of the whole process exiting."""
        with self._lock:
            self._retire += 1
        self._spawn()

    def _drain(self) -> None:
        assert self._run is not None
        while (job_id := self._queue.get()) is not None:
            try:
                self._run(job_id)
            except Exception:  # noqa: BLE001 - keep draining; the job itself was marked failed
                log.exception("job %s crashed the in-process worker loop", job_id)
            with self._lock:
                if self._retire:
                    self._retire -= 1
                    return

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
