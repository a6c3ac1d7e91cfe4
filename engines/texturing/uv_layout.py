"""Which UVs the atlas is baked on, for an asset with several primitives and materials.

The artist's UVs are never destroyed. Two layouts:
- **original**: every drawn primitive has usable UVs (the set its base colour reads) and they all share
  one material. The atlas is baked straight onto those UVs, wrapped (UVs a little or a lot outside [0, 1]
  are kept: the texture repeats, as the sampler does). No new UV set is written.
- **atlas**: several materials, or some primitive without usable UVs. Each material's UV-carrying
  primitives get one cell of the atlas (their UV bounding box mapped affinely into it); primitives
  without usable UVs are unwrapped alone by xatlas (`unwrap.unwrap_uv`) into one more cell. The cell UVs are
  written as a new `TEXCOORD_n` and the textured materials read it; the original sets stay.
UVs spanning more than `MAX_UV_TILES` per axis (or not finite) are not usable: baking would repeat the
atlas that many times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines.texturing.asset import Asset
from engines.texturing.unwrap import unwrap_uv

MAX_UV_TILES = 4.0
_GUTTER = 0.02  # of a cell, on each side


@dataclass
class UVLayout:
    mode: str  # "original" | "atlas"
    bake_uv: list[np.ndarray | None]  # per primitive: (n, 2) float64 in glTF convention (v down)
    texcoord: dict[int | None, int]  # material (None: no material) -> TEXCOORD index the atlas is read with
    new_texcoord: set[int] = field(default_factory=set)  # primitives that get the bake UVs as a new set
    needs_unwrap: list[int] = field(default_factory=list)  # primitives without usable UVs
    vertex_maps: dict[int, np.ndarray] = field(default_factory=dict)  # unwrapped: new vertex -> old
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(uv is not None for uv in self.bake_uv)

    def describe(self) -> dict:
        return {
            "mode": self.mode,
            "unwrap_needed": bool(self.needs_unwrap or self.vertex_maps),
            "unwrapped_primitives": len(self.vertex_maps),
            "new_texcoord_primitives": len(self.new_texcoord),
            "texcoord_by_material": {str(k): v for k, v in self.texcoord.items()},
        }


def usable_uv(uv: np.ndarray | None) -> bool:
    if uv is None or not len(uv) or not np.isfinite(uv).all():
        return False
    span = uv.max(axis=0) - uv.min(axis=0)
    return bool((span <= MAX_UV_TILES).all())


def plan_layout(asset: Asset) -> UVLayout:
    """Decide the layout from the UVs present; the unwrap (if any) happens in `complete_layout`."""
    prims = asset.primitives
    drawn = sorted({i.primitive for i in asset.instances})
    usable = {p: usable_uv(prims[p].uvs.get(prims[p].texcoord)) for p in drawn}
    materials = {prims[p].material for p in drawn}
    notes = []
    for p in drawn:
        uv = prims[p].uvs.get(prims[p].texcoord)
        if uv is not None and not usable[p]:
            notes.append(
                f"mesh {prims[p].mesh} primitive {prims[p].index}: UVs span too many tiles; unwrapped"
            )
    if len(materials) == 1 and all(usable.values()):
        bake = [prims[p].uvs[prims[p].texcoord] if p in usable else None for p in range(len(prims))]
        texcoord = {prims[drawn[0]].material: prims[drawn[0]].texcoord}
        uv = np.concatenate([bake[p] for p in drawn])
        if uv.min() < 0 or uv.max() > 1:
            notes.append("UVs leave [0, 1]: kept, the atlas wraps (repeat) as the sampler does")
        return UVLayout("original", bake, texcoord, notes=notes)
    layout = UVLayout("atlas", [None] * len(prims), {}, notes=notes)
    layout.needs_unwrap = [p for p in drawn if not usable[p]]
    if layout.needs_unwrap and len(layout.needs_unwrap) < len(drawn):
        notes.append(
            f"{len(layout.needs_unwrap)} of {len(drawn)} primitives have no usable UVs: unwrapped alone"
        )
    return layout


def complete_layout(asset: Asset, layout: UVLayout, timeout_s: float, **unwrap: Any) -> UVLayout:
    """Unwrap the primitives that need it (re-indexing them in `asset`) and pack every cell."""
    if layout.mode == "original" or layout.complete:
        return layout
    prims = asset.primitives
    drawn = sorted({i.primitive for i in asset.instances})
    cells: list[list[tuple[int, np.ndarray]]] = []  # each cell: (primitive, uv) pairs, uv in any range
    if layout.needs_unwrap:
        cells.append(_unwrap(asset, layout, timeout_s, **unwrap))
    by_material: dict[int | None, list[int]] = {}
    for p in drawn:
        if p not in layout.vertex_maps:
            by_material.setdefault(prims[p].material, []).append(p)
    for _, members in sorted(by_material.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        cells.append([(p, prims[p].uvs[prims[p].texcoord]) for p in members])
    cols = math.ceil(math.sqrt(len(cells)))
    size = 1.0 / cols
    for c, members in enumerate(cells):
        row, col = divmod(c, cols)
        uv_all = np.concatenate([uv for _, uv in members])
        lo = uv_all.min(axis=0)
        span = float(max((uv_all.max(axis=0) - lo).max(), 1e-12))
        gutter = 0.0 if len(cells) == 1 else _GUTTER * size
        for p, uv in members:
            cell_uv = (uv - lo) / span * (size - 2 * gutter) + [col * size + gutter, row * size + gutter]
            layout.bake_uv[p] = cell_uv
            layout.new_texcoord.add(p)
    for p in drawn:
        m = prims[p].material
        layout.texcoord[m] = max(layout.texcoord.get(m, 0), len(prims[p].uvs))
    return layout


def _unwrap(asset: Asset, layout: UVLayout, timeout_s: float, **unwrap: Any) -> list[tuple[int, np.ndarray]]:
    """xatlas over every primitive without usable UVs at once (first instance's world positions)."""
    prims = asset.primitives
    first = {}
    for inst in asset.instances:
        first.setdefault(inst.primitive, inst)
    todo = layout.needs_unwrap
    vertices, faces, v_off, f_off = [], [], [0], [0]
    for p in todo:
        vertices.append(first[p].positions)
        faces.append(prims[p].triangles + v_off[-1])
        v_off.append(v_off[-1] + len(prims[p].positions))
        f_off.append(f_off[-1] + len(prims[p].triangles))
    all_v = np.concatenate(vertices)
    vertex_map, new_faces, uv = unwrap_uv(
        all_v - all_v.mean(axis=0), np.concatenate(faces), timeout_s, **unwrap
    )
    cell = []
    for k, p in enumerate(todo):
        tri = new_faces[f_off[k] : f_off[k + 1]]
        used, local = np.unique(tri, return_inverse=True)
        vm = vertex_map[used] - v_off[k]
        prim = prims[p]
        prim.positions = prim.positions[vm]
        prim.triangles = local.reshape(-1, 3).astype(np.int64)
        prim.uvs = {s: u[vm] for s, u in prim.uvs.items()}
        for inst in asset.instances:
            if inst.primitive == p:
                inst.positions = inst.positions[vm]
        layout.vertex_maps[p] = vm
        # xatlas's v points up; glTF's points down.
        cell.append((p, np.stack([uv[used, 0], 1.0 - uv[used, 1]], axis=1)))
    layout.needs_unwrap = []
    return cell


def ensure_layout(mesh, timeout_s: float = 180.0, **unwrap: Any):
    """`mesh` with a complete UV layout: unwraps only the primitives without usable UVs.

    A mesh without a document (made in code) goes through `unwrap.ensure_uv`. The input mesh is not
    changed (its primitives are copied before re-indexing).
    """
    from dataclasses import replace

    from engines.texturing.unwrap import ensure_uv

    if mesh.asset is None or mesh.layout is None:
        return ensure_uv(mesh, timeout_s, **unwrap)
    if mesh.layout.complete:
        return mesh
    asset = replace(
        mesh.asset,
        primitives=[replace(p, uvs=dict(p.uvs)) for p in mesh.asset.primitives],
        instances=[replace(i) for i in mesh.asset.instances],
    )
    layout = replace(
        mesh.layout,
        bake_uv=list(mesh.layout.bake_uv),
        texcoord=dict(mesh.layout.texcoord),
        new_texcoord=set(mesh.layout.new_texcoord),
        needs_unwrap=list(mesh.layout.needs_unwrap),
        vertex_maps=dict(mesh.layout.vertex_maps),
        notes=list(mesh.layout.notes),
    )
    complete_layout(asset, layout, timeout_s, **unwrap)
    return replace(mesh, asset=asset).with_layout(layout)
