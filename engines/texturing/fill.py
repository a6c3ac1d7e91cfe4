"""Fill what no view saw over the surface, then pad every UV chart so the background never bleeds in.

`fill_over_surface` (what the pipeline runs):
1. Vertex colours from the baked texels: each covered texel adds its colour to its face's three
   corners with its barycentric weights. Vertices are welded by position, so colour crosses UV seams:
   the mesh's own adjacency decides what is next to what, never the atlas layout.
2. Vertices no covered texel touches take the mean of their coloured neighbours, front by front
   (a breadth-first propagation over the mesh's edge graph), until every connected vertex has one.
   A part of the mesh that no view saw at all is neutral grey.
3. Unseen texels on the mesh take the barycentric blend of their face's vertex colours. Seen texels
   keep their baked colour.
4. Padding: every texel off the charts takes the colour of the nearest chart texel (an exact Euclidean
   distance transform, as SyncMVD's jump flood), far beyond the 4 texels bilinear filtering and mip-maps
   need. This is the only step that works in texture space, and it never writes on a chart.

`fill_atlas` is the texture-space-only variant (Voronoi fill + Telea inpainting of holes) for atlases
without a mesh at hand.
"""

from __future__ import annotations

import numpy as np

from engines.texturing.bake import BakeResult

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


def weld_vertices(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, int]:
    """(F, 3) corner ids where vertices at the same position share one id, and how many ids there are."""
    _, ids = np.unique(np.asarray(vertices), axis=0, return_inverse=True)
    ids = ids.reshape(-1)
    return ids[faces], int(ids.max()) + 1 if len(ids) else 0


def propagate_vertex_colours(
    corners: np.ndarray, num_vertices: int, colour: np.ndarray, known: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Unknown vertices take the mean of known neighbours, one front per pass; returns (colour, known)."""
    from scipy import sparse

    edges = np.concatenate([corners[:, [0, 1]], corners[:, [1, 2]], corners[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])
    adjacency = sparse.csr_matrix(
        (np.ones(len(edges), np.float32), (edges[:, 0], edges[:, 1])), shape=(num_vertices, num_vertices)
    )
    adjacency.data[:] = 1.0  # duplicate edges count once
    colour, known = colour.copy(), known.copy()
    while True:
        k = known.astype(np.float32)
        reach = adjacency @ k
        new = ~known & (reach > 0)
        if not new.any():
            return colour, known
        summed = adjacency @ (colour * k[:, None])
        colour[new] = summed[new] / reach[new, None]
        known |= new


def fill_over_surface(baked: BakeResult, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """uint8 (S, S, 3) atlas: unseen texels coloured from the mesh around them, every chart padded."""
    size = baked.atlas.shape[:2]
    if not baked.coverage.any():
        return np.full((*size, 3), NEUTRAL_GREY, np.uint8)
    if baked.face_id is None:
        raise ValueError("fill_over_surface needs the BakeResult's face_id and bary (from bake_views)")
    atlas = baked.atlas.reshape(-1, 3).astype(np.float64)
    face_id = baked.face_id.reshape(-1)
    bary = baked.bary.reshape(-1, 3).astype(np.float64)
    corners, num_vertices = weld_vertices(vertices, faces)
    seen = np.flatnonzero(baked.coverage.reshape(-1))
    seen_corners = corners[face_id[seen]]
    total = np.zeros((num_vertices, 3))
    weight = np.zeros(num_vertices)
    for k in range(3):
        w = bary[seen, k]
        weight += np.bincount(seen_corners[:, k], weights=w, minlength=num_vertices)
        for c in range(3):
            total[:, c] += np.bincount(seen_corners[:, k], weights=w * atlas[seen, c], minlength=num_vertices)
    known = weight > 1e-9
    colour = np.where(known[:, None], total / np.maximum(weight, 1e-12)[:, None], 0.0)
    colour, known = propagate_vertex_colours(corners, num_vertices, colour, known)
    colour[~known] = NEUTRAL_GREY
    out = atlas.copy()
    holes = np.flatnonzero(baked.chart.reshape(-1) & ~baked.coverage.reshape(-1))
    if len(holes):
        hole_corners = corners[face_id[holes]]
        out[holes] = np.einsum("nk,nkc->nc", bary[holes], colour[hole_corners])
    chart = baked.chart | baked.coverage
    filled = np.clip(out.reshape(*size, 3) + 0.5, 0, 255).astype(np.uint8)
    return nearest_fill(filled, chart)


def fill_atlas(atlas: np.ndarray, coverage: np.ndarray, chart: np.ndarray) -> np.ndarray:
    """uint8 (S, S, 3) atlas filled in texture space only (no mesh): Voronoi, Telea in holes, padding."""
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
