"""Inputs beyond a plain GLB: .gltf with external files (folder, zip), Draco, triangle strips, OBJ out; limits."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import trimesh

from engines.errors import MeshError
from engines.texturing.export import textured_glb_bytes
from engines.texturing.gltf_document import ELEMENT_ARRAY_BUFFER, GltfDocument
from engines.texturing.mesh_io import MeshLimits, load_mesh, load_mesh_bytes, validate_mesh_bytes
from engines.texturing.pipeline import save_textured
from engines.texturing.uv_layout import ensure_layout
from service.api.errors import ApiError
from service.api.routes import validate_mesh
from service.cli import main
from service.settings import Settings, get_settings
from tests.fixtures.gltf_assets import add_primitive, grid, new_document, png
from tests.fixtures.gltf_validator import assert_valid, assert_valid_glb
from tests.fixtures.texturing import procedural_texture


def _external_gltf() -> tuple[dict, dict[str, bytes]]:
    """A .gltf whose geometry sits in data.bin and whose base colour is textures/albedo.png."""
    doc = new_document()
    pos, tri, uv = grid(3, 3)
    material = doc.add("materials", {"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}})
    mesh = doc.add("meshes", {"primitives": [add_primitive(doc, pos, tri, uv, material)]})
    doc.json["nodes"] = [{"mesh": mesh}]
    doc.json["scenes"] = [{"nodes": [0]}]
    doc.json["images"] = [{"uri": "textures/albedo.png"}]
    doc.json["textures"] = [{"source": 0}]
    doc.json["buffers"] = [{"uri": "data.bin", "byteLength": len(doc.binary)}]
    return doc.json, {"data.bin": bytes(doc.binary), "textures/albedo.png": png((10, 20, 30))}


def test_gltf_with_external_buffer_and_image_loads_from_its_folder(tmp_path):
    doc, files = _external_gltf()
    (tmp_path / "textures").mkdir()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "scene.gltf").write_text(json.dumps(doc))
    mesh = load_mesh(tmp_path / "scene.gltf", MeshLimits(files_beside=True))  # the CLI's opt-in
    assert mesh.num_faces == 18 and (mesh.texture == [10, 20, 30]).all()
    out = tmp_path / "out.glb"
    out.write_bytes(textured_glb_bytes(mesh, procedural_texture(32)))
    assert_valid(out)  # one self-contained GLB: buffer and images embedded


def test_gltf_in_a_zip_loads_and_a_lone_gltf_names_the_missing_file(tmp_path):
    doc, files = _external_gltf()
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as zf:
        zf.writestr("asset/scene.gltf", json.dumps(doc))
        for name, data in files.items():
            zf.writestr(f"asset/{name}", data)
    mesh = load_mesh_bytes(packed.getvalue(), "asset.zip")
    assert mesh.num_faces == 18 and (mesh.texture == [10, 20, 30]).all()
    with pytest.raises(MeshError, match=r"external file 'data.bin'.*\.zip"):
        load_mesh_bytes(json.dumps(doc).encode(), "scene.gltf")
    with pytest.raises(ApiError, match=r"external file 'data.bin'.*\.zip"):  # refused before queuing
        validate_mesh(json.dumps(doc).encode(), "scene.gltf", Settings())
    broken = io.BytesIO()
    with zipfile.ZipFile(broken, "w") as zf:
        zf.writestr("scene.gltf", json.dumps(doc))
    with pytest.raises(MeshError, match="'data.bin', which is not in the zip"):
        load_mesh_bytes(broken.getvalue(), "broken.zip")


def _draco_glb() -> tuple[bytes, np.ndarray]:
    import DracoPy

    pos, tri, uv = grid(4, 4)
    stream = DracoPy.encode(pos, tri.astype(np.uint32), tex_coord=uv, preserve_order=True)
    decoded = DracoPy.decode(stream)
    ids = {a["num_components"]: a["unique_id"] for a in decoded.attributes}
    doc = new_document()
    view = doc.add_buffer_view(stream)
    lo, hi = decoded.points.min(axis=0).tolist(), decoded.points.max(axis=0).tolist()
    position = doc.add(
        "accessors", {"componentType": 5126, "count": len(pos), "type": "VEC3", "min": lo, "max": hi}
    )
    texcoord = doc.add("accessors", {"componentType": 5126, "count": len(pos), "type": "VEC2"})
    indices = doc.add("accessors", {"componentType": 5125, "count": tri.size, "type": "SCALAR"})
    draco = {"bufferView": view, "attributes": {"POSITION": ids[3], "TEXCOORD_0": ids[2]}}
    prim = {
        "attributes": {"POSITION": position, "TEXCOORD_0": texcoord},
        "indices": indices,
        "extensions": {"KHR_draco_mesh_compression": draco},
    }
    doc.json["meshes"] = [{"primitives": [prim]}]
    doc.json["nodes"] = [{"mesh": 0}]
    doc.json["scenes"] = [{"nodes": [0]}]
    doc.json["extensionsUsed"] = ["KHR_draco_mesh_compression"]
    doc.json["extensionsRequired"] = ["KHR_draco_mesh_compression"]
    return doc.to_glb(), np.asarray(decoded.points)


def test_draco_compressed_glb_is_decoded_and_written_back_uncompressed(tmp_path):
    data, points = _draco_glb()
    assert validate_mesh_bytes(data, "draco.glb") == "glb"
    mesh = load_mesh_bytes(data, "draco.glb")
    assert mesh.num_faces == 32 and mesh.layout.mode == "original"
    np.testing.assert_allclose(mesh.vertices, points, atol=1e-6)
    out = tmp_path / "draco_textured.glb"
    out.write_bytes(textured_glb_bytes(mesh, procedural_texture(32)))
    assert_valid(out)
    doc = GltfDocument.from_bytes(out.read_bytes()).json
    assert "extensionsRequired" not in doc and "extensions" not in doc["meshes"][0]["primitives"][0]


def test_meshopt_compression_is_refused_by_name():
    doc = new_document()
    pos, tri, _ = grid(1, 1)
    doc.json["meshes"] = [{"primitives": [add_primitive(doc, pos, tri)]}]
    doc.json["extensionsUsed"] = doc.json["extensionsRequired"] = ["EXT_meshopt_compression"]
    with pytest.raises(MeshError, match="EXT_meshopt_compression"):
        validate_mesh_bytes(doc.to_glb(), "m.glb")


def test_triangle_strip_ply_and_strip_and_fan_gltf_primitives_load():
    pos, _, _ = grid(2, 1)  # 6 vertices: rows y = -0.5 (0, 1, 2) and y = +0.5 (3, 4, 5)
    header = (
        "ply\nformat ascii 1.0\nelement vertex 6\nproperty float x\nproperty float y\nproperty float z\n"
        "element tristrips 1\nproperty list int int vertex_indices\nend_header\n"
    )
    body = "".join(f"{x} {y} {z}\n" for x, y, z in pos.tolist()) + "7 0 3 1 4 -1 2 5\n"
    mesh = load_mesh_bytes((header + body).encode(), "strip.ply")
    assert mesh.num_faces == 2  # the strip 0 3 1 4 (the restart leaves 2 5 too short)
    doc = new_document()
    strip = add_primitive(doc, pos, np.array([3, 0, 4, 1, 5, 2]), mode=5)
    fan = add_primitive(doc, pos, np.array([1, 2, 5, 4, 3, 0]), mode=6)
    doc.json["meshes"] = [{"primitives": [strip, fan]}]
    doc.json["nodes"] = [{"mesh": 0}]
    doc.json["scenes"] = [{"nodes": [0]}]
    data = doc.to_glb()
    assert validate_mesh_bytes(data, "s.glb") == "glb"
    loaded = load_mesh_bytes(data, "s.glb")
    assert loaded.num_faces == 8
    normals = np.cross(
        *(loaded.vertices[loaded.faces[:, k]] - loaded.vertices[loaded.faces[:, 0]] for k in (1, 2))
    )
    assert (normals[:, 2] > 0).all()  # strip winding alternates as the spec says; all face +Z


def test_obj_input_gets_obj_mtl_and_png_back(tmp_path):
    sphere = trimesh.creation.icosphere(1)
    sphere.export(tmp_path / "s.obj")
    mesh = ensure_layout(load_mesh(tmp_path / "s.obj"), timeout_s=60)
    files = save_textured(mesh, procedural_texture(32), tmp_path / "out")
    names = {f.name for f in files}
    assert names == {"texture.png", "textured.glb", "textured.obj", "textured.mtl"}
    assert "map_Kd texture.png" in (tmp_path / "out" / "textured.mtl").read_text()
    back = trimesh.load(tmp_path / "out" / "textured.obj", process=False)
    assert len(back.faces) == len(sphere.faces) and back.visual.uv is not None
    assert_valid(tmp_path / "out" / "textured.glb")


def test_face_limit_setting_is_honoured_by_the_gateway_and_the_texture_command(tmp_path, monkeypatch, capsys):
    data = trimesh.creation.icosphere(2).export(file_type="glb")  # 320 faces
    with pytest.raises(ApiError, match="320 faces, over the limit of 100"):
        validate_mesh(data, "s.glb", Settings(max_mesh_faces=100))
    validate_mesh(data, "s.glb", Settings(max_mesh_faces=320))
    assert Settings(unwrap_timeout_seconds=7).mesh_limits() == MeshLimits(
        max_faces=500_000, max_bytes=Settings().max_upload_bytes, unwrap_timeout_s=7
    )
    (tmp_path / "s.glb").write_bytes(data)
    monkeypatch.setenv("REALIZ3D_MAX_MESH_FACES", "100")
    get_settings.cache_clear()
    try:
        rc = main(["texture", str(tmp_path / "s.glb"), "--prompt", "x", "--out", str(tmp_path / "o")])
    finally:
        get_settings.cache_clear()
    assert rc == 2 and "over the limit of 100" in capsys.readouterr().err


def test_glb_index_accessor_is_read_with_its_own_component_type():
    doc = new_document()
    pos, tri, _ = grid(1, 1)
    prim = add_primitive(doc, pos, None)
    prim["indices"] = doc.add_accessor(tri.astype(np.uint32).reshape(-1, 1), "SCALAR", ELEMENT_ARRAY_BUFFER)
    doc.json["meshes"] = [{"primitives": [prim]}]
    doc.json["nodes"] = [{"mesh": 0}]
    doc.json["scenes"] = [{"nodes": [0]}]
    mesh = load_mesh_bytes(doc.to_glb(), "u32.glb")
    assert (mesh.faces == tri).all()


def test_obj_normals_are_kept_and_missing_ones_are_smooth(tmp_path):
    obj = "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0.2\nvn 0.6 0 0.8\nvn 0.6 0 0.8\nvn 0.6 0 0.8\nvn 0.6 0 0.8\n"
    obj += "f 1//1 2//2 3//3\nf 2//2 4//4 3//3\n"
    mesh = ensure_layout(load_mesh_bytes(obj.encode(), "n.obj"), timeout_s=60)
    data = textured_glb_bytes(mesh, procedural_texture(16))
    assert_valid_glb(data)
    doc = GltfDocument.from_bytes(data)
    normals = doc.read(doc.json["meshes"][0]["primitives"][0]["attributes"]["NORMAL"])
    np.testing.assert_allclose(normals, np.tile([0.6, 0.0, 0.8], (len(normals), 1)), atol=1e-6)
    bare = ensure_layout(
        load_mesh_bytes(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0.2\nf 1 2 3\nf 2 4 3\n", "b.obj"), 60
    )
    data = textured_glb_bytes(bare, procedural_texture(16))
    assert_valid_glb(data)
    doc = GltfDocument.from_bytes(data)
    normals = doc.read(doc.json["meshes"][0]["primitives"][0]["attributes"]["NORMAL"])
    assert (normals[:, 2] > 0.9).all() and not np.allclose(normals, normals[0])  # smooth, not one flat normal
