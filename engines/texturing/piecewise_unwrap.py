"""The fast unwrap: xatlas charts pieces of the mesh in parallel processes, then packs them all at once.

xatlas' chart computation is what takes the time (packing 100k faces' charts takes well under a second)
and it grows faster than the face count, mostly because charts grow large and their parameterisation
solve grows with them. So:

1. The mesh is cut into pieces of at most `piece_faces` faces: small connected components are grouped,
   large ones are halved along their longest axis until they fit. A cut is a seam xatlas would have
   had to put somewhere anyway: each piece keeps thousands of faces, so the extra seam is short.
2. Each piece is charted by xatlas in a worker process (`workers` of them, forked), with the chart area
   capped at `chart_area_fraction` of the whole surface so that no chart's solve dominates.
3. Each piece's UVs are scaled back to surface units (xatlas normalises every atlas to [0, 1]), and one
   xatlas pack of all the pieces' charts (`add_uv_mesh`) lays them into one atlas sized for
   `atlas_size` texels with `padding` texels between charts.

Everything here runs inside the unwrap's child process (`engines.texturing.unwrap`), never in a worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np


@dataclass(frozen=True)
class PiecewiseOptions:
    """Tuned with `realiz3d bench unwrap` (docs/benchmarks/unwrap.md)."""

    piece_faces: int = 10_000
    chart_area_fraction: float = 0.05
    atlas_size: int = 1024
    padding: int = 0  # as xatlas.parametrize; its bilinear option still keeps a texel between charts
    workers: int = 0  # 0: the CPUs this process may use


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def split_pieces(vertices: np.ndarray, faces: np.ndarray, piece_faces: int) -> list[np.ndarray]:
    """Face index arrays, each at most `piece_faces` long, covering every face once.

    Connected components stay whole when they fit (small ones are grouped up to `piece_faces`); larger
    ones are split recursively at the median of their face centres along their longest extent.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(vertices)
    edges = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    face_label = label[faces[:, 0]]
    order = np.argsort(face_label, kind="stable")
    bounds = np.flatnonzero(np.diff(face_label[order])) + 1
    components = np.split(order, bounds)
    centres = vertices[faces].mean(axis=1)

    pieces: list[np.ndarray] = []
    group: list[np.ndarray] = []
    grouped = 0
    stack = sorted(components, key=len)
    for comp in stack:
        if len(comp) > piece_faces:
            pieces.extend(_bisect(comp, centres, piece_faces))
            continue
        if grouped + len(comp) > piece_faces:
            pieces.append(np.concatenate(group))
            group, grouped = [], 0
        group.append(comp)
        grouped += len(comp)
    if group:
        pieces.append(np.concatenate(group))
    return pieces


def _bisect(face_ids: np.ndarray, centres: np.ndarray, piece_faces: int) -> list[np.ndarray]:
    out, todo = [], [face_ids]
    while todo:
        ids = todo.pop()
        if len(ids) <= piece_faces:
            out.append(ids)
            continue
        c = centres[ids]
        axis = int(np.argmax(c.max(0) - c.min(0)))
        half = np.argsort(c[:, axis], kind="stable")
        mid = len(ids) // 2
        todo += [ids[half[:mid]], ids[half[mid:]]]
    return out


def triangle_areas(points: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area of each triangle: in 3D, or in the plane for 2D points (UVs)."""
    tri = np.asarray(points, np.float64)[faces]
    a, b = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    if tri.shape[-1] == 2:
        return 0.5 * np.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])
    return 0.5 * np.linalg.norm(np.cross(a, b), axis=1)


def chart_piece(
    vertices: np.ndarray, faces: np.ndarray, max_chart_area: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas charts of one piece: (vertex_map into `vertices`, faces, uv in surface units)."""
    import xatlas

    used, local = np.unique(faces, return_inverse=True)
    local = local.reshape(faces.shape).astype(np.uint32)
    points = np.ascontiguousarray(vertices[used], dtype=np.float32)
    atlas = xatlas.Atlas()
    atlas.add_mesh(points, local)
    charts = xatlas.ChartOptions()
    charts.max_chart_area = float(max_chart_area)
    pack = xatlas.PackOptions()  # a quick pack: only the charts' shapes and relative scale are kept
    pack.blockAlign = True
    atlas.generate(charts, pack)
    vmap, idx, uv = atlas[0]
    idx = idx.astype(np.int64)
    uv = uv.astype(np.float64)
    scale = np.sqrt(triangle_areas(points, local).sum() / max(triangle_areas(uv, idx).sum(), 1e-30))
    return used[vmap.astype(np.int64)], idx, uv * scale


def pack_charts(
    uv: np.ndarray, faces: np.ndarray, atlas_size: int, padding: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One xatlas pack of charts given in surface units: (vertex_map into `uv`, faces, uv in [0, 1])."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_uv_mesh(np.ascontiguousarray(uv, dtype=np.float32), np.ascontiguousarray(faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(atlas_size)
    pack.padding = int(padding)
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:
        raise RuntimeError(f"xatlas packed the charts into {atlas.atlas_count} atlases, want 1")
    vmap, idx, out = atlas[0]
    return vmap.astype(np.int64), idx.astype(np.int64), out.astype(np.float64)


def _chart_job(args: tuple[np.ndarray, np.ndarray, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return chart_piece(*args)


def piecewise_unwrap(
    vertices: np.ndarray,
    faces: np.ndarray,
    options: PiecewiseOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertex_map (M,), faces (F,3) in input face order, uv (M,2) in [0,1]); progress(done, pieces+1)."""
    opts = options or PiecewiseOptions()
    vertices = np.asarray(vertices, np.float64)
    faces = np.asarray(faces, np.int64)
    pieces = split_pieces(vertices, faces, opts.piece_faces)
    max_area = float(triangle_areas(vertices, faces).sum()) * opts.chart_area_fraction
    jobs = [(vertices, faces[ids], max_area) for ids in pieces]
    total = len(pieces) + 1
    results: list = [None] * len(pieces)
    workers = min(opts.workers or usable_cpus(), len(pieces))
    if workers <= 1:
        for i, job in enumerate(jobs):
            results[i] = _chart_job(job)
            if progress:
                progress(i + 1, total)
    else:
        # Forked before this process has started any xatlas thread; each worker charts whole pieces.
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            futures = {pool.submit(_chart_job, job): i for i, job in enumerate(jobs)}
            for done, fut in enumerate(as_completed(futures), 1):
                results[futures[fut]] = fut.result()
                if progress:
                    progress(done, total)
    vmaps, idxs, uvs, offset = [], [], [], 0
    for vmap, idx, uv in results:
        vmaps.append(vmap)
        idxs.append(idx + offset)
        uvs.append(uv)
        offset += len(uv)
    chart_vmap = np.concatenate(vmaps)
    pack_vmap, packed_faces, packed_uv = pack_charts(
        np.concatenate(uvs), np.concatenate(idxs), opts.atlas_size, opts.padding
    )
    out_faces = np.empty_like(faces)
    out_faces[np.concatenate(pieces)] = packed_faces  # back to the input's face order
    if progress:
        progress(total, total)
    return chart_vmap[pack_vmap], out_faces, packed_uv
