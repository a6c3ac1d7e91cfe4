"""ONNX backend: export checks (onnx.checker, TensorRT op list, shapes), parity with eager fp32 for both
domains, mixed batches and a step-split run, engine-cache reuse and `realiz3d build-engines`."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from engines.models.model_folder import load_model
from engines.pipelines import Realiz3DPipeline
from engines.requests import MultiviewRequest
from engines.runtime.onnx_export import BATCH_AXIS, check_tensorrt_compatible, graph_ops, tensorrt_op_list
from engines.runtime.onnx_runner import GRAPH_FILE, OnnxRunner
from engines.types import UNetInputs
from service.cli import main
from tests.fixtures.models import eager_unet as eager

REAL, SYN, SPLIT = ("real",) * 3, ("synthetic",) * 3, ("synthetic", "synthetic", "real")


def unet_inputs(n: int, views: int, seed: int = 0, geometry: bool = False) -> UNetInputs:
    g = torch.Generator().manual_seed(seed)
    return UNetInputs(
        sample=torch.randn(n, 3, 32, 32, generator=g),
        timestep=torch.randint(0, 1000, (n,), generator=g),
        text=torch.randn(n, 8, 32, generator=g),
        cameras=torch.randn(n, 16, generator=g),
        geometry=torch.rand(n, 7, 32, 32, generator=g) if geometry else None,
        num_views=views,
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="module")
def runner(tiny_model_dir, cache_dir):
    return OnnxRunner(load_model(tiny_model_dir).eval(), cache_dir=cache_dir, num_views=2)


def test_onnx_unet_matches_eager_fp32_for_both_domains_and_every_batch_size(runner):
    reference = runner.model
    for n, views in ((4, 2), (2, 2), (8, 2), (8, 4)):  # batch axis dynamic: one graph per views count
        x = unet_inputs(n, views, seed=n + views, geometry=n == 8)
        for combo in (REAL, SYN, SPLIT):
            diff = (runner(x, combo) - eager(reference, x, combo)).abs().max().item()
            assert diff <= 1e-4, (n, views, combo, diff)


def test_a_batch_mixing_domain_combos_is_split_per_combo(runner):
    x = unet_inputs(4, 2, seed=3)
    out = runner(x, [REAL, REAL, SYN, SYN])
    assert (out[:2] - eager(runner.model, x, REAL)[:2]).abs().max() <= 1e-4
    assert (out[2:] - eager(runner.model, x, SYN)[2:]).abs().max() <= 1e-4


def test_exported_graph_passes_checker_uses_only_tensorrt_ops_and_has_a_profiled_batch_axis(runner):
    entry = runner.graph(REAL, runner.default_shape())
    path = entry.file(GRAPH_FILE)
    onnx.checker.check_model(str(path), full_check=True)
    assert check_tensorrt_compatible(path) == []
    supported = tensorrt_op_list()
    assert "onnx-tensorrt" in supported.source and "docs/operators.md" in supported.source
    assert graph_ops(path) <= supported.ops
    model = onnx.load(str(path))
    names = [i.name for i in model.graph.input]
    assert names == ["sample", "timestep", "text", "cameras", "geometry"]
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == BATCH_AXIS
        assert all(d.dim_value > 0 for d in dims[1:]), value.name
    # multi-view attention is in the graph: views of one object attend jointly (a (b, v*t, c) reshape)
    assert "Softmax" in graph_ops(path) and "MatMul" in graph_ops(path)


def test_the_check_reports_unsupported_ops_and_unprofiled_dynamic_dims(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "h"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "h"])
    graph = helper.make_graph([helper.make_node("Unique", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    problems = check_tensorrt_compatible(path)
    assert any("Unique" in p for p in problems)
    assert any("dim 1" in p for p in problems)


def test_a_second_runner_loads_the_graphs_from_the_cache(runner, tiny_model_dir, cache_dir):
    runner.prepare([REAL, SYN])
    again = OnnxRunner(load_model(tiny_model_dir).eval(), cache_dir=cache_dir, num_views=2)
    again.prepare([REAL, SYN])
    assert [e.hit for _, _, e in again.entries] == [True, True]
    x = unet_inputs(4, 2)
    assert torch.equal(again(x, SYN), runner(x, SYN))


def test_a_corrupted_cached_graph_is_rebuilt_and_still_correct(tiny_model_dir, tmp_path):
    model = load_model(tiny_model_dir).eval()
    first = OnnxRunner(model, cache_dir=tmp_path, num_views=2)
    entry = first.graph(REAL, first.default_shape())
    path = entry.file(GRAPH_FILE)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a half-written file
    second = OnnxRunner(load_model(tiny_model_dir).eval(), cache_dir=tmp_path, num_views=2)
    rebuilt = second.graph(REAL, second.default_shape())
    assert not rebuilt.hit
    x = unet_inputs(4, 2)
    assert (second(x, REAL) - eager(model, x, REAL)).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def pipes(tiny_model_dir, cache_dir):
    return (
        Realiz3DPipeline.load(tiny_model_dir, device="cpu"),
        Realiz3DPipeline.load(tiny_model_dir, backend="onnx", device="cpu", engine_cache_dir=cache_dir),
    )


@pytest.mark.parametrize("schedule", [{"domain": "real"}, {"domain": "synthetic"}, {"split": 0.5}])
def test_onnx_pipeline_images_match_eager_within_2_levels(pipes, schedule):
    eager_pipe, onnx_pipe = pipes
    # guidance 1: on an untrained model guidance 7.5 amplifies fp32 rounding ~10x per step
    req = MultiviewRequest(
        prompt="a red cube", num_views=2, steps=4, seed=7, guidance_scale=1.0, schedule=schedule
    )
    a, b = eager_pipe.multiview(req), onnx_pipe.multiview(req)
    diff = max(np.abs(x.astype(int) - y.astype(int)).max() for x, y in zip(a.images, b.images, strict=True))
    assert diff <= 2
    assert b.meta["backend"] == "onnx"
    if "split" in schedule:
        assert b.meta["schedule_steps"] == ["sss", "sss", "rrr", "rrr"]  # weight sets switched mid-run


def test_build_engines_cli_builds_then_hits(tiny_model_dir, tmp_path, capsys):
    args = ["build-engines", "--model", str(tiny_model_dir), "--backend", "onnx", "--num-views", "2"]
    args += ["--schedule", "0.5", "--engine-cache", str(tmp_path), "--device", "cpu"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.count("built in") == 2 and "2 entries (2 built, 0 cache hits)" in first
    assert main(args) == 0
    second = capsys.readouterr().out
    assert "2 entries (0 built, 2 cache hits)" in second
    assert "real/real/real" in second and "synthetic/synthetic/synthetic" in second
