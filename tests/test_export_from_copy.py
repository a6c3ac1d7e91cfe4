"""Exports trace a private copy of the model (`Realiz3DModel.denoiser_copy`, `onnx_export.export_copy`):
the caller's model keeps its shifter state, weights and dtypes, and a thread running it while a graph
exports in the background gets exactly its own outputs."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from engines.runtime.onnx_export import GraphShape, export_unet
from engines.runtime.torch_tensorrt_runner import export_program
from engines.types import DomainCombo, uniform_combo
from tests.fixtures.models import eager_unet, tiny_model
from tests.test_runtime_onnx import unet_inputs

REAL, SYN = uniform_combo("real"), uniform_combo("synthetic")
BLOCKS = DomainCombo("synthetic", "real", "synthetic", 3)
SHAPE = GraphShape(2, 32, 32)


def snapshot(model) -> dict:  # noqa: ANN001 - a Realiz3DModel
    """Everything an export used to change on the model it traced, by value and by identity."""
    shifter = model.shifter
    tensors = {
        f"{part}.{kind}.{name}": t
        for part, module in (("unet", model.unet), ("shifter", shifter))
        for kind, named in (("p", module.named_parameters()), ("b", module.named_buffers()))
        for name, t in named
    }
    tensors |= {f"held.{i}": t for i, t in enumerate(shifter.held_tensors())}
    return {
        "mode": shifter.mode,
        "active": getattr(shifter, "_active", None),
        "context": shifter.context.ids,
        "tensors": {
            k: (id(t), t.dtype, t.device, t.data_ptr(), t.detach().clone()) for k, t in tensors.items()
        },
        "own_forwards": sorted(n for n, m in model.unet.named_modules() if "forward" in m.__dict__),
    }


def assert_same(before: dict, after: dict) -> None:
    assert {k: v for k, v in before.items() if k != "tensors"} == {
        k: v for k, v in after.items() if k != "tensors"
    }
    assert before["tensors"].keys() == after["tensors"].keys()
    for name, (ident, dtype, device, ptr, value) in before["tensors"].items():
        now = after["tensors"][name]
        assert now[:4] == (ident, dtype, device, ptr), name
        assert torch.equal(now[4], value), name


@pytest.mark.parametrize(
    ("form", "step_kind", "dtype"),
    [
        ("block-shift", "shallow", torch.float32),
        ("block-shift", "shallow", torch.float16),
        ("lora", "full", torch.float32),
        ("lora", "full", torch.float16),
    ],
)
def test_an_export_leaves_the_callers_model_as_it_was(tmp_path, form, step_kind, dtype):
    model = tiny_model(seed=5, form=form)
    combo = None if form == "block-shift" else REAL
    if form == "lora":
        model.shifter.activate(SYN)  # the caller runs another weight set than the one exported
    before = snapshot(model)
    export_unet(model, combo, SHAPE, tmp_path / "unet.onnx", dtype=dtype, step_kind=step_kind)
    assert_same(before, snapshot(model))
    if form == "block-shift":
        assert before["mode"] == "off" and model.shifter.held_tensors() == []  # not even fused
        export_program(model, SHAPE, batch=4, dtype=dtype, step_kind=step_kind)  # torch-tensorrt's export
        assert_same(before, snapshot(model))


@pytest.mark.parametrize("form", ["block-shift", "lora"])
def test_a_denoiser_copy_shares_the_storage_and_runs_its_own_shifter(form):
    model = tiny_model(seed=6, form=form)
    x = unet_inputs(4, 2, geometry=True)
    model.shifter.fuse()
    copy = model.denoiser_copy()
    originals = {t.data_ptr() for t in [*model.unet.parameters(), *model.shifter.held_tensors()]}
    assert {p.data_ptr() for p in copy.unet.parameters()} <= originals  # no weight memory
    assert not {id(p) for p in copy.unet.parameters()} & {id(p) for p in model.unet.parameters()}
    assert copy.unet.domain_context is copy.shifter.context is not model.shifter.context
    if form == "lora":  # the copied hooks (calling the original shifter) are gone, one of its own each
        for layers in (copy.shifter._layers, model.shifter._layers):
            assert [len(m._forward_hooks) for m in layers.values()] == [1] * len(layers)

    got = eager_unet(copy, x, SYN)  # activates the copy only: the original stays off
    assert model.shifter.mode == "off"
    with torch.no_grad():
        bare = model.unet.run(x, model.shifter.domain_ids([SYN] * x.batch))
    assert not torch.equal(got, bare)  # the copy's hooks call the copy's shifter, not the original's
    assert torch.equal(got, eager_unet(model, x, SYN))

    model.unet.half()  # the caller retyping its model (in place) leaves the copy as it was
    assert {p.dtype for p in copy.unet.parameters()} == {torch.float32}
    assert torch.equal(eager_unet(copy, x, SYN), got)


@pytest.mark.parametrize("form", ["block-shift", "lora"])
def test_eager_steps_during_a_background_export_get_exactly_their_own_outputs(tmp_path, form):
    """What a caching job's full step does (a shallow graph exporting in the background) while another
    thread runs the same model under another activation: the fp16 export used to retype the UNet and
    activate its weight set on the model itself."""
    model = tiny_model(seed=7, form=form)
    x = unet_inputs(4, 2, geometry=True)
    mine = BLOCKS if form == "block-shift" else SYN
    want = eager_unet(model, x, mine)
    kinds = ["full", "shallow"] if form == "block-shift" else ["full"]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # hand the GIL over often, so the two threads' steps interleave

    def exports() -> None:
        for dtype in (torch.float16, torch.float32):
            for kind in kinds:
                combo = None if form == "block-shift" else REAL
                export_unet(model, combo, SHAPE, tmp_path / f"{kind}.onnx", dtype=dtype, step_kind=kind)

    steps_during = 0
    try:
        with ThreadPoolExecutor(1) as pool:
            export = pool.submit(exports)
            while not export.done():
                got = eager_unet(model, x, mine)  # re-activates `mine` each step, as a runner does
                assert torch.equal(got, want), (got - want).abs().max().item()
                steps_during += 1
            export.result()
    finally:
        sys.setswitchinterval(switch)
    assert steps_during >= 3  # the steps overlapped the exports
