"""The embedded default model: built by this project, never downloaded.

A model shipped in the package (`engines/models/default/`, trained here) is used when present; otherwise
the model is built deterministically from a fixed seed on first use and cached on disk. The seeded model
is untrained: its images are structured noise, not objects. What it is for is exercising the whole system
(cameras, multi-view attention, a non-trivial Domain Shifter whose real and synthetic domains give visibly
different images, fusion, schedules, every backend) on any machine in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from engines.models.config import ModelConfig
from engines.models.domain_shifter import build_domain_shifter
from engines.models.model_folder import save_model
from engines.models.realiz3d_model import DEFAULT_SCHEDULER_CONFIG, Realiz3DModel
from engines.models.shifter_config import BlockShiftConfig, DomainShifterConfig
from engines.models.text_encoder import HashedWordTextEncoder
from engines.models.unet import MultiViewUNet, build_unet, default_unet_config

DEFAULT_SEED = 20260
DEFAULT_MODEL_VERSION = "seeded-v2-block-shift"
SHIPPED_MODEL_DIR = Path(__file__).parent / "default"


def build_model(
    config: ModelConfig | None = None,
    seed: int = DEFAULT_SEED,
    shifter_config: DomainShifterConfig | None = None,
    unet_config: dict | None = None,
    domain_strength: float = 1.0,
) -> Realiz3DModel:
    """A fresh model from a seed (same seed -> bit-identical weights on any machine)."""
    config = config or ModelConfig(name="realiz3d-default", seed=seed)
    shifter_config = shifter_config or BlockShiftConfig()
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        text_encoder = HashedWordTextEncoder(config.text_encoder)
        torch.nn.init.normal_(text_encoder.pos_embed, std=0.02)
        unet = build_unet(
            unet_config or default_unet_config(config, text_encoder.dim), multiview=config.multiview_attention
        )
        shifter = build_domain_shifter(shifter_config, unet)
        randomize_shifter(shifter, domain_strength)
    finally:
        torch.random.set_rng_state(gen_state)
    model = Realiz3DModel(
        config=config,
        unet=MultiViewUNet(unet, config.geometry_channels, config.patch_size),
        shifter=shifter,
        shifter_config=shifter_config,
        text_encoder=text_encoder,
        scheduler_config=dict(DEFAULT_SCHEDULER_CONFIG),
    )
    return model.eval()


def randomize_shifter(shifter, strength: float) -> None:  # noqa: ANN001 - a DomainShifter
    """Untrained adapters start as the identity (zero W_right / e_d); the seeded default gets random ones
    of size `strength` so real and synthetic visibly differ and fusion is exercised end to end."""
    if strength == 0.0:
        return
    with torch.no_grad():
        for adapter in shifter.adapters.values():
            if shifter.form == "block-shift":
                adapter.right.weight.normal_(0.0, strength * 0.2)
            else:
                adapter.domain_embed.normal_(0.0, strength)
    shifter.invalidate_fused()


def default_cache_dir() -> Path:
    base = os.environ.get("REALIZ3D_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "realiz3d"
    )
    return Path(base) / "models" / f"default-{DEFAULT_MODEL_VERSION}"


def default_model_dir() -> Path:
    """The folder of the embedded default model, creating it on first use."""
    if (SHIPPED_MODEL_DIR / "realiz3d.json").is_file():
        return SHIPPED_MODEL_DIR
    folder = default_cache_dir()
    if not (folder / "realiz3d.json").is_file():
        save_model(build_model(), folder)
    return folder
