"""A latent (SD-imported) model served over real HTTP (embedded mode): texturing end to end, explicit
cameras through the API, and requests the model cannot serve refused at submission with a clear 4xx."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import trimesh
from PIL import Image

from engines.sampling.cameras import Camera, cameras_from_json
from service.client import Realiz3DAPIError, Realiz3DClient
from tests.fixtures.gltf_validator import assert_valid_glb
from tests.service_helpers import box_glb

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def latent_service(service_launcher, tiny_sd_model_dir):
    server = service_launcher.gateway(None, REALIZ3D_BROKER_URL="", REALIZ3D_MODEL_DIR=str(tiny_sd_model_dir))
    service_launcher.wait_ready(server, timeout=300)  # torch + diffusers + transformers + CLIP, warm-up
    yield server
    server.stop()


def test_latent_model_textures_a_mesh_over_http(latent_service):
    with Realiz3DClient(latent_service.url) as client:
        params = {"prompt": "a wooden crate", "num_views": 3, "steps": 2, "atlas_size": 64, "seed": 0}
        job = client.submit_texture(box_glb(), params, filename="box.glb")
        done = client.wait(job.id, timeout=240)
        assert done.status == "succeeded", done.error
        names = {a.name for a in done.artifacts}
        assert {"textured.glb", "texture.png", "views/view_02.png", "cameras.json"} <= names
        view = np.asarray(Image.open(io.BytesIO(client.download(job.id, "views/view_00.png"))))
        assert view.shape == (64, 64, 3)  # the model's own resolution: 8x8 latents through the 8x VAE
        meta = json.loads(client.download(job.id, "meta.json"))
        assert meta["view_resolution"] == 64 and meta["model"] == "tiny-sd"
        glb = client.download(job.id, "textured.glb")
        assert_valid_glb(glb)
        scene = trimesh.load(io.BytesIO(glb), file_type="glb")
        assert len(scene.geometry) == 1


def test_explicit_cameras_through_the_api_round_trip(latent_service):
    # Cameras that are not an orbit around the origin: translated and tilted, as a user's own renders are.
    cams = [Camera(20, 10, 2.5), Camera(200, -20, 3.0)]
    specs = []
    for cam in cams:
        m = cam.camera_to_world()
        m[:3, 3] += [0.3, -0.2, 0.1]
        specs.append({"camera_to_world": m.tolist(), "fov_deg": 35.0})
    with Realiz3DClient(latent_service.url) as client:
        job = client.submit_multiview({"prompt": "a lamp", "cameras": specs, "steps": 2, "seed": 1})
        assert client.wait(job.id, timeout=120).status == "succeeded"
        back, resolution = cameras_from_json(json.loads(client.download(job.id, "cameras.json")))
    assert resolution == 64 and len(back) == 2
    for spec, cam in zip(specs, back, strict=True):
        assert cam.explicit and cam.fov_deg == 35.0
        assert np.allclose(cam.camera_to_world(), spec["camera_to_world"], atol=1e-12)


def test_requests_the_model_cannot_serve_are_refused_at_submission(latent_service):
    with Realiz3DClient(latent_service.url) as client:
        with pytest.raises(Realiz3DAPIError) as err:
            client.submit_multiview({"prompt": "a vase", "num_views": 1, "steps": 2, "resolution": 72})
        assert err.value.status == 422 and err.value.code == "unsupported_by_model"
        assert "multiple of 16" in err.value.message and "'tiny-sd'" in err.value.message
        with pytest.raises(Realiz3DAPIError) as err:
            client.submit_texture(box_glb(), {"prompt": "a box", "view_resolution": 40}, filename="box.glb")
        assert err.value.status == 422 and "resolution 40" in err.value.message


def test_refusal_reasons_come_from_the_workers_advertised_capabilities():
    from engines.requests import ModelCapabilities
    from service.api.submission import model_refusal
    from service.jobs.records import JobKind

    flat = ModelCapabilities(name="t2i", resolution=64, resolution_step=16, geometry=False).model_dump()
    geo = ModelCapabilities(name="geo", resolution=64, resolution_step=16, geometry=True).model_dump()
    only_flat = [{"queues": ["multiview", "texture"], "model": flat}]
    reason = model_refusal(only_flat, JobKind.texture, {"prompt": "x"})
    assert reason is not None and "'t2i' takes no geometry conditioning" in reason
    assert model_refusal(only_flat, JobKind.multiview, {"prompt": "x"}) is None
    # One worker that can serve it is enough; so is one that advertises nothing (it decides itself).
    assert model_refusal([*only_flat, {"queues": ["texture"], "model": geo}], JobKind.texture, {}) is None
    assert model_refusal([*only_flat, {"queues": ["texture"]}], JobKind.texture, {}) is None
    assert "multiple of 16" in model_refusal(only_flat, JobKind.multiview, {"resolution": 24})


def test_geometry_maps_are_area_averaged_to_the_latent_grid(tiny_sd_model_dir):
    from engines.errors import UserInputError
    from engines.pipelines import Realiz3DPipeline

    pipe = Realiz3DPipeline.load(tiny_sd_model_dir)
    rng = np.random.default_rng(0)
    maps = np.zeros((2, 7, 64, 64), np.float32)
    mask = rng.random((2, 64, 64)) > 0.4
    maps[:, 0:6] = rng.normal(size=(2, 6, 64, 64)) * mask[:, None]
    maps[:, 6] = mask
    small = pipe.unet_geometry(maps, 64).numpy()
    assert small.shape == (2, 7, 8, 8)  # 64 px views, 8x VAE: the UNet's 8x8 input
    cell = maps[1, :, 8:16, 24:32].reshape(7, -1).mean(axis=1)
    assert np.allclose(small[1, :, 1, 3], cell, atol=1e-6)  # every channel the same area average
    assert small[:, 6].min() > 0 and small[:, 6].max() < 1  # the mask becomes the covered fraction
    with pytest.raises(UserInputError, match="the view resolution"):
        pipe.unet_geometry(maps[:, :, :32, :32], 64)
