"""Texture a mesh: load -> unwrap -> render geometry maps -> generate views -> bake -> fill -> export.

`texture_mesh` is the whole texturing job except the diffusion model, which comes in as the
`generate_views` callable; `Realiz3DPipeline.texture` passes the geometry-conditioned sampler, tests pass
a fake. `bake_images` is the part `realiz3d bake` needs (views made elsewhere).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from engines.errors import JobCanceled
from engines.requests import MAX_VIEWS, CancelCheck, ProgressCallback, StageCallback, TextureRequest
from engines.sampling.cameras import CONVENTION, Camera, cameras_to_json, texturing_cameras
from engines.sampling.known import KnownViews
from engines.texturing.appearance import with_alpha
from engines.texturing.bake import BakeResult, BakeSettings, InstanceCopies, bake_views, texel_surface
from engines.texturing.export import write_texture_png, write_textured_glb, write_textured_obj
from engines.texturing.fill import fill_over_surface
from engines.texturing.mesh_io import LoadedMesh, MeshLimits, load_mesh
from engines.texturing.planning import (
    CONTEXT_VIEWS,
    PlannedView,
    blend_band,
    context_order,
    context_size,
    known_view,
    merge_bakes,
    plan_views,
    uncovered_maps,
)
from engines.texturing.rasterize import (
    RayCaster,
    UVMaps,
    geometry_channels,
    mirrored_faces,
    rasterize_uv,
    render_views,
)
from engines.texturing.uv_layout import ensure_layout

# generate_views(cameras, geometry (V, 7, H, W) float32, resolution[, known]) -> V uint8 (H, W, 3) images.
# `known` (KnownViews) is passed, as a fourth argument, only for planned views: pixels to hold (inpainting).
GenerateViews = Callable[..., list[np.ndarray]]

STAGES = ("load", "unwrap", "render", "generate", "bake", "plan", "inpaint", "fill", "export")
#: Above this share of the surface left to the fill, meta.json, the job and the CLI warn.
HIGH_FILL = 0.5
DEFAULT_VIEW_RESOLUTION = 512
#: Below this share of the surface coloured from views, meta.json and the CLI warn.
LOW_COVERAGE = 0.05


@dataclass
class TextureResult:
    """A finished texturing job; `save(out_dir)` writes its artifacts."""

    atlas: np.ndarray  # (S, S, 3) uint8
    views: list[np.ndarray]  # generated views, uint8 (H, W, 3)
    cameras: list[Camera]
    timings: dict[str, float]
    meta: dict
    mesh: LoadedMesh
    coverage: np.ndarray | None = field(default=None, repr=False)  # (S, S) bool, before filling

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write texture.png, textured.glb (+ textured.obj/.mtl for OBJ input), views/view_XX.png,
        cameras.json, meta.json; return their paths."""
        start = time.perf_counter()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = save_textured(self.mesh, self.atlas, out)
        (out / "views").mkdir(exist_ok=True)
        for i, view in enumerate(self.views):
            path = out / "views" / f"view_{i:02d}.png"
            Image.fromarray(np.ascontiguousarray(view[..., :3], dtype=np.uint8)).save(path)
            files.append(path)
        resolution = int(self.views[0].shape[0]) if self.views else DEFAULT_VIEW_RESOLUTION
        cams = out / "cameras.json"
        cams.write_text(json.dumps(cameras_to_json(self.cameras, resolution), indent=2))
        files.append(cams)
        self.timings["export"] = time.perf_counter() - start
        self.timings["total"] = sum(v for k, v in self.timings.items() if k in STAGES)
        self.meta["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        meta = out / "meta.json"
        meta.write_text(json.dumps(self.meta, indent=2, default=str))
        files.append(meta)
        return files


def save_textured(mesh: LoadedMesh, atlas: np.ndarray, out: Path) -> list[Path]:
    """texture.png and textured.glb; an OBJ input also gets textured.obj + textured.mtl reading texture.png."""
    files = [
        write_texture_png(atlas, out / "texture.png"),
        write_textured_glb(mesh, atlas, out / "textured.glb"),
    ]
    if mesh.source_format == "obj" or mesh.source.lower().endswith(".obj"):  # a zipped OBJ too
        files += write_textured_obj(mesh, "texture.png", out / "textured.obj")
    return files


def uv_maps_of(mesh: LoadedMesh, atlas_size: int) -> tuple[UVMaps, InstanceCopies | None]:
    """The mesh rasterised in UV space, each primitive's first instance only, and where its other
    instances are (they share its UVs: one rasterisation, baked copy by copy, memory bounded by the atlas)."""
    if mesh.asset is None or len(mesh.asset.instances) == len({i.primitive for i in mesh.asset.instances}):
        return rasterize_uv(mesh.uv, mesh.faces, atlas_size), None
    starts: dict[int, list[int]] = {}
    offset = 0
    for inst in mesh.asset.instances:
        starts.setdefault(inst.primitive, []).append(offset)
        offset += len(mesh.asset.primitives[inst.primitive].triangles)
    groups = list(starts)
    offsets = np.full((len(groups), max(len(v) for v in starts.values())), -1, np.int64)
    group = np.full(len(mesh.faces), -1, np.int64)
    first = []
    for g, p in enumerate(groups):
        offsets[g, : len(starts[p])] = starts[p]
        n = len(mesh.asset.primitives[p].triangles)
        group[starts[p][0] : starts[p][0] + n] = g
        first.append(np.arange(starts[p][0], starts[p][0] + n))
    first_faces = np.concatenate(first)
    maps = rasterize_uv(mesh.uv, mesh.faces[first_faces], atlas_size)
    on = maps.face_id >= 0
    maps.face_id[on] = first_faces[maps.face_id[on]]
    maps.extra_face = first_faces[maps.extra_face].astype(np.int32)
    return maps, InstanceCopies(offsets, group)


def instance_notes(copies: InstanceCopies | None) -> list[str]:
    if copies is None:
        return []
    shared = int((copies.offsets >= 0).sum(axis=1).max())
    return [
        f"instances share their primitive's UVs (up to {shared} copies): rasterised once, each texel "
        "baked from the copy its views see best"
    ]


def coverage_warnings(coverage: float, chart_texels: int) -> list[str]:
    """What meta.json and the CLI say when the views coloured little or nothing of the surface."""
    if chart_texels == 0:
        return ["the atlas holds no texel of the mesh: nothing could be baked"]
    if coverage == 0:
        return [
            "no view coloured any texel (coverage 0): the atlas is the surface fill only; check that the "
            "views and cameras belong to this mesh"
        ]
    if coverage < LOW_COVERAGE:
        return [f"the views coloured only {coverage:.1%} of the surface; the rest is filled"]
    return []


def surface_shares(baked: BakeResult, inpainted: np.ndarray | None = None) -> dict:
    """Shares of on-mesh texels (they sum to 1): from the requested views, from planned (inpainted) views,
    or filled. `baked` is the bake of the requested views; `inpainted` (S, S) the texels planned views added."""
    chart = max(int(baked.chart.sum()), 1)
    from_views = round(baked.coverage_fraction, 4)
    inp = round(float(inpainted.sum()) / chart, 4) if inpainted is not None else 0.0
    return {"from_views": from_views, "inpainted": inp, "filled": round(max(1.0 - from_views - inp, 0.0), 4)}


def fill_warnings(surface: dict) -> list[str]:
    """A job whose surface is mostly the fill succeeds, with this warning."""
    if surface["filled"] > HIGH_FILL and surface["from_views"] + surface["inpainted"] > 0:
        return [
            f"{surface['filled']:.0%} of the surface is the surface fill (no view coloured it: "
            f"{surface['from_views']:.0%} from the requested views, {surface['inpainted']:.0%} from planned views)"
        ]
    return []


def uv_report(mesh: LoadedMesh, baked: BakeResult) -> dict:
    """What meta.json says about the UVs the atlas was baked on (overlaps are baked from the best view)."""
    return {
        "overlapping_texels": baked.overlapping_texels,
        "overlapping_fraction": round(baked.overlapping_texels / max(int(baked.chart.sum()), 1), 4),
        "mirrored_faces": mirrored_faces(mesh.uv, mesh.faces, mesh.vertices),
    }


def _overlap_notes(report: dict) -> list[str]:
    if not report["overlapping_texels"]:
        return []
    return [
        f"{report['overlapping_texels']} texels are shared by several faces (overlapping or mirrored UVs, "
        f"{report['mirrored_faces']} mirrored faces): each is baked from the face its views see best"
    ]


class _Stages:
    """Times named stages, reports progress at their boundaries and honours cancellation before each."""

    def __init__(
        self,
        progress: ProgressCallback | None,
        should_cancel: CancelCheck | None,
        stage_progress: StageCallback | None = None,
    ) -> None:
        self.timings: dict[str, float] = {}
        self._progress = progress
        self._should_cancel = should_cancel
        self.stage_progress = stage_progress

    def check_cancel(self, name: str) -> None:
        if self._should_cancel is not None and self._should_cancel():
            raise JobCanceled(f"texturing canceled before stage '{name}'")

    def report(self, done: int) -> None:
        if self._progress is not None:
            self._progress(done, len(STAGES))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.check_cancel(name)
        if self.stage_progress is not None:
            self.stage_progress(name, 0.0)
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        if self.stage_progress is not None:
            self.stage_progress(name, 1.0)
        self.report(STAGES.index(name) + 1)


def bake_images(
    mesh: LoadedMesh,
    images: list[np.ndarray],
    cameras: list[Camera],
    atlas_size: int,
    *,
    view_weights: list[float] | None = None,
    settings: BakeSettings | None = None,
    rasterizer: RayCaster | None = None,
) -> tuple[np.ndarray, BakeResult]:
    """Bake images seen from `cameras` into a filled, padded uint8 atlas of a mesh that has UVs."""
    if mesh.uv is None:
        raise ValueError("bake_images needs a mesh with UVs (call uv_layout.ensure_layout first)")
    if len(images) != len(cameras):
        raise ValueError(f"{len(images)} images for {len(cameras)} cameras")
    vertices = mesh.normalized_vertices
    rasterizer = rasterizer or RayCaster(vertices, mesh.faces)
    view_maps = [rasterizer.render(cam, img.shape[0]) for cam, img in zip(cameras, images, strict=True)]
    uv_maps, copies = uv_maps_of(mesh, atlas_size)
    baked = bake_views(uv_maps, vertices, mesh.faces, images, view_maps, view_weights, settings, copies)
    atlas = fill_over_surface(baked, vertices, mesh.faces)
    return with_alpha(atlas, mesh, baked.face_id, baked.bary), baked


def _as_view_image(image: np.ndarray, resolution: int, index: int) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[0] != resolution or img.shape[1] != resolution or img.shape[2] < 3:
        raise ValueError(
            f"generate_views returned view {index} of shape {img.shape}, want {resolution}^2 x 3"
        )
    if img.dtype != np.uint8:
        raise ValueError(f"generate_views returned view {index} as {img.dtype}, want uint8")
    return np.ascontiguousarray(img[..., :3])


def texture_mesh(
    request: TextureRequest,
    mesh: str | Path | LoadedMesh,
    generate_views: GenerateViews,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    out_dir: str | Path | None = None,
    *,
    limits: MeshLimits | None = None,
    resolution: int | None = None,
    cameras: list[Camera] | None = None,
    view_weights: list[float] | None = None,
    bake_settings: BakeSettings | None = None,
    stage_progress: StageCallback | None = None,
    views_per_call: int = MAX_VIEWS,
    view_counts: list[int] | None = None,
) -> TextureResult:
    """Run a texturing job around a view generator; save into `out_dir` when given.

    After the requested views are baked, views are planned for what they missed (`request.coverage_target`,
    `request.max_views`; `planning.py`) and generated with what is known held (`generate_views(cameras,
    geometry, resolution, known)`), at most `views_per_call` views per call: the planned ones plus
    earlier views as held context (1: no context, for a model whose views do not attend to each other).
    `view_counts`: the view counts the model serves (None: any); each call is made one of them, the
    difference held context.

    Views are rendered at `request.view_resolution`, else `resolution` (the model's), else 512. Cameras
    default to `texturing_cameras(request.num_views)`. `progress(done, 7)` is called after each stage
    (load, unwrap, render, generate, bake, fill, export: export is `TextureResult.save`, run here only
    with `out_dir`); `should_cancel` is polled before each stage (the generator polls it per denoising
    step itself). `stage_progress(name, fraction)` is told when each stage starts (0) and ends (1) and,
    during the UV unwrap, how far the unwrap child has got. `timings` has seconds per stage and their "total". Raises
    `MeshError` for bad meshes and `JobCanceled` when canceled.
    """
    limits = limits or MeshLimits()
    stages = _Stages(progress, should_cancel, stage_progress)
    res = int(request.view_resolution or resolution or DEFAULT_VIEW_RESOLUTION)
    # Visibility (silhouettes, depth edges) is decided at the bake resolution, not the model's.
    bake_res = max(int(request.bake_resolution), res)
    cams = list(cameras) if cameras is not None else texturing_cameras(request.num_views)
    if len(cams) != request.num_views:
        raise ValueError(f"{len(cams)} cameras for num_views={request.num_views}")

    with stages.stage("load"):
        loaded = mesh if isinstance(mesh, LoadedMesh) else load_mesh(mesh, limits)
    with stages.stage("unwrap"):
        # `unwrap`: mode (fast|quality) and atlas size of the unwrap, for meshes that need one
        loaded = ensure_layout(
            loaded,
            limits.unwrap_timeout_s,
            mode=request.unwrap,
            atlas_size=request.atlas_size,
            should_cancel=should_cancel,
            progress=(lambda done, total: stage_progress("unwrap", done / max(total, 1)))
            if stage_progress is not None
            else None,
        )
    with stages.stage("render"):
        vertices = loaded.normalized_vertices
        rasterizer = RayCaster(vertices, loaded.faces)
        view_maps = render_views(rasterizer, cams, res)
        geometry = geometry_channels(view_maps)
        bake_maps = view_maps if bake_res == res else render_views(rasterizer, cams, bake_res, shading=False)
    with stages.stage("generate"):
        raw = generate_views(cams, geometry, res)
        if len(raw) != len(cams):
            raise ValueError(f"generate_views returned {len(raw)} views for {len(cams)} cameras")
        views = [_as_view_image(v, res, i) for i, v in enumerate(raw)]
    with stages.stage("bake"):
        uv_maps, copies = uv_maps_of(loaded, request.atlas_size)
        baked = bake_views(
            uv_maps,
            vertices,
            loaded.faces,
            views,
            bake_maps,
            view_weights,
            bake_settings,
            copies,
            None if bake_maps is view_maps else view_maps,
        )
    first = baked
    # where the requested views' weight falls to 0 at the edge of their coverage, planned views blend in
    band = blend_band(first, (bake_settings or BakeSettings()).blend_band)
    with stages.stage("plan"):
        planned: list[PlannedView] = []
        expected = baked.coverage_fraction
        budget = request.max_views - len(cams)
        if budget > 0 and baked.coverage_fraction < request.coverage_target:
            flat, points, normals = texel_surface(uv_maps, vertices, loaded.faces)
            planned, expected = plan_views(
                rasterizer,
                points,
                normals,
                baked.coverage.reshape(-1)[flat],
                coverage_target=request.coverage_target,
                budget=budget,
                settings=bake_settings,
                seed=request.seed or 0,
            )
    all_cams, all_views = list(cams), list(views)
    with stages.stage("inpaint"):
        geoms = list(geometry)
        # planned views per call: all but a few held context views (the nearest earlier ones)
        batch = max(1, views_per_call - CONTEXT_VIEWS) if views_per_call > 1 else 1
        if view_counts:
            batch = min(batch, max(view_counts))
        todo = [p.camera for p in planned]
        for b0 in range(0, len(todo), batch):
            stages.check_cancel("inpaint")
            new_cams = todo[b0 : b0 + batch]
            model_maps = render_views(rasterizer, new_cams, res)
            maps = (
                model_maps if bake_res == res else render_views(rasterizer, new_cams, bake_res, shading=False)
            )
            held = [known_view(m, loaded.uv, loaded.faces, baked.atlas, baked.coverage, res) for m in maps]
            size = context_size(len(new_cams), len(all_cams), views_per_call, view_counts)
            context = context_order(all_cams, new_cams)[:size]
            known = KnownViews(
                np.stack([all_views[i] for i in context] + [h[0] for h in held]),
                np.stack([np.ones((res, res), bool) for _ in context] + [h[1] for h in held]),
            )
            call_cams = [all_cams[i] for i in context] + new_cams
            call_geom = np.concatenate(
                [np.stack([geoms[i] for i in context] + list(geometry_channels(model_maps)))]
            )
            raw = generate_views(call_cams, call_geom, res, known)
            if len(raw) != len(call_cams):
                raise ValueError(f"generate_views returned {len(raw)} views for {len(call_cams)} cameras")
            new_views = [_as_view_image(v, res, i) for i, v in enumerate(raw)][len(context) :]
            more = bake_views(
                uncovered_maps(uv_maps, baked.coverage & ~(band > 0)),
                vertices,
                loaded.faces,
                new_views,
                maps,
                None,
                bake_settings,
                copies,
                None if maps is model_maps else model_maps,
            )
            baked, _ = merge_bakes(baked, more, band)
            all_cams += new_cams
            all_views += new_views
            geoms += list(call_geom[len(context) :])
            if stage_progress is not None:
                stage_progress("inpaint", min(b0 + batch, len(todo)) / len(todo))
    inpainted = baked.coverage & ~first.coverage
    with stages.stage("fill"):
        atlas = fill_over_surface(baked, vertices, loaded.faces)
        atlas = with_alpha(atlas, loaded, baked.face_id, baked.bary)
    stages.timings["total"] = sum(stages.timings.values())
    uvs = uv_report(loaded, baked)
    surface = surface_shares(first, inpainted)
    warnings = coverage_warnings(first.coverage_fraction, int(first.chart.sum())) + fill_warnings(surface)

    meta = {
        "kind": "texture",
        "request": request.model_dump(mode="json"),
        "mesh": {
            **loaded.describe(),
            "notes": [*loaded.notes, *_overlap_notes(uvs), *instance_notes(copies), *warnings],
        },
        "uv": uvs,
        "atlas_size": request.atlas_size,
        "atlas_channels": "RGBA" if atlas.shape[-1] == 4 else "RGB",
        "view_resolution": res,
        "bake_resolution": bake_res,
        "num_views": len(cams),
        "views_used": len(all_cams),
        "coverage": round(first.coverage_fraction, 4),
        "surface": surface,
        "planning": {
            "coverage_target": request.coverage_target,
            "max_views": request.max_views,
            "planned_views": [p.describe() for p in planned],
            "expected_covered": round(expected, 4),
        },
        "warnings": warnings,
        "view_weights": view_weights,
        "bake": asdict(bake_settings or BakeSettings()),
        "camera_convention": CONVENTION,
    }
    result = TextureResult(atlas, all_views, all_cams, stages.timings, meta, loaded, baked.coverage)
    if out_dir is not None:
        # save() times itself as the "export" stage (it is also what callers run later without out_dir).
        stages.check_cancel("export")
        result.save(out_dir)
    stages.report(len(STAGES))
    return result
