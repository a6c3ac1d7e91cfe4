"""ONNX Runtime runner: one exported graph + one InferenceSession per weight set and shape.

Block-shift (the default form) has one weight set: the per-sample domain ids are a graph input, so one
graph per (num_views, image size) serves every schedule and mixed batches. The lora form has one weight
set per domain combo; its step-split schedule switches sessions mid-run (a dict lookup). Graphs live in
the engine cache (see `engine_cache.py`) and are loaded from it by every later process; nothing is
re-exported or rebuilt. CPU execution provider here; the CUDA EP
where onnxruntime-gpu and a GPU are present (inputs/outputs bound to torch's CUDA tensors, on torch's
current stream, no host copies). fp32 only: ONNX Runtime's CPU EP has no fast bf16/fp16 kernels; fp16 on
a GPU is what the `tensorrt` backend is for.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.errors import BackendUnavailable, UserInputError
from engines.models.realiz3d_model import Realiz3DModel
from engines.runtime.background_builds import BackgroundBuilds
from engines.runtime.base import graph_inputs, run_domains
from engines.runtime.engine_cache import (
    CacheEntry,
    EngineCache,
    device_name,
    library_versions,
    model_fingerprint,
)
from engines.runtime.onnx_export import OPSET, GraphShape, export_unet, input_names
from engines.types import DomainCombo, UNetInputs

log = logging.getLogger(__name__)
GRAPH_FILE = "unet.onnx"


def weight_set_label(combo: DomainCombo | None) -> str:
    """`ssr`, `rrr-b6` for a lora weight set; `domains` for block-shift's one set (domains are inputs)."""
    return "domains" if combo is None else combo.label()


class OnnxRunner:
    backend = "onnx"

    def __init__(
        self,
        model: Realiz3DModel,
        cache_dir: str | Path | None = None,
        precision: str = "fp32",
        num_views: int | None = None,
        threads: int | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - onnxruntime is a core dependency
            raise BackendUnavailable("backend onnx needs the onnxruntime package") from None
        if precision != "fp32":
            raise UserInputError(
                f"backend onnx runs fp32 only (got {precision}); use torch/compile for bf16, tensorrt for fp16"
            )
        self.ort = ort
        self.model = model
        self.mixes_domains = model.shifter.mixes_domains(True)
        self.device = model.device
        self.dtype = torch.float32
        self.precision = precision
        self.cache = EngineCache(cache_dir)
        self.default_views = num_views or model.config.num_views
        self.threads = threads or torch.get_num_threads()
        self.use_cuda = (
            self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        )
        if self.device.type == "cuda" and not self.use_cuda:
            raise BackendUnavailable("backend onnx on a GPU needs onnxruntime-gpu (CUDAExecutionProvider)")
        self.fingerprint = model_fingerprint(model)
        self.names = input_names(model)
        self._sessions: dict[tuple[DomainCombo | None, GraphShape], Any] = {}
        #: cache entries this runner used, with hit/built: what `realiz3d build-engines` reports
        self.entries: list[tuple[DomainCombo, GraphShape, CacheEntry]] = []
        self.builds = BackgroundBuilds()

    # ---- graphs ------------------------------------------------------------------------------------
    def default_shape(self, num_views: int | None = None) -> GraphShape:
        cfg = self.model.config
        size = cfg.resolution // cfg.downsample_factor * cfg.patch_size
        return GraphShape(num_views or self.default_views, size, size)

    def key_parts(self, combo: DomainCombo | None, shape: GraphShape) -> dict[str, Any]:
        return graph_key_parts(self.fingerprint, combo, shape, self.device)

    def graph(self, combo: DomainCombo | None, shape: GraphShape) -> CacheEntry:
        """The cached ONNX graph for (combo, shape), exported now if missing, stale or corrupt."""
        entry = cached_graph(self.cache, self.model, self.key_parts(combo, shape), combo, shape)
        self.entries.append((combo, shape, entry))
        return entry

    def session(self, combo: DomainCombo | None, shape: GraphShape):
        key = (combo, shape)
        if key not in self._sessions:
            entry = self.graph(combo, shape)
            opts = self.ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.log_severity_level = 3
            if self.use_cuda:
                providers: list = [
                    (
                        "CUDAExecutionProvider",
                        {
                            "device_id": self.device.index or 0,
                            "user_compute_stream": str(torch.cuda.current_stream(self.device).cuda_stream),
                        },
                    )
                ]
            else:
                providers = ["CPUExecutionProvider"]
            self._sessions[key] = self.ort.InferenceSession(
                str(entry.file(GRAPH_FILE)), sess_options=opts, providers=providers
            )
        return self._sessions[key]

    # ---- runner interface --------------------------------------------------------------------------
    def weight_sets(self, combos: Sequence[DomainCombo]) -> list[DomainCombo | None]:
        """The weight sets `combos` need: block-shift's one (None), or one per distinct lora combo."""
        return [None] if self.mixes_domains else list(dict.fromkeys(combos))

    def ready_for(self, num_views: int, height: int, width: int, combos: Sequence[DomainCombo]) -> bool:
        """For the step batcher: whether the sessions of this shape are loaded; if not, they are built in
        the background (`background_builds.py`) and the batcher serves other groups meanwhile."""
        shape = GraphShape(num_views, height, width)
        return all(
            self.builds.ready((combo, shape), lambda combo=combo: self.session(combo, shape))
            for combo in self.weight_sets(combos)
        )

    def build_shape(self, combo: DomainCombo | None, shape: GraphShape) -> None:
        """Export (or find in the cache) and load the graph of one weight set at one shape."""
        self.session(combo, shape)

    def prepare(self, combos: Sequence[DomainCombo], num_views: int | None = None) -> None:
        for combo in self.weight_sets(combos):
            self.session(combo, self.default_shape(num_views))

    @torch.no_grad()
    def __call__(self, inputs: UNetInputs, domains: DomainCombo | Sequence[DomainCombo]) -> torch.Tensor:
        return run_domains(self.model.shifter, inputs, domains, self._run, self.device)

    def _feeds(self, inputs: UNetInputs, ids: torch.Tensor | None) -> dict[str, torch.Tensor]:
        feeds = graph_inputs(inputs, self.model.unet.geometry_channels, ids)
        return {
            k: v.to(
                self.device, torch.long if k in ("timestep", "domain_ids") else torch.float32
            ).contiguous()
            for k, v in feeds.items()
        }

    def _run(self, inputs: UNetInputs, combo: DomainCombo | None, ids: torch.Tensor | None) -> torch.Tensor:
        shape = GraphShape(inputs.num_views, inputs.sample.shape[2], inputs.sample.shape[3])
        session = self.session(combo, shape)
        feeds = self._feeds(inputs, ids)
        if not self.use_cuda:
            out = session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
            return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
        # CUDA EP: bind torch's device buffers directly (no host round trip)
        out_t = torch.empty(feeds["sample"].shape, dtype=torch.float32, device=self.device)
        binding = session.io_binding()
        for name, t in feeds.items():
            binding.bind_input(
                name, "cuda", self.device.index or 0, _np_dtype(t.dtype), tuple(t.shape), t.data_ptr()
            )
        binding.bind_output(
            "noise_pred", "cuda", self.device.index or 0, np.float32, tuple(out_t.shape), out_t.data_ptr()
        )
        session.run_with_iobinding(binding)
        return out_t


def graph_key_parts(
    fingerprint: dict[str, str],
    combo: DomainCombo | None,
    shape: GraphShape,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Cache key parts of an ONNX graph in `dtype` (shared by the onnx and tensorrt backends)."""
    return {
        **fingerprint,
        "weight_set": weight_set_label(combo),
        "backend": "onnx",
        "precision": str(dtype).removeprefix("torch."),
        "shape": shape.as_dict(),
        "opset": OPSET,
        "versions": library_versions(),
        "device": device_name(device),
    }


def graph_label(combo: DomainCombo | None, shape: GraphShape) -> str:
    return f"{weight_set_label(combo)}-v{shape.num_views}-{shape.height}x{shape.width}"


def cached_graph(
    cache: EngineCache,
    model: Realiz3DModel,
    parts: dict[str, Any],
    combo: DomainCombo | None,
    shape: GraphShape,
    dtype: torch.dtype = torch.float32,
) -> CacheEntry:
    """The ONNX graph of a weight set (see `export_unet`) at `shape` in `dtype`, from `cache` or exported
    into it."""

    def build(tmp: Path) -> None:
        export_unet(model, combo, shape, tmp / GRAPH_FILE, dtype=dtype)

    label = graph_label(combo, shape) + ("" if dtype == torch.float32 else f"-{str(dtype)[6:]}")
    entry = cache.get_or_build("onnx", label, parts, build, info={"model": model.config.name})
    log.info(
        "onnx graph %s: %s", label, "cache hit" if entry.hit else f"built in {entry.build_seconds:.1f} s"
    )
    return entry


def _np_dtype(dtype: torch.dtype):
    return {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}[dtype]
