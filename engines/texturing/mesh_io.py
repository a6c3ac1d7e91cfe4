"""Mesh input: GLB / OBJ (+MTL) / PLY into one `LoadedMesh`, with the limits checked and clear errors.

- Multi-mesh scenes are merged into one mesh in world space (the scene graph's transforms applied), so the
  exported GLB lands where the input was.
- Existing UVs and topology are kept as they are (users rig these meshes): no vertex merging, no
  reordering. When several parts each carry UVs, each part's UV square is packed into its own cell of one
  atlas (an affine map per part) because they would otherwise overlap.
- Rendering and baking work on `normalized_vertices`: centred and scaled into a sphere of radius
  `FIT_RADIUS`, inside the unit sphere. The original coordinates stay in `vertices` for export.

trimesh is imported inside the functions so that `validate_mesh_bytes` (which the HTTP gateway calls
before queuing a job) works on a gateway-only install.
"""

from __future__ import annotations

import io
import math
import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from engines.errors import MeshError

FORMATS = ("glb", "obj", "ply")
# Radius of the sphere the object is normalised into. The default cameras sit at distance 2.2 with a
# 40 deg vertical fov: a sphere of radius r stays in frame while asin(r / 2.2) <= 20 deg, so r <= 0.75.
FIT_RADIUS = 0.7
# A mesh whose total area is below this fraction of its extent squared is degenerate (zero area).
_MIN_TOTAL_AREA = 1e-12


@dataclass(frozen=True)
class MeshLimits:
    """What the service accepts; the service fills these from its settings (`REALIZ3D_*`)."""

    max_faces: int = 500_000
    max_bytes: int = 64 * 1024 * 1024
    unwrap_timeout_s: float = 180.0


@dataclass
class LoadedMesh:
    """One triangle mesh, ready for texturing.

    `vertices` are in the input's world coordinates; `normalized_vertices` (what every camera sees) are
    `(vertices - center) * scale`. `uv` is per vertex (trimesh convention: v points up), `None` until
    unwrapped. `texture` is the input's base-colour image if it had exactly one.
    """

    vertices: np.ndarray  # (N, 3) float64
    faces: np.ndarray  # (F, 3) int64
    uv: np.ndarray | None  # (N, 2) float64
    center: np.ndarray  # (3,)
    scale: float
    texture: np.ndarray | None = None  # (H, W, 3) uint8
    source: str = ""
    uv_source: str = "input"  # input | packed | xatlas
    notes: list[str] = field(default_factory=list)

    @property
    def normalized_vertices(self) -> np.ndarray:
        return (self.vertices - self.center) * self.scale

    @property
    def num_faces(self) -> int:
        return int(len(self.faces))

    def with_uv(
        self, vertex_map: np.ndarray, faces: np.ndarray, uv: np.ndarray, uv_source: str
    ) -> LoadedMesh:
        """A copy whose vertices are `vertices[vertex_map]` (UV seams split vertices) with new UVs."""
        return replace(
            self,
            vertices=self.vertices[vertex_map],
            faces=faces.astype(np.int64),
            uv=uv.astype(np.float64),
            uv_source=uv_source,
            texture=None,  # the old texture belongs to the old UVs
        )

    def describe(self) -> dict:
        return {
            "source": self.source,
            "vertices": int(len(self.vertices)),
            "faces": self.num_faces,
            "uv_source": self.uv_source if self.uv is not None else None,
            "normalization": {"center": self.center.tolist(), "scale": float(self.scale)},
            "notes": list(self.notes),
        }


def detect_format(filename: str | None, data: bytes | None = None) -> str:
    """The mesh format from the file name's extension, or from the first bytes when there is none."""
    ext = Path(filename or "").suffix.lower().lstrip(".")
    if ext in FORMATS:
        return ext
    if ext:
        raise MeshError(f"{filename}: unsupported mesh format '.{ext}' (use .glb, .obj or .ply)")
    if data is not None:
        if data[:4] == b"glTF":
            return "glb"
        if data[:3] == b"ply":
            return "ply"
        if re.search(rb"^\s*v\s", data[:65536], re.MULTILINE):
            return "obj"
    raise MeshError("cannot tell the mesh format: name the file .glb, .obj or .ply")


def _glb_face_count(data: bytes) -> int | None:
    """Triangles declared by a GLB's JSON chunk (index accessors), without decoding any buffer."""
    import json

    if len(data) < 20 or data[:4] != b"glTF":
        raise MeshError("not a GLB file (missing 'glTF' header)")
    chunk_len, chunk_type = struct.unpack_from("<II", data, 12)
    if chunk_type != 0x4E4F534A or 20 + chunk_len > len(data):
        raise MeshError("GLB file is truncated or its JSON chunk is malformed")
    try:
        doc = json.loads(data[20 : 20 + chunk_len])
        accessors = doc.get("accessors", [])
        total = 0
        for mesh in doc.get("meshes", []):
            for prim in mesh.get("primitives", []):
                if prim.get("mode", 4) != 4:
                    continue
                if "indices" in prim:
                    total += int(accessors[prim["indices"]]["count"]) // 3
                elif "POSITION" in prim.get("attributes", {}):
                    total += int(accessors[prim["attributes"]["POSITION"]]["count"]) // 3
        return total
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise MeshError("GLB file has a malformed JSON chunk") from None


def _ply_face_count(data: bytes) -> int | None:
    header_end = data.find(b"end_header")
    if not data.startswith(b"ply") or header_end < 0:
        raise MeshError("not a PLY file (missing 'ply' header or 'end_header')")
    m = re.search(rb"element\s+face\s+(\d+)", data[:header_end])
    return int(m.group(1)) if m else 0


def _obj_face_count(data: bytes) -> int:
    # A polygon line with k corners becomes k - 2 triangles; counting lines is a cheap lower bound.
    return len(re.findall(rb"^\s*f\s", data, re.MULTILINE))


def validate_mesh_bytes(data: bytes, filename: str | None, limits: MeshLimits | None = None) -> str:
    """Cheap checks before a mesh upload is queued: size, format, declared face count.

    Reads headers only (no mesh decoding, no trimesh, no torch). Returns the format ('glb', 'obj',
    'ply'); raises `MeshError` naming the problem. The worker's full load repeats every check.
    """
    limits = limits or MeshLimits()
    if not data:
        raise MeshError("mesh file is empty")
    if len(data) > limits.max_bytes:
        raise MeshError(f"mesh file is {len(data)} bytes, over the limit of {limits.max_bytes} bytes")
    fmt = detect_format(filename, data)
    if fmt == "glb":
        faces = _glb_face_count(data)
    elif fmt == "ply":
        faces = _ply_face_count(data)
    else:
        faces = _obj_face_count(data)
    if faces is not None and faces > limits.max_faces:
        raise MeshError(f"mesh has {faces} faces, over the limit of {limits.max_faces}")
    if faces == 0:
        raise MeshError("mesh has no faces")
    return fmt


def load_mesh(path: str | Path, limits: MeshLimits | None = None) -> LoadedMesh:
    """Load a mesh file (.glb, .obj with its .mtl beside it, .ply) and check it."""
    path = Path(path)
    limits = limits or MeshLimits()
    if not path.is_file():
        raise MeshError(f"{path}: no such mesh file")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise MeshError(f"{path.name}: {size} bytes, over the limit of {limits.max_bytes} bytes")
    fmt = detect_format(path.name)
    # From the path (not bytes) so an OBJ finds its MTL and texture files.
    return _load(str(path), fmt, path.name, limits)


def load_mesh_bytes(data: bytes, filename: str | None, limits: MeshLimits | None = None) -> LoadedMesh:
    """Load an uploaded mesh from memory; `filename` gives the format (or the bytes do)."""
    limits = limits or MeshLimits()
    fmt = validate_mesh_bytes(data, filename, limits)
    return _load(io.BytesIO(data), fmt, filename or f"upload.{fmt}", limits)


def _load(source, fmt: str, name: str, limits: MeshLimits) -> LoadedMesh:
    import trimesh

    try:
        scene = trimesh.load(source, file_type=fmt, force="scene", process=False)
    except Exception as e:  # noqa: BLE001 - any parser failure is the file's fault
        raise MeshError(f"{name}: cannot parse as {fmt.upper()} ({type(e).__name__}: {e})") from None
    parts = []
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry.get(geom_name)
        if isinstance(geom, trimesh.Trimesh) and len(geom.faces):
            parts.append((np.asarray(transform, dtype=np.float64), geom))
    if not parts:
        raise MeshError(f"{name}: contains no triangle mesh (empty, or only points/lines)")
    faces_total = sum(len(g.faces) for _, g in parts)
    if faces_total > limits.max_faces:
        raise MeshError(f"{name}: {faces_total} faces, over the limit of {limits.max_faces}")
    mesh = _merge(parts, name)
    _check_geometry(mesh, name)
    return mesh


def _part_uv(geom) -> np.ndarray | None:
    uv = getattr(geom.visual, "uv", None)
    if uv is None or len(uv) != len(geom.vertices):
        return None
    uv = np.asarray(uv, dtype=np.float64)
    return uv if np.isfinite(uv).all() else None


def _part_texture(geom) -> np.ndarray | None:
    material = getattr(geom.visual, "material", None)
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    if image is None:
        return None
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _merge(parts: list, name: str) -> LoadedMesh:
    vertices, faces, uvs, notes = [], [], [], []
    offset = 0
    for transform, geom in parts:
        v = np.asarray(geom.vertices, dtype=np.float64)
        vertices.append(v @ transform[:3, :3].T + transform[:3, 3])
        faces.append(np.asarray(geom.faces, dtype=np.int64) + offset)
        uvs.append(_part_uv(geom))
        offset += len(v)
    all_v = np.concatenate(vertices)
    all_f = np.concatenate(faces)
    uv, uv_source, texture = None, "input", None
    if all(u is not None for u in uvs):
        if len(uvs) == 1:
            uv = uvs[0]
            texture = _part_texture(parts[0][1])
        else:
            uv, uv_source = _pack_part_uvs(uvs), "packed"
            notes.append(f"{len(uvs)} parts with their own UVs were packed into one atlas")
        if uv.min() < -1e-3 or uv.max() > 1 + 1e-3:
            # Tiled / UDIM layouts overlap once wrapped into one atlas; a fresh unwrap is the safe choice.
            notes.append("input UVs leave [0, 1] (tiled or UDIM); they will be re-unwrapped")
            uv, texture = None, None
    elif any(u is not None for u in uvs):
        notes.append("some parts have no UVs; the whole mesh will be unwrapped")
    center = (all_v.min(axis=0) + all_v.max(axis=0)) / 2 if len(all_v) else np.zeros(3)
    radius = float(np.linalg.norm(all_v - center, axis=1).max()) if len(all_v) else 0.0
    scale = FIT_RADIUS / radius if radius > 0 and math.isfinite(radius) else 1.0
    return LoadedMesh(all_v, all_f, uv, center, scale, texture, name, uv_source, notes)


def _pack_part_uvs(uvs: list[np.ndarray]) -> np.ndarray:
    """Each part's UV square into its own cell of a near-square grid, with a small gutter."""
    n = len(uvs)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cell = 1.0 / max(cols, rows)
    gutter = 0.02 * cell
    packed = []
    for i, uv in enumerate(uvs):
        r, c = divmod(i, cols)
        u = np.clip(uv, 0.0, 1.0) * (cell - 2 * gutter)
        packed.append(u + np.array([c * cell + gutter, 1.0 - (r + 1) * cell + gutter]))
    return np.concatenate(packed)


def _check_geometry(mesh: LoadedMesh, name: str) -> None:
    v, f = mesh.vertices, mesh.faces
    if len(v) == 0 or len(f) == 0:
        raise MeshError(f"{name}: mesh is empty")
    if not np.isfinite(v).all():
        raise MeshError(f"{name}: vertex positions contain NaN or infinity")
    if f.min() < 0 or f.max() >= len(v):
        raise MeshError(f"{name}: faces index vertices that do not exist")
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    extent = float(np.ptp(v, axis=0).max())
    if extent <= 0 or area.sum() <= _MIN_TOTAL_AREA * max(extent, 1e-30) ** 2:
        raise MeshError(f"{name}: mesh is degenerate (its faces have zero total area)")
