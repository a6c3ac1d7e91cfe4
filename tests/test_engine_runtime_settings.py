"""Settings reach the runtime: `cuda_graphs`, one precision default per backend, `default_scheduler`.

TensorRT cannot run here (no GPU, no TensorRT): its runner is replaced by a recorder at the factory's
import point, which proves what the worker's settings hand to it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from engines.errors import UserInputError
from engines.runtime.backend_names import BACKENDS, DEFAULT_PRECISION, default_precision
from engines.runtime.factory import make_runner
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


class RecordingTensorRTRunner:
    """Stands in for `TensorRTRunner`: records the keyword arguments it was built with."""

    last: dict = {}

    def __init__(self, model, **kwargs) -> None:  # noqa: ANN001, ANN003
        RecordingTensorRTRunner.last = kwargs
        self.model = model
        self.device = model.device
        self.dtype = model.dtype
        self.mixes_domains = True


@pytest.fixture
def fake_tensorrt(monkeypatch):
    import engines.runtime.tensorrt_runner as trt_runner

    monkeypatch.setattr(trt_runner, "tensorrt_available", lambda: True)
    monkeypatch.setattr(trt_runner, "TensorRTRunner", RecordingTensorRTRunner)
    RecordingTensorRTRunner.last = {}
    return RecordingTensorRTRunner


@pytest.fixture(scope="module")
def model():
    from tests.fixtures.models import tiny_model

    return tiny_model().eval()


def test_worker_settings_reach_the_tensorrt_runner(monkeypatch, fake_tensorrt, model):
    """REALIZ3D_CUDA_GRAPHS / _PRECISION / _ENGINE_CACHE_DIR, through the worker's pipeline load, arrive
    in the runner's constructor; unset precision is the backend's default (fp16)."""
    from engines.pipelines import Realiz3DPipeline
    from service import worker

    loads = []

    def load(model_dir, **kwargs):  # noqa: ANN001, ANN003 - Realiz3DPipeline.load's signature
        loads.append(kwargs)
        return Realiz3DPipeline(
            model, **{k: kwargs[k] for k in ("backend", "adapters")}, **_runner_kw(kwargs)
        )

    monkeypatch.setattr(Realiz3DPipeline, "load", staticmethod(load))
    for env, expect in [
        ({}, {"cuda_graphs": False, "precision": "fp16"}),
        ({"REALIZ3D_CUDA_GRAPHS": "true"}, {"cuda_graphs": True, "precision": "fp16"}),
        (
            {"REALIZ3D_CUDA_GRAPHS": "false", "REALIZ3D_PRECISION": "bf16"},
            {"cuda_graphs": False, "precision": "bf16"},
        ),
    ]:
        for k in ("REALIZ3D_CUDA_GRAPHS", "REALIZ3D_PRECISION"):
            monkeypatch.delenv(k, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("REALIZ3D_ENGINE_CACHE_DIR", "/srv/engines")
        worker._build_pipeline(Settings(backend="tensorrt"))
        got = fake_tensorrt.last
        assert {k: got[k] for k in expect} == expect, env
        assert Path(got["cache_dir"]) == Path("/srv/engines")
        assert loads[-1]["cuda_graphs"] == (
            None if "REALIZ3D_CUDA_GRAPHS" not in env else env["REALIZ3D_CUDA_GRAPHS"] == "true"
        )


def _runner_kw(kwargs: dict) -> dict:
    keep = ("precision", "engine_cache_dir", "max_objects", "engine_memory_budget_bytes", "cuda_graphs")
    return {k: kwargs[k] for k in keep}


def test_cuda_graphs_for_compile_and_refused_where_there_are_none(model):
    runner = make_runner(model, backend="compile", cuda_graphs=False)
    assert runner.mode == "default" and not runner.cuda_graphs
    assert make_runner(model, backend="compile").mode is None  # the backend's default: CPU, no graphs
    with pytest.raises(UserInputError, match="CUDA device"):
        make_runner(model, backend="compile", cuda_graphs=True)  # on the CPU
    for backend in ("torch", "onnx", "torch-tensorrt"):
        with pytest.raises(UserInputError, match="no CUDA graph mode"):
            make_runner(model, backend=backend, cuda_graphs=True)


def test_one_precision_default_per_backend_used_by_settings_cli_and_runners(
    fake_tensorrt, model, monkeypatch
):
    monkeypatch.delenv("REALIZ3D_PRECISION", raising=False)
    assert set(DEFAULT_PRECISION) == set(BACKENDS)
    for backend in BACKENDS:
        assert Settings(backend=backend).precision == default_precision(backend)
    assert default_precision("tensorrt") == "fp16" and default_precision("onnx") == "fp32"
    make_runner(model, backend="tensorrt")
    assert fake_tensorrt.last["precision"] == "fp16"
    # the CLI: no flag = the backend's default (build-engines as the worker would run)
    from service.cli import build_parser
    from service.commands.runtime import worker_precision

    parser = build_parser()
    assert parser.parse_args(["generate", "x", "--backend", "tensorrt"]).precision is None
    assert parser.parse_args(["build-engines", "--backend", "tensorrt"]).precision is None
    assert worker_precision("tensorrt") == "fp16" and worker_precision("onnx") == "fp32"
    monkeypatch.setenv("REALIZ3D_PRECISION", "bf16")
    assert worker_precision("tensorrt") == "bf16"


def test_images_chart_and_compose_state_no_precision_of_their_own():
    """The default is stated once (backend_names): no deployment file pins REALIZ3D_PRECISION, so a
    GPU worker on tensorrt runs fp16 and a CPU one on torch fp32, whatever image or chart starts it."""
    from tests.test_deploy_consistency import compose_env

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "REALIZ3D_PRECISION" not in dockerfile
    for values in (ROOT / "helm/realiz3d/values.yaml", ROOT / "helm/realiz3d/ci/gpu-values.yaml"):
        assert "precision" not in (yaml.safe_load(values.read_text()).get("settings") or {}), values
    for service in ("worker", "worker-cpu"):
        assert "REALIZ3D_PRECISION" not in compose_env(service)
    assert re.search(r"REALIZ3D_BACKEND=tensorrt", dockerfile)  # -> fp16 by the table


def test_the_models_default_scheduler_is_used_when_a_request_names_none(model):
    from engines.pipelines import Realiz3DPipeline
    from engines.requests import MultiviewRequest

    pipe = Realiz3DPipeline(model, backend="torch")
    req = {"prompt": "a red cube", "num_views": 2, "steps": 3, "seed": 5, "guidance_scale": 1.0}
    ddim = pipe.multiview(MultiviewRequest(**req, scheduler="ddim"))
    dpm = pipe.multiview(MultiviewRequest(**req, scheduler="dpm++"))
    assert not np.array_equal(ddim.images[0], dpm.images[0])
    for default, same_as in (("ddim", ddim), ("dpm++", dpm)):
        model.config.default_scheduler = default
        out = pipe.multiview(MultiviewRequest(**req))
        assert out.meta["scheduler"] == default
        assert all(np.array_equal(a, b) for a, b in zip(out.images, same_as.images, strict=True)), default
    model.config.default_scheduler = "ddim"


def test_serve_and_worker_take_engine_cache_and_the_chart_and_compose_mount_it_where_the_rule_looks(
    tmp_path, monkeypatch
):
    from engines.runtime.engine_cache import EngineCache
    from service.cli import build_parser
    from service.commands.serving import SERVE_FLAGS, _settings
    from tests.test_deploy_consistency import VALUE_SETS, chart_env, compose, compose_env, workload

    parser = build_parser()
    s = _settings(parser.parse_args(["serve", "--engine-cache", str(tmp_path)]), SERVE_FLAGS)
    assert EngineCache(s.engine_cache_dir).root == tmp_path
    args = parser.parse_args(["worker", "--engine-cache", str(tmp_path)])
    assert args.engine_cache == tmp_path
    # deployments: the worker's env names the volume's mount point, which the rule takes first
    monkeypatch.delenv("REALIZ3D_ENGINE_CACHE_DIR", raising=False)
    for values_name in VALUE_SETS:
        env = chart_env(values_name, "worker")
        (c,) = workload(values_name, "worker")["spec"]["template"]["spec"]["containers"]
        mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "engine-cache")
        settings = Settings(engine_cache_dir=env["REALIZ3D_ENGINE_CACHE_DIR"])
        assert EngineCache(settings.engine_cache_dir).root == Path(mount)
    for service in ("worker", "worker-cpu"):
        path = compose_env(service)["REALIZ3D_ENGINE_CACHE_DIR"]
        assert f"engine-cache:{path}" in compose()["services"][service]["volumes"]
        assert EngineCache(Settings(engine_cache_dir=path).engine_cache_dir).root == Path(path)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count("REALIZ3D_ENGINE_CACHE_DIR=/var/cache/realiz3d/engines") == 2


def test_tensorrt_timing_caches_name_their_version_for_prune(tmp_path):
    from engines.runtime import cache_admin
    from engines.runtime.tensorrt_runner import timing_cache_path

    fingerprint = {"base_weights": "a", "unet_config": "b"}
    path = timing_cache_path(tmp_path, fingerprint, "10.16.1.11", "cuda:NVIDIA H100:sm90")
    assert path == timing_cache_path(
        tmp_path, dict(reversed(fingerprint.items())), "10.16.1.11", "cuda:NVIDIA H100:sm90"
    )
    path.parent.mkdir(parents=True)
    path.write_bytes(b"tactics")
    (item,) = cache_admin.scan(tmp_path, versions={"tensorrt": "10.16.1.11"})
    assert item.kind == "timing-cache" and item.versions == {"tensorrt": "10.16.1.11"} and item.stale is None
    (item,) = cache_admin.scan(tmp_path, versions={"tensorrt": "11.4.0.106"})
    assert item.stale == "TensorRT 10.16.1.11 (now 11.4.0.106)"
