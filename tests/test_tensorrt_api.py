"""The TensorRT runner against the real TensorRT Python API of every version we may ship, on the CPU.

`tensorrt-cu12-bindings` (the extension module, ~1.3 MB) downloads from PyPI; its libraries package does
not, so the module cannot be imported here. Its binary still holds every name it binds (pybind11 keeps
them as C strings, the linker may merge a name into the tail of a longer one) and every docstring. The
check: each TensorRT name `tensorrt_runner.py` uses unguarded is bound by every version, each name it
guards with hasattr/getattr is bound by at least one, and the weak-typing flags are gone in 11.
Skipped when PyPI cannot be reached. Wheels are cached under ~/.cache/realiz3d/tensorrt-bindings.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import zipfile
from functools import cache
from pathlib import Path

import pytest
import torch

from engines.runtime import tensorrt_runner

ROOT = Path(__file__).resolve().parents[1]
#: objects of TensorRT's API in tensorrt_runner.py (locals, and self./eng. attributes holding them)
TRT_OBJECTS = {"trt", "builder", "network", "parser", "config", "profile", "tensor", "ctx", "e", "timing"}
TRT_ATTRIBUTES = {"trt", "engine", "context", "runtime", "logger"}


def dockerfile_pin() -> str:
    return re.search(r"ARG TENSORRT_VERSION=(\S+)", (ROOT / "Dockerfile").read_text()).group(1)


def test_the_dockerfile_pins_a_supported_tensorrt():
    assert dockerfile_pin() in tensorrt_runner.SUPPORTED_TENSORRT


@cache
def bound_names(version: str) -> tuple[str, ...]:
    """Every C string of `tensorrt.so` in the bindings wheel of `version` (downloaded once)."""
    folder = (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "realiz3d" / "tensorrt-bindings"
    )
    folder.mkdir(parents=True, exist_ok=True)
    wheels = sorted(folder.glob(f"tensorrt_cu12_bindings-{version}-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        cmd += ["--python-version", "3.12", "--platform", "manylinux_2_28_x86_64", "-d", str(folder)]
        try:
            subprocess.run(
                [*cmd, f"tensorrt-cu12-bindings=={version}"], check=True, timeout=180, capture_output=True
            )
        except (subprocess.SubprocessError, OSError) as e:
            pytest.skip(f"tensorrt-cu12-bindings {version} could not be downloaded ({type(e).__name__})")
        wheels = sorted(folder.glob(f"tensorrt_cu12_bindings-{version}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        (so,) = [n for n in z.namelist() if n.endswith("/tensorrt.so")]
        data = z.read(so)
    return tuple(s.decode("latin-1") for s in re.findall(rb"[\x20-\x7e]{3,}", data))


def binds(version: str, name: str) -> bool:
    return any(s.endswith(name) for s in bound_names(version))


def runner_names() -> tuple[set[str], set[str]]:
    """(names used unguarded, names guarded by hasattr/getattr) of TensorRT objects in the runner."""
    tree = ast.parse(Path(tensorrt_runner.__file__).read_text())
    used, guarded = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and not node.attr.startswith("__"):
            base = node.value
            if (isinstance(base, ast.Name) and base.id in TRT_OBJECTS) or (
                isinstance(base, ast.Attribute) and base.attr in TRT_ATTRIBUTES
            ):
                used.add(node.attr)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("hasattr", "getattr"):
            arg = node.args[1]
            if isinstance(arg, ast.Constant):
                guarded.add(arg.value)
    guarded |= set(tensorrt_runner.WEAK_FLAGS.values())
    # attributes of our own wrapper and of torch objects that share a local name with a TensorRT one
    ours = {"names", "inputs", "dtypes", "graphs", "label", "device_memory_bytes", "shape", "name"}
    return used - guarded - ours, guarded


@pytest.mark.parametrize("version", tensorrt_runner.SUPPORTED_TENSORRT)
def test_every_name_the_runner_uses_is_bound_by_the_real_tensorrt(version):
    used, guarded = runner_names()
    assert {"execute_async_v3", "set_tensor_address", "create_timing_cache", "set_timing_cache"} <= used
    assert {"STRONGLY_TYPED", "FP16", "BF16"} <= guarded
    missing = sorted(n for n in used if not binds(version, n))
    assert not missing, f"TensorRT {version} binds no {missing}: guard them or stop using them"
    assert "Refitter" not in used | guarded  # no refit claim: engines are not refittable


def test_guarded_names_exist_somewhere_and_weak_typing_is_gone_in_11():
    _, guarded = runner_names()
    for name in guarded:
        assert any(binds(v, name) for v in tensorrt_runner.SUPPORTED_TENSORRT), name
    v10, v11 = (
        next(v for v in tensorrt_runner.SUPPORTED_TENSORRT if v.startswith(m)) for m in ("10.", "11.")
    )
    # BuilderFlag.FP16 / BF16 and their docstrings: in 10, not in 11 (the runner builds typed networks)
    for doc in ("Enable FP16 layer selection.", "Enable BF16 layer selection."):
        assert doc in bound_names(v10) and doc not in bound_names(v11)
    assert any("Strongly typed mode is always enabled" in s for s in bound_names(v11))


def test_strongly_typed_export_keeps_norms_in_fp32(tmp_path):
    import onnx

    from engines.runtime.onnx_export import GraphShape, export_unet
    from tests.fixtures.models import tiny_model

    model = tiny_model(seed=2)
    path = export_unet(model, None, GraphShape(2, 32, 32), tmp_path / "unet.onnx", dtype=torch.float16)
    assert next(model.unet.parameters()).dtype == torch.float32  # the torch model is left as it was
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    assert (
        types["sample"] == f16
        and types["noise_pred"] == f16
        and types["domain_ids"] == onnx.TensorProto.INT64
    )
    norms = [
        n
        for n in graph.node
        if n.op_type in ("InstanceNormalization", "LayerNormalization", "GroupNormalization")
    ]
    assert norms and all(types.get(n.input[0]) == f32 for n in norms)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(types.get(n.input[1]) == f16 for n in convs)  # the weights are half precision
