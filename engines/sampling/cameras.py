"""Cameras: one convention for generation, texturing and `bake`.

Convention (documented in README and written into every `cameras.json`):
- World is Y-up, right-handed. The object sits at the origin, normalised into the unit sphere.
- A camera at azimuth `az` and elevation `el` (degrees) and distance `radius` sits at
  `radius * (cos(el) sin(az), sin(el), cos(el) cos(az))`: azimuth 0 looks from +Z (the front),
  azimuth 90 from +X, elevation 90 from straight above.
- Camera-to-world matrices use the OpenGL camera frame: the camera looks down its -Z axis, +Y is up
  in the image, +X to the right. Perspective with a vertical field of view `fov_deg` (square images).
- The UNet's camera embedding is the camera-to-world 4x4 flattened row-major to 16 numbers (MVDream).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONVENTION = "y-up, camera-to-world, OpenGL camera frame (looks down -Z), looking at the origin"
CAMERAS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Camera:
    """One view: where the camera sits (spherical, degrees) and its lens."""

    azimuth_deg: float
    elevation_deg: float
    radius: float = 2.2
    fov_deg: float = 40.0

    def position(self) -> np.ndarray:
        az, el = math.radians(self.azimuth_deg), math.radians(self.elevation_deg)
        return self.radius * np.array(
            [math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)], dtype=np.float64
        )

    def camera_to_world(self) -> np.ndarray:
        """4x4 matrix whose columns are the camera's right, up, back axes and its position."""
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

    def intrinsics(self, resolution: int) -> np.ndarray:
        f = self.focal_px(resolution)
        c = resolution / 2.0
        return np.array([[f, 0, c], [0, f, c], [0, 0, 1]], dtype=np.float64)

    def embedding(self) -> np.ndarray:
        """The 16 numbers the UNet's camera MLP sees."""
        return self.camera_to_world().astype(np.float32).reshape(16)


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


def camera_embeddings(cameras: list[Camera]) -> np.ndarray:
    """(num_views, 16) float32."""
    return np.stack([c.embedding() for c in cameras])


def cameras_to_json(cameras: list[Camera], resolution: int) -> dict:
    return {
        "format_version": CAMERAS_FORMAT_VERSION,
        "convention": CONVENTION,
        "resolution": resolution,
        "cameras": [
            {
                "index": i,
                "azimuth_deg": c.azimuth_deg,
                "elevation_deg": c.elevation_deg,
                "radius": c.radius,
                "fov_deg": c.fov_deg,
                "camera_to_world": c.camera_to_world().tolist(),
            }
            for i, c in enumerate(cameras)
        ],
    }


def cameras_from_json(data: dict) -> tuple[list[Camera], int | None]:
    """Parse a `cameras.json` document; raises ValueError naming the bad field."""
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list) or not data["cameras"]:
        raise ValueError("cameras.json must be an object with a non-empty 'cameras' list")
    cams = []
    for i, c in enumerate(data["cameras"]):
        try:
            cam = Camera(
                float(c["azimuth_deg"]),
                float(c["elevation_deg"]),
                float(c.get("radius", 2.2)),
                float(c.get("fov_deg", 40.0)),
            )
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
