"""A glTF 2.0 document held as its own JSON and bytes, edited in place and written back as GLB.

Why not a library's object model: texturing must hand the user's asset back with everything it had
(nodes, skins, animations, cameras, extensions, extras, properties no schema knows yet), and the bytes of
every accessor it did not change. Keeping the parsed JSON dict and the buffers as they are does exactly
that; the only edits are appends (new accessors, an image, a texture) and a few material fields.

- `.glb` and `.gltf` are read; a `.gltf`'s buffers and images come from data: URIs or from files that a
  `resolve(uri) -> bytes` callable supplies: `asset_files.AssetFiles.get`, which only returns files of the
  asset itself (a zip's entries, the CLI's folder). Missing files are a `MeshError` naming them.
- Before any buffer is read, `input_bounds.check_document` bounds every count the JSON declares
  (`limits`), and the JSON itself is bounded in size and nesting (`load_json`).
- All buffers are merged into buffer 0 (the GLB's BIN chunk) at 4-byte aligned offsets, and external or
  data: images become buffer views, so the output GLB is one self-contained file. Accessor bytes are
  copied, never re-encoded.
- Accessors are read with their byteStride, normalisation and sparse substitution.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from engines.errors import MeshError

if TYPE_CHECKING:
    from engines.texturing.mesh_io import MeshLimits

GLB_MAGIC = b"glTF"
_JSON_CHUNK = 0x4E4F534A
_BIN_CHUNK = 0x004E4942
COMPONENT_DTYPES = {
    5120: np.int8,
    5121: np.uint8,
    5122: np.int16,
    5123: np.uint16,
    5125: np.uint32,
    5126: np.float32,
}
_DTYPE_COMPONENTS = {np.dtype(v): k for k, v in COMPONENT_DTYPES.items()}
TYPE_SIZES = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
ARRAY_BUFFER = 34962
ELEMENT_ARRAY_BUFFER = 34963
Resolver = Callable[[str], bytes]

#: A glTF's JSON describes the scene; real ones are kilobytes to a few megabytes (a .gltf with data: URIs
#: can be as large as the upload, which bounds it separately).
MAX_GLTF_JSON_BYTES = 32 * 1024 * 1024
#: glTF nests a handful of levels (extensions and extras a few more): deeper is an attack on the parser.
MAX_GLTF_JSON_DEPTH = 64
#: Objects and arrays in one glTF JSON: real assets have thousands; each costs the parser ~100 bytes.
MAX_GLTF_JSON_CONTAINERS = 1_000_000


def json_depth(value) -> int:  # noqa: ANN001 - any parsed JSON value
    """How deep objects and arrays nest in a parsed JSON value (iteratively: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def load_json(text: bytes, name: str, max_bytes: int = MAX_GLTF_JSON_BYTES) -> dict:
    """A glTF JSON text parsed, its size, object count and nesting bounded: every glTF JSON comes here.

    The object count is bounded before parsing (a count of brackets, strings included, so it errs on
    the safe side); Python's json parser stops at its recursion limit, and the depth is then bounded."""
    if len(text) > max_bytes:
        raise MeshError(f"{name}: its glTF JSON is {len(text)} bytes, over {max_bytes}")
    containers = text.count(b"{") + text.count(b"[")
    if containers > MAX_GLTF_JSON_CONTAINERS:
        raise MeshError(
            f"{name}: its glTF JSON holds {containers} objects and arrays, over {MAX_GLTF_JSON_CONTAINERS}"
        )
    try:
        doc = json.loads(text.decode("utf-8-sig"))
    except RecursionError:
        raise MeshError(f"{name}: its glTF JSON nests deeper than {MAX_GLTF_JSON_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise MeshError(f"{name}: not a glTF file (its JSON does not parse: {e})") from None
    depth = json_depth(doc)
    if depth > MAX_GLTF_JSON_DEPTH:
        raise MeshError(f"{name}: its glTF JSON nests {depth} levels deep, over {MAX_GLTF_JSON_DEPTH}")
    if not isinstance(doc, dict):
        raise MeshError(f"{name}: the glTF JSON is not an object")
    return doc


class GltfDocument:
    """One glTF document: `json` (the parsed dict, edited in place) and `binary` (buffer 0's bytes)."""

    def __init__(self, doc: dict, binary: bytearray) -> None:
        self.json = doc
        self.binary = binary
        self.notes: list[str] = []  # what loading left out (a file the upload did not carry)
        self.source_format = "gltf"  # what the upload was: gltf (or glb), obj or ply
        self.compact_report = None  # set by export: what `gltf_compact.compact` removed

    # ---- reading -------------------------------------------------------------------------------

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        name: str = "mesh",
        resolve: Resolver | None = None,
        limits: MeshLimits | None = None,
    ) -> GltfDocument:
        """Parse GLB bytes, or a .gltf's JSON text (external files through `resolve`; by default a lone
        upload's, which has none). Every count is bounded by `limits` before a buffer is read."""
        from engines.texturing.asset_files import AssetFiles
        from engines.texturing.input_bounds import check_document
        from engines.texturing.mesh_io import MeshLimits

        limits = limits or MeshLimits()
        resolve = resolve or AssetFiles.upload(name).get
        if data[:4] == GLB_MAGIC:
            doc, bin_chunk = _split_glb(data, name)
        else:
            doc, bin_chunk = load_json(data, name, max(limits.max_bytes, MAX_GLTF_JSON_BYTES)), None
        version = str(doc.get("asset", {}).get("version", ""))
        if not version.startswith("2."):
            raise MeshError(f"{name}: glTF version '{version or 'missing'}' is not supported (glTF 2.0 only)")
        check_document(doc, limits, name, bin_chunk)
        buffers = []
        for i, buf in enumerate(doc.get("buffers", [])):
            uri = buf.get("uri")
            if uri is None:
                if i != 0 or bin_chunk is None:
                    raise MeshError(f"{name}: buffer {i} has no uri and there is no GLB binary chunk")
                raw = bin_chunk
            else:
                raw = _read_uri(uri, resolve, name, limits)
            if len(raw) < int(buf.get("byteLength", 0)):
                raise MeshError(f"{name}: buffer {i} holds {len(raw)} bytes, fewer than its byteLength")
            buffers.append(bytes(raw[: int(buf.get("byteLength", len(raw)))]))
        if sum(len(b) for b in buffers) > limits.max_bytes:
            raise MeshError(f"{name}: its buffers hold more than the limit of {limits.max_bytes} bytes")
        document = cls(doc, bytearray())
        document._merge_buffers(buffers)
        document._embed_images(resolve, name, limits)
        return document

    def _merge_buffers(self, buffers: list[bytes]) -> None:
        """Concatenate every buffer into one (4-byte aligned starts) and re-point the buffer views."""
        starts = []
        for raw in buffers:
            self._align()
            starts.append(len(self.binary))
            self.binary += raw
        for view in self.json.get("bufferViews", []):
            b = int(view.get("buffer", 0))
            if b >= len(starts):
                raise MeshError(f"a bufferView refers to buffer {b}, which does not exist")
            view["buffer"] = 0
            view["byteOffset"] = int(view.get("byteOffset", 0)) + starts[b]
        self.json["buffers"] = [{"byteLength": 0}] if buffers else []

    def _embed_images(self, resolve: Resolver, name: str, limits: MeshLimits) -> None:
        from engines.texturing.input_bounds import check_image

        for i, image in enumerate(self.json.get("images", [])):
            uri = image.pop("uri", None)
            if uri is None:
                continue
            raw = _read_uri(uri, resolve, name, limits)
            check_image(raw, f"{name}: image {i}", limits)
            image["bufferView"] = self.add_buffer_view(raw)
            image["mimeType"] = image.get("mimeType") or _image_mime(raw, uri)

    def accessor(self, index: int) -> dict:
        try:
            return self.json["accessors"][index]
        except (KeyError, IndexError, TypeError):
            raise MeshError(f"accessor {index} does not exist") from None

    def read(self, index: int, normalized_to_float: bool = True) -> np.ndarray:
        """(count, components) values of an accessor; normalised integers as floats in [-1, 1] / [0, 1]."""
        acc = self.accessor(index)
        dtype = np.dtype(COMPONENT_DTYPES.get(acc.get("componentType"), np.float32)).newbyteorder("<")
        if acc.get("componentType") not in COMPONENT_DTYPES:
            raise MeshError(f"accessor {index} has an unknown componentType {acc.get('componentType')}")
        ncomp = TYPE_SIZES.get(acc.get("type"), 0)
        count = int(acc.get("count", 0))
        if ncomp == 0:
            raise MeshError(f"accessor {index} has an unknown type {acc.get('type')!r}")
        if "bufferView" in acc:
            values = self._view_array(acc["bufferView"], int(acc.get("byteOffset", 0)), dtype, count, ncomp)
        else:
            values = np.zeros((count, ncomp), dtype)
        sparse = acc.get("sparse")
        if sparse:
            values = values.copy()
            n = int(sparse["count"])
            idx_info, val_info = sparse["indices"], sparse["values"]
            idx_dtype = np.dtype(COMPONENT_DTYPES[idx_info["componentType"]]).newbyteorder("<")
            idx = self._view_array(
                idx_info["bufferView"], int(idx_info.get("byteOffset", 0)), idx_dtype, n, 1
            )
            vals = self._view_array(
                val_info["bufferView"], int(val_info.get("byteOffset", 0)), dtype, n, ncomp
            )
            values[idx[:, 0].astype(np.int64)] = vals
        if normalized_to_float and acc.get("normalized") and dtype.kind in "iu":
            info = np.iinfo(dtype)
            return np.maximum(values.astype(np.float64) / info.max, -1.0)
        return values

    def _view_array(
        self, view_index: int, offset: int, dtype: np.dtype, count: int, ncomp: int
    ) -> np.ndarray:
        try:
            view = self.json["bufferViews"][view_index]
        except (KeyError, IndexError, TypeError):
            raise MeshError(f"bufferView {view_index} does not exist") from None
        start = int(view.get("byteOffset", 0)) + offset
        elem = dtype.itemsize * ncomp
        stride = int(view.get("byteStride", 0)) or elem
        end = start + (count - 1) * stride + elem if count else start
        limit = int(view.get("byteOffset", 0)) + int(view.get("byteLength", 0))
        if end > limit or end > len(self.binary):
            raise MeshError(f"bufferView {view_index} is too short for the accessor that reads it")
        if count == 0:
            return np.zeros((0, ncomp), dtype)
        raw = np.ndarray(
            (count, ncomp), dtype=dtype, buffer=self.binary, offset=start, strides=(stride, dtype.itemsize)
        )
        return raw.copy()

    # ---- writing -------------------------------------------------------------------------------

    def _align(self, to: int = 4) -> None:
        self.binary += b"\0" * (-len(self.binary) % to)

    def add_buffer_view(self, raw: bytes, target: int | None = None, byte_stride: int | None = None) -> int:
        self._align()
        view = {"buffer": 0, "byteOffset": len(self.binary), "byteLength": len(raw)}
        if byte_stride is not None:
            view["byteStride"] = byte_stride
        if target is not None:
            view["target"] = target
        self.binary += raw
        views = self.json.setdefault("bufferViews", [])
        views.append(view)
        if not self.json.get("buffers"):
            self.json["buffers"] = [{"byteLength": 0}]
        return len(views) - 1

    def add_values_view(self, values: np.ndarray, target: int | None = ARRAY_BUFFER) -> int:
        """A buffer view of (n, k) values, little endian; vertex attributes (ARRAY_BUFFER) start every
        element on a 4-byte boundary (a uint8 SCALAR takes 4 bytes: `byteStride` 4)."""
        values = np.ascontiguousarray(values).reshape(len(values), -1)
        raw = values.astype(values.dtype.newbyteorder("<")).tobytes()
        element = values.dtype.itemsize * values.shape[1]
        stride = None
        if target == ARRAY_BUFFER and element % 4:
            stride = element + (-element % 4)
            padded = np.zeros((len(values), stride), np.uint8)
            padded[:, :element] = np.frombuffer(raw, np.uint8).reshape(len(values), element)
            raw = padded.tobytes()
        return self.add_buffer_view(raw, target, stride)

    def add_accessor(
        self, values: np.ndarray, type_: str, target: int | None = ARRAY_BUFFER, bounds: bool = False
    ) -> int:
        """Append values (float32, uint8/16/32 ...) as a new accessor; returns its index. Float accessors get
        their exact min/max, integer ones when `bounds` (POSITION, or an accessor that declared them)."""
        values = np.ascontiguousarray(values)
        ncomp = TYPE_SIZES[type_]
        values = values.reshape(len(values), ncomp)
        component = _DTYPE_COMPONENTS.get(values.dtype)
        if component is None:
            raise ValueError(f"no glTF component type for {values.dtype}")
        acc = {
            "bufferView": self.add_values_view(values, target),
            "componentType": component,
            "count": len(values),
            "type": type_,
        }
        if values.dtype == np.float32 and len(values):
            acc["min"] = values.min(axis=0).astype(float).tolist()
            acc["max"] = values.max(axis=0).astype(float).tolist()
        elif bounds and len(values):
            acc["min"] = values.min(axis=0).astype(int).tolist()
            acc["max"] = values.max(axis=0).astype(int).tolist()
        accessors = self.json.setdefault("accessors", [])
        accessors.append(acc)
        return len(accessors) - 1

    def add(self, key: str, item: dict) -> int:
        items = self.json.setdefault(key, [])
        items.append(item)
        return len(items) - 1

    def use_extension(self, name: str) -> None:
        used = self.json.setdefault("extensionsUsed", [])
        if name not in used:
            used.append(name)

    def to_glb(self) -> bytes:
        """The document as one GLB: JSON chunk (space padded) and BIN chunk (zero padded)."""
        doc = self.json
        if doc.get("buffers"):
            doc["buffers"][0] = {k: v for k, v in doc["buffers"][0].items() if k != "uri"}
            doc["buffers"][0]["byteLength"] = len(self.binary)
            if len(doc["buffers"]) > 1:
                raise ValueError("a merged document has exactly one buffer")
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        text += b" " * (-len(text) % 4)
        chunks = struct.pack("<II", len(text), _JSON_CHUNK) + text
        if doc.get("buffers"):
            body = bytes(self.binary) + b"\0" * (-len(self.binary) % 4)
            chunks += struct.pack("<II", len(body), _BIN_CHUNK) + body
        return GLB_MAGIC + struct.pack("<II", 2, 12 + len(chunks)) + chunks


def _split_glb(data: bytes, name: str) -> tuple[dict, bytes | None]:
    if len(data) < 20:
        raise MeshError(f"{name}: GLB file is truncated")
    version, length = struct.unpack_from("<II", data, 4)
    if version != 2:
        raise MeshError(f"{name}: GLB container version {version} is not supported (glTF 2.0 only)")
    if length > len(data):
        raise MeshError(f"{name}: GLB file is truncated ({len(data)} of {length} bytes)")
    offset, doc, binary = 12, None, None
    while offset + 8 <= length:
        chunk_len, chunk_type = struct.unpack_from("<II", data, offset)
        body = data[offset + 8 : offset + 8 + chunk_len]
        if len(body) < chunk_len:
            raise MeshError(f"{name}: GLB chunk at byte {offset} is truncated")
        if chunk_type == _JSON_CHUNK and doc is None:
            doc = load_json(body, name)
        elif chunk_type == _BIN_CHUNK and binary is None:
            binary = body
        offset += 8 + chunk_len
    if doc is None:
        raise MeshError(f"{name}: GLB file has no JSON chunk")
    return doc, binary


def _read_uri(uri: str, resolve: Resolver, name: str, limits: MeshLimits) -> bytes:
    from engines.texturing.input_bounds import decode_data_uri

    if not isinstance(uri, str):
        raise MeshError(f"{name}: a uri is not a string")
    if uri.startswith("data:"):
        return decode_data_uri(uri, name, limits.max_bytes)
    return resolve(uri)


def _image_mime(raw: bytes, uri: str) -> str:
    if raw[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if raw[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "image/webp"
    if raw[:12] == b"\xabKTX 20\xbb\r\n\x1a\n":
        return "image/ktx2"  # KHR_texture_basisu: passed through as it is
    raise MeshError(f"image '{uri[:60]}' is neither PNG, JPEG, WebP nor KTX2")


def unit_vectors(vectors: np.ndarray) -> np.ndarray:
    """(n, 3) float32 unit vectors (zero or non-finite ones become +Z), normalised again after the float32
    cast: glTF-Validator checks that normals are unit length."""
    v = np.asarray(vectors, np.float64)
    length = np.linalg.norm(v, axis=1, keepdims=True)
    good = np.isfinite(length) & (length > 1e-30)
    v = np.where(good, v / np.where(good, length, 1.0), [0.0, 0.0, 1.0]).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def build_document(parts: list[tuple]) -> GltfDocument:
    """A fresh document from flat parts `(name, world vertices float64, faces, uv v-up | None, PIL image |
    None[, unit normals | None[, material name | None[, RGBA colour factor | None]]])`.

    One mesh and child node per part (named after the part: an OBJ's group), under a root node whose float64
    translation carries the common centre: positions are stored relative to it, so float32 keeps their
    precision far from the origin. Parts that name the same material share one glTF material of that name
    (its colour factor, and its image as base-colour texture when the part has UVs); a part with an image
    but no material name gets `{name}_material`.
    """
    import io

    every = np.concatenate([p[1] for p in parts])
    center = (every.min(axis=0) + every.max(axis=0)) / 2
    doc = GltfDocument({"asset": {"version": "2.0", "generator": "realiz3d"}, "scene": 0}, bytearray())
    root = {"name": "root", "children": []}
    if np.abs(center).max() > 0:
        root["translation"] = center.tolist()
    doc.json["nodes"] = [root]
    doc.json["scenes"] = [{"nodes": [0]}]
    materials: dict[str, int] = {}
    for name, vertices, faces, uv, image, *rest in parts:
        normals = rest[0] if rest else None
        material_name = rest[1] if len(rest) > 1 else None
        colour = rest[2] if len(rest) > 2 else None
        attributes = {"POSITION": doc.add_accessor((vertices - center).astype(np.float32), "VEC3")}
        if normals is not None:
            attributes["NORMAL"] = doc.add_accessor(unit_vectors(normals), "VEC3")
        if uv is not None:
            flipped = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1).astype(np.float32)
            attributes["TEXCOORD_0"] = doc.add_accessor(flipped, "VEC2")
        index_dtype = np.uint16 if len(vertices) < 65535 else np.uint32
        prim = {
            "attributes": attributes,
            "indices": doc.add_accessor(
                faces.astype(index_dtype).reshape(-1, 1), "SCALAR", ELEMENT_ARRAY_BUFFER
            ),
            "mode": 4,
        }
        textured = image is not None and uv is not None
        if material_name is None and textured:
            material_name = f"{name}_material"
        if material_name is not None:
            # The same name with and without a usable texture (a part without UVs): two materials.
            key = f"{material_name}\0{textured}"
            if key not in materials:
                pbr: dict = {"metallicFactor": 0.0, "roughnessFactor": 1.0}
                if colour is not None and not textured:
                    factor = [round(float(c), 6) for c in colour]
                    if factor != [1.0, 1.0, 1.0, 1.0]:
                        pbr["baseColorFactor"] = factor
                if textured:
                    png = io.BytesIO()
                    image.convert("RGBA" if image.mode in ("RGBA", "LA") else "RGB").save(png, format="PNG")
                    view = doc.add_buffer_view(png.getvalue())
                    img = doc.add("images", {"bufferView": view, "mimeType": "image/png"})
                    pbr["baseColorTexture"] = {"index": doc.add("textures", {"source": img})}
                materials[key] = doc.add("materials", {"name": material_name, "pbrMetallicRoughness": pbr})
            prim["material"] = materials[key]
        mesh = doc.add("meshes", {"name": name, "primitives": [prim]})
        root["children"].append(doc.add("nodes", {"name": name, "mesh": mesh}))
    return doc
