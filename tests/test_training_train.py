"""Training: a few steps reduce the loss; checkpoints resume exactly; stage 2 keeps the shifter frozen."""

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


def fixed_loss(trainer: Trainer, controls: bool) -> float:
    rng = np.random.default_rng(123)
    cfg = tiny("1", 1, batch_objects=2, batch_real=8, caption_dropout=0.0)
    total = 0.0
    with torch.no_grad():
        for k in range(4):
            gen = torch.Generator().manual_seed(k)
            syn = synthetic_batch(rng, trainer.syn, cfg, with_controls=controls)
            real = real_batch(rng, trainer.real, cfg, 0.0)
            total += float(diffusion_loss(trainer.model, trainer.scheduler, syn, gen, True))
            total += float(diffusion_loss(trainer.model, trainer.scheduler, real, gen, True))
    return total / 8


def test_stage1_steps_reduce_the_loss(tmp_path: Path):
    trainer = Trainer(tiny("1", 40), tmp_path / "s1", log=lambda m: None)
    before = fixed_loss(trainer, controls=False)
    for step in range(40):
        trainer.train_step(step)
    after = fixed_loss(trainer, controls=False)
    assert after < 0.9 * before, (before, after)


def test_resume_is_exact_and_stage2_freezes_the_shifter(tmp_path: Path):
    log = lambda m: None  # noqa: E731
    straight = Trainer(tiny("1", 6), tmp_path / "a", log=log)
    final = straight.run()
    part = Trainer(tiny("1", 6), tmp_path / "b", log=log)
    for step in range(4):  # interrupted after step 4's checkpoint
        part.train_step(step)
        part.step = step + 1
    part.save()
    with pytest.raises(ValueError, match="--resume"):
        Trainer(tiny("1", 6), tmp_path / "b", log=log)
    resumed = Trainer(tiny("1", 6), tmp_path / "b", resume=True, log=log)
    assert resumed.step == 4
    resumed.run()
    a, b = named_parameters(straight.model), named_parameters(resumed.model)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)

    s2 = Trainer(tiny("2", 3), tmp_path / "s2", init=final, log=log)
    shifter_before = {k: v.clone() for k, v in s2.model.shifter.state_dict().items()}
    down = [n for n in s2.names if n.startswith("unet.conv_in")]
    assert down and all(n in s2.names for n in down)
    s2_final = s2.run()
    for k, v in s2.model.shifter.state_dict().items():
        torch.testing.assert_close(v, shifter_before[k], rtol=0, atol=0)
    model = load_model(s2_final)
    assert model.config.resolution == 16

    naive = Trainer(tiny("naive", 3, stage1_steps=1), tmp_path / "naive", log=log)
    naive.run()
    # no covariate: the adapters never move off the identity (e_d = 0)
    for adapter in naive.model.shifter.adapters.values():
        assert float(adapter.domain_embed.abs().max()) == 0.0
