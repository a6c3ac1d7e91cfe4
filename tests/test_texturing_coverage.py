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


def _two_planes():
    """A small square 0.6 in front of a large one, both facing +z (the default camera's direction)."""

    def square(half: float, z: float):
        v = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
        return v, np.array([[0, 1, 2], [0, 2, 3]])

    back_v, back_f = square(0.6, -0.3)
    front_v, front_f = square(0.2, 0.3)
    return np.vstack([back_v, front_v]), np.vstack([back_f, front_f + 4])


def _red_front_blue_back(resolution: int = 32):
    """The two planes seen head-on at the model's resolution, the front square red, the back one blue."""
    vertices, faces = _two_planes()
    caster = RayCaster(vertices, faces)
    model = caster.render(Camera(0.0, 0.0), resolution)
    front = model.face_id >= 2
    image = np.zeros((resolution, resolution, 3), np.uint8)
    image[front] = (255, 0, 0)
    image[model.mask & ~front] = (0, 0, 255)
    return caster, model, image


def test_interior_texels_take_the_plain_bilinear_colour_of_the_model_view_bit_for_bit():
    from engines.texturing.rasterize import sample_bilinear
    from engines.texturing.view_sampling import sample_joint_bilinear

    v = np.array([[-3.0, -3.0, 0.0], [3.0, -3.0, 0.0], [3.0, 3.0, 0.0], [-3.0, 3.0, 0.0]])
    model = RayCaster(v, np.array([[0, 1, 2], [0, 2, 3]])).render(Camera(0.0, 0.0), 32)
    assert model.mask.all()
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    x, y = np.random.default_rng(1).uniform(0.0, 32.0, (2, 5000)).astype(np.float32)
    depth = np.full(len(x), float(model.depth.mean()), np.float32)  # the plane faces the camera
    colour, confidence = sample_joint_bilinear(image, model, x, y, depth, 2e-3)
    assert (confidence == 1).all()
    assert np.array_equal(colour, sample_bilinear(image, x, y))  # one interpolation, not re-quantised
    assert np.abs(colour - np.round(colour)).max() > 0.4


def test_no_colour_crosses_a_depth_edge_when_texels_sample_the_model_view():
    from engines.texturing.rasterize import sample_bilinear
    from engines.texturing.view_sampling import sample_joint_bilinear

    caster, model, image = _red_front_blue_back()
    bake = caster.render(Camera(0.0, 0.0), 256, shading=False)
    rows, cols = np.nonzero(bake.mask)
    x, y = (cols + 0.5) * (32 / 256), (rows + 0.5) * (32 / 256)  # bake pixel centres in model pixels
    colour, confidence = sample_joint_bilinear(image, model, x, y, bake.depth[rows, cols], 2e-3)
    back = bake.face_id[rows, cols] < 2
    sampled = confidence > 0
    assert (back & sampled).sum() > 0.3 * len(rows)
    assert (colour[back & sampled, 0] == 0).all() and (colour[back & sampled, 2] == 255).all()
    assert (colour[~back & sampled, 0] == 255).all() and (colour[~back & sampled, 2] == 0).all()
    # near the edge a texel borrows its colour from fewer neighbours and counts less
    assert 0 < confidence[back & sampled].min() < 1 and confidence.max() == 1
    # a plain bilinear lookup does mix them there
    assert (sample_bilinear(image, x, y)[back, 0] > 0).any()


def test_a_texel_with_no_neighbour_showing_its_surface_is_not_sampled():
    from engines.texturing.view_sampling import sample_joint_bilinear

    _, model, image = _red_front_blue_back()
    front = np.argwhere(model.face_id >= 2)
    r, c = front[len(front) // 2]  # inside the front square: all four neighbours show it
    behind = float(model.depth[model.mask & (model.face_id < 2)].max())  # the back plane's depth
    x, y = np.array([c + 0.7, c + 0.7, 0.6]), np.array([r + 0.8, r + 0.8, 0.6])
    depth = np.array([behind, model.depth[r, c], behind], np.float32)  # hidden, visible, off the object
    colour, confidence = sample_joint_bilinear(image, model, x, y, depth, 2e-3)
    assert confidence[0] == 0 and (colour[0] == 0).all()
    assert confidence[1] == 1 and colour[1, 0] == 255
    assert not model.mask[0, 0] and confidence[2] == 0 and (colour[2] == 0).all()


def test_a_views_weight_fades_out_towards_its_silhouettes_and_depth_edges():
    from engines.texturing.bake import BakeSettings, feather_weights, unreliable_pixels

    vertices, faces = _two_planes()
    maps = RayCaster(vertices, faces).render(Camera(0.0, 0.0), 256, shading=False)
    bad = unreliable_pixels(maps, BakeSettings().edge_slope_px)
    ramp = feather_weights(bad, BakeSettings().feather)
    assert ramp is not None and (ramp[~bad] > 0).all() and ramp.max() == 1.0
    ring = ~bad & (np.abs(np.diff(bad.astype(np.int8), axis=1, prepend=0)) > 0)
    assert ramp[~bad].min() < 0.2 and ramp[ring].max() < 0.2  # next to an edge: a small weight
    assert feather_weights(bad[:32, :32], BakeSettings().feather) is None  # under a pixel: no ramp


def _tube(around: int = 96, rows: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An open tube (radius 0.5, along y) unwrapped into one UV chart, its seam at the back (-z)."""
    theta = np.linspace(0.0, 2 * np.pi, around + 1) + np.pi  # the seam behind, away from the default camera
    height = np.linspace(-0.6, 0.6, rows + 1)
    t, h = np.meshgrid(theta, height)
    vertices = np.stack([0.5 * np.sin(t), h, 0.5 * np.cos(t)], axis=-1).reshape(-1, 3)
    u, v = np.meshgrid(np.linspace(0.02, 0.98, around + 1), np.linspace(0.02, 0.98, rows + 1))
    uv = np.stack([u, v], axis=-1).reshape(-1, 2)
    k = np.arange(rows)[:, None] * (around + 1) + np.arange(around)[None, :]
    quads = np.stack([k, k + 1, k + around + 2, k + around + 1], axis=-1).reshape(-1, 4)
    return vertices, np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]]), uv


def test_planned_views_blend_into_the_edge_of_the_requested_coverage():
    # A tube: a requested view from the front coloured red, a planned view from the side coloured blue.
    # Without the blend band the colour steps from red to blue where the requested coverage ends; with it
    # the requested texels near that edge (their weight fallen towards 0 with cos^k) go over to blue.
    from engines.bench.coverage import boundary_step
    from engines.texturing.bake import BakeSettings, bake_views
    from engines.texturing.planning import blend_band, merge_bakes, uncovered_maps
    from engines.texturing.rasterize import rasterize_uv

    vertices, faces, uv = _tube()
    caster = RayCaster(vertices, faces)
    uv_maps = rasterize_uv(uv, faces, 256)

    def bake(camera, colour, maps_uv):
        maps = caster.render(camera, 256, shading=False)
        image = np.zeros((256, 256, 3), np.float32)
        image[maps.mask] = colour
        return bake_views(maps_uv, vertices, faces, [image], [maps])

    requested = bake(Camera(0.0, 0.0), (200, 60, 60), uv_maps)
    band = blend_band(requested, BakeSettings().blend_band)
    assert (band > 0).any() and (band[~requested.coverage] == 0).all()
    merged = {}
    for name, b in {"hard switch": None, "blend band": band}.items():
        covered = requested.coverage if b is None else requested.coverage & ~(b > 0)
        planned = bake(Camera(90.0, 0.0), (60, 60, 200), uncovered_maps(uv_maps, covered))
        merged[name] = merge_bakes(requested, planned, b)
    (hard, new), (blended, new_too) = merged["hard switch"], merged["blend band"]
    assert new.sum() > 100 and np.array_equal(new, new_too)
    # the planned view's own texels and the requested view's texels outside the band: bit for bit the same
    assert np.array_equal(hard.atlas[new], blended.atlas[new])
    outside = requested.coverage & (band == 0)
    assert outside.sum() > 1000
    assert np.array_equal(blended.atlas[outside], requested.atlas[outside])
    assert np.array_equal(blended.weight[outside], requested.weight[outside])
    assert np.array_equal(hard.atlas[requested.coverage], requested.atlas[requested.coverage])
    step_hard = boundary_step(hard.atlas, requested.coverage, new)
    step_band = boundary_step(blended.atlas, requested.coverage, new)
    assert step_hard == pytest.approx(280 / 3, abs=1.0)  # red to blue: (140 + 0 + 140) / 3
    assert step_band < 0.1 * step_hard
    # the band's inner edge is smooth too: the largest step between neighbouring requested texels is small
    inner = boundary_step(blended.atlas, requested.coverage & (band > 0), outside)
    assert inner < 0.1 * step_hard
    assert (blend_band(requested, 0.0) == 0).all()  # 0: off, the hard switch


def test_a_texture_jobs_cost_bound_counts_the_views_it_may_plan():
    from service.jobs.cost import OverBudget, check_cost, job_cost
    from service.settings import Settings

    settings = Settings()
    default = TextureRequest(prompt="x", view_resolution=256).model_dump(mode="json")
    check_cost(job_cost("texture", default, 32), settings)  # the defaults are admitted
    no_planning = {**default, "max_views": 6, "inpaint_steps": 150}
    check_cost(job_cost("texture", no_planning, 32), settings)  # nothing to plan: its steps cost nothing
    greedy = {**default, "max_views": 64, "inpaint_steps": 150}
    with pytest.raises(OverBudget, match="58 planned views x 256x256 px x 150 inpaint_steps"):
        check_cost(job_cost("texture", greedy, 32), settings)


def test_the_round_trip_compares_bakes_paired_on_the_same_texels_and_seam_pairs():
    from engines.bench.coverage import paired_difference

    rng = np.random.default_rng(0)
    err_old, seam_old = rng.uniform(1.0, 3.0, 4000), rng.uniform(0.5, 1.5, 300)
    same = paired_difference((err_old, seam_old), (err_old, seam_old))
    assert same["psnr_difference_db"] == 0 and same["psnr_difference_interval"] == [0.0, 0.0]
    assert same["seam_step_difference"] == 0 and same["seam_step_difference_interval"] == [0.0, 0.0]
    # half the squared error is +3.01 dB; a seam step 0.2 lower on every pair is -0.2, whatever the spread
    better = paired_difference((err_old / 2, seam_old - 0.2), (err_old, seam_old))
    assert better["psnr_difference_db"] == pytest.approx(3.0103, abs=1e-3)
    lo, hi = better["psnr_difference_interval"]
    assert lo == pytest.approx(3.0103, abs=1e-3) and hi == pytest.approx(3.0103, abs=1e-3)
    assert better["seam_step_difference_interval"] == pytest.approx([-0.2, -0.2], abs=1e-4)
    assert better["texels"] == 4000 and better["seam_pairs"] == 300
    noisy = paired_difference((err_old * rng.uniform(0.3, 1.1, 4000), seam_old), (err_old, seam_old))
    lo, hi = noisy["psnr_difference_interval"]
    assert lo < noisy["psnr_difference_db"] < hi and hi - lo > 0.05


def test_the_round_trip_section_merges_into_an_existing_report_only(tmp_path):
    from engines.bench.coverage import run_coverage_bench
    from engines.errors import UserInputError

    with pytest.raises(UserInputError, match="no coverage.json"):
        run_coverage_bench(out_dir=tmp_path, section="round-trip")
    with pytest.raises(UserInputError, match="--section"):
        run_coverage_bench(out_dir=tmp_path, section="sd")
