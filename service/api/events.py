"""Server-Sent Events of a job's status and progress, pushed on change (no per-client polling of Redis).

Workers publish a job's id whenever its record changes (Redis pub/sub in gateway mode, a listener in
embedded mode); `ChangeHub` wakes the streams watching that job. A slow fallback poll covers a missed
message (e.g. across a Redis reconnect).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable

from service.api.schemas import job_out
from service.jobs.records import JobRecord

log = logging.getLogger("realiz3d.events")

KEEPALIVE_SECONDS = 15.0


class ChangeHub:
    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def notify(self, job_id: str) -> None:
        for event in self._watchers.get(job_id, ()):
            event.set()

    def notify_threadsafe(self, job_id: str) -> None:
        if self._loop is not None and job_id in self._watchers:
            self._loop.call_soon_threadsafe(self.notify, job_id)

    def watch(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._watchers.setdefault(job_id, set()).add(event)
        return event

    def unwatch(self, job_id: str, event: asyncio.Event) -> None:
        watchers = self._watchers.get(job_id)
        if watchers is not None:
            watchers.discard(event)
            if not watchers:
                del self._watchers[job_id]


async def listen_redis(url: str, channel: str, hub: ChangeHub) -> None:
    """Feed the hub from Redis pub/sub until cancelled; reconnects after errors."""
    import redis.asyncio as aioredis

    while True:
        client = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(channel)
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    hub.notify(message["data"])
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - Redis restarts; streams fall back to polling meanwhile
            log.warning("job-event subscription lost (%s); retrying", e)
            await asyncio.sleep(1.0)
        finally:
            await client.aclose()


def _frame(event: str, data: dict, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def job_event_stream(
    job_id: str,
    load: Callable[[str], object],
    hub: ChangeHub,
    poll_seconds: float,
) -> AsyncIterator[bytes]:
    """`status` events (the whole job) when the status changes, `progress` events per step; ends when done.

    `load(job_id)` is an async callable returning the JobRecord or None.
    """
    event = hub.watch(job_id)
    try:
        last_version, last_status = -1, None
        idle = 0.0
        while True:
            event.clear()  # before reading, so a change during the read still wakes the next wait
            record: JobRecord | None = await load(job_id)  # type: ignore[misc]
            if record is None:
                yield _frame("error", {"code": "not_found", "message": "the job expired"})
                return
            if record.version != last_version:
                if record.status != last_status:
                    yield _frame("status", job_out(record).model_dump(mode="json"), record.version)
                else:
                    progress = {"step": record.progress_step, "total": record.progress_total}
                    yield _frame("progress", {"status": record.status.value, **progress}, record.version)
                last_version, last_status = record.version, record.status
                idle = 0.0
            if record.status.terminal:
                return
            try:
                await asyncio.wait_for(event.wait(), timeout=max(poll_seconds, 0.5))
            except TimeoutError:
                idle += max(poll_seconds, 0.5)
                if idle >= KEEPALIVE_SECONDS:
                    idle = 0.0
                    yield b": keepalive\n\n"
    finally:
        hub.unwatch(job_id, event)
