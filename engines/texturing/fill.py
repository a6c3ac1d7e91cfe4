"""Fill what no view saw, and pad every UV chart so the background never bleeds in.

Three passes over the atlas, all in texture space:
1. Voronoi fill: every texel without a baked colour takes the colour of the nearest covered texel (an
   exact Euclidean distance transform, as SyncMVD's jump flood). This alone pads every chart all the way
   to its neighbours, far beyond the 4 texels bilinear filtering and mip-maps need.
2. Holes inside charts (on the mesh, seen by no view) are smoothed with OpenCV's Telea inpainting, so a
   hole shades from its rim instead of showing Voronoi cells. Its inputs around the holes are covered
   texels or pass-1 copies of them, never background.
3. The padding is redone from all chart texels, so the texels around an inpainted hole carry its colours.
An atlas with no covered texel at all becomes neutral grey.
"""

from __future__ import annotations

import numpy as np

NEUTRAL_GREY = 128
# Telea's neighbourhood: a few texels is enough for smooth shading across small holes.
_INPAINT_RADIUS = 3


def nearest_fill(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Every unknown texel takes the value of the nearest known one (Euclidean)."""
    from scipy import ndimage

    if known.all():
        return image.copy()
    _, (rows, cols) = ndimage.distance_transform_edt(~known, return_indices=True)
    return image[rows, cols]


def fill_atlas(atlas: np.ndarray, coverage: np.ndarray, chart: np.ndarray) -> np.ndarray:
    """uint8 (S, S, 3) atlas with holes filled and every chart padded; `atlas` is float in [0, 255]."""
    import cv2

    size = atlas.shape[:2]
    if not coverage.any():
        return np.full((*size, 3), NEUTRAL_GREY, np.uint8)
    out = np.clip(nearest_fill(atlas, coverage) + 0.5, 0, 255).astype(np.uint8)
    holes = chart & ~coverage
    if holes.any():
        inpainted = cv2.inpaint(out, holes.astype(np.uint8), _INPAINT_RADIUS, cv2.INPAINT_TELEA)
        out[holes] = inpainted[holes]
        out = nearest_fill(out, chart | coverage)
    return out
