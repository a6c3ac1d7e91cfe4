"""Write the results: `texture.png`, the input asset as a textured GLB, and OBJ + MTL for OBJ inputs.

The GLB is the input document with the atlas added, not a rebuilt mesh (`gltf_document`):
- nodes, transforms, skins, animations, cameras, every primitive and material, names, extras and
  extensions pass through; accessors that did not change keep their bytes;
- every textured material gets `baseColorTexture` = the atlas (its base-colour factor becomes white,
  alpha kept); its other PBR maps and factors stay. A KHR_materials_pbrSpecularGlossiness material also
  gets the atlas as its `diffuseTexture` (specular and glossiness kept). Primitives without a material
  get a new one;
- the original UV sets stay. When the layout packed or unwrapped UVs, they are a new `TEXCOORD_n` and
  the material reads that set. Unwrapped primitives are re-indexed (seams split vertices): each of their
  attributes and morph targets is gathered through the unwrap's vertex map, bytes copied;
- primitives without normals get smooth normals (area weighted, welded by position so UV seams stay
  smooth);
- textured primitives lose `COLOR_0`: glTF multiplies it into the base colour, so it would tint the atlas
  in a way the generated views never showed (meta.json says which primitives had it);
- an atlas with an alpha channel (the input's BLEND / MASK materials, `appearance.atlas_alpha`) is written
  as RGBA and those materials' base-colour factor becomes plain white: the alpha is in the texture now;
- finally `gltf_compact.compact` removes what nothing references any more (replaced images, accessors a
  re-indexed or Draco-decoded primitive left behind, the Draco streams) and makes `extensionsUsed` exact.
Inputs without a document (a mesh made in code) get a fresh one (`build_document`).
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
from PIL import Image

from engines.texturing.gltf_compact import compact
from engines.texturing.gltf_document import ELEMENT_ARRAY_BUFFER, GltfDocument, build_document, unit_vectors
from engines.texturing.mesh_io import LoadedMesh, mesh_from_document

BAKED_MATERIAL = "realiz3d_baked"
#: The archived specular-glossiness workflow: its `diffuseTexture` gets the atlas too
SPEC_GLOSS = "KHR_materials_pbrSpecularGlossiness"


def _atlas_image(atlas: np.ndarray) -> Image.Image:
    """RGB, or RGBA when the atlas carries the input's alpha."""
    channels = 4 if atlas.ndim == 3 and atlas.shape[2] == 4 else 3
    return Image.fromarray(np.ascontiguousarray(atlas[..., :channels], dtype=np.uint8))


def write_texture_png(atlas: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atlas_image(atlas).save(path)
    return path


def smooth_normals(positions: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(n, 3) float32 unit normals: area-weighted face normals summed over vertices at the same position."""
    positions = np.asarray(positions, np.float64)
    _, weld = np.unique(positions, axis=0, return_inverse=True)
    weld = weld.reshape(-1)
    tri = positions[triangles]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    acc = np.zeros((weld.max() + 1 if len(weld) else 0, 3))
    for k in range(3):
        np.add.at(acc, weld[triangles[:, k]], face_n)
    return unit_vectors(acc[weld])


def textured_document(mesh: LoadedMesh, atlas: np.ndarray) -> GltfDocument:
    """A copy of the mesh's document with the atlas as base colour (the mesh itself is not changed)."""
    if mesh.uv is None:
        raise ValueError("cannot export a textured mesh without UVs")
    if mesh.asset is None or mesh.layout is None or not mesh.layout.complete:
        mesh = mesh_from_document(build_document([("mesh", mesh.vertices, mesh.faces, mesh.uv, None)]))
    asset, layout = mesh.asset, mesh.layout
    doc = GltfDocument(copy.deepcopy(asset.document.json), bytearray(asset.document.binary))
    png = io.BytesIO()
    _atlas_image(atlas).save(png, format="PNG")
    has_alpha = atlas.ndim == 3 and atlas.shape[2] == 4
    image = doc.add("images", {"name": BAKED_MATERIAL, "bufferView": doc.add_buffer_view(png.getvalue())})
    doc.json["images"][image]["mimeType"] = "image/png"
    sampler = doc.add("samplers", {"magFilter": 9729, "minFilter": 9987})
    texture = doc.add("textures", {"name": BAKED_MATERIAL, "source": image, "sampler": sampler})
    new_material = None
    if None in layout.texcoord:
        new_material = doc.add(
            "materials",
            {
                "name": BAKED_MATERIAL,
                "pbrMetallicRoughness": {"metallicFactor": 0.0, "roughnessFactor": 1.0},
            },
        )
    drawn = sorted({inst.primitive for inst in asset.instances})
    for p in drawn:
        prim = asset.primitives[p]
        entry = doc.json["meshes"][prim.mesh]["primitives"][prim.index]
        if p in layout.vertex_maps:
            _reindex(doc, entry, layout.vertex_maps[p], prim.triangles)
        attrs = entry["attributes"]
        # COLOR_0 multiplies the base colour: the atlas is what the views showed, untinted.
        attrs.pop("COLOR_0", None)
        for target in entry.get("targets", []):
            target.pop("COLOR_0", None)
        if p in layout.new_texcoord:
            n = layout.texcoord[prim.material]
            uv = doc.add_accessor(layout.bake_uv[p].astype(np.float32), "VEC2")
            for k in range(n + 1):
                attrs.setdefault(f"TEXCOORD_{k}", uv)
            attrs[f"TEXCOORD_{n}"] = uv
        if "NORMAL" not in attrs:
            attrs["NORMAL"] = doc.add_accessor(smooth_normals(prim.positions, prim.triangles), "VEC3")
        if prim.material is None:
            entry["material"] = new_material
    _give_untextured_primitives_uv_sets(doc, layout.texcoord)
    for material, texcoord in layout.texcoord.items():
        target = doc.json["materials"][new_material if material is None else material]
        # With an RGBA atlas the alpha is in the texture (factor alpha included): the factor becomes white.
        keep_alpha = not (has_alpha and target.get("alphaMode", "OPAQUE") in ("BLEND", "MASK"))
        pbr = target.setdefault("pbrMetallicRoughness", {})
        pbr["baseColorTexture"] = {"index": texture, **({"texCoord": texcoord} if texcoord else {})}
        _white_keeping_alpha(pbr, "baseColorFactor", keep_alpha)
        spec_gloss = target.get("extensions", {}).get(SPEC_GLOSS)
        if spec_gloss is not None:  # viewers that read this extension use its diffuse map, not the PBR one
            spec_gloss["diffuseTexture"] = dict(pbr["baseColorTexture"])
            _white_keeping_alpha(spec_gloss, "diffuseFactor", keep_alpha)
    doc.compact_report = compact(doc)
    return doc


def _white_keeping_alpha(holder: dict, key: str, keep_alpha: bool = True) -> None:
    """A colour factor multiplying the new texture: white, with the material's alpha kept (unless the
    texture carries it)."""
    alpha = float(holder.get(key, [1, 1, 1, 1])[3]) if keep_alpha else 1.0
    if alpha != 1.0:
        holder[key] = [1.0, 1.0, 1.0, alpha]
    else:
        holder.pop(key, None)


def _give_untextured_primitives_uv_sets(doc: GltfDocument, texcoord: dict) -> None:
    """Primitives not drawn by the scene (or points/lines) that share a textured material need the UV set it
    now reads (the validator requires it): they get zeros, which sample one atlas texel."""
    for mesh in doc.json.get("meshes", []):
        for prim in mesh.get("primitives", []):
            n = texcoord.get(prim.get("material", -1))
            attrs = prim.get("attributes", {})
            if n is None or f"TEXCOORD_{n}" in attrs or "POSITION" not in attrs:
                continue
            zeros = doc.add_accessor(
                np.zeros((int(doc.accessor(attrs["POSITION"])["count"]), 2), np.float32), "VEC2"
            )
            for k in range(n + 1):
                attrs.setdefault(f"TEXCOORD_{k}", zeros)


def _reindex(doc: GltfDocument, entry: dict, vertex_map: np.ndarray, triangles: np.ndarray) -> None:
    """Gather every attribute (and morph target) of a primitive through `vertex_map`; new triangle indices."""

    def gather(accessor: int) -> int:
        acc = doc.accessor(accessor)
        values = doc.read(accessor, normalized_to_float=False)[vertex_map]
        out = doc.add_accessor(values, acc["type"])
        if acc.get("normalized"):
            doc.json["accessors"][out]["normalized"] = True
        return out

    entry["attributes"] = {name: gather(a) for name, a in entry["attributes"].items()}
    if "targets" in entry:
        entry["targets"] = [{name: gather(a) for name, a in t.items()} for t in entry["targets"]]
    dtype = np.uint16 if len(vertex_map) < 65535 else np.uint32
    entry["indices"] = doc.add_accessor(
        triangles.astype(dtype).reshape(-1, 1), "SCALAR", ELEMENT_ARRAY_BUFFER
    )
    entry["mode"] = 4


def textured_glb_bytes(mesh: LoadedMesh, atlas: np.ndarray) -> bytes:
    """The input asset with `atlas` as its base colour, as GLB bytes."""
    return textured_document(mesh, atlas).to_glb()


def write_textured_glb(mesh: LoadedMesh, atlas: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(textured_glb_bytes(mesh, atlas))
    return path


def _obj_name(name: str) -> str:
    """A name on one OBJ/MTL line (no line breaks, no leading or trailing space)."""
    return " ".join(str(name).split()) or "unnamed"


def obj_groups(mesh: LoadedMesh) -> list[tuple[str, str, int, int]]:
    """(group name, material name, first face, end face) of each instance of the flat mesh: the input's
    node names (an OBJ's groups) and material names; one group of the baked material without a document."""
    if mesh.asset is None:
        return [("mesh", BAKED_MATERIAL, 0, len(mesh.faces))]
    doc = mesh.asset.document.json
    groups, start = [], 0
    for inst in mesh.asset.instances:
        prim = mesh.asset.primitives[inst.primitive]
        end = start + len(prim.triangles)
        node = doc.get("nodes", [])[inst.node].get("name") or f"node_{inst.node}"
        material = BAKED_MATERIAL
        if prim.material is not None:
            material = doc["materials"][prim.material].get("name") or f"material_{prim.material}"
        groups.append((_obj_name(node), _obj_name(material), start, end))
        start = end
    return groups


def write_textured_obj(mesh: LoadedMesh, atlas_png: str, path: str | Path) -> list[Path]:
    """OBJ + MTL of the flat mesh in its own coordinates (full float64 precision), reading `atlas_png`.

    Groups and materials keep the input's names (an OBJ's `g` groups and `usemtl` materials); every
    material reads the one atlas."""
    path = Path(path)
    mtl = path.with_suffix(".mtl")
    normals = smooth_normals(mesh.vertices, mesh.faces)
    f = mesh.faces + 1
    lines = [f"mtllib {mtl.name}"]
    lines += [f"v {x!r} {y!r} {z!r}" for x, y, z in mesh.vertices.tolist()]
    lines += [f"vt {u:.9g} {v:.9g}" for u, v in mesh.uv.tolist()]
    lines += [f"vn {x:.7g} {y:.7g} {z:.7g}" for x, y, z in normals.tolist()]
    materials = []
    for group, material, start, end in obj_groups(mesh):
        lines += [f"g {group}", f"usemtl {material}"]
        lines += [f"f {a}/{a}/{a} {b}/{b}/{b} {c}/{c}/{c}" for a, b, c in f[start:end].tolist()]
        if material not in materials:
            materials.append(material)
    path.write_text("\n".join(lines) + "\n")
    mtl.write_text(
        "".join(
            f"newmtl {m}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {atlas_png}\n\n"
            for m in materials
        )
    )
    return [path, mtl]
