"""Fusion in fp32, rounded once: fused-vs-unfused parity in bf16 on the CPU (fp16/bf16 on a GPU)."""

from __future__ import annotations

import pytest
import torch

from engines.runtime.torch_runner import TorchRunner
from engines.types import DomainCombo, uniform_combo
from tests.fixtures.models import tiny_model
from tests.test_engine_domain_shifter import unet_inputs

REAL, SYN = uniform_combo("real"), uniform_combo("synthetic")
COMBOS = [REAL] * 2 + [SYN] * 2 + [DomainCombo("real", "real", "real", 6)] * 2


def trained_like(dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """A tiny model whose block-shift offsets are not zero (as after training), in `dtype`."""
    model = tiny_model(seed=5)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.shifter.adapter_state_dict().values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    model.to(device, dtype)
    model.shifter.invalidate_fused()
    return model


@torch.no_grad()
def test_block_shift_tables_are_fused_in_fp32_and_rounded_once():
    fp32 = trained_like()
    ref = [fp32.shifter.site(k).offsets().double() for k in range(fp32.shifter.num_sites)]
    model = trained_like(torch.bfloat16)
    shifter = model.shifter
    shifter.fuse()
    chain_err = table_err = 0.0
    for k, want in enumerate(ref):
        table = shifter._tables[k]
        assert table.dtype == torch.float32  # kept in fp32: rounded once, where a call adds it
        w = shifter.site(k)
        exact = (w.embed.weight.double() @ w.left.weight.double().T) @ w.right.weight.double().T
        assert torch.allclose(table.double(), exact, rtol=1e-5, atol=1e-6)
        table_err += (table.to(torch.bfloat16).double() - want).abs().sum().item()
        chain_err += (w.offsets().double() - want).abs().sum().item()  # the bf16 chain, as unfused runs
    assert table_err < chain_err  # one rounding beats the bf16 chain's several


@torch.no_grad()
def test_bf16_fused_matches_unfused_and_is_no_further_from_fp32():
    fp32 = trained_like()
    x = unet_inputs(fp32, n_objects=3, views=2)
    reference = TorchRunner(fp32, adapters="fused")(x, COMBOS)
    model = trained_like(torch.bfloat16)
    fused = TorchRunner(model, adapters="fused")(x, COMBOS)
    unfused = TorchRunner(model, adapters="unfused")(x, COMBOS)
    scale = reference.abs().mean().item()
    assert (fused - unfused).abs().mean().item() <= 0.02 * scale  # bf16 has ~3 significant digits
    assert (fused - reference).abs().mean().item() <= (unfused - reference).abs().mean().item() * 1.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@torch.no_grad()
def test_gpu_half_precision_fused_matches_unfused(dtype):
    x = unet_inputs(trained_like(), n_objects=3, views=2)
    reference = TorchRunner(trained_like(torch.float32, "cuda"), adapters="fused")(x, COMBOS)
    model = trained_like(dtype, "cuda")
    fused = TorchRunner(model, adapters="fused")(x, COMBOS)
    unfused = TorchRunner(model, adapters="unfused")(x, COMBOS)
    scale = reference.abs().mean().item()
    assert (fused - unfused).abs().mean().item() <= 0.02 * scale
    assert (fused - reference).abs().mean().item() <= (unfused - reference).abs().mean().item() * 1.05


def test_move_denoiser_moves_the_unet_and_shifter_only(tiny_model_dir):
    from engines.models.model_folder import load_model

    model = load_model(tiny_model_dir)
    model.move_denoiser("meta")  # a device with no memory: shows exactly what moved
    assert model.device.type == "meta"
    assert list(model.shifter.parameters()) and all(
        p.device.type == "meta" for p in model.shifter.parameters()
    )
    assert all(p.device.type == "cpu" for p in model.text_encoder.parameters())
