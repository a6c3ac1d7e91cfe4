"""Control adherence and cross-view consistency measured on generated views (uint8, H x W x 3).

- **Colour mask IoU** (geometry-conditioned generation): the generated view's pixels whose hue is within
  `HUE_TOL` degrees of the prompt's colour (saturation and value above a floor) form the predicted
  foreground; IoU against the silhouette rendered from the conditioning mesh. It rewards the requested
  colour exactly where the requested shape is, and penalises colour outside it and a missing object.
- **Colour hit** (any generation): the hue histogram of the saturated pixels, its mode mapped to the
  nearest named chromatic colour; 1 if it is the prompt's colour.
- **Cross-view colour error** (geometry-conditioned generation): every object pixel of view i is lifted
  to 3D with the position map, projected into view j, and kept when view j sees the same surface point
  there (its position map agrees within `SAME_POINT`); mean absolute RGB difference over all kept pairs
  of all ordered view pairs, in [0, 1]. A 3D-consistent set of views scores low; the flat-shaded
  renders themselves (a fixed world light, no view-dependent effects) give the floor.
"""

from __future__ import annotations

import numpy as np

from engines.sampling.cameras import Camera
from engines.training.shapes import CHROMATIC, COLOURS

HUE_TOL = 22.0
SAT_MIN, VAL_MIN = 0.3, 0.15
SAME_POINT = 0.06


def hsv(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (H, W, 3) -> hue in degrees, saturation, value (each (H, W))."""
    x = image.astype(np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx, mn = x.max(-1), x.min(-1)
    d = mx - mn
    safe = np.where(d > 1e-6, d, 1.0)
    h = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = np.where(d > 1e-6, h * 60.0, 0.0)
    s = np.where(mx > 1e-6, d / np.maximum(mx, 1e-6), 0.0)
    return h, s, mx


def colour_hue(name: str) -> float:
    rgb = np.array(COLOURS[name], np.uint8)[None, None]
    return float(hsv(rgb)[0][0, 0])


def _hue_dist(h: np.ndarray, target: float) -> np.ndarray:
    d = np.abs(h - target) % 360.0
    return np.minimum(d, 360.0 - d)


def colour_mask(image: np.ndarray, colour: str) -> np.ndarray:
    h, s, v = hsv(image)
    return (_hue_dist(h, colour_hue(colour)) < HUE_TOL) & (s > SAT_MIN) & (v > VAL_MIN)


def mask_iou(pred: np.ndarray, target: np.ndarray) -> float:
    union = np.logical_or(pred, target).sum()
    return float(np.logical_and(pred, target).sum() / union) if union else 1.0


def dominant_colour(image: np.ndarray) -> str | None:
    h, s, v = hsv(image)
    keep = (s > SAT_MIN) & (v > VAL_MIN)
    if keep.sum() < 4:
        return None
    hues = h[keep]
    votes = {c: int((_hue_dist(hues, colour_hue(c)) < HUE_TOL).sum()) for c in CHROMATIC}
    best = max(votes, key=lambda c: votes[c])
    return best if votes[best] > 0 else None


def project(camera: Camera, points: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """World points (N, 3) -> pixel (row, col) integer indices of `camera` (may fall outside)."""
    c2w = camera.camera_to_world()
    w2c = np.linalg.inv(c2w)
    pc = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = -pc[:, 2]
    f = camera.focal_px(resolution)
    c = resolution / 2.0
    col = pc[:, 0] / np.maximum(z, 1e-6) * f + c
    row = -pc[:, 1] / np.maximum(z, 1e-6) * f + c
    return np.floor(row).astype(np.int64), np.floor(col).astype(np.int64)


def cross_view_error(images: list[np.ndarray], geometry: np.ndarray, cameras: list[Camera]) -> float:
    """Mean |RGB_i - RGB_j| in [0, 1] over corresponding visible surface points of all view pairs."""
    res = images[0].shape[0]
    total, count = 0.0, 0
    for i in range(len(cameras)):
        mask_i = geometry[i, 6] > 0.5
        pts = geometry[i, 3:6].transpose(1, 2, 0)[mask_i].astype(np.float64)
        cols_i = images[i][mask_i].astype(np.float32) / 255.0
        for j, cam_j in enumerate(cameras):
            if i == j:
                continue
            row, col = project(cam_j, pts, res)
            inside = (row >= 0) & (row < res) & (col >= 0) & (col < res)
            row, col = row[inside], col[inside]
            pj = geometry[j, 3:6].transpose(1, 2, 0)[row, col]
            seen = (geometry[j, 6][row, col] > 0.5) & (np.linalg.norm(pj - pts[inside], axis=1) < SAME_POINT)
            if not seen.any():
                continue
            diff = np.abs(cols_i[inside][seen] - images[j][row[seen], col[seen]].astype(np.float32) / 255.0)
            total += float(diff.mean(axis=1).sum())
            count += int(seen.sum())
    return total / count if count else float("nan")
