"""`texture_mesh` around a fake view generator: stages, artifacts, progress, cancel."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from engines.errors import JobCanceled
from engines.requests import TextureRequest
from engines.texturing.pipeline import STAGES, texture_mesh
from tests.fixtures.gltf_validator import assert_valid
from tests.fixtures.texturing import colour_by_normal


def _sphere_path(tmp_path):
    path = tmp_path / "sphere.ply"
    trimesh.creation.icosphere(2).export(path)
    return path


def test_texture_mesh_runs_every_stage_and_saves_the_artifacts(tmp_path):
    request = TextureRequest(prompt="a ball", num_views=6, atlas_size=128, view_resolution=64)
    seen = []
    result = texture_mesh(
        request,
        _sphere_path(tmp_path),
        colour_by_normal,
        progress=lambda s, t: seen.append((s, t)),
        out_dir=tmp_path / "out",
    )
    assert set(STAGES) <= set(result.timings) and result.timings["total"] > 0
    assert seen == [(i, len(STAGES)) for i in range(1, len(STAGES) + 1)]
    assert result.atlas.shape == (128, 128, 3) and result.atlas.dtype == np.uint8
    assert result.meta["mesh"]["uv_source"] == "xatlas" and result.meta["coverage"] > 0.9
    out = tmp_path / "out"
    for name in ("texture.png", "textured.glb", "cameras.json", "meta.json", "views/view_05.png"):
        assert (out / name).is_file(), name
    assert_valid(out / "textured.glb")
    meta = json.loads((out / "meta.json").read_text())
    assert set(STAGES) <= set(meta["timings"])
    assert len(json.loads((out / "cameras.json").read_text())["cameras"]) == 6


def test_stage_progress_names_each_stage_and_follows_the_unwrap(tmp_path):
    request = TextureRequest(prompt="a ball", num_views=2, atlas_size=64, view_resolution=32)
    reports: list[tuple[str, float]] = []
    texture_mesh(
        request, _sphere_path(tmp_path), colour_by_normal, stage_progress=lambda n, f: reports.append((n, f))
    )
    order = [n for i, (n, _) in enumerate(reports) if i == 0 or reports[i - 1][0] != n]
    assert order == ["load", "unwrap", "render", "generate", "bake", "plan", "inpaint", "fill"]
    for name in order:
        fractions = [f for n, f in reports if n == name]
        assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions), name
    assert len([f for n, f in reports if n == "unwrap"]) > 2  # the unwrap child's own reports


def test_baked_colours_follow_the_generated_views(tmp_path):
    # The fake colours each point by its normal, so the texel on the +X side of the ball must be reddish.
    request = TextureRequest(prompt="a ball", num_views=6, atlas_size=128, view_resolution=96)
    result = texture_mesh(request, _sphere_path(tmp_path), colour_by_normal)
    mesh = result.mesh
    corner = np.argmax(mesh.normalized_vertices[:, 0])
    u, v = mesh.uv[corner]
    texel = result.atlas[min(int((1 - v) * 128), 127), min(int(u * 128), 127)]
    assert texel[0] > 200 and texel[1] < 170 and texel[2] < 170


def test_cancel_stops_before_the_next_stage(tmp_path):
    request = TextureRequest(prompt="a ball", num_views=2, atlas_size=64, view_resolution=32)
    done_stages = []  # progress(done, total) reports each finished stage; 3 = load, unwrap, render

    generated = []
    with pytest.raises(JobCanceled, match="generate"):
        texture_mesh(
            request,
            _sphere_path(tmp_path),
            lambda *a: generated.append(1) or colour_by_normal(*a),
            progress=lambda done, total: done_stages.append(done),
            should_cancel=lambda: bool(done_stages) and done_stages[-1] >= 3,
        )
    assert not generated
    assert done_stages == [1, 2, 3]


def test_a_generator_returning_the_wrong_shape_is_reported(tmp_path):
    request = TextureRequest(prompt="a ball", num_views=2, atlas_size=64, view_resolution=32)
    with pytest.raises(ValueError, match="shape"):
        texture_mesh(request, _sphere_path(tmp_path), lambda c, g, r: [np.zeros((16, 16, 3), np.uint8)] * 2)
