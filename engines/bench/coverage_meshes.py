"""Procedural meshes that behave like real assets for the coverage benchmark (no downloads).

- `humanoid`: capsule limbs hanging close to a capsule torso (3 cm gaps), legs close together, a head;
- `quadruped`: a horizontal body on four legs, a head and a tail: undersides and inner legs;
- `torus_knot`: a (2, 3) knot tube: it hides parts of itself from every side;
- `cube`: six flat faces, the easy case;
- `cup`: a revolved cup with a floor, an inside wall and a rim.
Parts are separate shells that do not cut into each other (as in many rigged assets), so every texel is
on a visible surface: what the views miss is occlusion, not buried geometry.
"""

from __future__ import annotations

import numpy as np
import trimesh


def _capsule(radius: float, length: float, start: np.ndarray, end: np.ndarray) -> trimesh.Trimesh:
    """A capsule whose axis runs from `start` to `end` (hemisphere centres)."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    axis = end - start
    height = float(np.linalg.norm(axis))
    cap = trimesh.creation.capsule(height=height, radius=radius, count=[16, 16])
    # trimesh's capsule runs along Z, centred: hemisphere centres at z = -height/2 and +height/2
    cap.apply_translation([0.0, 0.0, height / 2])
    z = np.array([0.0, 0.0, 1.0])
    d = axis / height
    rot = trimesh.geometry.align_vectors(z, d)
    cap.apply_transform(rot)
    cap.apply_translation(start)
    return cap


def _sphere(radius: float, centre) -> trimesh.Trimesh:
    s = trimesh.creation.icosphere(3, radius=radius)
    s.apply_translation(centre)
    return s


def humanoid() -> trimesh.Trimesh:
    torso_r, arm_r, leg_r, gap = 0.16, 0.055, 0.07, 0.03
    parts = [
        _capsule(torso_r, 0.0, [0, 0.05, 0], [0, 0.45, 0]),
        _sphere(0.12, [0, 0.75, 0]),
    ]
    for side in (-1, 1):
        x_arm = side * (torso_r + gap + arm_r)
        parts.append(_capsule(arm_r, 0.0, [x_arm, 0.52, 0], [x_arm, 0.0, 0]))
        x_leg = side * (leg_r + 0.02)
        parts.append(_capsule(leg_r, 0.0, [x_leg, -0.2, 0], [x_leg, -0.85, 0]))
    return trimesh.util.concatenate(parts)


def quadruped() -> trimesh.Trimesh:
    body_r, leg_r = 0.18, 0.06
    parts = [
        _capsule(body_r, 0.0, [-0.4, 0.1, 0], [0.4, 0.1, 0]),
        _sphere(0.13, [0.78, 0.3, 0]),
        _capsule(0.03, 0.0, [-0.63, 0.15, 0], [-0.85, 0.3, 0]),
    ]
    for x in (-0.38, 0.38):
        for z in (-0.11, 0.11):
            parts.append(_capsule(leg_r, 0.0, [x, -0.13, z], [x, -0.6, z]))
    return trimesh.util.concatenate(parts)


def torus_knot(
    p: int = 2, q: int = 3, tube: float = 0.13, samples: int = 240, ring: int = 16
) -> trimesh.Trimesh:
    t = np.linspace(0, 2 * np.pi, samples, endpoint=False)
    r = 0.6 + 0.25 * np.cos(q * t)
    curve = np.stack([r * np.cos(p * t), 0.25 * np.sin(q * t), r * np.sin(p * t)], axis=1)
    tangent = np.roll(curve, -1, axis=0) - np.roll(curve, 1, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    # a frame that follows the curve without twisting much: project a reference vector
    normal = np.cross(tangent, [0.0, 1.0, 0.0])
    bad = np.linalg.norm(normal, axis=1) < 1e-3
    normal[bad] = np.cross(tangent[bad], [1.0, 0.0, 0.0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    binormal = np.cross(tangent, normal)
    a = np.linspace(0, 2 * np.pi, ring, endpoint=False)
    verts = (
        curve[:, None]
        + tube * np.cos(a)[None, :, None] * normal[:, None]
        + tube * np.sin(a)[None, :, None] * binormal[:, None]
    ).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(samples), np.arange(ring), indexing="ij")
    v00 = i * ring + j
    v01 = i * ring + (j + 1) % ring
    v10 = ((i + 1) % samples) * ring + j
    v11 = ((i + 1) % samples) * ring + (j + 1) % ring
    faces = np.concatenate([np.stack([v00, v10, v11], -1), np.stack([v00, v11, v01], -1)]).reshape(-1, 3)
    mesh = trimesh.Trimesh(verts, faces, process=True)
    mesh.fix_normals()
    return mesh


def cube() -> trimesh.Trimesh:
    return trimesh.creation.box(extents=(1.0, 1.0, 1.0))


def cup() -> trimesh.Trimesh:
    profile = np.array(
        [[0.0, 0.0], [0.4, 0.0], [0.45, 0.9], [0.41, 0.9], [0.36, 0.08], [0.0, 0.08]], dtype=float
    )
    mesh = trimesh.creation.revolve(profile, sections=48)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # Z up -> Y up
    mesh.fix_normals()
    return mesh


MESHES = {
    "humanoid": humanoid,
    "quadruped": quadruped,
    "torus_knot": torus_knot,
    "cube": cube,
    "cup": cup,
}
