"""Webhooks: a job submitted with `webhook_url` gets its final record POSTed there when it ends.

Where a webhook may go (`service/api/webhook_target.py`): internal addresses (loopback, private,
link-local and cloud metadata, CGNAT, ULA, ...) are refused, at submission (422 `invalid_webhook_url`
for a literal address or a localhost name) and at delivery (the host is resolved once, every address
checked, and the request sent to the checked address: no DNS rebinding), unless the operator lists
them in `REALIZ3D_WEBHOOK_ALLOWLIST`. Redirects are not followed.

Driven from the job store, so that no ended job misses its webhook: a job created with a webhook_url is
*pending* (atomically with its creation) until its webhook is settled. Every terminal transition also
publishes the job's id (Redis channel `realiz3d:job-done`, or the in-memory store's done listener) for a
prompt delivery, and every gateway sweeps the pending jobs every `REALIZ3D_WEBHOOK_SWEEP_SECONDS`, which
finds the jobs whose message was missed (a pub/sub reconnect, no gateway running when the job ended, a
gateway that died mid-delivery). Of several gateways, the one that wins `claim_delivery()` delivers; the
claim lapses after the longest a delivery can take, so a delivery whose gateway died is taken up again.
A delivery is retried with exponential backoff (`REALIZ3D_WEBHOOK_MAX_ATTEMPTS`,
`REALIZ3D_WEBHOOK_BACKOFF_SECONDS`) until the receiver answers 2xx; then, or when the attempts run out or
the target is refused, the webhook is settled. Its outcome is on the job: `webhook: {attempts,
last_status, delivered_at}` in `GET /v1/jobs/{id}`. Delivery is at least once: receivers deduplicate by
`Realiz3D-Delivery` (a second POST of one job can follow a gateway crash between the receiver's answer
and the record of it).

The body is the job as `GET /v1/jobs/{id}` shows it (without its `webhook` field). Headers:
- `Realiz3D-Event: job.succeeded` (or job.failed, job.canceled), `Realiz3D-Delivery: <job id>`;
- `Realiz3D-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, keyed by the secret of the
  API key that submitted the job (`REALIZ3D_WEBHOOK_KEY_SECRETS`) or else by `REALIZ3D_WEBHOOK_SECRET`;
  with neither set, a random secret is generated once per deployment and kept in the job store (Redis key
  `realiz3d:webhook-secret`, so every gateway on that Redis signs alike; in embedded mode, per process).
Receivers recompute the HMAC over the raw body (`verify()` below) and reject timestamps older than their
replay window (5 minutes by default), and a `Realiz3D-Delivery` they have already processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time

import httpx

from service.api.errors import ApiError
from service.api.schemas import job_out
from service.api.webhook_target import AllowList, TargetRefused, pin_target, submission_refusal
from service.jobs.store import JobStore
from service.settings import Settings

log = logging.getLogger("realiz3d.webhooks")

SIGNATURE_HEADER = "Realiz3D-Signature"
DELIVERY_HEADER = "Realiz3D-Delivery"
SECRET_KEY_NAME = "webhook-secret"  # realiz3d:webhook-secret in Redis
REPLAY_WINDOW_SECONDS = 300.0


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The `Realiz3D-Signature` header value of `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, body: bytes, header: str | None, tolerance_s: float = REPLAY_WINDOW_SECONDS) -> bool:
    """A receiver's check: the signature matches `secret` and is at most `tolerance_s` old (replays).

    False, never an exception, for a missing, empty or malformed header or an empty secret. A header may
    carry several `v1=` entries (a sender rotating secrets): any one matching is enough."""
    try:
        if not secret or not header or not isinstance(header, str):
            return False
        timestamp, macs = None, []
        for part in header.split(","):
            name, sep, value = part.strip().partition("=")
            if not sep:
                continue
            if name == "t" and value.isdigit():
                timestamp = int(value)
            elif name == "v1" and value:
                macs.append(value)
        if timestamp is None or not macs or abs(time.time() - timestamp) > tolerance_s:
            return False
        expected = sign(secret, body, timestamp).split("v1=", 1)[1]
        return any(hmac.compare_digest(expected.encode(), mac.encode("ascii", "replace")) for mac in macs)
    except Exception:  # noqa: BLE001 - a receiver's check answers, it does not raise
        return False


def _client_id(key_ref: str) -> str:
    """`sha256:<hex>` (as in REALIZ3D_API_KEYS) or the hex alone -> the client id jobs carry as owner."""
    ref = key_ref.strip().lower()
    return (ref[7:] if ref.startswith("sha256:") else ref)[:24]


class WebhookSender:
    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self.allow = AllowList.parse(settings.webhook_allowlist)
        self._key_secrets = {_client_id(k): v for k, v in settings.webhook_key_secrets.items() if v}
        self._secret: str | None = settings.webhook_secret or None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()
        self._in_flight: set[str] = set()
        self._sweeper: asyncio.Task | None = None
        self._client: httpx.AsyncClient | None = None

    # -- submission ---------------------------------------------------------------------------------------

    def check_target(self, url: str) -> None:
        """422 `invalid_webhook_url` for a URL whose host is a literal internal address or localhost."""
        reason = submission_refusal(url, self.allow)
        if reason:
            raise ApiError(
                422,
                "invalid_webhook_url",
                f"webhook_url refused: {reason}; webhooks go to public addresses only (an operator "
                "allows internal receivers with REALIZ3D_WEBHOOK_ALLOWLIST)",
            )

    # -- lifecycle ----------------------------------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called on the app's loop at start: prompt deliveries go there, and the sweep starts."""
        self._loop = loop
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep_loop())

    async def close(self) -> None:
        tasks = [t for t in (self._sweeper, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):  # cancelled, or already logged
                await task
        self._sweeper = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def deployment_secret(self) -> str:
        """REALIZ3D_WEBHOOK_SECRET, or the generated one this deployment's gateways agree on."""
        if self._secret is None:
            candidate = secrets.token_urlsafe(32)
            secret = await asyncio.to_thread(self.store.shared_secret, SECRET_KEY_NAME, candidate)
            if self._secret is None:
                self._secret = secret
                # A deployment (gateways on Redis) is warned; a local embedded server only told (its
                # user meets webhooks, if ever, after the first start)
                deployment = hasattr(self.store, "redis")
                if deployment:
                    where = (
                        "kept in Redis (key realiz3d:webhook-secret) so that every gateway on it signs "
                        "alike; give it to receivers with `redis-cli GET realiz3d:webhook-secret`"
                    )
                else:
                    where = "for this process only: it changes when the process restarts"
                log.log(
                    logging.WARNING if deployment else logging.INFO,
                    "REALIZ3D_WEBHOOK_SECRET is not set: webhooks are signed with a generated secret (%s). "
                    "Set REALIZ3D_WEBHOOK_SECRET to choose one (REALIZ3D_WEBHOOK_KEY_SECRETS: per API key)",
                    where,
                )
        return self._secret

    async def secret_for(self, job) -> str:  # noqa: ANN001 - a JobRecord
        """The signing key of a job: its API key's own secret if configured, else the deployment's."""
        if job.owner and job.owner in self._key_secrets:
            return self._key_secrets[job.owner]
        return await self.deployment_secret()

    def claim_seconds(self) -> int:
        """How long a claim holds: longer than a delivery can take (every attempt's timeouts, every
        backoff), so that only a dead gateway's claim lapses."""
        s = self.settings
        n = s.webhook_max_attempts
        longest = n * (3 * s.webhook_timeout_seconds + 5) + s.webhook_backoff_seconds * (2 ** (n - 1) - 1)
        return int(min(longest + 60, s.job_ttl_seconds))

    # -- what to deliver ----------------------------------------------------------------------------------

    def job_done(self, job_id: str) -> None:
        """A job ended (called on the event loop): deliver promptly."""
        self._spawn(job_id)

    def job_done_threadsafe(self, job_id: str) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.job_done, job_id)

    def _spawn(self, job_id: str) -> None:
        if job_id in self._in_flight:
            return
        self._in_flight.add(job_id)
        task = asyncio.get_running_loop().create_task(self._handle(job_id))
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            self._in_flight.discard(job_id)

        task.add_done_callback(done)

    async def sweep(self) -> int:
        """One pass over the pending webhooks: deliver those of ended jobs (whoever claims them first),
        forget those of expired jobs. Returns how many deliveries this pass started here."""
        pending = [
            j for j in await asyncio.to_thread(self.store.pending_webhooks) if j not in self._in_flight
        ]
        if not pending:
            return 0
        states = await asyncio.to_thread(self.store.webhook_states, pending)
        started = 0
        for job_id, status in states.items():
            if status is None:
                await asyncio.to_thread(self.store.settle_webhook, job_id)
            elif status.terminal and job_id not in self._in_flight:
                self._spawn(job_id)
                started += 1
        return started

    async def _sweep_loop(self) -> None:
        try:
            await self.deployment_secret()  # says at start whether the secret was generated
        except Exception as e:  # noqa: BLE001 - Redis down at start: the first delivery asks again
            log.warning("webhook secret not resolved yet (%s)", e)
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - broker blips: the next pass catches up
                log.warning(
                    "webhook sweep failed (%s); next pass in %.1f s", e, self.settings.webhook_sweep_seconds
                )
            await asyncio.sleep(self.settings.webhook_sweep_seconds)

    @staticmethod
    def _settled(job) -> bool:  # noqa: ANN001
        return job.webhook_status is not None

    async def _handle(self, job_id: str) -> None:
        try:
            job = await asyncio.to_thread(self.store.get, job_id)
            if job is None:
                await asyncio.to_thread(self.store.settle_webhook, job_id)
                return
            if not job.webhook_url or not job.status.terminal:
                return
            if self._settled(job) and not await asyncio.to_thread(self.store.webhook_pending, job_id):
                return  # delivered or given up already
            if not await asyncio.to_thread(self.store.claim_delivery, job_id, self.claim_seconds()):
                return  # another gateway delivers it
            job = await asyncio.to_thread(self.store.get, job_id)  # settled while we claimed?
            if job is None or (
                self._settled(job) and not await asyncio.to_thread(self.store.webhook_pending, job_id)
            ):
                return
            await self.deliver(job)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one webhook never takes the gateway down
            log.exception("webhook of job %s failed", job_id)

    # -- delivery -----------------------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            transport = httpx.AsyncHTTPTransport(
                # CAs from SSL_CERT_FILE / SSL_CERT_DIR when set (receivers behind an internal CA)
                verify=httpx.create_ssl_context(trust_env=True),
                # No pooled connections: one to an address made for one TLS name is never reused for
                # another name that resolves to the same address.
                limits=httpx.Limits(max_keepalive_connections=0),
            )
            self._client = httpx.AsyncClient(
                transport=transport,  # an explicit transport: no proxy from the environment, we
                trust_env=False,  # connect to the address we checked (and no .netrc credentials)
                timeout=self.settings.webhook_timeout_seconds,
                follow_redirects=False,
            )
        return self._client

    async def _record(self, job_id: str, attempts: int, status: str, delivered_at: float | None) -> None:
        try:
            await asyncio.to_thread(self.store.record_webhook, job_id, attempts, status, delivered_at)
        except Exception as e:  # noqa: BLE001 - the delivery goes on; only its record is late
            log.warning("webhook outcome of job %s not recorded (%s)", job_id, e)

    async def _settle(self, job_id: str) -> None:
        try:
            await asyncio.to_thread(self.store.settle_webhook, job_id)
        except Exception as e:  # noqa: BLE001 - a later sweep may deliver it again (receivers dedup)
            log.warning("webhook of job %s not marked settled (%s)", job_id, e)

    async def deliver(self, job) -> bool:  # noqa: ANN001 - a JobRecord
        """POST the job to its webhook_url until a 2xx answer or the attempts run out; records the outcome
        on the job and settles its webhook. A refused target is recorded and never connected to."""
        s = self.settings
        view = job_out(job).model_dump(mode="json", exclude={"webhook"})
        body = json.dumps(view, separators=(",", ":")).encode()
        secret = await self.secret_for(job)
        sent = 0
        for attempt in range(1, s.webhook_max_attempts + 1):
            try:
                target = await asyncio.wait_for(
                    pin_target(job.webhook_url, self.allow), s.webhook_timeout_seconds
                )
            except TargetRefused as e:
                log.warning("webhook of job %s refused: %s", job.id, e)
                await self._record(job.id, sent, f"refused: {e}", None)
                await self._settle(job.id)
                return False
            except (OSError, TimeoutError) as e:  # the name did not resolve (in time): may be transient
                reason = f"DNS: {getattr(e, 'strerror', None) or str(e) or 'timed out'}"
            else:
                headers = {
                    "Host": target.host_header,
                    "Content-Type": "application/json",
                    "Realiz3D-Event": f"job.{job.status.value}",
                    DELIVERY_HEADER: job.id,
                    "User-Agent": "realiz3d-serve-webhook",
                    SIGNATURE_HEADER: sign(secret, body, int(time.time())),
                }
                sent += 1
                try:
                    request = self._http().build_request(
                        "POST", target.url, content=body, headers=headers, extensions=target.extensions()
                    )
                    response = await self._http().send(request, stream=True)
                    await response.aclose()  # the status is all we need; never read a body
                    reason = f"HTTP {response.status_code}"
                    if response.is_success:
                        await self._record(job.id, sent, reason, time.time())
                        await self._settle(job.id)
                        return True
                except httpx.HTTPError as e:
                    reason = type(e).__name__
            await self._record(job.id, sent, reason, None)
            if attempt < s.webhook_max_attempts:
                delay = s.webhook_backoff_seconds * 2 ** (attempt - 1)
                log.warning(
                    "webhook of job %s: %s (attempt %d); retrying in %.1f s", job.id, reason, attempt, delay
                )
                await asyncio.sleep(delay)
        log.error("webhook of job %s not delivered after %d attempts", job.id, s.webhook_max_attempts)
        await self._settle(job.id)
        return False
