"""The step batcher supervised, and every UNet call and VAE decode under the image budget."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from engines.errors import BatcherDied, UserInputError
from engines.models.config import ModelConfig, ServingEnvelope
from engines.pipelines import Realiz3DPipeline
from engines.requests import ModelCapabilities, MultiviewRequest
from engines.runtime.base import call_limit, call_pieces
from engines.types import UNetInputs, uniform_combo
from service.worker import ProbeServer, pipeline_alive
from tests.test_engine_batching import assert_same_images, req


class BuggyRunner:
    """The eager runner, with a bug in what the batcher's own loop reads (`mixes_domains`, read when it
    groups jobs, outside any UNet call) after `healthy_reads` reads: the batcher's thread dies."""

    def __init__(self, inner, healthy_reads: int) -> None:
        self.inner = inner
        self.backend, self.device, self.dtype = inner.backend, inner.device, inner.dtype
        self.reads = healthy_reads

    @property
    def mixes_domains(self) -> bool:
        self.reads -= 1
        if self.reads < 0:
            raise RuntimeError("a bug in the batcher's own bookkeeping")
        return self.inner.mixes_domains

    def prepare(self, combos) -> None:
        self.inner.prepare(combos)

    def __call__(self, inputs, domains):
        return self.inner(inputs, domains)


def test_a_dead_batcher_fails_every_job_clearly_and_turns_readiness_off(tiny_model_dir):
    pipe = Realiz3DPipeline.load(tiny_model_dir)
    pipe.runner = BuggyRunner(pipe.runner, healthy_reads=6)
    pipe.enable_batching(max_jobs=4, max_wait_ms=300)
    probes = ProbeServer("127.0.0.1", 0, lambda: pipeline_alive(pipe))
    probes.start()
    try:
        assert httpx.get(f"http://127.0.0.1:{probes.port}/readyz").status_code == 200
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(pipe.multiview, req(i, steps=20)) for i in range(3)]
            errors = [f.exception(timeout=60) for f in futures]
        assert all(isinstance(e, BatcherDied) for e in errors), errors
        assert "thread died" in str(errors[0]) and "bookkeeping" in str(errors[0])
        assert not pipe.alive() and not pipe.batcher.alive()
        with pytest.raises(BatcherDied):  # a later job is refused at once, never left waiting
            pipe.multiview(req(9, steps=2))
        r = httpx.get(f"http://127.0.0.1:{probes.port}/readyz")
        assert r.status_code == 503 and r.json() == {"ready": False}
    finally:
        probes.stop()


def test_a_cancel_seen_just_after_the_last_step_does_not_cancel_a_finished_job(tiny_model_dir):
    pipe = Realiz3DPipeline.load(tiny_model_dir)
    pipe.enable_batching(max_jobs=2, max_wait_ms=0)
    try:
        alone = Realiz3DPipeline.load(tiny_model_dir).multiview(req(3, steps=4)).images
        last_step = threading.Event()

        def progress(step: int, total: int) -> None:
            if step == total:
                last_step.set()  # e.g. the deadline passes, or the user cancels, right now

        result = pipe.multiview(req(3, steps=4), progress, last_step.is_set)
        assert last_step.is_set()
        assert_same_images(result.images, alone)
        # ... while a cancel before the last step still stops the job
        from engines.errors import JobCanceled

        seen = threading.Event()
        with pytest.raises(JobCanceled):
            pipe.multiview(req(4, steps=30), lambda s, t: seen.set() if s == 2 else None, seen.is_set)
    finally:
        pipe.batcher.close()


def inputs_of(objects: int, views: int, size: int = 8) -> UNetInputs:
    n = objects * views
    return UNetInputs(
        sample=torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 3, size, size),
        timestep=torch.arange(n),
        text=torch.zeros(n, 4, 8),
        cameras=torch.zeros(n, 16),
        geometry=None,
        num_views=views,
    )


def test_call_pieces_cut_at_whole_objects_and_never_below_one():
    x = inputs_of(objects=5, views=3)  # 15 rows
    # a budget of 64 cells per row... 8x8 cells: 7 rows fit -> 2 objects (6 rows) per call
    assert call_limit(object(), x.sample.shape, 3, 7 * 64) == 6
    assert call_limit(object(), x.sample.shape, 3, 10) == 3  # below one object: one object
    assert call_limit(object(), x.sample.shape, 3, None) is None
    combos = [uniform_combo("real" if i < 9 else "synthetic") for i in range(15)]
    pieces = call_pieces(x, combos, 6)
    assert [(lo, hi) for lo, hi, _, _ in pieces] == [(0, 6), (6, 12), (12, 15)]
    got = torch.cat([p.sample[:, 0, 0, 0] for _, _, p, _ in pieces])
    assert torch.equal(got, x.sample[:, 0, 0, 0])
    assert [len(d) for *_, d in pieces] == [6, 6, 3] and pieces[1][3] == combos[6:12]
    assert call_pieces(x, combos, None)[0][2] is x


def test_steps_above_the_image_budget_are_split_into_calls_with_the_same_images(tiny_model_dir):
    alone = Realiz3DPipeline.load(tiny_model_dir)
    pipe = Realiz3DPipeline.load(tiny_model_dir)
    rows: list[int] = []
    pipe.on_unet_call = lambda images, jobs, s: rows.append(images)
    pipe.set_image_budget(4)  # 4 images at 32 px
    # solo: one 4-view job with CFG is 8 rows = 2 objects (uncond, cond): two calls of 4
    want = alone.multiview(req(7, num_views=4, steps=3)).images
    assert_same_images(pipe.multiview(req(7, num_views=4, steps=3)).images, want)
    assert rows == [4] * 6
    # batched: three 2-view jobs (4 rows each) never share a call above the budget
    requests = [req(20 + i, steps=3) for i in range(3)]
    expected = [alone.multiview(r).images for r in requests]
    pipe.enable_batching(max_jobs=8, max_wait_ms=300)
    try:
        rows.clear()
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(pipe.multiview, requests))
        for got, want in zip(results, expected, strict=True):
            assert_same_images(got.images, want)
        assert rows and max(rows) <= 4
        # pixels count: a 64 px image is 4 of 32 px, so a budget of 8 takes 2 rows per call, one of 4 takes 1
        for budget, want_rows in ((8, [2, 2]), (4, [1, 1, 1, 1])):
            pipe.set_image_budget(budget)
            rows.clear()
            pipe.multiview(req(5, num_views=1, steps=2, resolution=64))  # CFG: 2 rows per step
            assert rows == want_rows, budget
    finally:
        pipe.batcher.close()


def test_vae_decodes_are_sliced_under_the_budget(tiny_sd_model_dir):
    pipe = Realiz3DPipeline.load(tiny_sd_model_dir)
    latents = torch.randn(
        5, pipe.model.vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0)
    )
    whole = pipe.decode(latents)
    calls: list[int] = []
    decode = pipe.model.vae.decode

    def counted(z, *a, **kw):
        calls.append(z.shape[0])
        return decode(z, *a, **kw)

    pipe.model.vae.decode = counted
    native = pipe.model.config.resolution // pipe.model.config.vae_scale_factor
    assert native == 8
    pipe.set_image_budget(2)
    sliced = pipe.decode(latents)
    assert calls == [2, 2, 1]
    assert_same_images(sliced, whole)


def test_the_envelope_from_realiz3d_json_names_the_allowed_values():
    cfg = ModelConfig(resolution=64, serving=ServingEnvelope(resolutions=[128, 64], views=[4, 1, 2]))
    assert cfg.serving.resolutions == [64, 128] and cfg.served_resolutions(16) == [64, 128]
    assert ModelConfig(resolution=32).served_resolutions(16) == [16, 32, 48, 64]  # default: up to 2x
    caps = ModelCapabilities(
        name="m", resolution=64, resolution_step=16, geometry=True, block_sites=4,
        resolutions=[64, 128], max_resolution=128, views=[1, 2, 4],
    )  # fmt: skip
    assert caps.refusal("multiview", {"num_views": 4, "resolution": 128}) is None
    assert caps.refusal("multiview", {"num_views": 3}) == "num_views 3: model 'm' serves 1, 2 or 4 views"
    assert caps.refusal("multiview", {"num_views": 1, "resolution": 96}) == (
        "resolution 96: model 'm' serves 64 or 128"
    )
    open_caps = caps.model_copy(update={"resolutions": None, "max_resolution": 64, "views": None})
    assert "up to 64" in open_caps.refusal("multiview", {"num_views": 8, "resolution": 2048})


def test_a_request_outside_the_model_envelope_is_refused_before_any_compute(tiny_model_dir):
    pipe = Realiz3DPipeline.load(tiny_model_dir)
    assert pipe.capabilities().max_resolution == 64  # a 32 px model, no `serving` in its realiz3d.json
    with pytest.raises(UserInputError, match="up to 64"):
        pipe.multiview(MultiviewRequest(prompt="x", num_views=1, steps=1, resolution=2048))
