"""Geometry benchmark of a texture job: `realiz3d bench geometry` / `python -m engines.bench.geometry`.

Measures the CPU work around the diffusion model on a ~100k-face mesh that already has UVs: build the
ray-casting BVH, render geometry maps for 8 views, rasterise the UV atlas, bake the views, fill and pad
(the goal: <= 3 s on 2 CPU cores), and, reported apart, writing texture.png + textured.glb and the xatlas
unwrap of a mesh without UVs (on a smaller mesh: xatlas takes over a minute on 100k faces).

The mesh is a bumpy torus whose (u, v) parameters are its UVs: one chart covering the whole atlas, so
every one of the atlas' texels is baked (a worst case next to xatlas layouts, which fill 60-80%), and a hole
that makes the views occlude each other.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from engines.bench import OUT_DIR
from engines.bench.machine import describe, machine
from engines.sampling.cameras import texturing_cameras
from engines.texturing.bake import bake_views
from engines.texturing.export import write_texture_png, write_textured_glb
from engines.texturing.fill import fill_over_surface
from engines.texturing.mesh_io import FIT_RADIUS, LoadedMesh
from engines.texturing.rasterize import RayCaster, geometry_channels, rasterize_uv, render_views
from engines.texturing.unwrap import unwrap_uv

DEFAULT_OUT = OUT_DIR


def bumpy_torus(faces: int = 100_000, seed: int = 0) -> LoadedMesh:
    """A torus with random bumps and (u, v) UVs, about `faces` triangles, normalised like a loaded mesh."""
    rng = np.random.default_rng(seed)
    around = int(round(np.sqrt(faces / 2 * 1.25)))
    tube = max(int(round(faces / 2 / around)), 3)
    u = np.linspace(0, 1, around + 1)  # the seam column is duplicated so UVs can run 0..1
    v = np.linspace(0, 1, tube + 1)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    bumps = sum(
        a * np.sin(2 * np.pi * (k * uu + rng.uniform())) * np.cos(2 * np.pi * (m * vv + rng.uniform()))
        for a, k, m in [(0.05, 7, 3), (0.03, 13, 5), (0.015, 29, 11)]
    )
    r = 0.4 + bumps
    theta, phi = 2 * np.pi * uu, 2 * np.pi * vv
    xyz = np.stack(
        [(1 + r * np.cos(phi)) * np.cos(theta), r * np.sin(phi), (1 + r * np.cos(phi)) * np.sin(theta)], -1
    )
    idx = np.arange((around + 1) * (tube + 1)).reshape(around + 1, tube + 1)
    a, b = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel()
    c, d = idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    tri = np.concatenate([np.stack([a, c, b], 1), np.stack([a, d, c], 1)])
    vertices = xyz.reshape(-1, 3)
    uv = np.stack([uu.ravel(), vv.ravel()], -1)
    center = (vertices.min(0) + vertices.max(0)) / 2
    scale = FIT_RADIUS / float(np.linalg.norm(vertices - center, axis=1).max())
    return LoadedMesh(vertices, tri.astype(np.int64), uv, center, scale, source="bumpy_torus")


def _normal_colours(geometry: np.ndarray) -> list[np.ndarray]:
    """Stand-in views (normals as colours): the bake's cost does not depend on what the pixels show."""
    rgb = (geometry[:, 0:3] * 0.5 + 0.5) * geometry[:, 6:7]
    return [np.ascontiguousarray((g.transpose(1, 2, 0) * 255).astype(np.uint8)) for g in rgb]


def _time_geometry(mesh: LoadedMesh, views: int, resolution: int, atlas_size: int) -> dict[str, float]:
    t: dict[str, float] = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    vertices = mesh.normalized_vertices
    rasterizer = RayCaster(vertices, mesh.faces)
    t["bvh_build"] = time.perf_counter() - start
    mark = time.perf_counter()
    cameras = texturing_cameras(views)
    maps = render_views(rasterizer, cameras, resolution)
    geometry = geometry_channels(maps)
    t["render_views"] = time.perf_counter() - mark
    images = _normal_colours(geometry)
    mark = time.perf_counter()
    uv_maps = rasterize_uv(mesh.uv, mesh.faces, atlas_size)
    t["uv_raster"] = time.perf_counter() - mark
    mark = time.perf_counter()
    baked = bake_views(uv_maps, vertices, mesh.faces, images, maps)
    t["bake"] = time.perf_counter() - mark
    mark = time.perf_counter()
    atlas = fill_over_surface(baked, vertices, mesh.faces)
    t["fill"] = time.perf_counter() - mark
    t["geometry_total"] = time.perf_counter() - start
    # CPU seconds of this process: every stage runs on one thread, so on a shared machine this is what
    # the wall time would be without the neighbours.
    t["geometry_total_cpu"] = time.process_time() - cpu_start
    with tempfile.TemporaryDirectory() as tmp:
        mark = time.perf_counter()
        write_texture_png(atlas, Path(tmp) / "texture.png")
        write_textured_glb(mesh, atlas, Path(tmp) / "textured.glb")
        t["export"] = time.perf_counter() - mark
    t["coverage"] = baked.coverage_fraction
    return t


def _time_unwrap(faces: int) -> dict[str, float]:
    import trimesh

    subdiv = max(int(round(np.log(faces / 20) / np.log(4))), 1)  # icosphere: 20 * 4^n faces
    sphere = trimesh.creation.icosphere(subdivisions=subdiv)
    start = time.perf_counter()
    unwrap_uv(sphere.vertices, sphere.faces, timeout_s=600)
    return {"faces": int(len(sphere.faces)), "seconds": time.perf_counter() - start}


def run_geometry_benchmark(
    out_dir: str | Path = DEFAULT_OUT,
    *,
    faces: int = 100_000,
    views: int = 8,
    view_resolution: int = 512,
    atlas_size: int = 1024,
    repeats: int = 3,
    unwrap_faces: int = 20_000,
    goal_s: float = 3.0,
) -> dict:
    """Run the geometry benchmark, write geometry.json and geometry.md into `out_dir`, print the table."""
    mesh = bumpy_torus(faces)
    runs = [_time_geometry(mesh, views, view_resolution, atlas_size) for _ in range(repeats)]
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    unwrap = _time_unwrap(unwrap_faces) if unwrap_faces > 0 else None
    result = {
        "benchmark": "texturing geometry (render + bake, no diffusion)",
        "mesh": {
            "kind": "bumpy torus with UVs",
            "faces": mesh.num_faces,
            "vertices": int(len(mesh.vertices)),
        },
        "views": views,
        "view_resolution": view_resolution,
        "atlas_size": atlas_size,
        "repeats": repeats,
        "median_s": {k: round(v, 4) for k, v in median.items()},
        "runs_s": [{k: round(v, 4) for k, v in r.items()} for r in runs],
        "goal_s": goal_s,
        "meets_goal": median["geometry_total"] <= goal_s,
        "meets_goal_cpu_time": median["geometry_total_cpu"] <= goal_s,
        "unwrap": {k: round(v, 3) for k, v in unwrap.items()} if unwrap else None,
        "machine": {**machine(), "numpy": np.__version__},  # after the runs (its load average)
        "rasterizer": "embreex ray casting for views, numpy edge functions for the UV atlas "
        "(engines/texturing/rasterize.py)",
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "geometry.json").write_text(json.dumps(result, indent=2) + "\n")
    md = _markdown(result)
    (out / "geometry.md").write_text(md)
    print(md)
    return result


def _markdown(r: dict) -> str:
    m = r["median_s"]
    lines = [
        "# Texturing geometry benchmark",
        "",
        f"Mesh: {r['mesh']['kind']}, {r['mesh']['faces']} faces. {r['views']} views at "
        f"{r['view_resolution']}x{r['view_resolution']}, atlas {r['atlas_size']}x{r['atlas_size']}. "
        f"Median of {r['repeats']} runs. Machine, after the runs: {describe(r['machine'])} (other jobs "
        f"share the cores: wall times grow with the load; the CPU-seconds row does not). Rasterizer: "
        f"{r['rasterizer']}.",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    for key in ("bvh_build", "render_views", "uv_raster", "bake", "fill"):
        lines.append(f"| {key} | {m[key]:.3f} |")
    verdict = "meets" if r["meets_goal"] else "misses"
    lines.append(
        f"| **geometry total** | **{m['geometry_total']:.3f}** ({verdict} the {r['goal_s']:g} s goal) |"
    )
    lines.append(f"| geometry total, CPU seconds of the process | {m['geometry_total_cpu']:.3f} |")
    lines.append(f"| export (texture.png + textured.glb, apart) | {m['export']:.3f} |")
    if r["unwrap"]:
        lines.append(
            f"| xatlas unwrap in a subprocess, {r['unwrap']['faces']} faces (apart) | {r['unwrap']['seconds']:.2f} |"
        )
    lines += ["", f"Baked coverage of on-mesh texels: {m['coverage']:.1%}.", ""]
    lines += [
        "Reproduce: `OMP_NUM_THREADS=1 realiz3d bench geometry`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.bench.geometry", description=__doc__.splitlines()[0])
    p.add_argument("--faces", type=int, default=100_000)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--atlas", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--unwrap-faces", type=int, default=20_000, help="0 skips the unwrap measurement")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    run_geometry_benchmark(
        a.out,
        faces=a.faces,
        views=a.views,
        view_resolution=a.resolution,
        atlas_size=a.atlas,
        repeats=a.repeats,
        unwrap_faces=a.unwrap_faces,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
