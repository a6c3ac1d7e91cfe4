"""Texture jobs over real HTTP with `REALIZ3D_MAX_MESH_FACES` set: the gateway and the worker both apply it;
a .gltf with external files arrives as a zip and comes back as a valid GLB."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import trimesh

from engines.bench import hostile_uploads as hostile
from service.client import Realiz3DAPIError, Realiz3DClient
from tests.fixtures.gltf_validator import assert_valid
from tests.fixtures.texturing import textured_box_glb
from tests.test_texturing_inputs import _external_gltf

pytestmark = pytest.mark.timeout(900)

PARAMS = {"prompt": "a tile", "num_views": 2, "steps": 2, "atlas_size": 64, "seed": 4}
LIMIT = {"REALIZ3D_MAX_MESH_FACES": "200"}


@pytest.fixture(scope="module")
def client(service_launcher):
    # Embedded mode: the gateway's upload check and the worker's full load run in one process, each
    # reading the limit through its own path (routes.validate_mesh, execution._call_pipeline).
    service = service_launcher.gateway(None, **LIMIT)
    service_launcher.wait_ready(service, timeout=600)  # model load + warmup: minutes on a loaded machine
    with Realiz3DClient(service.url) as c:
        yield c
    service.stop()


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


def test_gateway_refuses_a_glb_over_the_face_limit(client):
    glb = trimesh.creation.icosphere(2).export(file_type="glb")  # 320 faces
    with pytest.raises(Realiz3DAPIError, match="320 faces, over the limit of 200") as err:
        client.submit_texture(glb, PARAMS, filename="ball.glb")
    assert err.value.status == 422


def test_gateway_counts_the_faces_inside_a_zip(client):
    # The gateway reads the zip's main file (entries capped by their real size) and counts its faces.
    glb = trimesh.creation.icosphere(2).export(file_type="glb")
    with pytest.raises(Realiz3DAPIError, match="320 faces, over the limit of 200") as err:
        client.submit_texture(_zip({"ball.glb": glb}), PARAMS, filename="ball.zip")
    assert err.value.status == 422


@pytest.mark.parametrize(
    "upload",
    [
        hostile.glb_reading("/proc/self/environ"),
        hostile.glb_image_reading("../../../../etc/passwd"),
        hostile.obj_reading("/etc/passwd"),
        hostile.zip_obj_with_mtl_reading("/proc/self/environ"),
        hostile.ply_reading("file:///etc/hostname"),
    ],
    ids=["glb-buffer", "glb-image", "obj-mtllib", "zip-mtl-map", "ply-texture"],
)
def test_an_upload_naming_a_server_file_is_refused_with_the_uri(client, upload):
    name, data = upload
    with pytest.raises(Realiz3DAPIError, match="which is outside the upload") as err:
        client.submit_texture(data, PARAMS, filename=name)
    assert err.value.status == 422 and err.value.code == "invalid_mesh"


@pytest.mark.parametrize(
    "bomb",
    [hostile.glb_huge_count, hostile.glb_sparse_instanced, hostile.glb_huge_image, hostile.zip_deep_gltf],
    ids=["count", "sparse-instanced", "image-pixels", "deep-json"],
)
def test_allocation_bombs_are_refused_at_the_gateway(client, bomb):
    name, data = bomb()
    with pytest.raises(Realiz3DAPIError) as err:
        client.submit_texture(data, PARAMS, filename=name)
    assert err.value.status == 422 and err.value.code == "invalid_mesh", err.value


def test_a_lying_zip_fails_as_invalid_mesh_not_internal_error(client):
    # Its size fields pass every check the gateway can make from the central directory; the worker's
    # capped read finds the lie.
    name, data = hostile.zip_lying_sizes(real_bytes=1024)
    try:
        accepted = client.submit_texture(data, PARAMS, filename=name)
    except Realiz3DAPIError as e:  # the gateway read the entry itself and found it
        assert e.status == 422 and e.code == "invalid_mesh"
        return
    job = client.wait(accepted.id, timeout=240)
    assert job.status == "failed" and job.error.code == "invalid_mesh", job.error


def test_gltf_with_external_files_as_a_zip_is_textured_into_a_valid_glb(client, tmp_path):
    doc, files = _external_gltf()
    upload = _zip(
        {"scene/scene.gltf": json.dumps(doc).encode(), **{f"scene/{k}": v for k, v in files.items()}}
    )
    accepted = client.submit_texture(upload, PARAMS, filename="scene.zip")
    job = client.wait(accepted.id, timeout=240)
    assert job.status == "succeeded", job.error
    out = tmp_path / "textured.glb"
    out.write_bytes(client.download(job.id, "textured.glb"))
    assert_valid(out)
    meta = json.loads(client.download(job.id, "meta.json"))
    assert meta["mesh"]["source"] == "scene.zip"  # the uploaded name, not the stored mesh.zip
    assert meta["mesh"]["uv_layout"] == {
        "mode": "original",
        "unwrap_needed": False,
        "unwrapped_primitives": 0,
        "new_texcoord_primitives": 0,
        "texcoord_by_material": {"0": 0},
    }


def test_planned_views_are_inpainted_end_to_end_over_http(client):
    # One view sees one face of a box: the worker plans views for the rest and inpaints them (issue 25).
    params = {**PARAMS, "num_views": 1, "max_views": 4}
    job = client.wait(client.submit_texture(textured_box_glb(32), params, filename="box.glb").id, timeout=240)
    assert job.status == "succeeded", job.error
    meta = json.loads(client.download(job.id, "meta.json"))
    surface = meta["surface"]
    assert sum(surface.values()) == pytest.approx(1.0, abs=1e-3)
    assert meta["coverage"] == surface["from_views"] < 0.3 and surface["inpainted"] > 0.3
    cameras = json.loads(client.download(job.id, "cameras.json"))["cameras"]
    assert 2 < meta["views_used"] <= 4 and len(cameras) == meta["views_used"]


def test_a_mostly_filled_surface_is_a_success_with_a_warning_in_the_job_record(client):
    params = {**PARAMS, "num_views": 1, "max_views": 1}  # one view of a box, planning off: 5/6 filled
    job = client.wait(client.submit_texture(textured_box_glb(32), params, filename="box.glb").id, timeout=240)
    assert job.status == "succeeded", job.error
    meta = json.loads(client.download(job.id, "meta.json"))
    assert meta["surface"]["filled"] > 0.5
    assert job.warnings == meta["warnings"] and any("surface fill" in w for w in job.warnings)
