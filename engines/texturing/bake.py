"""Bake view images into a UV atlas: texel -> 3D point -> each view -> visible? -> weighted colour.

For every texel centre inside a UV chart we know its face and barycentrics (`rasterize_uv`), hence its
3D point and face normal on the normalised mesh. Each view then contributes where:
- the point projects inside the image, in front of the camera;
- it is the surface that camera sees: its depth matches the view's depth map within a tolerance that
  grows with the pixel footprint and the surface slope (nearest-pixel lookups are off by up to half a
  pixel, which on a slanted surface is a depth offset);
- it is not at a grazing angle (beyond `max_angle_deg`, generated pixels are smeared over many texels);
- the pixel is not on a depth discontinuity or next to the background: generated images blur across
  silhouettes, so colours there belong partly to another surface.
Contributions are blended with weight `view_weight * cos(theta)^k * feather` (theta between the face
normal and the direction to the camera; two-sided, so open meshes and flipped normals still bake;
`feather` ramps from 0 at a view's unreliable pixels to 1 at `BakeSettings.feather` of its side away,
so a view's colour fades out where it stops seeing a surface instead of leaving a step). Texels no view
sees stay uncovered; `fill.py` fills them.

A texel that several faces cover (overlapping or mirrored UV islands, instances sharing UVs) is baked
from each of them, and keeps the face whose views weigh most: the best-seen copy, chosen per texel (ties
go to the face `rasterize_uv` listed first, which is deterministic).

Instances (several nodes drawing one primitive) share its UVs exactly: the atlas is rasterised for the
first copy only, and `InstanceCopies` says where the other copies' faces are. The bake then evaluates one
copy at a time over the same texel samples, keeping per sample the best-seen copy so far, so memory is
bounded by the atlas, not by atlas x instances (84 instances at a 1024 atlas once took 11.7 GB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engines.sampling.cameras import Camera
from engines.texturing.rasterize import UVMaps, ViewMaps, face_normals, sample_bilinear
from engines.texturing.view_sampling import sample_joint_bilinear


@dataclass(frozen=True)
class BakeSettings:
    cos_power: float = 3.0  # k in cos(theta)^k: MV-Adapter uses 3, Hunyuan3D-2 4
    max_angle_deg: float = 75.0  # Hunyuan3D-2 drops surfaces beyond 75 deg
    depth_tolerance: float = 2e-3  # world units (object radius 0.7), on top of the slope term
    edge_slope_px: float = 8.0  # neighbour depth step, in pixel footprints, that counts as a discontinuity
    # a view's weight ramps up from 0 over this share of its side away from its unreliable pixels
    # (silhouettes, depth edges), so where one view stops seeing a surface its colour fades out instead of
    # stepping (0: off; below one bake pixel it changes nothing)
    feather: float = 0.03
    # planned views blend into the requested views' texels whose summed requested-view weight (a view
    # seen head-on, away from its edges, weighs its view weight: 1 by default) is below this: the band at
    # the edge of the requested coverage, where the feather and cos^k take that weight to 0. There a
    # planned view's weight is scaled by 1 - w_req / blend_band (all of it where w_req is 0, none at the
    # band's inner edge), so the colour goes over from the planned views' to the requested views' with no
    # step on either side; texels outside the band keep the requested views' colour bit for bit (0: off,
    # planned views colour only what the requested views left)
    blend_band: float = 0.2


@dataclass
class BakeResult:
    atlas: np.ndarray  # (S, S, 3) float32 in [0, 255], 0 where uncovered
    coverage: np.ndarray  # (S, S) bool: texels at least one view coloured
    chart: np.ndarray  # (S, S) bool: texels whose centre lies on the mesh
    weight: np.ndarray  # (S, S) float32: summed view weights
    face_id: np.ndarray | None = None  # (S, S) int32: the face each texel was baked from (-1 off-chart)
    bary: np.ndarray | None = None  # (S, S, 3) float32: where on that face
    overlapping_texels: int = 0  # texels more than one face covers

    @property
    def coverage_fraction(self) -> float:
        """Share of on-mesh texels that took colour from some view."""
        return float(self.coverage.sum() / max(int(self.chart.sum()), 1))


@dataclass
class InstanceCopies:
    """Faces of the flat mesh that repeat a rasterised face on another instance of the same primitive.

    `offsets[g, k]` is where copy k of face group g starts among the flat faces (-1: no such copy; copy 0 is
    the rasterised one); `group[f]` is the group of rasterised face f (-1 for a face not rasterised). Copy k
    of rasterised face f is `f - offsets[group[f], 0] + offsets[group[f], k]`.
    """

    offsets: np.ndarray  # (G, K) int64
    group: np.ndarray  # (F,) int64

    @property
    def max_copies(self) -> int:
        return int(self.offsets.shape[1]) if self.offsets.size else 1

    def copy(self, faces: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(which of the rasterised `faces` have a copy k, the flat faces of those copies)."""
        if k == 0:
            return np.ones(len(faces), bool), faces
        g = self.group[faces]
        offset = np.full(len(faces), -1, np.int64)
        ok = g >= 0
        offset[ok] = self.offsets[g[ok], k]
        has = offset >= 0
        return has, faces[has] - self.offsets[g[has], 0] + offset[has]


def texel_samples(uv_maps: UVMaps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat texel index, face, barycentrics) of every sample: each on-mesh texel, then the extra faces."""
    face_id = uv_maps.face_id.reshape(-1)
    flat = np.flatnonzero(face_id >= 0)
    return (
        np.concatenate([flat, uv_maps.extra_texel]),
        np.concatenate([face_id[flat], uv_maps.extra_face]),
        np.concatenate([uv_maps.bary.reshape(-1, 3)[flat], uv_maps.extra_bary]),
    )


def surface_points(
    tri: np.ndarray, normals: np.ndarray, fid: np.ndarray, bary: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """3D points and face normals of samples (face, barycentrics); `tri` (F, 3, 3) float32 corners."""
    points = bary[:, 0:1] * tri[fid, 0] + bary[:, 1:2] * tri[fid, 1] + bary[:, 2:3] * tri[fid, 2]
    return points, normals[fid]


def texel_surface(
    uv_maps: UVMaps, vertices: np.ndarray, faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat indices of texel samples, their 3D points and face normals (float32: a million texels)."""
    flat, fid, bary = texel_samples(uv_maps)
    tri = vertices.astype(np.float32)[faces]
    points, normals = surface_points(tri, face_normals(vertices, faces).astype(np.float32), fid, bary)
    return flat, points, normals


def depth_edges(maps: ViewMaps, edge_slope_px: float) -> np.ndarray:
    """(H, W) bool: pixels with a depth step to a 4-neighbour above `edge_slope_px` pixel footprints."""
    depth = maps.depth
    f = maps.camera.focal_px(maps.resolution)
    step = np.zeros_like(depth)
    dy = np.abs(np.diff(depth, axis=0))
    dx = np.abs(np.diff(depth, axis=1))
    step[:-1] = np.maximum(step[:-1], dy)
    step[1:] = np.maximum(step[1:], dy)
    step[:, :-1] = np.maximum(step[:, :-1], dx)
    step[:, 1:] = np.maximum(step[:, 1:], dx)
    return step > edge_slope_px * np.maximum(depth, 1e-6) / f


def unreliable_pixels(maps: ViewMaps, edge_slope_px: float) -> np.ndarray:
    """(H, W) bool: background, silhouette borders and depth discontinuities of one view."""
    import cv2

    bad = (~maps.mask | depth_edges(maps, edge_slope_px)).astype(np.uint8)
    # One more pixel: bilinear colour lookups read the 2x2 neighbourhood.
    return cv2.dilate(bad, np.ones((3, 3), np.uint8)).astype(bool)


def feather_weights(bad: np.ndarray, feather: float) -> np.ndarray | None:
    """(H, W) float32 in (0, 1] on reliable pixels: distance to the nearest unreliable pixel over
    `feather` x the view's side, clipped to 1; None when that ramp is under one pixel (no effect)."""
    import cv2

    ramp = feather * bad.shape[0]
    if ramp <= 1.0:
        return None
    dist = cv2.distanceTransform((~bad).astype(np.uint8), cv2.DIST_L2, 3)
    return np.minimum(dist / np.float32(ramp), 1.0).astype(np.float32)


def project(camera: Camera, resolution: int, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel coordinates (x right, y down) and depth along the viewing axis of world points."""
    c2w = camera.camera_to_world()
    rotation = c2w[:3, :3]
    offset = c2w[:3, 3] @ rotation
    # Three scalar multiply-adds per axis: numpy's (N, 3) @ (3, 3) is several times slower on 1M rows.
    px, py, pz = np.ascontiguousarray(points.T)
    right, up, back = (px * r[0] + py * r[1] + pz * r[2] - o for r, o in zip(rotation.T, offset, strict=True))
    depth = -back
    f = camera.focal_px(resolution)
    c = resolution / 2.0
    inv = f / np.where(depth > 1e-6, depth, 1.0)
    return c + right * inv, c - up * inv, depth


def visible_samples(
    points: np.ndarray, normals: np.ndarray, maps: ViewMaps, bad: np.ndarray, s: BakeSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sample indices, |cos theta|, pixel x, pixel y) of the surface samples one view colours: in frame,
    on a reliable pixel, the surface that camera sees, not at a grazing angle. The bake and the view
    planner share this test, so a planned view covers what the planner counted."""
    res = maps.resolution
    f = maps.camera.focal_px(res)
    min_cos = math.cos(math.radians(s.max_angle_deg))
    max_tan = math.tan(math.radians(s.max_angle_deg))
    # Cheap tests first on every texel (in frame, reliable pixel, depth within the loosest
    # tolerance), the angle only on the few that pass: most texels face away or are hidden.
    x, y, depth = project(maps.camera, res, points)
    col, row = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    idx = np.flatnonzero((depth > 1e-6) & (col >= 0) & (col < res) & (row >= 0) & (row < res))
    pix = row[idx] * res + col[idx]
    keep = ~bad.reshape(-1)[pix]
    idx, pix = idx[keep], pix[keep]
    gap = np.abs(maps.depth.reshape(-1)[pix] - depth[idx])
    footprint = depth[idx] / f
    keep = gap <= s.depth_tolerance + footprint * (1.0 + max_tan)
    idx, gap, footprint = idx[keep], gap[keep], footprint[keep]
    to_eye = maps.camera.position().astype(np.float32) - points[idx]
    cos = np.abs(np.einsum("nc,nc->n", normals[idx], to_eye)) / np.maximum(
        np.linalg.norm(to_eye, axis=1), 1e-12
    )
    # Half a pixel's footprint times the slope is how far a correct nearest-pixel depth can be off.
    tan = np.sqrt(np.maximum(1.0 - cos**2, 0.0)) / np.maximum(cos, 1e-6)
    keep = (cos >= min_cos) & (gap <= s.depth_tolerance + footprint * (1.0 + tan))
    idx, cos = idx[keep], cos[keep]
    return idx, cos, x[idx], y[idx]


def _view_weights(
    points: np.ndarray,
    normals: np.ndarray,
    images: list[np.ndarray],
    view_maps: list[ViewMaps],
    weights: list[float],
    unreliable: list[np.ndarray],
    ramps: list[np.ndarray | None],
    image_maps: list[ViewMaps] | None,
    s: BakeSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """(summed weighted colour (n, 3), summed weight (n,)) of surface samples over every view; `ramps`: per
    view, a per-pixel factor of its weight (None: 1); `image_maps`: see `bake_views`."""
    color_sum = np.zeros((len(points), 3), np.float64)
    weight_sum = np.zeros(len(points), np.float64)
    for v, (image, maps, view_weight, bad, ramp) in enumerate(
        zip(images, view_maps, weights, unreliable, ramps, strict=True)
    ):
        idx, cos, x, y = visible_samples(points, normals, maps, bad, s)
        if not len(idx):
            continue
        w = view_weight * cos.astype(np.float64) ** s.cos_power
        if ramp is not None:
            res = maps.resolution
            w *= ramp.reshape(-1)[np.floor(y).astype(np.int64) * res + np.floor(x).astype(np.int64)]
        if image_maps is None:
            colour = sample_bilinear(image[..., :3], x, y)
        else:
            small = image_maps[v]
            scale = small.resolution / maps.resolution
            depth = project(maps.camera, maps.resolution, points[idx])[2]
            colour, confidence = sample_joint_bilinear(
                image, small, x * scale, y * scale, depth, s.depth_tolerance
            )
            w *= confidence
        color_sum[idx] += w[:, None] * colour
        weight_sum[idx] += w
    return color_sum, weight_sum


def bake_views(
    uv_maps: UVMaps,
    vertices: np.ndarray,
    faces: np.ndarray,
    images: list[np.ndarray],
    view_maps: list[ViewMaps],
    view_weights: list[float] | None = None,
    settings: BakeSettings | None = None,
    copies: InstanceCopies | None = None,
    image_maps: list[ViewMaps] | None = None,
) -> BakeResult:
    """Blend view images (HxWx3, uint8 in [0, 255], one per `view_maps`) into the atlas `uv_maps` describes.

    `vertices` are the normalised vertices the views were rendered from; `view_maps` carry the cameras and
    the depth maps used for visibility. `copies`: the instances of the rasterised faces (see
    `InstanceCopies`); each texel sample is baked from every copy, one copy at a time, and keeps the best.
    `image_maps`: per view, the geometry maps at the images' own resolution (the model's), when the
    visibility maps `view_maps` are at another (the bake resolution): each texel is then sampled in the
    image at its projected position, from the neighbours that show its surface
    (`view_sampling.sample_joint_bilinear`), their share of the bilinear weight a factor of the view's
    weight there. None: the images are at the `view_maps` resolution, sampled bilinearly.
    """
    s = settings or BakeSettings()
    if len(images) != len(view_maps):
        raise ValueError(f"{len(images)} images for {len(view_maps)} views")
    weights = view_weights or [1.0] * len(images)
    for image, maps in zip(images, image_maps or view_maps, strict=True):
        if image.shape[:2] != (maps.resolution, maps.resolution):
            raise ValueError(f"view image is {image.shape[:2]}, its depth map {maps.resolution}^2")
    unreliable = [unreliable_pixels(maps, s.edge_slope_px) for maps in view_maps]
    ramps = [feather_weights(bad, s.feather) for bad in unreliable]
    size = uv_maps.face_id.shape[0]
    flat, fid, bary = texel_samples(uv_maps)
    tri = vertices.astype(np.float32)[faces]
    normals_all = face_normals(vertices, faces).astype(np.float32)
    color_sum = np.zeros((len(flat), 3), np.float64)
    weight_sum = np.full(len(flat), -1.0)
    chosen = fid.copy()
    for k in range(copies.max_copies if copies is not None else 1):
        has, faces_k = (np.ones(len(fid), bool), fid) if copies is None else copies.copy(fid, k)
        sel = np.flatnonzero(has)
        if not len(sel):
            continue
        points, normals = surface_points(tri, normals_all, faces_k, bary[sel])
        c, w = _view_weights(points, normals, images, view_maps, weights, unreliable, ramps, image_maps, s)
        better = w > weight_sum[sel]  # strictly: ties keep the earlier copy
        upd = sel[better]
        color_sum[upd], weight_sum[upd], chosen[upd] = c[better], w[better], faces_k[better]
    weight_sum = np.maximum(weight_sum, 0.0)
    fid = chosen
    if len(uv_maps.extra_texel):
        # One sample per texel: the best-seen face (most view weight); ties keep the listed order.
        order = np.lexsort((np.arange(len(flat)), -weight_sum, flat))
        best = order[np.r_[True, flat[order][1:] != flat[order][:-1]]]
        flat, color_sum, weight_sum, fid, bary = (
            flat[best],
            color_sum[best],
            weight_sum[best],
            fid[best],
            bary[best],
        )
    covered = weight_sum > 0
    atlas = np.zeros((size * size, 3), np.float32)
    atlas[flat[covered]] = (color_sum[covered] / weight_sum[covered, None]).astype(np.float32)
    coverage = np.zeros(size * size, bool)
    coverage[flat[covered]] = True
    weight = np.zeros(size * size, np.float32)
    weight[flat] = weight_sum
    face_id = np.full(size * size, -1, np.int32)
    face_id[flat] = fid
    texel_bary = np.zeros((size * size, 3), np.float32)
    texel_bary[flat] = bary
    return BakeResult(
        atlas=atlas.reshape(size, size, 3),
        coverage=coverage.reshape(size, size),
        chart=uv_maps.mask,
        weight=weight.reshape(size, size),
        face_id=face_id.reshape(size, size),
        bary=texel_bary.reshape(size, size, 3),
        overlapping_texels=uv_maps.overlapping_texels,
    )
