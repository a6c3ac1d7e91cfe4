"""Decode Draco-compressed primitives (KHR_draco_mesh_compression) in place, with Google's decoder (DracoPy).

Each compressed primitive's accessors get plain buffer views holding the decoded values (cast to the
component type the accessor declares); the extension is then removed from the primitive and, once no
primitive uses it, from `extensionsRequired` / `extensionsUsed`. The output GLB is therefore plain,
uncompressed glTF that every viewer reads. Without DracoPy the asset is refused with that reason.
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
        for attr, unique_id in ext.get("attributes", {}).items():
            if attr not in prim.get("attributes", {}):
                continue
            found = decoded.get_attribute_by_unique_id(int(unique_id))
            if found is None:
                raise MeshError(f"{name}: Draco stream lacks attribute {attr} (id {unique_id})")
            _fill(document, prim["attributes"][attr], np.asarray(found["data"]), ARRAY_BUFFER)
        if "indices" in prim:
            _fill(document, prim["indices"], np.asarray(decoded.faces).reshape(-1, 1), ELEMENT_ARRAY_BUFFER)
        del prim["extensions"][EXTENSION]
        if not prim["extensions"]:
            del prim["extensions"]
    _drop_extension(doc)
    return len(prims)


def _fill(document: GltfDocument, accessor: int, values: np.ndarray, target: int) -> None:
    acc = document.accessor(accessor)
    dtype = np.dtype(COMPONENT_DTYPES[acc["componentType"]])
    values = values.reshape(len(values), -1)
    if values.shape != (int(acc["count"]), TYPE_SIZES[acc["type"]]):
        raise MeshError(
            f"Draco data for accessor {accessor} has shape {values.shape}, the accessor declares "
            f"{acc['count']} x {acc['type']}"
        )
    if acc.get("normalized") and values.dtype.kind == "f" and dtype.kind in "iu":
        values = np.round(values * np.iinfo(dtype).max)
    acc["bufferView"] = document.add_buffer_view(
        values.astype(dtype).astype(dtype.newbyteorder("<")).tobytes(), target
    )
    acc.pop("byteOffset", None)


def _drop_extension(doc: dict) -> None:
    for key in ("extensionsRequired", "extensionsUsed"):
        if EXTENSION in doc.get(key, []):
            doc[key] = [e for e in doc[key] if e != EXTENSION]
            if not doc[key]:
                del doc[key]
