"""`RedisJobStore`: job records, queue depth, leases and worker heartbeats in Redis.

Keys (all under `realiz3d:`): `job:{id}` hash (the record, expires with the job TTL), `idem:{key}`,
`queued:{kind}` zset (the depth behind 429), `running` set + `lease:{id}` (a key with a TTL that the
worker running the job keeps renewing: when it lapses the worker is gone and the job is re-queued at
once, instead of after the broker's visibility timeout), `cancel:{id}`, `workers` zset (score = expiry)
+ `workers:info` hash, `webhooks:pending` zset (jobs whose webhook is due or in flight), `webhook:{id}`
(a gateway's claim on a delivery), `webhook-secret` (the generated signing key), `rate:{client}` zset (the
sliding-window rate limit). Each state change is one Lua script, and publishes the job id on
`realiz3d:job-events` so SSE streams wake up without polling.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from service.jobs.records import Artifact, JobError, JobKind, JobRecord, JobStatus
from service.jobs.store import (
    EVENTS_CHANNEL,
    LOSSES_BEFORE_SOLO,
    AdmissionRefused,
    CancelOutcome,
    IdempotencyConflict,
    LostJobs,
    QueueFull,
    RateLimited,
    StaleWorkers,
    StartedJob,
)

P = "realiz3d:"
# Jobs with a webhook_url whose delivery is not settled (zset, score = creation time): added atomically
# with the job's creation, removed once its webhook is delivered or given up; gateways sweep it.
WEBHOOKS_PENDING = P + "webhooks:pending"

# The rate limiter: a sliding window log per client (a zset of the admitted submissions' times, by
# Redis's own clock so that every gateway agrees). Admits and logs one submission when fewer than `limit`
# were admitted in the last `window` seconds (returns 0); else returns the seconds until one would pass.
_RATE_FUNCTION = """
local function take_rate(key, limit, window, token)
  local now = redis.call('TIME')
  local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
  redis.call('ZREMRANGEBYSCORE', key, '-inf', t - window)
  local count = redis.call('ZCARD', key)
  if count < limit then
    redis.call('ZADD', key, t, token)
    redis.call('PEXPIRE', key, math.ceil(window * 1000))
    return 0
  end
  local edge = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
  return math.max(tonumber(edge[2]) + window - t, 0.001)
end
"""

# Every script names each key it touches in KEYS (none is built inside Lua).
# A submission, in the order the gateway answers it: an Idempotency-Key a concurrent request stored first
# (its job: a replay, neither rate-counted nor refused), the rate limit (ARGV[9] > 0: 'rate' and the wait,
# not counted), an admission refusal decided by the caller (ARGV[12], e.g. 'no_worker': counted), a full
# queue ('full'), then the job: its record, its place in the queued zset, its pending webhook (ARGV[8]),
# its Idempotency-Key and its broker message (ARGV[13], LPUSHed onto KEYS[6]) in one step, so that no
# job record exists without its message. KEYS: job, idem, queued, webhooks pending, rate, broker list.
# The record's fields are one argument (ARGV[14]), a JSON array of field/value strings: redis-py packs
# each argument in Python, ~1 us each. ARGV[15] '1': the caller decided on a snapshot of the live workers
# (KEYS[7] zset, KEYS[8] info hash; alive at ARGV[16]; then their names, then their infos): 'stale',
# before anything is counted or written, unless those are exactly the live workers now. A created job's
# record gets `ahead`, the jobs queued or running before it (KEYS[9] running set, KEYS[10..] the queued
# zsets of every kind): the queue its estimated_seconds counts (service/eta.py); 'created' returns it.
_CREATE = (
    _RATE_FUNCTION
    + """
if ARGV[6] == '1' then
  local current = redis.call('GET', KEYS[2])
  if current and current ~= ARGV[7] then return {'existing', current} end
end
if ARGV[15] == '1' then  -- the live workers the caller decided by must be the live workers now
  local names = redis.call('ZRANGEBYSCORE', KEYS[7], ARGV[16], '+inf')
  local n = (#ARGV - 16) / 2
  if #names ~= n then return {'stale', ''} end
  if n > 0 then  -- the same names (unique in the zset), each with the same info
    local expected = {}
    for i = 1, n do expected[ARGV[16 + i]] = ARGV[16 + n + i] end
    local infos = redis.call('HMGET', KEYS[8], unpack(names))
    for i = 1, n do
      if expected[names[i]] ~= (infos[i] or '') then return {'stale', ''} end
    end
  end
end
if tonumber(ARGV[9]) > 0 then
  local wait = take_rate(KEYS[5], tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11])
  if wait > 0 then return {'rate', tostring(wait)} end
end
if ARGV[12] ~= '' then return {'refused', ARGV[12]} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[4]) - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then return {'full', ''} end
local ahead = redis.call('SCARD', KEYS[9])
for i = 10, #KEYS do ahead = ahead + redis.call('ZCARD', KEYS[i]) end
local fields = cjson.decode(ARGV[14])
fields[#fields + 1] = 'ahead'
fields[#fields + 1] = ahead
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
if ARGV[8] == '1' then redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1]) end  -- a webhook is due when it ends
if ARGV[6] == '1' then redis.call('SET', KEYS[2], ARGV[1] .. '|' .. ARGV[5], 'EX', ARGV[2]) end
if ARGV[13] ~= '' then redis.call('LPUSH', KEYS[6], ARGV[13]) end
return {'created', tostring(ahead)}
"""
)

# ARGV[3] (the start time, one value per start() call) makes a retried call idempotent: if the first
# try ran but its reply was lost to a dropped connection, the retry finds its own start and returns it.
_START = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then
  if redis.call('HGET', KEYS[1], 'status') == 'running' and redis.call('HGET', KEYS[1], 'worker') == ARGV[2]
     and redis.call('HGET', KEYS[1], 'started_at') == ARGV[3] then
    return {redis.call('HGET', KEYS[1], 'attempts'), redis.call('HGETALL', KEYS[1])}
  end
  return false
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[3], 'worker', ARGV[2],
           'progress_step', '0', 'phase', '', 'stage', '', 'stage_fraction', '')
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SET', KEYS[4], attempt, 'PX', ARGV[4])
redis.call('PUBLISH', 'realiz3d:job-events', ARGV[1])
return {attempt, redis.call('HGETALL', KEYS[1])}
"""

_OWNS = "redis.call('HGET', KEYS[1], 'status') == 'running' and redis.call('HGET', KEYS[1], 'attempts') == ARGV[1]"

_PHASE = f"""
if {_OWNS} then
  redis.call('HSET', KEYS[1], 'phase', ARGV[2])
  return 1
end
return 0
"""

# A running job's own fields (progress, stage), written only by the run that owns it: ARGV[3..] are
# field/value pairs.
_SET_OWNED = f"""
if {_OWNS} then
  redis.call('HSET', KEYS[1], unpack(ARGV, 3))
  redis.call('HINCRBY', KEYS[1], 'version', 1)
  redis.call('PUBLISH', 'realiz3d:job-events', ARGV[2])
end
return 1
"""

_RENEW = f"""
if {_OWNS} then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# Idempotent like _START: a retry whose first try ran (same attempt, status and finished_at) returns 1.
_FINISH = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[2] then
  if redis.call('HGET', KEYS[1], 'attempts') == ARGV[2] and redis.call('HGET', KEYS[1], 'status') == ARGV[3]
     and redis.call('HGET', KEYS[1], 'finished_at') == ARGV[4] then
    return 1
  end
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished_at', ARGV[4], unpack(ARGV, 6))
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('PUBLISH', 'realiz3d:job-events', ARGV[1])
redis.call('PUBLISH', 'realiz3d:job-done', ARGV[1])
return 1
"""

# Returns the status before the call: 'queued' only for the one caller that canceled a queued job.
_CANCEL = """
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[2], 'error', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'version', 1)
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('PUBLISH', 'realiz3d:job-events', ARGV[1])
  redis.call('PUBLISH', 'realiz3d:job-done', ARGV[1])
elseif st == 'running' then
  redis.call('SET', KEYS[3], '1', 'EX', ARGV[3])
end
return st
"""

# One lapsed lease (KEYS: running set, lease, job, queued zset of its kind). A run lost while solo is
# charged; one lost while batched (or before it computed) is re-queued free, and after two batched
# losses the job runs alone next time.
_REQUEUE_ONE = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 'alive'
end
redis.call('SREM', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[3], 'status') ~= 'running' then return 'stale' end
local phase = redis.call('HGET', KEYS[3], 'phase')
local outcome = 'requeued'
if phase == 'solo' then
  local charged = redis.call('HINCRBY', KEYS[3], 'charged_runs', 1)
  if charged >= tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[3], 'status', 'failed', 'finished_at', ARGV[3], 'error', ARGV[4], 'phase', '')
    outcome = 'failed'
  end
elseif phase == 'batched' then
  if redis.call('HINCRBY', KEYS[3], 'lost_runs', 1) >= tonumber(ARGV[5]) then
    redis.call('HSET', KEYS[3], 'run_alone', 'True')
  end
end
if outcome == 'requeued' then
  redis.call('HSET', KEYS[3], 'status', 'queued', 'started_at', '', 'worker', '', 'progress_step', '0',
             'phase', '')
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
end
redis.call('HINCRBY', KEYS[3], 'version', 1)
redis.call('PUBLISH', 'realiz3d:job-events', ARGV[1])
if outcome == 'failed' then redis.call('PUBLISH', 'realiz3d:job-done', ARGV[1]) end
return outcome
"""

_FAIL_WAITING = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[2], 'error', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', 'realiz3d:job-events', ARGV[1])
redis.call('PUBLISH', 'realiz3d:job-done', ARGV[1])
return 1
"""

# One client's rate limit alone (KEYS[1]; ARGV: limit, window seconds, token): 0, or the wait.
_TAKE_RATE = (
    _RATE_FUNCTION + "return tostring(take_rate(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]))"
)

# A delivery's outcome on the job, unless the job expired meanwhile (never a partial record).
_RECORD_WEBHOOK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# The info of the workers whose heartbeat has not expired (KEYS: workers zset, workers:info hash).
_LIVE_WORKERS = """
local names = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
if #names == 0 then return {} end
return redis.call('HMGET', KEYS[2], unpack(names))
"""

# What a submission reads before it decides, in one round trip: the value of its Idempotency-Key (KEYS[3],
# read when ARGV[2] is '1'; '' when unset), the names of the live workers (as _LIVE_WORKERS: by expiry)
# and their infos ('' for a name whose info is gone).
_LOOKUP = """
local idem = ''
if ARGV[2] == '1' then idem = redis.call('GET', KEYS[3]) or '' end
local names = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
local infos = {}
if #names > 0 then infos = redis.call('HMGET', KEYS[2], unpack(names)) end
for i = 1, #names do infos[i] = infos[i] or '' end
return {idem, names, infos}
"""

_JSON_FIELDS = ("params", "timings", "error", "artifacts", "warnings")
_FLOAT_FIELDS = ("created_at", "started_at", "finished_at", "stage_fraction", "webhook_delivered_at")
_INT_FIELDS = (
    "progress_step",
    "progress_total",
    "attempts",
    "version",
    "lost_runs",
    "charged_runs",
    "webhook_attempts",
    "ahead",
)
_BOOL_FIELDS = ("run_alone",)


def _encode(fields: dict[str, Any]) -> list[str]:
    flat: list[str] = []
    for key, value in fields.items():
        if key in _JSON_FIELDS:
            value = json.dumps(value)
        elif value is None:
            value = ""
        flat += [key, str(value)]
    return flat


def _json_or_none(raw: str) -> Any:
    return json.loads(raw) if raw else None


def _float_or_none(raw: str) -> float | None:
    return float(raw) if raw else None


def _int_or_zero(raw: str) -> int:
    return int(raw) if raw else 0


def _flag(raw: str) -> bool:
    return raw in ("True", "1")


def _text(raw: str) -> str:
    return raw


def _text_or_none(raw: str) -> str | None:
    return raw or None


#: each stored field's decoder (one dict lookup per field: `GET /v1/jobs/{id}` decodes a record per
#: request); a field not named here is text, "" read as None
_DECODERS: dict[str, Callable[[str], Any]] = {
    **dict.fromkeys(_JSON_FIELDS, _json_or_none),
    **dict.fromkeys(_FLOAT_FIELDS, _float_or_none),
    **dict.fromkeys(_INT_FIELDS, _int_or_zero),
    **dict.fromkeys(_BOOL_FIELDS, _flag),
    "phase": _text,
    "stage": _text,
}


def _decode(h: dict[str, str]) -> JobRecord:
    d: dict[str, Any] = {key: _DECODERS.get(key, _text_or_none)(raw) for key, raw in h.items()}
    d["timings"] = d.get("timings") or {}
    d["warnings"] = d.get("warnings") or []
    d["artifacts"] = d.get("artifacts") or []
    d["params"] = d.get("params") or {}
    return JobRecord.from_dict(d)


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class WorkersSnapshot(NamedTuple):
    """The live workers as one read saw them: `names`, `infos` their raw heartbeat infos in that order
    ('' for one gone), `workers` the parsed infos in `live_workers()`'s order (by expiry)."""

    names: tuple[str, ...]
    infos: tuple[str, ...]
    workers: list[dict[str, Any]]

    @classmethod
    def of(cls, names: list[str], infos: list[str]) -> WorkersSnapshot:
        return cls(tuple(names), tuple(infos), [json.loads(i) for i in infos if i])


def _create_call(
    record: JobRecord,
    *,
    max_queue_depth: int,
    ttl_seconds: int,
    idempotency_key: str | None,
    body_hash: str,
    stale: str,
    rate: tuple[str, int, float] | None = None,
    refusal: str = "",
    message: tuple[str, str] | None = None,
    workers: WorkersSnapshot | None = None,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of `_CREATE`. `rate`: (client, limit, window seconds) to count the job against;
    `refusal`: the error code admission refuses it with once counted ('' = admitted); `message`: (broker
    list, entry) pushed with the record; `workers`: the snapshot of the live workers the caller decided
    by, which must still be exact (else 'stale')."""
    unused = P + "none"  # a key slot the call does not use (never read nor written)
    keys = [
        P + "job:" + record.id,
        P + "idem:" + (idempotency_key or "-"),
        P + "queued:" + record.kind,
        WEBHOOKS_PENDING,
        P + "rate:" + rate[0] if rate else unused,
        message[0] if message else unused,
        P + "workers",
        P + "workers:info",
        P + "running",
        *(P + "queued:" + kind for kind in JobKind),
    ]
    token = f"{time.time():.6f}-{secrets.token_hex(4)}" if rate else ""
    argv = [
        record.id,
        ttl_seconds,
        max_queue_depth,
        record.created_at,
        body_hash,
        "1" if idempotency_key else "0",
        stale,
        "1" if record.webhook_url else "0",
        rate[1] if rate else 0,
        rate[2] if rate else 0,
        token,
        refusal,
        message[1] if message else "",
        # ensure_ascii=False: the values' UTF-8 bytes as they are (cjson passes them through)
        json.dumps(_encode(record.to_dict()), ensure_ascii=False),
        "1" if workers is not None else "0",
        time.time(),
    ]
    if workers is not None:
        argv += [*workers.names, *workers.infos]
    return keys, argv


log = logging.getLogger("realiz3d.store")
T = TypeVar("T")

#: The errors of a Redis restart or a dropped connection: refused/reset connections, timeouts, and
#: BusyLoadingError (-LOADING while a restarted Redis reads its AOF; a subclass of ConnectionError).
TRANSIENT_ERRORS = (redis.ConnectionError, redis.TimeoutError, socket.timeout)
_retry_deadline = threading.local()


class DeadlineRetry(Retry):
    """redis-py's `Retry`, bounded by time instead of by a count: retries `TRANSIENT_ERRORS` with
    exponential backoff (50 ms doubling to 1 s, jittered) until `seconds` have passed since the command
    began, then raises the last error. redis-py also runs a connection's connect through its `Retry`,
    inside the command's: the nested call shares the command's deadline (a thread-local), so a command
    waits at most `seconds` plus one backoff step (1 s) and one socket timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(ExponentialWithJitterBackoff(base=0.05, cap=1.0), -1, TRANSIENT_ERRORS)
        self.seconds = seconds

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        outer = getattr(_retry_deadline, "at", None)
        deadline = outer if outer is not None else time.monotonic() + self.seconds

        def retryable(error: Exception) -> bool:
            if time.monotonic() >= deadline:
                return False
            if is_retryable is None or is_retryable(error):
                log.warning("Redis: %s; retrying (at most %.0f s)", type(error).__name__, self.seconds)
                return True
            return False

        _retry_deadline.at = deadline
        try:
            return super().call_with_retry(do, fail, retryable, with_failure_count)
        finally:
            _retry_deadline.at = outer


def _client(url: str, retry_seconds: float) -> redis.Redis:
    # Bounded waits: with Redis down a call fails within seconds (retry_seconds=0, the gateway: the API
    # answers 503), or within retry_seconds (a worker's writes, which ride out a Redis restart); never hangs.
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=2,
        socket_timeout=10,
        retry=DeadlineRetry(retry_seconds) if retry_seconds > 0 else Retry(NoBackoff(), 0),
    )


class RedisJobStore:
    """`retry_seconds` > 0 (workers: `Settings.redis_retry_seconds`): every command retries connection
    errors, timeouts and LOADING for up to that long, so a run's start, phase, lease renewals, heartbeats
    and terminal status ride out a Redis restart; its start and finish scripts are idempotent under such
    a retry. A run's progress and stage writes and its per-step `run_check` never wait: they go through a
    second client without retries, and on a Redis error a progress write is dropped (the next one carries
    the newer step) and `run_check` answers "go on" (ownership is enforced again by `finish()`, atomically,
    by attempt number). 0 (the gateway): no retry, a route answers 503 at once while Redis is down.
    `lease_grace_seconds` (workers: `heartbeat_ttl_seconds`): how long after Redis starts `requeue_expired`
    leaves lapsed leases alone."""

    def __init__(self, url: str, retry_seconds: float = 0.0, lease_grace_seconds: float = 10.0) -> None:
        self.url = url
        self.retry_seconds = retry_seconds
        #: a Redis up for less than this re-queues nothing: leases read back from its AOF lapsed while no
        #: worker could renew them (Redis was down or loading), not because their workers died
        self.lease_grace_seconds = lease_grace_seconds
        self.redis = _client(url, retry_seconds)
        #: no retries: progress writes, run checks and probes, which must never hold up a step
        self.fast = _client(url, 0) if retry_seconds > 0 else self.redis
        r = self.redis
        self._create = r.register_script(_CREATE)
        self._start = r.register_script(_START)
        self._phase = r.register_script(_PHASE)
        self._set_owned = r.register_script(_SET_OWNED)
        self._renew = r.register_script(_RENEW)
        self._finish = r.register_script(_FINISH)
        self._cancel = r.register_script(_CANCEL)
        self._requeue_one = r.register_script(_REQUEUE_ONE)
        self._fail_waiting = r.register_script(_FAIL_WAITING)
        self._live_workers = r.register_script(_LIVE_WORKERS)
        self._take_rate = r.register_script(_TAKE_RATE)
        self._record_webhook = r.register_script(_RECORD_WEBHOOK)

    def close(self) -> None:
        self.redis.close()
        if self.fast is not self.redis:
            self.fast.close()

    def ping(self) -> bool:
        try:
            return bool(self.fast.ping())
        except redis.RedisError:
            return False

    def _live_idempotent(self, key: str) -> tuple[str, JobRecord | None]:
        """(the raw `id|hash` stored under the key or '', that job if it still exists)."""
        raw = self.redis.get(P + "idem:" + key) or ""
        if not raw:
            return "", None
        return raw, self.get(raw.partition("|")[0])

    def find_idempotent(self, idempotency_key: str, body_hash: str) -> JobRecord | None:
        raw, job = self._live_idempotent(idempotency_key)
        if job is not None and raw.partition("|")[2] != body_hash:
            raise IdempotencyConflict(idempotency_key)
        return job

    def create(
        self,
        record: JobRecord,
        *,
        max_queue_depth: int,
        ttl_seconds: int,
        idempotency_key: str | None = None,
        body_hash: str = "",
    ) -> tuple[JobRecord, bool]:
        stale = ""
        if idempotency_key:
            raw, existing = self._live_idempotent(idempotency_key)
            if existing is not None:
                if raw.partition("|")[2] != body_hash:
                    raise IdempotencyConflict(idempotency_key)
                return existing, False
            stale = raw  # a key whose job expired: overwritten, unless another request wins the race
        keys, argv = _create_call(
            record,
            max_queue_depth=max_queue_depth,
            ttl_seconds=ttl_seconds,
            idempotency_key=idempotency_key,
            body_hash=body_hash,
            stale=stale,
        )
        outcome, value = self._create(keys, argv)
        if outcome == "full":
            raise QueueFull(record.kind)
        if outcome == "existing":  # a concurrent request with the same key won
            job_id, _, seen_hash = value.partition("|")
            existing = self.get(job_id)
            if seen_hash != body_hash or existing is None:
                raise IdempotencyConflict(idempotency_key)
            return existing, False
        record.ahead = int(value)
        return record, True

    def get(self, job_id: str) -> JobRecord | None:
        h = self.redis.hgetall(P + "job:" + job_id)
        return _decode(h) if h else None

    def start(self, job_id: str, worker: str, lease_seconds: float, ttl_seconds: int) -> StartedJob | None:
        keys = [P + "job:" + job_id, "", P + "running", P + "lease:" + job_id]
        job = self.redis.hget(keys[0], "kind")
        if job is None:
            return None
        keys[1] = P + "queued:" + job
        res = self._start(keys, [job_id, worker, time.time(), int(lease_seconds * 1000), ttl_seconds])
        if not res:
            return None
        return StartedJob(_decode(_pairs(res[1])), int(res[0]))

    def set_phase(self, job_id: str, attempt: int, phase: str) -> bool:
        return bool(self._phase([P + "job:" + job_id], [attempt, phase]))

    def progress(self, job_id: str, attempt: int, step: int, total: int) -> None:
        self._write_owned(job_id, attempt, ["progress_step", step, "progress_total", total])

    def stage(self, job_id: str, attempt: int, name: str, fraction: float) -> None:
        self._write_owned(job_id, attempt, ["stage", name, "stage_fraction", float(fraction)])

    def _write_owned(self, job_id: str, attempt: int, fields: list[Any]) -> None:
        """A progress or stage write: at once or never (dropped on a Redis error, never failing the job)."""
        try:
            self._set_owned([P + "job:" + job_id], [attempt, job_id, *fields], client=self.fast)
        except redis.RedisError as e:
            log.warning("job %s: progress not written (%s); dropped", job_id, type(e).__name__)

    def renew_lease(self, job_id: str, attempt: int, lease_seconds: float) -> bool:
        keys = [P + "job:" + job_id, P + "lease:" + job_id]
        return bool(self._renew(keys, [attempt, int(lease_seconds * 1000)]))

    def finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        *,
        ttl_seconds: int,
        timings: dict[str, float] | None = None,
        error: JobError | None = None,
        artifacts: list[Artifact] | None = None,
        warnings: list[str] | None = None,
    ) -> bool:
        fields = {
            "timings": timings or {},
            "error": vars(error) if error else None,
            "artifacts": [vars(a) for a in artifacts or []],
            "warnings": list(warnings or []),
            "phase": "",
        }
        keys = [P + "job:" + job_id, P + "running", P + "lease:" + job_id, P + "cancel:" + job_id]
        argv = [job_id, attempt, status.value, time.time(), ttl_seconds, *_encode(fields)]
        return bool(self._finish(keys, argv))

    def request_cancel(self, job_id: str, ttl_seconds: int) -> CancelOutcome | None:
        kind = self.redis.hget(P + "job:" + job_id, "kind")
        if kind is None:
            return None
        keys = [P + "job:" + job_id, P + "queued:" + kind, P + "cancel:" + job_id]
        error = json.dumps({"code": "canceled", "message": "canceled before it started"})
        before = self._cancel(keys, [job_id, time.time(), ttl_seconds, error])
        job = self.get(job_id)
        return CancelOutcome(job, before == "queued") if job is not None else None

    def run_check(self, job_id: str, attempt: int) -> str | None:
        pipe = self.fast.pipeline(transaction=False)
        pipe.hmget(P + "job:" + job_id, "status", "attempts")
        pipe.exists(P + "cancel:" + job_id)
        try:
            (status, attempts), canceled = pipe.execute()
        except redis.RedisError as e:  # Redis restarting: go on; finish() checks ownership atomically
            log.warning("job %s: run check skipped (%s)", job_id, type(e).__name__)
            return None
        if status != JobStatus.running.value or attempts != str(attempt):
            return "lost"
        return "canceled" if canceled else None

    def requeue_expired(self, max_attempts: int) -> LostJobs:
        ids = sorted(self.redis.smembers(P + "running"))
        if not ids or self.redis.info("server")["uptime_in_seconds"] < self.lease_grace_seconds:
            return LostJobs()
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(P + "lease:" + job_id)
            pipe.hget(P + "job:" + job_id, "kind")
        answers = pipe.execute()
        lost = LostJobs()
        error = json.dumps(
            {"code": "worker_lost", "message": f"its worker was lost {max_attempts} times while it ran alone"}
        )
        for job_id, leased, kind in zip(ids, answers[::2], answers[1::2], strict=True):
            if leased:
                continue
            keys = [P + "running", P + "lease:" + job_id, P + "job:" + job_id, P + "queued:" + (kind or "-")]
            outcome = self._requeue_one(keys, [job_id, max_attempts, time.time(), error, LOSSES_BEFORE_SOLO])
            if outcome in ("requeued", "failed") and (job := self.get(job_id)) is not None:
                (lost.requeued if outcome == "requeued" else lost.failed).append(job)
        return lost

    def fail_waiting(self, kind: JobKind, older_than: float, error: JobError) -> list[JobRecord]:
        queued = P + "queued:" + kind
        failed = []
        for job_id in self.redis.zrangebyscore(queued, "-inf", older_than):
            keys = [P + "job:" + job_id, queued]
            if self._fail_waiting(keys, [job_id, time.time(), json.dumps(vars(error))]):
                job = self.get(job_id)
                if job is not None:
                    failed.append(job)
        return failed

    def queue_depths(self) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for kind in JobKind:
            pipe.zcard(P + "queued:" + kind)
        return {kind.value: int(n) for kind, n in zip(JobKind, pipe.execute(), strict=True)}

    def heartbeat(self, worker: str, info: dict[str, Any], ttl_seconds: float) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(P + "workers", {worker: time.time() + ttl_seconds})
        pipe.hset(P + "workers:info", worker, json.dumps(info))
        pipe.execute()

    def remove_worker(self, worker: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(P + "workers", worker)
        pipe.hdel(P + "workers:info", worker)
        pipe.execute()

    def live_workers(self) -> list[dict[str, Any]]:
        # One round trip (every submission asks): the live names and their info in one script.
        return [
            json.loads(i) for i in self._live_workers([P + "workers", P + "workers:info"], [time.time()]) if i
        ]

    def claim_delivery(self, job_id: str, ttl_seconds: int) -> bool:
        """True for the one process that gets to deliver this job's webhook (several gateways listen).
        The claim lapses after `ttl_seconds`: a delivery whose gateway died is taken up again."""
        return bool(self.redis.set(P + "webhook:" + job_id, "1", nx=True, ex=max(1, int(ttl_seconds))))

    def pending_webhooks(self, limit: int = 1000) -> list[str]:
        """Ids of jobs with a webhook not yet settled (delivered or given up), oldest first."""
        return list(self.redis.zrange(WEBHOOKS_PENDING, 0, limit - 1))

    def webhook_states(self, job_ids: list[str]) -> dict[str, JobStatus | None]:
        """Each job's status (None: the job expired), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(P + "job:" + job_id, "status")
        return {j: JobStatus(s) if s else None for j, s in zip(job_ids, pipe.execute(), strict=True)}

    def webhook_pending(self, job_id: str) -> bool:
        return self.redis.zscore(WEBHOOKS_PENDING, job_id) is not None

    def settle_webhook(self, job_id: str) -> None:
        """The job's webhook was delivered or given up (or the job expired): no sweep picks it up again."""
        self.redis.zrem(WEBHOOKS_PENDING, job_id)

    def record_webhook(self, job_id: str, attempts: int, status: str, delivered_at: float | None) -> None:
        fields = {
            "webhook_attempts": attempts,
            "webhook_status": status,
            "webhook_delivered_at": delivered_at,
        }
        self._record_webhook([P + "job:" + job_id], _encode(fields))

    def shared_secret(self, name: str, candidate: str) -> str:
        """The value stored under `name`, set to `candidate` by the first caller (every gateway agrees)."""
        key = P + name
        self.redis.set(key, candidate, nx=True)
        return self.redis.get(key) or candidate

    def take_rate(self, owner: str, limit: int, window_seconds: float = 60.0) -> float:
        """Admit one submission by `owner` if fewer than `limit` were admitted in the last
        `window_seconds` (a sliding window): 0.0; else the seconds until one would be admitted."""
        token = f"{time.time():.6f}-{secrets.token_hex(4)}"
        wait = self._take_rate([P + "rate:" + owner], [limit, window_seconds, token])
        return float(wait)


class _LoopClient(NamedTuple):
    client: aioredis.Redis
    lookup: Any  # redis.asyncio scripts
    create: Any
    slots: asyncio.Semaphore  # at most `connections` commands at once: one connection each


class AsyncSubmitStore:
    """The gateway's submission path on its event loop (`redis.asyncio`: no thread-pool hop per job).
    `lookup()` reads the request's Idempotency-Key and the live workers in one script; `create()` runs the
    rate limit, the admission refusal, the queue bound, the record, its pending webhook and its broker
    message in one (`_CREATE`). The live workers a submission is checked against (model envelope, cost,
    admission) are the last snapshot a lookup read (`snapshot()`), and `create()` verifies in the same
    script that they are exactly the live workers now (names and infos), else raises StaleWorkers having
    done nothing: a submission without an Idempotency-Key is one round trip while the workers stay as they
    are, and never decided on workers that changed. Fails fast like the gateway's `RedisJobStore`: no
    retries, bounded connect (2 s) and command (`timeout`) waits, so a Redis error is a 503 at once.

    One client per event loop (a redis.asyncio connection belongs to the loop that opened it; a process
    serves from one loop, tests open several), with at most `connections` connections: more submissions
    at once wait for one (a redis.asyncio pool would refuse them, "Too many connections")."""

    def __init__(self, url: str, connections: int = 32, timeout: float = 10.0) -> None:
        self.url = url
        self.connections = connections
        self.timeout = timeout  # the gateway's RedisJobStore's socket_timeout
        self._bound: tuple[weakref.ref | None, _LoopClient | None] = (None, None)  # (its loop, its client)
        self._snapshot: WorkersSnapshot | None = None

    def snapshot(self) -> WorkersSnapshot | None:
        """The live workers as the last lookup read them (None: read them); `create()` verifies them."""
        return self._snapshot

    def _on_loop(self) -> _LoopClient:
        loop = asyncio.get_running_loop()
        ref, bound = self._bound
        if bound is None or ref is None or ref() is not loop:
            client = aioredis.Redis.from_url(
                self.url,
                decode_responses=True,
                health_check_interval=30,
                socket_connect_timeout=2,
                socket_timeout=None,  # `_call` bounds each command
                retry=AsyncRetry(NoBackoff(), 0),
                max_connections=self.connections,
            )
            lookup, create = client.register_script(_LOOKUP), client.register_script(_CREATE)
            bound = _LoopClient(client, lookup, create, asyncio.Semaphore(self.connections))
            self._bound = (weakref.ref(loop), bound)
        return bound

    async def close(self) -> None:
        ref, bound = self._bound
        self._bound = (None, None)
        if bound is not None and ref is not None and ref() is asyncio.get_running_loop():
            await bound.client.aclose()

    async def _call(self, on: _LoopClient, command: Callable[..., Any], *args: Any) -> Any:
        """One command on one of `on`'s connections, answered within `timeout` seconds or a
        redis.TimeoutError (a 503 like every Redis error). One timer per command: redis-py's own
        `socket_timeout` wraps each send in asyncio.wait_for, a task per command (~10% of a submission)."""
        async with on.slots:
            try:
                async with asyncio.timeout(self.timeout):
                    return await command(*args)
            except TimeoutError as e:  # redis-py drops a connection cancelled mid-command
                raise redis.TimeoutError(f"Redis did not answer within {self.timeout:g} s") from e

    async def _get(self, on: _LoopClient, job_id: str) -> JobRecord | None:
        h = await self._call(on, on.client.hgetall, P + "job:" + job_id)
        return _decode(h) if h else None

    async def get(self, job_id: str) -> JobRecord | None:
        """A job as `RedisJobStore.get` reads it, on the event loop (`GET /v1/jobs/{id}`: no thread hop)."""
        return await self._get(self._on_loop(), job_id)

    async def lookup(self, idempotency_key: str | None) -> tuple[str, JobRecord | None, WorkersSnapshot]:
        """(the raw `id|hash` stored under the key or '', that job if it still exists, the live workers,
        which become the snapshot)."""
        on = self._on_loop()
        keys = [P + "workers", P + "workers:info", P + "idem:" + (idempotency_key or "-")]
        raw, names, infos = await self._call(
            on, on.lookup, keys, [time.time(), "1" if idempotency_key else "0"]
        )
        self._snapshot = workers = WorkersSnapshot.of(names, infos)
        job = await self._get(on, raw.partition("|")[0]) if raw else None
        return raw, job, workers

    async def create(
        self,
        record: JobRecord,
        message: tuple[str, str],
        *,
        max_queue_depth: int,
        ttl_seconds: int,
        idempotency_key: str | None,
        body_hash: str,
        stale: str,
        rate: tuple[str, int, float] | None,
        refusal: str,
        workers: WorkersSnapshot | None = None,
    ) -> tuple[JobRecord, bool]:
        """Store a queued job and push its message; (job, created). Raises StaleWorkers (`workers`, the
        snapshot the caller decided by, is not the live workers now: nothing done), RateLimited,
        AdmissionRefused (after counting it), QueueFull, or IdempotencyConflict; a concurrent request that
        stored the same key first gives (its job, False)."""
        on = self._on_loop()
        keys, argv = _create_call(
            record,
            max_queue_depth=max_queue_depth,
            ttl_seconds=ttl_seconds,
            idempotency_key=idempotency_key,
            body_hash=body_hash,
            stale=stale,
            rate=rate,
            refusal=refusal,
            message=message,
            workers=workers,
        )
        outcome, value = await self._call(on, on.create, keys, argv)
        if outcome == "created":
            record.ahead = int(value)
            return record, True
        if outcome == "stale":
            if self._snapshot is workers:
                self._snapshot = None
            raise StaleWorkers()
        if outcome == "rate":
            raise RateLimited(float(value))
        if outcome == "refused":
            raise AdmissionRefused(value)
        if outcome == "full":
            raise QueueFull(record.kind)
        job_id, _, seen_hash = value.partition("|")  # 'existing': a concurrent request with the key won
        existing = await self._get(on, job_id)
        if seen_hash != body_hash or existing is None:
            raise IdempotencyConflict(idempotency_key)
        return existing, False


__all__ = ["EVENTS_CHANNEL", "AsyncSubmitStore", "RedisJobStore", "WorkersSnapshot"]
