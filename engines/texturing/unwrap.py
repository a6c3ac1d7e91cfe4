"""UV unwrap with xatlas, isolated in a child process with a timeout.

xatlas can take over a minute on a 100k-face mesh and segfaults on some inputs (upstream issues #146,
#151), so it never runs in the worker's own process: a crash or a hang becomes a `MeshError`, not a dead
worker. A plain `subprocess` (not `multiprocessing`) because Celery's prefork children are daemonic and
may not fork children of their own, and because a fresh interpreter never re-imports the caller's
`__main__`. Arrays go through .npy files in a temporary folder.

A mesh that already has UVs is returned as it is: re-unwrapping would break users' rigs and textures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from engines.errors import MeshError
from engines.texturing.mesh_io import LoadedMesh

# How the child is started; a test swaps it for a command that crashes.
_CHILD_ARGS: list[str] = ["-m", "engines.texturing.unwrap"]
_REPO_ROOT = Path(__file__).resolve().parents[2]


def ensure_uv(mesh: LoadedMesh, timeout_s: float = 180.0) -> LoadedMesh:
    """`mesh` itself when it has UVs, otherwise a copy unwrapped by xatlas (vertices split at seams)."""
    if mesh.uv is not None:
        return mesh
    vertex_map, faces, uv = unwrap_uv(mesh.vertices, mesh.faces, timeout_s)
    return mesh.with_uv(vertex_map, faces, uv, "xatlas")


def unwrap_uv(
    vertices: np.ndarray, faces: np.ndarray, timeout_s: float = 180.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas.parametrize in a child process: (vertex_map (M,), faces (F,3), uv (M,2) in [0,1])."""
    with tempfile.TemporaryDirectory(prefix="realiz3d-unwrap-") as tmp:
        folder = Path(tmp)
        np.save(folder / "vertices.npy", np.ascontiguousarray(vertices, dtype=np.float32))
        np.save(folder / "faces.npy", np.ascontiguousarray(faces, dtype=np.uint32))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
        try:
            proc = subprocess.run(
                [sys.executable, *_CHILD_ARGS, str(folder)],
                env=env,
                timeout=timeout_s,
                capture_output=True,
                text=True,
            )
        except subprocess.TimeoutExpired:
            raise MeshError(
                f"UV unwrap timed out after {timeout_s:g} s ({len(faces)} faces); "
                "give the mesh UVs or simplify it"
            ) from None
        if proc.returncode != 0:
            why = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
            last = (proc.stderr.strip().splitlines() or [""])[-1][:200]
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


def _child(folder: Path) -> None:
    import xatlas

    vertices = np.load(folder / "vertices.npy")
    faces = np.load(folder / "faces.npy")
    vmapping, indices, uvs = xatlas.parametrize(vertices, faces)
    np.save(folder / "vmapping.npy", vmapping)
    np.save(folder / "indices.npy", indices)
    np.save(folder / "uvs.npy", uvs)


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
