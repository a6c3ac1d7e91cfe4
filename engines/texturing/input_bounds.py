"""Bounds on what a mesh may make us allocate, checked from the document before anything is decoded.

A few hundred bytes of glTF can declare gigabytes: an accessor of 20 M vertices without a bufferView
(read as zeros), a sparse accessor drawn by many nodes, a buffer whose `data:` URI decodes to more than
the upload, an image of 13,370^2 pixels in a small PNG. So every count is bounded before it allocates:

- `check_document` (the gateway, from the JSON alone, and the worker again before reading a buffer):
  every accessor's `count` and sparse `count` are integers within `max_vertices` (or `3 * max_faces + 2`,
  what the faces' indices need, when that is larger), the vertices the default scene draws (every instance counted) within
  `max_vertices`, every buffer's `byteLength` and every `data:` URI's decoded size within `max_bytes`,
  and the estimated memory of the load within `max_memory_bytes`.
- `check_image` reads an image's header only (PIL does not decode on open) and bounds its pixels.
- `decode_data_uri` decodes base64 and percent-encoded payloads in linear time and memory.

`MeshError` names the limit and the setting that raises it.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import TYPE_CHECKING

import numpy as np

from engines.errors import MeshError

if TYPE_CHECKING:
    from engines.texturing.mesh_io import MeshLimits

# Memory model of a load (calibrated with `realiz3d bench mesh-memory`, docs/benchmarks/mesh_memory.md):
# bytes per drawn vertex (float64 positions of the primitive, the instance, the flat mesh and its
# normalised copy, UVs, normals, the renderer's copies), extra per skinned vertex (its 4x4 blend matrices),
# and decoded images (RGBA, plus the RGB copy).
BYTES_PER_VERTEX = 400
BYTES_PER_SKINNED_VERTEX = 300
BYTES_PER_PIXEL = 7
_MB = 1024 * 1024


def _count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise MeshError(f"{what} is not a whole number ({str(value)[:40]})")
    value = int(value)
    if value < 0:
        raise MeshError(f"{what} is negative ({value})")
    return value


def data_uri_size(uri: str) -> int:
    """An upper bound of the bytes a `data:` URI decodes to, without decoding it."""
    head, _, payload = uri.partition(",")
    return len(payload) * 3 // 4 + 3 if head.endswith(";base64") else len(payload)


def decode_data_uri(uri: str, name: str, max_bytes: int) -> bytes:
    """The bytes of a `data:` URI (base64 or percent-encoded), refused past `max_bytes` before decoding."""
    if data_uri_size(uri) > max_bytes + 3:
        raise MeshError(f"{name}: a data: URI decodes to more than the limit of {max_bytes} bytes")
    head, _, payload = uri.partition(",")
    if head.endswith(";base64"):
        try:
            return base64.b64decode(payload)
        except (ValueError, binascii.Error):
            raise MeshError(f"{name}: a data: URI is not valid base64") from None
    return percent_decode(payload.encode("utf-8"))


_HEX = np.full(256, -1, np.int16)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
    _HEX[ord(chr(_c).upper())] = _i


def percent_decode(raw: bytes, chunk: int = 1 << 20) -> bytes:
    """`urllib.parse.unquote_to_bytes` in linear memory: array operations over 1 MB at a time instead of
    one Python object per escape (which made a 32 MB percent-encoded URI cost gigabytes)."""
    out = bytearray()
    start = 0
    while start < len(raw):
        end = min(start + chunk, len(raw))
        # never split an escape: end the chunk before a '%' in its last two bytes
        cut = raw.rfind(b"%", max(start, end - 2), end)
        if cut >= 0 and end < len(raw):
            end = cut if cut > start else end
        out += _percent_decode_chunk(raw[start:end])
        start = end
    return bytes(out)


def _percent_decode_chunk(raw: bytes) -> bytes:
    b = np.frombuffer(raw, np.uint8)
    if len(b) < 3:
        return raw
    hi, lo = _HEX[b[1:-1]], _HEX[b[2:]]
    # An escape is '%' then two hex digits; two escapes never overlap (their digits are not '%').
    esc = np.flatnonzero((b[:-2] == ord("%")) & (hi >= 0) & (lo >= 0))
    if not len(esc):
        return raw
    out = b.copy()
    out[esc] = (hi[esc] * 16 + lo[esc]).astype(np.uint8)
    keep = np.ones(len(b), bool)
    keep[esc + 1] = False
    keep[esc + 2] = False
    return out[keep].tobytes()


def check_image(raw: bytes, what: str, limits: MeshLimits) -> None:
    """MeshError when the image's header declares more than `max_image_pixels` (nothing is decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return  # not an image PIL reads (e.g. KTX2): passed through as bytes, never decoded
    if width * height > limits.max_image_pixels:
        raise MeshError(
            f"{what} is {width}x{height} pixels, over the limit of {limits.max_image_pixels} pixels "
            "(REALIZ3D_MAX_IMAGE_PIXELS)"
        )


def drawn_vertices(doc: dict) -> tuple[int, int]:
    """(vertices, skinned vertices) the default scene draws, each instance counted once per node."""
    from engines.texturing.asset import TRIANGLE_MODES, scene_nodes

    accessors = doc.get("accessors", [])
    nodes = doc.get("nodes", [])
    meshes = doc.get("meshes", [])
    total = skinned = 0
    for n in scene_nodes(doc):
        node = nodes[n]
        if "mesh" not in node:
            continue
        for prim in meshes[int(node["mesh"])].get("primitives", []):
            if int(prim.get("mode", 4)) not in TRIANGLE_MODES:
                continue
            key = prim.get("attributes", {}).get("POSITION")
            count = int(accessors[key]["count"]) if key is not None else 0
            total += count
            if "skin" in node:
                skinned += count
    return total, skinned


def check_document(doc: dict, limits: MeshLimits, name: str, embedded: bytes | None = None) -> int:
    """Bound every count of a glTF document before a buffer is read; returns the estimated bytes of the
    load. `embedded`: the GLB's binary chunk, whose images' headers are checked here too."""
    # Index accessors hold up to three entries per face; every other accessor one per vertex.
    cap = max(limits.max_vertices, 3 * limits.max_faces + 2)
    try:
        for i, acc in enumerate(doc.get("accessors", [])):
            count = _count(acc.get("count", 0), f"{name}: accessor {i}'s count")
            if count > cap:
                raise MeshError(
                    f"{name}: accessor {i} declares {count} elements, over the limit of {cap} "
                    "(REALIZ3D_MAX_MESH_VERTICES, REALIZ3D_MAX_MESH_FACES)"
                )
            if "sparse" in acc:
                sparse = _count(acc["sparse"].get("count", 0), f"{name}: accessor {i}'s sparse count")
                if sparse > count:
                    raise MeshError(f"{name}: accessor {i} has more sparse values ({sparse}) than elements")
        buffer_bytes = 0
        for i, buf in enumerate(doc.get("buffers", [])):
            length = _count(buf.get("byteLength", 0), f"{name}: buffer {i}'s byteLength")
            uri = buf.get("uri")
            if isinstance(uri, str) and uri.startswith("data:"):
                length = max(length, data_uri_size(uri))
            buffer_bytes += length
        if buffer_bytes > limits.max_bytes:
            raise MeshError(
                f"{name}: its buffers hold {buffer_bytes} bytes, over the limit of {limits.max_bytes} bytes"
            )
        image_pixels = 0
        for i, image in enumerate(doc.get("images", [])):
            uri = image.get("uri")
            if isinstance(uri, str) and uri.startswith("data:"):
                if data_uri_size(uri) > limits.max_bytes:
                    raise MeshError(f"{name}: image {i}'s data: URI is over {limits.max_bytes} bytes")
                head = decode_data_uri(uri[: uri.find(",") + 1 + 65536], name, limits.max_bytes)
                image_pixels += _image_pixels(head, f"{name}: image {i}", limits)
            elif embedded is not None and "bufferView" in image:
                view = doc["bufferViews"][image["bufferView"]]
                start = _count(view.get("byteOffset", 0), "a bufferView's byteOffset")
                raw = embedded[start : start + _count(view.get("byteLength", 0), "a byteLength")]
                image_pixels += _image_pixels(raw, f"{name}: image {i}", limits)
        vertices, skinned = drawn_vertices(doc)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        if isinstance(e, MeshError):
            raise
        raise MeshError(f"{name}: the glTF JSON is malformed ({type(e).__name__}: {e})") from None
    if vertices > limits.max_vertices:
        raise MeshError(
            f"{name}: its scene draws {vertices} vertices (every instance counted), over the limit of "
            f"{limits.max_vertices} (REALIZ3D_MAX_MESH_VERTICES)"
        )
    estimate = (
        2 * buffer_bytes
        + vertices * BYTES_PER_VERTEX
        + skinned * BYTES_PER_SKINNED_VERTEX
        + image_pixels * BYTES_PER_PIXEL
    )
    check_memory(estimate, name, limits)
    return estimate


def _image_pixels(raw: bytes, what: str, limits: MeshLimits) -> int:
    from PIL import Image, UnidentifiedImageError

    check_image(raw, what, limits)
    try:
        with Image.open(io.BytesIO(raw)) as image:
            return image.size[0] * image.size[1]
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return 0


def check_memory(estimate: int, name: str, limits: MeshLimits) -> None:
    if estimate > limits.max_memory_bytes:
        raise MeshError(
            f"{name}: loading it needs about {estimate // _MB} MB, over this deployment's budget of "
            f"{limits.max_memory_bytes // _MB} MB per job (REALIZ3D_MESH_MEMORY_BUDGET_MB)"
        )
