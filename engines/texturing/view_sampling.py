"""Colour of a model view at a texel's projected position, depth-aware, so no colour crosses a depth edge.

A model view is small (32 px for the default model); the bake decides visibility on maps at the bake
resolution (512 px). A plain bilinear lookup mixes, at every texel near an occluding contour, the colour
of the surface in front with the one behind (a leg over a body), and the bake's own depth-edge band (a bake
pixel or two) does not reach that far. Here each texel is sampled directly in the model view, at its
projected position, from those of its four model-pixel neighbours that show the same surface: on the
object and at a depth within `DEPTH_SLOPE` model-pixel footprints (plus the bake's depth tolerance) of the
texel's own depth (joint bilateral interpolation with a step range kernel; one interpolation, no
intermediate upsampled image). The bilinear weight of the neighbours that qualify is the sample's
confidence, a factor of the view's weight in the bake: a texel that borrows its colour from one neighbour
near a silhouette counts less than one inside the surface, and one with no such neighbour (confidence 0)
is not sampled. Where all four qualify, the colour is the plain bilinear one, bit for bit.
"""

from __future__ import annotations

import numpy as np

from engines.texturing.rasterize import ViewMaps, sample_bilinear

#: a model-pixel neighbour shows the texel's surface when their depths differ by at most this many
#: model-pixel footprints (a surface slanted up to ~60 deg, over the up to 1.4 px between their centres)
DEPTH_SLOPE = 2.5


def sample_joint_bilinear(
    image: np.ndarray, maps: ViewMaps, x: np.ndarray, y: np.ndarray, depth: np.ndarray, depth_tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """(colour (n, 3) float64 in [0, 255], confidence (n,) float32 in [0, 1]) of points at pixel coordinates
    `x`, `y` of `image` (its own resolution, centres +0.5) and view depth `depth`; `maps`: the geometry of
    that view at the image's resolution. Colour is 0 where the confidence is 0."""
    h, w = maps.depth.shape
    colour = image[..., :3].reshape(h * w, 3).astype(np.float32)
    xf = np.clip(x - 0.5, 0, w - 1).astype(np.float32)
    yf = np.clip(y - 0.5, 0, h - 1).astype(np.float32)
    x0 = np.minimum(xf.astype(np.int32), max(w - 2, 0))
    y0 = np.minimum(yf.astype(np.int32), max(h - 2, 0))
    ax, ay = xf - x0, yf - y0
    tol = depth_tolerance + DEPTH_SLOPE * np.asarray(depth, np.float32) / np.float32(maps.camera.focal_px(h))
    mask, pixel_depth = maps.mask.reshape(-1), maps.depth.reshape(-1)
    acc = np.zeros((len(xf), 3), np.float32)
    total = np.zeros(len(xf), np.float32)
    everyone = np.ones(len(xf), bool)
    for dy, wy in ((0, 1.0 - ay), (min(1, h - 1), ay)):
        for dx, wx in ((0, 1.0 - ax), (min(1, w - 1), ax)):
            i = (y0 + dy) * w + x0 + dx
            same = mask[i] & (np.abs(pixel_depth[i] - depth) <= tol)
            everyone &= same
            weight = wy * wx * same
            acc += weight[:, None] * colour[i]
            total += weight
    out = np.zeros((len(xf), 3), np.float64)  # the dtype `sample_bilinear` returns
    some = (total > 1e-6) & ~everyone
    out[some] = np.clip(acc[some] / total[some, None], 0.0, 255.0)
    out[everyone] = sample_bilinear(image[..., :3], x[everyone], y[everyone])
    confidence = np.where(everyone, np.float32(1.0), np.where(some, np.minimum(total, 1.0), 0.0))
    return out, confidence.astype(np.float32)
