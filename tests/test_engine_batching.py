"""Step-level batching across jobs: same results as alone, joins, leaves, cancel, no deadlock."""

from __future__ import annotations

import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import trimesh

from engines.errors import JobCanceled
from engines.pipelines import Realiz3DPipeline
from engines.requests import MultiviewRequest, TextureRequest
from engines.runtime.base import pad_inputs, power_of_two_objects, run_padded
from engines.runtime.batching import batch_inputs
from engines.types import UNetInputs


def req(seed: int, **kw) -> MultiviewRequest:
    # Guidance 3 (the shipped model's default): an untrained test model at 7.5 amplifies fp32 rounding
    # of different batch sizes past 2/255 within a few steps.
    params = {"prompt": f"object {seed}", "num_views": 2, "steps": 6, "seed": seed, "guidance_scale": 3.0}
    return MultiviewRequest(**{**params, **kw})


def max_diff(a, b) -> int:
    return max(int(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a, b, strict=True))


def mean_diff(a, b) -> float:
    return float(
        np.mean([np.abs(x.astype(float) - y.astype(float)).mean() for x, y in zip(a, b, strict=True)])
    )


def assert_same_images(got, want) -> None:
    """Batched fp32 convolutions round differently from unbatched ones (~1e-6); an untrained model
    amplifies that over the steps, so a rare pixel may move by a few levels: bound both."""
    assert max_diff(got, want) <= 4
    assert mean_diff(got, want) <= 0.05


@pytest.fixture(scope="module", params=["fused", "unfused"])
def pipes(request, tiny_model_dir):
    alone = Realiz3DPipeline.load(tiny_model_dir, adapters=request.param)
    batched = Realiz3DPipeline.load(tiny_model_dir, adapters=request.param)
    calls: list[tuple[int, int]] = []
    batched.on_unet_call = lambda images, jobs, s: calls.append((images, jobs))
    batched.enable_batching(max_jobs=8, max_wait_ms=200)
    yield alone, batched, calls
    batched.batcher.close()


def test_batched_jobs_match_running_alone_with_mixed_schedules(pipes):
    alone, batched, calls = pipes
    requests = [
        req(1, schedule={"split": 0.5}),
        req(2, schedule={"domain": "real"}),
        req(3, schedule={"domain": "synthetic"}, steps=4),
        req(4, schedule={"split": 0.3}, scheduler="dpm++", guidance_scale=1.0),
    ]
    expected = [alone.multiview(r).images for r in requests]
    calls.clear()
    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(batched.multiview, requests))
    for got, want in zip(results, expected, strict=True):
        assert_same_images(got.images, want)
    assert max(jobs for _, jobs in calls) >= 2  # work really was shared between jobs


def test_texture_and_multiview_jobs_batch_together_and_match_alone(pipes, tmp_path):
    alone, batched, _ = pipes
    mesh = tmp_path / "box.ply"
    trimesh.creation.box().export(mesh)
    treq = TextureRequest(
        prompt="a wooden box", num_views=2, steps=4, seed=5, atlas_size=64, guidance_scale=3.0
    )
    mreq = req(6, steps=4)
    want_tex = alone.texture(treq, mesh).views
    want_mv = alone.multiview(mreq).images
    with ThreadPoolExecutor(2) as pool:
        tex = pool.submit(batched.texture, treq, mesh)
        mv = pool.submit(batched.multiview, mreq)
        assert_same_images(tex.result().views, want_tex)
        assert_same_images(mv.result().images, want_mv)


def test_a_job_joins_mid_way_and_a_canceled_job_leaves_without_stalling_others(pipes):
    _, batched, calls = pipes
    long_started = threading.Event()
    steps_seen: list[int] = []

    def long_progress(step, total):
        steps_seen.append(step)
        if step == 2:
            long_started.set()

    cancel_flag = threading.Event()
    with ThreadPoolExecutor(3) as pool:
        long_job = pool.submit(batched.multiview, req(10, steps=12), long_progress)
        assert long_started.wait(60)
        calls.clear()
        joiner = pool.submit(batched.multiview, req(11, steps=3))
        doomed = pool.submit(batched.multiview, req(12, steps=50), None, cancel_flag.is_set)
        assert joiner.result(timeout=120).images  # finished while the long job was still running
        cancel_flag.set()
        with pytest.raises(JobCanceled):
            doomed.result(timeout=120)
        assert long_job.result(timeout=120).images
    assert steps_seen == list(range(1, 13))
    assert any(jobs >= 2 for _, jobs in calls)


def test_max_jobs_1_runs_jobs_one_at_a_time(tiny_model_dir):
    pipe = Realiz3DPipeline.load(tiny_model_dir)
    calls = []
    pipe.on_unet_call = lambda images, jobs, s: calls.append(jobs)
    pipe.enable_batching(max_jobs=1)
    try:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(pipe.multiview, [req(i, steps=3) for i in range(3)]))
    finally:
        pipe.batcher.close()
    assert calls and set(calls) == {1}
    assert len(calls) == 9


class SizedRunner:
    """The eager runner behind the interface of a runner built for fixed batch sizes (a TensorRT
    profile, CUDA graphs): a largest batch and power-of-two padding. Records every real call's batch."""

    def __init__(self, inner, max_images: int) -> None:
        self.inner = inner
        self.max_images = max_images
        self.backend, self.device, self.dtype = inner.backend, inner.device, inner.dtype
        self.mixes_domains = inner.mixes_domains
        self.batches: list[int] = []

    def prepare(self, combos) -> None:
        self.inner.prepare(combos)

    def max_batch(self, num_views: int) -> int:
        return self.max_images

    def batch_shape(self, batch: int, num_views: int) -> int:
        return power_of_two_objects(batch, num_views, self.max_images)

    def __call__(self, inputs, domains):
        assert inputs.batch <= self.max_images, f"batch {inputs.batch} > the runner's {self.max_images}"
        self.batches.append(inputs.batch)
        return self.inner(inputs, domains)


@pytest.mark.parametrize("adapters", ["fused", "unfused"])
def test_groups_split_to_the_runners_largest_batch_and_pad_to_its_sizes_with_same_results(
    tiny_model_dir, adapters
):
    alone = Realiz3DPipeline.load(tiny_model_dir, adapters=adapters)
    pipe = Realiz3DPipeline.load(tiny_model_dir, adapters=adapters)
    # 2-view jobs with CFG are 4 images each; at most 8 images (two jobs) per call.
    pipe.runner = runner = SizedRunner(pipe.runner, max_images=8)
    images_per_call: list[tuple[int, int]] = []
    pipe.on_unet_call = lambda images, jobs, s: images_per_call.append((images, jobs))
    requests = [req(20 + i, steps=3 + i % 2, schedule={"split": 0.5}) for i in range(3)]
    requests.append(req(30, steps=3, guidance_scale=1.0))  # no CFG: 2 images, so a call of 6 pads to 8
    expected = [alone.multiview(r).images for r in requests]
    pipe.enable_batching(max_jobs=8, max_wait_ms=500)
    try:
        with ThreadPoolExecutor(len(requests)) as pool:
            results = list(pool.map(pipe.multiview, requests))
    finally:
        pipe.batcher.close()
    for got, want in zip(results, expected, strict=True):
        assert_same_images(got.images, want)
    # 14 images of one step did not fit one call: they were split, never over the limit ...
    assert max(images for images, _ in images_per_call) <= 8
    assert any(jobs >= 2 for _, jobs in images_per_call)
    # ... and every call ran at a power-of-two number of 2-view objects, padding included.
    assert set(runner.batches) <= {2, 4, 8}
    assert len(runner.batches) == len(images_per_call)
    assert any(real < padded for (real, _), padded in zip(images_per_call, runner.batches, strict=True))


def test_padding_repeats_whole_objects_and_is_cut_off_again():
    views = 3
    inputs = UNetInputs(
        sample=torch.arange(2 * views, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 4, 4),
        timestep=torch.arange(2 * views),
        text=torch.zeros(2 * views, 2, 8),
        cameras=torch.zeros(2 * views, 16),
        geometry=None,
        num_views=views,
    )
    assert power_of_two_objects(6, views) == 6
    assert power_of_two_objects(9, views) == 12
    assert power_of_two_objects(9, views, limit=9) == 9  # never beyond the runner's largest batch
    padded = pad_inputs(inputs, 4 * views)
    assert padded.timestep.tolist() == [0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5]
    with pytest.raises(ValueError, match="groups of 3 views"):
        pad_inputs(inputs, 7)

    seen = []

    class Echo:
        mixes_domains = True

        def batch_shape(self, batch, num_views):
            return power_of_two_objects(batch, num_views)

        def __call__(self, x, domains):
            seen.append((x.batch, list(domains)))
            return x.sample

    one = UNetInputs(inputs.sample[:views], inputs.timestep[:views], inputs.text[:views],
                     inputs.cameras[:views], None, views)  # fmt: skip
    three = batch_inputs([inputs, one])
    out = run_padded(Echo(), three, ["a"] * 6 + ["b"] * 3)
    assert out.shape[0] == 9 and torch.equal(out, three.sample)
    assert seen == [(12, ["a"] * 6 + ["b"] * 6)]


def test_the_batcher_thread_computes_with_its_threads_and_job_threads_use_one(tiny_model_dir):
    """One OpenMP team per process (engines/runtime/cpu_setup.py): UNet calls run on the batcher's
    thread with the threads it was given; the threads that submit jobs drop to one intra-op thread."""
    pipe = Realiz3DPipeline.load(tiny_model_dir)
    unet_threads: list[int] = []

    class ThreadCountingRunner:
        def __init__(self, inner) -> None:
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, inputs, domains):
            unet_threads.append(torch.get_num_threads())
            return self.inner(inputs, domains)

    pipe.runner = ThreadCountingRunner(pipe.runner)
    pipe.enable_batching(max_jobs=4, threads=3)

    def job(seed):
        pipe.multiview(req(seed, steps=2))
        return torch.get_num_threads()

    try:
        with ThreadPoolExecutor(2) as pool:
            caller_threads = list(pool.map(job, [40, 41]))
    finally:
        pipe.batcher.close()
    assert unet_threads and set(unet_threads) == {3}
    assert caller_threads == [1, 1]


def test_allocator_tuning_leaves_a_preloaded_allocator_alone(monkeypatch):
    from engines.runtime.cpu_setup import tune_allocator

    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert "left as is" in tune_allocator()
    monkeypatch.delenv("LD_PRELOAD")
    if platform.libc_ver()[0] == "glibc":
        assert tune_allocator().startswith("glibc: mmap threshold 32 MiB")


def test_a_slow_progress_sink_does_not_hold_up_other_jobs(pipes):
    """Progress and cancel checks run on each job's own thread, so a job whose progress callback is
    slow (a Redis write under load) delays only itself; it still sees every step, in order."""
    _, batched, _ = pipes
    seen: list[int] = []
    first_step = threading.Event()

    def slow_progress(step, total):
        first_step.set()
        seen.append(step)
        time.sleep(0.8)  # long enough that the other job finishes first even on a loaded machine

    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(batched.multiview, req(50, steps=6), slow_progress)
        assert first_step.wait(60)
        fast = pool.submit(batched.multiview, req(51, steps=8))  # more steps than the slow job
        assert fast.result(timeout=120).images
        assert not slow.done()  # still reporting its steps while the other job came and went
        assert slow.result(timeout=120).images
    assert seen == [1, 2, 3, 4, 5, 6]


def slowed_builds(runner, slow) -> threading.Event:  # noqa: ANN001 - an OnnxRunner, a predicate
    """Make the ONNX runner's builds of the graphs `slow(shape, step_kind)` picks take 1.5 s longer, as a
    TensorRT build is slow; the event is set when one starts."""
    building = threading.Event()
    plain_session = runner.session

    def slow_session(combo, shape, step_kind="full"):  # noqa: ANN001, ANN202
        if slow(shape, step_kind) and (combo, shape, step_kind) not in runner._sessions:
            building.set()
            time.sleep(1.5)
        return plain_session(combo, shape, step_kind)

    runner.session = slow_session
    return building


def test_a_new_shapes_graph_builds_in_the_background_while_other_jobs_step(tiny_model_dir, tmp_path):
    from engines.runtime.onnx_runner import OnnxRunner

    pipe = Realiz3DPipeline.load(tiny_model_dir, backend="onnx", engine_cache_dir=tmp_path)
    runner: OnnxRunner = pipe.runner
    runner.session(None, runner.default_shape(2))  # the 2-view graph is there; the 1-view one is not
    building = slowed_builds(runner, lambda shape, step_kind: shape.num_views == 1)
    pipe.enable_batching(max_jobs=4, max_wait_ms=0)
    long_steps: list[float] = []
    first_new_step: list[float] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            long = pool.submit(
                pipe.multiview, req(1, steps=150), progress=lambda s, t: long_steps.append(time.monotonic())
            )
            while len(long_steps) < 3:
                time.sleep(0.01)
            new = pool.submit(
                pipe.multiview,
                req(2, num_views=1, steps=3),
                progress=lambda s, t: first_new_step.append(time.monotonic()),
            )
            assert building.wait(30)
            started = time.monotonic()
            result = new.result(timeout=120)
            assert len(result.images) == 1
            during = [t for t in long_steps if started < t < first_new_step[0]]
            # the batcher kept stepping the 2-view job while the 1-view graph was built
            assert len(during) >= 3, len(during)
            long.result(timeout=300)
    finally:
        pipe.batcher.close()
