"""Geometry maps per view (normal, position, depth, mask, face id, barycentrics) and UV-space rasterisation.

One small interface, `Rasterizer.render(camera, resolution) -> ViewMaps`, implemented by `RayCaster`:
Embree ray casting through `embreex` (one primary ray per pixel centre of the window the mesh's vertices
project into, first hit only; the pixels outside it are background).

Why Embree and not the alternatives (2 CPU cores, 100k faces, 512x512 view; see docs/benchmarks):
- embreex: ~0.1 s per view measured here (BVH build ~0.05 s, amortised over all views), pip wheels only,
  exact first hits (face id + barycentrics) with no aliasing surprises, the same code on every machine.
  Its `run` holds the GIL, so threads do not help; 2 cores are left to numpy.
- moderngl on EGL/llvmpipe: ~0.06 s per view, but needs Mesa from apt and a GL context in the worker.
- a vectorised numpy z-buffer: 3-4x slower than Embree in our measurements (per-triangle bounding-box
  loops do not vectorise well for mixed triangle sizes).
UV space is rasterised separately (`rasterize_uv`, vectorised edge functions over each face's texel
bounding box): it finds *every* face covering a texel centre, so overlapping or mirrored UV islands
(and instances sharing UVs) are known, and UVs outside [0, 1] wrap onto the atlas as a repeat sampler
reads them.

Conventions: images are row-major with row 0 at the top; pixel (row i, col j) has its centre at
(j + 0.5, i + 0.5). Depth is the distance along the camera's viewing axis (-Z of the camera frame), not
the ray length. Atlas texel (i, j) has UV ((j + 0.5) / S, 1 - (i + 0.5) / S): v points up, as in trimesh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from engines.sampling.cameras import Camera

# Corner normals that turn more than this from their face normal are replaced by the face normal, so
# hard edges (a box whose corners are shared) stay hard while curved surfaces stay smooth.
_CREASE_COS = 0.5


@dataclass
class ViewMaps:
    """What one camera sees. Background pixels: face_id -1, every other channel 0."""

    camera: Camera
    face_id: np.ndarray  # (H, W) int32
    bary: np.ndarray  # (H, W, 3) float32, weights of the face's three corners
    depth: np.ndarray  # (H, W) float32, distance along the viewing axis
    position: np.ndarray  # (H, W, 3) float32, world coordinates of the normalised mesh
    normal: np.ndarray  # (H, W, 3) float32, unit world-space shading normal

    @property
    def mask(self) -> np.ndarray:
        return self.face_id >= 0

    @property
    def resolution(self) -> int:
        return int(self.face_id.shape[0])


@dataclass
class UVMaps:
    """The mesh rasterised in UV space: which face and where on it each texel centre falls.

    `face_id`/`bary` hold one face per texel (the one the centre is deepest inside); texels that more
    than one face covers (overlapping or mirrored UVs, wrapped tiles) list the others in `extra_*`.
    """

    face_id: np.ndarray  # (S, S) int32, -1 outside every chart
    bary: np.ndarray  # (S, S, 3) float32
    extra_texel: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (K,) flat texel index
    extra_face: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # (K,)
    extra_bary: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))  # (K, 3)

    @property
    def mask(self) -> np.ndarray:
        return self.face_id >= 0

    @property
    def overlapping_texels(self) -> int:
        return int(len(np.unique(self.extra_texel)))


class Rasterizer(Protocol):
    """Renders geometry maps of one fixed mesh from any camera."""

    def render(self, camera: Camera, resolution: int, shading: bool = True) -> ViewMaps: ...


def corner_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F, 3, 3) per-corner shading normals: area-weighted vertex normals, hard beyond a crease."""
    tri = vertices[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 * area: area weights
    vert_n = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(vert_n, faces[:, k], face_n)
    face_n = _normalize(face_n)
    corners = _normalize(vert_n[faces])
    hard = np.einsum("fkc,fc->fk", corners, face_n) < _CREASE_COS
    corners[hard] = np.broadcast_to(face_n[:, None, :], corners.shape)[hard]
    return corners


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = vertices[faces]
    return _normalize(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]))


def _normalize(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-20)


def _embree_scene(vertices: np.ndarray, faces: np.ndarray):
    from embreex import rtcore_scene
    from embreex.mesh_construction import TriangleMesh

    scene = rtcore_scene.EmbreeScene()
    TriangleMesh(scene, np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.int32))
    return scene


class RayCaster:
    """`Rasterizer` on Embree: the BVH is built once per mesh and reused for every view."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        self.vertices = np.asarray(vertices, dtype=np.float64)
        self.faces = np.asarray(faces, dtype=np.int64)
        self._corner_normals = corner_normals(self.vertices, self.faces).astype(np.float32)
        self._scene = _embree_scene(self.vertices, self.faces)

    def _window(self, c2w: np.ndarray, f: float, res: int) -> tuple[int, int, int, int]:
        """(row0, row1, col0, col1): the pixels the mesh's vertices project into, a pixel of margin; the
        whole image when a vertex is at or behind the camera (the projection then bounds nothing)."""
        rel = (self.vertices - c2w[:3, 3]) @ c2w[:3, :3]  # camera frame: x right, y up, z back
        depth = -rel[:, 2]
        if len(rel) == 0 or depth.min() <= 1e-6:
            return 0, res, 0, res
        c = res / 2.0
        x = c + rel[:, 0] * f / depth
        y = c - rel[:, 1] * f / depth
        c0 = min(max(int(np.floor(x.min())) - 1, 0), res)
        c1 = min(max(int(np.ceil(x.max())) + 1, c0), res)
        r0 = min(max(int(np.floor(y.min())) - 1, 0), res)
        r1 = min(max(int(np.ceil(y.max())) + 1, r0), res)
        return r0, r1, c0, c1

    def render(self, camera: Camera, resolution: int, shading: bool = True) -> ViewMaps:
        """Geometry maps of one view. `shading=False`: visibility maps only (face id, barycentrics, depth;
        position and normal left zero), what the bake and the planner read, in about half the time."""
        res = int(resolution)
        c2w = camera.camera_to_world()
        f = camera.focal_px(res)
        c = res / 2.0
        r0, r1, c0, c1 = self._window(c2w, f, res)
        # Camera-frame directions (x, -y, -1) per pixel centre, so Embree's ray parameter t is the depth
        # itself; in world space x * right + (-y) * up - back, summed by broadcasting (no (N, 3) matmul).
        # Only the pixels of the window the mesh projects into: the others are background.
        right, up, back = (c2w[:3, k].astype(np.float32) for k in range(3))
        x = ((np.arange(c0, c1, dtype=np.float32) + 0.5 - c) / f)[None, :, None]
        y = ((np.arange(r0, r1, dtype=np.float32) + 0.5 - c) / f)[:, None, None]
        dirs = (x * right - y * up - back).reshape(-1, 3)
        face_id = np.full((res, res), -1, np.int32)
        bary = np.zeros((res * res, 3), np.float32)
        depth = np.zeros(res * res, np.float32)
        if len(dirs):
            origins = np.broadcast_to(c2w[:3, 3].astype(np.float32), dirs.shape).copy()
            hit = self._scene.run(origins, dirs, output=1)
            face_id[r0:r1, c0:c1] = hit["primID"].reshape(r1 - r0, c1 - c0)
            inside = hit["primID"] >= 0
            u, v = hit["u"][inside], hit["v"][inside]
        face_id = face_id.reshape(-1)
        mask = face_id >= 0
        fid = face_id[mask]
        if len(fid):
            bary[mask] = np.stack([1.0 - u - v, u, v], axis=-1)
            depth[mask] = hit["tfar"][inside]
        position = np.zeros((res * res, 3), np.float32)
        normal = np.zeros((res * res, 3), np.float32)
        if shading:
            position[mask] = np.einsum("nk,nkc->nc", bary[mask], self.vertices[self.faces[fid]])
            normal[mask] = _normalize(np.einsum("nk,nkc->nc", bary[mask], self._corner_normals[fid]))
        shape = (res, res)
        return ViewMaps(
            camera=camera,
            face_id=face_id.reshape(shape),
            bary=bary.reshape(*shape, 3),
            depth=depth.reshape(shape),
            position=position.reshape(*shape, 3),
            normal=normal.reshape(*shape, 3),
        )


def render_views(
    rasterizer: Rasterizer, cameras: list[Camera], resolution: int, shading: bool = True
) -> list[ViewMaps]:
    return [rasterizer.render(cam, resolution, shading) for cam in cameras]


def geometry_channels(maps: list[ViewMaps]) -> np.ndarray:
    """(V, 7, H, W) float32 conditioning for the model: [nx, ny, nz, px, py, pz, mask], background 0.

    Normals are unit world vectors in [-1, 1]; positions are world coordinates of the normalised mesh
    (inside the unit sphere); mask is 1 on the object.
    """
    out = np.zeros((len(maps), 7, maps[0].resolution, maps[0].resolution), np.float32)
    for i, m in enumerate(maps):
        out[i, 0:3] = m.normal.transpose(2, 0, 1)
        out[i, 3:6] = m.position.transpose(2, 0, 1)
        out[i, 6] = m.mask
    return out


# Candidate (texel, face) pairs evaluated per chunk: bounds memory to ~100 MB whatever the atlas size.
_RASTER_CHUNK = 1 << 20
# A texel counts as covered twice only if its centre is this far inside both faces (in barycentric
# units): centres on an edge two neighbouring faces share are not an overlap.
_OVERLAP_INSIDE = 1e-4
# Bounding-box sides are rounded up to these sizes so faces are processed in a few dense groups
# (broadcasting, no per-candidate gathers); the extra candidates fail the inside test.
_BOX_SIDES = np.unique(np.round(1.5 ** np.arange(40)).astype(np.int64))


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int) -> UVMaps:
    """Every face covering each texel centre of a `size` x `size` atlas, with barycentrics; UVs wrap."""
    size = int(size)
    corners = np.asarray(uv, np.float64)[faces]  # (F, 3, 2), v up
    x = corners[..., 0] * size  # texel-space x right, y down
    y = (1.0 - corners[..., 1]) * size
    area2 = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    ok = np.abs(area2) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, area2, 1.0), 0.0)
    # Barycentrics are affine in the texel position: l1 = a1 dx + b1 dy, l2 = a2 dx + b2 dy from corner 0.
    coef = np.stack(
        [
            (y[:, 2] - y[:, 0]) * inv,
            -(x[:, 2] - x[:, 0]) * inv,
            -(y[:, 1] - y[:, 0]) * inv,
            (x[:, 1] - x[:, 0]) * inv,
        ],
        axis=1,
    )
    j0 = np.ceil(x.min(axis=1) - 0.5).astype(np.int64)
    i0 = np.ceil(y.min(axis=1) - 0.5).astype(np.int64)
    w = np.floor(x.max(axis=1) - 0.5).astype(np.int64) - j0 + 1
    h = np.floor(y.max(axis=1) - 0.5).astype(np.int64) - i0 + 1
    live = np.flatnonzero(ok & (w > 0) & (h > 0))
    wb = _BOX_SIDES[np.searchsorted(_BOX_SIDES, w[live])]
    hb = _BOX_SIDES[np.searchsorted(_BOX_SIDES, h[live])]
    texels, fids, barys, depth = [], [], [], []
    keys, group_of = np.unique(wb * (1 << 32) + hb, return_inverse=True)
    order = np.argsort(group_of, kind="stable")
    bounds = np.searchsorted(group_of[order], np.arange(len(keys) + 1))
    for g, key in enumerate(keys):
        bw, bh = int(key >> 32), int(key & 0xFFFFFFFF)
        dj = np.tile(np.arange(bw), bh)
        di = np.repeat(np.arange(bh), bw)
        members = live[order[bounds[g] : bounds[g + 1]]]
        step = max(_RASTER_CHUNK // (bw * bh), 1)
        for s0 in range(0, len(members), step):
            f = members[s0 : s0 + step]
            dx = (j0[f, None] + dj + 0.5) - x[f, 0, None]
            dy = (i0[f, None] + di + 0.5) - y[f, 0, None]
            c = coef[f]
            l1 = c[:, 0, None] * dx + c[:, 1, None] * dy
            l2 = c[:, 2, None] * dx + c[:, 3, None] * dy
            l0 = 1.0 - l1 - l2
            inside_by = np.minimum(np.minimum(l0, l1), l2)
            rows, cols = np.nonzero(inside_by >= -1e-9)
            if not len(rows):
                continue
            jj = j0[f[rows]] + dj[cols]
            ii = i0[f[rows]] + di[cols]
            texels.append((ii % size) * size + jj % size)
            fids.append(f[rows])
            barys.append(
                np.stack([l0[rows, cols], l1[rows, cols], l2[rows, cols]], axis=1)
                .clip(0, 1)
                .astype(np.float32)
            )
            depth.append(inside_by[rows, cols])
    face_id = np.full(size * size, -1, np.int32)
    bary = np.zeros((size * size, 3), np.float32)
    if not texels:
        return UVMaps(face_id.reshape(size, size), bary.reshape(size, size, 3))
    texel, fid, bar, inside = map(np.concatenate, (texels, fids, barys, depth))
    hits = np.bincount(texel, minlength=size * size)
    single = hits[texel] == 1
    face_id[texel[single]] = fid[single]
    bary[texel[single]] = bar[single]
    multi = np.flatnonzero(~single)
    extra = np.zeros(0, np.int64)
    if len(multi):
        # Deepest-inside face first, then the lower face index: deterministic whatever the input order.
        order = multi[np.lexsort((fid[multi], -inside[multi], texel[multi]))]
        first = np.r_[True, texel[order][1:] != texel[order][:-1]]
        face_id[texel[order[first]]] = fid[order[first]]
        bary[texel[order[first]]] = bar[order[first]]
        rest = order[~first]
        extra = rest[inside[rest] > _OVERLAP_INSIDE]
    return UVMaps(
        face_id=face_id.reshape(size, size),
        bary=bary.reshape(size, size, 3),
        extra_texel=texel[extra].astype(np.int64),
        extra_face=fid[extra].astype(np.int32),
        extra_bary=bar[extra],
    )


def mirrored_faces(uv: np.ndarray, faces: np.ndarray, vertices: np.ndarray) -> int:
    """Faces whose UV winding is opposite to the mesh's usual one (mirrored islands)."""
    c = np.asarray(uv, np.float64)[faces]
    signed = (c[:, 1, 0] - c[:, 0, 0]) * (c[:, 2, 1] - c[:, 0, 1]) - (c[:, 2, 0] - c[:, 0, 0]) * (
        c[:, 1, 1] - c[:, 0, 1]
    )
    tri = np.asarray(vertices, np.float64)[faces]
    weight = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    majority = np.sign(np.sum(np.sign(signed) * weight)) or 1.0
    return int(np.sum(np.sign(signed) == -majority))


def sample_bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples (float32) of an (H, W, C) image at pixel coordinates (x right, y down, centres +0.5)."""
    h, w = image.shape[:2]
    flat = image.reshape(h * w, -1).astype(np.float32)
    xf = np.clip(x - 0.5, 0, w - 1).astype(np.float32)
    yf = np.clip(y - 0.5, 0, h - 1).astype(np.float32)
    x0 = np.minimum(xf.astype(np.int32), max(w - 2, 0))
    y0 = np.minimum(yf.astype(np.int32), max(h - 2, 0))
    ax, ay = (xf - x0)[:, None], (yf - y0)[:, None]
    dx, dy = min(1, w - 1), min(1, h - 1) * w
    i00 = y0 * w + x0
    top = flat[i00] * (1 - ax) + flat[i00 + dx] * ax
    bottom = flat[i00 + dy] * (1 - ax) + flat[i00 + dy + dx] * ax
    return top * (1 - ay) + bottom * ay


def render_albedo(maps: ViewMaps, faces: np.ndarray, uv: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """Unlit render: the texture sampled at each hit's UV (uint8 HxWx3, background black)."""
    out = np.zeros((maps.resolution, maps.resolution, 3), np.float32)
    mask = maps.mask
    fid = maps.face_id[mask]
    hit_uv = np.einsum("nk,nkc->nc", maps.bary[mask], uv[faces[fid]])
    th, tw = texture.shape[:2]
    out[mask] = sample_bilinear(texture[..., :3], hit_uv[:, 0] * tw, (1.0 - hit_uv[:, 1]) * th)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def map_to_u8(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A view map with values in [0, 1] (e.g. `(normal + 1) / 2`) as uint8, background 0."""
    out = np.clip(values * 255 + 0.5, 0, 255).astype(np.uint8)
    out[~mask] = 0
    return out


def render_shaded(maps: ViewMaps, albedo: np.ndarray | None = None) -> np.ndarray:
    """A simple preview: Lambert with a headlight plus ambient, over a grey background (uint8 HxWx3)."""
    c2w = maps.camera.camera_to_world()
    to_camera = c2w[:3, 2]  # the camera's +Z axis points back at the viewer
    lambert = np.abs(maps.normal @ to_camera.astype(np.float32))
    shade = 0.25 + 0.75 * lambert
    base = albedo.astype(np.float32) if albedo is not None else np.full((*shade.shape, 3), 200.0, np.float32)
    out = np.full((*shade.shape, 3), 40.0, np.float32)
    out[maps.mask] = (base * shade[..., None])[maps.mask]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
