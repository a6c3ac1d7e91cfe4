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
from tests.service_helpers import box_glb

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def latent_service(service_launcher, tiny_sd_model_dir):
    server = service_launcher.gateway(None, REALIZ3D_BROKER_URL="", REALIZ3D_MODEL_DIR=str(tiny_sd_model_dir))
    service_launcher.wait_ready(server)
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
        scene = trimesh.load(io.BytesIO(client.download(job.id, "textured.glb")), file_type="glb")
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
