"""torch.compile backend: parity with eager fp32, weight-set swaps without recompiling, a step-split
pipeline run; GPU: CUDA graphs + fp16 parity (marked `gpu`).

Every CPU test here uses one input shape (2 objects or one under CFG, 2 views: batch 4), so the tiny
model is compiled once (shapes are static: each new batch size is one more compile).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.pipelines import Realiz3DPipeline
from engines.requests import MultiviewRequest
from engines.types import DomainCombo, UNetInputs, uniform_combo
from tests.fixtures.models import eager_unet as eager

REAL, SYN, SPLIT = (
    uniform_combo("real"),
    uniform_combo("synthetic"),
    DomainCombo("synthetic", "synthetic", "real"),
)
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")


def unet_inputs(n: int, views: int, seed: int = 0, device: str = "cpu") -> UNetInputs:
    g = torch.Generator().manual_seed(seed)
    return UNetInputs(
        sample=torch.randn(n, 3, 32, 32, generator=g).to(device),
        timestep=torch.randint(0, 1000, (n,), generator=g).to(device),
        text=torch.randn(n, 8, 32, generator=g).to(device),
        cameras=torch.randn(n, 16, generator=g).to(device),
        geometry=None,
        num_views=views,
    )


@pytest.fixture(scope="module")
def pipes(tiny_model_dir):
    return Realiz3DPipeline.load(tiny_model_dir, device="cpu"), Realiz3DPipeline.load(
        tiny_model_dir, backend="compile", device="cpu"
    )


def test_compiled_unet_matches_eager_fp32_for_both_domains_and_a_layer_split(pipes):
    eager_pipe, compiled = pipes
    x = unet_inputs(4, 2)
    for combo in (REAL, SYN, SPLIT):
        diff = (compiled.runner(x, combo) - eager(eager_pipe.model, x, combo)).abs().max().item()
        assert diff <= 1e-4, (combo, diff)


BLOCKS = DomainCombo("real", "real", "real", 6)


def test_one_compiled_graph_serves_every_schedule_and_a_mixed_batch(pipes):
    eager_pipe, compiled = pipes
    x = unet_inputs(4, 2, seed=1)
    compiled.runner(x, REAL)  # compiled (or already compiled) for this shape
    assert compiled.runner.batch_shape(3, 1) == 4  # static shapes: the batcher pads to 2^k objects
    # block-shift: the per-sample domain ids are a graph input, the offset tables constants
    with torch.compiler.set_stance("fail_on_recompile"):
        outs = [compiled.runner(x, combo) for combo in (SYN, REAL, SPLIT, BLOCKS, SYN)]
        mixed = compiled.runner(x, [REAL, REAL, BLOCKS, BLOCKS])
    assert not torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], outs[4])
    assert (mixed[2:] - eager(eager_pipe.model, x, BLOCKS)[2:]).abs().max().item() <= 1e-4


def test_inductor_compiles_one_graph_per_shape_and_step_kind_and_never_per_step(pipes):
    from torch._dynamo.utils import counters

    eager_pipe, compiled = pipes
    runner = compiled.runner
    x = unet_inputs(4, 2, seed=2)
    runner(x, REAL)  # a plain call: the full step's graph of this shape (compiled here or before)
    counters.clear()
    _, deep = runner.run_step(x, REAL)
    assert counters["stats"]["unique_graphs"] == 0  # a full step is the graph plain calls run
    runner.run_step(x, REAL, deep)
    assert counters["stats"]["unique_graphs"] == 1  # the shallow step: a second graph of the shape
    with torch.compiler.set_stance("fail_on_recompile"):
        for seed, domains in enumerate((SYN, SPLIT, BLOCKS, [REAL, REAL, BLOCKS, BLOCKS])):
            y = unet_inputs(4, 2, seed=10 + seed)
            _, deep = runner.run_step(y, domains)
            got, _ = runner.run_step(y, domains, deep)
            want, _ = eager_pipe.runner.run_step(y, domains, deep)
            assert (got - want).abs().max().item() <= 1e-4
    assert counters["stats"]["unique_graphs"] == 1 and counters["frames"]["ok"] == 1


def test_lora_weight_swaps_do_not_recompile(tmp_path):
    from engines.models.model_folder import save_model
    from tests.fixtures.models import tiny_model

    folder = save_model(tiny_model(seed=4, form="lora"), tmp_path / "lora")
    compiled = Realiz3DPipeline.load(folder, backend="compile", device="cpu")
    x = unet_inputs(4, 2, seed=1)
    compiled.runner(x, REAL)
    # Parameters are graph inputs under torch 2.13's nn-module inlining: a reference swap is no recompile.
    with torch.compiler.set_stance("fail_on_recompile"):
        outs = [compiled.runner(x, combo) for combo in (SYN, REAL, SPLIT, SYN)]
    assert not torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], outs[3])


@pytest.mark.parametrize("schedule", [{"domain": "real"}, {"domain": "synthetic"}, {"split": 0.5}])
def test_compiled_pipeline_images_match_eager_within_2_levels(pipes, schedule):
    eager_pipe, compiled = pipes
    req = MultiviewRequest(
        prompt="a red cube", num_views=2, steps=4, seed=7, guidance_scale=1.5, schedule=schedule
    )  # CFG: batch 4, the shape the tests above compiled
    a, b = eager_pipe.multiview(req), compiled.multiview(req)
    diff = max(np.abs(x.astype(int) - y.astype(int)).max() for x, y in zip(a.images, b.images, strict=True))
    assert diff <= 2
    assert b.meta["backend"] == "compile"


@pytest.mark.gpu
@gpu
def test_gpu_compile_with_cuda_graphs_fp16_matches_eager_fp16_across_weight_swaps(tiny_model_dir):
    eager_pipe = Realiz3DPipeline.load(tiny_model_dir, device="cuda", precision="fp16")
    compiled = Realiz3DPipeline.load(tiny_model_dir, backend="compile", device="cuda", precision="fp16")
    runner = compiled.runner
    assert runner.cuda_graphs and runner.dtype == torch.float16
    x = unet_inputs(8, 4, device="cuda")
    runner.warmup(x, [REAL, SYN])  # one CUDA graph recorded per weight set
    with torch.compiler.set_stance("fail_on_recompile"):
        for combo in (REAL, SYN, REAL, SYN):
            got = runner(x, combo)
            ref = eager(eager_pipe.model, x, combo)
            assert (got - ref).abs().max().item() <= 2e-2, combo
    real, syn = runner(x, REAL), runner(x, SYN)
    assert not torch.equal(real, syn)  # outputs are copies: the next replay does not overwrite them


@pytest.mark.gpu
@gpu
def test_gpu_compile_pipeline_fp16_images_match_eager_fp16(tiny_model_dir):
    req = MultiviewRequest(
        prompt="a red cube", num_views=4, steps=4, seed=7, guidance_scale=1.0, schedule={"split": 0.5}
    )
    a = Realiz3DPipeline.load(tiny_model_dir, device="cuda", precision="fp16").multiview(req)
    b = Realiz3DPipeline.load(tiny_model_dir, backend="compile", device="cuda", precision="fp16").multiview(
        req
    )
    diff = max(np.abs(x.astype(int) - y.astype(int)).max() for x, y in zip(a.images, b.images, strict=True))
    assert diff <= 3
