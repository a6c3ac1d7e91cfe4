"""Cameras: one convention for generation, texturing and `bake`.

Convention (documented in README and written into every `cameras.json`):
- World is Y-up, right-handed. The object sits at the origin, normalised into the unit sphere.
- A camera at azimuth `az` and elevation `el` (degrees) and distance `radius` sits at
  `radius * (cos(el) sin(az), sin(el), cos(el) cos(az))`: azimuth 0 looks from +Z (the front),
  azimuth 90 from +X, elevation 90 from straight above.
- Camera-to-world matrices use the OpenGL camera frame: the camera looks down its -Z axis, +Y is up
  in the image, +X to the right. Perspective with a vertical field of view `fov_deg` (square images).
- The UNet's camera embedding is the camera-to-world 4x4 flattened row-major to 16 numbers (MVDream),
  in the model's camera convention (`realiz3d.json` `camera.convention`): `realiz3d` is the matrix above;
  `mvdream` is MVDream's Z-up world (x, y, z) -> (x, -z, y) with the camera moved onto the unit sphere,
  computed exactly per camera, so a camera at any radius reads as MVDream's unit-distance camera.

A camera is either an orbit (azimuth, elevation, radius around the origin) or explicit: any
camera-to-world matrix (a rigid transform in the frame above) with its field of view. Users' own renders are
explicit cameras; both kinds round-trip through `cameras.json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONVENTION = "y-up, camera-to-world, OpenGL camera frame (looks down -Z)"
CAMERAS_FORMAT_VERSION = 1
CAMERA_CONVENTIONS = ("realiz3d", "mvdream")
# MVDream's `convert_opengl_to_blender`: world (x, y, z) Y-up -> (x, -z, y) Z-up, applied on the left.
_Y_UP_TO_Z_UP = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
_RIGID_TOL = 1e-4


def check_camera_matrix(matrix: object) -> np.ndarray:
    """A 4x4 camera-to-world matrix as float64; ValueError unless it is a finite rigid transform."""
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("camera_to_world must be a 4x4 array of numbers") from None
    if m.shape != (4, 4):
        raise ValueError(f"camera_to_world must be 4x4, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("camera_to_world has non-finite values")
    if np.abs(m[3] - [0, 0, 0, 1]).max() > _RIGID_TOL:
        raise ValueError("camera_to_world's last row must be [0, 0, 0, 1]")
    r = m[:3, :3]
    if np.abs(r.T @ r - np.eye(3)).max() > _RIGID_TOL or np.linalg.det(r) < 0:
        raise ValueError("camera_to_world's 3x3 block must be a rotation (orthonormal, determinant +1)")
    return m


@dataclass(frozen=True)
class Camera:
    """One view and its lens: an orbit camera (spherical, degrees, looking at the origin), or an explicit
    camera-to-world `matrix` (16 numbers, row-major), which then decides the pose."""

    azimuth_deg: float = 0.0
    elevation_deg: float = 0.0
    radius: float = 2.2
    fov_deg: float = 40.0
    matrix: tuple[float, ...] | None = None

    @classmethod
    def from_matrix(cls, camera_to_world: object, fov_deg: float = 40.0) -> Camera:
        """An explicit camera; its azimuth, elevation and radius are those of its position (for display)."""
        m = check_camera_matrix(camera_to_world)
        if not 0 < fov_deg < 180:
            raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
        x, y, z = m[:3, 3]
        radius = float(math.sqrt(x * x + y * y + z * z))
        el = math.degrees(math.asin(y / radius)) if radius > 0 else 0.0
        az = math.degrees(math.atan2(x, z)) if radius > 0 else 0.0
        return cls(az, el, radius, float(fov_deg), tuple(float(v) for v in m.reshape(16)))

    @property
    def explicit(self) -> bool:
        return self.matrix is not None

    def position(self) -> np.ndarray:
        if self.matrix is not None:
            return np.array(self.matrix[3:12:4], dtype=np.float64)
        az, el = math.radians(self.azimuth_deg), math.radians(self.elevation_deg)
        return self.radius * np.array(
            [math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)], dtype=np.float64
        )

    def camera_to_world(self) -> np.ndarray:
        """4x4 matrix whose columns are the camera's right, up, back axes and its position."""
        if self.matrix is not None:
            return np.array(self.matrix, dtype=np.float64).reshape(4, 4)
        eye = self.position()
        back = eye / np.linalg.norm(eye)  # +Z of the camera points away from the target
        world_up = np.array([0.0, 1.0, 0.0])
        if abs(float(np.dot(back, world_up))) > 0.999:  # straight above or below: pick a stable up
            world_up = np.array([0.0, 0.0, -1.0]) if back[1] > 0 else np.array([0.0, 0.0, 1.0])
        right = np.cross(world_up, back)
        right /= np.linalg.norm(right)
        up = np.cross(back, right)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, eye
        return m

    def focal_px(self, resolution: int) -> float:
        """Focal length in pixels for a square image of `resolution` pixels."""
        return 0.5 * resolution / math.tan(math.radians(self.fov_deg) / 2)

    def embedding(self, convention: str = "realiz3d") -> np.ndarray:
        """The 16 numbers the UNet's camera MLP sees, in the model's camera convention."""
        return model_camera_matrix(self.camera_to_world(), convention).astype(np.float32).reshape(16)


def model_camera_matrix(camera_to_world: np.ndarray, convention: str) -> np.ndarray:
    """Our camera-to-world matrix in a model's camera convention (exact, at any radius)."""
    if convention == "realiz3d":
        return camera_to_world
    if convention == "mvdream":
        m = _Y_UP_TO_Z_UP @ camera_to_world
        distance = float(np.linalg.norm(m[:3, 3]))
        if distance > 0:
            m[:3, 3] /= distance  # MVDream's `normalize_camera`: the camera on the unit sphere
        return m
    raise ValueError(f"unknown camera convention {convention!r}; known: {', '.join(CAMERA_CONVENTIONS)}")


def orbit_cameras(
    num_views: int,
    elevation_deg: float = 15.0,
    azimuths_deg: list[float] | None = None,
    radius: float = 2.2,
    fov_deg: float = 40.0,
) -> list[Camera]:
    """`num_views` cameras around the object; azimuths evenly spaced from 0 unless given."""
    if azimuths_deg is None:
        azimuths_deg = [360.0 * i / num_views for i in range(num_views)]
    if len(azimuths_deg) != num_views:
        raise ValueError(f"azimuths_deg has {len(azimuths_deg)} values but num_views is {num_views}")
    return [Camera(float(a), float(elevation_deg), radius, fov_deg) for a in azimuths_deg]


def texturing_cameras(num_views: int = 6, radius: float = 2.2, fov_deg: float = 40.0) -> list[Camera]:
    """Default view set for texturing: a ring at elevation 0, then top and bottom.

    6 views = 4 around (0, 90, 180, 270) + top + bottom, as Hunyuan3D-2 Paint; 8 = 6 around + top + bottom.
    Fewer than 3 views gives a plain ring.
    """
    if num_views < 3:
        return orbit_cameras(num_views, 0.0, radius=radius, fov_deg=fov_deg)
    ring = num_views - 2
    cams = orbit_cameras(ring, 0.0, radius=radius, fov_deg=fov_deg)
    cams.append(Camera(0.0, 89.9, radius, fov_deg))
    cams.append(Camera(0.0, -89.9, radius, fov_deg))
    return cams


def camera_embeddings(cameras: list[Camera], convention: str = "realiz3d") -> np.ndarray:
    """(num_views, 16) float32, in the model's camera convention."""
    return np.stack([c.embedding(convention) for c in cameras])


def camera_to_json(index: int, c: Camera) -> dict:
    """One `cameras.json` entry: an orbit camera keeps its angles; an explicit one only its matrix."""
    entry: dict = {"index": index}
    if not c.explicit:
        entry.update(azimuth_deg=c.azimuth_deg, elevation_deg=c.elevation_deg, radius=c.radius)
    entry.update(fov_deg=c.fov_deg, camera_to_world=c.camera_to_world().tolist())
    return entry


def cameras_to_json(cameras: list[Camera], resolution: int) -> dict:
    return {
        "format_version": CAMERAS_FORMAT_VERSION,
        "convention": CONVENTION,
        "resolution": resolution,
        "cameras": [camera_to_json(i, c) for i, c in enumerate(cameras)],
    }


def camera_from_json(c: dict) -> Camera:
    """An orbit camera when the entry has `azimuth_deg`, else an explicit one from `camera_to_world`."""
    if not isinstance(c, dict):
        raise TypeError("expected an object")
    fov = float(c.get("fov_deg", 40.0))
    if "azimuth_deg" not in c and "camera_to_world" in c:
        return Camera.from_matrix(c["camera_to_world"], fov)
    return Camera(float(c["azimuth_deg"]), float(c["elevation_deg"]), float(c.get("radius", 2.2)), fov)


def cameras_from_json(data: dict) -> tuple[list[Camera], int | None]:
    """Parse a `cameras.json` document; raises ValueError naming the bad field."""
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list) or not data["cameras"]:
        raise ValueError("cameras.json must be an object with a non-empty 'cameras' list")
    cams = []
    for i, c in enumerate(data["cameras"]):
        try:
            cam = camera_from_json(c)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"cameras.json: camera {i} is malformed ({e})") from None
        if not (cam.radius > 0 and 0 < cam.fov_deg < 180):
            raise ValueError(f"cameras.json: camera {i} needs radius > 0 and 0 < fov_deg < 180")
        cams.append(cam)
    res = data.get("resolution")
    return cams, (int(res) if res is not None else None)


def load_cameras(path: str | Path) -> tuple[list[Camera], int | None]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read cameras ({e})") from None
    return cameras_from_json(data)
