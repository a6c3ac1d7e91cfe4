"""Asset fidelity, round two (issue 27): inputs built here that have each feature public assets have.

Draco with stale bounds, instanced skinned meshes, percent-encoded .gltf parts, BLEND/MASK alpha, vertex
colours, several materials in `realiz3d render`, a bake that sees nothing, an OBJ whose MTL was written on
Windows, a zipped OBJ, dead data and stale extensions, and meta.json naming the upload. Every GLB written
here goes through Khronos' glTF-Validator with 0 errors.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from engines.bench.texturing_asset import instanced_skinned_glb
from engines.errors import MeshError
from engines.requests import TextureRequest
from engines.texturing.appearance import base_colour
from engines.texturing.export import textured_glb_bytes
from engines.texturing.gltf_compact import _collect, compact
from engines.texturing.gltf_document import GltfDocument
from engines.texturing.mesh_io import load_mesh, load_mesh_bytes
from engines.texturing.pipeline import texture_mesh
from engines.texturing.uv_layout import ensure_layout
from service.api.errors import ApiError
from service.api.routes import validate_mesh
from service.api.uploads import pack_gltf_parts
from service.cli import main
from service.settings import Settings
from tests.fixtures.gltf_assets import (
    add_primitive,
    add_texture,
    alpha_materials,
    as_gltf_files,
    draco_skinned,
    grid,
    new_document,
    png,
    rgba_png,
    single_mesh,
)
from tests.fixtures.gltf_validator import assert_valid
from tests.fixtures.texturing import colour_by_normal, procedural_texture

_KINDS = ("accessors", "bufferViews", "images", "textures", "samplers")


def _job(tmp_path, source, name: str, atlas: int = 64, views: int = 4, res: int = 48):
    """A texture job with the fake generator; returns (result, output folder, the output document)."""
    path = tmp_path / name
    if isinstance(source, bytes):
        path.write_bytes(source)
    else:
        path = source
    out = tmp_path / f"{path.stem}_out"
    request = TextureRequest(prompt="x", num_views=views, atlas_size=atlas, view_resolution=res, steps=2)
    result = texture_mesh(request, path, colour_by_normal, out_dir=out)
    assert_valid(out / "textured.glb")
    return result, out, GltfDocument.from_bytes((out / "textured.glb").read_bytes())


def _unreferenced(doc: dict) -> dict[str, int]:
    refs = _collect(doc)
    return {
        k: len(doc.get(k, [])) - len(refs.used(k)) for k in _KINDS if len(doc.get(k, [])) - len(refs.used(k))
    }


# ---- 1. Draco -------------------------------------------------------------------------------------------


def test_draco_input_comes_out_valid_with_exact_bounds_no_orphans_and_normalised_weights(tmp_path):
    source = draco_skinned()  # stale encoder min/max, one primitive re-indexed by the unwrap
    result, _, out = _job(tmp_path, source.to_glb(), "draco.glb")
    assert result.mesh.layout.vertex_maps  # the UV-less box was unwrapped: its old accessors were left over
    doc = out.json
    assert "KHR_draco_mesh_compression" not in json.dumps(doc)
    assert _unreferenced(doc) == {}
    for prim in doc["meshes"][0]["primitives"]:
        position = doc["accessors"][prim["attributes"]["POSITION"]]
        values = out.read(prim["attributes"]["POSITION"])
        assert (
            position["min"] == values.min(axis=0).tolist() and position["max"] == values.max(axis=0).tolist()
        )
        weights = out.read(prim["attributes"]["WEIGHTS_0"])
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    # The same asset as a .gltf with its .bin beside it, in a zip.
    gltf, files = as_gltf_files(draco_skinned(), "draco.bin")
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as zf:
        zf.writestr("draco.gltf", gltf)
        for name, data in files.items():
            zf.writestr(name, data)
    _, _, out = _job(tmp_path, packed.getvalue(), "draco.zip")
    assert _unreferenced(out.json) == {}


# ---- 2. instances ---------------------------------------------------------------------------------------


def _traced_bake_peak(instances: int) -> tuple[int, object, object]:
    import tracemalloc

    from engines.sampling.cameras import texturing_cameras
    from engines.texturing.bake import bake_views
    from engines.texturing.pipeline import uv_maps_of
    from engines.texturing.rasterize import RayCaster, render_views

    data = instanced_skinned_glb(instances, depth=4, joints=3, sides=8)
    mesh = ensure_layout(load_mesh_bytes(data, "crowd.glb"), 60)
    vertices = mesh.normalized_vertices
    cams = texturing_cameras(4)
    maps = render_views(RayCaster(vertices, mesh.faces), cams, 48)
    images = [np.full((48, 48, 3), 128, np.uint8) for _ in cams]
    tracemalloc.start()
    uv_maps, copies = uv_maps_of(mesh, 256)
    baked = bake_views(uv_maps, vertices, mesh.faces, images, maps, copies=copies)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, uv_maps, baked


def test_instances_sharing_uvs_are_rasterised_once_and_the_bake_peak_does_not_grow_with_them():
    few, uv_few, _ = _traced_bake_peak(2)
    many, uv_many, baked = _traced_bake_peak(24)
    faces_per_copy = 2 * 3 * 8 + 2 * 8
    # Only the first copy is rasterised: the same texels, the same faces, whatever the instance count.
    assert uv_many.face_id.max() < faces_per_copy and len(uv_many.extra_texel) == len(uv_few.extra_texel)
    assert (uv_many.face_id == uv_few.face_id).all()
    # Each texel still comes from the copy its views see best: several copies are used.
    chosen = np.unique(baked.face_id[baked.face_id >= 0] // faces_per_copy)
    assert len(chosen) > 1
    # 12x the instances, the same peak (the old path rasterised every copy into the same texels).
    assert many < 1.25 * few, (few, many)


def test_an_instanced_skinned_asset_textures_into_a_valid_glb(tmp_path):
    result, _, out = _job(tmp_path, instanced_skinned_glb(6, depth=6, joints=3, sides=8), "crowd.glb")
    assert any("instances share" in n for n in result.meta["mesh"]["notes"])
    assert len(out.json["skins"]) == 6 and len(out.json["nodes"]) == 6 + 6 * 4


# ---- 3. percent-encoded .gltf parts ---------------------------------------------------------------------


def _encoded_gltf() -> tuple[bytes, dict[str, bytes]]:
    """A .gltf whose buffer and base-colour image are files with spaces in their names, so their URIs are
    percent-encoded as the spec says (`my%20data.bin`, `Base%20Color.png`)."""
    doc = new_document()
    pos, tri, uv = grid(2, 2)
    material = doc.add("materials", {"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}})
    doc.json["meshes"] = [{"primitives": [add_primitive(doc, pos, tri, uv, material)]}]
    doc.json["nodes"] = [{"mesh": 0}]
    doc.json["scenes"] = [{"nodes": [0]}]
    doc.json["images"] = [{"uri": "maps/Base%20Color.png"}]
    doc.json["textures"] = [{"source": 0}]
    doc.json["buffers"] = [{"uri": "my%20data.bin", "byteLength": len(doc.binary)}]
    return json.dumps(doc.json).encode(), {
        "my%20data.bin": bytes(doc.binary),
        "maps/Base%20Color.png": png((10, 200, 30)),
    }


def test_gltf_parts_named_by_percent_encoded_uris_or_their_file_names_are_found():
    gltf, files = _encoded_gltf()
    decoded = {"my data.bin": files["my%20data.bin"], "maps/Base Color.png": files["maps/Base%20Color.png"]}
    for parts in (files, decoded):
        upload = pack_gltf_parts("scene.gltf", gltf, list(parts.items()))
        names = zipfile.ZipFile(io.BytesIO(upload.data)).namelist()
        assert set(names) == {"scene.gltf", "my data.bin", "maps/Base Color.png"}  # the decoded names
        assert upload.display_name == "scene.gltf"
        validate_mesh(upload.data, upload.filename, Settings())  # the gateway accepts it
        mesh = load_mesh_bytes(upload.data, upload.filename)  # and the worker finds every file
        assert (mesh.texture == [10, 200, 30]).all()
    # A part missing: refused at submission, naming it (not a 202 and a failed job).
    with pytest.raises(ApiError) as e:
        pack_gltf_parts("scene.gltf", gltf, [("my%20data.bin", files["my%20data.bin"])])
    assert e.value.status_code == 422 and "maps/Base%20Color.png" in e.value.detail


def test_the_client_sends_parts_under_the_uris_the_gltf_uses():
    from service.client import _texture_parts

    gltf, files = _encoded_gltf()
    parts = _texture_parts(gltf, {}, "scene.gltf", {"my data.bin": b"1", "maps/Base%20Color.png": b"2"})
    assert sorted(p[1][0] for p in parts if p[0] == "files") == ["maps/Base%20Color.png", "my%20data.bin"]


# ---- 4. alpha -------------------------------------------------------------------------------------------


def test_blend_and_mask_alpha_is_carried_into_an_rgba_atlas(tmp_path):
    source = alpha_materials()
    src = tmp_path / "panels.glb"
    src.write_bytes(source.to_glb())
    result, out_dir, out = _job(tmp_path, src, "panels.glb", atlas=128, res=64)
    atlas = Image.open(out_dir / "texture.png")
    assert atlas.mode == "RGBA" and result.meta["atlas_channels"] == "RGBA"
    glass, leaf, wood = out.json["materials"]
    assert glass["alphaMode"] == "BLEND" and "baseColorFactor" not in glass["pbrMetallicRoughness"]
    assert leaf["alphaMode"] == "MASK" and leaf["alphaCutoff"] == 0.5
    # Alpha at each face's centre, read as a viewer would: the input's materials, then the output's atlas.
    before, after = load_mesh(src), load_mesh(out_dir / "textured.glb")
    centres = np.full((len(before.faces), 3), 1 / 3)
    faces = np.arange(len(before.faces))
    a_in = base_colour(before, faces, centres)[:, 3]
    a_out = base_colour(after, faces, centres)[:, 3]
    per_panel = len(faces) // 3
    blend, mask, opaque = (slice(k * per_panel, (k + 1) * per_panel) for k in range(3))
    np.testing.assert_allclose(a_out[blend], a_in[blend], atol=0.06)  # ramp x factor 0.5
    assert a_in[blend].max() == pytest.approx(0.5 * 15.5 / 16, abs=0.05)
    assert ((a_out[mask] >= 0.5) == (a_in[mask] >= 0.5)).mean() >= 0.9  # the cut-out stays where it was
    assert (a_out[opaque] == 1.0).all()
    # Without an alpha material the atlas stays RGB.
    pos, tri, uv = grid(2, 2)
    _, plain_dir, _ = _job(tmp_path, single_mesh(pos, tri, uv).to_glb(), "plain.glb")
    assert Image.open(plain_dir / "texture.png").mode == "RGB"


# ---- 5. vertex colours ----------------------------------------------------------------------------------


def test_vertex_colours_are_dropped_from_textured_primitives_and_meta_says_so(tmp_path):
    doc = new_document()
    pos, tri, uv = grid(3, 3)
    red = np.tile(np.array([[1.0, 0.1, 0.1, 1.0]], np.float32), (len(pos), 1))
    doc.json["meshes"] = [{"primitives": [add_primitive(doc, pos, tri, uv, COLOR_0=(red, "VEC4"))]}]
    doc.json["nodes"] = [{"mesh": 0}]
    doc.json["scenes"] = [{"nodes": [0]}]
    result, out_dir, out = _job(tmp_path, doc.to_glb(), "tinted.glb")
    assert "COLOR_0" not in out.json["meshes"][0]["primitives"][0]["attributes"]
    assert _unreferenced(out.json) == {}  # its accessor is gone too
    meta = json.loads((out_dir / "meta.json").read_text())
    assert meta["mesh"]["vertex_colors_dropped"] == ["mesh 0 primitive 0"]
    assert any("COLOR_0" in n for n in meta["mesh"]["notes"])


# ---- 6. render ------------------------------------------------------------------------------------------


def test_render_shows_each_material_of_a_multi_material_glb(tmp_path):
    doc = new_document()
    pos, tri, uv = grid(2, 2)
    prims = []
    for colour, dx in (((220, 20, 20), -0.6), ((20, 20, 220), 0.6)):
        material = doc.add(
            "materials", {"pbrMetallicRoughness": {"baseColorTexture": {"index": add_texture(doc, colour)}}}
        )
        prims.append(add_primitive(doc, pos + [dx, 0, 0], tri, uv, material, normals=True))
    doc.json["meshes"] = [{"primitives": prims}]
    doc.json["nodes"] = [{"mesh": 0}]
    doc.json["scenes"] = [{"nodes": [0]}]
    src = tmp_path / "two.glb"
    src.write_bytes(doc.to_glb())
    assert (
        main(
            [
                "render",
                str(src),
                "--views",
                "1",
                "--resolution",
                "64",
                "--unlit",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    view = np.asarray(Image.open(tmp_path / "r" / "view_00.png")).astype(int)
    mask = np.asarray(Image.open(tmp_path / "r" / "mask_00.png")) > 0
    left, right = view[:, :32][mask[:, :32]], view[:, 32:][mask[:, 32:]]
    assert (left[:, 0] > 150).all() and (left[:, 2] < 60).all()  # the red material
    assert (right[:, 2] > 150).all() and (right[:, 0] < 60).all()  # the blue one
    # The textured GLB of a job (two materials reading one atlas through TEXCOORD_1) renders its atlas.
    _, out_dir, _ = _job(tmp_path, src, "two.glb")
    assert (
        main(
            [
                "render",
                str(out_dir / "textured.glb"),
                "--views",
                "1",
                "--resolution",
                "64",
                "--unlit",
                "--out",
                str(tmp_path / "t"),
            ]
        )
        == 0
    )
    textured = np.asarray(Image.open(tmp_path / "t" / "view_00.png"))[mask].astype(int)
    assert (np.abs(textured - [127, 127, 255]) <= 3).all()  # the baked view (the +Z normal), not grey


# ---- 7. a bake that colours nothing ---------------------------------------------------------------------


def test_a_bake_that_colours_nothing_says_so(tmp_path, capsys):
    pos, tri, uv = grid(2, 2)
    src = tmp_path / "quad.glb"
    src.write_bytes(single_mesh(pos, tri, uv, normals=True).to_glb())
    assert main(["render", str(src), "--views", "2", "--resolution", "32", "--out", str(tmp_path / "v")]) == 0
    cams = json.loads((tmp_path / "v" / "cameras.json").read_text())
    for cam in cams["cameras"]:  # turned around: every camera looks away from the mesh
        m = np.asarray(cam["camera_to_world"])
        m[:3, :3] = m[:3, :3] @ np.diag([-1.0, 1.0, -1.0])
        cam["camera_to_world"] = m.tolist()
        for key in ("azimuth_deg", "elevation_deg", "radius"):
            cam.pop(key, None)
    (tmp_path / "away.json").write_text(json.dumps(cams))
    capsys.readouterr()
    args = ["bake", str(src), "--views", str(tmp_path / "v"), "--cameras", str(tmp_path / "away.json")]
    assert main([*args, "--atlas", "64", "--out", str(tmp_path / "b")]) == 0
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    assert meta["coverage"] == 0 and meta["surface"] == {"from_views": 0.0, "inpainted": 0.0, "filled": 1.0}
    assert meta["warnings"] and "coverage 0" in meta["warnings"][0]
    assert "warning: no view coloured any texel" in capsys.readouterr().err
    assert_valid(tmp_path / "b" / "textured.glb")


# ---- 8, 9. OBJ from Windows, zipped ---------------------------------------------------------------------

_CUBE = """v 0 0 0\nv 0 0 1\nv 0 1 0\nv 0 1 1\nv 1 0 0\nv 1 0 1\nv 1 1 0\nv 1 1 1
vt 0 0\nvt 0 1\nvt 1 0\nvt 1 1
"""
_SIDES = [
    "f 1/4 7/1 5/2\nf 1/4 3/3 7/1",
    "f 1/2 4/3 3/1\nf 1/2 2/4 4/3",
    "f 3/1 8/4 7/3\nf 3/1 4/2 8/4",
    "f 5/4 7/3 8/1\nf 5/4 8/1 6/2",
    "f 1/2 5/4 6/3\nf 1/2 6/3 2/1",
    "f 2/2 6/4 8/3\nf 2/2 8/3 4/1",
]


def _windows_obj_zip(missing: int | None = 5) -> bytes:
    """A cube of six groups, each with its own textured material, as a Windows exporter writes it: CRLF
    lines, `map_Kd -s 1 1 1 .\\textures\\Side_N.PNG` (options, backslashes, another letter case than the
    files `textures/side_N.png`); every side's UVs fill [0, 1], so without materials they all overlap."""
    obj = ["mtllib cube.mtl", _CUBE]
    mtl = []
    for i, faces in enumerate(_SIDES):
        obj += [f"g side_{i}", f"usemtl paint_{i}", faces]
        mtl += [f"newmtl paint_{i}", "Kd 0.8 0.8 0.8", f"map_Kd -s 1 1 1 .\\textures\\Side_{i}.PNG", ""]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("cube/cube.obj", "\r\n".join(obj).replace("\n", "\r\n"))
        zf.writestr("cube/cube.mtl", "\r\n".join(mtl))
        for i in range(6):
            if i != missing:
                zf.writestr(f"cube/textures/side_{i}.png", png((40 * i, 200 - 30 * i, 100)))
    return out.getvalue()


def test_an_obj_with_windows_mtl_paths_keeps_groups_materials_and_textures(tmp_path):
    mesh = load_mesh_bytes(_windows_obj_zip(), "cube.zip")
    doc = mesh.asset.document.json
    assert sorted(m["name"] for m in doc["materials"]) == [f"paint_{i}" for i in range(6)]
    assert sorted(n["name"] for n in doc["nodes"][1:]) == [f"side_{i}" for i in range(6)]
    textured = [m for m in doc["materials"] if "baseColorTexture" in m["pbrMetallicRoughness"]]
    assert len(textured) == 5  # side_5's texture is not in the zip: its material stays, named, untextured
    assert "material 'paint_5': its texture '.\\textures\\Side_5.PNG' is not in the upload" in " ".join(
        mesh.notes
    )
    assert mesh.layout.mode == "atlas"  # six materials, six cells: the sides no longer share one UV square
    result, out_dir, out = _job(tmp_path, _windows_obj_zip(), "cube.zip")
    assert result.meta["uv"]["overlapping_texels"] == 0
    assert sorted(m["name"] for m in out.json["materials"]) == [f"paint_{i}" for i in range(6)]
    # 9. A zipped OBJ gets textured.obj / .mtl like a bare one, with the group and material names.
    obj = (out_dir / "textured.obj").read_text()
    mtl = (out_dir / "textured.mtl").read_text()
    assert "g side_0\nusemtl paint_0" in obj and obj.count("usemtl ") == 6
    assert mtl.count("map_Kd texture.png") == 6 and "newmtl paint_3" in mtl
    back = load_mesh(
        out_dir / "textured.obj",
        __import__("engines.texturing.mesh_io").texturing.mesh_io.MeshLimits(files_beside=True),
    )
    assert back.num_faces == 12


# ---- 10, 11. dead data, extensionsUsed ------------------------------------------------------------------


def _asset_with_dead_data(transform_on_normal: bool) -> GltfDocument:
    """A textured quad: a large base-colour image (replaced by the atlas), a normal map (kept), an accessor
    nothing uses, and KHR_texture_transform on the base colour (and on the normal map if asked)."""
    doc = new_document()
    pos, tri, uv = grid(2, 2)
    noise = np.random.default_rng(0).integers(0, 255, (256, 256, 4), dtype=np.uint8)
    base = doc.add("images", {"bufferView": doc.add_buffer_view(rgba_png(noise)), "mimeType": "image/png"})
    doc.add("textures", {"source": base})
    normal_tex = add_texture(doc, (128, 128, 255))
    transform = {"KHR_texture_transform": {"scale": [2.0, 2.0]}}
    normal = {"index": normal_tex, **({"extensions": transform} if transform_on_normal else {})}
    material = doc.add(
        "materials",
        {
            "pbrMetallicRoughness": {"baseColorTexture": {"index": 0, "extensions": transform}},
            "normalTexture": normal,
        },
    )
    doc.json["meshes"] = [{"primitives": [add_primitive(doc, pos, tri, uv, material, normals=True)]}]
    doc.add_accessor(np.zeros((5000, 3), np.float32), "VEC3")  # referenced by nothing
    doc.json["nodes"] = [{"mesh": 0}]
    doc.json["scenes"] = [{"nodes": [0]}]
    doc.json["extensionsUsed"] = ["KHR_texture_transform"]
    return doc


def test_replaced_images_and_orphans_are_removed_and_the_output_is_bounded(tmp_path):
    source = _asset_with_dead_data(transform_on_normal=False)
    data = source.to_glb()
    replaced = int(source.json["bufferViews"][source.json["images"][0]["bufferView"]]["byteLength"])
    orphan = 5000 * 12
    _, out_dir, out = _job(tmp_path, data, "dead.glb")
    assert _unreferenced(out.json) == {}
    assert len(out.json["images"]) == 2  # the normal map and the atlas
    atlas_png = (out_dir / "texture.png").stat().st_size
    json_growth = 1024  # the atlas's image, texture and sampler entries
    assert (
        len((out_dir / "textured.glb").read_bytes())
        <= len(data) - replaced - orphan + atlas_png + json_growth
    )
    # 11. The transform's only use (the replaced base colour) is gone, so is the extension.
    assert "extensionsUsed" not in out.json


def test_extensions_used_lists_exactly_what_the_output_uses(tmp_path):
    _, _, out = _job(tmp_path, _asset_with_dead_data(transform_on_normal=True).to_glb(), "kept.glb")
    assert out.json["extensionsUsed"] == ["KHR_texture_transform"]  # still on the normal map
    assert "extensions" in out.json["materials"][0]["normalTexture"]


def test_a_document_with_an_extension_compact_does_not_follow_keeps_everything():
    doc = _asset_with_dead_data(transform_on_normal=False)
    doc.json["extensionsUsed"].append(
        "EXT_mesh_features"
    )  # refers to textures by a key compact does not know
    before = {k: len(doc.json.get(k, [])) for k in _KINDS}
    report = compact(doc)
    assert report.kept_because == "EXT_mesh_features"
    assert {k: len(doc.json.get(k, [])) for k in _KINDS} == before
    assert doc.json["extensionsUsed"] == ["KHR_texture_transform"]  # the lists are still made exact


def test_an_export_of_an_input_without_dead_data_removes_nothing(tmp_path):
    pos, tri, uv = grid(3, 3)
    mesh = load_mesh_bytes(single_mesh(pos, tri, uv, normals=True).to_glb(), "clean.glb")
    doc = textured_glb_bytes(mesh, procedural_texture(32))
    out = GltfDocument.from_bytes(doc)
    assert _unreferenced(out.json) == {} and len(out.json["accessors"]) == 4


# ---- 12. meta.json names the upload ---------------------------------------------------------------------


class _GeometryOnlyPipeline:
    """The worker's pipeline with the fake generator: the texture job's geometry part for real."""

    def texture(self, request, mesh_path, **kw):  # noqa: ANN001, ANN201
        kw.pop("progress", None)
        return texture_mesh(request, mesh_path, colour_by_normal, **kw)


def test_meta_json_of_a_service_job_names_the_uploaded_file(tmp_path):
    from service.jobs.execution import WorkerContext, execute_job
    from service.jobs.memory_store import MemoryJobStore
    from service.jobs.records import JobKind, JobRecord, JobStatus
    from service.storage.local import LocalArtifactStore

    gltf, files = _encoded_gltf()
    upload = pack_gltf_parts("My Scene.gltf", gltf, list(files.items()))
    store, artifacts = MemoryJobStore(), LocalArtifactStore(tmp_path)
    settings = Settings(artifact_dir=tmp_path, heartbeat_ttl_seconds=60, progress_interval_ms=0)
    ctx = WorkerContext(settings, store, artifacts, _GeometryOnlyPipeline(), name="w1")
    params = {"prompt": "x", "num_views": 2, "steps": 2, "atlas_size": 64, "view_resolution": 32}
    job = JobRecord(id="M" * 22, kind=JobKind.texture, params=params, input_name="mesh.zip")
    job.upload_name = upload.display_name
    store.create(job, max_queue_depth=5, ttl_seconds=60)
    artifacts.put_input(job.id, "mesh.zip", upload.data)
    assert execute_job(ctx, job.id) == JobStatus.succeeded, store.get(job.id).error
    run = tmp_path / "jobs" / job.id / "runs" / "1"
    meta = json.loads((run / "meta.json").read_text())
    assert meta["mesh"]["source"] == "My Scene.gltf"
    assert_valid(run / "textured.glb")
    assert (tmp_path / "jobs" / job.id / "_inputs" / "mesh.zip").is_file()  # the stored input stays


def test_a_refusal_on_a_lone_gltf_still_names_the_file():
    gltf, _ = _encoded_gltf()
    with pytest.raises(MeshError, match="my%20data.bin"):
        load_mesh_bytes(gltf, "scene.gltf")
