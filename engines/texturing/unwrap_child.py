"""The unwrap's child process: `python -m engines.texturing.unwrap_child FOLDER MODE ATLAS_SIZE`.

Reads vertices.npy and faces.npy from FOLDER, writes vmapping.npy, indices.npy and uvs.npy there, and
prints `progress DONE TOTAL` lines on stdout (`engines.texturing.unwrap` runs it and reads them). It
imports only numpy at start (xatlas and scipy when it needs them): it starts once per unwrap.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def _report(done: int, total: int) -> None:
    print(f"progress {done} {total}", flush=True)


def _child(folder: Path, mode: str, atlas_size: int) -> None:
    vertices = np.load(folder / "vertices.npy")
    faces = np.load(folder / "faces.npy")
    if mode == "quality":
        import xatlas

        _report(0, 1)
        vmapping, indices, uvs = xatlas.parametrize(vertices, faces)
        _report(1, 1)
    else:
        from engines.texturing.piecewise_unwrap import PiecewiseOptions, piecewise_unwrap

        vmapping, indices, uvs = piecewise_unwrap(
            vertices, faces, PiecewiseOptions(atlas_size=atlas_size), progress=_report
        )
    np.save(folder / "vmapping.npy", vmapping)
    np.save(folder / "indices.npy", indices)
    np.save(folder / "uvs.npy", uvs)


if __name__ == "__main__":
    _child(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
