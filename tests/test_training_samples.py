"""The README's texturing sample is made by code: texture an icosphere, reload the GLB, render it."""

from __future__ import annotations

import numpy as np


def test_texture_figure_shows_the_textured_glb_over_its_normals():
    from engines.training.samples import texture_figure

    fig = texture_figure(steps=2, resolution=64)
    assert fig.shape == (2 * 64, 6 * 64, 3)
    shaded, normals = fig[:64], fig[64:]
    centre = (slice(24, 40), slice(24, 40))
    for v in range(6):
        tile = shaded[:, v * 64 : (v + 1) * 64]
        # the preview of an untextured mesh is grey (R = G = B); the baked views give it colour
        pixels = tile[centre].reshape(-1, 3).astype(int)
        assert np.abs(pixels - pixels.mean(1, keepdims=True)).mean() > 2.0
        normal = normals[:, v * 64 : (v + 1) * 64]
        assert (normal[0, 0] == 0).all() and normal[centre].mean() > 40  # background 0, sphere lit up
    # each camera sees the sphere from elsewhere, so the normal maps differ
    assert not np.array_equal(normals[:, :64], normals[:, 64:128])
