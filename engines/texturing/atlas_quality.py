"""How good a UV atlas is: chart count, utilisation, texel-density spread and seam length.

Computed from an unwrap's output alone (`vertex_map`, `faces`, `uv` as `unwrap_uv` returns them, plus the
input vertices), so any unwrapper can be compared with any other:

- **charts**: connected pieces of the atlas (faces that share an output vertex are in one chart);
- **utilisation**: the fraction of an `atlas_size`^2 atlas' texel centres that some chart covers;
- **density spread**: texel density is a face's UV area over its surface area, relative to the whole
  atlas' (1 = every face gets its fair share of texels). The spread is its 95th over its 5th percentile,
  weighted by surface area: 1 is a uniform density, 2 means some surface gets twice the texels of other;
- **seam length**: the surface length of the edges cut open by the unwrap (input boundaries excluded),
  in units of sqrt(surface area) so that it does not depend on the mesh's size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from engines.texturing.piecewise_unwrap import triangle_areas
from engines.texturing.rasterize import rasterize_uv


@dataclass(frozen=True)
class AtlasQuality:
    charts: int
    utilisation: float
    density_spread: float
    density_p5: float
    density_p95: float
    seam_length: float

    def as_dict(self) -> dict:
        return asdict(self)


def _weighted_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, q * cum[-1])])


def count_charts(faces: np.ndarray, num_vertices: int) -> int:
    """Connected components of the face graph through shared (output) vertices."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    f = len(faces)
    rows = np.repeat(np.arange(f), 3)
    incidence = coo_matrix((np.ones(3 * f, np.int8), (rows, faces.ravel())), shape=(f, num_vertices)).tocsr()
    # Face-face adjacency through vertices: F x V times V x F; only the pattern matters.
    adjacency = incidence @ incidence.T
    return int(connected_components(adjacency, directed=False)[0])


def _boundary_edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges (sorted vertex pairs) used by exactly one face, and which face uses each."""
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    unique, inverse, counts = np.unique(edges, axis=0, return_inverse=True, return_counts=True)
    once = counts[inverse.ravel()] == 1
    return edges[once], np.repeat(np.arange(len(faces)), 3)[once]


def seam_length(
    vertices: np.ndarray, faces_in: np.ndarray, vertex_map: np.ndarray, faces_out: np.ndarray
) -> float:
    """Surface length of the edges the unwrap cut (each counted once), over sqrt(surface area)."""
    boundary_out, _ = _boundary_edges(faces_out)
    pairs = np.sort(vertex_map[boundary_out], axis=1)  # back to input vertex ids
    boundary_in, _ = _boundary_edges(faces_in)
    if len(boundary_in):
        # Drop the edges that were already open in the input.
        keyed = pairs[:, 0].astype(np.int64) * (len(vertices) + 1) + pairs[:, 1]
        open_in = boundary_in[:, 0].astype(np.int64) * (len(vertices) + 1) + boundary_in[:, 1]
        pairs = pairs[~np.isin(keyed, open_in)]
    length = float(np.linalg.norm(vertices[pairs[:, 0]] - vertices[pairs[:, 1]], axis=1).sum()) / 2
    return length / np.sqrt(max(triangle_areas(vertices, faces_in).sum(), 1e-30))


def atlas_quality(
    vertices: np.ndarray,
    faces: np.ndarray,
    vertex_map: np.ndarray,
    faces_out: np.ndarray,
    uv: np.ndarray,
    atlas_size: int = 1024,
) -> AtlasQuality:
    """All the measures of the module docstring for one unwrap of (`vertices`, `faces`)."""
    vertices = np.asarray(vertices, np.float64)
    area3 = triangle_areas(vertices[vertex_map], faces_out)
    area2 = triangle_areas(uv, faces_out)
    keep = area3 > area3.sum() * 1e-12
    density = (area2[keep] / area3[keep]) / (area2.sum() / area3.sum())
    p5 = _weighted_percentile(density, area3[keep], 0.05)
    p95 = _weighted_percentile(density, area3[keep], 0.95)
    covered = rasterize_uv(uv, faces_out, atlas_size).face_id >= 0
    return AtlasQuality(
        charts=count_charts(faces_out, len(uv)),
        utilisation=float(covered.mean()),
        density_spread=p95 / max(p5, 1e-12),
        density_p5=p5,
        density_p95=p95,
        seam_length=seam_length(vertices, faces, vertex_map, faces_out),
    )
