"""Model folder I/O: a diffusers-style directory, safetensors only (never pickle).

    realiz3d.json                       ModelConfig (format version, views, resolution, channels, schedule)
    unet/config.json                    diffusers UNet2DConditionModel config
    unet/diffusion_pytorch_model.safetensors
    scheduler/scheduler_config.json
    domain_shifter/config.json          rank, target module patterns, domains
    domain_shifter/adapter.safetensors  A, B and the per-domain vectors of every adapted layer
    text_encoder/config.json + model.safetensors   (hashed-words)   | text_encoder/ + tokenizer/ (clip)
    vae/config.json + diffusion_pytorch_model.safetensors            (only when latent_space = vae)

Every missing or inconsistent file raises `ModelFolderError` naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TypeVar

import torch
from diffusers import AutoencoderKL
from pydantic import BaseModel, ValidationError
from safetensors.torch import load_file, save_file

from engines.errors import ModelFolderError
from engines.models.config import FORMAT_VERSION, ModelConfig, TextEncoderConfig
from engines.models.domain_shifter import build_domain_shifter
from engines.models.realiz3d_model import Realiz3DModel
from engines.models.shifter_config import parse_shifter_config
from engines.models.text_encoder import ClipTextEncoder, HashedWordTextEncoder
from engines.models.unet import MultiViewUNet, build_unet

WEIGHTS = "diffusion_pytorch_model.safetensors"
_M = TypeVar("_M", bound=BaseModel)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: expected a JSON object")
    return data


def _validated(cls: type[_M], path: Path) -> _M:
    try:
        return cls.model_validate(_read_json(path))
    except ValidationError as e:
        raise ModelFolderError(f"{path}: {_first_error(e)}") from None


def _first_error(e: ValidationError) -> str:
    first = e.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    return f"{loc}: {first['msg']}"


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise ModelFolderError(f"{path}: unreadable safetensors ({e})") from None


def _load_into(module: torch.nn.Module, path: Path) -> None:
    state = _load_weights(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        summary = str(e).splitlines()[0]
        raise ModelFolderError(f"{path}: does not match its config ({summary})") from None


def save_model(model: Realiz3DModel, folder: str | Path) -> Path:
    """Write the model folder atomically (a temp dir renamed into place)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        # Base weights, not fused ones, go to disk; a runner re-activates its weight set on its next call.
        model.shifter.deactivate()
        (tmp / "realiz3d.json").write_text(model.config.model_dump_json(indent=2))
        (tmp / "unet").mkdir()
        (tmp / "unet" / "config.json").write_text(
            json.dumps(dict(model.unet.unet.config), indent=2, default=list)
        )
        save_file(_contiguous(model.unet.unet.state_dict()), str(tmp / "unet" / WEIGHTS))
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(model.scheduler_config, indent=2))
        (tmp / "domain_shifter").mkdir()
        (tmp / "domain_shifter" / "config.json").write_text(model.shifter_config.model_dump_json(indent=2))
        save_file(model.shifter.adapter_state_dict(), str(tmp / "domain_shifter" / "adapter.safetensors"))
        if isinstance(model.text_encoder, HashedWordTextEncoder):
            (tmp / "text_encoder").mkdir()
            (tmp / "text_encoder" / "config.json").write_text(
                model.text_encoder.config.model_dump_json(indent=2)
            )
            save_file(
                _contiguous(model.text_encoder.state_dict()), str(tmp / "text_encoder" / "model.safetensors")
            )
        else:
            raise ModelFolderError(
                "saving CLIP text encoders is not supported; copy text_encoder/ and tokenizer/"
            )
        if model.vae is not None:
            model.vae.save_pretrained(tmp / "vae", safe_serialization=True)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}


def load_model(folder: str | Path) -> Realiz3DModel:
    """Load a model folder (CPU, fp32, eval mode). Raises ModelFolderError naming the bad file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: model folder not found")
    config = _validated(ModelConfig, folder / "realiz3d.json")
    if config.format_version != FORMAT_VERSION:
        raise ModelFolderError(
            f"{folder / 'realiz3d.json'}: format_version {config.format_version} is not supported "
            f"(this build reads {FORMAT_VERSION})"
        )

    unet_config = _read_json(folder / "unet" / "config.json")
    expected_in = (config.image_channels + config.geometry_channels) * config.patch_size**2
    if unet_config.get("in_channels") != expected_in:
        raise ModelFolderError(
            f"{folder / 'unet' / 'config.json'}: in_channels {unet_config.get('in_channels')} != "
            f"(image_channels + geometry_channels) * patch_size^2 = {expected_in} from realiz3d.json"
        )
    if unet_config.get("projection_class_embeddings_input_dim") != 16:
        raise ModelFolderError(f"{folder / 'unet' / 'config.json'}: the camera embedding must take 16 inputs")
    try:
        unet_kwargs = {k: v for k, v in unet_config.items() if not k.startswith("_")}
        unet = build_unet(unet_kwargs, multiview=config.multiview_attention)
    except (TypeError, ValueError) as e:
        raise ModelFolderError(f"{folder / 'unet' / 'config.json'}: invalid UNet config ({e})") from None
    _load_into(unet, folder / "unet" / WEIGHTS)
    mv_unet = MultiViewUNet(unet, config.geometry_channels, config.patch_size)

    scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json")

    shifter_path = folder / "domain_shifter" / "config.json"
    try:
        shifter_config = parse_shifter_config(_read_json(shifter_path))
    except ValidationError as e:
        raise ModelFolderError(f"{shifter_path}: {_first_error(e)}") from None
    try:
        shifter = build_domain_shifter(shifter_config, unet)
    except ValueError as e:
        raise ModelFolderError(f"{folder / 'domain_shifter' / 'config.json'}: {e}") from None
    _load_into(shifter.adapters, folder / "domain_shifter" / "adapter.safetensors")

    text_encoder: HashedWordTextEncoder | ClipTextEncoder
    if config.text_encoder.kind == "hashed-words":
        te_config = _validated(TextEncoderConfig, folder / "text_encoder" / "config.json")
        text_encoder = HashedWordTextEncoder(te_config)
        _load_into(text_encoder, folder / "text_encoder" / "model.safetensors")
    else:
        text_encoder = ClipTextEncoder(folder, torch.device("cpu"), torch.float32)
    if unet_config.get("cross_attention_dim") != text_encoder.dim:
        raise ModelFolderError(
            f"{folder / 'unet' / 'config.json'}: cross_attention_dim {unet_config.get('cross_attention_dim')} "
            f"!= text encoder width {text_encoder.dim}"
        )

    vae = None
    if config.latent_space == "vae":
        vae_dir = folder / "vae"
        vae_config = _read_json(vae_dir / "config.json")
        vae = AutoencoderKL.from_config(vae_config)
        _load_into(vae, vae_dir / WEIGHTS)

    model = Realiz3DModel(
        config=config,
        unet=mv_unet,
        shifter=shifter,
        shifter_config=shifter.config,
        text_encoder=text_encoder,
        scheduler_config=scheduler_config,
        vae=vae,
    )
    return model.eval()
