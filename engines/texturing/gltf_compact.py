"""Drop what nothing references from a glTF document, repack its binary, and list exactly the extensions used.

Texturing replaces things: the base-colour images the atlas supersedes, the accessors a re-indexed (unwrapped)
primitive no longer reads, the compressed stream and stale accessors of a decoded Draco primitive, the
`COLOR_0` of a textured primitive. Left in the GLB they are dead bytes (one public asset grew from 1.4 MB to
7.1 MB, 2 MB of it dead). `compact(document)`:

1. walks every reference glTF 2.0 defines, and those of the extensions in `FOLLOWED_EXTENSIONS`: textures
   from texture infos (any `...Texture` object with an `index`, in materials and their extensions), images
   and samplers from used textures (`source`, and `source` inside a texture's extensions: KTX2, WebP,
   DDS...), accessors from primitives (attributes, indices, morph targets), skins, animation samplers and
   `EXT_mesh_gpu_instancing`, buffer views from used accessors (sparse included), images and Draco streams;
2. removes every accessor, buffer view, image, texture and sampler nothing reaches, and renumbers the
   references to those that stay;
3. copies the bytes of the buffer views that stay into a fresh buffer (each start keeps its remainder modulo
   4, so every accessor keeps its alignment), leaving out the bytes nothing reads;
4. sets `extensionsUsed` to the extensions that appear in the document (`extensions` objects anywhere), plus
   `KHR_mesh_quantization` if it was listed (it has no object: it allows the attribute types), and keeps in
   `extensionsRequired` only those still used.

A document that uses an extension outside `FOLLOWED_EXTENSIONS` may reference objects in ways this module
does not know (`EXT_mesh_features` points at textures with a `texture` key, `EXT_structural_metadata` at
buffer views): then nothing is removed (only the extension lists are made exact), and the result says which
extension stopped it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engines.texturing.gltf_document import GltfDocument

#: Extensions whose references (to textures, images, samplers, accessors, buffer views) `compact` follows, or
#: which have none.
FOLLOWED_EXTENSIONS = frozenset(
    {
        "KHR_draco_mesh_compression",
        "KHR_lights_punctual",
        "KHR_materials_anisotropy",
        "KHR_materials_clearcoat",
        "KHR_materials_diffuse_transmission",
        "KHR_materials_dispersion",
        "KHR_materials_emissive_strength",
        "KHR_materials_ior",
        "KHR_materials_iridescence",
        "KHR_materials_pbrSpecularGlossiness",
        "KHR_materials_sheen",
        "KHR_materials_specular",
        "KHR_materials_transmission",
        "KHR_materials_unlit",
        "KHR_materials_variants",
        "KHR_materials_volume",
        "KHR_mesh_quantization",
        "KHR_node_visibility",
        "KHR_texture_basisu",
        "KHR_texture_transform",
        "KHR_xmp_json_ld",
        "EXT_mesh_gpu_instancing",
        "EXT_texture_webp",
        "EXT_texture_avif",
        "MSFT_texture_dds",
    }
)
#: Listed in extensionsUsed without any `extensions` object of their own.
_FLAG_EXTENSIONS = ("KHR_mesh_quantization",)
_KINDS = ("accessors", "bufferViews", "images", "textures", "samplers")


@dataclass
class CompactReport:
    removed: dict[str, int] = field(default_factory=dict)  # kind -> how many were dropped
    bytes_before: int = 0
    bytes_after: int = 0
    kept_because: str | None = None  # the extension that stopped removal

    def describe(self) -> dict:
        return {
            "removed": {k: v for k, v in self.removed.items() if v},
            "binary_bytes_before": self.bytes_before,
            "binary_bytes_after": self.bytes_after,
            **({"nothing_removed_because": self.kept_because} if self.kept_because else {}),
        }


def _texture_infos(value, parent_key: str = ""):  # noqa: ANN001, ANN202 - any JSON value
    """Every texture info (`{"index": n, ...}` under a key ending in `Texture`) inside a JSON value."""
    stack = [(parent_key, value)]
    while stack:
        key, item = stack.pop()
        if isinstance(item, dict):
            if key.endswith("Texture") and isinstance(item.get("index"), int):
                yield item
            stack.extend(item.items())
        elif isinstance(item, list):
            stack.extend((key, v) for v in item)


def _primitives(doc: dict):  # noqa: ANN202
    for mesh in doc.get("meshes", []):
        yield from mesh.get("primitives", [])


class _Refs:
    """Every place that holds an index of one kind, as (holder, key) pairs, so it can be renumbered."""

    def __init__(self) -> None:
        self.slots: dict[str, list[tuple[dict, str]]] = {k: [] for k in _KINDS}

    def add(self, kind: str, holder: dict, key: str) -> None:
        if isinstance(holder.get(key), int):
            self.slots[kind].append((holder, key))

    def used(self, kind: str) -> set[int]:
        return {holder[key] for holder, key in self.slots[kind]}


def _collect(doc: dict) -> _Refs:
    refs = _Refs()
    textures = doc.get("textures", [])
    for info in _texture_infos(doc.get("materials", [])):
        refs.add("textures", info, "index")
    used_textures = sorted(refs.used("textures"))
    for t in used_textures:
        if 0 <= t < len(textures):
            texture = textures[t]
            refs.add("images", texture, "source")
            refs.add("samplers", texture, "sampler")
            for ext in texture.get("extensions", {}).values():
                if isinstance(ext, dict):
                    refs.add("images", ext, "source")
    for prim in _primitives(doc):
        attributes = prim.get("attributes", {})
        for name in attributes:
            refs.add("accessors", attributes, name)
        refs.add("accessors", prim, "indices")
        for target in prim.get("targets", []):
            for name in target:
                refs.add("accessors", target, name)
        draco = prim.get("extensions", {}).get("KHR_draco_mesh_compression")
        if isinstance(draco, dict):
            refs.add("bufferViews", draco, "bufferView")
    for skin in doc.get("skins", []):
        refs.add("accessors", skin, "inverseBindMatrices")
    for animation in doc.get("animations", []):
        for sampler in animation.get("samplers", []):
            refs.add("accessors", sampler, "input")
            refs.add("accessors", sampler, "output")
    for node in doc.get("nodes", []):
        instancing = node.get("extensions", {}).get("EXT_mesh_gpu_instancing", {})
        attributes = instancing.get("attributes", {}) if isinstance(instancing, dict) else {}
        for name in attributes:
            refs.add("accessors", attributes, name)
    accessors = doc.get("accessors", [])
    for a in sorted(refs.used("accessors")):
        if 0 <= a < len(accessors):
            acc = accessors[a]
            refs.add("bufferViews", acc, "bufferView")
            sparse = acc.get("sparse")
            if isinstance(sparse, dict):
                refs.add("bufferViews", sparse.get("indices", {}), "bufferView")
                refs.add("bufferViews", sparse.get("values", {}), "bufferView")
    images = doc.get("images", [])
    for i in sorted(refs.used("images")):
        if 0 <= i < len(images):
            refs.add("bufferViews", images[i], "bufferView")
    return refs


def _extensions_present(doc: dict) -> set[str]:
    found, stack = set(), [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ext = item.get("extensions")
            if isinstance(ext, dict):
                found.update(ext)
            stack.extend(v for k, v in item.items() if k not in ("extensionsUsed", "extensionsRequired"))
        elif isinstance(item, list):
            stack.extend(item)
    return found


def exact_extension_lists(doc: dict) -> None:
    """`extensionsUsed` = the extensions the document has objects of (plus listed flag extensions);
    `extensionsRequired` = those of the listed ones still used. Original order kept, new ones appended."""
    listed = list(doc.get("extensionsUsed", []))
    present = _extensions_present(doc) | {e for e in _FLAG_EXTENSIONS if e in listed}
    used = [e for e in listed if e in present] + sorted(present - set(listed))
    required = [e for e in doc.get("extensionsRequired", []) if e in present]
    for key, value in (("extensionsUsed", used), ("extensionsRequired", required)):
        if value:
            doc[key] = value
        else:
            doc.pop(key, None)


def compact(document: GltfDocument) -> CompactReport:
    """Remove what nothing references, repack the binary, make the extension lists exact (in place)."""
    doc = document.json
    report = CompactReport(bytes_before=len(document.binary))
    unknown = sorted((set(doc.get("extensionsUsed", [])) | _extensions_present(doc)) - FOLLOWED_EXTENSIONS)
    if unknown:
        report.kept_because = unknown[0]
        exact_extension_lists(doc)
        report.bytes_after = len(document.binary)
        return report
    refs = _collect(doc)
    broken = [k for k in _KINDS if any(not 0 <= i < len(doc.get(k, [])) for i in refs.used(k))]
    if broken:  # a reference to nothing (a broken input): renumbering could make it point at something
        report.kept_because = f"a reference to a missing {broken[0][:-1]}"
        exact_extension_lists(doc)
        report.bytes_after = len(document.binary)
        return report
    for kind in _KINDS:
        items = doc.get(kind, [])
        keep = sorted(refs.used(kind))
        report.removed[kind] = len(items) - len(keep)
        if not report.removed[kind]:
            continue
        new_index = {old: new for new, old in enumerate(keep)}
        for holder, key in refs.slots[kind]:
            holder[key] = new_index[holder[key]]
        if keep:
            doc[kind] = [items[i] for i in keep]
        else:
            doc.pop(kind, None)
    _repack(document)
    exact_extension_lists(doc)
    report.bytes_after = len(document.binary)
    return report


def _repack(document: GltfDocument) -> None:
    """A fresh binary holding only the bytes of the buffer views that remain (alignment mod 4 kept)."""
    views = document.json.get("bufferViews", [])
    old = document.binary
    binary = bytearray()
    for view in views:
        start = int(view.get("byteOffset", 0))
        length = int(view.get("byteLength", 0))
        binary += b"\0" * ((start - len(binary)) % 4)  # the same remainder modulo 4 as before
        view["byteOffset"] = len(binary)
        binary += old[start : start + length]
    document.binary = binary
    if not views and not document.json.get("buffers"):
        return
    if views:
        document.json["buffers"] = [{"byteLength": len(binary)}]
    else:
        document.json.pop("buffers", None)
