"""ONNX Runtime runner: one exported graph + one InferenceSession per weight set, shape and step kind.

Block-shift (the default form) has one weight set: the per-sample domain ids are a graph input, so one
graph per (num_views, image size) serves every schedule and mixed batches. The lora form has one weight
set per domain combo; its step-split schedule switches sessions mid-run (a dict lookup). Graphs live in
the engine cache (see `engine_cache.py`) and are loaded from it by every later process; nothing is
re-exported or rebuilt. Step caching (`run_step`, block-shift models): a full step runs the full graph,
which also outputs the deep feature, a shallow step the shallow graph on it (`onnx_export.py`); plain calls
run the full graph too, so a shape has at most two graphs. CPU execution provider here; the CUDA EP
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
from engines.runtime.base import graph_inputs, run_domains, step_domain_ids
from engines.runtime.engine_cache import (
    CacheEntry,
    EngineCache,
    device_name,
    library_versions,
    model_fingerprint,
)
from engines.runtime.graph_runner import GraphRunner
from engines.runtime.onnx_export import (
    DEEP,
    OPSET,
    OUTPUT,
    GraphShape,
    check_step_kind,
    export_unet,
)
from engines.types import DomainCombo, UNetInputs

log = logging.getLogger(__name__)
GRAPH_FILE = "unet.onnx"


def weight_set_label(combo: DomainCombo | None) -> str:
    """`ssr`, `rrr-b6` for a lora weight set; `domains` for block-shift's one set (domains are inputs)."""
    return "domains" if combo is None else combo.label()


class OnnxRunner(GraphRunner):
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
        self._sessions: dict[tuple[DomainCombo | None, GraphShape, str], Any] = {}
        #: cache entries this runner used (weight set, shape, step kind, entry with hit/built): what
        #: `realiz3d build-engines` reports
        self.entries: list[tuple[DomainCombo | None, GraphShape, str, CacheEntry]] = []
        self.builds = BackgroundBuilds()

    # ---- graphs ------------------------------------------------------------------------------------
    def key_parts(
        self, combo: DomainCombo | None, shape: GraphShape, step_kind: str = "full"
    ) -> dict[str, Any]:
        return graph_key_parts(self.fingerprint, combo, shape, self.device, step_kind=step_kind)

    def graph(self, combo: DomainCombo | None, shape: GraphShape, step_kind: str = "full") -> CacheEntry:
        """The cached ONNX graph for (combo, shape, step kind), exported now if missing, stale or corrupt."""
        parts = self.key_parts(combo, shape, step_kind)
        entry = cached_graph(self.cache, self.model, parts, combo, shape, step_kind=step_kind)
        self.entries.append((combo, shape, step_kind, entry))
        return entry

    def session(self, combo: DomainCombo | None, shape: GraphShape, step_kind: str = "full"):
        key = (combo, shape, step_kind)
        if key not in self._sessions:
            check_step_kind(self.model, step_kind)
            entry = self.graph(combo, shape, step_kind)
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
    def ready_for(
        self,
        num_views: int,
        height: int,
        width: int,
        combos: Sequence[DomainCombo],
        step_kind: str = "full",
    ) -> bool:
        """For the step batcher: whether the sessions of this shape and step kind are loaded; if not, they
        are built in the background (`background_builds.py`) and the batcher serves other groups meanwhile."""
        shape = GraphShape(num_views, height, width)
        return all(
            self.builds.ready(
                (combo, shape, step_kind), lambda combo=combo: self.background_build(combo, shape, step_kind)
            )
            for combo in self.weight_sets(combos)
        )

    def build_shape(self, combo: DomainCombo | None, shape: GraphShape, step_kind: str = "full") -> None:
        """Export (or find in the cache) and load the graph of one weight set at one shape and step kind."""
        self.session(combo, shape, step_kind)

    def load(self, combo: DomainCombo | None, shape: GraphShape, step_kind: str) -> object:
        return self.session(combo, shape, step_kind)

    def background_build(self, combo: DomainCombo | None, shape: GraphShape, step_kind: str) -> object:
        return self.session(combo, shape, step_kind)  # sessions are thread-safe to create and to run

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
        return self._execute(inputs, combo, ids)[OUTPUT]

    @torch.no_grad()
    def run_step(
        self,
        inputs: UNetInputs,
        domains: DomainCombo | Sequence[DomainCombo],
        deep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A step-caching call: the full graph (`deep=None`), returning (noise prediction, deep feature),
        or the shallow graph on `deep` (returned as it is)."""
        ids = step_domain_ids(self, inputs, domains, inputs.sample.device)
        if deep is None:
            outs = self._execute(inputs, None, ids)
            self.full_step_ran(GraphShape(inputs.num_views, *inputs.sample.shape[2:]))
            return outs[OUTPUT], outs[DEEP]
        return self._execute(inputs, None, ids, deep)[OUTPUT], deep

    def _execute(
        self,
        inputs: UNetInputs,
        combo: DomainCombo | None,
        ids: torch.Tensor | None,
        deep: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Every output of the full graph, or with `deep` of the shallow graph, by name."""
        shape = GraphShape(inputs.num_views, inputs.sample.shape[2], inputs.sample.shape[3])
        kind = "full" if deep is None else "shallow"
        session = self.session(combo, shape, kind)
        feeds = self._feeds(inputs, ids)
        if deep is not None:
            feeds[DEEP] = deep.to(self.device, torch.float32).contiguous()
        # a graph declares only the inputs it reads (the shallow one may not read `text`)
        feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
        names = [o.name for o in session.get_outputs()]
        if not self.use_cuda:
            outs = session.run(names, {k: v.numpy() for k, v in feeds.items()})
            return {
                n: torch.from_numpy(np.ascontiguousarray(o, dtype=np.float32))
                for n, o in zip(names, outs, strict=True)
            }
        # CUDA EP: bind torch's device buffers directly (no host round trip)
        batch = inputs.batch
        binding = session.io_binding()
        for name, t in feeds.items():
            binding.bind_input(
                name, "cuda", self.device.index or 0, _np_dtype(t.dtype), tuple(t.shape), t.data_ptr()
            )
        outs = {}
        for o in session.get_outputs():
            dims = [batch if isinstance(d, str) or d is None else int(d) for d in o.shape]
            out_t = outs[o.name] = torch.empty(dims, dtype=torch.float32, device=self.device)
            binding.bind_output(
                o.name, "cuda", self.device.index or 0, np.float32, tuple(dims), out_t.data_ptr()
            )
        session.run_with_iobinding(binding)
        return outs


def graph_key_parts(
    fingerprint: dict[str, str],
    combo: DomainCombo | None,
    shape: GraphShape,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    step_kind: str = "full",
) -> dict[str, Any]:
    """Cache key parts of an ONNX graph in `dtype` (shared by the onnx and tensorrt backends)."""
    return {
        **fingerprint,
        "weight_set": weight_set_label(combo),
        "step_kind": step_kind,
        "backend": "onnx",
        "precision": str(dtype).removeprefix("torch."),
        "shape": shape.as_dict(),
        "opset": OPSET,
        "versions": library_versions(),
        "device": device_name(device),
    }


def graph_label(combo: DomainCombo | None, shape: GraphShape, step_kind: str = "full") -> str:
    """`domains-v4-64x64-full`: weight set, shape and step kind (the cache entry's name before its key)."""
    return f"{weight_set_label(combo)}-v{shape.num_views}-{shape.height}x{shape.width}-{step_kind}"


def cached_graph(
    cache: EngineCache,
    model: Realiz3DModel,
    parts: dict[str, Any],
    combo: DomainCombo | None,
    shape: GraphShape,
    dtype: torch.dtype = torch.float32,
    step_kind: str = "full",
) -> CacheEntry:
    """The `step_kind` ONNX graph of a weight set (see `export_unet`) at `shape` in `dtype`, from `cache`
    or exported into it."""

    def build(tmp: Path) -> None:
        export_unet(model, combo, shape, tmp / GRAPH_FILE, dtype=dtype, step_kind=step_kind)

    label = graph_label(combo, shape, step_kind) + ("" if dtype == torch.float32 else f"-{str(dtype)[6:]}")
    entry = cache.get_or_build("onnx", label, parts, build, info={"model": model.config.name})
    log.info(
        "onnx graph %s: %s", label, "cache hit" if entry.hit else f"built in {entry.build_seconds:.1f} s"
    )
    return entry


def _np_dtype(dtype: torch.dtype):
    return {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}[dtype]
