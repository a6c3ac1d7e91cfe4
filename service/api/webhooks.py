"""Webhooks: a job submitted with `webhook_url` gets its final record POSTed there when it ends.

Every terminal transition publishes the job's id once (Redis channel `realiz3d:job-done`, or the
in-memory store's done listener); each gateway listens, and the one that wins `claim_delivery()` sends
it, so several gateway replicas deliver once. A delivery is retried with exponential backoff
(`REALIZ3D_WEBHOOK_MAX_ATTEMPTS`, `REALIZ3D_WEBHOOK_BACKOFF_SECONDS`) until the receiver answers 2xx.

The body is the job exactly as `GET /v1/jobs/{id}` shows it. Headers:
- `Realiz3D-Event: job.succeeded` (or job.failed, job.canceled), `Realiz3D-Delivery: <job id>`;
- `Realiz3D-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed by REALIZ3D_WEBHOOK_SECRET>`.
Receivers recompute the HMAC over the raw body and reject old timestamps (replays).
A delivery in flight when its gateway stops is not resumed: webhooks are at most once per job.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time

import httpx

from service.api.schemas import job_out
from service.jobs.store import JobStore
from service.settings import Settings

log = logging.getLogger("realiz3d.webhooks")

SIGNATURE_HEADER = "Realiz3D-Signature"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The `Realiz3D-Signature` header value of `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, body: bytes, header: str, tolerance_s: float = 300.0) -> bool:
    """A receiver's check: the signature matches and is recent."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), header)


class WebhookSender:
    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()
        self._client: httpx.AsyncClient | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def job_done(self, job_id: str) -> None:
        """A job ended (called on the event loop)."""
        task = asyncio.get_running_loop().create_task(self._handle(job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def job_done_threadsafe(self, job_id: str) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.job_done, job_id)

    async def _handle(self, job_id: str) -> None:
        try:
            job = await asyncio.to_thread(self.store.get, job_id)
            if job is None or not job.webhook_url or not job.status.terminal:
                return
            if not await asyncio.to_thread(self.store.claim_delivery, job_id, self.settings.job_ttl_seconds):
                return  # another gateway delivers it
            await self.deliver(job)
        except Exception:  # noqa: BLE001 - one webhook never takes the gateway down
            log.exception("webhook of job %s failed", job_id)

    async def deliver(self, job) -> bool:  # noqa: ANN001 - a JobRecord
        """POST the job to its webhook_url until a 2xx answer or the attempts run out."""
        s = self.settings
        body = json.dumps(job_out(job).model_dump(mode="json"), separators=(",", ":")).encode()
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=s.webhook_timeout_seconds, follow_redirects=False)
        for attempt in range(1, s.webhook_max_attempts + 1):
            headers = {
                "Content-Type": "application/json",
                "Realiz3D-Event": f"job.{job.status.value}",
                "Realiz3D-Delivery": job.id,
                "User-Agent": "realiz3d-serve-webhook",
            }
            if s.webhook_secret:
                headers[SIGNATURE_HEADER] = sign(s.webhook_secret, body, int(time.time()))
            try:
                response = await self._client.post(job.webhook_url, content=body, headers=headers)
                if response.is_success:
                    return True
                reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as e:
                reason = type(e).__name__
            if attempt < s.webhook_max_attempts:
                delay = s.webhook_backoff_seconds * 2 ** (attempt - 1)
                log.warning(
                    "webhook of job %s: %s (attempt %d); retrying in %.1f s", job.id, reason, attempt, delay
                )
                await asyncio.sleep(delay)
        log.error("webhook of job %s not delivered after %d attempts", job.id, s.webhook_max_attempts)
        return False

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._client is not None:
            await self._client.aclose()
