"""Mesh uploads an attacker would send (the security review of issue 22), a few hundred bytes to a few MB.

Every builder returns `(filename, bytes)`. Readers of server files name `target` (an absolute path, a
`../` path or a URI); allocation bombs declare far more than they carry. The tests refuse each of them
(tests/test_upload_security.py) and `realiz3d bench memory` measures what each costs a worker.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib

import numpy as np

from engines.texturing.gltf_document import GltfDocument, build_document


def box(half: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A closed box: 8 corners, 12 triangles."""
    p = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float) * half
    tri = np.array(
        [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
         [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
    )  # fmt: skip
    return p, tri


def single_mesh(pos: np.ndarray, tri: np.ndarray, uv: np.ndarray | None = None) -> GltfDocument:
    """One primitive (POSITION first, accessor 0) under one node."""
    return build_document([("box", np.asarray(pos, np.float64), np.asarray(tri), uv, None)])


def glb_reading(target: str) -> tuple[str, bytes]:
    """A valid box GLB whose second buffer is `target` (the review's 700-byte /proc/self/environ reader)."""
    pos, tri = box()
    doc = single_mesh(pos, tri)
    doc.json["bufferViews"].append({"buffer": 1, "byteLength": 16})
    doc.json["buffers"] = [{"byteLength": len(doc.binary)}]
    json_doc = {**doc.json, "buffers": [*doc.json["buffers"], {"uri": target, "byteLength": 16}]}
    return "box.glb", _glb(json_doc, bytes(doc.binary))


def glb_image_reading(target: str) -> tuple[str, bytes]:
    """A box GLB whose image comes from `target`."""
    pos, tri = box()
    doc = single_mesh(pos, tri)
    doc.json["images"] = [{"uri": target}]
    doc.json["textures"] = [{"source": 0}]
    return "box.glb", doc.to_glb()


def obj_reading(mtl_target: str) -> tuple[str, bytes]:
    pos, tri = box()
    lines = [f"mtllib {mtl_target}", "usemtl m"]
    lines += [f"v {x} {y} {z}" for x, y, z in pos]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in tri]
    return "box.obj", "\n".join(lines).encode()


def zip_obj_with_mtl_reading(texture_target: str) -> tuple[str, bytes]:
    """A zip of an OBJ and its MTL, whose `map_Kd` names `texture_target`."""
    _, obj = obj_reading("box.mtl")
    mtl = f"newmtl m\nKd 1 1 1\nmap_Kd {texture_target}\n".encode()
    return "box.zip", zip_of({"box.obj": obj, "box.mtl": mtl})


def ply_reading(target: str) -> tuple[str, bytes]:
    pos, tri = box()
    head = [
        "ply",
        "format ascii 1.0",
        f"comment TextureFile {target}",
        f"element vertex {len(pos)}",
        "property float x",
        "property float y",
        "property float z",
        f"element face {len(tri)}",
        "property list uchar int vertex_indices",
        "end_header",
    ]
    body = [f"{x} {y} {z}" for x, y, z in pos] + [f"3 {a} {b} {c}" for a, b, c in tri]
    return "box.ply", "\n".join(head + body).encode()


def zip_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


# ---- allocation bombs ------------------------------------------------------------------------------


def glb_huge_count(count: int = 20_000_000) -> tuple[str, bytes]:
    """A POSITION accessor of `count` vertices and no bufferView (read as zeros): ~456 bytes."""
    doc = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}],
        "accessors": [
            {"componentType": 5126, "count": count, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 1]}
        ],
    }
    return "bomb.glb", _glb(doc)


def glb_sparse_instanced(vertices: int = 1_000_000, nodes: int = 20) -> tuple[str, bytes]:
    """A sparse accessor of `vertices` (3 of them set) drawn by `nodes` nodes."""
    values = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32).tobytes()
    indices = np.array([0, 1, 2], np.uint32).tobytes()
    doc = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": list(range(nodes))}],
        "nodes": [{"mesh": 0, "translation": [i, 0, 0]} for i in range(nodes)],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}],
        "buffers": [{"byteLength": 48}],
        "bufferViews": [{"buffer": 0, "byteLength": 12}, {"buffer": 0, "byteOffset": 12, "byteLength": 36}],
        "accessors": [
            {
                "componentType": 5126,
                "count": vertices,
                "type": "VEC3",
                "min": [0, 0, 0],
                "max": [1, 1, 0],
                "sparse": {
                    "count": 3,
                    "indices": {"bufferView": 0, "componentType": 5125},
                    "values": {"bufferView": 1},
                },
            }
        ],
    }
    return "sparse.glb", _glb(doc, indices + values)


def gltf_percent_encoded(megabytes: int = 16) -> tuple[str, bytes]:
    """A .gltf whose buffer is a percent-encoded data: URI of `megabytes` MB of text (3 chars a byte)."""
    pos, tri = box()
    doc = single_mesh(pos, tri)
    binary = bytes(doc.binary)
    pad = (megabytes * 1024 * 1024) // 3
    payload = "".join(f"%{b:02X}" for b in binary) + "%00" * pad
    doc.json["buffers"] = [{"uri": "data:application/octet-stream," + payload, "byteLength": len(binary)}]
    return "scene.gltf", json.dumps(doc.json).encode()


def zip_lying_sizes(real_bytes: int = 8 * 1024 * 1024) -> tuple[str, bytes]:
    """A zip whose only entry unpacks to `real_bytes` while its size fields say 100."""
    pos, tri = box()
    glb = single_mesh(pos, tri).to_glb() + b"\0" * real_bytes
    data = bytearray(zip_of({"box.glb": glb}))
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header, central directory
        at = data.find(sig)
        struct.pack_into("<I", data, at + offset, 100)
    return "box.zip", bytes(data)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and carries one tiny compressed row (headers only)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def glb_huge_image(side: int = 13_370) -> tuple[str, bytes]:
    """A textured square whose base-colour PNG declares side^2 pixels."""
    pos = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], float)
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    doc = single_mesh(pos, np.array([[0, 1, 2], [0, 2, 3]]), uv)
    view = doc.add_buffer_view(png_header(side, side))
    image = doc.add("images", {"bufferView": view, "mimeType": "image/png"})
    doc.add("textures", {"source": image})
    doc.json["materials"] = [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}]
    doc.json["meshes"][0]["primitives"][0]["material"] = 0
    return "image.glb", doc.to_glb()


def zip_deep_gltf(depth: int = 100_000) -> tuple[str, bytes]:
    """A zipped .gltf whose extras nest `depth` arrays (a RecursionError for Python's json module)."""
    text = '{"asset": {"version": "2.0"}, "extras": ' + "[" * depth + "]" * depth + "}"
    return "deep.zip", zip_of({"deep.gltf": text.encode()})


def glb_count(count) -> tuple[str, bytes]:
    """A box whose POSITION accessor's count is `count` (negative, 2^62, fractional...)."""
    pos, tri = box()
    doc = single_mesh(pos, tri)
    doc.json["accessors"][0]["count"] = count
    return "box.glb", doc.to_glb()


def glb_far_coordinates(at: float = 1e38) -> tuple[str, bytes]:
    """A 12-face box without UVs whose corners sit near `at` (float32 overflows in products)."""
    pos, tri = box()
    return "far.glb", single_mesh(pos * at, tri).to_glb()


def _glb(doc: dict, binary: bytes = b"") -> bytes:
    text = json.dumps(doc, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    chunks = struct.pack("<II", len(text), 0x4E4F534A) + text
    if binary:
        binary += b"\0" * (-len(binary) % 4)
        chunks += struct.pack("<II", len(binary), 0x004E4942) + binary
    return b"glTF" + struct.pack("<II", 2, 12 + len(chunks)) + chunks
