"""Training as the method figure draws it: the base stage learns, stage 1 moves only the Domain Shifter,
stage 2 freezes it and keeps real-sample gradients out of the first i sites; checkpoints resume exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("skimage", reason="the real-domain photographs come from scikit-image's sample data")

from engines.models.model_folder import load_model  # noqa: E402
from engines.training.data import DataSpec  # noqa: E402
from engines.training.train import (  # noqa: E402
    TrainConfig,
    Trainer,
    diffusion_loss,
    named_parameters,
    real_batch,
    synthetic_batch,
)

DATA = DataSpec(synthetic=6, real=12, seed=1, resolution=16)


def tiny(stage: str, steps: int, **kw) -> TrainConfig:
    base = dict(
        stage=stage,
        steps=steps,
        seed=0,
        batch_objects=1,
        batch_real=4,
        lr=2e-3,
        warmup=1,
        log_every=1000,
        checkpoint_every=1000,
        data=DATA,
        resolution=16,
        channels=(16, 32, 32),
    )
    return TrainConfig(**{**base, **kw})


LOG = lambda m: None  # noqa: E731


def fixed_loss(trainer: Trainer, controls: bool, covariate: bool = True) -> float:
    rng = np.random.default_rng(123)
    cfg = tiny("1", 1, batch_objects=2, batch_real=8, caption_dropout=0.0)
    total = 0.0
    with torch.no_grad():
        for k in range(4):
            gen = torch.Generator().manual_seed(k)
            syn = synthetic_batch(rng, trainer.syn, cfg, with_controls=controls)
            real = real_batch(rng, trainer.real, cfg)
            total += float(diffusion_loss(trainer.model, trainer.scheduler, syn, gen, covariate))
            total += float(diffusion_loss(trainer.model, trainer.scheduler, real, gen, covariate))
    return total / 8


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> Path:
    return Trainer(tiny("base", 4), tmp_path_factory.mktemp("base"), log=LOG).run()


def test_base_steps_reduce_the_loss(tmp_path: Path):
    trainer = Trainer(tiny("base", 40), tmp_path / "base", log=LOG)
    before = fixed_loss(trainer, controls=False, covariate=False)
    for step in range(40):
        trainer.train_step(step)
    after = fixed_loss(trainer, controls=False, covariate=False)
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize("form", ["block-shift", "lora"])
def test_stage1_moves_only_the_domain_shifter(tmp_path: Path, base_folder: Path, form: str):
    trainer = Trainer(tiny("1", 3, shifter_form=form, lr=5e-2), tmp_path / "s1", init=base_folder, log=LOG)
    assert trainer.model.shifter.form == form
    before = {k: v.detach().clone() for k, v in named_parameters(trainer.model).items()}
    for step in range(3):
        trainer.train_step(step)
    after = named_parameters(trainer.model)
    for name, v in before.items():
        if name.startswith("shifter."):
            continue
        assert torch.equal(after[name], v), name  # the backbone is bitwise unchanged
    assert any(not torch.equal(after[n], v) for n, v in before.items() if n.startswith("shifter."))


def test_stage2_real_samples_give_no_gradient_before_site_i(tmp_path: Path, base_folder: Path):
    s1 = Trainer(tiny("1", 2, lr=5e-2), tmp_path / "s1", init=base_folder, log=LOG).run()
    trainer = Trainer(tiny("2", 1), tmp_path / "s2", init=s1, log=LOG)
    model, sites = trainer.model, trainer.model.shifter.sites
    assert all(not p.requires_grad for p in model.shifter.parameters())  # the DS is frozen
    i = 4
    frozen = trainer._freeze_before(i)
    try:
        rng = np.random.default_rng(0)
        real = real_batch(rng, trainer.real, trainer.cfg, reassigned=i)
        assert real.combos[0].blocks == i  # the first i sites run their DS on S
        diffusion_loss(model, trainer.scheduler, real, torch.Generator().manual_seed(0), True).backward()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    params = dict(model.unet.unet.named_parameters())
    ids = model.shifter.domain_ids(real.combos)[0].tolist()
    assert ids[:i] == [model.shifter.domain_index["synthetic"]] * i
    assert set(ids[i:]) == {model.shifter.domain_index["real"]}
    for name, p in params.items():
        site = next((k for k, s in enumerate(sites) if name.startswith(s + ".")), None)
        before_i = name.startswith(("conv_in", "time_embedding", "class_embedding")) or (
            site is not None and site < i
        )
        if before_i:
            assert p.grad is None or float(p.grad.abs().max()) == 0.0, name
    later = [p for n, p in params.items() if n.startswith(sites[i] + ".")]
    assert later and any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in later)
    assert all(p.grad is None for p in model.shifter.parameters())


def test_resume_is_exact_and_stage2_freezes_the_shifter(tmp_path: Path, base_folder: Path):
    straight = Trainer(tiny("1", 6), tmp_path / "a", init=base_folder, log=LOG)
    final = straight.run()
    part = Trainer(tiny("1", 6), tmp_path / "b", init=base_folder, log=LOG)
    for step in range(4):  # interrupted after step 4's checkpoint
        part.train_step(step)
        part.step = step + 1
    part.save()
    with pytest.raises(ValueError, match="--resume"):
        Trainer(tiny("1", 6), tmp_path / "b", init=base_folder, log=LOG)
    resumed = Trainer(tiny("1", 6), tmp_path / "b", init=base_folder, resume=True, log=LOG)
    assert resumed.step == 4
    resumed.run()
    a, b = named_parameters(straight.model), named_parameters(resumed.model)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)

    s2 = Trainer(tiny("2", 3), tmp_path / "s2", init=final, log=LOG)
    shifter_before = {k: v.clone() for k, v in s2.model.shifter.state_dict().items()}
    assert "unet.conv_in.weight" in s2.names
    s2_final = s2.run()
    for k, v in s2.model.shifter.state_dict().items():
        torch.testing.assert_close(v, shifter_before[k], rtol=0, atol=0)
    model = load_model(s2_final)
    assert model.config.resolution == 16 and model.shifter.form == "block-shift"

    naive = Trainer(tiny("naive", 3, stage1_steps=1), tmp_path / "naive", init=base_folder, log=LOG)
    naive.run()
    # no covariate: the shifter never moves off the identity (W_right = 0)
    for site in naive.model.shifter.adapters.values():
        assert float(site.right.weight.abs().max()) == 0.0


def test_stages_after_the_base_need_an_init(tmp_path: Path):
    for stage in ("1", "2", "naive"):
        with pytest.raises(ValueError, match="--init"):
            Trainer(tiny(stage, 1), tmp_path / stage, log=LOG)
