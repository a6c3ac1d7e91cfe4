"""`Realiz3DModel`: everything one model folder holds, assembled in memory."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL
from torch import nn

from engines.models.config import ModelConfig
from engines.models.domain_shifter import DomainShifter
from engines.models.shifter_config import DomainShifterConfig
from engines.models.text_encoder import ClipTextEncoder, HashedWordTextEncoder
from engines.models.unet import MultiViewUNet

DEFAULT_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "clip_sample": True,
    "set_alpha_to_one": True,
    "timestep_spacing": "trailing",
}


@dataclass
class Realiz3DModel:
    config: ModelConfig
    unet: MultiViewUNet
    shifter: DomainShifter
    shifter_config: DomainShifterConfig
    text_encoder: HashedWordTextEncoder | ClipTextEncoder
    scheduler_config: dict = field(default_factory=lambda: dict(DEFAULT_SCHEDULER_CONFIG))
    vae: AutoencoderKL | None = None

    def __post_init__(self) -> None:
        self.unet.attach_domain_context(self.shifter.context)

    def modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = [self.unet, self.shifter, self.text_encoder]
        if self.vae is not None:
            mods.append(self.vae)
        return mods

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Realiz3DModel:
        """Move every part; fused weights are recomputed lazily on the new device/dtype."""
        self.shifter.invalidate_fused()
        for m in self.modules():
            m.to(device=device, dtype=dtype)
        return self

    def move_denoiser(self, device: torch.device | str) -> Realiz3DModel:
        """Move only the UNet and its Domain Shifter (the text encoder and VAE stay): a compiled backend
        whose engines are built no longer needs the torch UNet on the GPU, and later exports run from
        wherever it is."""
        self.shifter.invalidate_fused()
        self.unet.to(device)
        self.shifter.to(device)
        return self

    def denoiser_copy(self) -> Realiz3DModel:
        """This model with a private copy of its UNet and Domain Shifter: new modules, hooks, mode, domain
        context and tensor objects, over the same storage as this model's parameters, buffers and fused
        tables (no weight memory). What an export traces: activating, retyping (`Module.to` replaces a
        Parameter's `.data`, which now is the copy's own) or calling the copy leaves this model as it is,
        and this model moving or retyping meanwhile leaves the copy as it was. The text encoder and VAE
        are shared (an export only reads them)."""
        held = [*self.unet.parameters(), *self.unet.buffers(), *self.shifter.parameters()]
        held += [*self.shifter.buffers(), *self.shifter.held_tensors()]
        aliases = {id(t): _alias(t) for t in {id(t): t for t in held}.values()}
        unet, shifter = copy.deepcopy((self.unet, self.shifter), aliases)
        shifter.reattach(unet.unet)
        return dataclasses.replace(self, unet=unet, shifter=shifter)

    def eval(self) -> Realiz3DModel:
        for m in self.modules():
            m.eval()
            m.requires_grad_(False)
        return self

    @property
    def resolution_step(self) -> int:
        """Image sizes this model takes are multiples of this: pixels per UNet cell, doubled by each
        down block but the last."""
        halvings = len(self.unet.unet.config.block_out_channels) - 1
        return self.config.downsample_factor * 2**halvings

    @property
    def sample_channels(self) -> int:
        """Channels of what the UNet denoises: the image's in pixel space, the VAE's latents otherwise. A
        latent-space UNet loaded without its VAE (the benchmarks' seeded SD-shaped UNet) declares them as
        `image_channels`."""
        if self.config.latent_space == "pixel" or self.vae is None:
            return self.config.image_channels
        return int(self.vae.config.latent_channels)

    def served_resolutions(self) -> list[int]:
        """The image sizes the model's serving envelope (`realiz3d.json` `serving`) declares."""
        return self.config.served_resolutions(self.resolution_step)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def parameter_count(self) -> int:
        return sum(p.numel() for m in self.modules() for p in m.parameters())


def _alias(t: torch.Tensor) -> torch.Tensor:
    """A new tensor object (a Parameter for a Parameter) over `t`'s storage."""
    if isinstance(t, nn.Parameter):
        return nn.Parameter(t.detach(), requires_grad=t.requires_grad)
    return t.detach()
