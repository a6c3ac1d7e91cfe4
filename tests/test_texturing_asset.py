"""The textured GLB is the input asset plus a texture: rigs, hierarchy, materials, UV sets and bytes survive.

Every GLB written here (inputs and outputs) goes through Khronos' glTF-Validator with 0 errors.
"""

from __future__ import annotations

import numpy as np
import pytest

from engines.requests import TextureRequest
from engines.texturing.export import textured_glb_bytes
from engines.texturing.gltf_document import GltfDocument
from engines.texturing.mesh_io import load_mesh, load_mesh_bytes
from engines.texturing.pipeline import texture_mesh
from engines.texturing.uv_layout import ensure_layout
from tests.fixtures.gltf_assets import grid, multi_material_hierarchy, single_mesh, skinned_animated
from tests.fixtures.gltf_validator import assert_valid, assert_valid_glb
from tests.fixtures.texturing import colour_by_normal, procedural_texture


def _accessor_bytes(doc: GltfDocument, index: int) -> bytes:
    return doc.read(index, normalized_to_float=False).tobytes()


def _texture(doc: dict, material: dict) -> tuple[int, int]:
    info = material["pbrMetallicRoughness"]["baseColorTexture"]
    return doc["textures"][info["index"]]["source"], info.get("texCoord", 0)


def _write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_skinned_animated_asset_keeps_rig_animation_camera_and_material(tmp_path):
    source = skinned_animated()
    src_path = _write(tmp_path, "rig.glb", source.to_glb())
    mesh = load_mesh(src_path)
    # Bind pose: the skinned node's own x + 100 is ignored; the joints put the strip at x = 0 +- 0.2.
    assert mesh.vertices[:, 0].min() == pytest.approx(-0.2, abs=1e-6)
    assert mesh.vertices[:, 0].max() == pytest.approx(0.2, abs=1e-6)
    assert mesh.vertices[:, 1].min() == pytest.approx(0.0, abs=1e-6)
    assert mesh.uv_source == "input" and mesh.layout.mode == "original"
    out_path = _write(tmp_path, "rig_textured.glb", textured_glb_bytes(mesh, procedural_texture(64)))
    assert_valid(src_path, out_path)
    out = GltfDocument.from_bytes(out_path.read_bytes())
    src, dst = source.json, out.json
    for key in ("nodes", "skins", "animations", "cameras", "scenes"):
        assert dst[key] == src[key], key
    material = dst["materials"][0]
    assert material["name"] == "skin" and material["doubleSided"] is True
    assert material["normalTexture"] == src["materials"][0]["normalTexture"]
    assert material["pbrMetallicRoughness"]["metallicFactor"] == 0.3
    assert material["pbrMetallicRoughness"]["roughnessFactor"] == 0.6
    image, texcoord = _texture(dst, material)
    assert texcoord == 0 and dst["images"][image]["mimeType"] == "image/png"
    # Geometry untouched, bit for bit; normals added (the input had none).
    prim_in = src["meshes"][0]["primitives"][0]
    prim_out = dst["meshes"][0]["primitives"][0]
    for name, acc in prim_in["attributes"].items():
        assert _accessor_bytes(out, prim_out["attributes"][name]) == _accessor_bytes(source, acc), name
    assert _accessor_bytes(out, prim_out["indices"]) == _accessor_bytes(source, prim_in["indices"])
    normals = out.read(prim_out["attributes"]["NORMAL"])
    np.testing.assert_allclose(np.abs(normals[:, 2]), 1.0, atol=1e-6)  # a flat strip facing +-Z
    # The animation's data still reads the same.
    sampler = src["animations"][0]["samplers"][0]
    assert _accessor_bytes(out, sampler["output"]) == _accessor_bytes(source, sampler["output"])


def test_multi_material_hierarchy_keeps_every_part_and_adds_one_uv_set(tmp_path):
    source = multi_material_hierarchy()
    src_path = _write(tmp_path, "shop.glb", source.to_glb())
    mesh = ensure_layout(load_mesh(src_path), timeout_s=60)
    layout = mesh.layout
    assert layout.mode == "atlas" and len(layout.vertex_maps) == 2  # the crate and the ribbon: no UVs
    assert len(mesh.asset.instances) == 5  # 2 panel primitives, 2 crates, 1 ribbon
    out_path = _write(tmp_path, "shop_textured.glb", textured_glb_bytes(mesh, procedural_texture(128)))
    assert_valid(src_path, out_path)
    out = GltfDocument.from_bytes(out_path.read_bytes())
    src, dst = source.json, out.json
    assert dst["nodes"] == src["nodes"] and dst["scenes"] == src["scenes"]
    assert [m["name"] for m in dst["meshes"]] == [m["name"] for m in src["meshes"]]
    assert dst["extensionsUsed"] == ["KHR_materials_emissive_strength"]
    red, glass, baked = dst["materials"]
    assert red["extras"] == {"author": "tests"} and red["name"] == "red"
    assert glass["extensions"] == src["materials"][1]["extensions"] and glass["alphaMode"] == "BLEND"
    assert glass["pbrMetallicRoughness"]["baseColorFactor"] == [1.0, 1.0, 1.0, 0.5]  # alpha kept
    assert baked["name"] == "realiz3d_baked"
    sources = {_texture(dst, m)[0] for m in (red, glass, baked)}
    assert len(sources) == 1  # one atlas for every textured material
    assert _texture(dst, red)[1] == 1 and _texture(dst, glass)[1] == 1 and _texture(dst, baked)[1] == 0
    # Panel: original TEXCOORD_0 bytes kept, the atlas UVs are TEXCOORD_1, no unwrap.
    for p in range(2):
        before = src["meshes"][0]["primitives"][p]["attributes"]
        after = dst["meshes"][0]["primitives"][p]["attributes"]
        assert set(after) == {"POSITION", "NORMAL", "TEXCOORD_0", "TEXCOORD_1"}
        for name in ("POSITION", "NORMAL", "TEXCOORD_0"):
            assert _accessor_bytes(out, after[name]) == _accessor_bytes(source, before[name])
        uv1 = out.read(after["TEXCOORD_1"])
        assert uv1.min() >= 0 and uv1.max() <= 1
    # The crate (glass, no UVs) was unwrapped alone: it reads TEXCOORD_1 too (TEXCOORD_0 is the same set).
    crate = dst["meshes"][1]["primitives"][0]
    assert crate["attributes"]["TEXCOORD_0"] == crate["attributes"]["TEXCOORD_1"] and crate["mode"] == 4
    crate_pos = out.read(crate["attributes"]["POSITION"])
    src_pos = source.read(src["meshes"][1]["primitives"][0]["attributes"]["POSITION"])
    assert {tuple(p) for p in crate_pos} == {tuple(p) for p in src_pos}  # split at seams, same corners
    ribbon = dst["meshes"][2]["primitives"][0]
    assert ribbon["material"] == 2 and "NORMAL" in ribbon["attributes"]
    # The three panel / crate UV cells do not overlap: nothing shares texels but the two crate copies.
    atlas = np.concatenate([mesh.layout.bake_uv[p] for p in range(len(mesh.asset.primitives))])
    assert atlas.min() >= 0 and atlas.max() <= 1


def test_uvs_outside_the_unit_square_are_kept_and_wrap(tmp_path):
    pos, tri, uv = grid(4, 4)
    uv = uv * 1.04 - 0.02  # a few hundredths outside [0, 1] on every side (as DamagedHelmet, spot)
    source = single_mesh(pos, tri, uv)
    mesh = load_mesh_bytes(source.to_glb(), "wide.glb")
    assert mesh.layout.mode == "original" and mesh.uv is not None
    np.testing.assert_allclose(mesh.uv[:, 1], 1 - uv[:, 1].astype(np.float32))
    out_path = _write(tmp_path, "wide_textured.glb", textured_glb_bytes(mesh, procedural_texture(64)))
    assert_valid(out_path)
    out = GltfDocument.from_bytes(out_path.read_bytes())
    prim = out.json["meshes"][0]["primitives"][0]
    assert set(prim["attributes"]) == {"POSITION", "TEXCOORD_0", "NORMAL"}
    assert _accessor_bytes(out, prim["attributes"]["TEXCOORD_0"]) == uv.astype(np.float32).tobytes()


def test_far_from_origin_asset_keeps_its_offset_and_bytes(tmp_path):
    pos, tri, uv = grid(2, 2)
    source = single_mesh(pos, tri, uv, translation=[5e6 + 0.123456789, -1e6, 3.25])
    mesh = load_mesh_bytes(source.to_glb(), "far.glb")
    expected = pos.astype(np.float32).astype(np.float64) + [5e6 + 0.123456789, -1e6, 3.25]
    np.testing.assert_allclose(mesh.vertices, expected, rtol=0, atol=1e-9)
    radius = np.linalg.norm(mesh.normalized_vertices, axis=1).max()
    assert radius == pytest.approx(0.7, abs=1e-9)  # centred in float64 before anything goes to float32
    out_path = _write(tmp_path, "far_textured.glb", textured_glb_bytes(mesh, procedural_texture(32)))
    assert_valid(out_path)
    out = GltfDocument.from_bytes(out_path.read_bytes())
    assert out.json["nodes"] == source.json["nodes"]
    attrs = out.json["meshes"][0]["primitives"][0]["attributes"]
    assert _accessor_bytes(out, attrs["POSITION"]) == pos.astype(np.float32).tobytes()


def test_far_from_origin_ply_is_exported_without_float32_loss(tmp_path):
    pos, tri, uv = grid(3, 3)
    far = pos + [5e6, 0.0, 0.0]
    header = (
        f"ply\nformat ascii 1.0\nelement vertex {len(far)}\nproperty double x\nproperty double y\nproperty double z\n"
        f"element face {len(tri)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    body = "".join(f"{x!r} {y!r} {z!r}\n" for x, y, z in far.tolist())
    body += "".join(f"3 {a} {b} {c}\n" for a, b, c in tri.tolist())
    mesh = ensure_layout(load_mesh_bytes((header + body).encode(), "far.ply"), timeout_s=60)
    data = textured_glb_bytes(mesh, procedural_texture(32))
    assert_valid_glb(data)
    back = load_mesh_bytes(data, "back.glb")
    # The old export went through float32 world positions: 0.25 units off at 5e6.
    assert np.abs(np.sort(back.vertices, axis=0) - np.sort(mesh.vertices, axis=0)).max() < 1e-6


def test_texture_job_on_a_rigged_asset_writes_a_valid_glb_and_reports_the_layout(tmp_path):
    src = _write(tmp_path, "rig.glb", skinned_animated().to_glb())
    request = TextureRequest(prompt="x", num_views=4, atlas_size=64, view_resolution=48, steps=2)
    result = texture_mesh(request, src, colour_by_normal, out_dir=tmp_path / "out")
    assert_valid(tmp_path / "out" / "textured.glb")
    meta = result.meta
    assert meta["mesh"]["uv_layout"]["mode"] == "original"
    assert meta["mesh"]["uv_layout"]["unwrap_needed"] is False
    assert meta["uv"]["overlapping_texels"] == 0
    out = GltfDocument.from_bytes((tmp_path / "out" / "textured.glb").read_bytes())
    assert out.json["skins"] == skinned_animated().json["skins"]


def test_a_mesh_made_in_code_exports_as_a_fresh_valid_document(tmp_path):
    from engines.bench.geometry import bumpy_torus

    mesh = bumpy_torus(2_000)
    assert mesh.asset is None
    out_path = _write(tmp_path, "torus.glb", textured_glb_bytes(mesh, procedural_texture(32)))
    assert_valid(out_path)
    back = load_mesh(out_path)
    np.testing.assert_allclose(back.vertices, mesh.vertices, atol=1e-6)
    np.testing.assert_allclose(back.uv, mesh.uv, atol=1e-6)


def test_skinned_vertices_follow_their_weighted_joints():
    doc = skinned_animated()
    del doc.json["skins"][0]["inverseBindMatrices"]  # identity: each vertex moves by its joint's world matrix
    mesh = load_mesh_bytes(doc.to_glb(), "posed.glb")
    prim = doc.json["meshes"][0]["primitives"][0]
    local = doc.read(prim["attributes"]["POSITION"]).astype(np.float64)
    top = local[:, 1] > 1.0  # weighted to bone1 (world: x + 5, y + 1); the rest to bone0 (x + 5)
    np.testing.assert_allclose(mesh.vertices[~top], local[~top] + [5, 0, 0], atol=1e-6)
    np.testing.assert_allclose(mesh.vertices[top], local[top] + [5, 1, 0], atol=1e-6)


def test_a_specular_glossiness_material_gets_the_atlas_as_its_diffuse_map_too(tmp_path):
    pos, tri, uv = grid(3, 3)
    source = single_mesh(pos, tri, uv)
    spec_gloss = {
        "diffuseFactor": [0.5, 0.2, 0.1, 0.8],
        "specularFactor": [0.3, 0.3, 0.3],
        "glossinessFactor": 0.4,
    }
    source.json["materials"] = [
        {"name": "old", "extensions": {"KHR_materials_pbrSpecularGlossiness": spec_gloss}}
    ]
    source.json["meshes"][0]["primitives"][0]["material"] = 0
    source.json["extensionsUsed"] = ["KHR_materials_pbrSpecularGlossiness"]
    mesh = load_mesh_bytes(source.to_glb(), "specgloss.glb")
    out_path = _write(tmp_path, "specgloss_textured.glb", textured_glb_bytes(mesh, procedural_texture(32)))
    assert_valid(out_path)
    out = GltfDocument.from_bytes(out_path.read_bytes()).json
    material = out["materials"][0]
    ext = material["extensions"]["KHR_materials_pbrSpecularGlossiness"]
    assert ext["diffuseTexture"] == material["pbrMetallicRoughness"]["baseColorTexture"]
    assert ext["diffuseFactor"] == [1.0, 1.0, 1.0, 0.8]  # white under the atlas, the alpha kept
    assert ext["specularFactor"] == [0.3, 0.3, 0.3] and ext["glossinessFactor"] == 0.4
    assert out["extensionsUsed"] == ["KHR_materials_pbrSpecularGlossiness"]
