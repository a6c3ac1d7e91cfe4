"""Mesh input: GLB / glTF / OBJ (+MTL) / PLY / a zip of them, into one `LoadedMesh`, limits checked.

Every input becomes a glTF document (`gltf_document.GltfDocument`): a GLB or .gltf is that document,
kept whole for export; OBJ and PLY are converted by trimesh into a fresh one. `asset.read_asset` then
lists the drawn triangle primitives and places each instance in world space (float64, skinned meshes in
their bind pose), and `uv_layout.plan_layout` decides which UVs the atlas is baked on. The `LoadedMesh`
is the flat view rendering and baking need: every instance's triangles in world coordinates, concatenated.
Existing topology is never merged or reordered: users rig these meshes.

Rendering and baking work on `normalized_vertices`: centred and scaled into a sphere of radius
`FIT_RADIUS`, inside the unit sphere, computed in float64 (the offset of an asset far from the origin is
removed before anything goes to float32). The original coordinates stay in `vertices`.

trimesh is imported inside the functions so that `validate_mesh_bytes` (which the HTTP gateway calls
before queuing a job) works on a gateway-only install.
"""

from __future__ import annotations

import io
import math
import posixpath
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engines.errors import MeshError
from engines.texturing.asset_files import AssetFiles, ZipEntries, text_references

if TYPE_CHECKING:
    from engines.texturing.asset import Asset
    from engines.texturing.uv_layout import UVLayout

FORMATS = ("glb", "gltf", "obj", "ply", "zip")
_FORMAT_NAMES = ".glb, .gltf, .obj, .ply or a .zip of one with its files"
# Radius of the sphere the object is normalised into. The default cameras sit at distance 2.2 with a
# 40 deg vertical fov: a sphere of radius r stays in frame while asin(r / 2.2) <= 20 deg, so r <= 0.75.
FIT_RADIUS = 0.7
# OBJ / PLY text parsed by trimesh: bytes of memory per byte of text (its arrays and Python lists).
_TEXT_BYTES_FACTOR = 24
# A mesh whose total area is below this fraction of its extent squared is degenerate (zero area).
_MIN_TOTAL_AREA = 1e-12


@dataclass(frozen=True)
class MeshLimits:
    """What the service accepts; the service fills these from its settings (`REALIZ3D_*`).

    `files_beside`: a mesh file on disk may read the files in its folder and below (the CLI on the
    user's own files). The service's worker never sets it: an upload reads only its own bytes.
    """

    max_faces: int = 500_000
    max_bytes: int = 64 * 1024 * 1024
    unwrap_timeout_s: float = 180.0
    max_vertices: int = 1_500_000
    max_image_pixels: int = 8192 * 8192
    max_memory_bytes: int = 2048 * 1024 * 1024
    files_beside: bool = False


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
    source_format: str = ""  # gltf (a .gltf or .glb), obj or ply: what the upload held (a zip's main file)
    uv_source: str = "input"  # input | packed | xatlas
    notes: list[str] = field(default_factory=list)
    asset: Asset | None = field(default=None, repr=False)  # the document and its primitives (export)
    layout: UVLayout | None = field(default=None, repr=False)

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
            asset=None,  # a flat re-unwrap no longer matches the document's primitives
            layout=None,
        )

    def with_layout(self, layout: UVLayout) -> LoadedMesh:
        """The flat mesh of `self.asset` under `layout`: faces, and UVs once the layout is complete."""
        asset = self.asset
        vertices, faces, uvs = [], [], []
        offset = 0
        for inst in asset.instances:
            prim = asset.primitives[inst.primitive]
            vertices.append(inst.positions)
            faces.append(prim.triangles + offset)
            offset += len(inst.positions)
            if layout.complete:
                uv = layout.bake_uv[inst.primitive]
                uvs.append(np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1))  # glTF's v points down
        texture = None
        if layout.mode == "original":
            texture = _base_color_image(asset, asset.primitives[asset.instances[0].primitive].material)
        source = {"original": "input", "atlas": "packed"}[layout.mode]
        if layout.vertex_maps:
            source = "xatlas" if len(layout.vertex_maps) == len(layout.bake_uv) else "packed+xatlas"
        return replace(
            self,
            vertices=np.concatenate(vertices),
            faces=np.concatenate(faces).astype(np.int64),
            uv=np.concatenate(uvs) if layout.complete else None,
            texture=texture,
            uv_source=source,
            layout=layout,
            notes=[*asset.notes, *layout.notes, *_vertex_colour_notes(asset)],
        )

    @property
    def vertex_colours_dropped(self) -> list[str]:
        """Textured primitives whose COLOR_0 the output drops (`mesh m primitive i`)."""
        return vertex_colour_primitives(self.asset) if self.asset is not None else []

    def describe(self) -> dict:
        return {
            "source": self.source,
            "format": self.source_format or None,
            "vertices": int(len(self.vertices)),
            "faces": self.num_faces,
            "uv_source": self.uv_source if self.uv is not None else None,
            "normalization": {"center": self.center.tolist(), "scale": float(self.scale)},
            "notes": list(self.notes),
            **(
                {
                    "primitives": len({i.primitive for i in self.asset.instances}),
                    "instances": len(self.asset.instances),
                    "uv_layout": self.layout.describe(),
                    "vertex_colors_dropped": self.vertex_colours_dropped,
                }
                if self.asset is not None and self.layout is not None
                else {}
            ),
        }


def vertex_colour_primitives(asset: Asset) -> list[str]:
    """Drawn (so textured) primitives that have COLOR_0, which glTF multiplies into the base colour."""
    meshes = asset.document.json.get("meshes", [])
    found = []
    for p in sorted({i.primitive for i in asset.instances}):
        prim = asset.primitives[p]
        if "COLOR_0" in meshes[prim.mesh]["primitives"][prim.index].get("attributes", {}):
            found.append(f"mesh {prim.mesh} primitive {prim.index}")
    return found


def _vertex_colour_notes(asset: Asset) -> list[str]:
    found = vertex_colour_primitives(asset)
    if not found:
        return []
    return [
        f"{len(found)} textured primitive(s) had vertex colours (COLOR_0): dropped from the output, since glTF "
        "multiplies them into the base colour and the generated views never showed them"
    ]


def _base_color_image(asset: Asset, material: int | None) -> np.ndarray | None:
    """The decoded base-colour image of a material, if it has one."""
    from PIL import Image

    doc = asset.document.json
    if material is None:
        return None
    info = doc["materials"][material].get("pbrMetallicRoughness", {}).get("baseColorTexture")
    try:
        source = doc["textures"][info["index"]]["source"]
        view = doc["bufferViews"][doc["images"][source]["bufferView"]]
        start = int(view.get("byteOffset", 0))
        raw = bytes(asset.document.binary[start : start + int(view["byteLength"])])
        return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=np.uint8)
    except (KeyError, IndexError, TypeError, OSError):
        return None


def detect_format(filename: str | None, data: bytes | None = None) -> str:
    """The mesh format from the file name's extension, or from the first bytes when there is none."""
    ext = Path(filename or "").suffix.lower().lstrip(".")
    if ext in FORMATS:
        return ext
    if ext:
        raise MeshError(f"{filename}: unsupported mesh format '.{ext}' (use {_FORMAT_NAMES})")
    if data is not None:
        if data[:4] == b"glTF":
            return "glb"
        if data[:3] == b"ply":
            return "ply"
        if data[:4] == b"PK\x03\x04":
            return "zip"
        if data.lstrip()[:1] == b"{" and b'"asset"' in data[: 1 << 20]:
            return "gltf"
        if re.search(rb"^\s*v\s", data[:65536], re.MULTILINE):
            return "obj"
    raise MeshError(f"cannot tell the mesh format: name the file {_FORMAT_NAMES}")


def _glb_face_count(data: bytes, limits: MeshLimits, name: str = "GLB file") -> int | None:
    """Triangles declared by a GLB's JSON chunk (index accessors), every count bounded, no buffer decoded."""
    from engines.texturing.gltf_document import _split_glb

    if len(data) < 20 or data[:4] != b"glTF":
        raise MeshError("not a GLB file (missing 'glTF' header)")
    chunk_len, chunk_type = struct.unpack_from("<II", data, 12)
    if chunk_type != 0x4E4F534A or 20 + chunk_len > len(data):
        raise MeshError("GLB file is truncated or its JSON chunk is malformed")
    doc, binary = _split_glb(data, name)
    return _gltf_face_count(doc, name, limits, files=None, embedded=binary)


def _gltf_face_count(
    doc: dict, what: str, limits: MeshLimits, files: AssetFiles | None, embedded: bytes | None = None
) -> int:
    """Triangles a glTF JSON declares (drawn or not), refusing geometry we cannot decode by name, a file
    reference outside the upload, and counts over the limits. `files`: the upload's files (a zip's
    entries); None for a lone file, which can refer to no file at all."""
    from engines.texturing.asset import check_decodable
    from engines.texturing.input_bounds import check_document

    try:
        accessors = doc.get("accessors", [])
        total = 0
        for mesh in doc.get("meshes", []):
            for prim in mesh.get("primitives", []):
                mode = prim.get("mode", 4)
                if mode not in (4, 5, 6):
                    continue
                key = prim["indices"] if "indices" in prim else prim.get("attributes", {}).get("POSITION")
                if key is None:
                    continue
                count = int(accessors[key]["count"])
                total += count // 3 if mode == 4 else max(count - 2, 0)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError):
        raise MeshError(f"{what} has a malformed JSON chunk") from None
    if total > limits.max_faces:
        raise MeshError(f"mesh has {total} faces, over the limit of {limits.max_faces}")
    check_decodable(doc, what)
    for item in [*doc.get("buffers", []), *doc.get("images", [])]:
        uri = item.get("uri", "data:") if isinstance(item, dict) else "data:"
        if not isinstance(uri, str):
            raise MeshError(f"{what}: a uri is not a string")
        if uri.startswith("data:"):
            continue
        if files is None:
            files = AssetFiles.upload(what)
            files.locate(uri)  # outside the upload: refused by name
            raise MeshError(
                f"the glTF refers to an external file '{uri[:200]}': upload the .gltf with its files as a "
                ".zip or as `files` parts beside it, or convert it to .glb"
            )
        files.get(uri)  # outside the upload, or not in it: refused by name
    check_document(doc, limits, what, embedded)
    return total


def _ply_face_count(data: bytes) -> int | None:
    header_end = data.find(b"end_header")
    if not data.startswith(b"ply") or header_end < 0:
        raise MeshError("not a PLY file (missing 'ply' header or 'end_header')")
    m = re.search(rb"element\s+face\s+(\d+)", data[:header_end])
    if m is None and re.search(rb"element\s+tristrips\s+\d+", data[:header_end]):
        return None  # strips: counted once decoded
    return int(m.group(1)) if m else 0


def _obj_face_count(data: bytes) -> int:
    # A polygon line with k corners becomes k - 2 triangles; counting lines is a cheap lower bound.
    return len(re.findall(rb"^\s*f\s", data, re.MULTILINE))


def _open_zip(data: bytes, name: str, limits: MeshLimits) -> tuple[str, str, bytes, AssetFiles]:
    """An uploaded zip's main file (its name, format and bytes) and the entries it may refer to."""
    entries = ZipEntries(data, name, limits.max_bytes)
    main = _zip_main(entries, name)
    files = AssetFiles.archive(name, entries, posixpath.dirname(main))
    return main, Path(main).suffix.lower().lstrip("."), entries.read(main) or b"", files


def _zip_main(entries: ZipEntries, name: str) -> str:
    mains = [n for n in entries.names() if Path(n).suffix.lower().lstrip(".") in FORMATS[:4]]
    if len(mains) != 1:
        found = ", ".join(mains[:10]) or "none"
        raise MeshError(f"{name}: a zip must hold exactly one .gltf, .glb, .obj or .ply (found: {found})")
    return mains[0]


def _zip_check(data: bytes, name: str, limits: MeshLimits) -> int | None:
    """The gateway's look into a zip: entry sizes, the main file and every reference it makes."""
    from engines.texturing.gltf_document import _split_glb, load_json

    main, fmt, raw, files = _open_zip(data, name, limits)
    if fmt in ("gltf", "glb"):
        doc, binary = (
            _split_glb(raw, main) if fmt == "glb" else (load_json(raw, main, limits.max_bytes), None)
        )
        return _gltf_face_count(doc, main, limits, files, binary)
    files.check_text(fmt, raw)
    for ref in text_references(fmt, raw):
        if fmt == "obj" and ref.lower().endswith(".mtl"):
            mtl = files._read(files.locate(ref))
            if mtl is not None:
                files.check_text("mtl", mtl)
    return _ply_face_count(raw) if fmt == "ply" else _obj_face_count(raw)


def validate_mesh_bytes(data: bytes, filename: str | None, limits: MeshLimits | None = None) -> str:
    """Cheap checks before a mesh upload is queued: size, format, declared counts, file references.

    Reads headers and JSON only (no mesh decoding, no trimesh, no torch). Returns the format (one of
    `FORMATS`); raises `MeshError` naming the problem. The worker's full load repeats every check. A lone
    `.gltf` that refers to external files is refused unless `limits.files_beside` (a file on disk, its
    folder at hand); a reference that leaves the upload (absolute, `..`, a scheme) is always refused by name.
    """
    from engines.texturing.gltf_document import load_json

    limits = limits or MeshLimits()
    if not data:
        raise MeshError("mesh file is empty")
    if len(data) > limits.max_bytes:
        raise MeshError(f"mesh file is {len(data)} bytes, over the limit of {limits.max_bytes} bytes")
    fmt = detect_format(filename, data)
    name = Path(filename or f"upload.{fmt}").name
    upload = AssetFiles.upload(name)
    if fmt == "glb":
        faces = _glb_face_count(data, limits, name)
    elif fmt == "gltf":
        doc = load_json(data, name, limits.max_bytes)
        # Beside a file on disk, references are checked here (inside its folder) and read by the full load.
        faces = _gltf_face_count(doc, name, limits, _FolderNotAtHand(upload) if limits.files_beside else None)
    elif fmt == "zip":
        faces = _zip_check(data, name, limits)
    elif fmt == "ply":
        upload.check_text("ply", data)
        faces = _ply_face_count(data)
    else:
        upload.check_text("obj", data)
        faces = _obj_face_count(data)
    if faces is not None and faces > limits.max_faces:
        raise MeshError(f"mesh has {faces} faces, over the limit of {limits.max_faces}")
    if faces == 0:
        raise MeshError("mesh has no faces")
    return fmt


class _FolderNotAtHand:
    """Stands in for a mesh's folder when only its bytes are checked: a reference inside it passes."""

    def __init__(self, files: AssetFiles) -> None:
        self.files = files

    def get(self, uri: str) -> bytes:
        self.files.locate(uri)
        return b""


def load_mesh(path: str | Path, limits: MeshLimits | None = None) -> LoadedMesh:
    """Load a mesh file (.glb, .gltf, .obj, .ply, .zip) and check it. With `limits.files_beside` a .gltf
    or .obj reads its files from its folder (never outside it); otherwise only the file itself."""
    path = Path(path)
    limits = limits or MeshLimits()
    if not path.is_file():
        raise MeshError(f"{path.name}: no such mesh file")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise MeshError(f"{path.name}: {size} bytes, over the limit of {limits.max_bytes} bytes")
    fmt = detect_format(path.name)
    files = AssetFiles.folder(path, limits.max_bytes) if limits.files_beside else AssetFiles.upload(path.name)
    return _load(path.read_bytes(), fmt, path.name, limits, files)


def load_mesh_bytes(data: bytes, filename: str | None, limits: MeshLimits | None = None) -> LoadedMesh:
    """Load an uploaded mesh from memory; `filename` gives the format (or the bytes do). It reads nothing
    but these bytes (and a zip's entries)."""
    limits = limits or MeshLimits()
    fmt = validate_mesh_bytes(data, filename, limits)
    name = filename or f"upload.{fmt}"
    return _load(data, fmt, name, limits, AssetFiles.upload(name))


# Errors of third-party decoders on a malformed upload: the file's fault, reported as invalid_mesh.
_DECODER_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    RecursionError,
    OverflowError,
    struct.error,
)


def _load(data: bytes, fmt: str, name: str, limits: MeshLimits, files: AssetFiles) -> LoadedMesh:
    """Any supported input as a glTF document, then its primitives and UV layout."""
    from PIL import Image

    from engines.texturing.gltf_document import GltfDocument

    try:
        if fmt == "zip":
            document = _zip_document(data, name, limits)
        elif fmt in ("glb", "gltf"):
            document = GltfDocument.from_bytes(data, name, files.get, limits)
        else:
            document = _trimesh_document(data, fmt, name, files, limits)
        return mesh_from_document(document, name, limits)
    except (*_DECODER_ERRORS, Image.DecompressionBombError) as e:
        raise MeshError(f"{name}: cannot read this file ({type(e).__name__}: {str(e)[:200]})") from None


def mesh_from_document(document, name: str = "mesh", limits: MeshLimits | None = None) -> LoadedMesh:
    """The `LoadedMesh` of a glTF document: its drawn primitives flattened, the UV layout planned."""
    from engines.texturing.asset import read_asset
    from engines.texturing.uv_layout import plan_layout

    limits = limits or MeshLimits()
    asset = read_asset(document, name)
    if asset.num_faces > limits.max_faces:
        raise MeshError(f"{name}: {asset.num_faces} faces, over the limit of {limits.max_faces}")
    layout = plan_layout(asset)
    vertices = np.concatenate([inst.positions for inst in asset.instances])
    if not len(vertices) or not np.isfinite(vertices).all():
        raise MeshError(
            f"{name}: vertex positions contain NaN or infinity" if len(vertices) else "mesh is empty"
        )
    if len(vertices) > limits.max_vertices:
        raise MeshError(
            f"{name}: {len(vertices)} vertices (every instance counted), over the limit of "
            f"{limits.max_vertices} (REALIZ3D_MAX_MESH_VERTICES)"
        )
    center = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    radius = float(np.linalg.norm(vertices - center, axis=1).max())
    if not math.isfinite(radius) or not math.isfinite(float(np.abs(center).max())):
        raise MeshError(f"{name}: vertex coordinates are too large to compute with (over 1e150)")
    scale = FIT_RADIUS / radius if radius > 0 else 1.0
    mesh = LoadedMesh(
        vertices,
        np.zeros((0, 3), np.int64),
        None,
        center,
        scale,
        source=name,
        source_format=getattr(document, "source_format", "gltf"),
        asset=asset,
    )
    mesh = mesh.with_layout(layout)
    _check_geometry(mesh, name)
    return mesh


def _zip_document(data: bytes, name: str, limits: MeshLimits):
    """A .zip holding one .gltf (with its buffers and images), .glb, .obj (with MTL and images) or .ply;
    every entry read with a cap on its real size, references resolved among the entries only."""
    from engines.texturing.gltf_document import GltfDocument

    main, fmt, raw, files = _open_zip(data, name, limits)
    if fmt in ("gltf", "glb"):
        return GltfDocument.from_bytes(raw, main, files.get, limits)
    return _trimesh_document(raw, fmt, main, files, limits)


def _trimesh_document(data: bytes, fmt: str, name: str, files: AssetFiles, limits: MeshLimits):
    """OBJ / PLY through trimesh into a fresh glTF document (one mesh per part, float64 offset kept).

    trimesh reads the bytes, and the MTL and textures they name through `files` (the asset's own files,
    nothing else); a reference outside the asset is refused by name before trimesh sees the file."""
    import trimesh

    from engines.texturing.input_bounds import check_memory

    files.check_text(fmt, data)
    check_memory(len(data) * _TEXT_BYTES_FACTOR, name, limits)
    try:
        scene = trimesh.load(
            io.BytesIO(data), file_type=fmt, force="scene", process=False, resolver=files.trimesh_resolver()
        )
    except MeshError:
        raise
    except Exception as e:  # noqa: BLE001 - any parser failure is the file's fault
        raise MeshError(
            f"{name}: cannot parse as {fmt.upper()} ({type(e).__name__}: {str(e)[:200]})"
        ) from None
    if files.refused:
        raise files.refused[0]
    # trimesh makes one part per OBJ material; a material used by one group (`g`, else `o`) only names
    # its part after that group, so both names reach the output.
    groups = _obj_groups_by_material(data) if fmt == "obj" else {}
    parts = []
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry.get(geom_name)
        if isinstance(geom, trimesh.Trimesh) and len(geom.faces):
            m = np.asarray(transform, dtype=np.float64)
            v = np.asarray(geom.vertices, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]
            normals = None
            if (
                "vertex_normals" in geom._cache
            ):  # the file had normals (trimesh computes them lazily otherwise)
                normals = np.asarray(geom.vertex_normals, np.float64) @ np.linalg.inv(m[:3, :3])
            faces = np.asarray(geom.faces, np.int64)
            material_name, colour = _part_material(geom)
            named = groups.get(material_name, [])
            parts.append(
                (
                    named[0] if len(named) == 1 else str(geom_name),
                    v,
                    faces,
                    _part_uv(geom),
                    _part_image(geom, name, limits),
                    normals,
                    material_name,
                    colour,
                )
            )
    if not parts and fmt == "ply":
        parts = _ply_strips(io.BytesIO(data), name)
    if not parts:
        raise MeshError(f"{name}: contains no triangle mesh (empty, or only points/lines)")
    from engines.texturing.gltf_document import build_document

    document = build_document(parts)
    document.source_format = fmt
    document.notes = _missing_notes(files)
    return document


def _missing_notes(files: AssetFiles) -> list[str]:
    """One line per file the asset names but did not carry; a texture names the material that uses it."""
    users: dict[str, list[str]] = {}
    for material, ref in files.material_textures:
        users.setdefault(ref, []).append(material)
    notes = []
    for missing in dict.fromkeys(files.missing):
        who = users.get(missing)
        if who:
            names = ", ".join(f"'{m}'" for m in dict.fromkeys(who))
            notes.append(f"material {names}: its texture '{missing}' is not in the upload; loaded without it")
        else:
            notes.append(f"'{missing}' is not in the upload; loaded without it")
    return notes


def _obj_groups_by_material(text: bytes) -> dict[str, list[str]]:
    """For each `usemtl` material of an OBJ text, the groups (`g`, else the object `o`) whose faces use it."""
    groups: dict[str, list[str]] = {}
    group = obj_name = material = None
    for raw in text.decode("utf-8", errors="replace").splitlines():
        key, _, rest = raw.strip().partition(" ")
        if key == "g":
            group = rest.strip() or None
        elif key == "o":
            obj_name, group = rest.strip() or None, None
        elif key == "usemtl":
            material = rest.strip()
        elif key == "f" and material is not None:
            name = group or obj_name
            if name is not None and name not in groups.setdefault(material, []):
                groups[material].append(name)
    return groups


def _part_material(geom) -> tuple[str | None, list[float] | None]:  # noqa: ANN001 - a trimesh geometry
    """The OBJ material's name and diffuse colour (RGBA in [0, 1]) of a part, when it has one."""
    material = getattr(geom.visual, "material", None)
    name = getattr(material, "name", None)
    if not name:
        return None, None
    diffuse = getattr(material, "diffuse", None)
    colour = None
    if diffuse is not None and len(diffuse) >= 3:
        colour = [float(c) / 255.0 for c in diffuse[:4]] + [1.0] * (4 - len(diffuse[:4]))
    return str(name), colour


def _ply_strips(source, name: str) -> list:
    """A PLY whose faces come as `tristrips` (Stanford's -1-separated strips), which trimesh skips."""
    from plyfile import PlyData

    from engines.texturing.asset import triangle_list

    try:
        if hasattr(source, "seek"):
            source.seek(0)
        ply = PlyData.read(source)
        names = [e.name for e in ply.elements]
        if "tristrips" not in names or "vertex" not in names:
            return []
        vert = ply["vertex"]
        v = np.stack([np.asarray(vert[k], np.float64) for k in ("x", "y", "z")], axis=1)
        strips = ply["tristrips"].data[ply["tristrips"].properties[0].name]
    except Exception as e:  # noqa: BLE001 - any parser failure is the file's fault
        raise MeshError(f"{name}: cannot parse as PLY ({type(e).__name__}: {e})") from None
    tris = []
    for strip in strips:
        strip = np.asarray(strip, np.int64)
        cuts = np.flatnonzero(strip < 0)
        for seg in np.split(strip, cuts):
            seg = seg[seg >= 0]
            if len(seg) >= 3:
                tris.append(triangle_list(5, seg))
    if not tris:
        return []
    faces = np.concatenate(tris)
    if faces.max() >= len(v):
        raise MeshError(f"{name}: triangle strips index vertices that do not exist")
    return [("tristrips", v, faces, None, None)]


def _part_uv(geom) -> np.ndarray | None:
    uv = getattr(geom.visual, "uv", None)
    if uv is None or len(uv) != len(geom.vertices):
        return None
    uv = np.asarray(uv, dtype=np.float64)
    return uv if np.isfinite(uv).all() else None


def _part_image(geom, name: str, limits: MeshLimits):
    material = getattr(geom.visual, "material", None)
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    if image is not None and image.size[0] * image.size[1] > limits.max_image_pixels:
        raise MeshError(
            f"{name}: its texture is {image.size[0]}x{image.size[1]} pixels, over the limit of "
            f"{limits.max_image_pixels} pixels (REALIZ3D_MAX_IMAGE_PIXELS)"
        )
    return image


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
