"""Domain Shifter: exact fusion, per-sample domains, layer groups."""

from __future__ import annotations

import pytest
import torch

from engines.models.domain_shifter import (
    DomainShifter,
    DomainShifterConfig,
    LowRankDomainAdapter,
    layer_group,
)
from engines.models.unet import UNetInputs
from tests.fixtures.models import tiny_model

REAL, SYN = ("real",) * 3, ("synthetic",) * 3


def unet_inputs(model, n_objects=2, views=2, seed=0) -> UNetInputs:
    g = torch.Generator().manual_seed(seed)
    n = n_objects * views
    res = model.config.resolution
    return UNetInputs(
        sample=torch.randn(n, 3, res, res, generator=g),
        timestep=torch.randint(0, 1000, (n,), generator=g),
        text=torch.randn(n, model.config.text_encoder.max_tokens, model.text_encoder.dim, generator=g),
        cameras=torch.randn(n, 16, generator=g),
        geometry=torch.randn(n, 7, res, res, generator=g),
        num_views=views,
    )


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


@torch.no_grad()
def test_fused_equals_unfused_for_each_domain(model):
    x = unet_inputs(model)
    for combo in (REAL, SYN, ("synthetic", "synthetic", "real")):
        model.shifter.activate(combo)
        fused = model.unet.run(x)
        model.shifter.set_sample_domains([combo] * x.batch)
        unfused = model.unet.run(x)
        assert (fused - unfused).abs().max().item() <= 1e-5, combo


@torch.no_grad()
def test_unfused_mixed_batch_matches_per_domain_fused_runs(model):
    x = unet_inputs(model, n_objects=2, views=2)
    combos = [REAL, REAL, SYN, SYN]  # object 0 real, object 1 synthetic in one call
    model.shifter.set_sample_domains(combos)
    mixed = model.unet.run(x)
    model.shifter.activate(REAL)
    real = model.unet.run(x)
    model.shifter.activate(SYN)
    syn = model.unet.run(x)
    assert (mixed[:2] - real[:2]).abs().max().item() <= 1e-5
    assert (mixed[2:] - syn[2:]).abs().max().item() <= 1e-5


@torch.no_grad()
def test_domains_change_the_output_and_base_differs(model):
    x = unet_inputs(model)
    model.shifter.activate(REAL)
    real = model.unet.run(x)
    model.shifter.activate(SYN)
    syn = model.unet.run(x)
    model.shifter.deactivate()
    base = model.unet.run(x)
    assert (real - syn).abs().mean().item() > 1e-3
    assert (real - base).abs().mean().item() > 1e-3


@torch.no_grad()
def test_linear_and_conv_adapters_fuse_exactly():
    torch.manual_seed(0)
    for layer, x in (
        (torch.nn.Linear(12, 20), torch.randn(5, 7, 12)),
        (torch.nn.Conv2d(6, 10, 3, stride=2, padding=1), torch.randn(3, 6, 9, 9)),
    ):
        adapter = LowRankDomainAdapter(layer, rank=4, num_domains=2)
        adapter.domain_embed.normal_()
        for d in (0, 1):
            idx = torch.full((x.shape[0],), d)
            reference = layer(x) + adapter.branch(x, idx)
            fused_layer = type(layer).__new__(type(layer))
            fused_layer.__dict__ = dict(layer.__dict__)
            fused_layer._parameters = dict(layer._parameters)
            fused_layer._parameters["weight"] = torch.nn.Parameter(layer.weight + adapter.delta_weight(d))
            assert torch.allclose(fused_layer(x), reference, atol=1e-5)


def test_switching_domain_swaps_references_without_copying(model):
    shifter = model.shifter
    shifter.activate(REAL)
    name = shifter.layer_names[0]
    module = dict(model.unet.unet.named_modules())[name]
    real_weight = module.weight
    shifter.activate(SYN)
    syn_weight = module.weight
    shifter.activate(REAL)
    assert module.weight is real_weight  # the same tensor object again: nothing recomputed or copied
    assert syn_weight is not real_weight
    assert syn_weight.data_ptr() != real_weight.data_ptr()


def test_fused_memory_is_one_adapted_layer_set_per_domain(model):
    shifter = model.shifter
    shifter.invalidate_fused()
    shifter.activate(REAL)
    one = shifter.fused_weight_bytes()
    shifter.activate(("synthetic", "real", "real"))  # a group combination reuses per-domain tensors
    two = shifter.fused_weight_bytes()
    assert one == shifter.adapted_weight_bytes()
    assert two == 2 * shifter.adapted_weight_bytes()
    total = sum(p.numel() * p.element_size() for p in model.unet.parameters())
    assert shifter.adapted_weight_bytes() < total


def test_layer_groups_follow_unet_depth():
    assert layer_group("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q") == "down"
    assert layer_group("conv_in") == "down"
    assert layer_group("mid_block.resnets.0.conv1") == "mid"
    assert layer_group("up_blocks.0.resnets.1.conv2") == "up"
    assert layer_group("conv_out") == "up"


@torch.no_grad()
def test_per_group_combo_only_changes_that_groups_layers(model):
    shifter = model.shifter
    shifter.activate(("synthetic", "real", "real"))
    modules = dict(model.unet.unet.named_modules())
    for name in shifter.layer_names:
        expected = "synthetic" if shifter.groups[name] == "down" else "real"
        assert modules[name].weight is shifter._fused[name][expected]


def test_targets_that_match_nothing_are_an_error(model):
    with pytest.raises(ValueError, match="match no"):
        DomainShifter(DomainShifterConfig(targets=[r"^nothing$"]), model.unet.unet)
    with pytest.raises(ValueError, match="not a valid regex"):
        DomainShifterConfig(targets=["("])


@torch.no_grad()
def test_fused_runner_splits_a_mixed_batch_per_weight_set_like_unfused(model):
    from engines.runtime.torch_runner import TorchRunner

    x = unet_inputs(model, n_objects=2, views=2)
    combos = [SYN, SYN, REAL, REAL]
    fused = TorchRunner(model, adapters="fused")(x, combos)
    unfused = TorchRunner(model, adapters="unfused")(x, combos)
    assert (fused - unfused).abs().max().item() <= 1e-5
