"""`realiz3d render`, `bake` and `texture` end to end on small meshes made here."""

from __future__ import annotations

import json

import numpy as np
import trimesh
from PIL import Image

from engines.texturing.mesh_io import load_mesh
from service.cli import main
from tests.fixtures.gltf_validator import assert_valid
from tests.fixtures.texturing import psnr, textured_box_glb


def test_render_unlit_then_bake_gives_back_the_texture(tmp_path):
    glb = tmp_path / "box.glb"
    glb.write_bytes(textured_box_glb(128))
    views = tmp_path / "views"
    assert (
        main(["render", str(glb), "--views", "6", "--resolution", "128", "--unlit", "--out", str(views)]) == 0
    )
    for name in (
        "normal_00.png",
        "position_00.png",
        "depth_00.png",
        "mask_00.png",
        "view_05.png",
        "cameras.json",
    ):
        assert (views / name).is_file(), name
    baked = tmp_path / "baked"
    rc = main(
        ["bake", str(glb), "--views", str(views), "--cameras", str(views / "cameras.json"), "--atlas", "128"]
        + ["--out", str(baked)]
    )
    assert rc == 0
    atlas = np.asarray(Image.open(baked / "texture.png").convert("RGB"))
    source = load_mesh(glb)
    meta = json.loads((baked / "meta.json").read_text())
    assert meta["coverage"] > 0.7
    # Compare chart interiors only: texels near chart borders are filled, not baked.
    assert psnr(atlas[72:120, 6:36], source.texture[72:120, 6:36]) > 30
    assert_valid(baked / "textured.glb")
    out = load_mesh(baked / "textured.glb")
    assert len(out.vertices) == len(source.vertices) and (out.texture == atlas).all()


def test_render_of_an_untextured_mesh_writes_geometry_maps_and_shaded_previews(tmp_path):
    ply = tmp_path / "s.ply"
    trimesh.creation.icosphere(2).export(ply)
    assert main(["render", str(ply), "--views", "2", "--resolution", "32", "--out", str(tmp_path / "r")]) == 0
    normal = np.asarray(Image.open(tmp_path / "r" / "normal_00.png"))
    mask = np.asarray(Image.open(tmp_path / "r" / "mask_00.png")) > 0
    assert normal.shape == (32, 32, 3) and 0.3 < mask.mean() < 0.9 and (normal[~mask] == 0).all()
    assert (tmp_path / "r" / "view_01.png").is_file()


def test_bake_unwraps_a_mesh_without_uvs_in_the_mode_asked(tmp_path):
    ply = tmp_path / "s.ply"
    trimesh.creation.icosphere(2).export(ply)
    views = tmp_path / "v"
    assert main(["render", str(ply), "--views", "4", "--resolution", "64", "--out", str(views)]) == 0
    for mode in ("fast", "quality"):
        out = tmp_path / mode
        bake = ["bake", str(ply), "--views", str(views), "--cameras", str(views / "cameras.json")]
        assert main([*bake, "--atlas", "128", "--unwrap", mode, "--out", str(out)]) == 0
        meta = json.loads((out / "meta.json").read_text())
        assert meta["unwrap"] == mode and meta["mesh"]["uv_source"] == "xatlas" and meta["coverage"] > 0.5
        assert_valid(out / "textured.glb")


def test_user_mistakes_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["render", str(tmp_path / "missing.glb"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.glb" in err and "\n" not in err

    glb = tmp_path / "box.glb"
    glb.write_bytes(textured_box_glb(16))
    cams = tmp_path / "cameras.json"
    cams.write_text(json.dumps({"cameras": [{"azimuth_deg": 0, "elevation_deg": 0}] * 2}))
    (tmp_path / "views").mkdir()
    rc = main(
        ["bake", str(glb), "--views", str(tmp_path / "views"), "--cameras", str(cams), "--out", str(tmp_path)]
    )
    assert rc == 2 and "0 view_*.png images but" in capsys.readouterr().err

    ply = tmp_path / "s.ply"
    trimesh.creation.icosphere(1).export(ply)
    rc = main(["render", str(ply), "--unlit", "--out", str(tmp_path / "o")])
    assert rc == 2 and "--unlit needs" in capsys.readouterr().err


def test_texture_command_runs_the_real_pipeline_and_writes_the_contract_files(tmp_path, tiny_model_dir):
    ply = tmp_path / "s.ply"
    trimesh.creation.icosphere(2).export(ply)
    out = tmp_path / "out"
    args = ["texture", str(ply), "--prompt", "a marble ball", "--views", "4", "--atlas", "128"]
    args += ["--steps", "2", "--model", str(tiny_model_dir), "--max-views", "4"]  # no planned views
    assert main([*args, "--seed", "3", "--schedule", "0.4", "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 3 and meta["schedule"] == {"split": 0.4}
    assert {"render", "denoise", "bake", "fill", "export"} <= set(meta["timings"])
    assert Image.open(out / "views" / "view_00.png").size == (32, 32)  # the tiny model's resolution
    for name in ("texture.png", "textured.glb", "meta.json", "cameras.json", "views/view_03.png"):
        assert (out / name).is_file(), name
    assert not (out / "views" / "view_04.png").exists()
    assert_valid(out / "textured.glb")
    assert main([*args, "--schedule", "sometimes", "--out", str(out)]) == 2
