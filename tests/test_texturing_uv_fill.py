"""UV rasterisation that wraps and knows overlaps, best-view baking of shared texels, fill over the surface."""

from __future__ import annotations

import numpy as np

from engines.sampling.cameras import Camera
from engines.texturing.bake import BakeResult, bake_views
from engines.texturing.fill import fill_atlas, fill_over_surface
from engines.texturing.rasterize import RayCaster, mirrored_faces, rasterize_uv
from tests.fixtures.texturing import uv_box


def test_uvs_outside_the_unit_square_wrap_onto_the_atlas():
    # A quad whose u runs from 0.75 to 1.25: it covers the atlas's last and first quarter, not the middle.
    f = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0.75, 0.1], [1.25, 0.1], [1.25, 0.9], [0.75, 0.9]])
    maps = rasterize_uv(uv, f, 16)
    cols = maps.mask.any(axis=0)
    assert cols[:4].all() and cols[12:].all() and not cols[4:12].any()
    assert maps.overlapping_texels == 0  # the shared diagonal is not an overlap


def _mirrored_pair():
    """Quad A at z = +0.2 facing the camera, quad B at z = -0.2 behind it, both on one UV square,
    B's UVs mirrored (u flipped) and listed first."""
    quad = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    a = np.c_[quad, np.full(4, 0.2)]
    b = np.c_[quad, np.full(4, -0.2)]
    uv_a = quad + 0.5
    uv_b = np.c_[1 - uv_a[:, 0], uv_a[:, 1]]
    vertices = np.concatenate([b, a])
    faces = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])  # both face +Z
    return vertices, faces, np.concatenate([uv_b, uv_a])


def test_mirrored_overlapping_islands_are_detected_and_baked_from_the_face_the_view_sees():
    vertices, faces, uv = _mirrored_pair()
    assert mirrored_faces(uv, faces, vertices) == 2
    size, res = 32, 64
    maps = rasterize_uv(uv, faces, size)
    assert maps.overlapping_texels >= 0.9 * maps.mask.sum()
    camera = Camera(0.0, 0.0)  # looks down -Z from +Z: sees A, B is hidden behind it
    view = RayCaster(vertices, faces).render(camera, res)
    image = np.zeros((res, res, 3), np.uint8)
    image[:, : res // 2] = [255, 0, 0]  # left of the picture red, right green
    image[:, res // 2 :] = [0, 255, 0]
    baked = bake_views(maps, vertices, faces, [image], [view])
    chart = maps.mask
    assert baked.coverage[chart].mean() > 0.7 and baked.overlapping_texels == maps.overlapping_texels
    # A maps u -> x directly: low u is the red left half. B (mirrored) would have swapped the colours.
    left, right = baked.atlas[:, 4:12][chart[:, 4:12]], baked.atlas[:, 20:28][chart[:, 20:28]]
    assert (left[:, 0] > 200).mean() > 0.9 and (right[:, 1] > 200).mean() > 0.9
    assert np.isin(baked.face_id[chart & baked.coverage], [2, 3]).all()


# uv_box charts (3 x 2 grid): +x, -x, +y on the bottom row, -y, +z, -z on the top row (v up).
_FACE_COLOURS = {0: (255, 0, 0), 1: (0, 255, 0), 2: (255, 255, 0), 3: (0, 128, 0), 5: (255, 0, 255)}


def _box_bake(size):
    v, f, uv = uv_box()
    maps = rasterize_uv(uv, f, size)
    chart = maps.mask
    face_side = f.reshape(6, 2, 3)[:, 0, 0] // 4  # two triangles per side, four vertices per side
    side_of_texel = np.where(chart, (np.maximum(maps.face_id, 0) // 2), -1)
    atlas = np.zeros((size, size, 3), np.float32)
    coverage = np.zeros_like(chart)
    for side, colour in _FACE_COLOURS.items():
        sel = side_of_texel == side
        atlas[sel] = colour
        coverage |= sel
    assert list(face_side) == [0, 1, 2, 3, 4, 5]
    baked = BakeResult(atlas, coverage, chart, coverage.astype(np.float32), maps.face_id, maps.bary)
    return v, f, baked, side_of_texel == 4


def test_unseen_face_is_filled_from_its_neighbours_on_the_mesh_not_from_the_atlas():
    v, f, baked, top = _box_bake(96)
    filled = fill_over_surface(baked, v, f).astype(int)
    # +z touches +x, -x, +y, -y on the box (no blue in any of them); -z (magenta) sits next to it in the
    # atlas but is the opposite side of the box: none of its blue may leak in.
    assert filled[top][:, 2].max() <= 1
    centre = filled[top].mean(axis=0)
    assert 60 < centre[0] < 200 and 60 < centre[1] < 200  # a blend of the four sides, not one of them
    # Seen texels keep their colour exactly; off-chart texels are padded (never black).
    seen = baked.coverage
    assert (filled[seen] == baked.atlas[seen]).all()
    assert (filled[~baked.chart].sum(axis=1) > 0).all()
    # The texture-space fill, for contrast, pulls the atlas neighbour's magenta into the +z chart.
    atlas_only = fill_atlas(baked.atlas, baked.coverage, baked.chart).astype(int)
    assert atlas_only[top][:, 2].max() > 100


def test_fill_of_an_atlas_no_view_saw_is_neutral_grey_over_the_surface():
    v, f, baked, _ = _box_bake(32)
    baked.coverage[:] = False
    assert (fill_over_surface(baked, v, f) == 128).all()
