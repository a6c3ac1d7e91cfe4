"""UV unwrap benchmark: `realiz3d bench unwrap` / `python -m engines.bench.unwrap`.

Times `unwrap_uv` (the real thing: child process, .npy hand-over) in its two modes, `fast` and
`quality`, on meshes made here at 10k / 50k / 100k / 300k faces, and measures each atlas with
`engines.texturing.atlas_quality` (charts, utilisation at the atlas size, texel-density spread, seam
length). The two modes run alternately on each mesh (which one goes first swaps from mesh to mesh) so
that the neighbours' load on a shared machine disturbs both alike; CPU seconds (the child and the
processes it forks) are reported beside wall seconds because they do not grow with that load.

The meshes:
- `sphere`: a UV sphere (regular quads, one smooth surface);
- `torus_knot`: a (2, 3) torus knot tube, long and winding (xatlas' slowest shape per face here);
- `blob`: a cube subdivided into a grid, pushed onto a bumpy sphere and jittered like a scan.

With `--job-faces N`, one whole texture job (default model, 4 views) also runs on an N-face blob saved
as PLY without UVs, in each mode, and its stage timings are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from engines.bench import OUT_DIR
from engines.bench.machine import describe, machine
from engines.errors import UserInputError
from engines.texturing.unwrap import UNWRAP_MODES

DEFAULT_OUT = OUT_DIR
SIZES = (10_000, 50_000, 100_000, 300_000)
# Everything below this line of unwrap.md is kept when the benchmark rewrites the file.
NOTES_MARKER = "<!-- notes: kept when the benchmark rewrites this file -->"


def _grid_faces(n: int, m: int, wrap_u: bool, wrap_v: bool) -> np.ndarray:
    """Two triangles per cell of an n x m grid of vertices indexed [i, j] (wrapping where asked)."""
    nu, nv = (n if wrap_u else n + 1), (m if wrap_v else m + 1)
    idx = np.arange(nu * nv).reshape(nu, nv)
    ii, jj = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
    i1, j1 = (ii + 1) % nu, (jj + 1) % nv
    a, b, c, d = idx[ii, jj].ravel(), idx[i1, jj].ravel(), idx[i1, j1].ravel(), idx[ii, j1].ravel()
    return np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)]).astype(np.int64)


def sphere(faces: int) -> tuple[np.ndarray, np.ndarray]:
    """A UV sphere of about `faces` triangles."""
    import trimesh

    rings = max(int(round(np.sqrt(faces / 8))), 4)
    mesh = trimesh.creation.uv_sphere(count=[rings, 2 * rings])
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)


def torus_knot(faces: int, p: int = 2, q: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A (p, q) torus-knot tube of about `faces` triangles."""
    around = max(int(round(np.sqrt(faces / 24))), 3)
    along = max(int(round(faces / 2 / around)), 3)

    def curve(t: np.ndarray) -> np.ndarray:
        r = 2 + np.cos(q * t)
        return np.stack([r * np.cos(p * t), r * np.sin(p * t), -np.sin(q * t)], -1)

    t = np.linspace(0, 2 * np.pi, along, endpoint=False)
    tangent = curve(t + 1e-4) - curve(t - 1e-4)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    normal = np.cross(tangent, [0.0, 0.0, 1.0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    binormal = np.cross(tangent, normal)
    s = np.linspace(0, 2 * np.pi, around, endpoint=False)[None, :, None]
    ring = np.cos(s) * normal[:, None] + np.sin(s) * binormal[:, None]
    vertices = curve(t)[:, None] + 0.45 * ring
    return vertices.reshape(-1, 3), _grid_faces(along, around, True, True)


def blob(faces: int, seed: int = 0, jitter: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A cube of n x n cells per side pushed onto a bumpy sphere, vertices jittered like a scan."""
    import trimesh

    n = max(int(round(np.sqrt(faces / 12))), 2)
    u = np.linspace(-1, 1, n + 1)
    uu, vv = np.meshgrid(u, u, indexing="ij")
    parts, tris = [], []
    for axis in range(3):
        a1, a2 = (k for k in range(3) if k != axis)
        for sign in (-1.0, 1.0):
            p = np.zeros(uu.shape + (3,))
            p[..., axis], p[..., a1], p[..., a2] = sign, uu, vv * sign  # outward winding on both sides
            tris.append(_grid_faces(n, n, False, False) + sum(len(x) for x in parts))
            parts.append(p.reshape(-1, 3))
    cube = trimesh.Trimesh(np.concatenate(parts), np.concatenate(tris), process=True)  # merges the edges
    v = cube.vertices / np.linalg.norm(cube.vertices, axis=1, keepdims=True)
    bumps = 1 + 0.15 * np.sin(5 * v[:, 0] + 1) * np.sin(4 * v[:, 1]) + 0.1 * np.sin(9 * v[:, 2] + 2)
    v = v * bumps[:, None] + np.random.default_rng(seed).normal(0, jitter / n, v.shape)
    return v, np.asarray(cube.faces, np.int64)


SHAPES: dict[str, Callable[[int], tuple[np.ndarray, np.ndarray]]] = {
    "sphere": sphere,
    "torus_knot": torus_knot,
    "blob": blob,
}


def _cpu_seconds_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(vertices: np.ndarray, faces: np.ndarray, mode: str, atlas_size: int, timeout_s: float) -> dict:
    """One unwrap: wall and CPU seconds, and the atlas' quality."""
    from engines.texturing.atlas_quality import atlas_quality
    from engines.texturing.unwrap import unwrap_uv

    cpu = _cpu_seconds_of_children()
    start = time.perf_counter()
    vertex_map, new_faces, uv = unwrap_uv(vertices, faces, timeout_s, mode, atlas_size=atlas_size)
    wall = time.perf_counter() - start
    cpu = _cpu_seconds_of_children() - cpu
    quality = atlas_quality(vertices, faces, vertex_map, new_faces, uv, atlas_size)
    return {"seconds": round(wall, 3), "cpu_seconds": round(cpu, 3), **_rounded(quality.as_dict())}


def _rounded(d: dict) -> dict:
    return {k: (round(float(v), 4) if isinstance(v, float | np.floating) else v) for k, v in d.items()}


def _time_job(pipe, faces: int, mode: str, timeout_s: float = 900.0) -> dict:  # noqa: ANN001 - a Realiz3DPipeline
    import trimesh

    from engines.requests import TextureRequest
    from engines.texturing.mesh_io import MeshLimits

    vertices, tris = blob(faces)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "blob.ply"
        trimesh.Trimesh(vertices, tris, process=False).export(path)
        request = TextureRequest(prompt="a weathered stone statue", num_views=4, seed=0, unwrap=mode)
        start = time.perf_counter()
        result = pipe.texture(request, path, limits=MeshLimits(unwrap_timeout_s=timeout_s))
        result.save(Path(tmp) / "out")
        wall = time.perf_counter() - start
    stages = {k: round(v, 3) for k, v in result.timings.items()}
    return {"mode": mode, "faces": int(len(tris)), "seconds": round(wall, 3), "stages": stages}


def run_unwrap_benchmark(
    out_dir: str | Path = DEFAULT_OUT,
    *,
    shapes: Sequence[str] | None = None,
    sizes: Sequence[int] | None = None,
    modes: Sequence[str] | None = None,
    atlas_size: int = 1024,
    timeout_s: float = 900.0,
    job_faces: int = 0,
    name: str = "unwrap",
    log: Callable[[str], None] = print,
) -> dict:
    """Run the benchmark, write `<name>.json` and `<name>.md` into `out_dir`; returns the report."""

    shapes, sizes, modes = shapes or tuple(SHAPES), sizes or SIZES, modes or UNWRAP_MODES
    for name_, allowed in (("shape", SHAPES), ("mode", UNWRAP_MODES)):
        for x in shapes if name_ == "shape" else modes:
            if x not in allowed:
                raise UserInputError(f"unknown {name_} {x!r}: use {', '.join(allowed)}")
    rows = []
    load_before = os.getloadavg()[0]
    for i, (shape, size) in enumerate((s, n) for n in sizes for s in shapes):
        vertices, faces = SHAPES[shape](size)
        order = list(modes) if i % 2 == 0 else list(reversed(modes))
        row = {"shape": shape, "faces": int(len(faces)), "order": order}
        for mode in order:
            row[mode] = measure(vertices, faces, mode, atlas_size, timeout_s)
            log(f"{shape} {len(faces)} {mode}: {json.dumps(row[mode])}")
        rows.append(row)
    jobs = []
    pipe = None
    if job_faces:
        from engines.pipelines import Realiz3DPipeline

        pipe = Realiz3DPipeline.load(None)  # the embedded default model, loaded once for every job
    for i, mode in enumerate(modes if job_faces else ()):
        jobs.append(_time_job(pipe, job_faces, mode, timeout_s))
        log(f"texture job {job_faces} faces {mode}: {json.dumps(jobs[i])}")
    report = {
        "benchmark": "UV unwrap (engines.texturing.unwrap_uv), fast vs quality",
        "atlas_size": atlas_size,
        "rows": rows,
        "jobs": jobs,
        "machine": {**machine(), "load_average_1min_before": round(load_before, 2)},  # after the runs
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    md_path = out / f"{name}.md"
    notes = ""
    if md_path.is_file() and NOTES_MARKER in md_path.read_text():
        notes = md_path.read_text().split(NOTES_MARKER, 1)[1]
    md_path.write_text(markdown(report) + "\n" + NOTES_MARKER + notes)
    return report


def markdown(r: dict) -> str:
    """The report's tables."""
    m = r["machine"]
    modes = [k for k in UNWRAP_MODES if r["rows"] and k in r["rows"][0]]
    lines = [
        "# UV unwrap benchmark (`realiz3d bench unwrap`)",
        "",
        f"`unwrap_uv` in its child process, atlas {r['atlas_size']}^2. Machine, after the runs: "
        f"{describe(m)} ({m['load_average_1min_before']} before; the machine is shared: wall seconds grow "
        "with the neighbours' load, CPU seconds much less). "
        "Modes alternate on each mesh. Utilisation: atlas texels covered; density spread: p95 / p5 of "
        "texel density (1 = uniform); seam: cut length / sqrt(surface area).",
        "",
        "| mesh | faces | mode | seconds | CPU s | charts | utilisation | density spread | seam |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        for mode in modes:
            x = row[mode]
            lines.append(
                f"| {row['shape']} | {row['faces']} | {mode} | {x['seconds']:.2f} | {x['cpu_seconds']:.2f} "
                f"| {x['charts']} | {x['utilisation']:.1%} | {x['density_spread']:.2f} | {x['seam_length']:.1f} |"
            )
    if len(modes) == 2:
        lines += [
            "",
            "| mesh | faces | speed-up (wall) | speed-up (CPU) | utilisation, points | density spread ratio |",
            "|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            f, q = row["fast"], row["quality"]
            lines.append(
                f"| {row['shape']} | {row['faces']} | {q['seconds'] / f['seconds']:.2f}x "
                f"| {q['cpu_seconds'] / max(f['cpu_seconds'], 1e-9):.2f}x "
                f"| {100 * (f['utilisation'] - q['utilisation']):+.1f} "
                f"| {f['density_spread'] / q['density_spread']:.2f} |"
            )
    if r["jobs"]:
        lines += ["", "Whole texture job (default model, 4 views, 30 steps), PLY blob without UVs:", ""]
        lines += [
            "| mode | faces | job seconds | unwrap | render | denoise | bake | export |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for j in r["jobs"]:
            s = j["stages"]
            lines.append(
                f"| {j['mode']} | {j['faces']} | {j['seconds']:.2f} | {s.get('unwrap', 0):.2f} "
                f"| {s.get('render', 0):.2f} | {s.get('denoise', 0):.2f} | {s.get('bake', 0):.2f} "
                f"| {s.get('export', 0):.2f} |"
            )
    lines += [
        "",
        "Reproduce: `OMP_NUM_THREADS=1 realiz3d bench unwrap`.",
        "",
    ]
    return "\n".join(lines)


def _csv(kind: type) -> Callable[[str], tuple]:
    return lambda s: tuple(kind(x) for x in s.split(",") if x)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.bench.unwrap", description=__doc__.splitlines()[0])
    p.add_argument("--shapes", type=_csv(str), default=None, help=",".join(SHAPES) + " (all)")
    p.add_argument("--sizes", type=_csv(int), default=None, help="face counts (10k, 50k, 100k, 300k)")
    p.add_argument("--modes", type=_csv(str), default=None, help="fast,quality (both, alternating)")
    p.add_argument("--job-faces", type=int, default=0, help="also time a whole texture job (0: no)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    run_unwrap_benchmark(a.out, shapes=a.shapes, sizes=a.sizes, modes=a.modes, job_faces=a.job_faces)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
