"""Server-Sent Events of a job's status and progress, pushed on change (no per-client polling of Redis).

Workers publish a job's id whenever its record changes (Redis pub/sub in gateway mode, a listener in
embedded mode); `ChangeHub` wakes the streams watching that job. After a pub/sub reconnect every stream
re-reads its job once (messages published meanwhile were missed); `sse_poll_seconds` (30 s) is only a
safety net, so an idle stream costs Redis nothing.
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
        self.closed = False  # the server is shutting down: streams send a final event and end

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def notify(self, job_id: str) -> None:
        for event in self._watchers.get(job_id, ()):
            event.set()

    def notify_all(self) -> None:
        """Wake every stream to re-read its job (after a pub/sub reconnect, messages may have been missed)."""
        for events in self._watchers.values():
            for event in events:
                event.set()

    def notify_threadsafe(self, job_id: str) -> None:
        if self._loop is not None and job_id in self._watchers:
            self._loop.call_soon_threadsafe(self.notify, job_id)

    def close_threadsafe(self) -> None:
        """Called on SIGTERM before the server drains connections: streams end with a `shutdown` event."""
        self.closed = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.notify_all)

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


async def listen_redis(url: str, channels: dict[str, Callable[[str], None]], hub: ChangeHub) -> None:
    """Feed Redis pub/sub messages (job ids) to each channel's handler until cancelled; reconnects after
    errors, and wakes every stream once subscribed again (changes published meanwhile were missed)."""
    import redis.asyncio as aioredis

    while True:
        client = aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=2)
        try:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(*channels)
            hub.notify_all()
            async for message in pubsub.listen():
                if message.get("type") == "message" and message["channel"] in channels:
                    channels[message["channel"]](message["data"])
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - Redis restarts: streams are woken once it is back
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
    last_event_id: str | None = None,
    estimate: Callable[[JobRecord], float | None] = lambda record: None,
) -> AsyncIterator[bytes]:
    """`status` events (the whole job) when the status changes, `progress` events per step; ends when done.

    Pushed: the job is re-read only when the hub says it changed (or every `poll_seconds` as a safety
    net), never on a timer per stream. Each event's id is the job's version: a client that reconnects
    with `Last-Event-ID` gets nothing it already saw, and then the current status if it changed. At
    shutdown the stream ends with a `shutdown` event (reconnect elsewhere, with Last-Event-ID).
    `load(job_id)` is an async callable returning the JobRecord or None; `estimate(record)` its
    estimated_seconds (service/eta.py), in both kinds of event.
    """
    event = hub.watch(job_id)
    try:
        resume = int(last_event_id) if last_event_id and last_event_id.strip().isdigit() else None
        last_version, last_status = -1, None
        waited = 0.0
        while True:
            if hub.closed:
                yield b"retry: 2000\n" + _frame("shutdown", {"message": "the server is shutting down"})
                return
            event.clear()  # before reading, so a change during the read still wakes the next wait
            record: JobRecord | None = await load(job_id)  # type: ignore[misc]
            if record is None:
                yield _frame("error", {"code": "not_found", "message": "the job expired"})
                return
            if resume is not None:
                if record.version <= resume:  # the client saw this state already
                    last_version, last_status = record.version, record.status
                resume = None
            if record.version != last_version:
                if record.status != last_status:
                    view = job_out(record, estimate(record)).model_dump(mode="json")
                    yield _frame("status", view, record.version)
                else:
                    progress = job_out(record).progress.model_dump(mode="json", exclude_none=True)
                    data = {"status": record.status.value, **progress, "estimated_seconds": estimate(record)}
                    yield _frame("progress", data, record.version)
                last_version, last_status = record.version, record.status
            if record.status.terminal:
                return
            waited = 0.0
            while not event.is_set() and waited < poll_seconds and not hub.closed:
                wait = min(KEEPALIVE_SECONDS, poll_seconds - waited)
                try:
                    await asyncio.wait_for(event.wait(), timeout=wait)
                except TimeoutError:
                    waited += wait
                    yield b": keepalive\n\n"
    finally:
        hub.unwatch(job_id, event)
