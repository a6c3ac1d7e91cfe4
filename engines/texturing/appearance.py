"""The base colour a glTF viewer shows at a point of the surface, read from the asset's own materials.

glTF's base colour is `texture (sRGB, read through its UV set, KHR_texture_transform and sampler wrap) x
baseColorFactor x COLOR_0`, per material, alpha included. `base_colour(mesh, faces, bary)` evaluates it at
points of the flat mesh (a face of `LoadedMesh.faces` and barycentrics on it), whatever primitive and
material each face comes from. It serves two things:

- `realiz3d render` of a multi-material asset (each face reads its own material, as a viewer does, instead
  of one texture for the whole mesh);
- the alpha of the new atlas (`atlas_alpha`): a material with `alphaMode` BLEND or MASK keeps its cut-outs
  and transparency, carried into the atlas through the same texel -> face -> UV mapping the bake used.

Textures are sampled bilinearly (texel centres at +0.5), after the UVs wrap as the sampler says (repeat by
default, mirrored repeat, clamp). Colour is combined in linear light (sRGB texture decoded, factor and
vertex colour linear) and returned as sRGB; alpha is linear throughout.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engines.texturing.rasterize import sample_bilinear

if TYPE_CHECKING:
    from engines.texturing.mesh_io import LoadedMesh

ALPHA_MODES_WITH_ALPHA = ("BLEND", "MASK")
_REPEAT, _MIRRORED, _CLAMP = 10497, 33648, 33071


@dataclass
class MaterialLook:
    """What a material's base colour is made of."""

    factor: np.ndarray  # (4,) linear RGBA
    image: np.ndarray | None  # (H, W, 4) uint8, sRGB colour, linear alpha
    texcoord: int
    transform: np.ndarray | None  # (3, 3) KHR_texture_transform matrix on UVs
    wrap: tuple[int, int]
    alpha_mode: str

    @property
    def has_alpha(self) -> bool:
        return self.alpha_mode in ALPHA_MODES_WITH_ALPHA


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


def _texture_transform(info: dict) -> tuple[np.ndarray | None, int]:
    ext = info.get("extensions", {}).get("KHR_texture_transform")
    texcoord = int(info.get("texCoord", 0))
    if not isinstance(ext, dict):
        return None, texcoord
    ox, oy = (float(v) for v in ext.get("offset", (0.0, 0.0)))
    sx, sy = (float(v) for v in ext.get("scale", (1.0, 1.0)))
    r = float(ext.get("rotation", 0.0))
    translation = np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1]], float)
    rotation = np.array([[math.cos(r), math.sin(r), 0], [-math.sin(r), math.cos(r), 0], [0, 0, 1]], float)
    scale = np.array([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], float)
    return translation @ rotation @ scale, int(ext.get("texCoord", texcoord))


def _decode_image(document, image_index: int) -> np.ndarray | None:  # noqa: ANN001 - GltfDocument
    from PIL import Image

    doc = document.json
    try:
        view = doc["bufferViews"][doc["images"][image_index]["bufferView"]]
        start = int(view.get("byteOffset", 0))
        raw = bytes(document.binary[start : start + int(view["byteLength"])])
        return np.asarray(Image.open(io.BytesIO(raw)).convert("RGBA"), dtype=np.uint8)
    except (KeyError, IndexError, TypeError, OSError, ValueError):
        return None  # KTX2, a broken image: no texture, the factor alone


def material_look(document, material: int | None, cache: dict | None = None) -> MaterialLook:  # noqa: ANN001
    """The base colour recipe of `materials[material]` (the glTF default material for None)."""
    cache = {} if cache is None else cache
    if material is None:
        return MaterialLook(np.ones(4), None, 0, None, (_REPEAT, _REPEAT), "OPAQUE")
    doc = document.json
    entry = doc["materials"][material]
    pbr = entry.get("pbrMetallicRoughness", {})
    factor = np.asarray(pbr.get("baseColorFactor", (1.0, 1.0, 1.0, 1.0)), np.float64)
    info = pbr.get("baseColorTexture")
    spec_gloss = entry.get("extensions", {}).get("KHR_materials_pbrSpecularGlossiness")
    if isinstance(spec_gloss, dict) and "pbrMetallicRoughness" not in entry:
        factor = np.asarray(spec_gloss.get("diffuseFactor", (1.0, 1.0, 1.0, 1.0)), np.float64)
        info = spec_gloss.get("diffuseTexture")
    image, transform, texcoord, wrap = None, None, 0, (_REPEAT, _REPEAT)
    if isinstance(info, dict) and isinstance(info.get("index"), int):
        try:
            texture = doc["textures"][info["index"]]
            source = texture.get("source")
            if source is not None:
                if source not in cache:
                    cache[source] = _decode_image(document, source)
                image = cache[source]
            sampler = doc["samplers"][texture["sampler"]] if "sampler" in texture else {}
            wrap = (int(sampler.get("wrapS", _REPEAT)), int(sampler.get("wrapT", _REPEAT)))
        except (KeyError, IndexError, TypeError):
            image = None
        transform, texcoord = _texture_transform(info)
    return MaterialLook(factor, image, texcoord, transform, wrap, str(entry.get("alphaMode", "OPAQUE")))


def _wrap(t: np.ndarray, mode: int) -> np.ndarray:
    if mode == _CLAMP:
        return np.clip(t, 0.0, 1.0)
    if mode == _MIRRORED:
        t = np.mod(t, 2.0)
        return np.where(t > 1.0, 2.0 - t, t)
    return np.mod(t, 1.0)


def sample_texture(look: MaterialLook, uv: np.ndarray) -> np.ndarray:
    """(n, 4) float in [0, 1]: the texture at glTF UVs (v down), colour still sRGB-encoded."""
    if look.transform is not None:
        uv = uv @ look.transform[:2, :2].T + look.transform[:2, 2]
    h, w = look.image.shape[:2]
    u = _wrap(uv[:, 0], look.wrap[0])
    v = _wrap(uv[:, 1], look.wrap[1])
    return sample_bilinear(look.image, u * w, v * h) / 255.0


def face_sources(mesh: LoadedMesh) -> tuple[np.ndarray, np.ndarray]:
    """For every face of the flat mesh: its primitive (index into `mesh.asset.primitives`) and its
    triangle within that primitive."""
    prims, local = [], []
    for inst in mesh.asset.instances:
        n = len(mesh.asset.primitives[inst.primitive].triangles)
        prims.append(np.full(n, inst.primitive, np.int64))
        local.append(np.arange(n, dtype=np.int64))
    return np.concatenate(prims), np.concatenate(local)


def vertex_colours(mesh: LoadedMesh, p: int) -> np.ndarray | None:
    """(n, 4) linear RGBA COLOR_0 of primitive `p` in its current vertex order (after any unwrap), or None."""
    prim = mesh.asset.primitives[p]
    entry = mesh.asset.document.json["meshes"][prim.mesh]["primitives"][prim.index]
    accessor = entry.get("attributes", {}).get("COLOR_0")
    if accessor is None:
        return None
    colour = mesh.asset.document.read(accessor).astype(np.float64)
    if colour.shape[1] == 3:
        colour = np.concatenate([colour, np.ones((len(colour), 1))], axis=1)
    vertex_map = mesh.layout.vertex_maps.get(p) if mesh.layout is not None else None
    return colour[vertex_map] if vertex_map is not None else colour


def base_colour(mesh: LoadedMesh, faces: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """(n, 4) float sRGB colour and linear alpha in [0, 1] that a viewer shows at each (face, barycentrics)
    of the flat mesh, from each face's own material, UV set and vertex colours."""
    faces = np.asarray(faces, np.int64)
    bary = np.asarray(bary, np.float64)
    out = np.ones((len(faces), 4))
    if mesh.asset is None or not len(faces):
        return out
    prim_of, local_of = face_sources(mesh)
    prim_ids = prim_of[faces]
    cache: dict = {}
    for p in np.unique(prim_ids):
        prim = mesh.asset.primitives[p]
        sel = np.flatnonzero(prim_ids == p)
        corners = prim.triangles[local_of[faces[sel]]]  # (k, 3) vertex indices of the primitive
        look = material_look(mesh.asset.document, prim.material, cache)
        linear = np.tile(look.factor, (len(sel), 1))
        uv = prim.uvs.get(look.texcoord)
        if look.image is not None and uv is not None:
            at = np.einsum("nk,nkc->nc", bary[sel], uv[corners])
            texel = sample_texture(look, at)
            linear[:, :3] *= srgb_to_linear(texel[:, :3])
            linear[:, 3] *= texel[:, 3]
        colour = vertex_colours(mesh, p)
        if colour is not None:
            linear *= np.einsum("nk,nkc->nc", bary[sel], colour[corners])
        out[sel, :3] = linear_to_srgb(linear[:, :3])
        out[sel, 3] = np.clip(linear[:, 3], 0.0, 1.0)
    return out


def alpha_materials(mesh: LoadedMesh) -> list[int]:
    """Textured materials whose alphaMode uses alpha (BLEND, MASK)."""
    if mesh.asset is None or mesh.layout is None:
        return []
    doc = mesh.asset.document.json
    return sorted(
        m
        for m in mesh.layout.texcoord
        if m is not None and doc["materials"][m].get("alphaMode", "OPAQUE") in ALPHA_MODES_WITH_ALPHA
    )


def atlas_alpha(mesh: LoadedMesh, face_id: np.ndarray, bary: np.ndarray) -> np.ndarray | None:
    """(S, S) uint8 alpha for the atlas, or None when no textured material uses alpha.

    Each chart texel takes the input's base-colour alpha (texture alpha x factor alpha x COLOR_0 alpha) at
    the point its face and barycentrics name; texels of opaque materials are 255; texels off the charts take
    the alpha of the nearest chart texel (as the colour padding does)."""
    from engines.texturing.fill import nearest_fill

    if not alpha_materials(mesh):
        return None
    size = face_id.shape
    flat_face = face_id.reshape(-1)
    chart = np.flatnonzero(flat_face >= 0)
    alpha = np.full(flat_face.shape, 255.0)
    if len(chart):
        prim_of, _ = face_sources(mesh)
        materials = np.array(
            [-1 if p.material is None else p.material for p in mesh.asset.primitives], np.int64
        )
        with_alpha = np.isin(materials[prim_of[flat_face[chart]]], alpha_materials(mesh))
        texels = chart[with_alpha]
        values = base_colour(mesh, flat_face[texels], bary.reshape(-1, 3)[texels])[:, 3]
        alpha[texels] = values * 255.0
    out = np.clip(alpha + 0.5, 0, 255).astype(np.uint8).reshape(size)
    return nearest_fill(out, face_id >= 0) if len(chart) else out


def with_alpha(atlas: np.ndarray, mesh: LoadedMesh, face_id: np.ndarray | None, bary) -> np.ndarray:  # noqa: ANN001
    """The RGB atlas with the input's alpha as a fourth channel when a textured material uses alpha."""
    if face_id is None:
        return atlas
    alpha = atlas_alpha(mesh, face_id, bary)
    if alpha is None:
        return atlas
    return np.concatenate([atlas[..., :3], alpha[..., None]], axis=-1)


def has_base_colour_texture(mesh: LoadedMesh) -> bool:
    """Whether some drawn primitive reads a base-colour texture through UVs it has."""
    if mesh.asset is None:
        return mesh.texture is not None and mesh.uv is not None
    cache: dict = {}
    for p in {i.primitive for i in mesh.asset.instances}:
        prim = mesh.asset.primitives[p]
        look = material_look(mesh.asset.document, prim.material, cache)
        if look.image is not None and look.texcoord in prim.uvs:
            return True
    return False


def render_base_colour(maps, mesh: LoadedMesh) -> np.ndarray:  # noqa: ANN001 - rasterize.ViewMaps
    """Unlit view of the asset's own base colour, each face through its material (uint8 HxWx3, background
    black): what a glTF viewer shows without lighting. A mesh made in code uses its one texture."""
    from engines.texturing.rasterize import render_albedo

    if mesh.asset is None:
        return render_albedo(maps, mesh.faces, mesh.uv, mesh.texture)
    out = np.zeros((maps.resolution, maps.resolution, 3), np.float64)
    mask = maps.mask
    colour = base_colour(mesh, maps.face_id[mask], maps.bary[mask])
    out[mask] = colour[:, :3] * 255.0
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
