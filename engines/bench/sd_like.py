"""A seeded model at Stable Diffusion 1.x shapes, for GPU benchmarks (`realiz3d bench unet --shape sd`).

The UNet has SD 1.5's layout (block channels 320/640/1280/1280, two layers per block, 8 heads, cross
attention over 77 x 768 text tokens) and runs on 4 x 64 x 64 latents, i.e. 512 px images; multi-view
attention and the camera embedding are ours, and the Domain Shifter is the default block-shift form
(38 sites). Weights are random from a seed: the figures are about speed, never about images. Nothing is
downloaded, and no VAE is built (the benchmark times the UNet only).
"""

from __future__ import annotations

from engines.models.config import ModelConfig, TextEncoderConfig
from engines.models.realiz3d_model import Realiz3DModel
from engines.models.unet import CAMERA_DIM

SD_LIKE_SEED = 15


def sd_like_unet_config(config: ModelConfig) -> dict:
    return {
        "sample_size": config.resolution // config.downsample_factor,
        "in_channels": config.image_channels + config.geometry_channels,
        "out_channels": config.image_channels,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": config.text_encoder.dim,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
        "class_embed_type": "projection",
        "projection_class_embeddings_input_dim": CAMERA_DIM,
    }


def sd_like_model(seed: int = SD_LIKE_SEED) -> Realiz3DModel:
    """A fresh SD-shaped model on the CPU in fp32 (about 0.9 G parameters; ~10 s to build on 16 cores)."""
    from engines.models.default_model import build_model

    config = ModelConfig(
        name="sd-like-bench",
        resolution=512,
        latent_space="vae",
        vae_scale_factor=8,
        image_channels=4,
        patch_size=1,
        geometry_channels=0,
        text_encoder=TextEncoderConfig(dim=768, max_tokens=77, heads=12),
        seed=seed,
    )
    return build_model(config, seed=seed, unet_config=sd_like_unet_config(config))
