"""Coverage-driven view planning and the inputs of inpainted views.

After the requested views are baked, a dense set of candidate cameras (Fibonacci spheres at two radii,
plus close-ups framed on the largest uncovered patches) is scored by the uncovered surface each would
colour, weighted as the bake weights it (cos(theta)^k), with the bake's own visibility test
(`bake.visible_samples`: depth test, silhouettes and depth edges, grazing angles). Views are added
greedily, each time the one that adds most, until the covered share reaches the target, the view budget
is spent, or no candidate adds a useful amount.

Each planned view is then generated with what is already known held (`known_view` renders the partial
texture into it) and baked into the texels still uncovered and into the band at the edge of the
requested views' coverage, where their weight falls to 0 (`blend_band`, `BakeSettings.blend_band`): there
`merge_bakes` blends the two by weight, so no colour step is left where the requested views stop. The
requested views' other texels are never touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engines.sampling.cameras import Camera
from engines.texturing.bake import BakeResult, BakeSettings, depth_edges, visible_samples
from engines.texturing.rasterize import Rasterizer, UVMaps, ViewMaps

#: spheres of candidate cameras (distance from the object's centre; the object fits the unit sphere)
CANDIDATE_RADII = (2.2, 1.5)
CANDIDATES_PER_RADIUS = 32
#: close-ups framed on the largest uncovered patches (grouped by the direction they face)
CLOSEUPS = 8
CLOSEUP_DISTANCE = 1.0
#: candidates are scored on views this size and on at most this many texel samples (speed; the bake
#: decides at the full bake resolution)
SCORE_RESOLUTION = 128
SCORE_SAMPLES = 20_000
#: a view must add at least this share of the surface to be worth generating
MIN_GAIN = 0.002
#: earlier views held as context in each call that generates planned views (multi-view models)
CONTEXT_VIEWS = 2


@dataclass
class PlannedView:
    camera: Camera
    gain: float  # share of the surface it was expected to add

    def describe(self) -> dict:
        c = self.camera
        return {
            "azimuth_deg": round(c.azimuth_deg, 2),
            "elevation_deg": round(c.elevation_deg, 2),
            "radius": round(c.radius, 3),
            "expected_gain": round(self.gain, 4),
        }


def fibonacci_directions(n: int) -> np.ndarray:
    """(n, 3) unit vectors spread evenly over the sphere."""
    i = np.arange(n) + 0.5
    y = 1.0 - 2.0 * i / n
    r = np.sqrt(np.maximum(1.0 - y * y, 0.0))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.sin(phi), y, r * np.cos(phi)], axis=1)


def orbit_camera_towards(direction: np.ndarray, radius: float, fov_deg: float = 40.0) -> Camera:
    d = direction / np.linalg.norm(direction)
    el = math.degrees(math.asin(float(np.clip(d[1], -1.0, 1.0))))
    el = float(np.clip(el, -89.9, 89.9))
    az = math.degrees(math.atan2(float(d[0]), float(d[2])))
    return Camera(az, el, radius, fov_deg)


def look_at(eye: np.ndarray, target: np.ndarray, fov_deg: float = 40.0) -> Camera:
    """An explicit camera at `eye` looking at `target` (OpenGL frame, Y up unless looking along it)."""
    back = eye - target
    back = back / np.linalg.norm(back)
    up = np.array([0.0, 1.0, 0.0]) if abs(back[1]) < 0.999 else np.array([0.0, 0.0, -np.sign(back[1])])
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, np.cross(back, right), back, eye
    return Camera.from_matrix(m, fov_deg)


def candidate_cameras(fov_deg: float = 40.0) -> list[Camera]:
    """Orbit cameras on spheres at each of `CANDIDATE_RADII`, `CANDIDATES_PER_RADIUS` each."""
    dirs = fibonacci_directions(CANDIDATES_PER_RADIUS)
    return [orbit_camera_towards(d, r, fov_deg) for r in CANDIDATE_RADII for d in dirs]


def closeup_cameras(points: np.ndarray, normals: np.ndarray, fov_deg: float = 40.0) -> list[Camera]:
    """Cameras framed on the largest uncovered patches: samples grouped by the direction they face (and,
    two-sided, its opposite), each group looked at from its centre along its mean normal."""
    if len(points) == 0:
        return []
    dirs = fibonacci_directions(26)
    group = np.argmax(np.abs(normals @ dirs.T), axis=1)
    counts = np.bincount(group, minlength=len(dirs))
    cams = []
    for g in np.argsort(-counts)[:CLOSEUPS]:
        if counts[g] < 16:
            break
        sel = group == g
        centre = points[sel].mean(axis=0)
        sign = np.sign(normals[sel] @ dirs[g])
        n = (normals[sel] * sign[:, None]).mean(axis=0)
        # two-sided: face the side of the patch away from the object's centre
        if np.dot(n, centre) < 0 and np.linalg.norm(centre) > 1e-3:
            n = -n
        if np.linalg.norm(n) < 1e-6:
            continue
        n = n / np.linalg.norm(n)
        cams.append(look_at(centre + n * CLOSEUP_DISTANCE, centre, fov_deg))
    return cams


def scoring_unreliable(maps: ViewMaps, edge_slope_px: float) -> np.ndarray:
    """What a candidate view at the coarse scoring resolution will not colour: the background and a
    pixel each side of its depth edges (at 128 px one pixel is 4 bake pixels, the band a depth edge costs
    at the bake, about half a 32 px model pixel: `view_sampling`), but no silhouette band (that costs a
    bake pixel or two)."""
    import cv2

    edges = cv2.dilate(depth_edges(maps, edge_slope_px).astype(np.uint8), np.ones((3, 3), np.uint8))
    return ~maps.mask | edges.astype(bool)


def plan_views(
    rasterizer: Rasterizer,
    points: np.ndarray,
    normals: np.ndarray,
    covered: np.ndarray,
    *,
    coverage_target: float,
    budget: int,
    settings: BakeSettings | None = None,
    candidates: list[Camera] | None = None,
    seed: int = 0,
) -> tuple[list[PlannedView], float]:
    """Greedy view planning over on-mesh texel samples (`points`, `normals`; `covered` those already
    coloured). Returns the chosen views, best first, and the covered share they are expected to reach."""
    s = settings or BakeSettings()
    n = len(points)
    if n == 0 or budget <= 0:
        return [], float(covered.mean()) if n else 1.0
    if n > SCORE_SAMPLES:  # an even subsample, the same one every run
        keep = np.random.default_rng(seed).choice(n, SCORE_SAMPLES, replace=False)
        points, normals, covered = points[keep], normals[keep], covered[keep]
        n = SCORE_SAMPLES
    uncovered = ~covered.astype(bool)
    if uncovered.mean() <= 1.0 - coverage_target:
        return [], 1.0 - float(uncovered.mean())
    cams = list(candidates) if candidates is not None else candidate_cameras()
    if candidates is None:
        cams += closeup_cameras(points[uncovered], normals[uncovered])
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    for cam in cams:
        maps = rasterizer.render(cam, SCORE_RESOLUTION, shading=False)
        bad = scoring_unreliable(maps, s.edge_slope_px)
        idx, cos, _, _ = visible_samples(points, normals, maps, bad, s)
        seen.append((idx, cos.astype(np.float64) ** s.cos_power))
    chosen: list[PlannedView] = []
    used: set[int] = set()
    while len(chosen) < budget and uncovered.mean() > 1.0 - coverage_target:
        scores = np.array(
            [w[uncovered[idx]].sum() if i not in used else -1.0 for i, (idx, w) in enumerate(seen)]
        )
        best = int(np.argmax(scores))
        idx = seen[best][0]
        gain = float(uncovered[idx].sum()) / n
        if scores[best] <= 0 or gain < MIN_GAIN:
            break
        used.add(best)
        uncovered[idx] = False
        chosen.append(PlannedView(cams[best], gain))
    return chosen, 1.0 - float(uncovered.mean())


def known_view(
    maps: ViewMaps,
    uv: np.ndarray,
    faces: np.ndarray,
    atlas: np.ndarray,
    covered: np.ndarray,
    resolution: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The partial texture rendered into one view: (image (r, r, 3) uint8, known (r, r) bool) at the model's
    `resolution`, from geometry maps at the bake resolution. A model pixel is known when every bake pixel
    in it shows a covered texel (nearest texel, so no uncovered texel's black bleeds in)."""
    import cv2

    big = maps.resolution
    size = atlas.shape[0]
    colour = np.zeros((big, big, 3), np.float32)
    known = np.zeros((big, big), np.float32)
    mask = maps.mask
    fid = maps.face_id[mask]
    hit_uv = np.einsum("nk,nkc->nc", maps.bary[mask], np.asarray(uv, np.float64)[faces[fid]])
    col = np.floor(hit_uv[:, 0] * size).astype(np.int64) % size
    row = np.floor((1.0 - hit_uv[:, 1]) * size).astype(np.int64) % size
    ok = covered[row, col]
    colour[mask] = np.where(ok[:, None], atlas[row, col, :3], 0.0)
    known[mask] = ok
    if big != resolution:
        colour = cv2.resize(colour, (resolution, resolution), interpolation=cv2.INTER_AREA)
        known = cv2.resize(known, (resolution, resolution), interpolation=cv2.INTER_AREA)
    held = known > 0.999
    image = np.where(held[..., None], colour / np.maximum(known, 1e-6)[..., None], 0.0)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), held


def blend_band(requested: BakeResult, band: float) -> np.ndarray:
    """(S, S) float32 in [0, 1]: the factor of a planned view's weight on each texel the requested views
    coloured, 1 - w_req / `band` clipped at 0 (`BakeSettings.blend_band`); 0 outside the band, where the
    planned views leave the requested views' colour alone, and everywhere when `band` is 0."""
    if band <= 0:
        return np.zeros(requested.weight.shape, np.float32)
    factor = np.clip(1.0 - requested.weight / np.float32(band), 0.0, 1.0)
    return np.where(requested.coverage, factor, 0.0).astype(np.float32)


def uncovered_maps(uv_maps: UVMaps, covered: np.ndarray) -> UVMaps:
    """`uv_maps` without the `covered` texels: planned views are baked only where nothing is yet (and in
    the blend band, which the caller leaves out of `covered`)."""
    face_id = np.where(covered, -1, uv_maps.face_id).astype(np.int32)
    keep = ~covered.reshape(-1)[uv_maps.extra_texel]
    return UVMaps(
        face_id, uv_maps.bary, uv_maps.extra_texel[keep], uv_maps.extra_face[keep], uv_maps.extra_bary[keep]
    )


def merge_bakes(
    first: BakeResult, planned: BakeResult, band: np.ndarray | None = None
) -> tuple[BakeResult, np.ndarray]:
    """`first` with the texels only `planned` coloured added; returns it and those new texels (S, S).

    `band` (`blend_band`): where it is above 0, texels both coloured are blended by weight, `planned`'s
    weight scaled by it: (w_first c_first + band w_planned c_planned) / (w_first + band w_planned). Merging
    planned bakes one after another into the result sums all their weights. Elsewhere `first` is kept as is."""
    new = planned.coverage & ~first.coverage & first.chart
    atlas = np.where(new[..., None], planned.atlas, first.atlas)
    weight = np.where(new, planned.weight, first.weight)
    if band is not None:
        extra = planned.weight * band
        both = planned.coverage & first.coverage & (extra > 0)
        total = first.weight[both] + extra[both]
        atlas[both] = (
            first.weight[both, None] * first.atlas[both] + extra[both, None] * planned.atlas[both]
        ) / total[:, None]
        weight[both] = total
    merged = BakeResult(
        atlas=atlas,
        coverage=first.coverage | new,
        chart=first.chart,
        weight=weight,
        face_id=None if first.face_id is None else np.where(new, planned.face_id, first.face_id),
        bary=None if first.bary is None else np.where(new[..., None], planned.bary, first.bary),
        overlapping_texels=first.overlapping_texels,
    )
    return merged, new


def context_size(new: int, earlier: int, views_per_call: int, view_counts: list[int] | None = None) -> int:
    """How many earlier views to hold as context beside `new` planned views in one call: `CONTEXT_VIEWS`
    (as many as exist and fit), or, for a model that serves only some view counts, what makes the call the
    smallest of them that fits."""
    if views_per_call <= 1:
        return 0
    size = max(min(CONTEXT_VIEWS, earlier, views_per_call - new), 0)
    if view_counts:
        fits = [c for c in sorted(view_counts) if c >= new + size and c - new <= earlier]
        if fits:
            size = fits[0] - new
    return size


def context_order(cameras: list[Camera], targets: list[Camera]) -> list[int]:
    """Indices of `cameras`, the ones looking most like `targets` first (held context for a batch)."""

    def direction(c: Camera) -> np.ndarray:
        p = c.position()
        return p / max(float(np.linalg.norm(p)), 1e-9)

    t = np.stack([direction(c) for c in targets])
    score = [float(np.max(t @ direction(c))) for c in cameras]
    return sorted(range(len(cameras)), key=lambda i: -score[i])
