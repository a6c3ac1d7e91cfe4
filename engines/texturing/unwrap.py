"""UV unwrap with xatlas, isolated in a child process with a timeout.

xatlas can take over a minute on a 100k-face mesh and segfaults on some inputs (upstream issues #146,
#151), so it never runs in the worker's own process: a crash or a hang becomes a `MeshError`, not a dead
worker. A plain `subprocess` (not `multiprocessing`) because Celery's prefork children are daemonic and
may not fork children of their own, and because a fresh interpreter never re-imports the caller's
`__main__`. Arrays go through .npy files in a temporary folder; the child reports progress as
`progress DONE TOTAL` lines on its stdout. The child runs in its own process group so that a timeout or
a cancel also ends the processes it forked.

Two modes (`--unwrap` on the CLI, `unwrap` in a texture request):
- `fast` (default): `engines.texturing.piecewise_unwrap`, pieces charted in parallel then packed once;
- `quality`: one `xatlas.parametrize` of the whole mesh with xatlas' defaults (the old behaviour).
docs/benchmarks/unwrap.md compares them (time, charts, utilisation, texel-density spread, seams).

A mesh that already has UVs is returned as it is: re-unwrapping would break users' rigs and textures.
"""

from __future__ import annotations

import math
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

import numpy as np

from engines.errors import JobCanceled, MeshError
from engines.requests import CancelCheck, ProgressCallback
from engines.texturing.mesh_io import LoadedMesh

UnwrapMode = Literal["fast", "quality"]
UNWRAP_MODES: tuple[str, ...] = ("fast", "quality")
DEFAULT_UNWRAP: UnwrapMode = "fast"

# How the child is started; a test swaps it for a command that crashes.
_CHILD_ARGS: list[str] = ["-m", "engines.texturing.unwrap_child"]
_REPO_ROOT = Path(__file__).resolve().parents[2]
# How often a waiting parent looks at the cancel flag.
_POLL_S = 0.25


def ensure_uv(
    mesh: LoadedMesh,
    timeout_s: float = 180.0,
    mode: UnwrapMode = DEFAULT_UNWRAP,
    *,
    atlas_size: int = 1024,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> LoadedMesh:
    """`mesh` itself when it has UVs, otherwise a copy unwrapped by xatlas (vertices split at seams)."""
    if mesh.uv is not None:
        return mesh
    vertex_map, faces, uv = unwrap_uv(
        mesh.vertices,
        mesh.faces,
        timeout_s,
        mode,
        atlas_size=atlas_size,
        progress=progress,
        should_cancel=should_cancel,
    )
    return mesh.with_uv(vertex_map, faces, uv, "xatlas")


def normalized_for_unwrap(vertices: np.ndarray) -> np.ndarray:
    """Vertices centred and scaled into the unit sphere in float64, then float32 for xatlas.

    A chart's UVs do not depend on where the mesh sits or how large it is, but xatlas computes in float32:
    coordinates near 1e38 overflow there and held a worker for the whole unwrap timeout. MeshError when
    the geometry is not finite even after normalising."""
    v = np.asarray(vertices, dtype=np.float64)
    if not len(v):
        return v.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        center = (v.min(axis=0) + v.max(axis=0)) / 2
        radius = float(np.linalg.norm(v - center, axis=1).max())
        out = (v - center) / (radius if radius > 0 else 1.0)
    if not math.isfinite(radius) or not np.isfinite(out).all():
        raise MeshError("the mesh's vertex coordinates are not finite once normalised; cannot unwrap it")
    return out.astype(np.float32)


def unwrap_uv(
    vertices: np.ndarray,
    faces: np.ndarray,
    timeout_s: float = 180.0,
    mode: UnwrapMode = DEFAULT_UNWRAP,
    *,
    atlas_size: int = 1024,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unwrap in a child process: (vertex_map (M,), faces (F,3), uv (M,2) in [0,1]).

    `progress(done, total)` follows the child's work (pieces charted, then the pack); `should_cancel` is
    polled every 0.25 s and ends the child (raising `JobCanceled`).
    """
    if mode not in UNWRAP_MODES:
        raise ValueError(f"unwrap mode must be one of {', '.join(UNWRAP_MODES)}, got {mode!r}")
    vertices = normalized_for_unwrap(vertices)
    with tempfile.TemporaryDirectory(prefix="realiz3d-unwrap-") as tmp:
        folder = Path(tmp)
        np.save(folder / "vertices.npy", np.ascontiguousarray(vertices, dtype=np.float32))
        np.save(folder / "faces.npy", np.ascontiguousarray(faces, dtype=np.uint32))
        returncode, stderr = _run_child(
            [str(folder), mode, str(int(atlas_size))], len(faces), timeout_s, progress, should_cancel
        )
        if returncode != 0:
            why = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
            last = (stderr.strip().splitlines() or [""])[-1][:200]
            raise MeshError(f"UV unwrap failed ({why}) on this mesh; give it UVs. {last}".strip())
        try:
            vertex_map = np.load(folder / "vmapping.npy").astype(np.int64)
            new_faces = np.load(folder / "indices.npy").astype(np.int64)
            uv = np.load(folder / "uvs.npy").astype(np.float64)
        except OSError:
            raise MeshError("UV unwrap produced no result on this mesh; give it UVs") from None
    if len(new_faces) != len(faces) or len(uv) != len(vertex_map):
        raise MeshError("UV unwrap returned an inconsistent atlas on this mesh; give it UVs")
    return vertex_map, new_faces, uv


def _run_child(
    args: list[str],
    num_faces: int,
    timeout_s: float,
    progress: ProgressCallback | None,
    should_cancel: CancelCheck | None,
) -> tuple[int, str]:
    """Run the child to its end, forwarding its progress lines; (return code, stderr)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, *_CHILD_ARGS, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise MeshError(
                        f"UV unwrap timed out after {timeout_s:g} s ({num_faces} faces); "
                        "give the mesh UVs or simplify it"
                    )
                if should_cancel is not None and should_cancel():
                    raise JobCanceled("texturing canceled during the UV unwrap")
                try:
                    line = lines.get(timeout=min(remaining, _POLL_S))
                except queue.Empty:
                    continue
                if line is None:  # the child closed its stdout: it has ended (or is about to)
                    break
                parts = line.split()
                if progress is not None and len(parts) == 3 and parts[0] == "progress":
                    progress(int(parts[1]), int(parts[2]))
            returncode = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            reader.join(timeout=1.0)
        err.seek(0)
        return returncode, err.read()


def _read_lines(stream, out: queue.Queue) -> None:  # noqa: ANN001 - a text pipe
    for line in stream:
        out.put(line)
    out.put(None)


def _kill_group(proc: subprocess.Popen) -> None:
    """End the child and everything it forked (its own session), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()
