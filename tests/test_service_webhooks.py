"""Webhooks and admission hardening: the SSRF address policy (at submission and at delivery, pinned to the
checked address), the delivery outcome on the job, signing (generated and per-key secrets, verify()),
delivery driven from the job store (a job that ends while no gateway listens still gets its webhook),
the sliding-window rate limiter with a true Retry-After, and OpenAPI security only when keys are on.

Receivers are real HTTP servers on 127.0.0.1; the job store is a real redis-server (or the in-memory one);
gateways run in-process (FastAPI's TestClient runs their lifespan, so their background tasks run)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from service.jobs.memory_store import MemoryJobStore
from service.jobs.records import JobKind, JobRecord, JobStatus, new_job_id
from service.settings import Settings
from tests.fixtures.redis_server import wait_until

pytestmark = pytest.mark.timeout(120)

SMALL = {"prompt": "a red cube", "num_views": 1, "steps": 2, "seed": 1}
DB = 13  # this module's own Redis database


class Receiver:
    """A webhook receiver on 127.0.0.1 recording every request it gets."""

    def __init__(self, status: int = 204) -> None:
        received: list[tuple[dict[str, str], bytes]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def redis_db(redis_server):
    import redis

    client = redis.Redis.from_url(redis_server.url(DB))
    client.flushdb()
    client.close()
    return redis_server.url(DB)


def settings(**kw) -> Settings:  # noqa: ANN003
    base = {"webhook_backoff_seconds": 0.05, "webhook_timeout_seconds": 5, "heartbeat_seconds": 0.3}
    return Settings(**{**base, **kw})


def finished_job(store, webhook_url: str, owner: str | None = None) -> JobRecord:  # noqa: ANN001
    """A job that a worker ran and finished (succeeded), with `webhook_url`."""
    record = JobRecord(
        id=new_job_id(), kind=JobKind.multiview, params={}, owner=owner, webhook_url=webhook_url
    )
    store.create(record, max_queue_depth=100, ttl_seconds=600)
    started = store.start(record.id, "w1", lease_seconds=30, ttl_seconds=600)
    assert started is not None
    assert store.finish(record.id, started.attempt, JobStatus.succeeded, ttl_seconds=600)
    return store.get(record.id)


def gateway_client(url: str, **kw):  # noqa: ANN003, ANN201
    from fastapi.testclient import TestClient

    from service.api.app import create_gateway_app

    s = settings(broker_url=url, admission="queue", **kw)
    return TestClient(create_gateway_app(s))


# ---- the address policy --------------------------------------------------------------------------------

LOOPBACK_SPELLINGS = [
    "http://127.0.0.1/",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://017700000001/",
    "http://0177.0.0.1/",
    "http://127.0.0.1./",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://a@127.0.0.1/",
    "http://user:pw@127.0.0.1:6379/",
    "http://localhost/",
    "http://LOCALHOST./",
    "http://api.localhost/",
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
]
INTERNAL = [
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.5/",
    "http://172.16.3.4/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://[fd00::1]/",
    "http://[fe80::1]/",
    "http://[fec0::1]/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[::7f00:1]/",  # IPv4-compatible 127.0.0.1
    "http://[ff02::1]/",
]


@pytest.mark.parametrize("url", LOOPBACK_SPELLINGS + INTERNAL)
def test_internal_targets_are_refused_by_the_address_policy(url):
    from service.api.webhook_target import AllowList, submission_refusal

    assert submission_refusal(url, AllowList.parse("")), url


def test_public_targets_pass_and_the_allow_list_opens_internal_ones():
    from service.api.webhook_target import AllowList, ip_refusal, submission_refusal

    for url in ("https://hooks.example.com/x", "http://93.184.216.34:8080/", "http://[2606:4700::1]/"):
        assert submission_refusal(url, AllowList.parse("")) is None, url
    import ipaddress

    assert ip_refusal(ipaddress.ip_address("64:ff9b::808:808")) is None  # NAT64 of a public address
    allow = AllowList.parse("127.0.0.0/8, 10.1.0.0/16, receiver.internal, *.svc.cluster.local")
    for url in (
        "http://127.1:9000/",
        "http://10.1.2.3/",
        "http://receiver.internal/",
        "http://a.b.svc.cluster.local/",
    ):
        assert submission_refusal(url, allow) is None, url
    for url in ("http://10.2.0.1/", "http://localhost/", "http://[::1]/", "http://169.254.169.254/"):
        assert submission_refusal(url, allow), url
    with pytest.raises(ValueError):
        AllowList.parse("10.0.0.0/33")


def test_hostile_webhook_urls_are_422_at_submission_and_allowed_ones_202(redis_db):
    with gateway_client(redis_db) as client:
        for url in LOOPBACK_SPELLINGS + INTERNAL[:6]:
            r = client.post("/v1/multiview", json={**SMALL, "webhook_url": url})
            assert r.status_code == 422, (url, r.text)
            assert r.json()["error"]["code"] == "invalid_webhook_url", r.text
        r = client.post("/v1/multiview", json={**SMALL, "webhook_url": "https://hooks.example.com/x"})
        assert r.status_code == 202, r.text
    with gateway_client(redis_db, webhook_allowlist="127.0.0.0/8") as client:
        r = client.post("/v1/multiview", json={**SMALL, "webhook_url": "http://127.0.0.1:9/hook"})
        assert r.status_code == 202, r.text


# ---- delivery: refused targets are never connected to; the outcome is on the job ------------------------


def test_delivery_refuses_internal_targets_and_never_connects(receiver):
    from service.api.schemas import job_out
    from service.api.webhooks import WebhookSender

    store = MemoryJobStore()
    # Stored before the submission check existed (or a name that resolves to loopback at delivery).
    jobs = [finished_job(store, receiver.url(host)) for host in ("127.0.0.1", "localhost", "[::ffff:7f00:1]")]
    sender = WebhookSender(settings(), store)

    async def deliver_all() -> list[bool]:
        try:
            return [await sender.deliver(job) for job in jobs]
        finally:
            await sender.close()

    assert asyncio.run(deliver_all()) == [False, False, False]
    assert receiver.received == []
    for job in jobs:
        hook = job_out(store.get(job.id)).webhook
        assert hook is not None and hook.attempts == 0 and hook.delivered_at is None
        assert hook.last_status.startswith("refused: "), hook

    # The operator allow-lists loopback: delivered, and the outcome is recorded.
    sender = WebhookSender(settings(webhook_allowlist="127.0.0.0/8"), store)

    async def deliver_one() -> bool:
        try:
            return await sender.deliver(jobs[0])
        finally:
            await sender.close()

    assert asyncio.run(deliver_one())
    assert len(receiver.received) == 1
    hook = job_out(store.get(jobs[0].id)).webhook
    assert hook.attempts == 1 and hook.last_status == "HTTP 204" and hook.delivered_at is not None


def test_delivery_connects_to_the_address_it_checked(receiver, monkeypatch):
    """One resolution per attempt, and the connection goes to that address (no second lookup that a
    rebinding DNS server could answer differently): the name below exists nowhere but in our resolver."""
    from service.api import webhook_target
    from service.api.webhooks import WebhookSender

    lookups: list[str] = []
    answers = iter(["127.0.0.1", "10.9.9.9"])  # a rebinding server: a second lookup would get 10.9.9.9

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return [next(answers)]

    monkeypatch.setattr(webhook_target, "resolve_host", resolver)
    store = MemoryJobStore()
    job = finished_job(store, receiver.url("hooks.rebind.test"))
    sender = WebhookSender(settings(webhook_allowlist="127.0.0.1/32"), store)

    async def go() -> bool:
        try:
            return await sender.deliver(job)
        finally:
            await sender.close()

    assert asyncio.run(go())
    assert lookups == ["hooks.rebind.test"]
    [(headers, _)] = receiver.received
    assert headers["Host"] == f"hooks.rebind.test:{receiver.port}"

    # A name whose answer holds any internal address is refused (the attacker picks which one we'd use).
    answers = iter([["93.184.216.34", "127.0.0.1"]])

    async def mixed(host: str, port: int) -> list[str]:
        return next(answers)

    monkeypatch.setattr(webhook_target, "resolve_host", mixed)
    job = finished_job(store, receiver.url("mixed.example.com"))
    sender = WebhookSender(settings(), store)
    assert not asyncio.run(sender.deliver(job))
    assert store.get(job.id).webhook_status.startswith("refused: ")
    assert len(receiver.received) == 1


# ---- signing --------------------------------------------------------------------------------------------


def test_verify_returns_false_on_missing_or_malformed_headers_and_never_raises():
    from service.api.webhooks import sign, verify

    body = b'{"id": "x"}'
    good = sign("k", body, int(time.time()))
    assert verify("k", body, good)
    for header in (
        None,
        "",
        "garbage",
        "t=",
        "t=abc,v1=00",
        "v1=deadbeef",
        "t=1,v1=" + good.split("v1=")[1],
        ",,,=",
    ):
        assert verify("k", body, header) is False, header
    assert verify("", body, good) is False  # an empty secret never verifies
    assert verify("k", body + b" ", good) is False
    # key rotation: a header with two v1 entries verifies against either secret
    t = int(time.time())
    both = sign("old", body, t) + ",v1=" + sign("new", body, t).split("v1=")[1]
    assert verify("old", body, both) and verify("new", body, both)


def test_a_generated_secret_is_shared_by_gateways_and_per_key_secrets_sign_their_clients(redis_db, receiver):
    from service.api.auth import hash_key
    from service.api.webhooks import WebhookSender, verify
    from service.jobs.redis_store import RedisJobStore

    store = RedisJobStore(redis_db)
    alice = hash_key("key-alice")
    s = settings(
        webhook_allowlist="127.0.0.0/8",
        webhook_key_secrets={f"sha256:{alice}": "alice-secret"},
    )
    senders = [WebhookSender(s, RedisJobStore(redis_db)) for _ in range(2)]
    anon = finished_job(store, receiver.url())
    mine = finished_job(store, receiver.url(), owner=alice[:24])

    async def go() -> list[str]:
        try:
            secrets = [await sender.deployment_secret() for sender in senders]
            assert await senders[0].deliver(anon) and await senders[1].deliver(mine)
            return secrets
        finally:
            for sender in senders:
                await sender.close()

    first, second = asyncio.run(go())
    assert first == second and len(first) >= 32  # generated once, agreed through the job store
    (h_anon, b_anon), (h_mine, b_mine) = receiver.received
    assert verify(first, b_anon, h_anon["Realiz3D-Signature"])
    assert verify("alice-secret", b_mine, h_mine["Realiz3D-Signature"])
    assert not verify(first, b_mine, h_mine["Realiz3D-Signature"])


# ---- delivery driven from the job store ----------------------------------------------------------------


def test_a_job_that_ends_while_no_gateway_listens_gets_its_webhook_once(redis_db, receiver):
    from service.jobs.redis_store import RedisJobStore

    store = RedisJobStore(redis_db)
    job = finished_job(store, receiver.url())  # its job-done message went to no one
    time.sleep(0.5)
    assert receiver.received == []
    gateways = [
        gateway_client(redis_db, webhook_allowlist="127.0.0.0/8", webhook_sweep_seconds=0.2) for _ in range(2)
    ]
    with gateways[0] as a, gateways[1] as b:
        wait_until(lambda: receiver.received, 20, "the swept webhook")
        time.sleep(1.5)  # several more sweeps by both gateways
        assert len(receiver.received) == 1
        headers, body = receiver.received[0]
        assert headers["Realiz3D-Delivery"] == job.id and json.loads(body)["status"] == "succeeded"
        for client in (a, b):
            hook = client.get(f"/v1/jobs/{job.id}").json()["webhook"]
            assert hook["attempts"] == 1 and hook["last_status"] == "HTTP 204" and hook["delivered_at"]


def test_a_delivery_whose_gateway_died_is_taken_up_once_its_claim_lapses(redis_db, receiver):
    """A gateway claimed the delivery and died before sending it: no other gateway sends it while the
    claim holds, the next sweep after it lapses does. An expired job's pending entry is dropped."""
    from service.api.webhooks import WebhookSender
    from service.jobs.redis_store import WEBHOOKS_PENDING, RedisJobStore

    store = RedisJobStore(redis_db)
    job = finished_job(store, receiver.url())
    claimed = time.monotonic()
    assert store.claim_delivery(job.id, 3)  # the gateway that died
    store.redis.zadd(WEBHOOKS_PENDING, {"expired-job-id": 1.0})  # a job that expired before its webhook
    sender = WebhookSender(settings(webhook_allowlist="127.0.0.0/8"), store)

    async def go() -> None:
        try:
            await sender.sweep()
            await asyncio.sleep(0.3)
            if time.monotonic() - claimed < 2.5:  # (a loaded machine may have taken longer)
                assert receiver.received == []  # the claim still holds
            deadline = time.monotonic() + 20
            while not receiver.received and time.monotonic() < deadline:
                await sender.sweep()
                await asyncio.sleep(0.2)
            assert time.monotonic() - claimed >= 3.0  # only after the claim lapsed
            await asyncio.sleep(0.3)
        finally:
            await sender.close()

    asyncio.run(go())
    assert len(receiver.received) == 1
    assert store.pending_webhooks() == []  # delivered (settled) and the expired one dropped


# ---- the rate limiter -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_the_rate_limit_is_a_sliding_window_with_a_true_retry_after(kind, redis_db):
    from service.jobs.redis_store import RedisJobStore

    store = MemoryJobStore() if kind == "memory" else RedisJobStore(redis_db)
    window = 2.0
    start = time.monotonic()
    assert [store.take_rate("c", 5, window) for _ in range(5)] == [0.0] * 5
    wait = store.take_rate("c", 5, window)
    assert window - (time.monotonic() - start) - 0.05 <= wait <= window, wait  # the oldest's time left
    assert store.take_rate("c", 5, window) > 0  # refused attempts do not extend the wait...
    assert store.take_rate("other", 5, window) == 0.0  # ...and clients are counted apart
    time.sleep(wait)
    assert store.take_rate("c", 5, window) == 0.0  # the obedient client passes after Retry-After


def test_429_carries_the_real_wait_and_a_burst_cannot_pass_the_limit(redis_db):
    with gateway_client(redis_db, rate_limit_per_minute=5) as client:
        codes = [client.post("/v1/multiview", json=SMALL).status_code for _ in range(10)]
        assert codes == [202] * 5 + [429] * 5
        r = client.post("/v1/multiview", json=SMALL)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert 50 <= int(r.headers["Retry-After"]) <= 60, r.headers


# ---- OpenAPI security --------------------------------------------------------------------------------------


def test_openapi_declares_key_security_only_when_keys_are_on(redis_db):
    with gateway_client(redis_db) as client:
        spec = client.get("/openapi.json").json()
        assert "securitySchemes" not in spec.get("components", {})
        assert "security" not in spec["paths"]["/v1/multiview"]["post"]
    with gateway_client(redis_db, api_keys="key-alice") as client:
        spec = client.get("/openapi.json").json()
        assert {"bearer", "apiKey"} <= set(spec["components"]["securitySchemes"])
        assert spec["paths"]["/v1/multiview"]["post"]["security"]


def _tls_files(tmp_path, name: str) -> tuple[str, str, str]:
    """A CA, and a server certificate for `name` only (no IP address in it), as PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool):  # noqa: ANN001, ANN202
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("test ca", ca_key, "test ca", ca_key, True)
    leaf = cert(name, key, "test ca", ca_key, False)
    paths = [tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"]
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return tuple(str(p) for p in paths)  # type: ignore[return-value]


def test_https_delivery_to_the_pinned_address_checks_the_certificate_of_the_name(tmp_path, monkeypatch):
    """https: the connection goes to the checked address, while TLS sends the URL's name (SNI) and checks
    the certificate against it (the certificate names no IP address, so a check against 127.0.0.1 fails)."""
    import ssl

    from service.api import webhook_target
    from service.api.webhooks import WebhookSender

    ca, cert, key = _tls_files(tmp_path, "hooks.tls.test")
    server_names: list[str | None] = []
    receiver = Receiver()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    receiver.server.socket = context.wrap_socket(receiver.server.socket, server_side=True)

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    monkeypatch.setattr(webhook_target, "resolve_host", resolver)
    monkeypatch.setenv("SSL_CERT_FILE", ca)  # the receivers' internal CA
    store = MemoryJobStore()
    try:
        good = finished_job(store, f"https://hooks.tls.test:{receiver.port}/hook")
        wrong = finished_job(store, f"https://other.tls.test:{receiver.port}/hook")  # the cert is not for it
        sender = WebhookSender(settings(webhook_allowlist="127.0.0.1/32", webhook_max_attempts=1), store)

        async def go() -> list[bool]:
            try:
                return [await sender.deliver(good), await sender.deliver(wrong)]
            finally:
                await sender.close()

        assert asyncio.run(go()) == [True, False]
        assert server_names[0] == "hooks.tls.test"
        [(headers, _)] = receiver.received
        assert headers["Host"] == f"hooks.tls.test:{receiver.port}"
        assert store.get(wrong.id).webhook_status == "ConnectError"
    finally:
        receiver.close()
