"""What a caller asks the engines for: typed, validated once, torch-free.

The HTTP gateway validates request bodies with these same classes, so the limits have one home.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engines.sampling.cameras import Camera, check_camera_matrix
from engines.types import MAX_BLOCK_SPLIT, ScheduleValue

MAX_VIEWS = 8
MAX_STEPS = 150

# progress(step, total): called after every denoising step (and at stage boundaries).
ProgressCallback = Callable[[int, int], None]
# should_cancel(): polled before every denoising step; True stops the job with JobCanceled.
CancelCheck = Callable[[], bool]
#: stage_progress(name, fraction): a texturing stage is running and `fraction` (0-1) of it is done;
#: called at each stage's start (0.0), at its end (1.0) and, in the UV unwrap, as the unwrap child
#: reports its work
StageCallback = Callable[[str, float], None]


class GenerationParams(BaseModel):
    """Settings shared by text-to-multiview and texturing."""

    # Finite numbers only: NaN or 1e999 (inf) would pass every bound check and break the cameras later.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = Field(
        ..., min_length=1, max_length=1000, examples=["a red cube"], description="what to draw"
    )
    negative_prompt: str = Field("", max_length=1000, description="what to steer away from")
    steps: int = Field(30, ge=1, le=MAX_STEPS, description="denoising steps")
    guidance_scale: float | None = Field(
        None, ge=0.0, le=50.0, description="classifier-free guidance; the model's default when omitted"
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="random when omitted; echoed back")
    schedule: ScheduleValue | None = Field(
        None,
        description="the domain schedule: the CLI's string ('0.4', 'real', 'synthetic', '0.4,blocks=6', "
        "'0.4,up=0'), a bare split number (0.4), or an object {split: 0..1} or {domain: real|synthetic}, "
        "optionally with blocks: K (after the step split the first K block sites stay synthetic); the "
        "model's default when omitted",
        examples=["0.4,blocks=6", 0.4, {"split": 0.4, "blocks": 6}],
    )
    scheduler: Literal["ddim", "dpm++"] | None = Field(
        None, description="sampler; the model's default_scheduler (realiz3d.json) when omitted"
    )
    cache_interval: int = Field(
        1,
        ge=1,
        le=MAX_STEPS,
        description="step caching: run the whole UNet every N-th step and only its shallow branch on the "
        "cached deep features between (DeepCache); 1 = off. A step where the domain schedule switches runs "
        "whole. Faster, at some quality cost; where the backend serves it for the model (block-shift: every "
        "backend), else every step runs whole",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt must not be blank")
        return v


class CameraSpec(BaseModel):
    """An explicit camera: camera-to-world 4x4 (Y-up world, OpenGL camera frame looking down -Z) and fov."""

    model_config = ConfigDict(extra="forbid")

    camera_to_world: list[list[float]] = Field(
        ...,
        description="4x4 rigid transform, rows; the camera looks down its -Z axis, +Y up in the image",
        examples=[[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2.2], [0, 0, 0, 1]]],
    )
    fov_deg: float = Field(40.0, gt=5.0, lt=120.0, description="vertical field of view (square images)")

    @field_validator("camera_to_world")
    @classmethod
    def _rigid(cls, v: list[list[float]]) -> list[list[float]]:
        check_camera_matrix(v)
        return v

    def to_camera(self) -> Camera:
        return Camera.from_matrix(self.camera_to_world, self.fov_deg)

    @classmethod
    def from_camera(cls, camera: Camera) -> CameraSpec:
        return cls(camera_to_world=camera.camera_to_world().tolist(), fov_deg=camera.fov_deg)


class ExplicitCameras(BaseModel):
    """`cameras`: one explicit camera per view, instead of the default view set. `num_views` follows them."""

    cameras: list[CameraSpec] | None = Field(
        None,
        min_length=1,
        max_length=MAX_VIEWS,
        description="explicit cameras, one per view (an alternative to the orbit parameters)",
    )

    def _views_follow_cameras(self, orbit_fields: tuple[str, ...]) -> None:
        if self.cameras is None:
            return
        given = sorted(self.model_fields_set & set(orbit_fields))
        if given:
            raise ValueError(f"give either cameras or {', '.join(given)}, not both")
        if "num_views" in self.model_fields_set and self.num_views != len(self.cameras):  # type: ignore[attr-defined]
            raise ValueError(f"{len(self.cameras)} cameras but num_views is {self.num_views}")  # type: ignore[attr-defined]
        self.num_views = len(self.cameras)  # type: ignore[attr-defined]

    def explicit_cameras(self) -> list[Camera] | None:
        return [c.to_camera() for c in self.cameras] if self.cameras is not None else None


class MultiviewRequest(ExplicitCameras, GenerationParams):
    """N views of one object at given cameras: an orbit (elevation, azimuths, radius, fov) or `cameras`."""

    num_views: int = Field(4, ge=1, le=MAX_VIEWS, description="views of the object, one camera each")
    elevation_deg: float = Field(15.0, ge=-90.0, le=90.0, description="camera elevation in degrees")
    azimuths_deg: list[float] | None = Field(
        None, description="camera azimuths in degrees, one per view; evenly spaced when omitted"
    )
    radius: float = Field(2.2, gt=0.5, le=10.0, description="camera distance from the object's centre")
    fov_deg: float = Field(40.0, gt=5.0, lt=120.0, description="vertical field of view in degrees")
    resolution: int | None = Field(
        None, ge=16, le=2048, multiple_of=8, description="the model's native size when omitted"
    )

    @model_validator(mode="after")
    def _azimuths_match_views(self) -> MultiviewRequest:
        self._views_follow_cameras(("elevation_deg", "azimuths_deg", "radius", "fov_deg"))
        if self.azimuths_deg is not None and len(self.azimuths_deg) != self.num_views:
            raise ValueError(
                f"azimuths_deg has {len(self.azimuths_deg)} values but num_views is {self.num_views}"
            )
        return self


class TextureRequest(ExplicitCameras, GenerationParams):
    """Texture a mesh: geometry-conditioned views baked into a UV atlas. Cameras: the default view set
    (ring + top + bottom) of `num_views`, or explicit `cameras` in the mesh's normalised frame."""

    num_views: int = Field(
        6,
        ge=1,
        le=MAX_VIEWS,
        description="views to generate and bake: a ring at elevation 0 plus top and bottom",
    )
    atlas_size: int = Field(1024, ge=64, le=4096, description="texture atlas size in texels (square)")
    view_resolution: int | None = Field(
        None,
        ge=16,
        le=2048,
        multiple_of=8,
        description="generated views' size; the model's native size when omitted",
    )
    unwrap: Literal["fast", "quality"] = Field(
        "fast",
        description="UV unwrap of a mesh without usable UVs: fast (pieces charted in parallel, one pack) "
        "or quality (one xatlas pass over the whole mesh, several times slower)",
    )
    bake_resolution: int = Field(
        512,
        ge=64,
        le=2048,
        description="pixels per view side at which visibility is decided and views are sampled for the "
        "bake (each texel samples the generated view at its own size; at least the view resolution)",
    )
    coverage_target: float = Field(
        0.97,
        ge=0.0,
        le=1.0,
        description="view planning: add views until this share of the surface is coloured by views",
    )
    max_views: int = Field(
        16,
        ge=1,
        le=64,
        description="view planning: the most views in all, requested plus planned (inpainted); at most "
        "num_views turns planning off",
    )
    inpaint_steps: int = Field(
        6,
        ge=1,
        le=MAX_STEPS,
        description="denoising steps of the calls that generate planned (inpainted) views: their known "
        "pixels are held, so fewer than `steps` suffice; more adds detail to what only they see, at a cost "
        "linear in steps",
    )

    @model_validator(mode="after")
    def _cameras_set_views(self) -> TextureRequest:
        self._views_follow_cameras(())
        return self


@dataclass
class StageTimer:
    """Wall-clock seconds per named stage (text_encode, denoise, decode, bake, ...)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, value: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + value


class ModelCapabilities(BaseModel):
    """What a loaded model can serve (its envelope). Workers advertise it; the gateway refuses at submission
    (4xx) what no worker's model can serve, with the same reason the worker would give."""

    name: str
    resolution: int = Field(..., description="native image size in pixels")
    resolution_step: int = Field(..., description="image sizes must be multiples of this")
    geometry: bool = Field(..., description="takes geometry maps (can texture meshes)")
    block_sites: int = Field(
        MAX_BLOCK_SPLIT, description="Domain Shifter block sites: the largest block split `blocks` it serves"
    )
    resolutions: list[int] | None = Field(
        None, description="the image sizes served (realiz3d.json `serving`); None: any multiple of the step"
    )
    max_resolution: int | None = Field(None, description="the largest image size served; None: no bound")
    views: list[int] | None = Field(None, description="the view counts served; None: any")

    def refusal(self, kind: str, params: dict) -> str | None:
        """Why this model cannot serve a `kind` job with these (validated) parameters; None if it can."""
        if kind == "texture" and not self.geometry:
            return f"model {self.name!r} takes no geometry conditioning, so it cannot texture meshes"
        schedule = params.get("schedule")
        if isinstance(schedule, dict) and (
            problem := self.schedule_refusal(int(schedule.get("blocks") or 0))
        ):
            return problem
        views = params.get("num_views") or (len(params["cameras"]) if params.get("cameras") else None)
        if views is not None and (problem := self.views_refusal(int(views))):
            return problem
        res = params.get("resolution" if kind == "multiview" else "view_resolution") or self.resolution
        return self.resolution_refusal(int(res))

    def schedule_refusal(self, blocks: int) -> str | None:
        if blocks > self.block_sites:
            return f"schedule blocks={blocks}: model {self.name!r} has {self.block_sites} block sites"
        return None

    def views_refusal(self, views: int) -> str | None:
        if self.views is not None and views not in self.views:
            return f"num_views {views}: model {self.name!r} serves {_values(self.views)} views"
        return None

    def resolution_refusal(self, resolution: int) -> str | None:
        if resolution % self.resolution_step:
            return (
                f"resolution {resolution} is not a multiple of {self.resolution_step}, "
                f"which model {self.name!r} needs"
            )
        if self.resolutions is not None and resolution not in self.resolutions:
            return f"resolution {resolution}: model {self.name!r} serves {_values(self.resolutions)}"
        if self.max_resolution is not None and resolution > self.max_resolution:
            return (
                f"resolution {resolution}: model {self.name!r} serves multiples of {self.resolution_step} "
                f"up to {self.max_resolution}"
            )
        return None


def _values(values: list[int]) -> str:
    return ", ".join(map(str, values[:-1])) + (" or " if len(values) > 1 else "") + str(values[-1])
