"""Realiz3D training as the method figure draws it, and the naive baseline (docs/training.md has the
exact recipe).

- `base`: the pre-trained image model the method starts from. Our toy has none, so it is trained here:
  text-to-image on the real photographs only, single views, empty controls, no Domain Shifter (an
  imported SD/MVDream folder skips this stage).
- `stage 1`: only the Domain Shifter trains; the backbone (UNet and text encoder) is frozen and stays
  bitwise unchanged. Synthetic renders and photographs, both with empty controls, each through its own
  switch position (S / R).
- `stage 2`: the controls. Synthetic objects (4-view groups, cameras, geometry for half of them) with
  the shifter frozen on S and the UNet trained. Real photographs (empty controls): draw one
  `i ~ U{0..tau_B}` per real mini-batch and step; the first `i` block sites keep their backbone frozen
  ("layer-aware": the real loss gives them, and everything before them in the forward pass, no
  gradient) and have their shifter *reassigned* to S; the remaining sites run R and train.
- `naive`: standard fine-tuning of the same base on the same data in the same order (stage-1 data,
  then stage-2 data) with no covariate: the shifter is off, no layer masking, no reassignment.

Every step's batch and noise come from generators seeded by (seed, stage, step), so a resumed run takes
exactly the path an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler

from engines.errors import UserInputError
from engines.models.config import ModelConfig
from engines.models.default_model import build_model
from engines.models.model_folder import load_model, save_model
from engines.models.realiz3d_model import DEFAULT_SCHEDULER_CONFIG, Realiz3DModel
from engines.models.shifter_config import BlockShiftConfig, LoraShifterConfig
from engines.models.unet import default_unet_config
from engines.training.checkpoint import load_checkpoint, save_checkpoint
from engines.training.data import DataSpec, load_datasets, to_model_range
from engines.training.layer_positions import frozen_before_site, parameter_positions
from engines.training.real_data import RealSet
from engines.training.synthetic_data import SyntheticSet
from engines.types import DomainCombo, DomainSchedule, uniform_combo

STAGES = ("base", "1", "2", "naive")
STAGE_IDS = {"1": 1, "2": 2, "naive": 3, "base": 4}
REAL, SYN = uniform_combo("real"), uniform_combo("synthetic")


@dataclass
class TrainConfig:
    stage: str
    steps: int
    seed: int = 0
    batch_objects: int = 2  # synthetic objects per step (x views images; stage 1: that many single views)
    batch_real: int = 8  # photographs per step
    lr: float = 5e-4
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    caption_dropout: float = 0.1  # empty prompt, for classifier-free guidance
    geometry_prob: float = 0.5  # stage 2: synthetic objects that get their geometry maps
    layer_aware: bool = True  # stage 2: the real loss does not reach the first i (reassigned) sites
    tau_blocks: int | None = None  # stage 2: i ~ U{0..tau_B}; None = the shifter config's tau_blocks
    stage1_steps: int = 0  # naive only: how many leading steps use stage-1 data
    checkpoint_every: int = 200
    log_every: int = 25
    data: DataSpec = field(default_factory=DataSpec)
    # model shape (fresh models only: stage 1 and naive)
    resolution: int = 32
    channels: tuple[int, ...] = (32, 64, 64)
    shifter_rank: int = 4
    shifter_form: str = "block-shift"
    name: str = "realiz3d-default-trained"

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise UserInputError(f"--stage must be one of {', '.join(STAGES)} or all, got {self.stage!r}")
        if self.steps < 1:
            raise UserInputError(f"--steps must be >= 1, got {self.steps}")
        if self.shifter_form not in ("block-shift", "lora"):
            raise UserInputError(f"--form must be block-shift or lora, got {self.shifter_form!r}")
        if self.tau_blocks is not None and self.tau_blocks < 0:
            raise UserInputError(f"--tau-blocks must be >= 0, got {self.tau_blocks}")


def fresh_model(cfg: TrainConfig) -> Realiz3DModel:
    config = ModelConfig(
        name=cfg.name,
        resolution=cfg.resolution,
        num_views=cfg.data.views,
        default_schedule=DomainSchedule(split=0.4),
        seed=cfg.seed,
    )
    unet_config = default_unet_config(config, config.text_encoder.dim)
    unet_config["block_out_channels"] = tuple(cfg.channels)
    unet_config["norm_num_groups"] = min(8, min(cfg.channels))
    # domain_strength=0: the shifter starts as the identity (block-shift: W_right = 0; lora: e_d = 0)
    # and still receives gradients.
    return build_model(
        config,
        seed=cfg.seed,
        shifter_config=fresh_shifter_config(cfg),
        unet_config=unet_config,
        domain_strength=0.0,
    )


def fresh_shifter_config(cfg: TrainConfig) -> BlockShiftConfig | LoraShifterConfig:
    if cfg.shifter_form == "lora":
        return LoraShifterConfig(rank=cfg.shifter_rank)
    return BlockShiftConfig(rank=cfg.shifter_rank, tau_blocks=cfg.tau_blocks)


def with_fresh_shifter(model: Realiz3DModel, cfg: TrainConfig) -> Realiz3DModel:
    """`model` with a new identity shifter of `cfg`'s form (stage 1 on a base that has another form)."""
    from engines.models.domain_shifter import build_domain_shifter

    model.shifter.remove()
    shifter = build_domain_shifter(fresh_shifter_config(cfg), model.unet.unet)
    model.shifter = shifter
    model.shifter_config = shifter.config
    model.unet.attach_domain_context(shifter.context)
    return model


def named_parameters(model: Realiz3DModel) -> dict[str, torch.nn.Parameter]:
    out = {f"unet.{k}": p for k, p in model.unet.unet.named_parameters()}
    out.update({f"shifter.{k}": p for k, p in model.shifter.named_parameters()})
    if isinstance(model.text_encoder, torch.nn.Module):  # a CLIP encoder stays frozen: not listed
        out.update({f"text.{k}": p for k, p in model.text_encoder.named_parameters()})
    return out


def trainable_names(model: Realiz3DModel, stage: str) -> list[str]:
    names = list(named_parameters(model))
    if stage == "1":  # the Domain Shifter only: the backbone stays bitwise unchanged
        return [n for n in names if n.startswith("shifter.")]
    if stage == "base":  # the pre-trained image model: UNet and text encoder, no shifter
        return [n for n in names if not n.startswith("shifter.")]
    # stage 2 freezes the shifter (and the text encoder); naive never uses the shifter
    return [n for n in names if n.startswith("unet.")]


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


@dataclass
class Batch:
    images: torch.Tensor  # (n, 3, H, W) in [-1, 1]
    captions: list[str]
    cameras: torch.Tensor  # (n, 16)
    geometry: torch.Tensor  # (n, 7, H, W)
    num_views: int
    combos: list[DomainCombo]


def _captions(rng: np.random.Generator, captions: list[str], dropout: float) -> list[str]:
    return ["" if rng.random() < dropout else c for c in captions]


def synthetic_batch(
    rng: np.random.Generator, syn: SyntheticSet, cfg: TrainConfig, with_controls: bool
) -> Batch:
    views = syn.images.shape[1]
    res = syn.images.shape[2]
    if not with_controls:  # stage 1: independent single views, no camera, no geometry
        n = cfg.batch_objects * views
        obj = rng.integers(len(syn), size=n)
        view = rng.integers(views, size=n)
        images = syn.images[obj, view]
        caps = _captions(rng, [syn.captions[i] for i in obj], cfg.caption_dropout)
        return Batch(
            torch.from_numpy(to_model_range(images)),
            caps,
            torch.zeros(n, 16),
            torch.zeros(n, 7, res, res),
            1,
            [SYN] * n,
        )
    obj = rng.integers(len(syn), size=cfg.batch_objects)
    images = syn.images[obj].reshape(-1, res, res, 3)
    cams = syn.cameras[obj].reshape(-1, 16)
    geom = syn.geometry[obj].astype(np.float32)  # (b, V, 7, H, W)
    keep = rng.random(cfg.batch_objects) < cfg.geometry_prob
    geom = geom * keep[:, None, None, None, None]
    caps = []
    for i in obj:
        c = "" if rng.random() < cfg.caption_dropout else syn.captions[i]
        caps += [c] * views
    return Batch(
        torch.from_numpy(to_model_range(images)),
        caps,
        torch.from_numpy(cams),
        torch.from_numpy(geom.reshape(-1, 7, res, res)),
        views,
        [SYN] * len(caps),
    )


def real_batch(rng: np.random.Generator, real: RealSet, cfg: TrainConfig, reassigned: int = 0) -> Batch:
    """Photographs with empty controls; the first `reassigned` block sites run their shifter on S."""
    idx = rng.integers(len(real), size=cfg.batch_real)
    res = real.images.shape[1]
    caps = _captions(rng, [real.captions[i] for i in idx], cfg.caption_dropout)
    combos = [DomainCombo("real", "real", "real", reassigned)] * len(idx)
    return Batch(
        torch.from_numpy(to_model_range(real.images[idx])),
        caps,
        torch.zeros(len(idx), 16),
        torch.zeros(len(idx), 7, res, res),
        1,
        combos,
    )


def diffusion_loss(
    model: Realiz3DModel, scheduler: DDPMScheduler, batch: Batch, gen: torch.Generator, covariate: bool
) -> torch.Tensor:
    n = batch.images.shape[0]
    # One timestep and one noise draw per object: the views of an object are denoised together.
    objects = n // batch.num_views
    t = torch.randint(0, scheduler.config.num_train_timesteps, (objects,), generator=gen)
    t = t.repeat_interleave(batch.num_views)
    noise = torch.randn(batch.images.shape, generator=gen)
    noisy = scheduler.add_noise(batch.images, noise, t)
    ids = None
    if covariate:
        model.shifter.set_unfused()  # the chain itself, so its parameters get gradients
        ids = model.shifter.domain_ids(batch.combos)
    else:
        model.shifter.deactivate()
    text = model.text_encoder.encode(batch.captions)
    pred = model.unet(noisy, t, text, batch.cameras, batch.geometry, ids, num_views=batch.num_views)
    return torch.nn.functional.mse_loss(pred, noise)


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        out: Path,
        init: Path | None = None,
        resume: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        self.cfg, self.out, self.log = cfg, Path(out), log
        self.ckpt = self.out / "checkpoint"
        self.step = 0
        ema_state = opt_state = None
        if (self.ckpt / "state.json").is_file():
            if not resume:
                raise UserInputError(
                    f"{self.ckpt} exists: pass --resume to continue it or choose another --out"
                )
            model, opt_state, ema_state, state = load_checkpoint(self.ckpt)
            if state["stage"] != cfg.stage:
                raise UserInputError(f"{self.ckpt} is a stage {state['stage']} checkpoint, not {cfg.stage}")
            self.step = int(state["step"])
            self.log(f"resuming stage {cfg.stage} from step {self.step}")
        elif cfg.stage in ("1", "2", "naive"):
            if init is None:
                before = {"1": "the base stage", "2": "stage 1", "naive": "the base stage"}[cfg.stage]
                raise UserInputError(
                    f"stage {cfg.stage} needs --init, the model folder {before} wrote (OUT/final)"
                )
            model = load_model(init)
            if cfg.stage == "1" and model.shifter.form != cfg.shifter_form:
                model = with_fresh_shifter(model, cfg)
        elif init is not None:
            model = load_model(init)
        else:
            model = fresh_model(cfg)
        self.model = model
        params = named_parameters(model)
        for p in params.values():
            p.requires_grad_(False)
        self.names = trainable_names(model, cfg.stage)
        self.params = [params[n] for n in self.names]
        for p in self.params:
            p.requires_grad_(True)
        for m in model.modules():
            m.train()
        tau = model.shifter.config.tau_blocks if hasattr(model.shifter.config, "tau_blocks") else None
        self.tau_blocks = min(
            cfg.tau_blocks if cfg.tau_blocks is not None else (tau or model.shifter.num_sites // 2),
            model.shifter.num_sites,
        )
        unet_names = [n for n in self.names if n.startswith("unet.")]
        self.positions = parameter_positions(
            [n.removeprefix("unet.") for n in unet_names], model.shifter.sites
        )
        self.params_by_name = dict(zip(self.names, self.params, strict=True))
        decay = [p for n, p in zip(self.names, self.params, strict=True) if p.ndim > 1]
        no_decay = [p for n, p in zip(self.names, self.params, strict=True) if p.ndim <= 1]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            foreach=True,  # one fused update over the many small tensors (torch's CPU default is a loop)
        )
        if opt_state is not None:
            self.optimizer.load_state_dict(opt_state)
        self.ema = (
            {k: v.clone() for k, v in ema_state.items()}
            if ema_state is not None
            else {n: p.detach().clone() for n, p in zip(self.names, self.params, strict=True)}
        )
        sched_cfg = {k: v for k, v in DEFAULT_SCHEDULER_CONFIG.items() if not k.startswith("_")}
        sched_cfg.pop("set_alpha_to_one", None)
        self.scheduler = DDPMScheduler.from_config(sched_cfg)
        self.syn, self.real = load_datasets(cfg.data)

    def stage_data(self, step: int) -> str:
        """Which data recipe a step uses: base (photos only), stage 1's (no controls) or stage 2's."""
        if self.cfg.stage == "naive":
            return "1" if step < self.cfg.stage1_steps else "2"
        return self.cfg.stage

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        sid = STAGE_IDS[cfg.stage]
        rng = np.random.default_rng([cfg.seed, sid, step])
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        recipe = self.stage_data(step)
        covariate = cfg.stage in ("1", "2")
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(cfg, step)
        self.optimizer.zero_grad(set_to_none=True)
        losses: dict[str, float] = {}
        if recipe != "base":
            syn = synthetic_batch(rng, self.syn, cfg, with_controls=recipe == "2")
            loss_syn = diffusion_loss(self.model, self.scheduler, syn, gen, covariate)
            loss_syn.backward()
            losses["loss_synthetic"] = loss_syn.item()
        split = int(rng.integers(0, self.tau_blocks + 1)) if cfg.stage == "2" else 0
        real = real_batch(rng, self.real, cfg, reassigned=split)
        frozen = self._freeze_before(split) if cfg.stage == "2" and cfg.layer_aware else []
        try:
            loss_real = diffusion_loss(self.model, self.scheduler, real, gen, covariate)
            loss_real.backward()
        finally:
            for p in frozen:
                p.requires_grad_(True)
        losses["loss_real"] = loss_real.item()
        if cfg.stage == "2":
            losses["reassigned_sites"] = float(split)
        torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            d = min(cfg.ema_decay, (1 + step) / (10 + step))
            for n, p in zip(self.names, self.params, strict=True):
                self.ema[n].mul_(d).add_(p.detach(), alpha=1 - d)
        return losses

    def _freeze_before(self, split: int) -> list[torch.nn.Parameter]:
        """Layer-aware training: the real loss of this step gives the first `split` sites (and what runs
        before them) no gradient. Returns the parameters to unfreeze after the backward pass."""
        frozen = [self.params_by_name["unet." + n] for n in frozen_before_site(self.positions, split)]
        for p in frozen:
            p.requires_grad_(False)
        return frozen

    def save(self) -> None:
        self.model.shifter.invalidate_fused()
        save_checkpoint(
            self.ckpt,
            self.model,
            self.optimizer,
            self.ema,
            {"step": self.step, "stage": self.cfg.stage, "config": json.loads(json.dumps(asdict(self.cfg)))},
        )

    def export(self, folder: Path) -> Path:
        """Write the EMA weights as a model folder."""
        params = named_parameters(self.model)
        backup = {n: params[n].detach().clone() for n in self.names}
        with torch.no_grad():
            for n in self.names:
                params[n].copy_(self.ema[n])
        self.model.shifter.invalidate_fused()
        save_model(self.model, folder)
        with torch.no_grad():
            for n in self.names:
                params[n].copy_(backup[n])
        return folder

    def run(self) -> Path:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        logf = (self.out / "log.jsonl").open("a")
        t0, start_step = time.perf_counter(), self.step
        window: list[dict[str, float]] = []
        while self.step < cfg.steps:
            losses = self.train_step(self.step)
            self.step += 1
            window.append(losses)
            logf.write(json.dumps({"step": self.step, **losses}) + "\n")
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                rate = (self.step - start_step) / (time.perf_counter() - t0)
                mean = {k: sum(w.get(k, 0.0) for w in window) / len(window) for k in window[-1]}
                eta = (cfg.steps - self.step) / max(rate, 1e-9)
                figures = " ".join(f"{k.removeprefix('loss_')} {v:.4f}" for k, v in mean.items())
                self.log(
                    f"stage {cfg.stage} step {self.step}/{cfg.steps} {figures} "
                    f"lr {lr_at(cfg, self.step - 1):.2e} {rate:.2f} it/s eta {eta / 60:.1f} min"
                )
                logf.flush()
                window = []
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
        logf.close()
        final = self.export(self.out / "final")
        self.log(f"stage {cfg.stage} done: model folder {final}")
        return final


def train_all(
    cfg: TrainConfig,
    out: Path,
    base_steps: int,
    stage1_steps: int,
    resume: bool,
    forms: tuple[str, ...] = ("block-shift",),
    log=print,
) -> dict[str, Path]:
    """base (OUT/base) -> stage 1 -> stage 2 for each Domain Shifter form (block-shift: OUT/stage1,
    OUT/stage2; lora: OUT/lora/stage1, OUT/lora/stage2), and the naive baseline from the same base on
    the same budget (OUT/naive). `cfg.steps` is the budget after the base stage."""

    def stage(name: str, steps: int, **kw) -> TrainConfig:
        return TrainConfig(**{**asdict(cfg), "stage": name, "steps": steps, "data": cfg.data, **kw})

    paths = {"base": Trainer(stage("base", base_steps), out / "base", resume=resume, log=log).run()}
    for form in forms:
        root = out if form == "block-shift" else out / form
        key = "" if form == "block-shift" else f"{form}_"
        s1 = stage("1", stage1_steps, shifter_form=form)
        paths[f"{key}stage1"] = Trainer(s1, root / "stage1", init=paths["base"], resume=resume, log=log).run()
        s2 = stage("2", cfg.steps - stage1_steps, shifter_form=form)
        paths[f"{key}stage2"] = Trainer(
            s2, root / "stage2", init=paths[f"{key}stage1"], resume=resume, log=log
        ).run()
    nv = stage("naive", cfg.steps, stage1_steps=stage1_steps)
    paths["naive"] = Trainer(nv, out / "naive", init=paths["base"], resume=resume, log=log).run()
    return paths
