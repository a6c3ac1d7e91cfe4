"""The denoising loop, written as a per-job state machine so several jobs can share UNet calls.

`DenoiseJob` holds one job's latents, scheduler (its own instance: multistep solvers keep history),
conditioning and domain schedule. Each step is two halves: `unet_call()` says what the UNet must compute
(classifier-free guidance doubles the batch: the unconditional object then the conditional one, views of
each contiguous) and under which domain combo; `advance(noise_pred)` applies guidance and the scheduler
step. The engine loop (engines/runtime/engine.py) advances one job or many from its executor's outputs.
Sampling imports no runtime: the runners call into it, not the other way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.utils import logging as diffusers_logging

from engines.runtime.step_costs import full_step
from engines.types import DomainCombo, DomainSchedule, UNetInputs

diffusers_logging.set_verbosity_error()  # scheduler configs carry keys other schedulers ignore
log = logging.getLogger(__name__)

SCHEDULERS = {"ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler}


def make_scheduler(name: str, config: dict):
    """A fresh scheduler instance from the model folder's scheduler config."""
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    if name == "dpm++":
        cfg.update(algorithm_type="dpmsolver++", solver_order=2)
        cfg.pop("clip_sample", None)
    elif name != "ddim":
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    return SCHEDULERS[name].from_config(cfg)


@dataclass
class KnownRegion:
    """Samples held while the rest is generated: masked diffusion in the RePaint / blended-latent style.

    Before the first step and after every step the known region of the latents is replaced by the known
    clean sample noised to the level the latents are at (the scheduler's own `add_noise`, fresh noise each
    time from `generator`); after the last step by the clean sample itself. The model sees the known
    region at every step, so what it generates next to it continues it. No retraining; pixel and latent
    models alike (for a latent model `sample` is the VAE's encoding and `mask` its cells).
    """

    sample: torch.Tensor  # (views, C, H, W) the clean known sample, in the job's latent space
    mask: torch.Tensor  # (views, 1, H, W) float: 1 known (held), 0 generated
    generator: torch.Generator  # CPU generator: the same seed gives the same result on any device

    def blend(self, scheduler: object, latents: torch.Tensor, timestep: int | None) -> torch.Tensor:
        """`latents` with the known region replaced: noised to `timestep`, or clean when None (the end)."""
        known = self.sample
        if timestep is not None:
            noise = torch.randn(known.shape, generator=self.generator, dtype=torch.float32).to(known)
            t = torch.tensor([timestep], dtype=torch.long, device=known.device)
            known = scheduler.add_noise(known, noise, t)  # type: ignore[attr-defined]
        return self.mask * known + (1.0 - self.mask) * latents


@dataclass
class DenoiseJob:
    scheduler: object
    latents: torch.Tensor  # (views, C, H, W) float32
    text: torch.Tensor  # (views, T, D) conditional
    uncond_text: torch.Tensor  # (views, T, D)
    cameras: torch.Tensor  # (views, 16)
    geometry: torch.Tensor | None  # (views, G, H, W)
    guidance_scale: float
    schedule: DomainSchedule
    num_steps: int
    step_index: int = 0
    timesteps: list[int] = field(default_factory=list)
    #: held samples (inpainting); None generates everything
    known: KnownRegion | None = None
    #: step caching (engines/models/deep_cache.py): the whole UNet at most every `cache_interval` steps,
    #: its shallow branch on the cached deep feature between (1: every step full)
    cache_interval: int = 1
    #: the deep feature of the last full step (rows of this job's call), its step and domain combo
    deep: torch.Tensor | None = field(default=None, repr=False)
    deep_step: int = -1
    deep_combo: DomainCombo | None = None

    def __post_init__(self) -> None:
        self.scheduler.set_timesteps(self.num_steps, device=self.latents.device)  # type: ignore[attr-defined]
        self.timesteps = [int(t) for t in self.scheduler.timesteps]  # type: ignore[attr-defined]
        self.latents = self.latents * float(self.scheduler.init_noise_sigma)  # type: ignore[attr-defined]
        self.combos = self.schedule.combos(self.num_steps)
        if self.known is not None:
            self.latents = self.known.blend(self.scheduler, self.latents, self.timesteps[0])

    @property
    def num_views(self) -> int:
        return self.latents.shape[0]

    @property
    def uses_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def images_per_call(self) -> int:
        """Rows of this job in one UNet call: its views, twice with classifier-free guidance."""
        return self.num_views * (2 if self.uses_cfg else 1)

    @property
    def done(self) -> bool:
        return self.step_index >= self.num_steps

    @property
    def combo(self) -> DomainCombo:
        return self.combos[self.step_index]

    @property
    def caches(self) -> bool:
        return self.cache_interval > 1

    @property
    def step_kind(self) -> str:
        """What the next UNet call computes: "full" (the whole UNet) or "shallow" (its shallow branch on
        the cached deep feature). Full every `cache_interval` steps, and whenever the domain assignment
        differs from the one the cached feature was made under (a step split or block split switching)."""
        deep_step = self.deep_step if self.deep is not None else -1
        if full_step(self.step_index, self.cache_interval, self.combo, deep_step, self.deep_combo):
            return "full"
        return "shallow"

    def unet_call(self) -> UNetInputs:
        t = self.timesteps[self.step_index]
        x = self.scheduler.scale_model_input(self.latents, t)  # type: ignore[attr-defined]
        if self.uses_cfg:
            x = torch.cat([x, x])
            text = torch.cat([self.uncond_text, self.text])
            cams = torch.cat([self.cameras, self.cameras])
            geom = None if self.geometry is None else torch.cat([self.geometry, self.geometry])
        else:
            text, cams, geom = self.text, self.cameras, self.geometry
        timestep = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        return UNetInputs(x, timestep, text, cams, geom, self.num_views)

    def advance(self, noise_pred: torch.Tensor, deep: torch.Tensor | None = None) -> None:
        """One step from the UNet's output; `deep`: the deep feature a full step computed (kept for the
        shallow steps after it)."""
        if deep is not None:
            self.deep, self.deep_step, self.deep_combo = deep, self.step_index, self.combo
        if self.uses_cfg:
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + self.guidance_scale * (cond - uncond)
        t = self.timesteps[self.step_index]
        self.latents = self.scheduler.step(noise_pred, t, self.latents, return_dict=False)[0]  # type: ignore[attr-defined]
        self.step_index += 1
        if self.done:
            self.deep = None  # the cached feature is a full activation: let it go with the job
        if self.known is not None:
            # the latents are now at the next timestep's noise level (clean after the last step)
            nxt = self.timesteps[self.step_index] if self.step_index < self.num_steps else None
            self.latents = self.known.blend(self.scheduler, self.latents, nxt)
