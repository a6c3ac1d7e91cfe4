"""`realiz3d import mvdream CKPT --sd-folder DIR`: MVDream's released checkpoint -> a model folder.

MVDream's checkpoint (e.g. `sd-v2.1-base-4view.pt`) is an LDM-format state dict: `model.diffusion_model.*`
(the UNet, whose `camera_embed` is Linear(16, 1280)-SiLU-Linear and whose self-attention spans the views),
optionally `first_stage_model.*` (VAE) and `cond_stage_model.*` (OpenCLIP or CLIP). The SD folder it was
fine-tuned from gives the configs, the tokenizer and the noise schedule (and any part the file lacks).

- Loaded safely: safetensors, or `torch.load(weights_only=True)` (no code runs from the file).
- The UNet goes through diffusers' own LDM-to-diffusers conversion (`convert_ldm_unet_checkpoint`);
  `camera_embed.0/2` are renamed to LDM's `label_emb.0.0/2`, which diffusers maps onto
  `class_embedding.linear_1/2` of a `class_embed_type="projection"` UNet: the same Linear-SiLU-Linear,
  added to the timestep embedding exactly as MVDream adds it.
- MVDream's 3D self-attention (all views of one object in one sequence) is our multi-view attention.
- The text encoder is converted as diffusers does (`convert_open_clip_checkpoint` / `convert_ldm_clip_checkpoint`).
- `realiz3d.json` says `camera: {convention: "mvdream"}`: cameras are converted to MVDream's Z-up world
  and unit distance when the UNet is called (engines/sampling/cameras.py), exact at any radius.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import (
    LDM_UNET_KEY,
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors.torch import load_file

from engines.errors import ModelFolderError
from engines.importers.adapt import (
    build_realiz3d_unet,
    model_config,
    realiz3d_unet_config,
    save_imported,
    widen_conv_in,
)
from engines.importers.sd import check_sd_folder
from engines.models.model_folder import load_component, read_json
from engines.models.text_encoder import ClipTextEncoder
from engines.models.unet import CAMERA_DIM
from engines.models.weights import assign_weights, build_on_meta, describe_mismatch

MVDREAM_RESOLUTION = 256  # MVDream's released 4-view models run at 256 px (32x32 latents)
CAMERA_KEYS = {"camera_embed.0.": "label_emb.0.0.", "camera_embed.2.": "label_emb.0.2."}
VAE_PREFIX = "first_stage_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
CLIP_PREFIX = "cond_stage_model.transformer."


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat tensor state dict from safetensors or a torch file, without running code from it."""
    path = Path(path)
    if not path.is_file():
        raise ModelFolderError(f"{path}: no such checkpoint")
    try:
        if path.suffix == ".safetensors":
            data = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFolderError(f"{path}: not a loadable tensor checkpoint ({first})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]  # Lightning checkpoints nest the weights
    if not isinstance(data, dict) or not data:
        raise ModelFolderError(f"{path}: expected a state dict of tensors")
    state = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ModelFolderError(f"{path}: holds no tensors")
    return state


def mvdream_unet_state(
    ckpt: dict[str, torch.Tensor], sd_unet_config: dict, path: Path
) -> dict[str, torch.Tensor]:
    """The UNet's diffusers state dict (camera embedding as class embedding), through diffusers' converter."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in ckpt.items():
        if not key.startswith(LDM_UNET_KEY):
            continue
        local = key[len(LDM_UNET_KEY) :]
        for old, new in CAMERA_KEYS.items():
            if local.startswith(old):
                local = new + local[len(old) :]
        renamed[LDM_UNET_KEY + local] = value
    if not renamed:
        raise ModelFolderError(f"{path}: no '{LDM_UNET_KEY}*' keys: not an LDM-format checkpoint")
    cam = renamed.get(f"{LDM_UNET_KEY}label_emb.0.0.weight")
    if cam is None or cam.ndim != 2 or cam.shape[1] != CAMERA_DIM:
        raise ModelFolderError(
            f"{path}: no camera_embed.0 Linear({CAMERA_DIM}, ...) in the UNet: not an MVDream checkpoint"
        )
    config = {**sd_unet_config, "class_embed_type": "projection"}
    state = convert_ldm_unet_checkpoint(renamed, config)
    if len(state) != len(renamed):
        raise ModelFolderError(
            f"{path}: diffusers' conversion mapped {len(state)} of the UNet's {len(renamed)} tensors; "
            "the checkpoint does not match the SD folder's UNet config"
        )
    return state


def _text_encoder(
    ckpt: dict[str, torch.Tensor], sd_folder: Path, dtype: torch.dtype, path: Path
) -> ClipTextEncoder:
    encoder = ClipTextEncoder(sd_folder, torch.device("cpu"), dtype)
    if any(k.startswith(OPEN_CLIP_PREFIX) for k in ckpt):
        state = convert_open_clip_checkpoint(encoder.model, ckpt, prefix=OPEN_CLIP_PREFIX)
    elif any(k.startswith(CLIP_PREFIX) for k in ckpt):
        state = convert_ldm_clip_checkpoint(ckpt)
    else:
        return encoder  # the file has no text encoder: the SD folder's
    expected = encoder.model.state_dict()
    if not any(k.startswith("text_model.") for k in expected):  # transformers 5 drops the prefix
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    # A CLIPTextModel has no projection (OpenCLIP's text_projection is for CLIPTextModelWithProjection).
    state = {k: v for k, v in state.items() if k in expected or not k.startswith("text_projection")}
    problem = describe_mismatch(encoder.model, state)
    if problem is not None:
        raise ModelFolderError(
            f"{path}: the text encoder does not match {sd_folder / 'text_encoder'}: {problem}"
        )
    encoder.model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    return encoder


def import_mvdream(
    ckpt_path: str | Path,
    sd_folder: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    num_views: int = 4,
    resolution: int = MVDREAM_RESOLUTION,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write the model folder `out` from an MVDream checkpoint and its base SD folder; returns `out`."""
    ckpt_path, sd_folder, out = Path(ckpt_path), Path(sd_folder), Path(out)
    check_sd_folder(sd_folder)
    ckpt = load_checkpoint(ckpt_path)
    sd_unet_config = read_json(sd_folder / "unet" / "config.json")
    unet_config = realiz3d_unet_config(sd_unet_config, sd_folder / "unet" / "config.json")
    state = mvdream_unet_state(ckpt, sd_unet_config, ckpt_path)
    widen_conv_in(state, ckpt_path)
    unet = build_realiz3d_unet(unet_config, state, ckpt_path, dtype)
    del state

    if any(k.startswith(VAE_PREFIX) for k in ckpt):
        vae_config = read_json(sd_folder / "vae" / "config.json")
        vae = build_on_meta(lambda: AutoencoderKL.from_config(vae_config))
        assign_weights(vae, convert_ldm_vae_checkpoint(ckpt, vae_config), ckpt_path, dtype)
        vae.eval()
    else:
        vae = load_component(AutoencoderKL, sd_folder / "vae", dtype)
    text_encoder = _text_encoder(ckpt, sd_folder, dtype, ckpt_path)
    del ckpt
    scheduler_config = read_json(sd_folder / "scheduler" / "scheduler_config.json")
    config = model_config(
        name or ckpt_path.stem, unet_config, vae, num_views, resolution=resolution, convention="mvdream"
    )
    return save_imported(out, config, unet, text_encoder, vae, scheduler_config)
