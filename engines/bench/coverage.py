"""`realiz3d bench coverage`: how much of the surface takes its colour from the model (issue 25).

For each procedural mesh (`coverage_meshes.py`), or with `--assets DIR` each mesh file of a folder the user
provides, texture jobs with the real default model and default settings (6 views) in three modes, in one
run after a warm-up job, interleaved: `before` (the bake at the view resolution, no planning: the job before
issue 25), `off` (bake resolution, `max_views` = 6) and `on` (the defaults): the three surface shares, the
views used and the job's wall and CPU time.

Round trip (procedural meshes): a mesh with a known procedural colour (a function of the 3D point) stands in
for a perfect model: its views are that colour rendered at the model's resolution (32 px), planned views
hold their known pixels as the sampler does. The baked atlas is compared with the true colour (PSNR) and
the colour step across UV seams (chart edges adjacent on the surface) is measured, over every on-mesh texel
and over the texels all three bakes coloured from views (the fair comparison at equal views). Three bakes
at the same 6 requested views: the bake at the view resolution (before issue 25), the bake at the bake
resolution, and that plus planned views.

Writes docs/benchmarks/coverage.md and coverage.json (with `--assets`: coverage_assets.md and .json, and
each mode's textured result into DIR/textured/<file>/<mode>/).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from engines.bench import OUT_DIR
from engines.bench.machine import describe, torch_machine

COMMAND = "realiz3d bench coverage"
PROMPT = "a hand-painted toy"


def procedural_colour(points: np.ndarray) -> np.ndarray:
    """A smooth colour field over 3D points of the normalised mesh (float, 0-255)."""
    p = np.asarray(points, np.float64)
    r = 0.5 + 0.4 * np.sin(2 * np.pi * (1.3 * p[:, 0] + 0.4 * p[:, 1]))
    g = 0.5 + 0.4 * np.sin(2 * np.pi * (1.1 * p[:, 1] - 0.5 * p[:, 2]) + 1.0)
    b = 0.5 + 0.3 * np.cos(2 * np.pi * (0.9 * p[:, 2] + 0.6 * p[:, 0]))
    return np.stack([r, g, b], axis=1) * 255.0


def oracle_views(cameras, geometry: np.ndarray, resolution: int, known=None) -> list[np.ndarray]:
    """A perfect model: the procedural colour at each pixel's surface point; known pixels held."""
    views = []
    for i, g in enumerate(geometry):
        mask = g[6] > 0.5
        img = np.zeros((resolution, resolution, 3), np.float64)
        img[mask] = procedural_colour(g[3:6].transpose(1, 2, 0)[mask])
        img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        if known is not None:
            img = np.where(known.mask[i][..., None], known.images[i], img)
        views.append(img)
    return views


def true_atlas(mesh, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(the procedural colour at every texel of the mesh's atlas (S, S, 3) float, on-mesh mask (S, S))."""
    from engines.texturing.bake import texel_surface
    from engines.texturing.rasterize import rasterize_uv

    maps = rasterize_uv(mesh.uv, mesh.faces, size)
    flat, points, _ = texel_surface(maps, mesh.normalized_vertices, mesh.faces)
    atlas = np.zeros((size * size, 3), np.float64)
    atlas[flat] = procedural_colour(points)
    return atlas.reshape(size, size, 3), maps.mask


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def seam_step(atlas: np.ndarray, mesh, chart: np.ndarray) -> float:
    """Mean colour step (0-255, mean over channels) across UV seams (`seam_steps`; 0 with no seam pair)."""
    steps = seam_steps(atlas, mesh, chart)
    return float(steps.mean()) if len(steps) else 0.0


def seam_steps(atlas: np.ndarray, mesh, chart: np.ndarray) -> np.ndarray:
    """Colour step (0-255, mean over channels) of each seam pair: for each mesh edge shared by two faces whose
    UVs differ along it, the atlas's texel one texel inside each face, at 3 points along the edge (pairs where
    either side's texel is outside `chart`, the texels measured, are skipped). The same mesh and `chart` give
    the same pairs in the same order, whatever the atlas: steps of two bakes pair up."""
    v = np.asarray(mesh.normalized_vertices, np.float64)
    f = np.asarray(mesh.faces, np.int64)
    uv = np.asarray(mesh.uv, np.float64)
    size = atlas.shape[0]
    _, weld = np.unique(np.round(v * 1e5).astype(np.int64), axis=0, return_inverse=True)
    weld = weld.reshape(-1)
    a = f.reshape(-1)
    b = f[:, [1, 2, 0]].reshape(-1)
    face = np.repeat(np.arange(len(f)), 3)
    wa, wb = weld[a], weld[b]
    lo, hi = np.minimum(wa, wb), np.maximum(wa, wb)
    key = lo * (int(weld.max()) + 1) + hi
    order = np.argsort(key, kind="stable")
    key_s = key[order]
    first = np.flatnonzero(np.r_[True, key_s[1:] != key_s[:-1]])
    counts = np.diff(np.r_[first, len(key_s)])
    pairs = first[counts == 2]
    e1, e2 = order[pairs], order[pairs + 1]
    # endpoints of e2 ordered like e1's (a1 <-> the e2 corner welded to it)
    a1, b1 = a[e1], b[e1]
    same = weld[a[e2]] == weld[a1]
    a2 = np.where(same, a[e2], b[e2])
    b2 = np.where(same, b[e2], a[e2])
    seam = (np.abs(uv[a1] - uv[a2]).max(axis=1) > 1e-6) | (np.abs(uv[b1] - uv[b2]).max(axis=1) > 1e-6)
    if not seam.any():
        return np.zeros(0)
    steps = []
    for t in (0.25, 0.5, 0.75):
        sides = []
        for p, q, fc in ((a1, b1, face[e1]), (a2, b2, face[e2])):
            point = (1 - t) * uv[p[seam]] + t * uv[q[seam]]
            centre = uv[f[fc[seam]]].mean(axis=1)
            inward = centre - point
            inward /= np.maximum(np.linalg.norm(inward, axis=1, keepdims=True), 1e-12)
            point = point + inward * (1.0 / size)  # one texel inside the face
            col = np.floor(point[:, 0] * size).astype(np.int64) % size
            row = np.floor((1 - point[:, 1]) * size).astype(np.int64) % size
            sides.append((row, col))
        (r1, c1), (r2, c2) = sides
        ok = chart[r1, c1] & chart[r2, c2]
        diff = atlas[r1, c1, :3].astype(np.float64) - atlas[r2, c2, :3].astype(np.float64)
        steps.append(np.abs(diff[ok]).mean(axis=1))
    return np.concatenate(steps)


def boundary_step(atlas: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Mean colour step (0-255, mean over channels) between 4-neighbour texels of which one is in `a` and
    the other in `b` ((S, S) bool): the step across the boundary between two regions of one UV chart (the
    texels the requested views coloured and those only planned views coloured)."""
    colour = np.asarray(atlas, np.float64)[..., :3]
    steps = []
    for axis in (0, 1):
        lo = (slice(None, -1), slice(None)) if axis == 0 else (slice(None), slice(None, -1))
        hi = (slice(1, None), slice(None)) if axis == 0 else (slice(None), slice(1, None))
        pair = (a[lo] & b[hi]) | (b[lo] & a[hi])
        steps.append(np.abs(colour[lo][pair] - colour[hi][pair]).mean(axis=1))
    both = np.concatenate(steps)
    return float(both.mean()) if len(both) else 0.0


#: the round trip's three bakes at the same 6 requested views; the first is the baseline
ROUND_TRIP_BAKES = {
    "bake at the view resolution (before), 6 views": dict(bake_resolution=64, max_views=6, res_bake=32),
    "bake at 512 px, 6 views": dict(bake_resolution=512, max_views=6),
    "bake at 512 px, 6 views + planned": dict(bake_resolution=512, max_views=16),
}
BEFORE = next(iter(ROUND_TRIP_BAKES))
#: bootstrap resamples of the paired differences (percentile intervals, fixed seed)
RESAMPLES = 1000


def _round_trip(path: Path, name: str) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Three bakes of the same 6 requested views of a known colour; PSNR and seam step over every on-mesh
    texel and, the fair comparison, over the texels every one of the three bakes coloured from views.
    Returns the figures and, per bake, its samples on those common texels: (squared error per texel, mean
    over channels; colour step per seam pair), in the same texel and pair order for every bake."""
    from engines.requests import TextureRequest
    from engines.texturing.pipeline import texture_mesh

    results = {}
    for label, cfg in ROUND_TRIP_BAKES.items():
        request = TextureRequest(
            prompt=PROMPT, seed=0, bake_resolution=cfg["bake_resolution"], max_views=cfg["max_views"]
        )
        if "res_bake" in cfg:  # below the request's bound: what the bake did before issue 25
            request = request.model_copy(update={"bake_resolution": cfg["res_bake"]})
        results[label] = texture_mesh(request, path, oracle_views, resolution=32)
    first = next(iter(results.values()))
    truth, chart = true_atlas(first.mesh, first.atlas.shape[0])
    common = chart.copy()
    for result in results.values():
        if not np.array_equal(result.mesh.uv, first.mesh.uv):
            raise RuntimeError("the round trip's bakes were made on different UV layouts")
        common &= result.coverage
    # the requested views' texels: what the bake at 512 px without planning coloured (the same first bake)
    requested = results["bake at 512 px, 6 views"].coverage & chart
    rows, samples = [], {}
    for label, result in results.items():
        got = result.atlas[..., :3].astype(np.float64)
        seen = result.coverage & chart
        planned = result.meta["views_used"] > result.meta["num_views"]
        inpainted = seen & ~requested if planned else np.zeros_like(seen)
        samples[label] = (
            ((got[common] - truth[common]) ** 2).mean(axis=1),
            seam_steps(result.atlas, result.mesh, common),
        )
        rows.append(
            {
                "mesh": name,
                "bake": label,
                "views_used": result.meta["views_used"],
                "surface": result.meta["surface"],
                "psnr_on_mesh_db": round(psnr(got[chart], truth[chart]), 2),
                "psnr_from_views_db": round(psnr(got[seen], truth[seen]), 2),
                "psnr_common_db": round(psnr(got[common], truth[common]), 3),
                "seam_step": round(seam_step(result.atlas, result.mesh, chart), 2),
                "seam_step_common": round(float(samples[label][1].mean()), 3)
                if len(samples[label][1])
                else None,  # no seam pair on the common texels
                # across the boundary between the requested views' texels and the planned views' (and the
                # true colour's own step there)
                "boundary_step": round(boundary_step(result.atlas, requested, inpainted), 2)
                if inpainted.any()
                else None,
                "boundary_step_truth": round(boundary_step(truth, requested, inpainted), 2)
                if inpainted.any()
                else None,
            }
        )
    figures = {
        "mesh": name,
        "common_share": round(float(common.sum() / max(int(chart.sum()), 1)), 4),
        "seam_step_truth": round(seam_step(truth, first.mesh, chart), 2),
        "seam_step_truth_common": round(seam_step(truth, first.mesh, common), 2),
        "rows": rows,
    }
    return figures, samples


def _interval(statistic, n: int, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of `statistic(indices)` over `n` items resampled with replacement."""
    rng = np.random.default_rng(seed)
    boot = [statistic(rng.integers(0, n, n)) for _ in range(RESAMPLES)]
    return [round(float(v), 4) for v in np.percentile(boot, [2.5, 97.5])]


def paired_difference(new: tuple[np.ndarray, np.ndarray], old: tuple[np.ndarray, np.ndarray]) -> dict:
    """A bake against the baseline on the same common texels and seam pairs (`_round_trip`'s samples): the
    PSNR difference (new - old, dB) with a bootstrap interval over texels, and the seam step difference
    (new - old, 0-255) with one over seam pairs; both paired (each resample draws the same texels, the same
    pairs, for both bakes)."""
    (err_new, seam_new), (err_old, seam_old) = new, old

    def db(idx: np.ndarray) -> float:
        return 10 * np.log10(err_old[idx].mean() / err_new[idx].mean())

    step = seam_new - seam_old
    every = np.arange(len(err_new))
    return {
        "texels": len(err_new),
        "psnr_common_db": round(10 * np.log10(255.0**2 / err_new.mean()), 3),
        "psnr_common_before_db": round(10 * np.log10(255.0**2 / err_old.mean()), 3),
        "psnr_difference_db": round(float(db(every)), 4),
        "psnr_difference_interval": _interval(db, len(err_new)),
        "seam_pairs": len(step),
        "seam_step_common": round(float(seam_new.mean()), 3) if len(step) else None,
        "seam_step_common_before": round(float(seam_old.mean()), 3) if len(step) else None,
        "seam_step_difference": round(float(step.mean()), 4) if len(step) else None,
        "seam_step_difference_interval": _interval(lambda i: step[i].mean(), len(step))
        if len(step)
        else None,
    }


def round_trips(paths: dict[str, Path]) -> dict:
    """The round trip on each mesh, and each bake against the baseline per mesh and pooled (every mesh's
    common texels and seam pairs together)."""
    meshes, pooled = [], {label: ([], []) for label in ROUND_TRIP_BAKES}
    for name, path in paths.items():
        figures, samples = _round_trip(path, name)
        figures["paired"] = {
            label: paired_difference(samples[label], samples[BEFORE])
            for label in ROUND_TRIP_BAKES
            if label != BEFORE
        }
        meshes.append(figures)
        print(json.dumps({"mesh": name, "paired": figures["paired"]}), flush=True)
        for label, (err, seam) in samples.items():
            pooled[label][0].append(err)
            pooled[label][1].append(seam)
    together = {label: (np.concatenate(e), np.concatenate(s)) for label, (e, s) in pooled.items()}
    return {
        "command": COMMAND,
        "resamples": RESAMPLES,
        "meshes": meshes,
        "pooled": {
            label: paired_difference(together[label], together[BEFORE])
            for label in ROUND_TRIP_BAKES
            if label != BEFORE
        },
    }


#: mesh files `--assets DIR` reads (its top level, sorted by name)
ASSET_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".zip")


def _modes(pipe) -> dict:
    from engines.requests import TextureRequest

    return {
        # before issue 25: the bake at the view resolution, no planning
        "before": TextureRequest(prompt=PROMPT, seed=0, max_views=6).model_copy(
            update={"bake_resolution": pipe.config.resolution}
        ),
        "off": TextureRequest(prompt=PROMPT, seed=0, max_views=6),
        "on": TextureRequest(prompt=PROMPT, seed=0),
    }


def _time_modes(pipe, name: str, path: Path, repeats: int, keep: Path | None = None) -> list[dict]:
    """Each mode `repeats` times, interleaved; the fastest run's time (other processes share the CPU),
    every run's time in the JSON. `keep`: save each mode's fastest result into keep/<mode>/."""
    runs: dict[str, list] = {mode: [] for mode in _modes(pipe)}
    for _ in range(repeats):
        for mode, request in _modes(pipe).items():
            start, cpu = time.perf_counter(), time.process_time()
            result = pipe.texture(request, path)
            runs[mode].append((time.perf_counter() - start, time.process_time() - cpu, result))
    rows = []
    for mode, done in runs.items():
        seconds, cpu, result = min(done, key=lambda r: r[0])
        if keep is not None:
            result.save(keep / mode)
        rows.append(
            {
                "mesh": name,
                "faces": int(len(result.mesh.faces)),
                "planning": mode,
                "bake_resolution": result.meta["bake_resolution"],
                "views_used": result.meta["views_used"],
                "surface": result.meta["surface"],
                "job_seconds": round(seconds, 2),
                "job_seconds_all": [round(s, 2) for s, _, _ in done],
                # CPU seconds of this process (all its threads): less sensitive than wall time
                # to other processes sharing the machine
                "job_cpu_seconds": round(min(c for _, c, _ in done), 2),
                "stages": {k: round(v, 2) for k, v in result.timings.items()},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _procedural_meshes(folder: Path, meshes: list[str] | None) -> dict[str, Path]:
    # trimesh: not in a gateway-only install, whose CLI imports this module's SECTIONS
    from engines.bench.coverage_meshes import MESHES

    paths = {}
    for name in meshes or list(MESHES):
        paths[name] = folder / f"{name}.ply"
        MESHES[name]().export(paths[name])
    return paths


#: `--section` of `realiz3d bench coverage`: measure only this part and merge it into coverage.json
SECTIONS = ("round-trip",)


def run_coverage_bench(
    out_dir: str | Path = OUT_DIR,
    meshes: list[str] | None = None,
    repeats: int = 3,
    assets: str | Path | None = None,
    section: str | None = None,
) -> dict:
    """The procedural meshes (coverage.md), or with `assets` every mesh file in that folder
    (coverage_assets.md; each mode's textured result saved to DIR/textured/<file>/<mode>/, and DIR's
    SOURCES.md, where the files came from, quoted in the report). `section="round-trip"`: only the round
    trip (no model, no job timing), merged into the coverage.json already in `out_dir`."""
    from engines.errors import UserInputError
    from engines.pipelines import Realiz3DPipeline
    from engines.requests import TextureRequest

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if section is not None:
        if section not in SECTIONS or assets is not None:
            raise UserInputError(
                f"bench coverage: --section is one of {', '.join(SECTIONS)}, for the procedural meshes"
            )
        if not (out / "coverage.json").is_file():
            raise UserInputError(
                f"bench coverage --section {section}: no coverage.json in {out} to merge into"
            )
        report = json.loads((out / "coverage.json").read_text())
        with tempfile.TemporaryDirectory() as tmp:
            report["round_trip"] = round_trips(_procedural_meshes(Path(tmp), meshes))
        report["round_trip"]["command"] = f"{COMMAND} --section {section}"
        (out / "coverage.json").write_text(json.dumps(report, indent=2))
        (out / "coverage.md").write_text(markdown(report))
        return report
    pipe = Realiz3DPipeline.load(device="cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if assets is not None:
            folder = Path(assets)
            paths = {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in ASSET_SUFFIXES}
            if not paths:
                raise SystemExit(f"no mesh file ({', '.join(ASSET_SUFFIXES)}) in {folder}")
        else:
            paths = _procedural_meshes(Path(tmp), meshes)
        names = list(paths)
        # warm-up: the first job pays lazy initialisation, which neither mode should carry
        pipe.texture(
            TextureRequest(prompt=PROMPT, seed=0, steps=2, atlas_size=128, max_views=7), paths[names[0]]
        )
        for name in names:
            keep = Path(assets) / "textured" / name if assets is not None else None
            rows += _time_modes(pipe, name, paths[name], repeats, keep)
        trip = round_trips(paths) if assets is None else None
    report = {
        "command": COMMAND + (" --assets DIR" if assets is not None else ""),
        "machine": torch_machine(),
        "settings": {
            "model": pipe.config.name,
            "view_resolution": pipe.config.resolution,
            "request": {k: v for k, v in TextureRequest(prompt=PROMPT).model_dump().items() if k != "prompt"},
            "planning_off": "max_views=6",
            "before": "bake at the view resolution, max_views=6 (the bake before issue 25)",
            "repeats": repeats,
        },
        "jobs": rows,
    }
    if assets is None:
        report["round_trip"] = trip
        (out / "coverage.json").write_text(json.dumps(report, indent=2))
        (out / "coverage.md").write_text(markdown(report))
    else:
        sources = Path(assets) / "SOURCES.md"
        report["assets"] = {
            name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for name, p in paths.items()
        }
        report["sources"] = sources.read_text() if sources.is_file() else None
        (out / "coverage_assets.json").write_text(json.dumps(report, indent=2))
        (out / "coverage_assets.md").write_text(markdown(report))
    return report


def _shares(surface: dict) -> str:
    """The three surface shares as table cells: from views | inpainted | filled."""
    return f"{surface['from_views']:.3f} | {surface['inpainted']:.3f} | {surface['filled']:.3f}"


def markdown(report: dict) -> str:
    s = report["settings"]
    assets = "assets" in report
    lines = [
        "# Coverage: how much of the surface the model colours" + (" (real assets)" if assets else ""),
        "",
        f"Made by `{report['command']}` (engines/bench/coverage.py). Machine: {describe(report['machine'])}.",
        f"Model `{s['model']}` ({s['view_resolution']} px views), default texture settings (6 views, "
        f"{s['request']['steps']} steps, atlas {s['request']['atlas_size']}, bake at "
        f"{s['request']['bake_resolution']} px, coverage_target {s['request']['coverage_target']}, "
        f"max_views {s['request']['max_views']}, inpaint_steps {s['request']['inpaint_steps']}). Modes: "
        "`before` bakes at the view resolution with no "
        "planning (the bake before issue 25), `off` bakes at the bake resolution with no planning "
        "(`max_views=6`), `on` is the default (planning). One run, after a warm-up job, each mode "
        f"{s['repeats']} times interleaved; job time is the fastest wall time of `Realiz3DPipeline.texture` on "
        "the CPU and job CPU the least CPU time of this process (other processes share the machine and "
        "inflate wall times; every wall time is in the JSON beside this file).",
        "",
    ]
    if assets:
        lines += ["## Assets", "", "| file | bytes | sha256 |", "|---|---|---|"]
        lines += [f"| {n} | {a['bytes']} | `{a['sha256'][:16]}` |" for n, a in report["assets"].items()]
        lines += ["", report["sources"].strip() if report["sources"] else "(no SOURCES.md in the folder)", ""]
    lines += [
        "| mesh | faces | planning | from views | inpainted | filled | views used | job s | job CPU s | plan s | inpaint s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["jobs"]:
        lines.append(
            f"| {r['mesh']} | {r['faces']} | {r['planning']} | {_shares(r['surface'])} | {r['views_used']} | "
            f"{r['job_seconds']:.1f} | {r['job_cpu_seconds']:.1f} | {r['stages'].get('plan', 0):.1f} | "
            f"{r['stages'].get('inpaint', 0):.1f} |"
        )
    by = {(r["mesh"], r["planning"]): r for r in report["jobs"]}
    ratios = [
        f"{m}: {by[(m, 'on')]['job_seconds'] / by[(m, 'before')]['job_seconds']:.2f}x wall, "
        f"{by[(m, 'on')]['job_cpu_seconds'] / by[(m, 'before')]['job_cpu_seconds']:.2f}x CPU"
        for m in dict.fromkeys(r["mesh"] for r in report["jobs"])
        if (m, "on") in by and (m, "before") in by
    ]
    lines += ["", "Job time, planning on / before: " + ", ".join(ratios) + ".", ""]
    if assets:
        return "\n".join(lines) + "\n"
    trip = report["round_trip"]
    lines += [
        "## Round trip (every procedural mesh, a known procedural colour)",
        "",
        f"Made by `{trip['command']}`. A perfect model renders the colour at 32 px; the bake is compared with "
        "the true colour. PSNR over every on-mesh texel (the fill included), over the texels views coloured, "
        "and over the texels all three bakes coloured from views (`common`, what the bake before issue 25 "
        "coloured; the fair comparison at equal views). Seam step: mean colour step (0-255) across UV chart "
        "edges that are adjacent on the surface, over every on-mesh texel and over the common texels. Over "
        "every texel the bake before issue 25 is mostly the smooth surface fill, whose seams are small "
        "because it has no detail. Since issue 25 each texel is sampled directly in the 32 px view at its "
        "projected position, from the model pixels that show its surface (`view_sampling.py`).",
        "",
        "| mesh | common | true seam step (all / common) | bake | views used | from views | inpainted | filled | "
        "PSNR on mesh dB | PSNR from views dB | PSNR common dB | seam step | seam step common |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in trip["meshes"]:
        for r in m["rows"]:
            lines.append(
                f"| {m['mesh']} | {m['common_share']:.1%} | {m['seam_step_truth']:.2f} / "
                f"{m['seam_step_truth_common']:.2f} | {r['bake']} | {r['views_used']} | {_shares(r['surface'])} | "
                f"{r['psnr_on_mesh_db']:.2f} | "
                f"{r['psnr_from_views_db']:.2f} | {r['psnr_common_db']:.3f} | {r['seam_step']:.2f} | "
                + ("-" if r["seam_step_common"] is None else f"{r['seam_step_common']:.3f}")
                + " |"
            )
    lines += [
        "",
        "### Against the bake before issue 25, on the common texels",
        "",
        "Paired: the same texels and the same seam pairs for both bakes. Brackets: 95% bootstrap intervals "
        f"({trip['resamples']} resamples, percentile), over texels for the PSNR difference and over seam "
        "pairs for the seam step difference. Pooled: every mesh's common texels and seam pairs together.",
        "",
        "| mesh | bake | texels | PSNR common dB (before) | PSNR new - before dB | seam pairs | "
        "seam step common (before) | seam step new - before |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def paired_row(mesh: str, label: str, p: dict) -> str:
        lo, hi = p["psnr_difference_interval"]
        seam = "-"
        if p["seam_pairs"]:
            slo, shi = p["seam_step_difference_interval"]
            seam = f"{p['seam_step_difference']:+.3f} [{slo:+.3f}, {shi:+.3f}]"
        before = (
            f"{p['seam_step_common']:.3f} ({p['seam_step_common_before']:.3f})" if p["seam_pairs"] else "-"
        )
        return (
            f"| {mesh} | {label} | {p['texels']} | {p['psnr_common_db']:.3f} ({p['psnr_common_before_db']:.3f}) | "
            f"{p['psnr_difference_db']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {p['seam_pairs']} | {before} | {seam} |"
        )

    for m in trip["meshes"]:
        lines += [paired_row(m["mesh"], label, p) for label, p in m["paired"].items()]
    lines += [paired_row("**pooled**", label, p) for label, p in trip["pooled"].items()]
    for m in trip["meshes"]:
        for r in m["rows"]:
            if r.get("boundary_step") is None:
                continue
            lines += [
                "",
                f"Step across the boundary between the requested views' texels and the planned views' "
                f"({m['mesh']}, {r['bake']}: mean colour step between 4-neighbour texels either side; planned "
                "views blend into the edge of the requested coverage, `BakeSettings.blend_band`): "
                f"{r['boundary_step']:.2f} (the true colour's own step there: {r['boundary_step_truth']:.2f}).",
            ]
    return "\n".join(lines) + "\n"
