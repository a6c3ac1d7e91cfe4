"""UV unwrap: atlas-quality measures, the fast (piecewise) unwrap, progress and cancel, bench command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from engines.bench.unwrap import blob, sphere, torus_knot
from engines.errors import JobCanceled
from engines.requests import TextureRequest
from engines.texturing.atlas_quality import atlas_quality, count_charts
from engines.texturing.piecewise_unwrap import (
    PiecewiseOptions,
    piecewise_unwrap,
    split_pieces,
    triangle_areas,
)
from engines.texturing.rasterize import rasterize_uv
from engines.texturing.unwrap import unwrap_uv
from service.cli import main

CUBE_VERTICES = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.float64)
# Each side as a quad (a, b, c, d) around its border.
CUBE_SIDES = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]


def _cube_cut_into_sides(stretch_first: float = 1.0):
    """The cube unwrapped by hand: each side its own chart, in a 3 x 2 grid of UV cells."""
    vertex_map, faces, uv = [], [], []
    corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float64)
    for i, side in enumerate(CUBE_SIDES):
        base = len(vertex_map)
        vertex_map += list(side)
        cell = corners * [1 / 3, 1 / 2] + [(i % 3) / 3, (i // 3) / 2]
        if i == 0:
            cell = cell[0] + (cell - cell[0]) * [stretch_first, 1.0]  # squash this chart's width
        uv += list(cell)
        faces += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
    in_faces = np.array([(a, b, c) for a, b, c, _ in CUBE_SIDES] + [(a, c, d) for a, _, c, d in CUBE_SIDES])
    order = np.array([j for i in range(6) for j in (i, i + 6)])  # the input's face order, side by side
    return in_faces[order], np.array(vertex_map), np.array(faces), np.array(uv)


def test_quality_of_a_hand_made_cube_atlas():
    faces, vertex_map, out_faces, uv = _cube_cut_into_sides()
    q = atlas_quality(CUBE_VERTICES, faces, vertex_map, out_faces, uv, atlas_size=96)
    assert q.charts == 6
    assert q.utilisation == pytest.approx(1.0, abs=1e-6)  # six cells tile the whole square
    assert q.density_spread == pytest.approx(1.0, abs=1e-6)  # every side gets the same texels per area
    # All 12 cube edges are cut; surface area 6.
    assert q.seam_length == pytest.approx(12 / np.sqrt(6), rel=1e-6)


def test_density_spread_sees_a_squashed_chart_and_utilisation_the_lost_space():
    faces, vertex_map, out_faces, uv = _cube_cut_into_sides(stretch_first=0.5)
    q = atlas_quality(CUBE_VERTICES, faces, vertex_map, out_faces, uv, atlas_size=96)
    # One side of six has half the texels of the others (relative density 0.5 / (5.5 / 6)).
    assert q.density_p5 == pytest.approx(0.5 / (5.5 / 6), rel=1e-6)
    assert q.density_spread == pytest.approx(1 / 0.5, rel=1e-6)
    assert q.utilisation == pytest.approx(1 - 1 / 12, abs=0.02)


def test_an_uncut_open_surface_has_no_seam_and_one_chart():
    vertices = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float64)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    q = atlas_quality(vertices, faces, np.arange(4), faces, vertices[:, :2], atlas_size=32)
    assert q.charts == 1 and q.seam_length == 0.0 and q.utilisation == pytest.approx(1.0)
    assert count_charts(np.array([[0, 1, 2], [3, 4, 5]]), 6) == 2


def test_split_pieces_covers_every_face_once_within_the_size():
    v1, f1 = torus_knot(3000)
    v2, f2 = sphere(400)
    vertices = np.concatenate([v1, v2 + 10])
    faces = np.concatenate([f1, f2 + len(v1)])
    pieces = split_pieces(vertices, faces, 1000)
    every = np.sort(np.concatenate(pieces))
    np.testing.assert_array_equal(every, np.arange(len(faces)))
    assert max(len(p) for p in pieces) <= 1000 and len(pieces) >= len(faces) // 1000
    # The small sphere fits in a piece: it is never cut.
    sphere_faces = set(range(len(f1), len(faces)))
    assert sum(bool(sphere_faces & set(p.tolist())) for p in pieces) == 1


def _overlap_free(uv: np.ndarray, faces: np.ndarray, size: int = 512) -> float:
    """Covered texels over the charts' total UV area: about 1 without overlaps, lower with them."""
    area = triangle_areas(uv, faces).sum()
    return float((rasterize_uv(uv, faces, size).face_id >= 0).mean() / area)


def test_piecewise_unwrap_packs_all_pieces_into_one_atlas_without_overlap():
    vertices, faces = blob(3000)
    vertex_map, out_faces, uv = piecewise_unwrap(
        vertices, faces, PiecewiseOptions(piece_faces=800, workers=2, atlas_size=512)
    )
    assert len(out_faces) == len(faces) and uv.min() >= 0 and uv.max() <= 1
    # Same corners per face, in the input's face order.
    np.testing.assert_allclose(vertices[vertex_map][out_faces], vertices[faces])
    assert _overlap_free(uv, out_faces) > 0.97


def test_fast_and_quality_modes_both_give_valid_atlases_with_progress():
    vertices, faces = torus_knot(6000)
    seen = []
    fast = unwrap_uv(vertices, faces, 120, "fast", progress=lambda d, t: seen.append((d, t)))
    quality = unwrap_uv(vertices, faces, 120, "quality")
    assert seen and seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)
    for vertex_map, out_faces, uv in (fast, quality):
        np.testing.assert_allclose(vertices[vertex_map][out_faces], vertices[faces], atol=1e-5)
        assert _overlap_free(uv, out_faces) > 0.97
    qf = atlas_quality(vertices, faces, *fast)
    qq = atlas_quality(vertices, faces, *quality)
    assert qf.utilisation > qq.utilisation - 0.05  # the "equal quality"
    assert qf.density_spread <= qq.density_spread * 1.05


def test_cancel_during_unwrap_ends_the_child():
    vertices, faces = blob(60_000)
    with pytest.raises(JobCanceled, match="UV unwrap"):
        unwrap_uv(vertices, faces, 120, "quality", should_cancel=lambda: True)


def test_unwrap_mode_is_validated():
    with pytest.raises(ValueError, match="fast, quality"):
        unwrap_uv(*sphere(100), 10, "slow")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        TextureRequest(prompt="x", unwrap="slow")
    assert TextureRequest(prompt="x").unwrap == "fast"


def test_bench_unwrap_writes_both_modes_and_keeps_the_notes(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", "unwrap", "--shapes", "sphere,blob", "--sizes", "600", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "unwrap.json").read_text())
    assert [r["shape"] for r in report["rows"]] == ["sphere", "blob"]
    orders = [r["order"] for r in report["rows"]]
    assert orders == [["fast", "quality"], ["quality", "fast"]]  # alternating
    for row in report["rows"]:
        for mode in ("fast", "quality"):
            assert row[mode]["charts"] >= 1 and 0 < row[mode]["utilisation"] <= 1
            assert row[mode]["density_spread"] >= 1 and row[mode]["seconds"] > 0
    md = (out / "unwrap.md").read_text()
    assert "| blob |" in md and "speed-up" in md
    (out / "unwrap.md").write_text(md + "\nhand-written notes\n")
    assert main([*args, "--modes", "fast"]) == 0
    assert (out / "unwrap.md").read_text().endswith("hand-written notes\n")
    assert main(["bench", "unwrap", "--shapes", "cube", "--out", str(out)]) == 2
    # the whole texture job of a blob, timed per stage, with the default model
    assert main([*args, "--modes", "fast", "--job-faces", "2000"]) == 0
    job = json.loads((out / "unwrap.json").read_text())["jobs"][0]
    assert (
        job["mode"] == "fast"
        and job["faces"] >= 2000
        and {"unwrap", "generate", "bake"} <= set(job["stages"])
    )
