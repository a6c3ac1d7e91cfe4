"""Training an imported SD-like model on a DATA_DIR: in its VAE's latent space with its own noise schedule,
`--train` sets, gradient checkpointing with the Domain Shifter's hooks, export with the CLIP folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from engines.importers.sd import import_sd  # noqa: E402
from engines.models.model_folder import load_model  # noqa: E402
from engines.models.text_encoder import ClipTextEncoder  # noqa: E402
from engines.training.train import (  # noqa: E402
    DiffusionObjective,
    TrainConfig,
    Trainer,
    diffusion_loss,
    domain_ids_bound,
    model_inputs,
    named_parameters,
    real_batch,
    synthetic_batch,
)
from tests.fixtures.tiny_dataset import write_tiny_dataset  # noqa: E402
from tests.fixtures.tiny_sd import make_sd_folder  # noqa: E402

LOG = lambda m: None  # noqa: E731


@pytest.fixture(scope="module")
def sd_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sd")
    return import_sd(make_sd_folder(root / "sd"), root / "model", num_views=2)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_tiny_dataset(
        tmp_path_factory.mktemp("data") / "d", resolution=64, objects=2, views=2, real=4
    )


def cfg(stage: str, steps: int, data: Path, **kw) -> TrainConfig:
    base = dict(
        stage=stage,
        steps=steps,
        batch_objects=1,
        batch_real=2,
        lr=1e-3,
        warmup=1,
        log_every=1000,
        checkpoint_every=1000,
        data_dir=str(data),
        caption_dropout=0.0,
    )
    return TrainConfig(**{**base, **kw})


def fixed_loss(trainer: Trainer) -> float:
    rng = np.random.default_rng(5)
    total = 0.0
    with torch.no_grad():
        for k in range(3):
            gen = torch.Generator().manual_seed(k)
            syn = synthetic_batch(rng, trainer.syn, trainer.cfg, with_controls=True)
            total += float(diffusion_loss(trainer.model, trainer.scheduler, syn, gen, True))
    return total / 3


def test_latent_training_uses_the_vae_and_the_folder_schedule(tmp_path: Path, sd_model: Path, data_dir: Path):
    trainer = Trainer(
        cfg("2", 30, data_dir, lr=3e-3, geometry_prob=1.0), tmp_path / "s2", init=sd_model, log=LOG
    )
    model = trainer.model
    assert model.vae is not None and trainer.scheduler.config.beta_schedule == "scaled_linear"
    assert trainer.scheduler.config.beta_start == 0.00085  # SD's betas, not the toy's cosine schedule
    rng = np.random.default_rng(0)
    batch = synthetic_batch(rng, trainer.syn, trainer.cfg, with_controls=True)
    assert batch.images.shape == (2, 3, 64, 64) and batch.geometry.shape == (2, 7, 8, 8)
    assert float(batch.geometry[:, 6].max()) > 0  # the object's maps, area-averaged to the latent grid
    inputs = model_inputs(model, trainer.scheduler, batch, torch.Generator().manual_seed(0), True)
    assert inputs["noisy"].shape == (2, 4, 8, 8)  # latents, not pixels
    # at t the sample is sqrt(a_t) z + sqrt(1 - a_t) eps with z the VAE latent times its scaling factor
    t = inputs["timesteps"]
    a = trainer.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    z = (inputs["noisy"] - (1 - a).sqrt() * inputs["target"]) / a.sqrt()
    with torch.no_grad():  # the posterior sample is the generator's first draw
        posterior = model.vae.encode(batch.images).latent_dist
        want = posterior.sample(generator=torch.Generator().manual_seed(0)) * model.vae.config.scaling_factor
    torch.testing.assert_close(z, want, rtol=0, atol=1e-4)
    assert model.vae.config.scaling_factor == 0.18215
    before = fixed_loss(trainer)
    for step in range(12):
        trainer.train_step(step)
    after = fixed_loss(trainer)
    assert after < 0.95 * before, (before, after)


def test_train_sets_and_clip_export(tmp_path: Path, sd_model: Path, data_dir: Path):
    s1 = Trainer(cfg("1", 2, data_dir, lr=5e-2), tmp_path / "s1", init=sd_model, log=LOG)
    before = {k: v.detach().clone() for k, v in named_parameters(s1.model).items()}
    assert any(n.startswith("text.") for n in before)  # CLIP is listed (frozen unless --train all)
    final = s1.run()
    after = named_parameters(s1.model)
    for name, v in before.items():
        if not name.startswith("shifter."):
            assert torch.equal(after[name], v), name  # the backbone, CLIP included, is bitwise unchanged
    assert any(not torch.equal(after[n], v) for n, v in before.items() if n.startswith("shifter."))
    assert (final / "text_encoder" / "model.safetensors").is_file() and (final / "tokenizer").is_dir()
    loaded = load_model(final)
    assert isinstance(loaded.text_encoder, ClipTextEncoder) and loaded.vae is not None
    for name, p in named_parameters(loaded).items():  # the EMA weights, CLIP folders included
        want = s1.ema.get(name, before[name])
        torch.testing.assert_close(p, want.to(p.dtype), rtol=0, atol=0, msg=name)

    everything = Trainer(cfg("2", 2, data_dir, train="all", lr=1e-2), tmp_path / "all", init=final, log=LOG)
    assert any(n.startswith("text.") for n in everything.names)
    assert not any(n.startswith("shifter.") for n in everything.names)
    clip = {
        n: p.detach().clone() for n, p in named_parameters(everything.model).items() if n.startswith("text.")
    }
    for step in range(2):
        everything.train_step(step)
    now = named_parameters(everything.model)
    assert any(not torch.equal(now[n], v) for n, v in clip.items())  # --train all moves CLIP
    with pytest.raises(ValueError, match="stage 1 trains only the Domain Shifter"):
        cfg("1", 1, data_dir, train="unet")
    with pytest.raises(ValueError, match="--train adapters is stage 1's set"):
        cfg("2", 1, data_dir, train="adapters")


def test_gradient_checkpointing_keeps_the_domain_shifter_hooks(
    tmp_path: Path, sd_model: Path, data_dir: Path
):
    grads = []
    for checkpointing in (False, True):
        trainer = Trainer(
            cfg("1", 1, data_dir, gradient_checkpointing=checkpointing),
            tmp_path / str(checkpointing),
            init=sd_model,
            log=LOG,
        )
        model = trainer.model
        torch.manual_seed(0)
        with torch.no_grad():  # a shifter that is not the identity, so its hooks change the activations
            for site in model.shifter.adapters.values():
                site.right.weight.normal_(0, 0.5)
        for p in model.unet.unet.parameters():
            p.requires_grad_(True)  # gradients of the backbone too: they depend on the hooks' residuals
        rng = np.random.default_rng(0)
        batch = real_batch(rng, trainer.real, trainer.cfg, reassigned=3)  # sites 0-2 on S, the rest on R
        inputs = model_inputs(model, trainer.scheduler, batch, torch.Generator().manual_seed(0), True)
        calls: list[int] = []
        block = model.unet.unet.down_blocks[0].resnets[0]
        handle = block.register_forward_pre_hook(lambda m, a, calls=calls: calls.append(1))
        loss = DiffusionObjective(model)(**inputs)
        with domain_ids_bound(model, inputs["domain_ids"]):
            loss.backward()
        handle.remove()
        assert len(calls) == (2 if checkpointing else 1)  # checkpointing re-ran the block in backward
        grads.append({n: p.grad.clone() for n, p in named_parameters(model).items() if p.grad is not None})
    plain, checkpointed = grads
    assert plain.keys() == checkpointed.keys() and any(n.startswith("shifter.") for n in plain)
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_cli_trains_stage_1_then_2_on_own_data(tmp_path: Path, sd_model: Path, data_dir: Path):
    from service.cli import main

    out = tmp_path / "run"
    args = ["train", "--init", str(sd_model), "--data", str(data_dir), "--out", str(out), "--steps", "3"]
    rc = main([*args, "--stage1-steps", "1", "--batch", "1", "--batch-real", "2", "--gradient-checkpointing"])
    assert rc == 0
    model = load_model(out / "stage2" / "final")
    assert model.config.latent_space == "vae" and isinstance(model.text_encoder, ClipTextEncoder)
    assert (out / "stage1" / "final" / "realiz3d.json").is_file()
    assert main([*args, "--train", "adapters"]) == 2  # stage 1 always trains the shifter only; 2 cannot
