"""Geometry maps, bake and fill: round trips through rendered views, occlusion, chart padding."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from engines.sampling.cameras import Camera, texturing_cameras
from engines.texturing.bake import bake_views, project, texel_surface
from engines.texturing.fill import fill_atlas
from engines.texturing.mesh_io import load_mesh_bytes
from engines.texturing.pipeline import bake_images
from engines.texturing.rasterize import (
    RayCaster,
    face_normals,
    geometry_channels,
    rasterize_uv,
    render_albedo,
    render_views,
)
from engines.texturing.unwrap import ensure_uv
from tests.fixtures.texturing import psnr, textured_box_glb, uv_box


def _round_trip(mesh, texture, cameras, resolution, atlas_size):
    """Render the textured mesh unlit from `cameras`, bake the views back; (baked atlas, coverage)."""
    rasterizer = RayCaster(mesh.normalized_vertices, mesh.faces)
    views = [
        render_albedo(m, mesh.faces, mesh.uv, texture) for m in render_views(rasterizer, cameras, resolution)
    ]
    atlas, baked = bake_images(mesh, views, cameras, atlas_size, rasterizer=rasterizer)
    return atlas, baked


def test_bake_round_trip_of_textured_box_reaches_35db_on_covered_texels():
    mesh = load_mesh_bytes(textured_box_glb(256), "box.glb")
    atlas, baked = _round_trip(mesh, mesh.texture, texturing_cameras(6), 256, 256)
    cov = baked.coverage
    assert baked.coverage_fraction > 0.8  # every face is seen head-on by one default view
    assert psnr(atlas[cov], mesh.texture[cov]) >= 35.0


def _surface_texture(mesh, size):
    """A smooth colour field of the 3D position, written into the atlas and padded like a real texture.

    Defined on the surface (not in UV space) so it is continuous across UV seams, as a generated view is.
    """
    uv_maps = rasterize_uv(mesh.uv, mesh.faces, size)
    flat, p, _ = texel_surface(uv_maps, mesh.normalized_vertices, mesh.faces)
    colour = 127.5 + 100 * np.stack(
        [np.sin(4 * p[:, 0]), np.cos(5 * p[:, 1]), np.sin(3 * (p[:, 0] + p[:, 2]))], -1
    )
    atlas = np.zeros((size * size, 3), np.float32)
    atlas[flat] = colour
    return fill_atlas(atlas.reshape(size, size, 3), uv_maps.mask, uv_maps.mask)


def test_bake_round_trip_of_unwrapped_sphere_reaches_35db_on_covered_texels():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    mesh = ensure_uv(load_mesh_bytes(sphere.export(file_type="ply"), "sphere.ply"), timeout_s=60)
    texture = _surface_texture(mesh, 256)
    atlas, baked = _round_trip(mesh, texture, texturing_cameras(6), 256, 256)
    cov = baked.coverage
    assert baked.coverage_fraction > 0.95
    assert psnr(atlas[cov], texture[cov]) >= 35.0


def _two_plates():
    """A small plate in front of a wide one (both facing +Z); UVs: front plate left half, back right half."""
    front = np.array([[-0.3, -0.3, 0.3], [0.3, -0.3, 0.3], [0.3, 0.3, 0.3], [-0.3, 0.3, 0.3]])
    back = np.array([[-0.9, -0.3, -0.3], [0.9, -0.3, -0.3], [0.9, 0.3, -0.3], [-0.9, 0.3, -0.3]])
    quad_uv = np.array([[0.05, 0.05], [0.45, 0.05], [0.45, 0.95], [0.05, 0.95]])
    vertices = np.concatenate([front, back])
    faces = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    uv = np.concatenate([quad_uv, quad_uv + [0.5, 0.0]])
    return trimesh.Trimesh(vertices, faces, visual=trimesh.visual.TextureVisuals(uv=uv), process=False)


def test_texel_hidden_behind_another_surface_takes_no_colour_from_that_view():
    mesh = load_mesh_bytes(_two_plates().export(file_type="glb"), "plates.glb")
    camera = Camera(azimuth_deg=0.0, elevation_deg=0.0)
    size, res = 256, 256
    view_maps = [RayCaster(mesh.normalized_vertices, mesh.faces).render(camera, res)]
    red = np.zeros((res, res, 3), np.uint8)
    red[..., 0] = 255
    uv_maps = rasterize_uv(mesh.uv, mesh.faces, size)
    baked = bake_views(uv_maps, mesh.normalized_vertices, mesh.faces, [red], view_maps)

    # Which back-plate texels the front plate hides: project both into the view and compare footprints.
    v = mesh.normalized_vertices
    on_back = (uv_maps.face_id >= 2).reshape(-1)
    flat = np.flatnonzero(on_back)
    bary = uv_maps.bary.reshape(-1, 3)[flat].astype(np.float64)
    points = np.einsum("nk,nkc->nc", bary, v[mesh.faces[uv_maps.face_id.reshape(-1)[flat]]])
    x, y, _ = project(camera, res, points)
    fx, fy, _ = project(camera, res, v[:4])
    margin = 3.0  # pixels: silhouette borders are dropped on purpose
    hidden = (
        (x > fx.min() + margin) & (x < fx.max() - margin) & (y > fy.min() + margin) & (y < fy.max() - margin)
    )
    bx, by, _ = project(camera, res, v[4:])
    inside_back = (
        (x > bx.min() + margin) & (x < bx.max() - margin) & (y > by.min() + margin) & (y < by.max() - margin)
    )
    exposed = ((x < fx.min() - margin) | (x > fx.max() + margin)) & inside_back
    covered = baked.coverage.reshape(-1)[flat]
    assert hidden.sum() > 1000 and exposed.sum() > 1000
    assert not covered[hidden].any()
    assert covered[exposed].mean() > 0.95
    front = (uv_maps.face_id.reshape(-1) >= 0) & (uv_maps.face_id.reshape(-1) < 2)
    assert baked.coverage.reshape(-1)[front].mean() > 0.8  # all but its 2-3 pixel silhouette border
    assert np.allclose(baked.atlas.reshape(-1, 3)[front & baked.coverage.reshape(-1)], [255, 0, 0])


def test_grazing_views_are_dropped():
    mesh = load_mesh_bytes(textured_box_glb(64), "box.glb")
    # Azimuth 80: the box's +Z face is seen at 80 degrees, beyond the 75-degree limit; +X at 10 degrees.
    camera = Camera(azimuth_deg=80.0, elevation_deg=0.0)
    maps = RayCaster(mesh.normalized_vertices, mesh.faces).render(camera, 128)
    uv_maps = rasterize_uv(mesh.uv, mesh.faces, 128)
    image = np.full((128, 128, 3), 200, np.uint8)
    baked = bake_views(uv_maps, mesh.normalized_vertices, mesh.faces, [image], [maps])
    normals = face_normals(mesh.normalized_vertices, mesh.faces)
    face_of = uv_maps.face_id
    plus_z = np.flatnonzero(normals[:, 2] > 0.5)
    plus_x = np.flatnonzero(normals[:, 0] > 0.5)
    assert not baked.coverage[np.isin(face_of, plus_z)].any()
    assert baked.coverage[np.isin(face_of, plus_x)].mean() > 0.8


def test_fill_pads_every_chart_and_fills_unseen_texels():
    v, f, uv = uv_box()
    size = 128
    uv_maps = rasterize_uv(uv, f, size)
    chart = uv_maps.mask
    atlas = np.zeros((size, size, 3), np.float32)
    atlas[chart] = [10, 200, 30]
    coverage = chart.copy()
    coverage[40:50, 10:20] = False  # a hole inside a chart that no view saw
    filled = fill_atlas(atlas, coverage, chart)
    # Background and the hole take the chart's colour (Telea is off by a level or two), never black.
    assert np.abs(filled.astype(int) - [10, 200, 30]).max() <= 2


def test_fill_of_an_atlas_no_view_saw_is_neutral_grey():
    chart = np.zeros((32, 32), bool)
    chart[8:24, 8:24] = True
    filled = fill_atlas(np.zeros((32, 32, 3), np.float32), np.zeros_like(chart), chart)
    assert (filled == 128).all()


def test_geometry_channels_hold_normals_positions_and_mask_in_order():
    mesh = load_mesh_bytes(textured_box_glb(32), "box.glb")
    maps = render_views(RayCaster(mesh.normalized_vertices, mesh.faces), [Camera(0.0, 0.0)], 64)
    geo = geometry_channels(maps)
    assert geo.shape == (1, 7, 64, 64) and geo.dtype == np.float32
    mask = geo[0, 6] > 0
    assert 0.1 < mask.mean() < 0.9
    # Seen from +Z the box shows its +Z face: normal (0, 0, 1), position z = the face's plane.
    assert np.allclose(geo[0, 0:3][:, mask].T, [0, 0, 1], atol=1e-5)
    assert np.allclose(geo[0, 5][mask], mesh.normalized_vertices[:, 2].max(), atol=1e-4)
    assert np.abs(geo[0, 3:6][:, mask]).max() <= 1.0
    assert (geo[0][:, ~mask] == 0).all()


@pytest.mark.parametrize("resolution", [31, 64])
def test_depth_map_matches_projection_of_hit_points(resolution):
    mesh = load_mesh_bytes(trimesh.creation.icosphere(2).export(file_type="ply"), "s.ply")
    camera = Camera(35.0, 20.0)
    maps = RayCaster(mesh.normalized_vertices, mesh.faces).render(camera, resolution)
    mask = maps.mask
    x, y, depth = project(camera, resolution, maps.position[mask].astype(np.float64))
    rows, cols = np.nonzero(mask)
    assert np.allclose(depth, maps.depth[mask], atol=1e-4)
    assert np.allclose(x, cols + 0.5, atol=1e-3) and np.allclose(y, rows + 0.5, atol=1e-3)
