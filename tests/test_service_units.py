"""Fast unit tests of the service's parts (no Redis, no HTTP)."""

from __future__ import annotations

import pytest

from service.api.auth import ApiKeys, hash_key
from service.jobs.memory_store import MemoryJobStore
from service.jobs.progress import ProgressThrottle, StageThrottle
from service.jobs.records import JobKind, JobRecord, JobStatus
from service.jobs.store import QueueFull
from service.storage import safe_relative_name
from service.storage.local import LocalArtifactStore


def test_memory_store_lifecycle_and_lease_requeue():
    store = MemoryJobStore()
    job, created = store.create(
        JobRecord(id="a" * 22, kind=JobKind.multiview, params={}),
        max_queue_depth=1,
        ttl_seconds=60,
        idempotency_key="k",
        body_hash="h",
    )
    assert created
    with pytest.raises(QueueFull):
        store.create(
            JobRecord(id="b" * 22, kind=JobKind.multiview, params={}), max_queue_depth=1, ttl_seconds=60
        )
    again, created = store.create(
        JobRecord(id="c" * 22, kind=JobKind.multiview, params={}),
        max_queue_depth=5,
        ttl_seconds=60,
        idempotency_key="k",
        body_hash="h",
    )
    assert not created and again.id == job.id
    started = store.start(job.id, "w1", lease_seconds=0.0, ttl_seconds=60)
    assert started and started.attempt == 1 and store.start(job.id, "w2", 1.0, 60) is None
    [requeued] = store.requeue_expired(max_attempts=3).requeued
    assert requeued.status == JobStatus.queued
    assert not store.finish(job.id, 1, JobStatus.succeeded, ttl_seconds=60)  # the lost run cannot finish
    assert store.run_check(job.id, 1) == "lost"
    second = store.start(job.id, "w2", 10.0, 60)
    assert second and second.attempt == 2
    assert store.finish(job.id, 2, JobStatus.succeeded, ttl_seconds=60)
    assert store.get(job.id).status == JobStatus.succeeded


def test_artifact_names_cannot_escape(tmp_path):
    assert safe_relative_name("views/view_00.png") == "views/view_00.png"
    for bad in ("../x", "/etc/passwd", "a/../../b", "", "a\\b"):
        assert safe_relative_name(bad) is None
    store = LocalArtifactStore(tmp_path)
    store.put_input("j" * 22, "mesh.glb", b"data")
    assert store.open("j" * 22, 1, "_inputs/mesh.glb") is None
    assert store.open("j" * 22, 1, "../_inputs/mesh.glb") is None


def test_api_keys_are_kept_hashed():
    keys = ApiKeys(f"plain-key, sha256:{hash_key('other')}")
    assert keys.enabled and "plain-key" not in repr(vars(keys))
    assert keys.owner_of("plain-key") and keys.owner_of("other") and keys.owner_of("nope") is None
    assert not ApiKeys("").enabled


def test_worker_healthz_fails_when_the_heartbeat_stalls():
    import httpx

    from service.worker import ProbeServer

    state = {"healthy": True}
    probes = ProbeServer("127.0.0.1", 0, ready=lambda: True, healthy=lambda: state["healthy"])
    probes.start()
    try:
        url = f"http://127.0.0.1:{probes.port}/healthz"
        assert httpx.get(url).status_code == 200
        state["healthy"] = False
        assert httpx.get(url).status_code == 503
    finally:
        probes.stop()


def test_progress_writes_are_thinned_to_one_per_interval_keeping_first_and_last():
    now = [0.0]
    written: list[int] = []
    throttle = ProgressThrottle(lambda step, total: written.append(step), 0.25, clock=lambda: now[0])
    for step in range(1, 11):  # 10 steps of 0.1 s
        throttle(step, 10)
        now[0] += 0.1
    # step 1 at t=0 (at once), then the first step at least 0.25 s after the last write, and the last
    assert written == [1, 4, 7, 10]
    every = ProgressThrottle(lambda step, total: written.append(step), 0.0, clock=lambda: 0.0)
    written.clear()
    for step in range(1, 4):
        every(step, 3)
    assert written == [1, 2, 3]


def test_stage_writes_keep_every_new_and_finished_stage_and_thin_the_unwraps_moves():
    now = [0.0]
    written: list[tuple[str, float]] = []
    throttle = StageThrottle(lambda name, f: written.append((name, f)), 0.25, clock=lambda: now[0])
    reports = [("load", 0.0), ("load", 1.0), ("unwrap", 0.0), *[("unwrap", i / 10) for i in range(1, 10)]]
    for name, fraction in [*reports, ("unwrap", 1.0), ("render", 0.0)]:
        throttle(name, fraction)
        now[0] += 0.1
    assert written == [
        ("load", 0.0), ("load", 1.0), ("unwrap", 0.0), ("unwrap", 0.3), ("unwrap", 0.6), ("unwrap", 0.9),
        ("unwrap", 1.0), ("render", 0.0),
    ]  # fmt: skip


def test_serve_takes_the_embedded_workers_precision_device_and_adapters_and_validates_them():
    from pydantic import ValidationError

    from service.cli import build_parser
    from service.commands.serving import SERVE_FLAGS, _settings
    from service.settings import Settings

    args = build_parser().parse_args(
        ["serve", "--precision", "bf16", "--device", "cpu", "--adapters", "unfused"]
    )
    s = _settings(args, SERVE_FLAGS)
    assert (s.precision, s.device, s.adapters) == ("bf16", "cpu", "unfused")
    # the flag lists its choices (argparse refuses others, exit 2); the env var is validated by Settings
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["serve", "--precision", "fp8"])
    assert refused.value.code == 2
    with pytest.raises(ValidationError, match="precision must be one of fp32, fp16, bf16"):
        Settings(precision="fp8")
