"""Decode Draco-compressed primitives (KHR_draco_mesh_compression) in place, with Google's decoder (DracoPy).

Each compressed primitive's accessors get plain buffer views holding the decoded values (cast to the
component type the accessor declares); the extension is then removed from the primitive and, once no
primitive uses it, from `extensionsRequired` / `extensionsUsed`. The output GLB is therefore plain,
uncompressed glTF that every viewer reads. Without DracoPy the asset is refused with that reason.

Decoded values are not the encoder's input: Draco quantises positions, normals, UVs and weights. So the
accessors' `min`/`max` (which the encoder copied from its input) are recomputed from the decoded values,
decoded normals and tangents are made unit length again, and skin weights are renormalised to sum to 1, as
glTF requires. The compressed stream's buffer view is no longer referenced; `gltf_compact.compact` drops it
when the textured GLB is written, with every accessor the texturing left unused.

Why the output is not re-encoded: a second Draco pass quantises already quantised values again (generation
loss), and would quantise the atlas UVs the texturing adds; it needs an encoder for every attribute kind
(joints, weights, feature ids), and every consumer of the result a decoder. The price is size: geometry is
stored decoded, so the result is larger than a Draco input (docs/texturing.md).
"""

from __future__ import annotations

import numpy as np

from engines.errors import MeshError
from engines.texturing.gltf_document import (
    ARRAY_BUFFER,
    COMPONENT_DTYPES,
    ELEMENT_ARRAY_BUFFER,
    TYPE_SIZES,
    GltfDocument,
    unit_vectors,
)

EXTENSION = "KHR_draco_mesh_compression"


def uses_draco(doc: dict) -> bool:
    return EXTENSION in doc.get("extensionsUsed", []) or EXTENSION in doc.get("extensionsRequired", [])


def decode_draco(document: GltfDocument, name: str = "mesh") -> int:
    """Decode every Draco primitive of `document` in place; returns how many were decoded."""
    doc = document.json
    prims = [
        p
        for m in doc.get("meshes", [])
        for p in m.get("primitives", [])
        if EXTENSION in p.get("extensions", {})
    ]
    if not prims:
        _drop_extension(doc)
        return 0
    try:
        import DracoPy
    except ImportError:
        raise MeshError(
            f"{name}: Draco-compressed geometry ({EXTENSION}) needs the DracoPy decoder, which is not "
            "installed here (pip install DracoPy), or upload the asset uncompressed"
        ) from None
    for prim in prims:
        ext = prim["extensions"][EXTENSION]
        view = doc["bufferViews"][ext["bufferView"]]
        start = int(view.get("byteOffset", 0))
        raw = bytes(document.binary[start : start + int(view["byteLength"])])
        try:
            decoded = DracoPy.decode(raw)
        except Exception as e:  # noqa: BLE001 - a broken stream is the file's fault
            raise MeshError(f"{name}: a Draco-compressed primitive cannot be decoded ({e})") from None
        values = {}
        for attr, unique_id in ext.get("attributes", {}).items():
            if attr not in prim.get("attributes", {}):
                continue
            found = decoded.get_attribute_by_unique_id(int(unique_id))
            if found is None:
                raise MeshError(f"{name}: Draco stream lacks attribute {attr} (id {unique_id})")
            values[attr] = np.asarray(found["data"])
            values[attr] = values[attr].reshape(len(values[attr]), -1)
        _renormalise(document, prim, values)
        for attr, data in values.items():
            _fill(document, prim["attributes"][attr], data, ARRAY_BUFFER, bounds=attr == "POSITION")
        if "indices" in prim:
            _fill(document, prim["indices"], np.asarray(decoded.faces).reshape(-1, 1), ELEMENT_ARRAY_BUFFER)
        del prim["extensions"][EXTENSION]
        if not prim["extensions"]:
            del prim["extensions"]
    _drop_extension(doc)
    return len(prims)


def _as_stored(document: GltfDocument, accessor: int, values: np.ndarray) -> np.ndarray:
    """Decoded values in the accessor's component type (normalised integers scaled from floats)."""
    acc = document.accessor(accessor)
    dtype = np.dtype(COMPONENT_DTYPES[acc["componentType"]])
    if acc.get("normalized") and values.dtype.kind == "f" and dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.clip(np.round(values * info.max), info.min, info.max)
    return values.astype(dtype)


def _renormalise(document: GltfDocument, prim: dict, values: dict[str, np.ndarray]) -> None:
    """Unit normals and tangents, and weights summing to 1 (over every WEIGHTS_n set), after quantisation."""
    for attr in ("NORMAL", "TANGENT"):
        data = values.get(attr)
        acc = document.accessor(prim["attributes"][attr]) if data is not None else None
        if data is not None and acc["componentType"] == 5126 and data.shape[1] >= 3:
            data = data.astype(np.float32).copy()
            data[:, :3] = unit_vectors(data[:, :3])
            if data.shape[1] == 4:
                data[:, 3] = np.where(data[:, 3] < 0, -1.0, 1.0)
            values[attr] = data
    sets = sorted(k for k in values if k.startswith("WEIGHTS_"))
    if not sets:
        return
    stored = [_as_stored(document, prim["attributes"][k], values[k]) for k in sets]
    kinds = {s.dtype for s in stored}
    if len(kinds) != 1 or len({len(s) for s in stored}) != 1:
        return
    weights = np.concatenate(stored, axis=1)
    dtype = weights.dtype
    if dtype.kind == "f":
        w = np.maximum(weights.astype(np.float64), 0.0)
        total = w.sum(axis=1, keepdims=True)
        w = np.where(total > 0, w / np.where(total > 0, total, 1.0), w).astype(np.float32)
        target = 1.0
    else:
        target = np.iinfo(dtype).max
        w = weights.astype(np.int64)
        total = w.sum(axis=1, keepdims=True)
        w = np.where(total > 0, np.floor(w * target / np.where(total > 0, total, 1)), w).astype(np.int64)
    # What rounding left over goes to each vertex's largest weight, so the stored values sum to 1 exactly.
    rows = np.arange(len(w))
    big = np.argmax(w, axis=1)
    residual = target - w.astype(np.float64).sum(axis=1)
    live = w.sum(axis=1) > 0
    w[rows[live], big[live]] = (w[rows[live], big[live]] + residual[live]).astype(w.dtype)
    w = w.astype(dtype)
    start = 0
    for k, s in zip(sets, stored, strict=True):
        values[k] = w[:, start : start + s.shape[1]]
        start += s.shape[1]


def _fill(
    document: GltfDocument, accessor: int, values: np.ndarray, target: int, bounds: bool = False
) -> None:
    acc = document.accessor(accessor)
    values = values.reshape(len(values), -1)
    if values.shape != (int(acc["count"]), TYPE_SIZES[acc["type"]]):
        raise MeshError(
            f"Draco data for accessor {accessor} has shape {values.shape}, the accessor declares "
            f"{acc['count']} x {acc['type']}"
        )
    stored = _as_stored(document, accessor, values)
    acc["bufferView"] = document.add_values_view(stored, target)
    acc.pop("byteOffset", None)
    if (bounds or "min" in acc or "max" in acc) and len(stored):
        # The encoder's bounds describe its input, not these (quantised) values.
        kind = float if stored.dtype.kind == "f" else int
        acc["min"] = [kind(v) for v in stored.min(axis=0)]
        acc["max"] = [kind(v) for v in stored.max(axis=0)]


def _drop_extension(doc: dict) -> None:
    for key in ("extensionsRequired", "extensionsUsed"):
        if EXTENSION in doc.get(key, []):
            doc[key] = [e for e in doc[key] if e != EXTENSION]
            if not doc[key]:
                del doc[key]
