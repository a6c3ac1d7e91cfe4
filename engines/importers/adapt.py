"""A text-to-image UNet becomes a Realiz3D UNet, computing exactly the same for one view without geometry.

- `conv_in` is widened with zero weights for the 7 geometry channels (normal, position, mask).
- A camera embedding (diffusers' `class_embed_type="projection"`, 16 -> time dim -> time dim) is added
  whose last layer is zero: its output is exactly 0 until it is trained. (Its first layer is seeded random,
  not zero: with both layers zero neither would ever receive a gradient.)
- Multi-view attention is turned on (with one view it is ordinary self-attention).
- An identity Domain Shifter is attached (its per-domain vectors start at zero).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from engines.errors import ModelFolderError
from engines.models.config import GEOMETRY_CHANNELS, ModelConfig, TextEncoderConfig
from engines.models.domain_shifter import build_domain_shifter
from engines.models.model_folder import save_model, vae_scale_factor
from engines.models.realiz3d_model import Realiz3DModel
from engines.models.shifter_config import BlockShiftConfig
from engines.models.text_encoder import ClipTextEncoder
from engines.models.unet import CAMERA_DIM, MultiViewUNet, install_multiview_attention
from engines.models.weights import assign_weights, build_on_meta

CAMERA_SEED = 0


def realiz3d_unet_config(source: dict, path: Path) -> dict:
    """The UNet config of the imported model: geometry channels in, a 16-number camera embedding."""
    cfg = {k: v for k, v in source.items() if not k.startswith("_")}
    for key in ("class_embed_type", "num_class_embeds", "addition_embed_type"):
        if cfg.get(key) is not None:
            raise ModelFolderError(
                f"{path}: {key} = {cfg[key]!r}; only text-to-image UNets without class or added "
                "embeddings (Stable Diffusion 1.x/2.x) can be imported"
            )
    if not isinstance(cfg.get("in_channels"), int):
        raise ModelFolderError(f"{path}: in_channels missing")
    cfg["in_channels"] = cfg["in_channels"] + GEOMETRY_CHANNELS
    cfg["class_embed_type"] = "projection"
    cfg["projection_class_embeddings_input_dim"] = CAMERA_DIM
    return cfg


def widen_conv_in(state: dict[str, torch.Tensor], path: Path) -> None:
    """Append zero input channels for the geometry maps to `conv_in.weight` (in place)."""
    w = state.get("conv_in.weight")
    if w is None or w.ndim != 4:
        raise ModelFolderError(f"{path}: no 4-d conv_in.weight")
    zeros = w.new_zeros((w.shape[0], GEOMETRY_CHANNELS, *w.shape[2:]))
    state["conv_in.weight"] = torch.cat([w, zeros], dim=1)


def add_camera_embedding(state: dict[str, torch.Tensor], seed: int = CAMERA_SEED) -> None:
    """A camera embedding whose output is exactly zero (last layer zero), first layer seeded like nn.Linear."""
    time_dim = state["time_embedding.linear_2.weight"].shape[0]
    dtype = state["time_embedding.linear_2.weight"].dtype
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(CAMERA_DIM)  # nn.Linear's default (kaiming uniform, a = sqrt(5)) bound
    state["class_embedding.linear_1.weight"] = (
        (torch.rand((time_dim, CAMERA_DIM), generator=gen) * 2 - 1).mul_(bound).to(dtype)
    )
    state["class_embedding.linear_1.bias"] = ((torch.rand(time_dim, generator=gen) * 2 - 1) * bound).to(dtype)
    state["class_embedding.linear_2.weight"] = torch.zeros((time_dim, time_dim), dtype=dtype)
    state["class_embedding.linear_2.bias"] = torch.zeros(time_dim, dtype=dtype)


def build_realiz3d_unet(
    unet_config: dict, state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype
) -> UNet2DConditionModel:
    """The adapted UNet on the meta device, then the adapted state assigned (one copy of the weights)."""
    try:
        unet = build_on_meta(lambda: UNet2DConditionModel.from_config(unet_config))
    except (TypeError, ValueError) as e:
        raise ModelFolderError(f"{path}: invalid UNet config ({e})") from None
    assign_weights(unet, state, path, dtype)
    install_multiview_attention(unet, multiview=True)
    return unet.eval()


def model_config(
    name: str,
    unet_config: dict,
    vae: AutoencoderKL,
    num_views: int,
    resolution: int | None = None,
    convention: str = "realiz3d",
) -> ModelConfig:
    """realiz3d.json of an imported latent model: its resolution, VAE factor and camera convention."""
    factor = vae_scale_factor(dict(vae.config))
    latent_channels = int(vae.config.latent_channels)
    if unet_config.get("out_channels") != latent_channels:
        raise ModelFolderError(
            f"the UNet outputs {unet_config.get('out_channels')} channels but the VAE has {latent_channels} latents"
        )
    return ModelConfig(
        name=name,
        resolution=resolution or int(unet_config["sample_size"]) * factor,
        num_views=num_views,
        image_channels=latent_channels,
        latent_space="vae",
        vae_scale_factor=factor,
        patch_size=1,
        multiview_attention=True,
        text_encoder=TextEncoderConfig(kind="clip"),
        camera={"convention": convention},
    )


def save_imported(
    out: Path,
    config: ModelConfig,
    unet: UNet2DConditionModel,
    text_encoder: ClipTextEncoder,
    vae: AutoencoderKL,
    scheduler_config: dict,
) -> Path:
    """Attach the identity Domain Shifter and write the model folder."""
    shifter = build_domain_shifter(BlockShiftConfig(), unet)  # zero W_right: exactly the original
    model = Realiz3DModel(
        config=config,
        unet=MultiViewUNet(unet, config.geometry_channels, config.patch_size),
        shifter=shifter,
        shifter_config=shifter.config,
        text_encoder=text_encoder,
        scheduler_config=scheduler_config,
        vae=vae,
    )
    return save_model(model, out)
