"""A glTF asset seen as what texturing needs: its triangle primitives and where each instance sits.

`read_asset(document)` walks the default scene and returns, for every mesh primitive drawn as triangles
(modes TRIANGLES, TRIANGLE_STRIP, TRIANGLE_FAN), its local positions, triangle list and UV sets, and for
every node that draws it, the instance's world positions:
- node transforms (matrix or TRS) are composed in float64, so an asset far from the origin keeps its
  precision until the render frame removes the offset;
- a skinned mesh is placed in its bind pose as the glTF spec defines: the node's own transform is
  ignored, each vertex moves by the weighted joint matrices `world(joint) @ inverseBindMatrix`;
- morph targets are applied with the default weights (node's, else mesh's);
- strips and fans become triangle lists for rendering (degenerate restart triangles dropped); the
  document itself is not touched here.
Draco primitives are decoded first (`draco.py`); meshopt-compressed buffers are refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engines.errors import MeshError
from engines.texturing.gltf_document import GltfDocument

TRIANGLE_MODES = (4, 5, 6)
# Extensions that change how geometry bytes are read; without a decoder the asset cannot be textured.
# (Draco is decoded by `draco.decode_draco` before this module reads the document.)
_UNREADABLE_GEOMETRY = {
    "EXT_meshopt_compression": "meshopt-compressed buffers (EXT_meshopt_compression)",
}


@dataclass
class Primitive:
    """One triangle primitive of the document (`meshes[mesh].primitives[index]`)."""

    mesh: int
    index: int
    positions: np.ndarray  # (n, 3) float64, local (morph default weights applied)
    triangles: np.ndarray  # (f, 3) int64 into positions
    uvs: dict[int, np.ndarray]  # TEXCOORD_k -> (n, 2) float64, glTF convention (v down)
    material: int | None
    texcoord: int = 0  # the UV set the base colour reads (its material's baseColorTexture.texCoord)

    @property
    def json(self) -> tuple[int, int]:
        return self.mesh, self.index


@dataclass
class Instance:
    """One node drawing one primitive: its world (or skinned bind-pose) positions."""

    primitive: int  # index into Asset.primitives
    node: int
    positions: np.ndarray  # (n, 3) float64


@dataclass
class Asset:
    document: GltfDocument
    primitives: list[Primitive]
    instances: list[Instance]
    notes: list[str] = field(default_factory=list)

    @property
    def num_faces(self) -> int:
        return sum(len(self.primitives[i.primitive].triangles) for i in self.instances)


def node_matrix(node: dict) -> np.ndarray:
    """A node's local 4x4 transform (float64): `matrix`, else T * R * S."""
    if "matrix" in node:
        return np.asarray(node["matrix"], dtype=np.float64).reshape(4, 4).T  # column-major in glTF
    out = np.eye(4)
    x, y, z, w = (float(c) for c in node.get("rotation", (0, 0, 0, 1)))
    rot = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    out[:3, :3] = rot * np.asarray(node.get("scale", (1, 1, 1)), dtype=np.float64)
    out[:3, 3] = np.asarray(node.get("translation", (0, 0, 0)), dtype=np.float64)
    return out


def world_matrices(doc: dict) -> list[np.ndarray]:
    """World transform of every node (parents composed in float64, iteratively); raises on a cycle."""
    nodes = doc.get("nodes", [])
    parent = {}
    for i, node in enumerate(nodes):
        for c in node.get("children", []):
            parent[c] = i
    world: list[np.ndarray | None] = [None] * len(nodes)
    for i in range(len(nodes)):
        chain, j = [], i
        while j is not None and world[j] is None:
            chain.append(j)
            if len(chain) > len(nodes):
                raise MeshError("the glTF node hierarchy has a cycle")
            j = parent.get(j)
        base = world[j] if j is not None else np.eye(4)
        for k in reversed(chain):
            base = base @ node_matrix(nodes[k])
            world[k] = base
    return world


def scene_nodes(doc: dict) -> list[int]:
    """Nodes of the default scene (or every root when there are no scenes), parents before children."""
    nodes = doc.get("nodes", [])
    scenes = doc.get("scenes", [])
    if scenes:
        roots = list(scenes[int(doc.get("scene", 0))].get("nodes", []))
    else:
        children = {c for n in nodes for c in n.get("children", [])}
        roots = [i for i in range(len(nodes)) if i not in children]
    order, stack, seen = [], list(reversed(roots)), set()
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        order.append(i)
        stack.extend(reversed(nodes[i].get("children", [])))
    return order


def triangle_list(mode: int, indices: np.ndarray) -> np.ndarray:
    """(f, 3) triangles of a TRIANGLES / TRIANGLE_STRIP / TRIANGLE_FAN index list, degenerates dropped."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if mode == 4:
        tri = idx[: len(idx) // 3 * 3].reshape(-1, 3)
    elif mode == 5:
        n = max(len(idx) - 2, 0)
        i = np.arange(n)
        odd = i % 2
        # glTF: triangle i is (v_i, v_{i+1+i%2}, v_{i+2-i%2}), which keeps the winding consistent.
        tri = np.stack([idx[i], idx[i + 1 + odd], idx[i + 2 - odd]], axis=1)
    elif mode == 6:
        n = max(len(idx) - 2, 0)
        i = np.arange(n)
        tri = np.stack([idx[i + 1], idx[i + 2], np.full(n, idx[0] if len(idx) else 0)], axis=1)
    else:
        raise ValueError(f"mode {mode} is not a triangle mode")
    keep = (tri[:, 0] != tri[:, 1]) & (tri[:, 1] != tri[:, 2]) & (tri[:, 0] != tri[:, 2])
    return tri[keep]


def check_decodable(doc: dict, name: str) -> None:
    for ext in doc.get("extensionsRequired", []):
        if ext in _UNREADABLE_GEOMETRY:
            raise MeshError(
                f"{name}: {_UNREADABLE_GEOMETRY[ext]} is not supported; export it without compression "
                "(e.g. `gltf-transform copy in.glb out.glb` after decompressing) and upload again"
            )
    for mesh in doc.get("meshes", []):
        for prim in mesh.get("primitives", []):
            for ext in prim.get("extensions", {}):
                if ext in _UNREADABLE_GEOMETRY:
                    raise MeshError(f"{name}: {_UNREADABLE_GEOMETRY[ext]} is not supported")


def _base_color_texcoord(doc: dict, material: int | None) -> int:
    if material is None:
        return 0
    info = doc["materials"][material].get("pbrMetallicRoughness", {}).get("baseColorTexture")
    return int(info.get("texCoord", 0)) if info else 0


def _read_primitive(document: GltfDocument, mesh_i: int, prim_i: int, weights) -> Primitive:
    doc = document.json
    prim = doc["meshes"][mesh_i]["primitives"][prim_i]
    attrs = prim.get("attributes", {})
    if "POSITION" not in attrs:
        raise MeshError(f"mesh {mesh_i} primitive {prim_i} has no POSITION attribute")
    positions = document.read(attrs["POSITION"]).astype(np.float64)
    for w, target in zip(weights or [], prim.get("targets", []), strict=False):
        if w and "POSITION" in target:
            positions = positions + float(w) * document.read(target["POSITION"]).astype(np.float64)
    if "indices" in prim:
        indices = document.read(prim["indices"])[:, 0].astype(np.int64)
        if len(indices) and (indices.max() >= len(positions)):
            raise MeshError(f"mesh {mesh_i} primitive {prim_i}: indices point past its vertices")
    else:
        indices = np.arange(len(positions))
    uvs = {}
    k = 0
    while f"TEXCOORD_{k}" in attrs:
        uvs[k] = document.read(attrs[f"TEXCOORD_{k}"]).astype(np.float64)
        k += 1
    material = prim.get("material")
    return Primitive(
        mesh=mesh_i,
        index=prim_i,
        positions=positions,
        triangles=triangle_list(int(prim.get("mode", 4)), indices),
        uvs=uvs,
        material=int(material) if material is not None else None,
        texcoord=_base_color_texcoord(doc, material),
    )


def _skinned_positions(document: GltfDocument, world, node: dict, prim: dict, local: np.ndarray):
    """Bind-pose positions of a skinned primitive, or None when it has no joints/weights."""
    doc = document.json
    skin = doc["skins"][node["skin"]]
    joints = skin["joints"]
    if "inverseBindMatrices" in skin:
        ibm = document.read(skin["inverseBindMatrices"]).astype(np.float64).reshape(-1, 4, 4)
        ibm = ibm.transpose(0, 2, 1)  # column-major
    else:
        ibm = np.broadcast_to(np.eye(4), (len(joints), 4, 4))
    joint_mats = np.stack([world[j] for j in joints]) @ ibm
    attrs = prim.get("attributes", {})
    total = np.zeros((len(local), 4, 4))
    weight_sum = np.zeros(len(local))
    k = 0
    while f"JOINTS_{k}" in attrs and f"WEIGHTS_{k}" in attrs:
        j = document.read(attrs[f"JOINTS_{k}"]).astype(np.int64)
        w = document.read(attrs[f"WEIGHTS_{k}"]).astype(np.float64)
        if j.max(initial=0) >= len(joints):
            raise MeshError(f"skin {node['skin']}: JOINTS_{k} refers to a joint that does not exist")
        for c in range(j.shape[1]):  # one influence at a time: (n, 4, 4), not (n, 4, 4, 4)
            total += w[:, c, None, None] * joint_mats[j[:, c]]
        weight_sum += w.sum(axis=1)
        k += 1
    if k == 0:
        return None
    ok = weight_sum > 1e-8
    total[ok] /= weight_sum[ok, None, None]
    total[~ok] = world[joints[0]] if len(joints) else np.eye(4)
    homogeneous = np.concatenate([local, np.ones((len(local), 1))], axis=1)
    return np.einsum("nab,nb->na", total, homogeneous)[:, :3]


def read_asset(document: GltfDocument, name: str = "mesh") -> Asset:
    """Every drawn triangle primitive of the default scene, with its instances placed in world space."""
    from engines.texturing.draco import decode_draco, uses_draco

    doc = document.json
    check_decodable(doc, name)
    if uses_draco(doc):
        decode_draco(document, name)
    world = world_matrices(doc)
    nodes = doc.get("nodes", [])
    primitives: list[Primitive] = []
    by_key: dict[tuple[int, int], int] = {}
    instances: list[Instance] = []
    notes: list[str] = list(document.notes)
    skipped_modes = 0
    for n in scene_nodes(doc):
        node = nodes[n]
        if "mesh" not in node:
            continue
        mesh_i = int(node["mesh"])
        mesh = doc["meshes"][mesh_i]
        weights = node.get("weights", mesh.get("weights"))
        if "EXT_mesh_gpu_instancing" in node.get("extensions", {}):
            notes.append(f"node {n}: EXT_mesh_gpu_instancing copies are textured as the node's first copy")
        for prim_i, prim in enumerate(mesh.get("primitives", [])):
            if int(prim.get("mode", 4)) not in TRIANGLE_MODES:
                skipped_modes += 1
                continue
            key = (mesh_i, prim_i)
            if key not in by_key:
                by_key[key] = len(primitives)
                primitives.append(_read_primitive(document, mesh_i, prim_i, weights))
            p = primitives[by_key[key]]
            positions = None
            if "skin" in node:
                positions = _skinned_positions(document, world, node, prim, p.positions)
            if positions is None:
                m = world[n]
                positions = p.positions @ m[:3, :3].T + m[:3, 3]
            instances.append(Instance(by_key[key], n, positions))
    if skipped_modes:
        notes.append(f"{skipped_modes} point or line primitives are kept as they are, untextured")
    if not instances:
        raise MeshError(f"{name}: the scene draws no triangle mesh (empty, or only points/lines)")
    return Asset(document, primitives, instances, notes)
