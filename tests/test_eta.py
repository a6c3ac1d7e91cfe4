"""What a job will cost (issue 28 part 3): the engine loop measures its steps, a real Celery worker
publishes the costs with its heartbeat, the gateway answers every 202 with estimated_seconds and GET
keeps it current. No wall-clock assertions: estimates are checked for sanity (positive, finite), for
their direction (more work ahead or left: more seconds) and against the engine's own step kinds."""

from __future__ import annotations

import math
import time

import pytest

from engines.pipelines import Realiz3DPipeline
from engines.requests import MultiviewRequest
from engines.runtime.step_costs import SHALLOW_PRIOR, StepCosts, per_image, step_kinds
from engines.types import DomainSchedule
from service.client import Realiz3DClient
from service.eta import WorkerCosts, estimate_new, estimate_record
from service.jobs.records import JobKind, JobRecord, JobStatus
from service.jobs.redis_store import RedisJobStore
from tests.fixtures.redis_server import wait_until
from tests.test_engine_step_cache import job, kinds

pytestmark = pytest.mark.timeout(300)

TABLE = {"full": {"8": 0.004, "64": 0.002}, "shallow": {"8": 0.0008}}


def worker(slots: int = 1, table: dict | None = None, overhead: float = 0.5, cache: bool = True) -> dict:
    return {
        "name": "w1",
        "queues": ["multiview", "texture"],
        "slots": slots,
        "model": {"name": "m", "resolution": 32},
        "step_costs": {
            "per_image": TABLE if table is None else table,
            "job_overhead_s": {"multiview": overhead},
            "step_cache": cache,
        },
    }


@pytest.mark.parametrize(
    "schedule,steps,interval",
    [
        (DomainSchedule(domain="real"), 10, 1),
        (DomainSchedule(domain="real"), 10, 3),
        (DomainSchedule(split=0.4), 10, 3),
        (DomainSchedule(split=0.5, blocks=2), 10, 4),
        (DomainSchedule(split=0.3), 17, 5),
    ],
)
def test_the_estimates_step_kinds_are_the_engines(schedule, steps, interval):
    ran = kinds(job(schedule, steps, interval))
    assert step_kinds(steps, interval, schedule.combos(steps)) == (ran.count("F"), ran.count("S"))


def test_the_engine_loop_measures_full_and_shallow_steps_per_image(tiny_model_dir):
    pipe = Realiz3DPipeline.load(tiny_model_dir)
    assert pipe.step_costs.table() == {}
    pipe.multiview(MultiviewRequest(prompt="a cube", num_views=2, steps=6, seed=0, cache_interval=3))
    table = pipe.step_costs.table()
    assert set(table) == {"full", "shallow"}
    # 2 views x classifier-free guidance = 4 images per call, in the bucket of 4
    for kind in ("full", "shallow"):
        assert list(table[kind]) == ["4"] and 0 < table[kind]["4"] < math.inf


def test_step_costs_say_when_a_call_size_is_first_measured():
    costs, heard = StepCosts(), []
    costs.listen(lambda: heard.append(costs.table()))
    costs.record("full", 8, 0.5)  # a size's first call pays its allocations: left out, nothing new yet
    assert heard == []
    costs.record("full", 8, 0.04)
    assert heard == [{"full": {"8": 0.005}}]  # the listener sees the table that has it
    costs.record("full", 8, 0.04)
    costs.record("full", 9, 0.04)  # bucket 8 again: nothing new
    assert len(heard) == 1
    costs.record("shallow", 8, 0.5)
    costs.record("shallow", 8, 0.008)
    assert len(heard) == 2 and heard[-1]["shallow"] == {"8": 0.001}


def test_a_cost_table_reads_by_batch_and_a_missing_shallow_step_uses_the_prior():
    assert per_image(TABLE, "full", 8) == 0.004 and per_image(TABLE, "full", 64) == 0.002
    assert per_image(TABLE, "full", 1) == 0.004 and per_image(TABLE, "full", 500) == 0.002  # the nearest
    assert 0.002 < per_image(TABLE, "full", 20) < 0.004  # between the two measured batches
    assert per_image({"full": {"8": 0.004}}, "shallow", 8) == pytest.approx(0.004 * SHALLOW_PRIOR)
    assert per_image({}, "full", 8) is None


def test_the_published_costs_change_only_when_a_figure_moves_enough():
    costs = StepCosts()
    published = WorkerCosts(costs, step_cache=True)
    assert published.entry() is None  # nothing measured: nothing published
    for _ in range(5):
        costs.record("full", 8, 0.08)
    first = published.entry()
    assert first["per_image"] == {"full": {"8": 0.01}}
    for _ in range(4):
        costs.record("full", 8, 0.085)  # the median moves 0-6%: the same entry, byte for byte
    assert published.entry() is first
    for _ in range(40):  # a window's worth
        costs.record("full", 8, 0.2)
    assert published.entry()["per_image"]["full"]["8"] == 0.025
    published.record_job("multiview", 3.0, 2.5)
    assert published.entry()["job_overhead_s"] == {"multiview": 0.5}


def test_the_estimate_grows_with_the_queue_ahead_and_shrinks_with_step_caching():
    params = {"prompt": "x", "num_views": 4, "steps": 30}
    solo = [estimate_new([worker()], JobKind.multiview, params, ahead) for ahead in range(4)]
    assert all(0 < e < math.inf for e in solo) and solo == sorted(solo) and len(set(solo)) == 4
    # alone: 30 steps x 8 images x 4 ms + the worker's 0.5 s outside denoising
    assert solo[0] == pytest.approx(30 * 8 * 0.004 + 0.5)
    cached = estimate_new([worker()], JobKind.multiview, {**params, "cache_interval": 3}, 0)
    assert cached < solo[0]
    # a worker without step caching runs every step whole
    assert (
        estimate_new([worker(cache=False)], JobKind.multiview, {**params, "cache_interval": 3}, 0) == solo[0]
    )
    # batched slots: jobs ahead share the ticks instead of waiting; two workers halve the queue
    batched = estimate_new([worker(slots=8)], JobKind.multiview, params, 3)
    assert solo[0] < batched < solo[3]
    two = estimate_new([worker(), {**worker(), "name": "w2"}], JobKind.multiview, params, 3)
    assert two < solo[3]
    # a worker that has been stepping 8 jobs per tick lately: the load stays, whoever submits first
    busy = worker(slots=8)
    busy["step_costs"]["occupancy"] = 8
    at_8 = [estimate_new([busy], JobKind.multiview, params, ahead) for ahead in (0, 3, 7)]
    assert at_8[0] == at_8[1] == at_8[2] > batched
    assert estimate_new([{**worker(), "step_costs": None}], JobKind.multiview, params, 0) is None
    assert estimate_new([worker()], JobKind.texture, params, 0) > 0  # no texture job seen yet: steps only


def test_the_worker_publishes_how_its_ticks_mix_step_kinds():
    costs = StepCosts()
    assert costs.call_mix() == {}
    costs.record_tick([("full", 64, 0.1)], 0.1, 8)  # lockstep: one call
    costs.record_tick([("shallow", 64, 0.01)], 0.01, 8)
    assert costs.call_mix() == {"full": {"mixed": 0.0, "share": 1.0}, "shallow": {"mixed": 0.0, "share": 1.0}}
    costs.record_tick([("full", 16, 0.04), ("shallow", 48, 0.01)], 0.05, 8)  # a tick of both
    assert costs.call_mix() == {
        "full": {"mixed": 0.5, "share": 0.25},
        "shallow": {"mixed": 0.5, "share": 0.75},
    }


def test_a_mixed_tick_costs_both_calls_at_their_own_sizes():
    """Eight cached jobs whose steps interleave: a step waits for the full call and the shallow call of
    its tick. The worker's published mix decides how often; none published is lockstep."""
    params = {"prompt": "x", "num_views": 4, "steps": 30, "cache_interval": 3}
    full, shallow = step_kinds(30, 3)
    lockstep = worker(slots=8)
    lockstep["step_costs"]["occupancy"] = 8
    tick = {"full": 64 * 0.002, "shallow": 64 * 0.0008}  # one call of all 64 images (8 jobs x 8 rows)
    assert estimate_new([lockstep], JobKind.multiview, params, 7) == pytest.approx(
        full * tick["full"] + shallow * tick["shallow"] + 0.5, abs=1e-3
    )
    mixing = worker(slots=8)
    mixing["step_costs"]["occupancy"] = 8
    mixing["step_costs"]["call_mix"] = {
        "full": {"mixed": 1.0, "share": 0.25},
        "shallow": {"mixed": 0.5, "share": 0.75},
    }
    both = 16 * per_image(TABLE, "full", 16) + 48 * per_image(TABLE, "shallow", 48)  # the mixed tick
    expected = full * both + shallow * (0.5 * tick["shallow"] + 0.5 * both)
    assert estimate_new([mixing], JobKind.multiview, params, 7) == pytest.approx(expected + 0.5, abs=1e-3)
    assert expected > full * tick["full"] + shallow * tick["shallow"]  # waiting for both calls costs
    garbled = worker(slots=8)
    garbled["step_costs"]["occupancy"] = 8
    garbled["step_costs"]["call_mix"] = {"full": "x", "shallow": {"mixed": "?", "share": 7}}
    assert estimate_new([garbled], JobKind.multiview, params, 7) == estimate_new(
        [lockstep], JobKind.multiview, params, 7
    )


def test_bench_eta_re_estimates_a_job_under_the_lockstep_model_from_the_infos_that_gave_its_202():
    from engines.bench.eta import lockstep_estimate

    def mixing() -> dict:  # a snapshot as read: estimating parses an info in place, so each use gets its own
        w = worker(slots=8)
        w["step_costs"]["call_mix"] = {
            "full": {"mixed": 1.0, "share": 0.25},
            "shallow": {"mixed": 1.0, "share": 0.75},
        }
        return w

    lockstep = worker(slots=8)
    params = {"num_views": 4, "steps": 30, "cache_interval": 3}
    live = estimate_new([mixing()], JobKind.multiview, params, 5)
    assert live > estimate_new([lockstep], JobKind.multiview, params, 5)
    snapshot = mixing()
    assert lockstep_estimate([snapshot], params, live) == estimate_new(
        [lockstep], JobKind.multiview, params, 5
    )
    assert "call_mix" in snapshot["step_costs"]  # the snapshot itself is left as read
    assert lockstep_estimate([mixing()], params, 1e6) is None  # no jobs-ahead count reproduces it
    assert (
        lockstep_estimate([mixing()], params, None) is None and lockstep_estimate(None, params, live) is None
    )


def test_worker_snapshots_answer_with_the_last_one_before_a_time():
    from engines.bench.worker_snapshots import WorkerSnapshots

    snaps = WorkerSnapshots("redis://127.0.0.1:1/0")  # never started: nothing is read
    snaps.times, snaps.infos = [1.0, 2.0, 3.0], ['["a"]', '["b"]', '["c"]']  # as read, in JSON
    assert snaps.before(0.5) is None and snaps.before(1.0) == ["a"] and snaps.before(2.9) == ["b"]
    assert snaps.before(99) == ["c"]


def test_get_counts_down_from_the_jobs_progress():
    w = [worker()]
    record = JobRecord(id="j", kind=JobKind.multiview, params={"num_views": 4, "steps": 30}, ahead=2)
    queued = estimate_record(w, record, now=record.created_at)
    assert queued == estimate_new(w, JobKind.multiview, record.params, 2)
    later = estimate_record(w, record, now=record.created_at + 1.0)
    assert later == pytest.approx(queued - 1.0)
    # never below its own run while it waits
    assert estimate_record(w, record, now=record.created_at + 1e6) == estimate_new(
        w, JobKind.multiview, record.params, 0
    )
    record.status, record.worker, record.progress_total = JobStatus.running, "w1", 30
    running = []
    for step in (0, 1, 15, 29, 30):
        record.progress_step = step
        running.append(estimate_record(w, record))
    assert running == sorted(running, reverse=True) and running[-1] == 0.0 and running[0] > running[1]
    record.status = JobStatus.succeeded
    assert estimate_record(w, record) == 0.0


@pytest.fixture(scope="module")
def stack(redis_server, service_launcher):
    broker = redis_server.url(14)
    worker_process = service_launcher.worker(broker)
    service_launcher.wait_ready(worker_process)
    gateway = service_launcher.gateway(broker)
    service_launcher.wait_ready(gateway)
    yield broker, gateway
    gateway.stop()
    worker_process.stop()


def test_a_real_worker_publishes_step_costs_and_the_gateway_estimates_and_updates(stack):
    broker, gateway = stack
    store = RedisJobStore(broker)

    def published() -> dict | None:
        workers = store.live_workers()
        return workers[0].get("step_costs") if workers else None

    # the warm-up's full steps are measured before the first heartbeat
    wait_until(lambda: published() is not None, 30, "the worker's step costs")
    costs = published()
    assert costs["per_image"]["full"] and all(0 < s < math.inf for s in costs["per_image"]["full"].values())
    with Realiz3DClient(gateway.url) as client:
        accepted = client.submit_multiview({"prompt": "a red cube", "num_views": 1, "steps": 60, "seed": 3})
        assert accepted.estimated_seconds is not None and 0 < accepted.estimated_seconds < math.inf
        seen: list[tuple[int, float]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = client.get_job(accepted.id)
            if job.done:
                break
            assert job.estimated_seconds is not None and 0 <= job.estimated_seconds < math.inf
            if job.status == "running" and job.progress.step > 0:
                seen.append((job.progress.step, job.estimated_seconds))
            time.sleep(0.05)
        assert job.status == "succeeded" and job.estimated_seconds == 0
        # as the job progressed, what was left went down
        assert len(seen) >= 2, seen
        first, last = seen[0], seen[-1]
        assert last[0] > first[0] and last[1] < first[1], seen
    # the finished job's time outside denoising is published with a later heartbeat
    wait_until(lambda: "multiview" in (published() or {}).get("job_overhead_s", {}), 30, "its jobs' overhead")


def test_a_worker_publishes_a_newly_measured_call_size_before_its_next_heartbeat(
    redis_server, service_launcher
):
    """A new worker's table holds only its warm-up's full steps; the first shallow steps it measures are
    published within a tick's wake-up, not a heartbeat period later (60 s here): until then every estimate
    of a cached job would read the shallow prior."""
    broker = redis_server.url(13)
    slow_beat = {"REALIZ3D_HEARTBEAT_SECONDS": "60", "REALIZ3D_HEARTBEAT_TTL_SECONDS": "180"}
    worker_process = service_launcher.worker(broker, **slow_beat)
    gateway = service_launcher.gateway(broker, **slow_beat)
    try:
        service_launcher.wait_ready(worker_process)
        service_launcher.wait_ready(gateway)
        store = RedisJobStore(broker)

        def table() -> dict:
            workers = store.live_workers()
            return (workers[0].get("step_costs") or {}).get("per_image", {}) if workers else {}

        wait_until(lambda: "full" in table(), 30, "the warm-up's step costs")
        assert "shallow" not in table()  # the warm-up runs full steps only
        with Realiz3DClient(gateway.url) as client:
            accepted = client.submit_multiview(
                {"prompt": "a red cube", "num_views": 1, "steps": 9, "cache_interval": 3, "seed": 3}
            )
            started = time.monotonic()
            assert client.wait(accepted.id, timeout=60).status == "succeeded"
        wait_until(lambda: "shallow" in table(), 10, "the measured shallow step, before the next heartbeat")
        assert time.monotonic() - started < 50
    finally:
        gateway.stop()
        worker_process.stop()


def test_embedded_mode_estimates_too(service_launcher):
    server = service_launcher.embedded()
    try:
        with Realiz3DClient(server.url) as client:
            accepted = client.submit_multiview(
                {"prompt": "a red cube", "num_views": 2, "steps": 4, "seed": 1}
            )
            assert accepted.estimated_seconds is not None and 0 < accepted.estimated_seconds < math.inf
            events = list(client.events(accepted.id, timeout=120))
            progress = [e.data["estimated_seconds"] for e in events if e.event == "progress"]
            # the event stream carries it too: each progress event, and 0 in the final status
            assert progress and all(e is not None and 0 <= e < math.inf for e in progress), events
            assert events[-1].event == "status" and events[-1].data["estimated_seconds"] == 0
            done = client.get_job(accepted.id)
            assert done.status == "succeeded" and done.estimated_seconds == 0
    finally:
        server.stop()
