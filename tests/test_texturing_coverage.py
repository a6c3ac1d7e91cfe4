"""Texturing the whole surface (issue 25): bake resolution, surface shares, view planning, inpainting."""

from __future__ import annotations

import numpy as np
import pytest

from engines.requests import TextureRequest
from engines.sampling.cameras import Camera
from engines.texturing.pipeline import texture_mesh
from engines.texturing.planning import plan_views
from engines.texturing.rasterize import RayCaster, face_normals
from tests.fixtures.texturing import colour_by_normal, textured_box_glb, uv_box


def _box_path(tmp_path):
    path = tmp_path / "box.glb"
    path.write_bytes(textured_box_glb(64))
    return path


def test_full_resolution_bake_sees_almost_all_of_a_cube_from_its_six_views(tmp_path):
    # At the model's 32 px, silhouette and depth-edge rejection eat whole pixels of every face; at the
    # bake resolution only a thin band.
    common = dict(prompt="a box", num_views=6, atlas_size=128, view_resolution=32, max_views=6)
    low = texture_mesh(TextureRequest(**common, bake_resolution=64), _box_path(tmp_path), colour_by_normal)
    full = texture_mesh(TextureRequest(**common, bake_resolution=512), _box_path(tmp_path), colour_by_normal)
    assert full.meta["bake_resolution"] == 512 and full.meta["view_resolution"] == 32
    assert full.views[0].shape == (32, 32, 3)  # the model's views stay at their size
    assert full.meta["coverage"] >= 0.97 > low.meta["coverage"]


def test_planning_picks_the_camera_that_sees_the_uncovered_patch():
    # A cube whose every face but -X is covered: of the six axis cameras, the one on -X adds the most.
    vertices, faces, _ = uv_box()
    tri = vertices[faces]
    centres = tri.mean(axis=1)
    normals = face_normals(vertices, faces)
    points = np.repeat(centres, 50, axis=0) + np.random.default_rng(0).uniform(
        -0.2, 0.2, (len(faces) * 50, 3)
    ) * (1 - np.abs(np.repeat(normals, 50, axis=0)))
    normals = np.repeat(normals, 50, axis=0)
    covered = ~(normals[:, 0] < -0.5)
    candidates = [
        Camera(az, el, 2.2) for az, el in [(0, 0), (90, 0), (180, 0), (270, 0), (0, 89.9), (0, -89.9)]
    ]
    planned, expected = plan_views(
        RayCaster(vertices, faces),
        points,
        normals,
        covered,
        coverage_target=0.99,
        budget=3,
        candidates=candidates,
    )
    assert [p.camera.azimuth_deg for p in planned] == [270]  # one view was enough
    assert planned[0].gain == pytest.approx(1 / 6, abs=0.01) and expected == 1.0


def test_planned_views_colour_what_the_requested_views_missed_and_the_shares_sum_to_one(tmp_path):
    # One front camera sees one face of six; planning adds views for the rest, inpainted around what is known.
    calls = []

    def generator(cameras, geometry, resolution, known=None):
        calls.append((len(cameras), known))
        return colour_by_normal(cameras, geometry, resolution, known)

    request = TextureRequest(prompt="a box", num_views=1, atlas_size=128, view_resolution=32, max_views=8)
    result = texture_mesh(request, _box_path(tmp_path), generator)
    surface = result.meta["surface"]
    assert set(surface) == {"from_views", "inpainted", "filled"}
    assert sum(surface.values()) == pytest.approx(1.0, abs=1e-3)
    assert result.meta["coverage"] == surface["from_views"] < 0.25
    assert surface["inpainted"] > 0.7 and surface["filled"] < 0.05
    assert (
        result.meta["views_used"] == len(result.cameras) == 1 + len(result.meta["planning"]["planned_views"])
    )
    assert calls[0] == (1, None)  # the requested view: nothing held
    for count, known in calls[1:]:  # planned views, with the earlier views as held context
        assert known is not None and count <= 8 and known.mask[0].all()
    assert not result.meta["warnings"]


def test_planning_off_leaves_the_rest_to_the_fill_and_warns(tmp_path):
    request = TextureRequest(prompt="a box", num_views=1, atlas_size=64, view_resolution=32, max_views=1)
    result = texture_mesh(request, _box_path(tmp_path), colour_by_normal)
    surface = result.meta["surface"]
    assert surface["inpainted"] == 0 and surface["filled"] > 0.5 and result.meta["views_used"] == 1
    assert any("surface fill" in w for w in result.meta["warnings"])
    assert sum(surface.values()) == pytest.approx(1.0, abs=1e-3)


def test_bench_meshes_and_the_round_trip_measures(tmp_path):
    from engines.bench.coverage import oracle_views, psnr, seam_step, true_atlas
    from engines.bench.coverage_meshes import MESHES

    for name, make in MESHES.items():
        mesh = make()
        assert mesh.is_watertight and len(mesh.faces) <= 10_000, name
    path = tmp_path / "cube.ply"
    MESHES["cube"]().export(path)
    request = TextureRequest(prompt="a box", atlas_size=128, bake_resolution=256)
    result = texture_mesh(request, path, oracle_views, resolution=32)
    truth, chart = true_atlas(result.mesh, 128)
    seen = result.coverage & chart
    # a perfect model's views bake back close to the true colour; the true colour's seam step is small
    assert psnr(result.atlas[seen], truth[seen]) > 25
    noise = np.random.default_rng(0).uniform(0, 255, truth.shape)
    assert seam_step(truth, result.mesh, chart) < 0.2 * seam_step(noise, result.mesh, chart)


def test_context_views_per_call_follow_the_models_view_counts():
    from engines.texturing.planning import CONTEXT_VIEWS, context_size

    assert context_size(3, 6, 8) == CONTEXT_VIEWS == 2  # a few nearest earlier views
    assert context_size(6, 1, 8) == 1  # only one earlier view exists
    assert context_size(3, 6, 1) == 0  # views do not attend to each other: no context
    assert context_size(1, 6, 4, [4]) == 3  # a model serving 4-view calls only: filled to 4
    assert context_size(2, 6, 8, [2, 4, 8]) == 2  # the smallest served count that holds the context
    assert context_size(3, 6, 8, [2, 4, 8]) == 5  # 3 + 2 is no served count: 8
