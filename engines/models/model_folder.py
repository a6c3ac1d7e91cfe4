"""Model folder I/O: a diffusers-style directory, safetensors only (never pickle).

    realiz3d.json                       ModelConfig (format version, views, resolution, channels, schedule,
                                        camera convention, VAE scale factor): docs/realiz3d-json.md
    unet/config.json                    diffusers UNet2DConditionModel config
    unet/diffusion_pytorch_model.safetensors   (or sharded: ...safetensors.index.json + its shards)
    scheduler/scheduler_config.json
    domain_shifter/config.json          form (block-shift | lora; none = lora), rank, site/target patterns
    domain_shifter/adapter.safetensors  block-shift: Embed, W_left, W_right per site; lora: A, B, e_d per layer
    text_encoder/config.json + model.safetensors   (hashed-words)   | text_encoder/ + tokenizer/ (clip)
    vae/config.json + diffusion_pytorch_model.safetensors            (only when latent_space = vae)

Loading is diffusers' way: the UNet and VAE are built on the meta device and the file's tensors become their
weights (one copy in memory, cast to the requested dtype as they are assigned); sharded safetensors and the
old attention key names (`query`/`key`/`value`/`proj_attn`) are read. Every missing or inconsistent file
raises `ModelFolderError` naming the file and showing the whole first mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from pydantic import BaseModel, ValidationError
from safetensors.torch import save_file

from engines.atomic_folder import replaced_folder
from engines.errors import ModelFolderError
from engines.models.config import FORMAT_VERSION, ModelConfig, TextEncoderConfig
from engines.models.domain_shifter import build_domain_shifter
from engines.models.realiz3d_model import Realiz3DModel
from engines.models.shifter_config import parse_shifter_config
from engines.models.text_encoder import ClipTextEncoder, HashedWordTextEncoder
from engines.models.unet import MultiViewUNet, install_multiview_attention
from engines.models.weights import assign_weights, build_on_meta, read_state_dict, weights_path

diffusers_logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bar: noise in a service
WEIGHTS_STEM = "diffusion_pytorch_model"
WEIGHTS = f"{WEIGHTS_STEM}.safetensors"
_M = TypeVar("_M", bound=BaseModel)


def read_json(path: Path) -> dict:
    """A JSON object from a model folder file; ModelFolderError naming the file otherwise."""
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
        return cls.model_validate(read_json(path))
    except ValidationError as e:
        raise ModelFolderError(f"{path}: {_first_error(e)}") from None


def _first_error(e: ValidationError) -> str:
    first = e.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    return f"{loc}: {first['msg']}"


def _load_into(module: torch.nn.Module, folder: Path, stem: str, dtype: torch.dtype | None = None) -> None:
    """Strict load of `folder/stem.safetensors` (or its shards); diffusers models get their legacy keys fixed."""
    state = read_state_dict(folder, stem)
    fix_keys = getattr(module, "_fix_state_dict_keys_on_load", None)
    if fix_keys is not None:
        state = fix_keys(state) or state  # diffusers: deprecated attention block names -> current ones
    assign_weights(module, state, weights_path(folder, stem), dtype)


def _build(cls, config: dict, path: Path):  # noqa: ANN001, ANN202 - a diffusers model class
    try:
        return build_on_meta(lambda: cls.from_config(config))
    except (TypeError, ValueError) as e:
        raise ModelFolderError(f"{path}: invalid {cls.__name__} config ({e})") from None


def load_component(cls, directory: Path, dtype: torch.dtype = torch.float32, config: dict | None = None):  # noqa: ANN001, ANN201
    """A diffusers model (`cls`, e.g. AutoencoderKL) from `directory/config.json` and its weights."""
    path = directory / "config.json"
    module = _build(cls, config if config is not None else read_json(path), path)
    _load_into(module, directory, WEIGHTS_STEM, dtype)
    return module.eval()


def save_model(model: Realiz3DModel, folder: str | Path) -> Path:
    """Write the model folder atomically (a temp dir renamed into place)."""
    folder = Path(folder)
    with replaced_folder(folder) as tmp:
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
        (tmp / "domain_shifter" / "config.json").write_text(model.shifter.config.model_dump_json(indent=2))
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
            model.text_encoder.save(tmp)
        if model.vae is not None:
            model.vae.save_pretrained(tmp / "vae", safe_serialization=True)
    return folder


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}


def load_model(folder: str | Path, dtype: torch.dtype = torch.float32) -> Realiz3DModel:
    """Load a model folder onto the CPU in `dtype`, eval mode. Raises ModelFolderError naming the bad file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: model folder not found")
    config = _validated(ModelConfig, folder / "realiz3d.json")
    if config.format_version != FORMAT_VERSION:
        raise ModelFolderError(
            f"{folder / 'realiz3d.json'}: format_version {config.format_version} is not supported "
            f"(this build reads {FORMAT_VERSION})"
        )

    unet_path = folder / "unet" / "config.json"
    unet_config = read_json(unet_path)
    expected_in = (config.image_channels + config.geometry_channels) * config.patch_size**2
    if unet_config.get("in_channels") != expected_in:
        raise ModelFolderError(
            f"{unet_path}: in_channels {unet_config.get('in_channels')} != "
            f"(image_channels + geometry_channels) * patch_size^2 = {expected_in} from realiz3d.json"
        )
    if unet_config.get("projection_class_embeddings_input_dim") != 16:
        raise ModelFolderError(f"{unet_path}: the camera embedding must take 16 inputs")
    unet = _build(UNet2DConditionModel, unet_config, unet_path)
    _load_into(unet, folder / "unet", WEIGHTS_STEM, dtype)
    install_multiview_attention(unet, multiview=config.multiview_attention)
    mv_unet = MultiViewUNet(unet, config.geometry_channels, config.patch_size)

    scheduler_config = read_json(folder / "scheduler" / "scheduler_config.json")

    shifter_path = folder / "domain_shifter" / "config.json"
    try:
        shifter_config = parse_shifter_config(read_json(shifter_path))
    except ValidationError as e:
        raise ModelFolderError(f"{shifter_path}: {_first_error(e)}") from None
    try:
        shifter = build_domain_shifter(shifter_config, unet)
    except ValueError as e:
        raise ModelFolderError(f"{folder / 'domain_shifter' / 'config.json'}: {e}") from None
    _load_into(shifter.adapters, folder / "domain_shifter", "adapter", dtype)

    text_encoder: HashedWordTextEncoder | ClipTextEncoder
    if config.text_encoder.kind == "hashed-words":
        te_config = _validated(TextEncoderConfig, folder / "text_encoder" / "config.json")
        text_encoder = HashedWordTextEncoder(te_config)
        _load_into(text_encoder, folder / "text_encoder", "model", dtype)
    else:
        text_encoder = ClipTextEncoder(folder, torch.device("cpu"), dtype)
    if unet_config.get("cross_attention_dim") != text_encoder.dim:
        raise ModelFolderError(
            f"{unet_path}: cross_attention_dim {unet_config.get('cross_attention_dim')} "
            f"!= text encoder width {text_encoder.dim}"
        )

    vae = None
    if config.latent_space == "vae":
        vae_path = folder / "vae" / "config.json"
        vae_config = read_json(vae_path)
        factor = vae_scale_factor(vae_config)
        if factor != config.vae_scale_factor:
            raise ModelFolderError(
                f"{vae_path}: the VAE downsamples {factor}x (2^(len(block_out_channels) - 1)) but "
                f"realiz3d.json says vae_scale_factor {config.vae_scale_factor}"
            )
        vae = load_component(AutoencoderKL, folder / "vae", dtype, vae_config)

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


def vae_scale_factor(vae_config: dict) -> int:
    """Pixels per latent along one side, as diffusers' pipelines compute it from the VAE config."""
    return 2 ** (len(vae_config.get("block_out_channels") or (0,)) - 1)
