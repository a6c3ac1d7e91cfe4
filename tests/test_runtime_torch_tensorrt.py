"""torch-tensorrt backend: what the CPU can check is the ExportedProgram it would compile; the compile
and the runner need torch_tensorrt and a CUDA GPU (marked `tensorrt`, skipped here)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engines.errors import BackendUnavailable, UserInputError
from engines.models.model_folder import load_model
from engines.runtime.onnx_export import GraphShape, input_names
from engines.runtime.torch_tensorrt_runner import (
    compile_options,
    export_program,
    torch_tensorrt_available,
)
from engines.types import DomainCombo, uniform_combo
from tests.fixtures.models import eager_unet, tiny_model
from tests.test_runtime_compile import unet_inputs

REAL, SYN = uniform_combo("real"), uniform_combo("synthetic")
SPLIT, BLOCKS = DomainCombo("synthetic", "synthetic", "real"), DomainCombo("real", "real", "real", 6)


def test_one_exported_program_serves_every_schedule_and_a_mixed_batch(tiny_model_dir):
    model = load_model(tiny_model_dir)
    x = unet_inputs(4, 2, seed=3)
    program, _ = export_program(model, GraphShape(2, 32, 32), batch=4)
    names = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    assert len(names) == len(input_names(model)) == 6  # the domain ids are the sixth graph input
    run = program.module()
    geometry = torch.zeros(4, model.unet.geometry_channels, 32, 32)
    for combos in ([REAL] * 4, [SYN] * 4, [SPLIT] * 4, [BLOCKS] * 4, [REAL, REAL, BLOCKS, BLOCKS]):
        ids = model.shifter.domain_ids(combos)
        got, _ = run(x.sample, x.timestep, x.text, x.cameras, geometry, ids)  # (noise, deep feature)
        want = torch.cat([eager_unet(model, x, c)[i : i + 1] for i, c in enumerate(combos)])
        assert (got - want).abs().max().item() <= 1e-4, combos


def test_the_full_and_shallow_programs_match_eager_steps(tiny_model_dir):
    from engines.runtime.torch_runner import TorchRunner

    model = load_model(tiny_model_dir)
    eager = TorchRunner(model)
    x = unet_inputs(4, 2, seed=3)
    geometry = torch.zeros(4, model.unet.geometry_channels, 32, 32)
    later = x.timestep // 2
    combos = [REAL, REAL, BLOCKS, BLOCKS]
    want, want_deep = eager.run_step(x, combos)
    full, _ = export_program(model, GraphShape(2, 32, 32), batch=4, step_kind="full")
    shallow, args = export_program(model, GraphShape(2, 32, 32), batch=4, step_kind="shallow")
    assert args[-1].shape == want_deep.shape  # the shallow program's last input: the deep feature
    ids = model.shifter.domain_ids(combos)
    got, got_deep = full.module()(x.sample, x.timestep, x.text, x.cameras, geometry, ids)
    assert (got - want).abs().max().item() <= 1e-4 and (got_deep - want_deep).abs().max().item() <= 1e-4
    got = shallow.module()(x.sample, later, x.text, x.cameras, geometry, ids, want_deep)
    want, _ = eager.run_step(dataclasses.replace(x, timestep=later), combos, want_deep)
    assert (got - want).abs().max().item() <= 1e-4


def test_a_lora_model_is_refused_with_the_backends_that_serve_it(tmp_path):
    with pytest.raises(UserInputError, match="lora"):
        export_program(tiny_model(form="lora"), GraphShape(2, 32, 32), batch=2)


def test_compile_options_follow_the_installed_signature():
    def new_api(
        program, *, arg_inputs=None, use_explicit_typing=True, min_block_size=5, truncate_double=False
    ):
        pass

    def old_api(program, *, arg_inputs=None, enabled_precisions=None, min_block_size=5):
        pass

    assert compile_options(new_api, torch.float16) == {
        "min_block_size": 1,
        "truncate_double": True,
        "use_explicit_typing": True,
    }
    assert compile_options(old_api, torch.bfloat16) == {
        "min_block_size": 1,
        "enabled_precisions": {torch.bfloat16},
    }


@pytest.mark.skipif(torch_tensorrt_available(), reason="torch_tensorrt and a GPU are here")
def test_without_torch_tensorrt_the_backend_says_so(tiny_model_dir):
    from engines.pipelines import Realiz3DPipeline

    with pytest.raises(BackendUnavailable, match="torch_tensorrt"):
        Realiz3DPipeline.load(tiny_model_dir, backend="torch-tensorrt", device="cpu")


@pytest.mark.tensorrt
@pytest.mark.skipif(
    not torch_tensorrt_available(), reason="needs torch_tensorrt and a CUDA GPU (absent here)"
)
def test_torch_tensorrt_fp16_matches_eager_fp16_for_every_schedule(tiny_model_dir):
    from engines.pipelines import Realiz3DPipeline

    eager = Realiz3DPipeline.load(tiny_model_dir, device="cuda", precision="fp16")
    trt = Realiz3DPipeline.load(tiny_model_dir, backend="torch-tensorrt", device="cuda", precision="fp16")
    x = unet_inputs(4, 2, device="cuda")
    for combo in (REAL, SYN, SPLIT, BLOCKS):
        got, ref = trt.runner(x, combo), eager_unet(eager.model, x, combo)
        assert (got - ref).abs().max().item() <= 2e-2, combo
