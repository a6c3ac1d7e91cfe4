"""What the routes depend on, built once per app: settings, job store, queue, artifact store, auth, events.

The gateway (Redis + Celery) and embedded mode build different parts behind the same fields, so routes
and submission logic do not know which mode they run in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from service.api.auth import ApiKeys
from service.api.events import ChangeHub
from service.api.webhooks import WebhookSender
from service.jobs.queue import JobQueue
from service.jobs.store import JobStore
from service.settings import Settings
from service.storage import ArtifactStore

if TYPE_CHECKING:  # redis is not installed in an embedded-only install
    from service.jobs.redis_store import AsyncSubmitStore


@dataclass
class ServiceContext:
    settings: Settings
    store: JobStore
    queue: JobQueue
    artifacts: ArtifactStore
    keys: ApiKeys
    hub: ChangeHub = field(default_factory=ChangeHub)
    mode: str = "gateway"  # or "embedded"
    #: True while this process's own worker is still loading its model (embedded): jobs are accepted
    warming: Callable[[], bool] = lambda: False
    webhooks: WebhookSender | None = None
    #: gateway: POST /v1/multiview submits on the event loop through it (`submission.submit_async`);
    #: None (embedded): every submission runs `submission.submit` in a thread
    submit_store: AsyncSubmitStore | None = None
    #: the live workers' infos as this process last read them (a submission, the maintenance loop): what
    #: estimated_seconds is computed from (service/eta.py), with no read of its own
    workers_seen: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.webhooks is None:
            self.webhooks = WebhookSender(self.settings, self.store)


async def get_context(request: Request) -> ServiceContext:
    # async (it does no I/O): FastAPI runs a plain `def` dependency in the thread pool, a hop per request
    return request.app.state.context
