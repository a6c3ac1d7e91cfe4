"""Mesh input, limits and errors; UV unwrap in its child process; GLB export round trip."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import trimesh

from engines.errors import MeshError
from engines.texturing import unwrap
from engines.texturing.export import textured_glb_bytes
from engines.texturing.mesh_io import FIT_RADIUS, MeshLimits, load_mesh, load_mesh_bytes, validate_mesh_bytes
from engines.texturing.rasterize import rasterize_uv
from engines.texturing.unwrap import ensure_uv
from tests.fixtures.gltf_validator import assert_valid_glb
from tests.fixtures.texturing import procedural_texture, textured_box_glb, textured_trimesh, uv_box

OBJ_TRIANGLE = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"


def test_textured_glb_keeps_uvs_texture_and_original_coordinates():
    v, f, uv = uv_box(half=3.0)
    mesh = load_mesh_bytes(
        textured_trimesh(v + [10, 0, 0], f, uv, procedural_texture(64)).export(file_type="glb"), "b.glb"
    )
    assert len(mesh.vertices) == 24 and mesh.uv_source == "input"
    np.testing.assert_allclose(mesh.vertices, v + [10, 0, 0], atol=1e-5)
    np.testing.assert_allclose(mesh.uv, uv, atol=1e-6)
    assert (mesh.texture == procedural_texture(64)).all()
    radius = np.linalg.norm(mesh.normalized_vertices, axis=1).max()
    assert radius == pytest.approx(FIT_RADIUS)


def test_glb_export_round_trip_keeps_vertex_count_uvs_and_texture():
    mesh = load_mesh_bytes(textured_box_glb(64), "box.glb")
    atlas = procedural_texture(128)[::-1].copy()  # a different image than the input's
    data = textured_glb_bytes(mesh, atlas)
    assert_valid_glb(data)
    back = trimesh.load(io.BytesIO(data), file_type="glb", force="scene", process=False)
    (geom,) = back.geometry.values()
    assert len(geom.vertices) == len(mesh.vertices)
    np.testing.assert_allclose(geom.vertices, mesh.vertices, atol=1e-5)
    np.testing.assert_allclose(geom.visual.uv, mesh.uv, atol=1e-6)
    texture = np.asarray(geom.visual.material.baseColorTexture.convert("RGB"))
    assert (texture == atlas).all()
    again = load_mesh_bytes(data, "again.glb")
    assert (again.texture == atlas).all()


def test_multi_mesh_scene_is_merged_with_its_transforms():
    a = trimesh.creation.box(extents=[1, 1, 1])
    b = trimesh.creation.box(extents=[1, 1, 1])
    scene = trimesh.Scene()
    scene.add_geometry(a, node_name="a")
    scene.add_geometry(b, node_name="b", transform=trimesh.transformations.translation_matrix([5, 0, 0]))
    mesh = load_mesh_bytes(scene.export(file_type="glb"), "scene.glb")
    assert len(mesh.faces) == 24
    assert mesh.vertices[:, 0].max() == pytest.approx(5.5) and mesh.vertices[:, 0].min() == pytest.approx(
        -0.5
    )
    assert mesh.uv is None  # plain boxes carry no UVs: they will be unwrapped


def test_parts_sharing_one_material_keep_their_uvs_and_their_overlap_is_known():
    v, f, uv = uv_box()
    scene = trimesh.Scene()
    for k in range(2):
        scene.add_geometry(
            textured_trimesh(v, f, uv, procedural_texture(16)),
            node_name=f"p{k}",
            transform=trimesh.transformations.translation_matrix([3 * k, 0, 0]),
        )
    mesh = load_mesh_bytes(scene.export(file_type="glb"), "two.glb")
    # One material, the artist's UVs: kept as they are (no packing, no new UV set).
    assert mesh.uv_source == "input" and len(mesh.uv) == 48
    np.testing.assert_allclose(mesh.uv[:24], mesh.uv[24:])
    uv_maps = rasterize_uv(mesh.uv, mesh.faces, 64)
    # Every chart texel is covered by both copies: the bake picks the better-seen one per texel.
    assert uv_maps.overlapping_texels == pytest.approx(int(uv_maps.mask.sum()), rel=0.05)


def test_obj_and_ply_load_from_files(tmp_path):
    sphere = trimesh.creation.icosphere(1)
    sphere.export(tmp_path / "s.ply")
    sphere.export(tmp_path / "s.obj")
    for name in ("s.ply", "s.obj"):
        mesh = load_mesh(tmp_path / name)
        assert len(mesh.faces) == len(sphere.faces)


@pytest.mark.parametrize(
    ("data", "filename", "message"),
    [
        (b"", "empty.glb", "empty"),
        (b"glTF\x02\x00\x00\x00garbage", "bad.glb", "GLB"),
        (b"this is not a mesh", "bad.ply", "PLY"),
        (b"v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "nan.obj", "NaN"),
        (b"v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n", "line.obj", "degenerate"),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\n", "points.obj", "no faces"),
        (OBJ_TRIANGLE, "mesh.stl", "unsupported mesh format"),
    ],
)
def test_bad_meshes_give_a_clear_error(data, filename, message):
    with pytest.raises(MeshError, match=message):
        load_mesh_bytes(data, filename)


def test_mesh_over_the_face_limit_is_refused_before_and_after_parsing(tmp_path):
    data = trimesh.creation.icosphere(2).export(file_type="ply")  # 320 faces
    limits = MeshLimits(max_faces=100)
    with pytest.raises(MeshError, match="320 faces, over the limit of 100"):
        validate_mesh_bytes(data, "s.ply", limits)
    (tmp_path / "s.ply").write_bytes(data)
    with pytest.raises(MeshError, match="over the limit of 100"):
        load_mesh(tmp_path / "s.ply", limits)


def test_mesh_over_the_byte_limit_is_refused(tmp_path):
    data = trimesh.creation.icosphere(2).export(file_type="glb")
    limits = MeshLimits(max_bytes=1024)
    with pytest.raises(MeshError, match="over the limit of 1024 bytes"):
        validate_mesh_bytes(data, "s.glb", limits)
    (tmp_path / "s.glb").write_bytes(data)
    with pytest.raises(MeshError, match="over the limit of 1024 bytes"):
        load_mesh(tmp_path / "s.glb", limits)


def test_validate_mesh_bytes_counts_glb_faces_from_its_json_header():
    data = trimesh.creation.icosphere(2).export(file_type="glb")
    assert validate_mesh_bytes(data, None) == "glb"  # the format comes from the magic bytes
    with pytest.raises(MeshError, match="320 faces"):
        validate_mesh_bytes(data, "x.glb", MeshLimits(max_faces=319))
    truncated = data[:12] + struct.pack("<II", 10_000, 0x4E4F534A)
    with pytest.raises(MeshError, match="truncated"):
        validate_mesh_bytes(truncated, "x.glb")


def test_unwrap_gives_uvs_in_the_unit_square_and_keeps_faces():
    mesh = load_mesh_bytes(trimesh.creation.icosphere(2).export(file_type="ply"), "s.ply")
    assert mesh.uv is None
    out = ensure_uv(mesh, timeout_s=60)
    assert out.uv_source == "xatlas" and len(out.faces) == len(mesh.faces)
    assert len(out.uv) == len(out.vertices) >= len(mesh.vertices)
    assert out.uv.min() >= 0 and out.uv.max() <= 1
    # Seams split vertices but every face keeps its corners' positions.
    np.testing.assert_allclose(out.vertices[out.faces], mesh.vertices[mesh.faces], atol=1e-5)


def test_mesh_with_uvs_is_not_unwrapped_again():
    mesh = load_mesh_bytes(textured_box_glb(16), "box.glb")
    assert ensure_uv(mesh, timeout_s=0.001) is mesh


def test_unwrap_timeout_is_a_clear_error():
    mesh = load_mesh_bytes(trimesh.creation.icosphere(3).export(file_type="ply"), "s.ply")
    with pytest.raises(MeshError, match="timed out after 0.001 s"):
        ensure_uv(mesh, timeout_s=0.001)


def test_unwrap_crash_is_a_clear_error(monkeypatch):
    mesh = load_mesh_bytes(OBJ_TRIANGLE, "t.obj")
    monkeypatch.setattr(unwrap, "_CHILD_ARGS", ["-c", "import os; os.abort()"])
    with pytest.raises(MeshError, match=r"UV unwrap failed \(signal 6\)"):
        ensure_uv(mesh, timeout_s=30)
