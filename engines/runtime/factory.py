"""Pick a UNet runner by backend name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.errors import BackendUnavailable, UserInputError
from engines.models.realiz3d_model import Realiz3DModel
from engines.runtime.backend_names import BACKENDS, default_precision
from engines.runtime.base import UNetRunner


def make_runner(
    model: Realiz3DModel,
    backend: str = "torch",
    adapters: str = "fused",
    precision: str | None = None,
    engine_cache_dir: str | Path | None = None,
    max_objects: int = 4,
    engine_memory_budget_bytes: int | None = None,
    cuda_graphs: bool | None = None,
    **_: Any,
) -> UNetRunner:
    """`precision`: None = the backend's default (`backend_names.DEFAULT_PRECISION`).
    `engine_cache_dir`: None = `engine_cache.cache_root()`'s rule.
    `max_objects`: TensorRT's profile holds this many objects (x views x CFG) per call; a worker
    passes its `batch_max_jobs` so one step of all its jobs fits one engine call.
    `cuda_graphs`: None = the backend's default (compile on CUDA: on; tensorrt: off); True/False forces
    it where the backend has CUDA graphs (compile, tensorrt), and True elsewhere is refused."""
    if backend not in BACKENDS:
        raise UserInputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if adapters not in ("fused", "unfused"):
        raise UserInputError(f"adapters must be fused or unfused, got {adapters!r}")
    precision = precision or default_precision(backend)
    if cuda_graphs and backend not in ("compile", "tensorrt"):
        raise UserInputError(
            f"cuda_graphs: backend {backend} has no CUDA graph mode (compile and tensorrt do)"
        )
    if backend == "torch":
        from engines.runtime.torch_runner import TorchRunner

        return TorchRunner(model, adapters=adapters)  # type: ignore[arg-type]
    if adapters == "unfused":
        raise UserInputError(f"backend {backend} runs fused weight sets only; use --adapters fused")
    if backend == "compile":
        from engines.runtime.compile_runner import CompileRunner

        if cuda_graphs and model.device.type != "cuda":
            raise UserInputError("cuda_graphs needs a CUDA device")
        mode = None if cuda_graphs is None else ("reduce-overhead" if cuda_graphs else "default")
        return CompileRunner(model, precision=precision, mode=mode)
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
        cuda_graphs=bool(cuda_graphs),
        memory_budget_bytes=engine_memory_budget_bytes,
    )
