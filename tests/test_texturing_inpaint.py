"""Inpainting with the real default model on the CPU: the sampler holds the known pixels, generates the rest."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from engines.pipelines import Realiz3DPipeline
from engines.requests import TextureRequest
from engines.sampling.cameras import texturing_cameras
from engines.sampling.known import KnownViews
from engines.texturing.rasterize import RayCaster, geometry_channels, render_views


@pytest.fixture(scope="module")
def pipeline() -> Realiz3DPipeline:
    return Realiz3DPipeline.load(device="cpu")


def _geometry(cameras, resolution):
    sphere = trimesh.creation.icosphere(2, radius=0.7)
    return geometry_channels(render_views(RayCaster(sphere.vertices, sphere.faces), cameras, resolution))


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_known_pixels_survive_the_sampler_and_the_rest_is_generated(pipeline, scheduler):
    res = pipeline.config.resolution
    cameras = texturing_cameras(3)
    geometry = _geometry(cameras, res)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, res, res, 3), dtype=np.uint8)
    mask = np.zeros((3, res, res), bool)
    mask[0] = True  # a view given whole: held context
    mask[1, :, : res // 2] = True  # half known
    # view 2: nothing known, generated freely
    request = TextureRequest(prompt="a red ball", steps=4, seed=3, scheduler=scheduler)
    held = np.stack(
        pipeline.generate_views(request, cameras, res, geometry, known=KnownViews(images, mask)).images
    )
    free = np.stack(pipeline.generate_views(request, cameras, res, geometry).images)
    got, want = held.astype(np.int64), images.astype(np.int64)
    assert np.abs(got[mask] - want[mask]).max() <= 1  # pixel model: exact up to the uint8 rounding
    unknown = ~mask
    # the unknown region is the model's: far from the (random) known image, not flat
    assert np.abs(got[unknown] - want[unknown]).mean() > 30
    assert got[1][unknown[1]].std() > 5
    # and it is generated around what is held: it differs from the same seed's unconditioned sample
    assert np.abs(got[1][unknown[1]] - free[1][unknown[1]].astype(np.int64)).mean() > 1


def test_a_texture_job_inpaints_planned_views_with_the_real_model(pipeline, tmp_path):
    from tests.fixtures.texturing import textured_box_glb

    path = tmp_path / "box.glb"
    path.write_bytes(textured_box_glb(64))
    request = TextureRequest(
        prompt="a wooden crate", num_views=1, steps=2, seed=1, atlas_size=64, max_views=6
    )
    stages, steps = [], []
    result = pipeline.texture(
        request,
        path,
        progress=lambda s, t: steps.append((s, t)),
        stage_progress=lambda n, f: stages.append(n),
    )
    surface = result.meta["surface"]
    assert surface["inpainted"] > 0.5 and sum(surface.values()) == pytest.approx(1.0, abs=1e-3)
    assert "plan" in stages and "inpaint" in stages
    assert result.meta["views_used"] == len(result.views) > 1
    # the planned views' denoising continues the step count: it never goes back
    assert [s for s, _ in steps] == sorted(s for s, _ in steps) and steps[-1][0] == steps[-1][
        1
    ] > request.steps
    # each planned views' call takes the request's inpaint_steps, not its steps
    assert request.inpaint_steps != request.steps
    assert (steps[-1][1] - request.steps) % request.inpaint_steps == 0


def test_a_latent_model_holds_the_known_cells_of_its_latents_exactly(tiny_sd_model_dir):
    # A latent model holds the VAE encoding of the cells whose pixels are all known: after the last step
    # those latents are the encoding itself, so the decoded known region is the VAE's own reconstruction.
    from engines.requests import MultiviewRequest, StageTimer
    from engines.sampling.cameras import orbit_cameras
    from tests.fixtures.models import eager_unet

    pipe = Realiz3DPipeline.load(tiny_sd_model_dir, device="cpu")
    res = pipe.config.resolution
    factor = pipe.config.vae_scale_factor
    cameras = orbit_cameras(2)
    images = np.random.default_rng(1).integers(0, 256, (2, res, res, 3), dtype=np.uint8)
    mask = np.zeros((2, res, res), bool)
    mask[:, :, : res // 2 + factor // 2] = True  # half a cell past the middle: that cell is not all known
    request = MultiviewRequest(prompt="a cup", num_views=2, steps=3, seed=2)
    plan = pipe.plan(request, cameras, res, None, StageTimer(), KnownViews(images, mask))
    job, known = plan.job, plan.job.known
    assert known is not None and known.mask.shape[-1] == res // factor
    assert known.mask[..., : res // factor // 2].all() and not known.mask[..., res // factor // 2 :].any()
    with torch.no_grad():
        while not job.done:
            job.advance(eager_unet(pipe.model, job.unet_call(), job.combo))
    held = known.mask.bool().expand_as(job.latents)
    assert torch.equal(job.latents[held], known.sample[held])
    assert not torch.allclose(job.latents[~held], known.sample[~held], atol=0.1)
