"""Domain Shifter, both forms: exact fusion, per-sample domains, block sites, layer groups."""

from __future__ import annotations

import pytest
import torch

from engines.models.domain_shifter import build_domain_shifter
from engines.models.lora_shifter import LowRankDomainAdapter
from engines.models.shifter_config import (
    BlockShiftConfig,
    LoraShifterConfig,
    block_sites,
    layer_group,
    parse_shifter_config,
)
from engines.runtime.torch_runner import TorchRunner
from engines.types import DomainCombo, UNetInputs, uniform_combo
from tests.fixtures.models import tiny_model

REAL, SYN = uniform_combo("real"), uniform_combo("synthetic")


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


@pytest.fixture(scope="module")
def lora_model():
    return tiny_model(seed=3, form="lora")


# ---- block-shift (the paper's form, the default) ----------------------------------------------------
def test_block_shift_is_the_default_with_one_site_per_resnet_and_attention(model):
    assert model.shifter.form == "block-shift"
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    blocks = (ResnetBlock2D, Transformer2DModel)
    expected = {n for n, m in model.unet.unet.named_modules() if isinstance(m, blocks)}
    assert set(model.shifter.sites) == expected
    # forward order: down blocks, mid, up blocks; resnet i before attention i
    assert model.shifter.sites[:3] == [
        "down_blocks.0.resnets.0",
        "down_blocks.1.resnets.0",
        "down_blocks.1.attentions.0",
    ]
    mid = [s for s in model.shifter.sites if s.startswith("mid")]
    assert mid == ["mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"]
    assert model.shifter.sites.index("mid_block.resnets.0") < model.shifter.sites.index(
        "up_blocks.0.resnets.0"
    )


def test_up_block_offsets_are_as_wide_as_the_block_input_with_the_skip(model):
    modules = dict(model.unet.unet.named_modules())
    for site, width in zip(model.shifter.sites, model.shifter.channels, strict=True):
        m = modules[site]
        if hasattr(m, "conv1"):  # a resnet: its first conv reads exactly the (concatenated) input
            assert m.conv1.in_channels == width, site
    up0 = model.shifter.sites.index("up_blocks.0.resnets.0")
    assert model.shifter.channels[up0] > modules["up_blocks.0.resnets.0"].conv1.out_channels


@torch.no_grad()
def test_zero_initialised_block_shift_is_exactly_the_bare_unet():
    model = tiny_model(seed=5)
    model.shifter.remove()  # the seeded model's random shifter
    fresh = build_domain_shifter(BlockShiftConfig(), model.unet.unet)
    model.unet.attach_domain_context(fresh.context)
    x = unet_inputs(model)
    out = {}
    for combo in (REAL, SYN, DomainCombo("real", "real", "real", 4)):
        fresh.activate(combo)
        out[combo] = model.unet.run(x, fresh.domain_ids([combo] * x.batch))
    fresh.remove()
    model.unet.attach_domain_context(None)
    reference = model.unet.run(x)  # no hooks at all: the plain diffusers UNet
    # no hooks and no shifted forward left on any module
    assert not any(m._forward_pre_hooks or "forward" in m.__dict__ for m in model.unet.modules())
    for combo, o in out.items():
        assert torch.equal(o, reference), combo


@torch.no_grad()
def test_block_shift_fused_table_equals_the_chain_computed_per_call(model):
    x = unet_inputs(model, n_objects=3, views=2)
    combos = [REAL] * 2 + [SYN] * 2 + [DomainCombo("real", "real", "real", 6)] * 2
    fused = TorchRunner(model, adapters="fused")(x, combos)
    unfused = TorchRunner(model, adapters="unfused")(x, combos)
    assert (fused - unfused).abs().max().item() <= 1e-6


@torch.no_grad()
def test_block_shift_mixed_batch_equals_each_schedule_alone(model):
    x = unet_inputs(model, n_objects=3, views=2)
    combos = [REAL] * 2 + [SYN] * 2 + [DomainCombo("synthetic", "real", "real", 6)] * 2
    runner = TorchRunner(model, adapters="fused")
    mixed = runner(x, combos)
    for i, c in enumerate((REAL, SYN, combos[-1])):
        idx = torch.arange(2 * i, 2 * i + 2)
        sub = UNetInputs(x.sample[idx], x.timestep[idx], x.text[idx], x.cameras[idx], x.geometry[idx], 2)
        assert (mixed[idx] - runner(sub, c)).abs().max().item() <= 1e-5, c


@torch.no_grad()
def test_block_split_keeps_the_first_k_sites_synthetic(model):
    shifter = model.shifter
    ids = shifter.domain_ids([DomainCombo("real", "real", "real", 6), REAL, SYN])
    syn, real = shifter.domain_index["synthetic"], shifter.domain_index["real"]
    assert ids[0, :6].tolist() == [syn] * 6 and ids[0, 6:].tolist() == [real] * (shifter.num_sites - 6)
    assert ids[1].tolist() == [real] * shifter.num_sites
    assert ids[2].tolist() == [syn] * shifter.num_sites
    # the down/mid/up overrides map onto site ranges
    ids = shifter.domain_ids([DomainCombo("synthetic", "real", "real")])[0]
    for k, site in enumerate(shifter.sites):
        assert ids[k].item() == (syn if site.startswith("down_blocks") else real), site


@torch.no_grad()
def test_block_split_changes_only_what_runs_after_the_kth_site(model):
    x = unet_inputs(model)
    runner = TorchRunner(model, adapters="fused")
    real, syn = runner(x, REAL), runner(x, SYN)
    k_all = runner(x, DomainCombo("real", "real", "real", model.shifter.num_sites))
    k_half = runner(x, DomainCombo("real", "real", "real", 6))
    assert torch.allclose(k_all, syn, atol=1e-6)  # every site synthetic
    assert (k_half - real).abs().mean() > 1e-4 and (k_half - syn).abs().mean() > 1e-4


def test_block_shift_extra_memory_is_the_offset_tables(model):
    shifter = model.shifter
    shifter.invalidate_fused()
    assert shifter.fused_bytes() == 2 * sum(shifter.channels) * 4  # two domains, fp32


def test_block_split_beyond_the_sites_is_a_clear_error(tiny_model_dir):
    from engines.errors import UserInputError
    from engines.pipelines import Realiz3DPipeline
    from engines.requests import MultiviewRequest

    pipe = Realiz3DPipeline.load(tiny_model_dir, device="cpu")
    sites = pipe.model.shifter.num_sites
    assert pipe.capabilities().block_sites == sites
    with pytest.raises(UserInputError, match=f"has {sites} block sites"):
        pipe.multiview(
            MultiviewRequest(prompt="a cube", steps=1, schedule={"split": 0.4, "blocks": sites + 1})
        )


def test_tau_blocks_is_fixed_at_build_and_bounded(model):
    assert model.shifter.config.tau_blocks == model.shifter.num_sites // 2
    with pytest.raises(ValueError, match="tau_blocks"):
        build_domain_shifter(BlockShiftConfig(tau_blocks=99), model.unet.unet)


def test_config_without_a_form_is_the_lora_form_of_old_folders():
    old = {"rank": 4, "targets": [r"^conv_out$"], "domains": ["real", "synthetic"]}
    assert isinstance(parse_shifter_config(old), LoraShifterConfig)
    assert isinstance(parse_shifter_config({"form": "block-shift"}), BlockShiftConfig)
    with pytest.raises(ValueError):
        parse_shifter_config({"form": "block-shift", "targets": ["x"]})


def test_sites_must_be_blocks(model):
    with pytest.raises(ValueError, match="match no block"):
        block_sites(model.unet.unet, [r"^nothing$"])
    with pytest.raises(ValueError, match="not a resnet or attention"):
        block_sites(model.unet.unet, [r"conv_in"])


# ---- lora (kept as an option) ------------------------------------------------------------------------
@torch.no_grad()
def test_lora_fused_equals_unfused_for_each_assignment(lora_model):
    x = unet_inputs(lora_model)
    fused, unfused = TorchRunner(lora_model, "fused"), TorchRunner(lora_model, "unfused")
    for combo in (
        REAL,
        SYN,
        DomainCombo("synthetic", "synthetic", "real"),
        DomainCombo("real", "real", "real", 6),
    ):
        assert (fused(x, combo) - unfused(x, combo)).abs().max().item() <= 1e-5, combo


@torch.no_grad()
def test_lora_mixed_batch_matches_per_domain_fused_runs(lora_model):
    x = unet_inputs(lora_model, n_objects=2, views=2)
    combos = [REAL, REAL, SYN, SYN]
    mixed = TorchRunner(lora_model, "unfused")(x, combos)
    fused = TorchRunner(lora_model, "fused")
    assert (mixed[:2] - fused(x, REAL)[:2]).abs().max().item() <= 1e-5
    assert (mixed[2:] - fused(x, SYN)[2:]).abs().max().item() <= 1e-5


@torch.no_grad()
def test_domains_change_the_output_and_base_differs(model, lora_model):
    for m in (model, lora_model):
        x = unet_inputs(m)
        runner = TorchRunner(m, "fused")
        real, syn = runner(x, REAL), runner(x, SYN)
        m.shifter.deactivate()
        base = m.unet.run(x)
        assert (real - syn).abs().mean().item() > 1e-3, m.shifter.form
        assert (real - base).abs().mean().item() > 1e-3, m.shifter.form


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


def test_lora_switching_domain_swaps_references_without_copying(lora_model):
    shifter = lora_model.shifter
    shifter.activate(REAL)
    name = shifter.layer_names[0]
    module = dict(lora_model.unet.unet.named_modules())[name]
    real_weight = module.weight
    shifter.activate(SYN)
    syn_weight = module.weight
    shifter.activate(REAL)
    assert module.weight is real_weight  # the same tensor object again: nothing recomputed or copied
    assert syn_weight.data_ptr() != real_weight.data_ptr()


def test_lora_fused_memory_is_one_adapted_layer_set_per_domain(lora_model):
    shifter = lora_model.shifter
    shifter.invalidate_fused()
    shifter.activate(REAL)
    one = shifter.fused_bytes()
    shifter.activate(
        DomainCombo("synthetic", "real", "real")
    )  # a group combination reuses per-domain tensors
    assert one == shifter.adapted_weight_bytes()
    assert shifter.fused_bytes() == 2 * shifter.adapted_weight_bytes()


@torch.no_grad()
def test_lora_block_split_uses_the_site_of_each_layer(lora_model):
    shifter = lora_model.shifter
    shifter.activate(DomainCombo("real", "real", "real", 3))
    modules = dict(lora_model.unet.unet.named_modules())
    for name in shifter.layer_names:
        site = next((i for i, s in enumerate(shifter.sites) if name.startswith(s + ".")), None)
        expected = "synthetic" if site is not None and site < 3 else "real"
        assert modules[name].weight is shifter._fused[name][expected], name


def test_layer_groups_follow_unet_depth():
    assert layer_group("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q") == "down"
    assert layer_group("conv_in") == "down"
    assert layer_group("mid_block.resnets.0.conv1") == "mid"
    assert layer_group("up_blocks.0.resnets.1.conv2") == "up"
    assert layer_group("conv_out") == "up"


def test_lora_targets_that_match_nothing_are_an_error(lora_model):
    with pytest.raises(ValueError, match="match no"):
        build_domain_shifter(LoraShifterConfig(targets=[r"^nothing$"]), lora_model.unet.unet)
    with pytest.raises(ValueError, match="not a valid regex"):
        LoraShifterConfig(targets=["("])
