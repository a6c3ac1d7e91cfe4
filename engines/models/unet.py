"""The multi-view UNet: diffusers' UNet2DConditionModel + camera embedding + multi-view attention +
geometry channels.

- Camera: each view's camera-to-world matrix (16 numbers) goes through diffusers' `class_embed_type=
  "projection"` embedding (Linear-SiLU-Linear) and is added to the timestep embedding (MVDream).
- Views: the batch holds `objects * views` images, views of one object contiguous; every self-attention
  attends across the views of one object (`MultiViewAttnProcessor`).
- Geometry: normal + position + presence mask (7 channels) concatenated to the noisy input; zeros when
  there is no mesh (text-to-multiview), which is how the model is trained for the empty control.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import nn

from engines.models.config import ModelConfig
from engines.models.multiview_attention import install_multiview_attention
from engines.types import UNetInputs

CAMERA_DIM = 16


def default_unet_config(config: ModelConfig, cross_attention_dim: int) -> dict:
    """A small, fast pixel-space UNet.

    It runs on 2x2 pixel-unshuffled images (a lossless reshuffle, so the diffusion is still exactly in
    pixel space) and has attention only at the two coarsest levels: on 2 CPU cores full-resolution convs
    and 4-view attention over 32x32 tokens cost several times more at this model size (seen in development;
    no report here keeps the timing).
    """
    return {
        "sample_size": config.resolution // config.downsample_factor,
        "in_channels": (config.image_channels + config.geometry_channels) * config.patch_size**2,
        "out_channels": config.image_channels * config.patch_size**2,
        "block_out_channels": (64, 128, 128),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": 16,
        "norm_num_groups": 8,
        "class_embed_type": "projection",
        "projection_class_embeddings_input_dim": CAMERA_DIM,
    }


def build_unet(unet_config: dict, multiview: bool) -> UNet2DConditionModel:
    unet = UNet2DConditionModel(**unet_config)
    install_multiview_attention(unet, multiview=multiview)
    return unet


class MultiViewUNet(nn.Module):
    """Wraps the diffusers UNet with the multi-view calling convention (a tensors-only forward that
    ONNX export and torch.compile can trace).

    `domain_ids` (n, slots) int64 are the Domain Shifter's per-sample domains for this call; they are
    bound to the shifter's `DomainContext` (attached by `attach_domain_context`) while the call runs.
    """

    def __init__(self, unet: UNet2DConditionModel, geometry_channels: int, patch_size: int = 1) -> None:
        super().__init__()
        self.unet = unet
        self.geometry_channels = geometry_channels
        self.patch_size = patch_size
        self.domain_context = None

    def attach_domain_context(self, context) -> None:  # noqa: ANN001 - a DomainContext
        # A plain attribute, not a submodule: the shifter's weights stay out of the UNet's state dict.
        object.__setattr__(self, "domain_context", context)

    def _unet_sample(self, sample: torch.Tensor, geometry: torch.Tensor | None) -> torch.Tensor:
        """What the diffusers UNet sees: the image with its geometry channels (zeros when none), unshuffled."""
        if self.geometry_channels:
            if geometry is None:
                geometry = sample.new_zeros((sample.shape[0], self.geometry_channels, *sample.shape[2:]))
            sample = torch.cat([sample, geometry.to(sample.dtype)], dim=1)
        if self.patch_size > 1:
            sample = F.pixel_unshuffle(sample, self.patch_size)
        return sample

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        cameras: torch.Tensor,
        geometry: torch.Tensor | None = None,
        domain_ids: torch.Tensor | None = None,
        num_views: int = 1,
    ) -> torch.Tensor:
        sample = self._unet_sample(sample, geometry)
        ctx = self.domain_context
        if ctx is not None:
            ctx.ids = domain_ids
        try:
            out = self.unet(
                sample,
                timestep,
                encoder_hidden_states=text,
                class_labels=cameras.to(sample.dtype),
                cross_attention_kwargs={"num_views": num_views},
                return_dict=False,
            )[0]
        finally:
            if ctx is not None:
                ctx.ids = None
        return F.pixel_shuffle(out, self.patch_size) if self.patch_size > 1 else out

    def step_forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        cameras: torch.Tensor,
        geometry: torch.Tensor | None = None,
        domain_ids: torch.Tensor | None = None,
        num_views: int = 1,
        deep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A step-caching call, tensors only like `forward` (engines/models/deep_cache.py): `deep=None`
        runs the whole UNet, else only its shallow branch on `deep`; returns (noise prediction, deep
        feature). Compiled, None and a tensor are two graphs: one per step kind."""
        from engines.models.deep_cache import split_forward

        sample = self._unet_sample(sample, geometry)
        ctx = self.domain_context
        if ctx is not None:
            ctx.ids = domain_ids
        try:
            out, deep = split_forward(
                self.unet, sample, timestep, text, cameras.to(sample.dtype), {"num_views": num_views}, deep
            )
        finally:
            if ctx is not None:
                ctx.ids = None
        return (F.pixel_shuffle(out, self.patch_size) if self.patch_size > 1 else out), deep

    def run_step(
        self, inputs: UNetInputs, domain_ids: torch.Tensor | None = None, deep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.step_forward(
            inputs.sample,
            inputs.timestep,
            inputs.text,
            inputs.cameras,
            inputs.geometry,
            domain_ids,
            inputs.num_views,
            deep,
        )

    def run(self, inputs: UNetInputs, domain_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self(
            inputs.sample,
            inputs.timestep,
            inputs.text,
            inputs.cameras,
            inputs.geometry,
            domain_ids,
            inputs.num_views,
        )
