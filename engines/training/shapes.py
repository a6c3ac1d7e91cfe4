"""Procedural objects for both data domains: shapes from `trimesh.creation` and named colours.

A caption names exactly one colour and one shape ("a red cube"); the shape word is the same in both
domains so that what the model learns about "torus" in the synthetic domain and in the real domain is
about the same word.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES: tuple[str, ...] = ("cube", "sphere", "torus", "cylinder", "cone", "capsule")

# Named colours (sRGB 0-255). The first eight are chromatic: the evaluation's colour mask uses their hue.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 35, 35),
    "orange": (235, 130, 20),
    "yellow": (235, 210, 40),
    "green": (40, 170, 60),
    "cyan": (40, 190, 210),
    "blue": (40, 70, 210),
    "purple": (130, 50, 190),
    "pink": (235, 110, 170),
    "white": (235, 235, 235),
    "black": (35, 35, 35),
}
CHROMATIC: tuple[str, ...] = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")

# How far inside the unit sphere objects are scaled (engines/texturing/mesh_io.FIT_RADIUS is 0.7).
FIT_RANGE = (0.55, 0.7)


@dataclass(frozen=True)
class ObjectSpec:
    """One procedural object: what it is, how it is posed, which colour."""

    shape: str
    colour: str
    yaw_deg: float
    tilt_deg: float
    aspect: float  # stretch along the object's own up axis
    radius: float  # bounding radius after normalisation

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape}"


def random_spec(rng: np.random.Generator, shapes=SHAPES, colours=tuple(COLOURS)) -> ObjectSpec:
    return ObjectSpec(
        shape=str(shapes[int(rng.integers(len(shapes)))]),
        colour=str(colours[int(rng.integers(len(colours)))]),
        yaw_deg=float(rng.uniform(0, 360)),
        tilt_deg=float(rng.uniform(-15, 15)),
        aspect=float(rng.uniform(0.75, 1.3)),
        radius=float(rng.uniform(*FIT_RANGE)),
    )


def make_mesh(spec: ObjectSpec) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (N,3) float64, faces (F,3) int64), centred and scaled to `spec.radius`."""
    import trimesh

    c = trimesh.creation
    if spec.shape == "cube":
        mesh = c.box(extents=(1.0, 1.0, 1.0))
    elif spec.shape == "sphere":
        mesh = c.icosphere(subdivisions=2, radius=0.5)
    elif spec.shape == "torus":
        mesh = c.torus(major_radius=0.5, minor_radius=0.2, major_sections=32, minor_sections=12)
        # trimesh's torus lies in the XY plane; stand it up facing the cameras at a slant.
        mesh.apply_transform(trimesh.transformations.rotation_matrix(np.radians(60), [1, 0, 0]))
    elif spec.shape == "cylinder":
        mesh = c.cylinder(radius=0.4, height=1.0, sections=24)
    elif spec.shape == "cone":
        mesh = c.cone(radius=0.5, height=1.0, sections=24)
    elif spec.shape == "capsule":
        mesh = c.capsule(height=0.7, radius=0.3, count=[12, 12])
    else:
        raise ValueError(f"unknown shape {spec.shape!r}; choose one of {SHAPES}")
    v = np.asarray(mesh.vertices, dtype=np.float64)
    if spec.shape in ("cylinder", "cone", "capsule"):
        v = v[:, [0, 2, 1]] * np.array([1.0, 1.0, -1.0])  # trimesh's axis is +Z; ours is Y-up
    v = v - 0.5 * (v.min(0) + v.max(0))
    v[:, 1] *= spec.aspect
    rot = _rotation(spec.yaw_deg, spec.tilt_deg)
    v = v @ rot.T
    v = v - 0.5 * (v.min(0) + v.max(0))
    v = v * (spec.radius / np.linalg.norm(v, axis=1).max())
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if spec.shape in ("cylinder", "cone", "capsule"):
        faces = faces[:, ::-1].copy()  # the axis swap mirrored the mesh: keep normals outward
    return v, faces


def _rotation(yaw_deg: float, tilt_deg: float) -> np.ndarray:
    y, t = np.radians(yaw_deg), np.radians(tilt_deg)
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    return ry @ rx


def colour_rgb(name: str) -> np.ndarray:
    return np.array(COLOURS[name], dtype=np.float32) / 255.0
