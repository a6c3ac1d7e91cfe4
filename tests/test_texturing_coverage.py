"""Texturing the whole surface (issue 25): bake resolution, surface shares, view planning, inpainting."""

from __future__ import annotations

from engines.requests import TextureRequest
from engines.texturing.pipeline import texture_mesh
from tests.fixtures.texturing import colour_by_normal, textured_box_glb


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
