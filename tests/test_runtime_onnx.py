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
from engines.runtime.onnx_export import (
    BATCH_AXIS,
    check_tensorrt_compatible,
    graph_ops,
    input_names,
    tensorrt_op_list,
)
from engines.runtime.onnx_runner import GRAPH_FILE, OnnxRunner
from engines.types import DomainCombo, UNetInputs, uniform_combo
from service.cli import main
from tests.fixtures.models import eager_unet as eager

REAL, SYN, SPLIT = (
    uniform_combo("real"),
    uniform_combo("synthetic"),
    DomainCombo("synthetic", "synthetic", "real"),
)


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


def test_a_batch_mixing_domain_combos_runs_in_one_graph(runner):
    x = unet_inputs(6, 2, seed=3)
    blocks = DomainCombo("real", "real", "real", 6)
    out = runner(x, [REAL, REAL, SYN, SYN, blocks, blocks])
    assert (out[:2] - eager(runner.model, x, REAL)[:2]).abs().max() <= 1e-4
    assert (out[2:4] - eager(runner.model, x, SYN)[2:4]).abs().max() <= 1e-4
    assert (out[4:] - eager(runner.model, x, blocks)[4:]).abs().max() <= 1e-4
    assert {c for c, *_ in runner._sessions} == {None}


def test_lora_form_exports_one_graph_per_weight_set(tmp_path):
    from tests.fixtures.models import tiny_model

    model = tiny_model(seed=2, form="lora")
    lora = OnnxRunner(model, cache_dir=tmp_path, num_views=2)
    x = unet_inputs(4, 2, seed=3)
    out = lora(x, [REAL, REAL, SYN, SYN])
    assert (out[:2] - eager(model, x, REAL)[:2]).abs().max() <= 1e-4
    assert (out[2:] - eager(model, x, SYN)[2:]).abs().max() <= 1e-4
    assert {c for c, *_ in lora._sessions} == {REAL, SYN}
    assert "domain_ids" not in input_names(model)


def test_exported_graph_passes_checker_uses_only_tensorrt_ops_and_has_a_profiled_batch_axis(runner):
    entry = runner.graph(None, runner.default_shape())
    path = entry.file(GRAPH_FILE)
    onnx.checker.check_model(str(path), full_check=True)
    assert check_tensorrt_compatible(path) == []
    supported = tensorrt_op_list()
    assert "onnx-tensorrt" in supported.source and "docs/operators.md" in supported.source
    assert graph_ops(path) <= supported.ops
    model = onnx.load(str(path))
    names = [i.name for i in model.graph.input]
    assert names == ["sample", "timestep", "text", "cameras", "geometry", "domain_ids"]
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
    assert [e.hit for *_, e in again.entries] == [True]  # block-shift: one graph for both domains
    x = unet_inputs(4, 2)
    assert torch.equal(again(x, SYN), runner(x, SYN))


def test_a_corrupted_cached_graph_is_rebuilt_and_still_correct(tiny_model_dir, tmp_path):
    model = load_model(tiny_model_dir).eval()
    first = OnnxRunner(model, cache_dir=tmp_path, num_views=2)
    entry = first.graph(None, first.default_shape())
    path = entry.file(GRAPH_FILE)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a half-written file
    second = OnnxRunner(load_model(tiny_model_dir).eval(), cache_dir=tmp_path, num_views=2)
    rebuilt = second.graph(None, second.default_shape())
    assert not rebuilt.hit
    x = unet_inputs(4, 2)
    assert (second(x, REAL) - eager(model, x, REAL)).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def pipes(tiny_model_dir, cache_dir):
    return (
        Realiz3DPipeline.load(tiny_model_dir, device="cpu"),
        Realiz3DPipeline.load(tiny_model_dir, backend="onnx", device="cpu", engine_cache_dir=cache_dir),
    )


SCHEDULES = ["real", "synthetic", "0.4", "0.4,blocks=6"]


def test_one_onnx_graph_serves_every_schedule_and_a_batched_mix(tiny_model_dir, tmp_path):
    import concurrent.futures as cf

    from engines.types import DomainSchedule

    eager_pipe = Realiz3DPipeline.load(tiny_model_dir, device="cpu")
    onnx_pipe = Realiz3DPipeline.load(tiny_model_dir, backend="onnx", device="cpu", engine_cache_dir=tmp_path)

    def request(s: str) -> MultiviewRequest:
        # guidance 1: on an untrained model guidance 7.5 amplifies fp32 rounding ~10x per step
        return MultiviewRequest(
            prompt="a red cube",
            num_views=2,
            steps=5,
            seed=7,
            guidance_scale=1.0,
            schedule=DomainSchedule.parse(s),
        )

    def diff(a, b) -> int:
        return max(
            np.abs(x.astype(int) - y.astype(int)).max() for x, y in zip(a.images, b.images, strict=True)
        )

    alone = {}
    for s in SCHEDULES:
        a, b = eager_pipe.multiview(request(s)), onnx_pipe.multiview(request(s))
        assert diff(a, b) <= 2, s
        assert b.meta["backend"] == "onnx"
        alone[s] = a
    assert onnx_pipe.multiview(request("0.4")).meta["schedule_steps"] == ["sss", "sss", "rrr", "rrr", "rrr"]
    assert alone["0.4,blocks=6"].meta["schedule_steps"][2:] == ["rrr-b6"] * 3
    # the four schedules in one batch: jobs at different schedule positions share every UNet call
    onnx_pipe.enable_batching(max_jobs=4, max_wait_ms=500)
    jobs_per_call: list[int] = []
    onnx_pipe.on_unet_call = lambda images, jobs, seconds: jobs_per_call.append(jobs)
    with cf.ThreadPoolExecutor(4) as pool:
        mixed = dict(
            zip(SCHEDULES, pool.map(lambda s: onnx_pipe.multiview(request(s)), SCHEDULES), strict=True)
        )
    onnx_pipe.batcher.close()
    assert max(jobs_per_call) == 4  # one call held all four schedules
    for s in SCHEDULES:
        assert diff(mixed[s], alone[s]) <= 2, s
    # one graph per shape, whatever the schedule (the pipeline also prepared its default 4-view shape)
    graphs = [p.parent.name for p in tmp_path.rglob("unet.onnx")]
    assert len([g for g in graphs if "-v2-" in g]) == 1, graphs
    assert all(g.startswith("domains-") for g in graphs), graphs


def test_build_engines_cli_builds_then_hits(tiny_model_dir, tmp_path, capsys):
    args = ["build-engines", "--model", str(tiny_model_dir), "--backend", "onnx", "--num-views", "2"]
    args += ["--schedule", "0.5", "--engine-cache", str(tmp_path), "--device", "cpu"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.count("built in") == 1 and "1 entries (1 built, 0 cache hits)" in first
    assert main(args) == 0
    second = capsys.readouterr().out
    assert "1 entries (0 built, 1 cache hits)" in second
    assert "onnx domains views=2" in second


def test_build_engines_envelope_builds_every_declared_shape(tiny_model_dir, tmp_path, capsys):
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "realiz3d.json").read_text())
    config["serving"] = {"resolutions": [32, 48], "views": [1, 2]}
    (folder / "realiz3d.json").write_text(json.dumps(config))
    args = ["build-engines", "--model", str(folder), "--backend", "onnx", "--envelope"]
    args += ["--engine-cache", str(tmp_path / "cache"), "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 shapes in the serving envelope x 1 weight set(s)" in out
    assert "4 entries (4 built, 0 cache hits)" in out
    for views, size in ((1, 32), (2, 32), (1, 48), (2, 48)):
        assert f"views={views} {size}x{size} full:" in out, (views, size)


def test_a_latent_unet_loaded_without_its_vae_exports(tmp_path):
    """A latent-space UNet with no VAE (what `realiz3d bench unet --shape sd` times: a seeded SD-shaped
    UNet) exports with its declared latent channels; it once failed reading the missing VAE's config after
    the benchmark's 15-minute shifter measurement."""
    from engines.models.config import ModelConfig, TextEncoderConfig
    from engines.models.default_model import build_model
    from engines.models.unet import default_unet_config

    config = ModelConfig(
        name="tiny-latent",
        resolution=128,
        latent_space="vae",
        vae_scale_factor=8,
        image_channels=4,
        patch_size=1,
        geometry_channels=0,
        text_encoder=TextEncoderConfig(vocab_buckets=256, dim=32, max_tokens=8, heads=2),
    )
    unet_config = default_unet_config(config, cross_attention_dim=32)
    unet_config.update(block_out_channels=(16, 32, 32), attention_head_dim=8)
    model = build_model(config, seed=0, unet_config=unet_config).eval()
    assert model.vae is None and model.sample_channels == 4
    runner = OnnxRunner(model, cache_dir=tmp_path, num_views=1)
    runner.prepare([REAL])
    (graph,) = tmp_path.rglob(GRAPH_FILE)
    sample = next(i for i in onnx.load(str(graph)).graph.input if i.name == "sample")
    assert sample.type.tensor_type.shape.dim[1].dim_value == 4
