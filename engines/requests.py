"""What a caller asks the engines for: typed, validated once, torch-free.

The HTTP gateway validates request bodies with these same classes, so the limits have one home.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engines.sampling.schedule import DomainSchedule

MAX_VIEWS = 8
MAX_STEPS = 150

# progress(step, total): called after every denoising step (and at stage boundaries).
ProgressCallback = Callable[[int, int], None]
# should_cancel(): polled before every denoising step; True stops the job with JobCanceled.
CancelCheck = Callable[[], bool]


class GenerationParams(BaseModel):
    """Settings shared by text-to-multiview and texturing."""

    # Finite numbers only: NaN or 1e999 (inf) would pass every bound check and break the cameras later.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = Field(..., min_length=1, max_length=1000, examples=["a red cube"])
    negative_prompt: str = Field("", max_length=1000)
    steps: int = Field(30, ge=1, le=MAX_STEPS)
    guidance_scale: float | None = Field(
        None, ge=0.0, le=50.0, description="classifier-free guidance; the model's default when omitted"
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="random when omitted; echoed back")
    schedule: DomainSchedule | None = Field(
        None, description="{split: 0..1} or {domain: real|synthetic}; the model's default when omitted"
    )
    scheduler: Literal["ddim", "dpm++"] = "ddim"

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt must not be blank")
        return v


class MultiviewRequest(GenerationParams):
    """N views of one object at given cameras."""

    num_views: int = Field(4, ge=1, le=MAX_VIEWS)
    elevation_deg: float = Field(15.0, ge=-90.0, le=90.0)
    azimuths_deg: list[float] | None = Field(None, description="one per view; evenly spaced when omitted")
    radius: float = Field(2.2, gt=0.5, le=10.0)
    fov_deg: float = Field(40.0, gt=5.0, lt=120.0)
    resolution: int | None = Field(
        None, ge=16, le=2048, multiple_of=8, description="the model's native size when omitted"
    )

    @model_validator(mode="after")
    def _azimuths_match_views(self) -> MultiviewRequest:
        if self.azimuths_deg is not None and len(self.azimuths_deg) != self.num_views:
            raise ValueError(
                f"azimuths_deg has {len(self.azimuths_deg)} values but num_views is {self.num_views}"
            )
        return self


class TextureRequest(GenerationParams):
    """Texture a mesh: geometry-conditioned views baked into a UV atlas."""

    num_views: int = Field(6, ge=1, le=MAX_VIEWS)
    atlas_size: int = Field(1024, ge=64, le=4096)
    view_resolution: int | None = Field(None, ge=16, le=2048, multiple_of=8)


@dataclass
class StageTimer:
    """Wall-clock seconds per named stage (text_encode, denoise, decode, bake, ...)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, value: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + value
