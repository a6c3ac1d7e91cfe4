"""Write the results: `texture.png` and a textured GLB.

The GLB holds the input's geometry in its original coordinates (scene transforms applied, the
normalisation undone), its UVs as they are, and a glTF PBR material whose baseColorTexture is the atlas
(metallic 0, roughness 1: the atlas is albedo). trimesh writes standard glTF 2.0 (UVs flipped to glTF's
top-left origin on the way out and back on the way in), which Blender and three.js read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from engines.texturing.mesh_io import LoadedMesh


def write_texture_png(atlas: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(atlas[..., :3], dtype=np.uint8)).save(path)
    return path


def textured_glb_bytes(mesh: LoadedMesh, atlas: np.ndarray) -> bytes:
    """The mesh with `atlas` as its base colour, as GLB bytes."""
    import trimesh

    if mesh.uv is None:
        raise ValueError("cannot export a textured mesh without UVs")
    material = trimesh.visual.material.PBRMaterial(
        name="realiz3d_baked",
        baseColorTexture=Image.fromarray(np.ascontiguousarray(atlas[..., :3], dtype=np.uint8)),
        metallicFactor=0.0,
        roughnessFactor=1.0,
        doubleSided=False,
    )
    out = trimesh.Trimesh(
        vertices=mesh.vertices,
        faces=mesh.faces,
        visual=trimesh.visual.TextureVisuals(uv=mesh.uv, material=material),
        process=False,
    )
    return out.export(file_type="glb")


def write_textured_glb(mesh: LoadedMesh, atlas: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(textured_glb_bytes(mesh, atlas))
    return path
