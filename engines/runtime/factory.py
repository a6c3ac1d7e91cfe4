"""Pick a UNet runner by backend name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.errors import BackendUnavailable, UserInputError
from engines.models.realiz3d_model import Realiz3DModel
from engines.runtime.backend_names import BACKENDS
from engines.runtime.base import UNetRunner


def make_runner(
    model: Realiz3DModel,
    backend: str = "torch",
    adapters: str = "fused",
    precision: str = "fp32",
    engine_cache_dir: str | Path | None = None,
    max_objects: int = 4,
    engine_memory_budget_bytes: int | None = None,
    **_: Any,
) -> UNetRunner:
    """`max_objects`: TensorRT's profile holds this many objects (x views x CFG) per call; a worker
    passes its `batch_max_jobs` so one step of all its jobs fits one engine call."""
    if backend not in BACKENDS:
        raise UserInputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if adapters not in ("fused", "unfused"):
        raise UserInputError(f"adapters must be fused or unfused, got {adapters!r}")
    if backend == "torch":
        from engines.runtime.torch_runner import TorchRunner

        return TorchRunner(model, adapters=adapters)  # type: ignore[arg-type]
    if adapters == "unfused":
        raise UserInputError(f"backend {backend} runs fused weight sets only; use --adapters fused")
    if backend == "compile":
        from engines.runtime.compile_runner import CompileRunner

        return CompileRunner(model, precision=precision)
    if backend == "onnx":
        from engines.runtime.onnx_runner import OnnxRunner

        return OnnxRunner(model, cache_dir=engine_cache_dir, precision=precision)
    if backend == "torch-tensorrt":
        from engines.runtime.torch_tensorrt_runner import TorchTensorRTRunner

        return TorchTensorRTRunner(
            model,
            precision=precision,
            max_objects=max_objects,
            memory_budget_bytes=engine_memory_budget_bytes,
        )
    from engines.runtime.tensorrt_runner import TensorRTRunner, tensorrt_available

    if not tensorrt_available():
        raise BackendUnavailable(
            "backend tensorrt needs NVIDIA TensorRT and a CUDA GPU; neither is available here"
        )
    return TensorRTRunner(
        model,
        cache_dir=engine_cache_dir,
        precision=precision,
        max_objects=max_objects,
        memory_budget_bytes=engine_memory_budget_bytes,
    )
