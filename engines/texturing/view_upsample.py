"""Generated views resized to the bake resolution, depth-aware, so no colour crosses a depth edge.

A model view is small (32 px for the default model); the bake decides visibility on maps at the bake
resolution (512 px). A plain bilinear resize mixes, in every bake pixel near an occluding contour, the
colour of the surface in front with the one behind (a leg over a body: 16 bake pixels of each model
pixel), and the bake's own depth-edge band (a bake pixel or two) does not reach that far. Here each bake
pixel interpolates only those of its four model-pixel neighbours that show the same surface: on the
object and at a depth within `DEPTH_SLOPE` model-pixel footprints (plus the bake's depth tolerance) of the
bake pixel's own depth (joint bilateral upsampling with a step range kernel). The bilinear weight of the
neighbours that qualify is the pixel's confidence, a factor of the view's weight in the bake: a pixel that
borrows its colour from one neighbour near a silhouette counts less than one inside the surface, and one
with no such neighbour (confidence 0) is not sampled.
"""

from __future__ import annotations

import numpy as np

from engines.texturing.bake import BakeSettings
from engines.texturing.rasterize import ViewMaps

#: a model-pixel neighbour shows the bake pixel's surface when their depths differ by at most this many
#: model-pixel footprints (a surface slanted up to ~60 deg, over the up to 1.4 px between their centres)
DEPTH_SLOPE = 2.5


def _axis(big: int, small: int) -> tuple[np.ndarray, np.ndarray]:
    """Per bake pixel along one axis: the lower model-pixel neighbour and the weight of the upper one."""
    s = (np.arange(big, dtype=np.float32) + 0.5) * (small / big) - 0.5
    lo = np.clip(np.floor(s).astype(np.int64), 0, max(small - 2, 0))
    return lo, np.clip(s - lo, 0.0, 1.0).astype(np.float32)


def upsample_view(
    image: np.ndarray, model: ViewMaps, bake: ViewMaps, settings: BakeSettings | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(the view at the bake maps' resolution, float32 (R, R, 3) in [0, 255]; its confidence, float32 (R, R)
    in [0, 1]).

    The upsampled colour is not rounded: the view is already quantised to uint8 by the model, and a second
    rounding at the bake resolution would add its own error (1/12 level^2 of variance) to every texel.
    `model`: the geometry maps at the view's own resolution, `bake`: the same camera at the bake's."""
    s = settings or BakeSettings()
    small, big = model.resolution, bake.resolution
    if small == big:
        return image[..., :3].astype(np.float32), bake.mask.astype(np.float32)
    rows, ay = _axis(big, small)
    cols, ax = _axis(big, small)
    on = bake.mask
    r_idx, c_idx = np.nonzero(on)
    depth = bake.depth[on]
    tol = s.depth_tolerance + DEPTH_SLOPE * depth / np.float32(model.camera.focal_px(small))
    colour = image[..., :3].astype(np.float32)
    acc = np.zeros((len(depth), 3), np.float32)
    total = np.zeros(len(depth), np.float32)
    hi = min(1, small - 1)
    for dy in (0, hi):
        y = rows[r_idx] + dy
        wy = ay[r_idx] if dy else 1.0 - ay[r_idx]
        for dx in (0, hi):
            x = cols[c_idx] + dx
            wx = ax[c_idx] if dx else 1.0 - ax[c_idx]
            same = model.mask[y, x] & (np.abs(model.depth[y, x] - depth) <= tol)
            w = wy * wx * same
            acc += w[:, None] * colour[y, x]
            total += w
    ok = total > 1e-6
    out = np.zeros((big, big, 3), np.float32)
    out[r_idx[ok], c_idx[ok]] = np.clip(acc[ok] / total[ok, None], 0.0, 255.0)
    confidence = np.zeros((big, big), np.float32)
    confidence[r_idx[ok], c_idx[ok]] = np.minimum(total[ok], 1.0)
    return out, confidence
