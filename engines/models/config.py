"""`realiz3d.json`: the model folder's own settings (format version, views, resolution, channels...)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engines.types import DomainSchedule

FORMAT_VERSION = 1
# normal (3) + position (3) + presence mask (1), concatenated to the UNet input (Hunyuan3D-Paint style).
GEOMETRY_CHANNELS = 7


class TextEncoderConfig(BaseModel):
    """Which text encoder the folder holds.

    `hashed-words`: made here (word-hash embedding + one transformer layer), offline and tiny.
    `clip`: a transformers CLIPTextModel + CLIPTokenizer in `text_encoder/` and `tokenizer/` (SD family).
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["hashed-words", "clip"] = "hashed-words"
    vocab_buckets: int = Field(4096, ge=16)
    dim: int = Field(64, ge=8)
    max_tokens: int = Field(16, ge=2, le=512)
    heads: int = Field(4, ge=1)


class CameraConfig(BaseModel):
    """How the UNet's camera embedding reads a camera (engines/sampling/cameras.py converts exactly).

    `realiz3d`: our Y-up camera-to-world matrix as is. `mvdream`: MVDream's Z-up world with the camera moved
    onto the unit sphere (what MVDream's released checkpoints were trained on).
    """

    model_config = ConfigDict(extra="forbid")

    convention: Literal["realiz3d", "mvdream"] = "realiz3d"


class ServingEnvelope(BaseModel):
    """The shapes a model serves: what workers advertise, the gateway enforces (422 naming the allowed
    values) and compiled backends build engines for (one per view count and resolution).

    `resolutions`: the image sizes served, or None for every multiple of the model's resolution step up to
    `max_resolution` (None: twice the native resolution). `views`: the view counts served."""

    model_config = ConfigDict(extra="forbid")

    resolutions: list[int] | None = Field(None, min_length=1, description="served sizes; None: up to max")
    max_resolution: int | None = Field(None, ge=16, le=2048, description="None: twice the native size")
    views: list[int] = Field(default_factory=lambda: list(range(1, 9)), min_length=1)

    @field_validator("resolutions", "views")
    @classmethod
    def _sorted_unique(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if any(x < 1 for x in v):
            raise ValueError("values must be positive")
        return sorted(set(v))


class ModelConfig(BaseModel):
    """Contents of `realiz3d.json`."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    name: str = "realiz3d-model"
    resolution: int = Field(64, ge=16, le=2048, description="native image size in pixels")
    num_views: int = Field(4, ge=1, le=8, description="views the model was trained with")
    image_channels: int = Field(3, description="channels of the denoised space (3 = pixel space)")
    latent_space: Literal["pixel", "vae"] = "pixel"
    vae_scale_factor: int = Field(
        8, ge=1, le=64, description="pixels per latent along one side; must match vae/config.json"
    )
    patch_size: int = Field(
        2, ge=1, le=4, description="pixel-unshuffle factor: the UNet runs at resolution / patch_size"
    )
    geometry_channels: int = Field(GEOMETRY_CHANNELS, description="0 = no geometry conditioning")
    multiview_attention: bool = True
    camera: CameraConfig = Field(default_factory=CameraConfig)
    text_encoder: TextEncoderConfig = Field(default_factory=TextEncoderConfig)
    default_schedule: DomainSchedule = Field(default_factory=lambda: DomainSchedule(split=0.4))
    default_scheduler: Literal["ddim", "dpm++"] = "ddim"
    default_guidance_scale: float = Field(
        7.5, ge=0.0, le=50.0, description="classifier-free guidance when a request gives none"
    )
    seed: int | None = Field(None, description="seed a generated model was built from")
    serving: ServingEnvelope = Field(default_factory=ServingEnvelope)

    def served_resolutions(self, step: int) -> list[int]:
        """Every image size this model serves, given its resolution step (sorted)."""
        env = self.serving
        if env.resolutions is not None:
            return list(env.resolutions)
        top = env.max_resolution or min(2048, 2 * self.resolution)
        return list(range(step, top + 1, step))

    @property
    def downsample_factor(self) -> int:
        """Pixels per UNet cell along one side."""
        return (self.vae_scale_factor if self.latent_space == "vae" else 1) * self.patch_size

    @property
    def unet_input_factor(self) -> int:
        """Pixels per cell of the UNet's input (geometry maps are made at this size, before patching)."""
        return self.vae_scale_factor if self.latent_space == "vae" else 1
