"""`realiz3d import sd DIR --out MODEL_DIR`: a diffusers Stable Diffusion 1.x/2.x folder -> a model folder.

The source folder holds `unet/`, `vae/`, `text_encoder/`, `tokenizer/` and `scheduler/` as diffusers writes
them (safetensors, single or sharded). The model keeps its own noise schedule (`scheduler/` is copied),
its resolution (`unet.sample_size * vae_scale_factor`) and its CLIP; see `adapt.py` for what is added.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL

from engines.errors import ModelFolderError
from engines.importers.adapt import (
    add_camera_embedding,
    build_realiz3d_unet,
    model_config,
    realiz3d_unet_config,
    save_imported,
    widen_conv_in,
)
from engines.models.model_folder import WEIGHTS_STEM, load_component, read_json
from engines.models.text_encoder import ClipTextEncoder
from engines.models.weights import read_state_dict, weights_path

SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def check_sd_folder(src: Path) -> None:
    if not src.is_dir():
        raise ModelFolderError(f"{src}: not a folder")
    for part in SD_PARTS:
        if not (src / part).is_dir():
            raise ModelFolderError(f"{src / part}: missing (a diffusers SD folder has {', '.join(SD_PARTS)})")


def import_sd(
    src: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    num_views: int = 4,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write the Realiz3D model folder `out` made from the SD folder `src`; returns `out`."""
    src, out = Path(src), Path(out)
    check_sd_folder(src)
    unet_dir = src / "unet"
    source_config = read_json(unet_dir / "config.json")
    unet_config = realiz3d_unet_config(source_config, unet_dir / "config.json")
    state = read_state_dict(unet_dir, WEIGHTS_STEM)
    widen_conv_in(state, weights_path(unet_dir, WEIGHTS_STEM))
    add_camera_embedding(state)
    unet = build_realiz3d_unet(unet_config, state, weights_path(unet_dir, WEIGHTS_STEM), dtype)
    del state
    vae = load_component(AutoencoderKL, src / "vae", dtype)
    text_encoder = ClipTextEncoder(src, torch.device("cpu"), dtype)
    scheduler_config = read_json(src / "scheduler" / "scheduler_config.json")
    config = model_config(name or src.name, unet_config, vae, num_views)
    return save_imported(out, config, unet, text_encoder, vae, scheduler_config)
