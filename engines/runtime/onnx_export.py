"""ONNX export of the multi-view UNet, one graph per (weight set, num_views, image size), and the check
that an exported graph is what TensorRT's ONNX parser can build an engine from.

- Block-shift (the default form): the fused offset tables are constants of the graph and the per-sample
  domain ids an int64 input `domain_ids` (batch x sites): **one graph per shape** serves every step
  split, block split and batch that mixes schedules.
- Lora form: the shifter is fused before export (`shifter.activate(combo)`), so a graph holds one weight
  set and no adapter ops; a schedule switches graphs (sessions / engines) per combo, never rebuilds.
- Inputs `sample, timestep, text, cameras[, geometry][, domain_ids]`, output `noise_pred`; dim 0 of every
  input and of the output is the dynamic axis `batch` = objects x views x CFG; every other dim is static.
  `num_views` is a Python int of the forward (it sets the multi-view attention grouping) and is baked
  into the graph.
- **Step kinds** (step caching, engines/models/deep_cache.py): two graphs per weight set and shape. The
  **full** graph runs the whole UNet; where the model serves step caching (`step_cache_graphs`) it also
  outputs the deep feature `deep_feature` (batch x C x h x w, static but for the batch), and plain calls
  run it too, dropping that output. The **shallow** graph takes `deep_feature` as an input and runs only
  the shallow branch; the exporter drops the inputs it does not read (`text` where the last up block has
  no attention), so runners feed a graph the inputs it declares (`declared_inputs`).
- The legacy TorchScript exporter (`dynamo=False`) takes seconds here; opset 17 (in TensorRT's 9-20).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engines.models.realiz3d_model import Realiz3DModel
from engines.types import DomainCombo

OPSET = 17
INPUTS = ("sample", "timestep", "text", "cameras", "geometry", "domain_ids")
OUTPUT = "noise_pred"
#: the cached deep feature: an output of the full graph, an input of the shallow one
DEEP = "deep_feature"
STEP_KINDS = ("full", "shallow")
BATCH_AXIS = "batch"
TENSORRT_OPS_FILE = Path(__file__).with_name("tensorrt_onnx_ops.txt")


@dataclass(frozen=True)
class GraphShape:
    """What one exported graph is specialised to (besides the weight set)."""

    num_views: int
    height: int  # of `sample` (pixels, or latent cells for a VAE model)
    width: int

    def as_dict(self) -> dict[str, int]:
        return {"num_views": self.num_views, "height": self.height, "width": self.width}


def envelope_shapes(model: Realiz3DModel) -> list[GraphShape]:
    """Every graph shape the model's serving envelope declares: each served view count at each served
    resolution (what `realiz3d build-engines --envelope` builds ahead)."""
    cfg = model.config
    sizes = [res // cfg.downsample_factor * cfg.patch_size for res in model.served_resolutions()]
    return [GraphShape(views, size, size) for size in sizes for views in cfg.serving.views]


class ExportWrapper(nn.Module):
    """Tensors-only forward with num_views fixed and the graph's inputs in `names` order. `step_kind`
    None: the plain forward (noise prediction); "full": (noise prediction, deep feature); "shallow": the
    noise prediction of the shallow branch on the `deep_feature` input."""

    def __init__(
        self, unet: nn.Module, num_views: int, names: list[str], step_kind: str | None = None
    ) -> None:
        super().__init__()
        self.unet = unet
        self.num_views = num_views
        self.names = names
        self.step_kind = step_kind

    def forward(self, *tensors):  # noqa: ANN002
        t = dict(zip(self.names, tensors, strict=True))
        args = (t["sample"], t["timestep"], t["text"], t["cameras"], t.get("geometry"), t.get("domain_ids"))
        if self.step_kind is None:
            return self.unet(*args, self.num_views)
        pred, deep = self.unet.step_forward(*args, self.num_views, t.get(DEEP))
        return (pred, deep) if self.step_kind == "full" else pred


def step_cache_graphs(model: Realiz3DModel) -> bool:
    """Whether the model's graphs serve step caching: domains are a graph input (block-shift: one call
    mixes the jobs' domains) and its UNet has the layout `deep_cache.split_forward` follows."""
    from engines.models.deep_cache import supports_step_cache

    return takes_domain_ids(model) and supports_step_cache(model.unet.unet)


def check_step_kind(model: Realiz3DModel, step_kind: str) -> None:
    if step_kind not in STEP_KINDS:
        raise ValueError(f"step kind must be one of {STEP_KINDS}, got {step_kind!r}")
    if step_kind == "shallow" and not step_cache_graphs(model):
        raise ValueError(f"model {model.config.name} has no shallow graph: it does not serve step caching")


def graph_names(model: Realiz3DModel, step_kind: str = "full") -> tuple[list[str], list[str]]:
    """(input names, output names) of the `step_kind` graph, as exported (the shallow graph's file may
    drop inputs it does not read: see `declared_inputs`)."""
    check_step_kind(model, step_kind)
    if step_kind == "shallow":
        return [*input_names(model), DEEP], [OUTPUT]
    return input_names(model), [OUTPUT, DEEP] if step_cache_graphs(model) else [OUTPUT]


def export_wrapper(model: Realiz3DModel, shape: GraphShape, step_kind: str = "full") -> ExportWrapper:
    """The module that is exported (or `torch.export`ed) as the `step_kind` graph of `shape`."""
    names, _ = graph_names(model, step_kind)
    kind = step_kind if step_cache_graphs(model) else None
    return ExportWrapper(model.unet, shape.num_views, names, kind).eval()


def declared_inputs(path: str | Path) -> list[str]:
    """The input names an exported graph file declares (its initializers excluded), in order."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in weights]


def text_tokens(model: Realiz3DModel) -> int:
    """Length of the text-embedding sequence the model's encoder produces."""
    with torch.no_grad():
        return int(model.text_encoder.encode([""]).shape[1])


def takes_domain_ids(model: Realiz3DModel) -> bool:
    """Whether the model's fused graphs take per-sample domains as an input (block-shift)."""
    return model.shifter.mixes_domains(True)


def input_names(model: Realiz3DModel) -> list[str]:
    names = list(INPUTS)
    if not model.unet.geometry_channels:
        names.remove("geometry")
    if not takes_domain_ids(model):
        names.remove("domain_ids")
    return names


def example_inputs(
    model: Realiz3DModel,
    shape: GraphShape,
    batch: int,
    device: torch.device | str = "cpu",
    step_kind: str = "full",
) -> dict[str, torch.Tensor]:
    """Deterministic example inputs of the `step_kind` graph's signature (batch rows); the shallow
    graph's `deep_feature` is what the full step makes of the other inputs (in the model's dtype)."""
    gen = torch.Generator("cpu").manual_seed(0)
    channels = model.sample_channels
    text_dim = model.unet.unet.config.cross_attention_dim
    tokens = text_tokens(model)
    out = {
        "sample": torch.randn(batch, channels, shape.height, shape.width, generator=gen),
        "timestep": torch.full((batch,), 500, dtype=torch.long),
        "text": torch.randn(batch, tokens, text_dim, generator=gen),
        "cameras": torch.randn(batch, 16, generator=gen),
    }
    if model.unet.geometry_channels:
        out["geometry"] = torch.zeros(batch, model.unet.geometry_channels, shape.height, shape.width)
    if takes_domain_ids(model):
        out["domain_ids"] = torch.randint(0, 2, (batch, model.shifter.num_slots), generator=gen)
    out = {k: v.to(device) for k, v in out.items()}
    if step_kind == "shallow":
        check_step_kind(model, step_kind)
        full = export_wrapper(model, shape, "full")
        names = full.names
        with torch.no_grad():
            args = [out[n].to(model.dtype) if out[n].is_floating_point() else out[n] for n in names]
            out[DEEP] = full(*args)[1]
    return out


#: Modules that run in fp32 inside a half-precision graph: normalisations reduce over many values (a
#: variance in fp16 overflows past 256^2), so TensorRT's strongly typed network must see them in fp32.
FP32_MODULES = (nn.GroupNorm, nn.LayerNorm)


def export_copy(model: Realiz3DModel, combo: DomainCombo | None, dtype: torch.dtype) -> Realiz3DModel:
    """What an export traces: a private copy of the model's UNet and Domain Shifter
    (`Realiz3DModel.denoiser_copy`), activated for `combo` (lora's weight set; block-shift's fused
    tables) and typed for `dtype` (`typed_for_export`). `model` is never changed, so the thread that
    runs it (eager steps, another weight set's activation) is not disturbed while a graph exports in the
    background. Tensors already in the right dtype are shared; only converted ones are new."""
    private = model.denoiser_copy()
    private.shifter.activate(combo)
    typed_for_export(private.unet, dtype)
    return private


def typed_for_export(module: nn.Module, dtype: torch.dtype) -> None:
    """`module` (a private copy: see `export_copy`) in `dtype` with every `FP32_MODULES` layer computing in
    fp32 (cast in, cast back out), changed in place. A parameter or buffer in another dtype is replaced by
    a converted tensor; one already in its dtype stays shared with the model copied, and the fp32 layers'
    weights are never rounded through `dtype`. A no-op for fp32."""
    if dtype == torch.float32:
        return
    for m in module.modules():
        keep = torch.float32 if isinstance(m, FP32_MODULES) else dtype
        for name, p in m._parameters.items():
            if p is not None and p.is_floating_point() and p.dtype != keep:
                m._parameters[name] = nn.Parameter(p.detach().to(keep), requires_grad=False)
        for name, b in m._buffers.items():
            if b is not None and b.is_floating_point() and b.dtype != keep:
                m._buffers[name] = b.to(keep)
        if isinstance(m, FP32_MODULES):
            m.forward = functools.partial(_fp32_forward, m.forward, dtype)  # type: ignore[method-assign]


def _fp32_forward(forward, dtype: torch.dtype, x: torch.Tensor, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
    return forward(x.float(), *args, **kwargs).to(dtype)


@torch.no_grad()
def export_unet(
    model: Realiz3DModel,
    combo: DomainCombo | None,
    shape: GraphShape,
    path: str | Path,
    opset: int = OPSET,
    dtype: torch.dtype | None = None,
    step_kind: str = "full",
) -> Path:
    """Export the fused UNet's `step_kind` graph to `path`: block-shift with `combo=None` (domains are an
    input), lora with `combo`'s weight set. `dtype` (default: the model's): the graph's dtype, inputs and output included;
    fp16/bf16 graphs keep normalisations in fp32 (`typed_for_export`), what TensorRT 11's strongly typed
    networks need. Traced from a private copy (`export_copy`): `model` is left as it is, even while
    another thread runs it. Weights inside the file; a graph over protobuf's 2 GB limit gets its weights
    in external data files next to it."""
    path = Path(path)
    dtype = dtype or model.dtype
    model = export_copy(model, combo, dtype)
    wrapper = export_wrapper(model, shape, step_kind)
    names, outputs = graph_names(model, step_kind)
    # Trace with one object under CFG; the batch axis is dynamic anyway.
    example = example_inputs(model, shape, 2 * shape.num_views, model.device, step_kind)
    args = tuple(example[n].to(dtype) if example[n].is_floating_point() else example[n] for n in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python ints taken from shapes
        traced = wrapper(*args)
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=names,
            output_names=outputs,
            dynamic_axes={n: {0: BATCH_AXIS} for n in [*names, *outputs]},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    traced = traced if isinstance(traced, tuple) else (traced,)
    _pin_output_shapes(path, {n: (BATCH_AXIS, *t.shape[1:]) for n, t in zip(outputs, traced, strict=True)})
    return path


def _pin_output_shapes(path: Path, dims: dict[str, tuple]) -> None:
    """Write the outputs' static dims into the graph (the exporter leaves the spatial dims of the
    pixel-shuffled output symbolic): every dim is then static or the profiled batch axis."""
    import onnx

    model = onnx.load(str(path))
    for output in model.graph.output:
        shape = output.type.tensor_type.shape
        for d, value in zip(shape.dim, dims[output.name], strict=True):
            d.Clear()
            if isinstance(value, str):
                d.dim_param = value
            else:
                d.dim_value = int(value)
    large = model.ByteSize() > 1_900_000_000  # protobuf's 2 GB limit: weights go to a side file
    onnx.save(model, str(path), save_as_external_data=large, location=path.name + ".data" if large else None)


# ---- TensorRT compatibility ------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorRTOpList:
    ops: frozenset[str]
    min_opset: int
    max_opset: int
    source: str


@functools.cache
def tensorrt_op_list(path: str | Path = TENSORRT_OPS_FILE) -> TensorRTOpList:
    ops, meta, source = set(), {}, []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line.startswith("#"):
            body = line.lstrip("#").strip()
            key, sep, value = body.partition(":")
            if sep and key in ("max_opset", "min_opset"):
                meta[key] = int(value)
            elif body.startswith("Source:"):
                source.append(body.removeprefix("Source:").strip())
        elif line:
            ops.add(line)
    return TensorRTOpList(
        frozenset(ops), meta.get("min_opset", 9), meta.get("max_opset", 20), " ".join(source)
    )


def check_tensorrt_compatible(path: str | Path, batch_axis: str = BATCH_AXIS) -> list[str]:
    """Problems that would stop TensorRT from building an engine from this ONNX file ([] = none):

    - `onnx.checker` fails (full check, with shape inference);
    - the default-domain opset is outside TensorRT's range, or a node uses an op (or a custom domain)
      TensorRT's ONNX parser does not support (list: tensorrt_onnx_ops.txt, its source named there);
    - an input/output dim is neither static nor the one dynamic batch axis our optimization profile
      covers (TensorRT needs every dynamic dim in a profile).
    """
    import onnx

    path = Path(path)
    supported = tensorrt_op_list()
    problems: list[str] = []
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001 - onnx raises several types
        problems.append(f"onnx.checker: {str(e).splitlines()[0]}")
    model = onnx.load(str(path), load_external_data=False)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not supported.min_opset <= imp.version <= supported.max_opset:
            problems.append(
                f"opset {imp.version} outside TensorRT's {supported.min_opset}-{supported.max_opset}"
            )
    used: set[tuple[str, str]] = set()

    def visit(graph) -> None:  # noqa: ANN001
        for node in graph.node:
            used.add((node.domain, node.op_type))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                for g in attr.graphs:
                    visit(g)

    visit(model.graph)
    for domain, op in sorted(used):
        if domain not in ("", "ai.onnx"):
            problems.append(f"op {domain}::{op} is in a custom domain TensorRT's parser does not know")
        elif op not in supported.ops:
            problems.append(f"op {op} is not supported by TensorRT's ONNX parser")
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if not dims:
            problems.append(f"{value.name} has no shape")
        for i, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            if i == 0 and d.dim_param == batch_axis:
                continue
            problems.append(
                f"{value.name} dim {i} ({d.dim_param or '?'}) is dynamic but not the profiled batch axis"
            )
    return problems


def graph_ops(path: str | Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
