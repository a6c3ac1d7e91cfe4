"""Step caching on the graph backends: two ONNX graphs per shape (the full one also outputs the deep
feature, the shallow one takes it as an input), parity with eager torch's steps, the graphs TensorRT
builds its engines from, the engine cache and `realiz3d build-engines` / `engines list` / `engines prune`
with both kinds, and a shallow graph built in the background while other jobs step."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
import torch

from engines.models.model_folder import load_model
from engines.pipelines import Realiz3DPipeline
from engines.runtime.onnx_export import BATCH_AXIS, DEEP, OUTPUT, check_tensorrt_compatible, declared_inputs
from engines.runtime.onnx_runner import GRAPH_FILE, OnnxRunner
from engines.runtime.torch_runner import TorchRunner
from engines.types import DomainCombo, UNetInputs, uniform_combo
from service.cli import main
from tests.test_engine_batching import req, slowed_builds
from tests.test_runtime_onnx import unet_inputs

REAL, SYN = uniform_combo("real"), uniform_combo("synthetic")
BLOCKS = DomainCombo("real", "real", "real", 6)
#: what the ONNX-vs-torch tests allow (tests/test_runtime_onnx.py)
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def runners(tiny_model_dir, tmp_path_factory):
    # One model for both: a full ONNX step starts the shallow graph's export in the background while the
    # eager reference keeps running the same model, which an export leaves alone (it traces a private
    # copy: tests/test_export_from_copy.py). Before it did, this read a shallow step 0.64 off in one CI run.
    model = load_model(tiny_model_dir).eval()
    eager = TorchRunner(model)
    eager.prepare([])
    return OnnxRunner(model, cache_dir=tmp_path_factory.mktemp("engine-cache"), num_views=2), eager


def dims(value) -> list:  # noqa: ANN001 - an onnx ValueInfoProto
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_full_and_shallow_onnx_steps_match_eager_torch_under_every_schedule(runners):
    onnx_runner, eager = runners
    assert onnx_runner.step_cache
    x = unet_inputs(4, 2, geometry=True)
    later = UNetInputs(x.sample * 0.9, torch.full((4,), 300), x.text, x.cameras, x.geometry, 2)
    for domains in (REAL, SYN, BLOCKS, [REAL, REAL, BLOCKS, BLOCKS]):
        want, want_deep = eager.run_step(x, domains)
        got, got_deep = onnx_runner.run_step(x, domains)
        assert (got - want).abs().max().item() <= TOLERANCE
        assert (got_deep - want_deep).abs().max().item() <= TOLERANCE
        # a shallow step at a later timestep, on the cached feature: the same one for both backends
        want_shallow, _ = eager.run_step(later, domains, want_deep)
        got_shallow, kept = onnx_runner.run_step(later, domains, want_deep)
        assert (got_shallow - want_shallow).abs().max().item() <= TOLERANCE
        assert kept is want_deep
        # a plain call runs the full graph and drops its deep output
        assert (onnx_runner(x, domains) - eager(x, domains)).abs().max().item() <= TOLERANCE
    assert sorted(kind for *_, kind in onnx_runner._sessions) == ["full", "shallow"]  # two graphs


def test_a_full_step_starts_the_shallow_graphs_build_in_the_background(tiny_model_dir, tmp_path):
    runner = OnnxRunner(load_model(tiny_model_dir).eval(), cache_dir=tmp_path, num_views=2)
    x = unet_inputs(4, 2)
    shape = runner.default_shape()
    runner(x, REAL)  # a plain call: the full graph only
    assert runner.builds.building() == 0 and [k for *_, k in runner._sessions] == ["full"]
    runner.run_step(x, REAL)  # a caching job's full step: its shallow steps come next
    deadline = time.monotonic() + 60
    while (None, shape, "shallow") not in runner._sessions:  # built with nobody asking for it yet
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert runner.ready_for(2, 32, 32, [REAL], step_kind="shallow")  # so ready at once when asked
    assert [e.hit for *_, k, e in runner.entries if k == "shallow"] == [False]  # built once


def test_the_two_graphs_are_what_tensorrt_builds_its_engines_from(runners):
    onnx_runner, _ = runners
    shape = onnx_runner.default_shape()
    full = onnx.load(str(onnx_runner.graph(None, shape, "full").file(GRAPH_FILE)))
    shallow_path = onnx_runner.graph(None, shape, "shallow").file(GRAPH_FILE)
    shallow = onnx.load(str(shallow_path))
    assert [o.name for o in full.graph.output] == [OUTPUT, DEEP]
    assert [o.name for o in shallow.graph.output] == [OUTPUT]
    deep_out = next(o for o in full.graph.output if o.name == DEEP)
    deep_in = next(i for i in shallow.graph.input if i.name == DEEP)
    # the full engine's deep output binds straight to the shallow engine's input: batch x 16 x 16 x 16
    assert dims(deep_out) == dims(deep_in) == [BATCH_AXIS, 16, 16, 16]
    assert deep_in.type.tensor_type.elem_type == deep_out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # the tiny model's last up block has no attention: the shallow graph does not read the text
    assert declared_inputs(shallow_path) == ["sample", "timestep", "cameras", "geometry", "domain_ids", DEEP]
    for path in (onnx_runner.graph(None, shape, "full").file(GRAPH_FILE), shallow_path):
        assert check_tensorrt_compatible(path) == []  # every dim static or the profiled batch axis
    # the shallow graph holds only the shallow branch's weights
    weights = {len(g.graph.initializer) for g in (full, shallow)}
    assert min(weights) < max(weights) / 3


def test_an_onnx_pipeline_caches_steps_like_the_eager_one(tiny_model_dir, tmp_path):
    eager = Realiz3DPipeline.load(tiny_model_dir, device="cpu")
    pipe = Realiz3DPipeline.load(tiny_model_dir, backend="onnx", engine_cache_dir=tmp_path, device="cpu")
    request = req(5, steps=5, cache_interval=3)
    a, b = eager.multiview(request), pipe.multiview(request)
    assert a.meta["cache_interval"] == b.meta["cache_interval"] == 3
    diff = max(np.abs(x.astype(int) - y.astype(int)).max() for x, y in zip(a.images, b.images, strict=True))
    assert diff <= 2
    assert not np.array_equal(b.images[0], pipe.multiview(req(5, steps=5)).images[0])  # it did cache


def test_build_engines_builds_the_shallow_graph_for_a_cache_interval_and_list_and_prune_know_kinds(
    tiny_model_dir, tmp_path, capsys
):
    cache = tmp_path / "cache"
    args = ["build-engines", "--model", str(tiny_model_dir), "--num-views", "2", "--device", "cpu"]
    args += ["--engine-cache", str(cache)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "views=2 32x32 full: built" in out and "shallow" not in out
    assert main([*args, "--cache-interval", "3"]) == 0
    out = capsys.readouterr().out
    assert "views=2 32x32 full: hit" in out and "views=2 32x32 shallow: built" in out
    assert "2 entries (1 built, 1 cache hits)" in out
    assert main([*args, "--cache-interval", "0"]) == 2
    assert "--cache-interval must be at least 1" in capsys.readouterr().err

    assert main(["engines", "list", "--engine-cache", str(cache)]) == 0
    header, *rows, total = capsys.readouterr().out.strip().splitlines()
    assert header.split()[3:5] == ["SHAPE", "KIND"]
    kinds = {r.split()[1].split("-")[3]: r.split()[5] for r in rows}  # the entry name holds it too
    assert kinds == {"full": "full", "shallow": "shallow"}, rows
    # prune: the shallow graph unused for a week goes, the full graph stays
    (shallow,) = cache.glob("onnx/domains-v2-32x32-shallow-*")
    week = time.time() - 8 * 86400
    os.utime(shallow, (week, week))
    assert main(["engines", "prune", "--older-than", "7d", "--engine-cache", str(cache)]) == 0
    assert "removed onnx/domains-v2-32x32-shallow-" in capsys.readouterr().out
    assert [p.name.split("-")[3] for p in cache.glob("onnx/domains-*")] == ["full"]


def test_a_shallow_graph_builds_in_the_background_while_other_jobs_step(tiny_model_dir, tmp_path):
    pipe = Realiz3DPipeline.load(tiny_model_dir, backend="onnx", engine_cache_dir=tmp_path)
    runner: OnnxRunner = pipe.runner
    runner.session(None, runner.default_shape(2))  # the full graph is there; the shallow one is not
    building = slowed_builds(runner, lambda shape, step_kind: step_kind == "shallow")
    pipe.enable_batching(max_jobs=4, max_wait_ms=0)
    whole_steps: list[float] = []
    cached_steps: list[float] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            whole = pool.submit(
                pipe.multiview, req(1, steps=150), progress=lambda s, t: whole_steps.append(time.monotonic())
            )
            while len(whole_steps) < 3:
                time.sleep(0.01)
            cached = pool.submit(
                pipe.multiview,
                req(2, steps=4, cache_interval=3),
                progress=lambda s, t: cached_steps.append(time.monotonic()),
            )
            assert building.wait(30)
            started = time.monotonic()
            assert cached.result(timeout=120).meta["cache_interval"] == 3
            assert len(cached_steps) == 4
            during = [t for t in whole_steps if started < t < cached_steps[1]]
            # its first (full) step ran, then the batcher kept stepping the other job during the build
            assert len(during) >= 3, len(during)
            whole.result(timeout=300)
    finally:
        pipe.batcher.close()
    assert {kind for *_, kind in runner._sessions} == {"full", "shallow"}


def test_the_fp16_graphs_a_strongly_typed_tensorrt_network_parses_pass_the_feature_in_fp16(tmp_path):
    from engines.runtime.onnx_export import GraphShape, export_unet
    from tests.fixtures.models import tiny_model

    model = tiny_model(seed=2)
    f16 = onnx.TensorProto.FLOAT16
    types = {}
    for kind in ("full", "shallow"):
        path = export_unet(
            model, None, GraphShape(2, 32, 32), tmp_path / f"{kind}.onnx", dtype=torch.float16, step_kind=kind
        )
        assert check_tensorrt_compatible(path) == []
        graph = onnx.load(str(path)).graph
        types[kind] = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]}
    assert types["full"][DEEP] == types["shallow"][DEEP] == f16
    assert types["full"][OUTPUT] == types["shallow"][OUTPUT] == f16
    assert next(model.unet.parameters()).dtype == torch.float32  # the torch model is left as it was


def test_the_committed_step_cache_report_is_its_json_onnx_runtime_section_included(tmp_path):
    import json
    from pathlib import Path

    from engines.bench.step_cache import write_report

    docs = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
    result = json.loads((docs / "step_cache.json").read_text())
    assert [r["cache_interval"] for r in result["onnx"]["rows"]] == [1, 3]
    assert result["onnx"]["backend"] == "onnx"
    write_report(result, tmp_path)
    assert (tmp_path / "step_cache.md").read_text() == (docs / "step_cache.md").read_text()


def test_build_engines_refuses_a_cache_interval_for_a_model_without_step_caching(tmp_path, capsys):
    from engines.models.model_folder import save_model
    from tests.fixtures.models import tiny_model

    folder = save_model(tiny_model(seed=4, form="lora"), tmp_path / "lora")
    args = ["build-engines", "--model", str(folder), "--cache-interval", "3", "--device", "cpu"]
    assert main([*args, "--engine-cache", str(tmp_path / "cache")]) == 2
    assert "does not serve step caching" in capsys.readouterr().err
    assert not list((tmp_path / "cache").glob("onnx/*-shallow-*"))
