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

Every step's batch and noise come from generators seeded by (seed, stage, step) (and the process rank
beyond rank 0), so a resumed run takes exactly the path an uninterrupted one would.

Data: a DATA_DIR (dataset.py's format; `--data`), or the procedural toy data written as one
(toy_dataset.py). The loss is computed in the model's own space: a latent model's images go through its
VAE (sampled latent x scaling factor), a pixel model's stay pixels; noise schedule and prediction type
come from the folder's scheduler config. Processes and nodes: Hugging Face `accelerate` (`accelerate
launch`); the model is wrapped in DDP by `Accelerator.prepare`, bf16 autocast on CUDA.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn

from engines.errors import UserInputError
from engines.models.config import GEOMETRY_CHANNELS, ModelConfig
from engines.models.default_model import build_model
from engines.models.model_folder import load_model, save_model
from engines.models.realiz3d_model import Realiz3DModel
from engines.models.shifter_config import BlockShiftConfig, LoraShifterConfig
from engines.models.unet import default_unet_config
from engines.training.checkpoint import load_checkpoint, save_checkpoint
from engines.training.data import DataSpec, to_model_range
from engines.training.dataset import Dataset, Layout, RealImages, SyntheticObjects, open_dataset
from engines.training.layer_positions import frozen_before_site, parameter_positions
from engines.training.toy_dataset import toy_data_dir
from engines.types import DomainCombo, DomainSchedule, uniform_combo

STAGES = ("base", "1", "2", "naive")
STAGE_IDS = {"1": 1, "2": 2, "naive": 3, "base": 4}
TRAIN_SETS = ("adapters", "unet", "all")
# What each stage trains unless --train says otherwise: base the image model (UNet + text encoder),
# stage 1 only the Domain Shifter, stage 2 and naive the UNet.
DEFAULT_TRAIN = {"base": "all", "1": "adapters", "2": "unet", "naive": "unet"}
PRECISIONS = ("auto", "bf16", "fp32")
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
    # Wall-clock limits (a GPU lent for minutes): the stage stops at `max_seconds` (its steps refitted to
    # the time, so the learning-rate schedule still ends) and writes its checkpoint and OUT/latest (the EMA
    # weights as a model folder) every `checkpoint_seconds`, so a run killed from outside leaves weights.
    max_seconds: float | None = None
    checkpoint_seconds: float | None = None
    log_every: int = 25
    data: DataSpec = field(default_factory=DataSpec)  # the toy data, when data_dir is None
    data_dir: str | None = None  # a DATA_DIR (dataset.py's format)
    train: str | None = None  # adapters | unet | all; None = the stage's own set (DEFAULT_TRAIN)
    gradient_checkpointing: bool = False
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 elsewhere
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
        for name, value in (
            ("--max-minutes", self.max_seconds),
            ("--checkpoint-minutes", self.checkpoint_seconds),
        ):
            if value is not None and not value > 0:
                raise UserInputError(f"{name} must be > 0, got {value / 60:g}")
        if self.precision not in PRECISIONS:
            raise UserInputError(
                f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        train = self.train or DEFAULT_TRAIN[self.stage]
        if train not in TRAIN_SETS:
            raise UserInputError(f"--train must be one of {', '.join(TRAIN_SETS)}, got {train!r}")
        if self.stage == "1" and train != "adapters":
            raise UserInputError(
                "stage 1 trains only the Domain Shifter (the backbone stays frozen): --train adapters"
            )
        if self.stage != "1" and train == "adapters":
            raise UserInputError(
                f"--train adapters is stage 1's set (the Domain Shifter); stage {self.stage} "
                f"{'freezes' if self.stage == '2' else 'does not use'} it: --train unet or all"
            )

    @property
    def trainable(self) -> str:
        """The trainable set: --train, or the stage's own (DEFAULT_TRAIN)."""
        return self.train or DEFAULT_TRAIN[self.stage]


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
    out.update({f"text.{k}": p for k, p in model.text_encoder.named_parameters()})  # hashed words or CLIP
    return out


def trainable_names(model: Realiz3DModel, stage: str, train: str | None = None) -> list[str]:
    """adapters: the Domain Shifter only (stage 1: the backbone stays bitwise unchanged); unet: the UNet
    (stage 2 freezes the shifter and the text encoder; naive never uses the shifter); all: UNet and text
    encoder (the base stage's pre-trained image model)."""
    train = train or DEFAULT_TRAIN[stage]
    names = list(named_parameters(model))
    if train == "adapters":
        return [n for n in names if n.startswith("shifter.")]
    if train == "all":
        return [n for n in names if not n.startswith("shifter.")]
    return [n for n in names if n.startswith("unet.")]


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


@dataclass
class Batch:
    images: torch.Tensor  # (n, 3, H, W) in [-1, 1], at the model's resolution
    captions: list[str]
    cameras: torch.Tensor  # (n, 16)
    geometry: torch.Tensor  # (n, 7, h, w) at the UNet's input resolution
    num_views: int
    combos: list[DomainCombo]


def _captions(rng: np.random.Generator, captions: list[str], dropout: float) -> list[str]:
    return ["" if rng.random() < dropout else c for c in captions]


def synthetic_batch(
    rng: np.random.Generator, syn: SyntheticObjects, cfg: TrainConfig, with_controls: bool
) -> Batch:
    views, g = syn.views, syn.layout.geometry_size
    if not with_controls:  # stage 1: independent single views, no camera, no geometry
        n = cfg.batch_objects * views
        obj = rng.integers(len(syn), size=n)
        view = rng.integers(views, size=n)
        images = np.stack([syn.load(int(o))[0][v] for o, v in zip(obj, view, strict=True)])
        caps = _captions(rng, [syn.captions[i] for i in obj], cfg.caption_dropout)
        return Batch(
            torch.from_numpy(to_model_range(images)),
            caps,
            torch.zeros(n, 16),
            torch.zeros(n, GEOMETRY_CHANNELS, g, g),
            1,
            [SYN] * n,
        )
    obj = rng.integers(len(syn), size=cfg.batch_objects)
    loaded = [syn.load(int(o)) for o in obj]
    images = np.concatenate([im for im, _ in loaded])
    cams = np.concatenate([syn.cameras[o] for o in obj])
    keep = rng.random(cfg.batch_objects) < cfg.geometry_prob
    empty = np.zeros((views, GEOMETRY_CHANNELS, g, g), np.float32)
    geom = np.concatenate(
        [gm if k and gm is not None else empty for (_, gm), k in zip(loaded, keep, strict=True)]
    )
    caps = []
    for i in obj:
        c = "" if rng.random() < cfg.caption_dropout else syn.captions[i]
        caps += [c] * views
    return Batch(
        torch.from_numpy(to_model_range(images)),
        caps,
        torch.from_numpy(cams),
        torch.from_numpy(geom.astype(np.float32)),
        views,
        [SYN] * len(caps),
    )


def real_batch(rng: np.random.Generator, real: RealImages, cfg: TrainConfig, reassigned: int = 0) -> Batch:
    """Images with empty controls; the first `reassigned` block sites run their shifter on S."""
    idx = rng.integers(len(real), size=cfg.batch_real)
    g = real.layout.geometry_size
    caps = _captions(rng, [real.captions[i] for i in idx], cfg.caption_dropout)
    combos = [DomainCombo("real", "real", "real", reassigned)] * len(idx)
    return Batch(
        torch.from_numpy(to_model_range(np.stack([real.load(int(i)) for i in idx]))),
        caps,
        torch.zeros(len(idx), 16),
        torch.zeros(len(idx), GEOMETRY_CHANNELS, g, g),
        1,
        combos,
    )


def noise_scheduler(model: Realiz3DModel) -> DDPMScheduler:
    """The forward process of the model's own scheduler config (betas, timesteps, prediction type)."""
    allowed = set(inspect.signature(DDPMScheduler.__init__).parameters) - {"self"}
    scheduler = DDPMScheduler(**{k: v for k, v in model.scheduler_config.items() if k in allowed})
    if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
        raise UserInputError(
            f"scheduler prediction_type {scheduler.config.prediction_type!r}: training supports epsilon "
            "and v_prediction"
        )
    return scheduler


def model_inputs(
    model: Realiz3DModel, scheduler: DDPMScheduler, batch: Batch, gen: torch.Generator, covariate: bool
) -> dict:
    """The noised sample, target and controls of one UNet call, in the model's space on its device.

    A latent model's images are encoded by its VAE (a latent sampled from the posterior, times the
    VAE's scaling factor). Every random draw comes from `gen` on the CPU: the same on any device."""
    device = model.device
    x = batch.images.to(device)
    if model.vae is not None:
        with torch.no_grad():
            posterior = model.vae.encode(x.to(model.vae.dtype)).latent_dist
            x = posterior.sample(generator=gen).float() * model.vae.config.scaling_factor
    # One timestep and one noise draw per object: the views of an object are denoised together.
    objects = x.shape[0] // batch.num_views
    t = torch.randint(0, scheduler.config.num_train_timesteps, (objects,), generator=gen)
    t = t.repeat_interleave(batch.num_views).to(device)
    noise = torch.randn(x.shape, generator=gen).to(device)
    noisy = scheduler.add_noise(x, noise, t)
    target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(x, noise, t)
    ids = None
    if covariate:
        model.shifter.set_unfused()  # the chain itself, so its parameters get gradients
        ids = model.shifter.domain_ids(batch.combos, device=device)
    else:
        model.shifter.deactivate()
    return {
        "noisy": noisy,
        "timesteps": t,
        "captions": batch.captions,
        "cameras": batch.cameras.to(device),
        "geometry": batch.geometry.to(device),
        "domain_ids": ids,
        "num_views": batch.num_views,
        "target": target,
    }


class DiffusionObjective(nn.Module):
    """Text encoder + multi-view UNet (+ the Domain Shifter's hooks) -> the diffusion loss: one module, so
    `Accelerator.prepare` can wrap everything that trains in DDP (the VAE stays outside: frozen)."""

    def __init__(self, model: Realiz3DModel) -> None:
        super().__init__()
        self.unet, self.shifter, self.text_encoder = model.unet, model.shifter, model.text_encoder

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        captions: list[str],
        cameras: torch.Tensor,
        geometry: torch.Tensor,
        domain_ids: torch.Tensor | None,
        num_views: int,
        target: torch.Tensor,
    ) -> torch.Tensor:
        text_trains = any(p.requires_grad for p in self.text_encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and text_trains):  # a frozen CLIP keeps no graph
            text = self.text_encoder.encode(captions)
        pred = self.unet(noisy, timesteps, text, cameras, geometry, domain_ids, num_views=num_views)
        return F.mse_loss(pred.float(), target.float())


def diffusion_loss(
    model: Realiz3DModel, scheduler: DDPMScheduler, batch: Batch, gen: torch.Generator, covariate: bool
) -> torch.Tensor:
    inputs = model_inputs(model, scheduler, batch, gen, covariate)
    return DiffusionObjective(model)(**inputs)


@contextmanager
def domain_ids_bound(model: Realiz3DModel, ids: torch.Tensor | None) -> Iterator[None]:
    """Bind a call's domain ids for its backward pass. Gradient checkpointing re-runs blocks during
    backward, and the Domain Shifter's shifted forwards (on those blocks) read the ids from the shifter's
    context, which `MultiViewUNet.forward` clears when the call returns."""
    ctx = model.shifter.context
    ctx.ids = ids
    try:
        yield
    finally:
        ctx.ids = None


def parameters_digest(params: dict[str, torch.Tensor]) -> str:
    """sha256 over the names and exact bytes of `params` (processes compare their weights by it)."""
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode())
        h.update(params[name].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def make_accelerator(cfg: TrainConfig):  # noqa: ANN201 - accelerate.Accelerator (an optional dependency)
    """One process of `accelerate launch` (or a plain single process): DDP, device, bf16 autocast."""
    try:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs
    except ImportError:  # pragma: no cover - dependency message
        raise UserInputError(
            "training needs Hugging Face accelerate: pip install 'realiz3d-serve[train]'"
        ) from None
    cuda = torch.cuda.is_available()
    precision = {"auto": "bf16" if cuda else "no", "bf16": "bf16", "fp32": "no"}[cfg.precision]
    # Stage 2's layer-aware real pass leaves the first i sites' parameters without a gradient.
    unused = cfg.stage == "2" and cfg.layer_aware
    return Accelerator(
        mixed_precision=precision,
        cpu=not cuda,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused)],
    )


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        out: Path,
        init: Path | None = None,
        resume: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        self.cfg, self.out = cfg, Path(out)
        self.acc = make_accelerator(cfg)
        self.log = log if self.acc.is_main_process else (lambda _msg: None)
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
        self.dataset = self._open_data()
        params = named_parameters(model)
        for p in params.values():
            p.requires_grad_(False)
        self.names = trainable_names(model, cfg.stage, cfg.trainable)
        self.params = [params[n] for n in self.names]
        for p in self.params:
            p.requires_grad_(True)
        for m in model.modules():
            m.train()
        if model.vae is not None:
            model.vae.eval()
        if cfg.gradient_checkpointing:
            model.unet.unet.enable_gradient_checkpointing()
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
        model.to(self.acc.device)  # fp32 weights; bf16 is autocast, not a cast of the weights
        self.objective = self.acc.prepare(DiffusionObjective(model))
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
            {k: v.to(self.acc.device).clone() for k, v in ema_state.items()}
            if ema_state is not None
            else {n: p.detach().clone() for n, p in zip(self.names, self.params, strict=True)}
        )
        self.scheduler = noise_scheduler(model)
        self.log(
            f"stage {cfg.stage}: {self.dataset.describe()}; training {cfg.trainable} "
            f"({sum(p.numel() for p in self.params):,} parameters) on {self.acc.num_processes} process(es), "
            f"{self.acc.device}, mixed precision {self.acc.mixed_precision}"
        )

    def _open_data(self) -> Dataset:
        cfg, config = self.cfg, self.model.config
        root = Path(cfg.data_dir) if cfg.data_dir is not None else None
        if root is None:
            with self.acc.main_process_first():  # one process writes the cached toy DATA_DIR
                root = toy_data_dir(cfg.data)
        layout = Layout(config.resolution, config.unet_input_factor, config.camera.convention)
        data = open_dataset(root, layout)
        if data.real is None:
            raise UserInputError(f"{root}: stage {cfg.stage} needs real images (real/metadata.jsonl)")
        if cfg.stage != "base" and data.synthetic is None:
            raise UserInputError(
                f"{root}: stage {cfg.stage} needs synthetic objects (synthetic/metadata.jsonl)"
            )
        return data

    @property
    def syn(self) -> SyntheticObjects:
        return self.dataset.synthetic  # type: ignore[return-value]

    @property
    def real(self) -> RealImages:
        return self.dataset.real  # type: ignore[return-value]

    def stage_data(self, step: int) -> str:
        """Which data recipe a step uses: base (photos only), stage 1's (no controls) or stage 2's."""
        if self.cfg.stage == "naive":
            return "1" if step < self.cfg.stage1_steps else "2"
        return self.cfg.stage

    def _seed(self, step: int) -> list[int]:
        key = [self.cfg.seed, STAGE_IDS[self.cfg.stage], step]
        rank = self.acc.process_index
        return key + [rank] if rank else key  # every process draws its own batch

    def _loss_backward(self, batch: Batch, gen: torch.Generator, covariate: bool) -> float:
        inputs = model_inputs(self.model, self.scheduler, batch, gen, covariate)
        loss = self.objective(**inputs)
        with domain_ids_bound(self.model, inputs["domain_ids"]):
            self.acc.backward(loss)
        return loss.item()

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        rng = np.random.default_rng(self._seed(step))
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        recipe = self.stage_data(step)
        covariate = cfg.stage in ("1", "2")
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(cfg, step)
        self.optimizer.zero_grad(set_to_none=True)
        losses: dict[str, float] = {}
        if recipe != "base":
            syn = synthetic_batch(rng, self.syn, cfg, with_controls=recipe == "2")
            with self.acc.no_sync(self.objective):  # gradients are reduced once, after the real pass
                losses["loss_synthetic"] = self._loss_backward(syn, gen, covariate)
        split = int(rng.integers(0, self.tau_blocks + 1)) if cfg.stage == "2" else 0
        real = real_batch(rng, self.real, cfg, reassigned=split)
        frozen = self._freeze_before(split) if cfg.stage == "2" and cfg.layer_aware else []
        try:
            losses["loss_real"] = self._loss_backward(real, gen, covariate)
        finally:
            for p in frozen:
                p.requires_grad_(True)
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
        if self.acc.is_main_process:
            self.model.shifter.invalidate_fused()
            save_checkpoint(
                self.ckpt,
                self.model,
                self.optimizer,
                self.ema,
                {
                    "step": self.step,
                    "stage": self.cfg.stage,
                    "config": json.loads(json.dumps(asdict(self.cfg))),
                },
            )
        self.acc.wait_for_everyone()

    def export(self, folder: Path) -> Path:
        """Write the EMA weights as a model folder (the main process; the others wait for it)."""
        if self.acc.is_main_process:
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
        self.acc.wait_for_everyone()
        return folder

    def _mean_over_processes(self, losses: dict[str, float]) -> dict[str, float]:
        if self.acc.num_processes == 1:
            return losses
        keys = sorted(losses)
        values = self.acc.reduce(torch.tensor([losses[k] for k in keys], device=self.acc.device), "mean")
        return dict(zip(keys, values.tolist(), strict=True))

    def check_processes_agree(self) -> list[str]:
        """Every process's digest of its trainable weights (written to OUT/processes.json); they must be
        equal, or the processes have drifted apart (RuntimeError)."""
        from accelerate.utils import gather_object

        digests = gather_object([parameters_digest(self.params_by_name)])
        if self.acc.is_main_process:
            doc = {"num_processes": self.acc.num_processes, "step": self.step, "digests": digests}
            (self.out / "processes.json").write_text(json.dumps(doc, indent=2))
        if len(set(digests)) != 1:
            raise RuntimeError(
                f"the {len(digests)} training processes ended with different weights: {digests}"
            )
        return digests

    def _agreed(self, flag: bool) -> bool:
        """True if any process says so: every process stops or checkpoints at the same step."""
        if self.acc.num_processes == 1:
            return flag
        return bool(self.acc.reduce(torch.tensor([float(flag)], device=self.acc.device), "sum").item() > 0)

    def _fit_steps(self, steps_per_s: float, seconds_left: float) -> None:
        """Shorten the stage to the steps that fit the time left at `steps_per_s` (never lengthen it)."""
        fit = self.step + int(steps_per_s * seconds_left)
        if self.acc.num_processes > 1:
            fit = int(self.acc.gather(torch.tensor([fit], device=self.acc.device)).min().item())
        if fit < self.cfg.steps:
            self.cfg.steps = max(self.step + 1, fit)
            self.cfg.warmup = min(self.cfg.warmup, max(1, self.cfg.steps // 10))  # a short stage still decays
            self.log(f"stage {self.cfg.stage}: time budget: {self.cfg.steps} steps ({steps_per_s:.2f} it/s)")

    def _checkpoint_latest(self) -> None:
        """The resumable checkpoint and OUT/latest, the EMA weights as a model folder."""
        self.save()
        latest = self.export(self.out / "latest")
        if self.acc.is_main_process:
            (self.out / "latest.json").write_text(
                json.dumps(
                    {
                        "stage": self.cfg.stage,
                        "step": self.step,
                        "steps": self.cfg.steps,
                        "model": str(latest),
                    }
                )
            )

    def run(self) -> Path:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        logf = (self.out / "log.jsonl").open("a") if self.acc.is_main_process else None
        t0, start_step = time.perf_counter(), self.step
        deadline = t0 + cfg.max_seconds if cfg.max_seconds is not None else None
        # Steps are fitted to the time budget after 10 steps (rate with the warm-up in it: cautious), then
        # at a quarter and at half of the budget (the rate since the first fit).
        fits = [0.25, 0.5]
        first_fit: tuple[int, float] | None = None
        last_checkpoint = t0
        window: list[dict[str, float]] = []
        while self.step < cfg.steps:
            losses = self._mean_over_processes(self.train_step(self.step))
            self.step += 1
            now = time.perf_counter()
            out_of_time = False
            if deadline is not None:
                if first_fit is None and self.step - start_step >= 10:
                    self._fit_steps((self.step - start_step) / (now - t0), deadline - now)
                    first_fit = (self.step, now)
                elif first_fit is not None and fits and now - t0 >= fits[0] * cfg.max_seconds:
                    fits.pop(0)
                    self._fit_steps((self.step - first_fit[0]) / (now - first_fit[1]), deadline - now)
                out_of_time = self._agreed(now >= deadline)
            periodic = cfg.checkpoint_seconds is not None and self._agreed(
                now - last_checkpoint >= cfg.checkpoint_seconds
            )
            window.append(losses)
            if logf is not None:
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
                if logf is not None:
                    logf.flush()
                window = []
            if periodic:
                self._checkpoint_latest()
                last_checkpoint = time.perf_counter()
            elif self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or out_of_time:
                self.save()
            if out_of_time and self.step < cfg.steps:
                self.log(
                    f"stage {cfg.stage}: time budget ({cfg.max_seconds:.0f} s) spent at step {self.step}"
                )
                break
        if logf is not None:
            logf.close()
        self.check_processes_agree()
        final = self.export(self.out / "final")
        if self.acc.is_main_process:  # the finished weights supersede the periodic copy
            shutil.rmtree(self.out / "latest", ignore_errors=True)
            (self.out / "latest.json").unlink(missing_ok=True)
        self.acc.wait_for_everyone()
        self.log(f"stage {cfg.stage} done at step {self.step}: model folder {final}")
        return final


class StageBudget:
    """A run's wall-clock budget (`cfg.max_seconds` of `train_all` / `train_from_pretrained`) shared among
    its stages in proportion to their work (a two-pass step, synthetic + real, counts twice a base step's
    one pass). Each stage's share is taken when it starts, from the time then left, so the time an
    earlier stage did not use (or the data it had to generate first) moves the later ones."""

    def __init__(self, seconds: float | None, work: list[float]) -> None:
        self.deadline = time.perf_counter() + seconds if seconds is not None else None
        self.work_left = float(sum(work))

    def run(self, trainer: Trainer, work: float) -> Path:
        if self.deadline is not None:
            left = max(1.0, self.deadline - time.perf_counter())
            trainer.cfg.max_seconds = left * work / max(self.work_left, work)
        self.work_left -= work
        return trainer.run()


def _stage_config(cfg: TrainConfig, name: str, steps: int, **kw) -> TrainConfig:
    return TrainConfig(
        **{**asdict(cfg), "stage": name, "steps": steps, "data": cfg.data, "max_seconds": None, **kw}
    )


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
    the same budget (OUT/naive). `cfg.steps` is the budget after the base stage; `cfg.max_seconds`, if
    set, bounds the whole run's wall time (StageBudget)."""
    stage = functools.partial(_stage_config, cfg)
    stage2_steps = cfg.steps - stage1_steps
    budget = StageBudget(
        cfg.max_seconds, [base_steps, *[2 * stage1_steps, 2 * stage2_steps] * len(forms), 2 * cfg.steps]
    )
    paths = {
        "base": budget.run(
            Trainer(stage("base", base_steps), out / "base", resume=resume, log=log), base_steps
        )
    }
    for form in forms:
        root = out if form == "block-shift" else out / form
        key = "" if form == "block-shift" else f"{form}_"
        s1 = stage("1", stage1_steps, shifter_form=form, train=None)  # stage 1: the shifter only
        trainer = Trainer(s1, root / "stage1", init=paths["base"], resume=resume, log=log)
        paths[f"{key}stage1"] = budget.run(trainer, 2 * stage1_steps)
        s2 = stage("2", stage2_steps, shifter_form=form)
        trainer = Trainer(s2, root / "stage2", init=paths[f"{key}stage1"], resume=resume, log=log)
        paths[f"{key}stage2"] = budget.run(trainer, 2 * stage2_steps)
    nv = stage("naive", cfg.steps, stage1_steps=stage1_steps)
    paths["naive"] = budget.run(
        Trainer(nv, out / "naive", init=paths["base"], resume=resume, log=log), 2 * cfg.steps
    )
    return paths


def train_from_pretrained(
    cfg: TrainConfig, out: Path, init: Path, stage1_steps: int, resume: bool, log=print
) -> dict[str, Path]:
    """The method on a pre-trained (e.g. imported SD/MVDream) model: stage 1 (OUT/stage1, `stage1_steps`)
    then stage 2 (OUT/stage2, the rest of `cfg.steps`), within `cfg.max_seconds` if set."""
    stage = functools.partial(_stage_config, cfg)
    stage2_steps = cfg.steps - stage1_steps
    budget = StageBudget(cfg.max_seconds, [stage1_steps, stage2_steps])
    s1 = budget.run(
        Trainer(stage("1", stage1_steps, train=None), out / "stage1", init=init, resume=resume, log=log),
        stage1_steps,
    )
    s2 = budget.run(
        Trainer(stage("2", stage2_steps), out / "stage2", init=s1, resume=resume, log=log), stage2_steps
    )
    return {"stage1": s1, "stage2": s2}
