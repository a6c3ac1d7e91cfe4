"""`realiz3d texture`, `realiz3d bake` and `realiz3d render`: texturing from the command line."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from engines.errors import UserInputError
from service.commands.camera_args import explicit_camera_args
from service.commands.camera_args import load_cameras_arg as _load_cameras
from service.commands.engines import engine_cache_dir
from service.commands.progress_bar import progress_bar
from service.commands.request_args import TEXTURE_FLAGS, add_request_args, add_runtime_args, request_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from engines.requests import TextureRequest

    p = subparsers.add_parser(
        "texture",
        help="texture a mesh from a prompt (views generated, then baked)",
        description="Texture a mesh on this machine. The request flags, their bounds and defaults are "
        "POST /v1/texture's fields (engines.requests.TextureRequest).",
    )
    p.add_argument("mesh", type=Path, help="GLB, glTF (buffers beside it), OBJ, PLY, or a .zip of one")
    add_request_args(p, TextureRequest, TEXTURE_FLAGS)
    p.add_argument(
        "--cameras",
        type=Path,
        default=None,
        metavar="FILE",
        help="cameras.json: explicit cameras instead of the default set (--views, if given, must agree)",
    )
    add_runtime_args(p)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("out/texture"),
        metavar="DIR",
        help="output folder (default out/texture)",
    )
    p.set_defaults(handler=run_texture)

    p = subparsers.add_parser("bake", help="bake given view images into a texture atlas")
    p.add_argument("mesh", type=Path)
    p.add_argument(
        "--views",
        "--images",
        dest="views",
        type=Path,
        required=True,
        metavar="DIR",
        help="a folder of view_XX.png images, one per camera (texture's views/ folder); --images is the same",
    )
    p.add_argument("--cameras", type=Path, required=True, help="cameras.json")
    p.add_argument("--atlas", type=int, default=1024)
    _add_unwrap_arg(p)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=run_bake)

    p = subparsers.add_parser("render", help="geometry maps (and views of a textured mesh) per camera")
    p.add_argument("mesh", type=Path)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--cameras", type=Path, default=None, help="cameras.json")
    group.add_argument(
        "--views",
        type=int,
        default=None,
        metavar="N",
        help="a count, as in texture: the default texturing view set of N views (default 6)",
    )
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--unlit", action="store_true", help="views show pure albedo (for round-trip checks)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=run_render)


def _add_unwrap_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--unwrap",
        choices=("fast", "quality"),  # engines.texturing.unwrap.UNWRAP_MODES (not imported at parse time)
        default="fast",
        help="UV unwrap of a mesh without UVs: fast (default; pieces in parallel) or quality (one "
        "xatlas pass over the whole mesh, several times slower)",
    )


def _limits():
    """The deployment's limits; a mesh on the user's own disk may read the files in its folder."""
    from dataclasses import replace

    from service.settings import get_settings

    return replace(get_settings().mesh_limits(), files_beside=True)


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise UserInputError(f"{name} must be in [{lo}, {hi}], got {value}")


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)


def run_texture(args: argparse.Namespace) -> int:
    from engines.requests import TextureRequest

    cameras = explicit_camera_args(args.cameras, args.num_views, 6) if args.cameras else {}
    request = request_from_args(TextureRequest, args, TEXTURE_FLAGS, **cameras)
    if not args.mesh.is_file():
        raise UserInputError(f"{args.mesh}: no such mesh file")
    from engines.texturing.mesh_io import validate_mesh_bytes

    limits = _limits()
    # The cheap header checks (size, format, face count) before a model is loaded.
    validate_mesh_bytes(args.mesh.read_bytes(), args.mesh.name, limits)
    # Imported here: it pulls in torch and the model code, which `bake` and `render` never need.
    from engines.pipelines import Realiz3DPipeline

    pipe = Realiz3DPipeline.load(
        args.model,
        backend=args.backend,
        adapters=args.adapters,
        device=args.device,
        precision=args.precision,
        engine_cache_dir=engine_cache_dir(args.engine_cache),
        cuda_graphs=args.cuda_graphs,
    )
    bar = progress_bar(request.steps, "denoise")
    with bar as update:
        result = pipe.texture(request, args.mesh, progress=update, stage_progress=bar.stage, limits=limits)
    files = result.save(args.out)
    print(f"wrote {len(files)} files to {args.out}")
    if surface := result.meta.get("surface"):
        print(
            f"surface: {surface['from_views']:.1%} from the {result.meta['num_views']} views, "
            f"{surface['inpainted']:.1%} from {result.meta['views_used'] - result.meta['num_views']} planned "
            f"(inpainted) views, {surface['filled']:.1%} filled"
        )
    _warn(result.meta.get("warnings", []))
    from service.commands.generate import engine_cache_summary

    cache_summary = engine_cache_summary(pipe)
    if cache_summary:
        print(cache_summary)
    return 0


def run_bake(args: argparse.Namespace) -> int:
    from PIL import Image

    from engines.texturing.mesh_io import load_mesh
    from engines.texturing.pipeline import (
        bake_images,
        coverage_warnings,
        save_textured,
        surface_shares,
        uv_report,
    )
    from engines.texturing.uv_layout import ensure_layout

    _check_range("--atlas", args.atlas, 64, 4096)
    cameras, _ = _load_cameras(args.cameras)
    if not args.views.is_dir():
        raise UserInputError(f"{args.views}: not a folder of view images")
    paths = sorted(args.views.glob("view_*.png"))
    if len(paths) != len(cameras):
        raise UserInputError(
            f"{args.views} holds {len(paths)} view_*.png images but {args.cameras} has {len(cameras)} cameras"
        )
    images = []
    for path in paths:
        try:
            image = np.asarray(Image.open(path).convert("RGB"))
        except OSError as e:
            raise UserInputError(f"{path}: cannot read image ({e})") from None
        if image.shape[0] != image.shape[1] or (images and image.shape != images[0].shape):
            raise UserInputError(f"{path}: views must be square and all the same size, got {image.shape[:2]}")
        images.append(image)
    limits = _limits()
    timings = {}
    start = time.perf_counter()
    bar = progress_bar(100, "unwrap")
    with bar:
        mesh = ensure_layout(
            load_mesh(args.mesh, limits),
            limits.unwrap_timeout_s,
            mode=args.unwrap,
            atlas_size=args.atlas,
            progress=lambda done, total: bar.stage("unwrap", done / max(total, 1)),
        )
    timings["load_unwrap"] = time.perf_counter() - start
    start = time.perf_counter()
    atlas, baked = bake_images(mesh, images, cameras, args.atlas)
    timings["bake"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    save_textured(mesh, atlas, args.out)
    meta = {
        "kind": "bake",
        "mesh": mesh.describe(),
        "uv": uv_report(mesh, baked),
        "views": [p.name for p in paths],
        "atlas_size": args.atlas,
        "unwrap": args.unwrap if mesh.uv_source == "xatlas" else None,  # None: the mesh's own UVs
        "coverage": round(baked.coverage_fraction, 4),
        "surface": surface_shares(baked),
        "warnings": coverage_warnings(baked.coverage_fraction, int(baked.chart.sum())),
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2))
    print(
        f"baked {len(images)} views into {args.out / 'texture.png'} (coverage {baked.coverage_fraction:.1%})"
    )
    _warn(meta["warnings"])
    return 0


def _warn(warnings: list[str]) -> None:
    """Each warning of meta.json on stderr: a bake that coloured (almost) nothing is not a plain success."""
    import sys

    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def run_render(args: argparse.Namespace) -> int:
    from engines.sampling.cameras import cameras_to_json, texturing_cameras
    from engines.texturing.appearance import has_base_colour_texture, render_base_colour
    from engines.texturing.mesh_io import load_mesh
    from engines.texturing.rasterize import RayCaster, map_to_u8, render_shaded

    _check_range("--resolution", args.resolution, 16, 2048)
    if args.cameras is not None:
        cameras, _ = _load_cameras(args.cameras)
    else:
        views = args.views if args.views is not None else 6
        _check_range("--views", views, 1, 64)
        cameras = texturing_cameras(views)
    mesh = load_mesh(args.mesh, _limits())
    textured = has_base_colour_texture(mesh)
    if args.unlit and not textured:
        raise UserInputError(f"{args.mesh}: --unlit needs a mesh with UVs and a base-colour texture")
    has_material = mesh.asset is not None and any(p.material is not None for p in mesh.asset.primitives)
    rasterizer = RayCaster(mesh.normalized_vertices, mesh.faces)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for i, cam in enumerate(cameras):
        maps = rasterizer.render(cam, args.resolution)
        mask = maps.mask
        _save_png(map_to_u8((maps.normal + 1) / 2, mask), out / f"normal_{i:02d}.png")
        _save_png(map_to_u8((maps.position + 1) / 2, mask), out / f"position_{i:02d}.png")
        _save_png((mask * 255).astype(np.uint8), out / f"mask_{i:02d}.png")
        _save_png(_depth_u16(maps.depth, mask), out / f"depth_{i:02d}.png")
        # Each face through its own material (texture, factor, vertex colours), as a glTF viewer shows it.
        albedo = render_base_colour(maps, mesh) if textured or has_material else None
        if args.unlit:
            _save_png(albedo, out / f"view_{i:02d}.png")
        else:
            _save_png(render_shaded(maps, albedo), out / f"view_{i:02d}.png")
    (out / "cameras.json").write_text(json.dumps(cameras_to_json(cameras, args.resolution), indent=2))
    kind = "unlit views" if args.unlit else "shaded previews"
    print(f"rendered {len(cameras)} cameras (geometry maps, {kind}) into {out}")
    return 0


def _depth_u16(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """16-bit depth, near = bright, background 0, scaled to this view's depth range."""
    out = np.zeros(depth.shape, np.uint16)
    if mask.any():
        lo, hi = float(depth[mask].min()), float(depth[mask].max())
        out[mask] = (1 + 65534 * (hi - depth[mask]) / max(hi - lo, 1e-9)).astype(np.uint16)
    return out
