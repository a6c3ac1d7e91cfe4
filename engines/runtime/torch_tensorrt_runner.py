"""torch-tensorrt runner (`--backend torch-tensorrt`): the dynamo path, `torch.export` -> TensorRT.

NOT run in this repository: torch-tensorrt needs a CUDA build of PyTorch and TensorRT's libraries, and
neither is here. What runs on the CPU (tests/test_runtime_torch_tensorrt.py) is everything up to the
hand-over: `export_program` gives the `ExportedProgram` this runner compiles, and that program, run as
it is, matches the eager UNet for every schedule and for a mixed batch. The compile call itself and the
runner only run where `torch_tensorrt` imports and a CUDA GPU exists.

- **One program per graph shape and batch**, every schedule: the fused block-shift UNet takes the
  per-sample domain ids as a tensor input (as the ONNX graph does), so step splits, block splits and
  mixed batches all run the same engine. A lora-form model would need one program per weight set; this
  backend refuses it (use `tensorrt` or `compile`).
- **Static shapes**: each program is exported at one batch size; `batch_shape` rounds a batch up to a
  power-of-two number of objects (the step batcher pads), so a worker builds a handful per shape.
  Dynamic-batch tracing of this UNet was the slow path under torch.compile (docs/runtimes.md).
- **Typing**: the program is exported in the serving precision with normalisations in fp32
  (`typed_for_export` on a private copy, as for TensorRT's strongly typed networks) and compiled with
  `use_explicit_typing=True` where the installed torch-tensorrt has it (2.6+; it is how TensorRT 11
  works), else with `enabled_precisions={dtype}`.
- Compiled modules are kept under the same memory budget policy as TensorRT engines (`engine_lru.py`,
  sized by the program's parameter bytes).
- **Step caching** (`run_step`): one program per shape, batch and step kind, the same two graphs as the
  ONNX export (`onnx_export.export_wrapper`): the full program returns (noise prediction, deep feature)
  and serves plain calls too, the shallow program takes the deep feature as its last input. On the CPU
  both programs are checked against the eager step (tests/test_runtime_torch_tensorrt.py); compiled, not.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from engines.errors import BackendUnavailable, UserInputError
from engines.models.realiz3d_model import Realiz3DModel
from engines.runtime.backend_names import default_precision
from engines.runtime.base import graph_inputs, power_of_two_objects, run_domains, step_domain_ids
from engines.runtime.engine_lru import EngineLRU
from engines.runtime.onnx_export import (
    DEEP,
    GraphShape,
    example_inputs,
    export_copy,
    export_wrapper,
    graph_names,
    step_cache_graphs,
    takes_domain_ids,
)
from engines.types import DomainCombo, UNetInputs

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_tensorrt_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import torch_tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return False
    return True


def export_program(
    model: Realiz3DModel,
    shape: GraphShape,
    batch: int,
    dtype: torch.dtype = torch.float32,
    step_kind: str = "full",
) -> tuple[torch.export.ExportedProgram, tuple[torch.Tensor, ...]]:
    """The fused UNet's `step_kind` graph exported at one (views, H, W, batch) in `dtype`, and example
    args in input order (`onnx_export.graph_names`: the shallow graph's last input is the deep feature).

    Runs on any device the model is on (the CPU in tests). Exported from a private copy
    (`onnx_export.export_copy`, fused tables, per-sample ids): `model` is left as it is."""
    if not takes_domain_ids(model):
        raise UserInputError(
            "backend torch-tensorrt serves block-shift models (domain ids as an input); this model's "
            "Domain Shifter is the lora form: use --backend tensorrt or compile"
        )
    model = export_copy(model, None, dtype)
    names, _ = graph_names(model, step_kind)
    feeds = example_inputs(model, shape, batch, model.device, step_kind)
    args = tuple(feeds[n].to(dtype) if feeds[n].is_floating_point() else feeds[n] for n in names)
    wrapper = export_wrapper(model, shape, step_kind)
    with torch.no_grad():
        program = torch.export.export(wrapper, args, strict=False)
    return program, args


def compile_options(compile_fn: Any, dtype: torch.dtype) -> dict[str, Any]:
    """Keyword arguments for `torch_tensorrt.dynamo.compile` that the installed version accepts."""
    params = inspect.signature(compile_fn).parameters
    options: dict[str, Any] = {"min_block_size": 1, "truncate_double": True}
    if "use_explicit_typing" in params:
        options["use_explicit_typing"] = True
    else:
        options["enabled_precisions"] = {dtype}
    return {k: v for k, v in options.items() if k in params}


class TorchTensorRTRunner:
    backend = "torch-tensorrt"

    def __init__(
        self,
        model: Realiz3DModel,
        precision: str | None = None,
        max_objects: int = 4,
        memory_budget_bytes: int | None = None,
    ) -> None:
        if not torch_tensorrt_available():
            raise BackendUnavailable(
                "backend torch-tensorrt needs the torch_tensorrt package and a CUDA GPU; neither is here"
            )
        if model.device.type != "cuda":
            raise UserInputError("backend torch-tensorrt runs on a CUDA device; use --device cuda")
        precision = precision or default_precision("torch-tensorrt")
        if precision not in PRECISIONS:
            raise UserInputError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if not takes_domain_ids(model):
            raise UserInputError("backend torch-tensorrt serves block-shift models only (see its docs)")
        import torch_tensorrt

        self.torch_tensorrt = torch_tensorrt
        self.model = model
        self.mixes_domains = True
        self.device = model.device
        self.dtype = PRECISIONS[precision]
        self.max_objects = max_objects
        self._modules: EngineLRU[Any] = EngineLRU(memory_budget_bytes)

    def max_batch(self, num_views: int) -> int:
        return self.max_objects * 2 * num_views

    def batch_shape(self, batch: int, num_views: int) -> int:
        return power_of_two_objects(batch, num_views, self.max_batch(num_views))

    @property
    def step_cache(self) -> bool:
        return step_cache_graphs(self.model)

    def module(self, shape: GraphShape, batch: int, step_kind: str = "full") -> Any:
        def build() -> tuple[Any, int]:
            program, args = export_program(self.model, shape, batch, self.dtype, step_kind)
            compile_fn = self.torch_tensorrt.dynamo.compile
            compiled = compile_fn(program, arg_inputs=list(args), **compile_options(compile_fn, self.dtype))
            size = sum(p.numel() * p.element_size() for p in program.parameters())
            return compiled, size

        return self._modules.get((shape, batch, step_kind), build)

    def prepare(self, combos: Sequence[DomainCombo], num_views: int | None = None) -> None:
        self.model.shifter.activate(None)

    @torch.no_grad()
    def __call__(self, inputs: UNetInputs, domains: DomainCombo | Sequence[DomainCombo]) -> torch.Tensor:
        return run_domains(self.model.shifter, inputs, domains, self._run, self.device)

    def _run(self, inputs: UNetInputs, combo: DomainCombo | None, ids: torch.Tensor | None) -> torch.Tensor:
        out = self._call(inputs, ids)
        return (out[0] if isinstance(out, tuple | list) else out).float()

    @torch.no_grad()
    def run_step(
        self,
        inputs: UNetInputs,
        domains: DomainCombo | Sequence[DomainCombo],
        deep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A step-caching call: the full program (`deep=None`), returning (noise prediction, deep
        feature), or the shallow program on `deep` (returned as it is)."""
        ids = step_domain_ids(self, inputs, domains, self.device)
        if deep is None:
            pred, feature = self._call(inputs, ids)
            return pred.float(), feature
        return self._call(inputs, ids, deep).float(), deep

    def _call(self, inputs: UNetInputs, ids: torch.Tensor | None, deep: torch.Tensor | None = None) -> Any:
        """The full program's outputs, or with `deep` the shallow program's."""
        shape = GraphShape(inputs.num_views, inputs.sample.shape[2], inputs.sample.shape[3])
        if inputs.batch > self.max_batch(inputs.num_views):
            raise UserInputError(f"batch {inputs.batch} is over {self.max_batch(inputs.num_views)} images")
        kind = "full" if deep is None else "shallow"
        feeds = {**graph_inputs(inputs, self.model.unet.geometry_channels, ids), DEEP: deep}
        names, _ = graph_names(self.model, kind)
        args = [
            feeds[n]
            .to(self.device, self.dtype if feeds[n].is_floating_point() else feeds[n].dtype)
            .contiguous()
            for n in names
        ]
        return self.module(shape, inputs.batch, kind)(*args)
