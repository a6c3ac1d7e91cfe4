"""TensorRT backend: a clear one-line error without TensorRT; engines per fused weight set where it
exists (marked `tensorrt`; skipped cleanly here: TensorRT cannot be installed in this environment)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.errors import BackendUnavailable
from engines.runtime.tensorrt_runner import tensorrt_available
from engines.types import UNetInputs, uniform_combo
from service.cli import main
from tests.fixtures.models import eager_unet

REAL, SYN = uniform_combo("real"), uniform_combo("synthetic")
needs_trt = pytest.mark.skipif(
    not tensorrt_available(), reason="needs NVIDIA TensorRT and a CUDA GPU (absent here)"
)


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")
@pytest.mark.parametrize("command", ["generate", "build-engines"])
def test_backend_tensorrt_without_tensorrt_is_one_line_and_exit_2(command, tiny_model_dir, tmp_path, capsys):
    if command == "generate":
        argv = [
            "generate",
            "a cube",
            "--model",
            str(tiny_model_dir),
            "--backend",
            "tensorrt",
            "--out",
            str(tmp_path),
        ]
    else:
        argv = [
            "build-engines",
            "--model",
            str(tiny_model_dir),
            "--backend",
            "tensorrt",
            "--engine-cache",
            str(tmp_path),
        ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("realiz3d: error: backend tensorrt needs NVIDIA TensorRT")


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")
def test_constructing_the_runner_without_tensorrt_raises_backend_unavailable(tiny_model_dir):
    from engines.models.model_folder import load_model
    from engines.runtime.tensorrt_runner import TensorRTRunner

    with pytest.raises(BackendUnavailable, match="TensorRT"):
        TensorRTRunner(load_model(tiny_model_dir))


def unet_inputs(n: int, views: int) -> UNetInputs:
    g = torch.Generator().manual_seed(0)
    return UNetInputs(
        sample=torch.randn(n, 3, 32, 32, generator=g).cuda(),
        timestep=torch.randint(0, 1000, (n,), generator=g).cuda(),
        text=torch.randn(n, 8, 32, generator=g).cuda(),
        cameras=torch.randn(n, 16, generator=g).cuda(),
        geometry=None,
        num_views=views,
    )


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_trt
def test_tensorrt_engines_per_weight_set_share_one_activation_buffer_and_match_eager(
    tiny_model_dir, tmp_path
):
    from engines.models.model_folder import load_model
    from engines.runtime.tensorrt_runner import TensorRTRunner

    model = load_model(tiny_model_dir).to("cuda").eval()
    runner = TensorRTRunner(model, cache_dir=tmp_path, precision="fp16", num_views=4)
    runner.prepare([REAL, SYN])
    assert len(runner._engines) == 1  # block-shift: one engine per shape for every schedule
    assert runner.activation_bytes == max(e.device_memory_bytes for e in runner._engines.values())
    for n in (4, 8, 16):  # min, opt and an in-profile batch
        x = unet_inputs(n, 4)
        for combo in (REAL, SYN):
            got = runner(x, combo)
            ref = eager_unet(model, x, combo)
            assert (got - ref).abs().max().item() <= 2e-2
    again = TensorRTRunner(model, cache_dir=tmp_path, precision="fp16", num_views=4)
    again.prepare([REAL, SYN])
    assert all(e.hit for *_, e in again.entries)


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_trt
def test_tensorrt_cuda_graph_replay_matches_plain_execution(tiny_model_dir, tmp_path):
    from engines.models.model_folder import load_model
    from engines.runtime.tensorrt_runner import TensorRTRunner

    model = load_model(tiny_model_dir).to("cuda").eval()
    plain = TensorRTRunner(model, cache_dir=tmp_path, num_views=4)
    graphs = TensorRTRunner(model, cache_dir=tmp_path, num_views=4, cuda_graphs=True)
    x = unet_inputs(8, 4)
    for combo in (REAL, SYN, REAL):
        assert torch.allclose(plain(x, combo), graphs(x, combo), atol=1e-3)


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_trt
def test_tensorrt_step_split_pipeline_images_match_eager_fp16(tiny_model_dir, tmp_path):
    from engines.pipelines import Realiz3DPipeline
    from engines.requests import MultiviewRequest

    req = MultiviewRequest(
        prompt="a red cube", num_views=4, steps=4, seed=7, guidance_scale=1.0, schedule={"split": 0.5}
    )
    a = Realiz3DPipeline.load(tiny_model_dir, device="cuda", precision="fp16").multiview(req)
    b = Realiz3DPipeline.load(
        tiny_model_dir, backend="tensorrt", device="cuda", precision="fp16", engine_cache_dir=tmp_path
    ).multiview(req)
    diff = max(np.abs(x.astype(int) - y.astype(int)).max() for x, y in zip(a.images, b.images, strict=True))
    assert diff <= 3


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_trt
def test_tensorrt_full_and_shallow_engines_match_eager_steps(tiny_model_dir, tmp_path):
    import dataclasses

    from engines.models.model_folder import load_model
    from engines.runtime.tensorrt_runner import TensorRTRunner
    from engines.runtime.torch_runner import TorchRunner

    model = load_model(tiny_model_dir).to("cuda").eval()
    x = unet_inputs(8, 4)
    later = dataclasses.replace(x, timestep=x.timestep // 2)
    combos = [REAL] * 4 + [SYN] * 4
    eager = TorchRunner(model)
    want, want_deep = eager.run_step(x, combos)
    want_shallow, _ = eager.run_step(later, combos, want_deep)
    runner = TensorRTRunner(model, cache_dir=tmp_path, precision="fp32", num_views=4, release_unet=False)
    runner.prepare([REAL, SYN], step_kinds=("full", "shallow"))
    shape = runner.default_shape()
    assert len(runner._engines) == 2 and (None, shape, "shallow") in runner._engines  # two a shape
    got, got_deep = runner.run_step(x, combos)
    assert (got - want).abs().max().item() <= 2e-2
    assert (got_deep.float() - want_deep).abs().max().item() <= 2e-2
    got_shallow, _ = runner.run_step(later, combos, want_deep)
    assert (got_shallow - want_shallow).abs().max().item() <= 2e-2
    assert (runner(x, combos) - got).abs().max().item() <= 1e-3  # a plain call: the full engine
