"""Step caching (DeepCache style, issue 28 part 2): the split forward, when steps run full or shallow
under the Domain Shifter's schedule, like-with-like batching, and the knob at the edges."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import engines.runtime.engine as engine
from engines.pipelines import Realiz3DPipeline
from engines.requests import MultiviewRequest
from engines.sampling.denoise import DenoiseJob, make_scheduler
from engines.types import DomainSchedule, UNetInputs, uniform_combo
from tests.test_engine_batching import assert_same_images, req


def inputs(n: int, views: int, model) -> UNetInputs:  # noqa: ANN001
    g = torch.Generator().manual_seed(0)
    cfg = model.config
    return UNetInputs(
        sample=torch.randn(n, cfg.image_channels, cfg.resolution, cfg.resolution, generator=g),
        timestep=torch.full((n,), 400),
        text=torch.randn(n, 16, cfg.text_encoder.dim, generator=g),
        cameras=torch.randn(n, 16, generator=g),
        geometry=None,
        num_views=views,
    )


def test_a_full_step_is_the_plain_forward_bit_for_bit_and_a_shallow_step_reuses_the_feature():
    pipe = Realiz3DPipeline.load(device="cpu")
    model, runner = pipe.model, pipe.runner
    assert runner.step_cache
    x = inputs(8, 4, model)
    combos = [uniform_combo("real")] * 4 + [uniform_combo("synthetic")] * 4
    plain = runner(x, combos)
    full, deep = runner.run_step(x, combos)
    assert torch.equal(full, plain)
    # on the feature of the same inputs, the shallow branch recomputes exactly the full output
    same, _ = runner.run_step(x, combos, deep)
    assert torch.equal(same, plain)
    # at another timestep it differs from the full step there (it reuses the stale deep feature)
    later = UNetInputs(x.sample, torch.full((8,), 300), x.text, x.cameras, None, 4)
    assert not torch.equal(runner.run_step(later, combos, deep)[0], runner(later, combos))


def job(schedule: DomainSchedule, steps: int, interval: int) -> DenoiseJob:
    from engines.models.realiz3d_model import DEFAULT_SCHEDULER_CONFIG

    z = torch.zeros(1, 3, 4, 4)
    return DenoiseJob(
        scheduler=make_scheduler("ddim", DEFAULT_SCHEDULER_CONFIG),
        latents=z,
        text=torch.zeros(1, 2, 4),
        uncond_text=torch.zeros(1, 2, 4),
        cameras=torch.zeros(1, 16),
        geometry=None,
        guidance_scale=1.0,
        schedule=schedule,
        num_steps=steps,
        cache_interval=interval,
    )


def kinds(j: DenoiseJob) -> str:
    out = ""
    while not j.done:
        kind = j.step_kind
        out += kind[0].upper()
        j.advance(torch.zeros(1, 3, 4, 4), torch.zeros(1) if kind == "full" else None)
    assert j.deep is None  # released with the job
    return out


def test_full_every_nth_step_and_wherever_the_schedule_switches_a_domain():
    real = DomainSchedule(domain="real")
    assert kinds(job(real, 10, 1)) == "F" * 10
    assert kinds(job(real, 10, 3)) == "FSSFSSFSSF"
    assert kinds(job(real, 5, 2)) == "FSFSF"
    # split 0.4 of 10 steps: synthetic 0-3, real from 4: step 4 switches every site, so it runs full
    assert kinds(job(DomainSchedule(split=0.4), 10, 3)) == "FSSF" + "FSSFSS"
    # a block split switches only the sites past K at the split step: full there too
    assert kinds(job(DomainSchedule(split=0.5, blocks=2), 10, 4)) == "FSSSF" + "FSSSF"


def test_jobs_with_mixed_intervals_batch_like_with_like_and_match_running_alone():
    alone = Realiz3DPipeline.load(device="cpu")
    pipe = Realiz3DPipeline.load(device="cpu")
    requests = [
        req(1, steps=7, cache_interval=3, schedule={"split": 0.4}),
        req(2, steps=7, cache_interval=3, schedule={"domain": "real"}),
        req(3, steps=7, cache_interval=2),
        req(4, steps=5, scheduler="dpm++", guidance_scale=1.0),
    ]
    expected = [alone.multiview(r) for r in requests]
    calls: list[tuple[str, tuple[int, ...]]] = []
    original = engine.Scheduler.schedule

    def spy(self, slots):  # noqa: ANN001, ANN202
        plan = original(self, slots)
        calls.extend((c.kind, tuple(s.job.cache_interval for s in c.slots)) for c in plan.calls)
        return plan

    engine.Scheduler.schedule = spy
    pipe.enable_batching(max_jobs=len(requests), max_wait_ms=30_000)
    try:
        with ThreadPoolExecutor(len(requests)) as pool:
            results = list(pool.map(pipe.multiview, requests))
    finally:
        engine.Scheduler.schedule = original
        pipe.batcher.close()
    for got, want in zip(results, expected, strict=True):
        assert got.meta["cache_interval"] == want.meta["cache_interval"]
        assert_same_images(got.images, want.images)
    # shallow steps of several jobs shared calls; a job without caching never took a shallow step
    assert any(kind == "shallow" and len(jobs) >= 2 for kind, jobs in calls)
    assert all(1 not in jobs for kind, jobs in calls if kind == "shallow")
    assert any(kind == "full" and 1 in jobs and len(jobs) >= 2 for kind, jobs in calls)


def test_caching_changes_images_a_little_and_interval_1_not_at_all():
    pipe = Realiz3DPipeline.load(device="cpu")
    base = pipe.multiview(req(5, steps=9, num_views=4))
    assert base.meta["cache_interval"] == 1
    same = pipe.multiview(req(5, steps=9, num_views=4, cache_interval=1))
    assert all(np.array_equal(a, b) for a, b in zip(same.images, base.images, strict=True))
    cached = pipe.multiview(req(5, steps=9, num_views=4, cache_interval=3))
    assert cached.meta["cache_interval"] == 3
    diff = np.mean(
        [
            np.abs(a.astype(float) - b.astype(float)).mean()
            for a, b in zip(cached.images, base.images, strict=True)
        ]
    )
    assert 0 < diff < 20  # levels of 255: close to full compute, not equal


class WholeStepsOnly:
    """The eager runner as a backend without step caching sees it (compiled backends, fused lora)."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner
        self.backend, self.device, self.dtype = inner.backend, inner.device, inner.dtype
        self.mixes_domains = inner.mixes_domains

    def prepare(self, combos) -> None:  # noqa: ANN001
        self.inner.prepare(combos)

    def __call__(self, inputs, domains):  # noqa: ANN001, ANN204
        return self.inner(inputs, domains)


def test_a_backend_without_step_caching_runs_every_step_whole(tiny_model_dir):
    unfused = Realiz3DPipeline.load(tiny_model_dir, adapters="unfused")
    assert unfused.runner.step_cache  # unfused adapters take per-sample domains too
    assert unfused.multiview(req(6, steps=3, cache_interval=2)).meta["cache_interval"] == 2
    pipe = Realiz3DPipeline.load(tiny_model_dir)
    pipe.runner = WholeStepsOnly(pipe.runner)
    assert pipe.multiview(req(6, steps=3, cache_interval=3)).meta["cache_interval"] == 1


def test_the_knob_at_the_edges():
    for bad in (0, -1):
        with pytest.raises(ValidationError):
            MultiviewRequest(prompt="x", cache_interval=bad)
    r = subprocess.run(
        [str(Path(sys.executable).with_name("realiz3d")), "generate", "x", "--cache-interval", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "--cache-interval" in r.stderr and len(r.stderr.strip().splitlines()) <= 2


def test_the_evaluation_scores_each_cache_interval_against_full_compute(tmp_path):
    from engines.training.evaluate import Condition, EvalConfig, conditions_for

    folder = tmp_path / "m"
    conditions = conditions_for(
        {"block-shift": folder}, None, EvalConfig(splits=(0.0, 0.4), cache_intervals=(1, 3))
    )
    assert [(c.name, c.cache_interval) for c in conditions] == [
        ("block-shift, step split 0", 1),
        ("block-shift, step split 0.4", 1),
        ("block-shift, step split 0.4, cache_interval 3", 3),
    ]
    assert isinstance(conditions[-1], Condition) and conditions[-1].schedule == conditions[1].schedule
