"""The cost bound of a request: what one job may ask of a worker, checked before it is accepted.

A job's compute grows with views x pixels per denoising step, times the steps; a texture job also bakes
an atlas of `atlas_size`^2 texels, and may plan up to `max_views - num_views` more views, each generated in
`inpaint_steps` steps (counted at most: planning may stop sooner). Unbounded, one schema-valid request (`"resolution": 848`) holds a
CPU worker for half an hour, and every job batched with it waits on its steps. The limits are settings
(`REALIZ3D_MAX_STEP_PIXELS`, `REALIZ3D_MAX_PIXEL_STEPS`, `REALIZ3D_MAX_ATLAS_SIZE`, and
`REALIZ3D_MAX_MESH_FACES` for uploads); the gateway answers 422 `over_budget` naming the one exceeded,
and the worker checks again before it runs the job (settings of the two may differ in a rollout).

`max_step_pixels` bounds a single step, so a job past its soft time limit is stopped at a step boundary
that comes soon: no admitted job can make one step last long, for itself or for its batch-mates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engines.errors import UserInputError
from engines.requests import TextureRequest
from service.jobs.records import JobKind
from service.settings import Settings


class OverBudget(UserInputError):
    """The request asks for more compute than this deployment admits; the message names the limit."""

    code = "over_budget"


@dataclass(frozen=True)
class JobCost:
    views: int
    resolution: int  # pixels per side of one view
    steps: int
    atlas_size: int = 0
    planned_views: int = 0  # a texture job's views planned at most beyond the requested ones
    planned_steps: int = 0  # the denoising steps of each planned view

    @property
    def step_pixels(self) -> int:
        return self.views * self.resolution * self.resolution

    @property
    def pixel_steps(self) -> int:
        planned = self.planned_views * self.resolution * self.resolution * self.planned_steps
        return self.step_pixels * self.steps + planned


def job_cost(kind: JobKind | str, params: dict[str, Any], native_resolution: int) -> JobCost:
    """The cost of a job from its (validated) params; an omitted resolution is the model's native one."""
    if JobKind(kind) == JobKind.multiview:
        views = int(params.get("num_views") or 4)
        resolution = int(params.get("resolution") or native_resolution)
        atlas = 0
    else:
        fields = TextureRequest.model_fields
        views = int(params.get("num_views") or fields["num_views"].default)
        resolution = int(params.get("view_resolution") or native_resolution)
        atlas = int(params.get("atlas_size") or fields["atlas_size"].default)
        planned = max(int(params.get("max_views") or fields["max_views"].default) - views, 0)
        inpaint = int(params.get("inpaint_steps") or fields["inpaint_steps"].default)
        return JobCost(views, resolution, int(params.get("steps") or 30), atlas, planned, inpaint)
    return JobCost(views, resolution, int(params.get("steps") or 30), atlas)


def check_cost(cost: JobCost, settings: Settings) -> None:
    """Raise OverBudget naming the first limit `cost` exceeds."""
    s = settings
    if cost.step_pixels > s.max_step_pixels:
        raise OverBudget(
            f"one step of this job is {cost.views} views x {cost.resolution}x{cost.resolution} px = "
            f"{cost.step_pixels} pixels, over max_step_pixels={s.max_step_pixels} "
            "(REALIZ3D_MAX_STEP_PIXELS): use fewer views or a lower resolution"
        )
    if cost.pixel_steps > s.max_pixel_steps:
        planned = (
            f" + {cost.planned_views} planned views x {cost.resolution}x{cost.resolution} px x "
            f"{cost.planned_steps} inpaint_steps"
            if cost.planned_views
            else ""
        )
        raise OverBudget(
            f"this job is {cost.step_pixels} pixels x {cost.steps} steps{planned} = {cost.pixel_steps} pixel-steps, "
            f"over max_pixel_steps={s.max_pixel_steps} (REALIZ3D_MAX_PIXEL_STEPS): use fewer steps, "
            "views or pixels" + (" (or a lower max_views or inpaint_steps)" if planned else "")
        )
    if cost.atlas_size > s.max_atlas_size:
        raise OverBudget(
            f"atlas_size {cost.atlas_size} is over max_atlas_size={s.max_atlas_size} (REALIZ3D_MAX_ATLAS_SIZE)"
        )
