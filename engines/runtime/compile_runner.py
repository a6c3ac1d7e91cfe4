"""torch.compile runner: one compiled MultiViewUNet serves every domain assignment.

Block-shift (the default form): the per-sample domain ids are a tensor input of the compiled graph and
the offset tables are constants of the model, so every step split, block split and mixed batch runs the
same graph (pinned by `tests/test_runtime_compile.py` with `set_stance("fail_on_recompile")`).

Lora form: weight sets switch exactly as in the eager runner: `shifter.activate(combo)` swaps the Parameter
references of the adapted layers. torch 2.13's Dynamo always inlines nn.Modules and lifts their
parameters to graph *inputs* (guarded on shape/dtype/device, not on identity or values), so a swap is
not a recompile: the same compiled graph reads the other tensors. `tests/test_runtime_compile.py` pins
this with `torch.compiler.set_stance("fail_on_recompile")` across combo switches.

Step caching (block-shift): `compiled_step` is one graph per shape and step kind, the full step's (which
also returns the deep feature) and the shallow step's (which takes it); plain calls run the full one, so a
shape costs at most two compiles whatever mix of cache intervals a worker serves
(`tests/test_runtime_compile.py` counts Inductor's graphs with Dynamo's counters).

- Static shapes (`dynamic=False`) on every device: one compile per batch size, and `batch_shape` rounds
  a batch up to a power-of-two number of objects (the step batcher pads), so jobs joining and leaving
  hit a handful of sizes. On the CPU a dynamic-batch recompile of the test UNet took 555 s against
  31-36 s per static size (docs/runtimes.md).
- CPU: default Inductor mode.
- CUDA: `mode="reduce-overhead"` (Inductor + CUDA graph trees).
  Parameters are static inputs of a CUDA graph (their addresses are baked in); a swapped-in weight set
  has other addresses, so the graph tree records one graph per weight set the first time it is used and
  afterwards finds and replays the matching one (a `StaticInputIdxMismatch`, which torch does not count
  against `cudagraph_unexpected_rerecord_limit`). `warmup()` records every combo ahead of the first job.
  Outputs of a replayed graph live in the graph's pool and are overwritten by the next replay: the
  runner returns a copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engines.errors import UserInputError
from engines.models.realiz3d_model import Realiz3DModel
from engines.runtime.base import graph_inputs, per_sample, power_of_two_objects, run_domains
from engines.runtime.torch_runner import PRECISIONS, cast_inputs
from engines.types import DomainCombo, UNetInputs


class CompileRunner:
    backend = "compile"

    def __init__(
        self,
        model: Realiz3DModel,
        precision: str = "fp32",
        mode: str | None = None,
        dynamic: bool | None = None,
        compile_backend: str = "inductor",
    ) -> None:
        if precision not in PRECISIONS:
            raise UserInputError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.model = model
        self.mixes_domains = model.shifter.mixes_domains(True)
        self.device = model.device
        self.dtype = PRECISIONS[precision]
        if self.device.type != "cuda" and self.dtype == torch.float16:
            raise UserInputError("fp16 needs a GPU; use fp32 or bf16 on the CPU")
        if model.dtype != self.dtype:
            model.to(self.device, self.dtype)  # fused weights are recomputed in the new dtype
        self.cuda_graphs = self.device.type == "cuda" if mode is None else mode == "reduce-overhead"
        if mode is None and self.device.type == "cuda":
            mode = "reduce-overhead"
        if dynamic is None:
            # Static shapes everywhere: CUDA graphs need them, and on the CPU Dynamo's dynamic-batch
            # recompile of this UNet took many times a static size's compile (seen in development with
            # torch 2.13; no report here keeps the timing).
            dynamic = False
        self.mode = mode
        self.dynamic = dynamic
        self.compiled = torch.compile(model.unet, mode=mode, dynamic=dynamic, backend=compile_backend)

        #: step caching's graphs (one per step kind and shape), compiled on first use; where the model
        #: caches steps, plain calls run the full one and `compiled` stays uncompiled
        self.compiled_step = torch.compile(
            model.unet.step_forward, mode=mode, dynamic=dynamic, backend=compile_backend
        )

    @property
    def step_cache(self) -> bool:
        from engines.models.deep_cache import supports_step_cache

        return self.mixes_domains and supports_step_cache(self.model.unet.unet)

    @torch.no_grad()
    def run_step(
        self,
        inputs: UNetInputs,
        domains: DomainCombo | Sequence[DomainCombo],
        deep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step caching (engines/models/deep_cache.py): a full step's graph outputs the deep feature too,
        a shallow step's graph takes it as an input; two graphs per shape, every schedule in each."""
        shifter = self.model.shifter
        shifter.activate(None)
        ids = shifter.domain_ids(per_sample(domains, inputs.batch), device=self.device)
        return self._step(inputs, ids, deep)

    def _step(
        self, inputs: UNetInputs, ids: torch.Tensor, deep: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = cast_inputs(inputs, self.device, self.dtype)
        args = {k: t.contiguous() for k, t in graph_inputs(x, self.model.unet.geometry_channels, ids).items()}
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        out, feature = self.compiled_step(
            args["sample"],
            args["timestep"],
            args["text"],
            args["cameras"],
            args.get("geometry"),
            args.get("domain_ids"),
            x.num_views,
            None if deep is None else deep.to(self.dtype).contiguous(),
        )
        if self.cuda_graphs:  # replays overwrite the graph's outputs
            return out.float().clone(), feature.clone()
        return out.float(), feature

    def batch_shape(self, batch: int, num_views: int) -> int:
        """Static graphs: pad to a power-of-two number of objects (a few sizes, a few compiles)."""
        return power_of_two_objects(batch, num_views) if self.dynamic is False else batch

    def prepare(self, combos: Sequence[DomainCombo]) -> None:
        self.model.shifter.fuse()

    @torch.no_grad()
    def warmup(self, inputs: UNetInputs, combos: Sequence[DomainCombo]) -> None:
        """Compile for `inputs`' shape and (on CUDA) record one CUDA graph per weight set (block-shift:
        one for all combos)."""
        self.prepare(combos)
        sets = combos[:1] if self.mixes_domains else list(dict.fromkeys(combos))
        for combo in sets:
            for _ in range(3 if self.cuda_graphs else 1):  # CUDA graph trees: warm up, record, replay
                self(inputs, combo)

    @torch.no_grad()
    def __call__(self, inputs: UNetInputs, domains: DomainCombo | Sequence[DomainCombo]) -> torch.Tensor:
        def run_one(x: UNetInputs, combo: DomainCombo | None, ids: torch.Tensor | None) -> torch.Tensor:
            # lora: a reference swap, no recompile; block-shift: ids are a graph input
            self.model.shifter.activate(combo)
            return self._run(x, ids)

        return run_domains(self.model.shifter, inputs, domains, run_one, self.device)

    def _run(self, inputs: UNetInputs, ids: torch.Tensor | None) -> torch.Tensor:
        if ids is not None and self.step_cache:
            # one graph per shape and step kind: a plain call runs the full step's graph (its deep
            # feature unused), so a worker mixing cache intervals compiles two graphs per shape, not three
            return self._step(inputs, ids, None)[0]
        x = cast_inputs(inputs, self.device, self.dtype)
        feeds = graph_inputs(x, self.model.unet.geometry_channels, ids)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        # Contiguous inputs: Dynamo guards on strides, and the sampler passes expanded (stride-0) text.
        args = {k: t.contiguous() for k, t in feeds.items()}
        out = self.compiled(
            args["sample"],
            args["timestep"],
            args["text"],
            args["cameras"],
            args.get("geometry"),
            args.get("domain_ids"),
            x.num_views,
        )
        # float() of an fp32 output is the same tensor: copy CUDA-graph outputs before the next replay
        return out.float().clone() if self.cuda_graphs else out.float()
