"""TensorRT runner: one engine per graph shape and step kind (block-shift: per (views, H, W); lora: also
per weight set), all sharing one activation buffer.

Written against NVIDIA's TensorRT 10 and 11 Python APIs (`import tensorrt` happens lazily, only here).
It has NOT run in this repository's CI: TensorRT's libraries cannot be installed there and there is no
GPU; the tests marked `tensorrt` run wherever both exist. What CI does check: every TensorRT name this
module uses unconditionally is in the real `tensorrt-cu12-bindings` wheels of the versions the Dockerfile
may pin, and every version-dependent name is guarded (tests/test_tensorrt_api.py).

- **Typing** (`network_typing`): TensorRT 11 removed the weakly typed builder flags (`BuilderFlag.FP16`,
  `BF16`): its networks are strongly typed, each tensor keeps the dtype the ONNX file gives it. So for
  fp16/bf16 the graph is exported in that dtype with normalisations in fp32 (`onnx_export.py`) and parsed
  into a `NetworkDefinitionCreationFlag.STRONGLY_TYPED` network. Where the installed TensorRT still has the
  weak flag (10.x), the fp32 graph is built with `BuilderFlag.FP16`/`BF16` as before.
- **Timing cache**: one per model (fingerprint), TensorRT version and GPU under the cache root; every
  build of that model loads it and writes it back (atomically), so the second shape builds faster.
- **No refit**: engines are not refittable. With block-shift one engine per shape serves every schedule,
  so there is no weight set to swap; a new model fingerprint builds new engines.
- Build (ahead of time with `realiz3d build-engines --backend tensorrt`, or on first use): the graph from
  the engine cache -> `trt.OnnxParser` -> one optimization profile over the batch axis:
  min = views (one object, no CFG), opt = 2 x views (one object with CFG; views with `cfg=False`),
  max = max_objects x 2 x views. Spatial dims are static. The serialized plan goes into the engine cache
  (atomic, checksummed, keyed by TensorRT version, GPU and typing).
- Run: every engine's context is created with `ExecutionContextAllocationStrategy.USER_MANAGED` and
  pointed at ONE device buffer sized to the largest `device_memory_size_v2`: contexts run one at a time on
  torch's current stream, so N engines cost N x weights but 1 x activations. Per call:
  `set_input_shape` + `set_tensor_address` for every IO tensor, then `execute_async_v3(stream)`.
- **The torch UNet leaves the GPU** once the first engine is loaded (`release_unet`, default on): only
  the engines run it from then on, and an export for a new shape runs from the CPU copy (fp16 export on
  the CPU is exercised by tests/test_tensorrt_api.py). The text encoder and VAE stay on the GPU.
- Loaded engines are held under `memory_budget_bytes` (`REALIZ3D_ENGINE_MEMORY_BUDGET_MB`; plan bytes,
  i.e. weights), least recently used dropped first (`engine_lru.py`); a dropped one is deserialized
  again from the engine cache when next used, not rebuilt.
- `cuda_graphs=True` (the worker's `REALIZ3D_CUDA_GRAPHS=true`) captures one CUDA graph per (engine,
  batch) on the first call of that shape and replays it (static input/output buffers; inputs are copied
  in). The graphs bake in the shared buffer's address, so they are dropped whenever that buffer grows.
- `precision` None: `backend_names.DEFAULT_PRECISION["tensorrt"]` (fp16).
- **Step caching** (`run_step`, block-shift models): each shape has a full engine, built from the full
  ONNX graph, whose outputs are `noise_pred` and `deep_feature` (plain calls run it too and drop the
  second), and a shallow engine from the shallow graph, whose inputs add `deep_feature` (and may lack
  `text`: a graph declares only what it reads). Every IO tensor is bound by the engine's own names; the
  profile covers `deep_feature` like every input (its dims but the batch are static). NOT run here:
  tests/test_runtime_tensorrt.py checks on the CPU the ONNX graphs these engines are built from.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engines.errors import BackendUnavailable, UserInputError
from engines.models.realiz3d_model import Realiz3DModel
from engines.runtime.backend_names import default_precision
from engines.runtime.background_builds import BackgroundBuilds
from engines.runtime.base import graph_inputs, power_of_two_objects, run_domains, step_domain_ids
from engines.runtime.engine_cache import (
    CacheEntry,
    EngineCache,
    cache_key,
    device_name,
    library_versions,
    model_fingerprint,
    write_atomic,
)
from engines.runtime.engine_lru import EngineLRU
from engines.runtime.graph_runner import GraphRunner
from engines.runtime.onnx_export import DEEP, OUTPUT, GraphShape, check_step_kind
from engines.runtime.onnx_runner import (
    GRAPH_FILE,
    cached_graph,
    graph_key_parts,
    graph_label,
    weight_set_label,
)
from engines.types import DomainCombo, UNetInputs

log = logging.getLogger(__name__)
ENGINE_FILE = "unet.plan"


def tensorrt_available() -> bool:
    """True when the TensorRT Python package imports and a CUDA GPU is visible."""
    if not torch.cuda.is_available():
        return False
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install is as good as none
        return False
    return True


#: TensorRT versions this runner is written and checked for (tests/test_tensorrt_api.py; the Dockerfile
#: pins one of them)
SUPPORTED_TENSORRT = ("10.16.1.11", "11.4.0.106")
WEAK_FLAGS = {"fp16": "FP16", "bf16": "BF16"}


def network_typing(trt: Any, precision: str) -> str:
    """ "weak" (an fp32 graph + the builder's FP16/BF16 flag) where the installed TensorRT still has that
    flag (10.x), else "strong" (a graph exported in `precision`, a STRONGLY_TYPED network: 11.x). fp32
    builds are strongly typed where the flag exists (nothing to lower), else plain."""
    flag = WEAK_FLAGS.get(precision)
    if flag is not None and hasattr(trt.BuilderFlag, flag):
        return "weak"
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        return "strong"
    if flag is not None:
        raise BackendUnavailable(
            f"this TensorRT ({trt.__version__}) can build neither typed nor {precision} engines"
        )
    return "weak"


def _trt():
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001
        raise BackendUnavailable(f"backend tensorrt needs NVIDIA TensorRT ({e})") from None
    return trt


def timing_cache_path(root: Path, fingerprint: dict[str, str], trt_version: str, device: str) -> Path:
    """`<root>/tensorrt/timing-trt<version>-<tag>.cache` (`cache_admin.TIMING_CACHE` reads the version)."""
    tag = cache_key({**fingerprint, "trt": trt_version, "device": device})
    return root / "tensorrt" / f"timing-trt{trt_version.replace('-', '_')}-{tag[:32]}.cache"


class _Engine:
    """One deserialized engine and its execution context (device memory supplied by the runner)."""

    def __init__(self, trt: Any, runtime: Any, plan: bytes, label: str) -> None:
        self.label = label
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize engine {label}")
        self.context = self.engine.create_execution_context(
            trt.ExecutionContextAllocationStrategy.USER_MANAGED
        )
        if self.context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {label}")
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in self.names}
        self.graphs: dict[
            int, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], dict[str, torch.Tensor]]
        ] = {}

    @property
    def device_memory_bytes(self) -> int:
        return int(self.engine.device_memory_size_v2)  # in every SUPPORTED_TENSORRT (>= 10.1)


def _torch_dtype(trt: Any, dt: Any) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
    }
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dt not in table:
        raise RuntimeError(f"unsupported TensorRT IO dtype {dt}")
    return table[dt]


class TensorRTRunner(GraphRunner):
    backend = "tensorrt"

    def __init__(
        self,
        model: Realiz3DModel,
        cache_dir: str | Path | None = None,
        precision: str | None = None,
        num_views: int | None = None,
        max_objects: int = 4,
        cfg: bool = True,
        cuda_graphs: bool = False,
        workspace_bytes: int | None = None,
        memory_budget_bytes: int | None = None,
        release_unet: bool = True,
    ) -> None:
        if not tensorrt_available():
            raise BackendUnavailable(
                "backend tensorrt needs NVIDIA TensorRT and a CUDA GPU; neither is available here"
            )
        if model.device.type != "cuda":
            raise UserInputError("backend tensorrt runs on a CUDA device; use --device cuda")
        precision = precision or default_precision("tensorrt")
        if precision not in ("fp32", "fp16", "bf16"):
            raise UserInputError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
        self.trt = _trt()
        self.model = model
        self.mixes_domains = model.shifter.mixes_domains(True)
        self.device = model.device
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.precision = precision
        self.cache = EngineCache(cache_dir)
        self.default_views = num_views or model.config.num_views
        self.max_objects = max_objects
        self.cfg = cfg
        self.typing = network_typing(self.trt, precision)
        #: the dtype the ONNX graph is exported in: `precision` for strongly typed networks, else fp32
        self.graph_dtype = self.dtype if self.typing == "strong" else torch.float32
        self.cuda_graphs = cuda_graphs
        self.workspace_bytes = workspace_bytes
        self.fingerprint = model_fingerprint(model)
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)
        #: loaded engines, least recently used dropped first over `memory_budget_bytes` (plan bytes)
        self._engines: EngineLRU[_Engine] = EngineLRU(memory_budget_bytes)
        self._scratch: torch.Tensor | None = None
        #: (weight set, shape, step kind, entry): what `realiz3d build-engines` reports
        self.entries: list[tuple[DomainCombo | None, GraphShape, str, CacheEntry]] = []
        self.builds = BackgroundBuilds()
        #: once an engine is loaded the torch UNet leaves the GPU (later exports run on the CPU)
        self.release_unet = release_unet

    # ---- building ----------------------------------------------------------------------------------
    def profile(self, shape: GraphShape) -> tuple[int, int, int]:
        """(min, opt, max) batch: one object without CFG, one object (x2 with CFG), max_objects with CFG."""
        v = shape.num_views
        return v, (2 if self.cfg else 1) * v, self.max_objects * 2 * v

    def max_batch(self, num_views: int) -> int:
        """The engine profile's largest batch: the step batcher splits bigger groups into calls this size."""
        return self.profile(GraphShape(num_views, 1, 1))[2]

    def batch_shape(self, batch: int, num_views: int) -> int:
        """With CUDA graphs (one per batch size), pad to a power-of-two number of objects."""
        if not self.cuda_graphs:
            return batch
        return power_of_two_objects(batch, num_views, self.max_batch(num_views))

    def key_parts(
        self, combo: DomainCombo | None, shape: GraphShape, step_kind: str = "full"
    ) -> dict[str, Any]:
        return {
            **self.fingerprint,
            "weight_set": weight_set_label(combo),
            "step_kind": step_kind,
            "backend": "tensorrt",
            "precision": self.precision,
            "shape": shape.as_dict(),
            "profile": self.profile(shape),
            "typing": self.typing,
            "versions": library_versions(),
            "device": device_name(self.device),
        }

    def timing_cache_path(self) -> Path:
        """One timing cache per model, TensorRT version and GPU (tactic timings do not move across any);
        the version is in the name too, so `realiz3d engines prune --stale` can tell an old one."""
        return timing_cache_path(
            self.cache.root, self.fingerprint, self.trt.__version__, device_name(self.device)
        )

    def build_plan(self, onnx_path: Path, shape: GraphShape, out: Path) -> None:
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 0
        if self.typing == "strong":
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)  # explicit batch is the only mode since TensorRT 10
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}")
        config = builder.create_builder_config()
        if self.typing == "weak" and self.precision in WEAK_FLAGS:
            config.set_flag(getattr(trt.BuilderFlag, WEAK_FLAGS[self.precision]))
        if self.workspace_bytes:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        timing_path = self.timing_cache_path()
        known = timing_path.read_bytes() if timing_path.is_file() else b""
        timing = config.create_timing_cache(known)
        config.set_timing_cache(timing, ignore_mismatch=False)
        profile = builder.create_optimization_profile()
        lo, opt, hi = self.profile(shape)
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            rest = tuple(tensor.shape)[1:]
            if any(d < 0 for d in rest):
                raise RuntimeError(f"input {tensor.name} has dynamic dims besides the batch: {tensor.shape}")
            profile.set_shape(tensor.name, (lo, *rest), (opt, *rest), (hi, *rest))
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path.name}")
        out.write_bytes(bytes(plan))
        write_atomic(timing_path, bytes(config.get_timing_cache().serialize()))

    def engine_entry(
        self, combo: DomainCombo | None, shape: GraphShape, step_kind: str = "full"
    ) -> CacheEntry:
        check_step_kind(self.model, step_kind)

        def build(tmp: Path) -> None:
            graph = cached_graph(
                self.cache,
                self.model,
                graph_key_parts(self.fingerprint, combo, shape, self.device, self.graph_dtype, step_kind),
                combo,
                shape,
                self.graph_dtype,
                step_kind,
            )
            self.build_plan(graph.file(GRAPH_FILE), shape, tmp / ENGINE_FILE)

        label = f"{graph_label(combo, shape, step_kind)}-{self.precision}-{self.typing}"
        parts = self.key_parts(combo, shape, step_kind)
        entry = self.cache.get_or_build(
            "tensorrt", label, parts, build, info={"model": self.model.config.name}
        )
        self.entries.append((combo, shape, step_kind, entry))
        return entry

    def engine(self, combo: DomainCombo | None, shape: GraphShape, step_kind: str = "full") -> _Engine:
        loaded = []

        def load() -> tuple[_Engine, int]:
            entry = self.engine_entry(combo, shape, step_kind)
            plan = entry.file(ENGINE_FILE).read_bytes()
            loaded.append(entry)
            return _Engine(self.trt, self.runtime, plan, entry.path.name), len(plan)

        eng = self._engines.get((combo, shape, step_kind), load)
        if loaded:
            self._share_activation_memory()
            if self.release_unet and self.model.device.type == "cuda":
                self.model.move_denoiser("cpu")  # its GPU memory goes to engines; exports now run on CPU
                torch.cuda.empty_cache()
                log.info("torch UNet moved off the GPU: every engine so far is built")
        return eng

    def _share_activation_memory(self) -> None:
        """One device buffer, sized to the largest engine, behind every execution context."""
        need = max(e.device_memory_bytes for e in self._engines.values())
        if self._scratch is None or self._scratch.numel() < need:
            torch.cuda.synchronize(self.device)
            self._scratch = torch.empty(need, dtype=torch.uint8, device=self.device)
            for e in self._engines.values():
                e.graphs.clear()  # captured graphs hold the old buffer's address
        ptr, size = self._scratch.data_ptr(), self._scratch.numel()
        for e in self._engines.values():
            e.context.set_device_memory(ptr, size)  # TensorRT >= 10.1

    @property
    def activation_bytes(self) -> int:
        return 0 if self._scratch is None else self._scratch.numel()

    # ---- runner interface --------------------------------------------------------------------------
    def ready_for(
        self,
        num_views: int,
        height: int,
        width: int,
        combos: Sequence[DomainCombo],
        step_kind: str = "full",
    ) -> bool:
        """For the step batcher: whether this shape's engines of `step_kind` are loaded. A missing one is
        built into the engine cache in the background while the batcher serves other groups; once built
        it is loaded here, on the batcher's thread, which alone touches the engines and their shared
        buffer."""
        shape = GraphShape(num_views, height, width)
        for combo in self.weight_sets(combos):
            key = (combo, shape, step_kind)
            if key in self._engines:
                continue
            if not self.builds.ready(key, lambda combo=combo: self.background_build(combo, shape, step_kind)):
                return False
            self.engine(*key)  # a cache hit now
        return True

    def build_shape(self, combo: DomainCombo | None, shape: GraphShape, step_kind: str = "full") -> None:
        """Build (or find in the cache) the engine of one weight set at one shape and step kind, without
        loading it: ahead-of-time builds for a whole envelope must not hold every engine on the GPU."""
        self.engine_entry(combo, shape, step_kind)

    def load(self, combo: DomainCombo | None, shape: GraphShape, step_kind: str) -> object:
        return self.engine(combo, shape, step_kind)

    def background_build(self, combo: DomainCombo | None, shape: GraphShape, step_kind: str) -> object:
        return self.engine_entry(combo, shape, step_kind)  # loaded by `ready_for`, on the batcher's thread

    @torch.no_grad()
    def __call__(self, inputs: UNetInputs, domains: DomainCombo | Sequence[DomainCombo]) -> torch.Tensor:
        return run_domains(self.model.shifter, inputs, domains, self._run, self.device)

    def _run(self, inputs: UNetInputs, combo: DomainCombo | None, ids: torch.Tensor | None) -> torch.Tensor:
        return self._outputs(inputs, combo, ids)[OUTPUT].float()

    @torch.no_grad()
    def run_step(
        self,
        inputs: UNetInputs,
        domains: DomainCombo | Sequence[DomainCombo],
        deep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A step-caching call: the full engine (`deep=None`), returning (noise prediction, deep
        feature), or the shallow engine on `deep` (returned as it is)."""
        ids = step_domain_ids(self, inputs, domains, self.device)
        outs = self._outputs(inputs, None, ids, deep)
        if deep is None:
            self.full_step_ran(GraphShape(inputs.num_views, *inputs.sample.shape[2:]))
            return outs[OUTPUT].float(), outs[DEEP]
        return outs[OUTPUT].float(), deep

    def _outputs(
        self,
        inputs: UNetInputs,
        combo: DomainCombo | None,
        ids: torch.Tensor | None,
        deep: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Every output of the full engine, or with `deep` of the shallow one, by name."""
        shape = GraphShape(inputs.num_views, inputs.sample.shape[2], inputs.sample.shape[3])
        lo, _, hi = self.profile(shape)
        if not lo <= inputs.batch <= hi:
            raise UserInputError(f"batch {inputs.batch} is outside the engine profile [{lo}, {hi}]")
        eng = self.engine(combo, shape, "full" if deep is None else "shallow")
        feeds = graph_inputs(inputs, self.model.unet.geometry_channels, ids)
        if deep is not None:
            feeds[DEEP] = deep
        # an engine has the inputs its graph declares (the shallow one may not read `text`)
        feeds = {n: feeds[n].to(self.device, eng.dtypes[n]).contiguous() for n in eng.inputs}
        if self.cuda_graphs:
            return self._run_graph(eng, feeds)
        return self._execute(eng, feeds)

    def _bind(self, eng: _Engine, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ctx = eng.context
        for name, t in feeds.items():
            ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in eng.outputs:  # every output bound (the full engine's deep feature too)
            out = outs[name] = torch.empty(
                tuple(ctx.get_tensor_shape(name)), dtype=eng.dtypes[name], device=self.device
            )
            ctx.set_tensor_address(name, out.data_ptr())
        return outs

    def _execute(self, eng: _Engine, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outs = self._bind(eng, feeds)
        if not eng.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"TensorRT execution failed for {eng.label}")
        return outs

    def _run_graph(self, eng: _Engine, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = feeds["sample"].shape[0]
        if batch not in eng.graphs:
            static = {n: t.clone() for n, t in feeds.items()}
            self._execute(eng, static)  # one plain run first: TensorRT sets up shape-dependent state
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
                outs = self._bind(eng, static)
                eng.context.execute_async_v3(stream.cuda_stream)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            eng.graphs[batch] = (graph, static, outs)
        graph, static, outs = eng.graphs[batch]
        for n, t in feeds.items():
            static[n].copy_(t)
        graph.replay()
        return {n: o.clone() for n, o in outs.items()}
