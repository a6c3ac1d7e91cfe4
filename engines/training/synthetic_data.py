"""The "synthetic" domain: multi-view CG renders of procedural objects with exact 3D labels.

Per object: `views` orbit cameras (the project's convention, engines/sampling/cameras.py) at one random
elevation in [0, 30] deg and a random azimuth offset, azimuths `offset + 360 * k / views`. Each view is
ray-cast with engines/texturing/rasterize.py: the image is flat CG shading (the object's single colour,
Lambert from one fixed light plus ambient, no texture, no noise) over a plain grey background, rendered at
2x and box-filtered down; the geometry maps ([nx, ny, nz, px, py, pz, mask], `geometry_channels`) and the
camera-to-world matrices are exact at the training resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.sampling.cameras import Camera, orbit_cameras
from engines.texturing.rasterize import RayCaster, geometry_channels
from engines.training.shapes import ObjectSpec, colour_rgb, make_mesh, random_spec

BACKGROUND = 0.9  # plain light grey
LIGHT_DIR = np.array([0.4, 0.8, 0.45]) / np.linalg.norm([0.4, 0.8, 0.45])
SUPERSAMPLE = 2


@dataclass
class SyntheticSet:
    images: np.ndarray  # (N, V, H, W, 3) uint8
    geometry: np.ndarray  # (N, V, 7, H, W) float16
    cameras: np.ndarray  # (N, V, 16) float32 camera-to-world, flattened row-major
    captions: list[str]
    shapes: list[str]
    colours: list[str]
    elevations: np.ndarray  # (N,) degrees
    azimuths: np.ndarray  # (N, V) degrees

    def __len__(self) -> int:
        return len(self.captions)


def object_cameras(rng: np.random.Generator, views: int) -> list[Camera]:
    elevation = float(rng.uniform(0.0, 30.0))
    offset = float(rng.uniform(0.0, 360.0))
    return orbit_cameras(views, elevation, [(offset + 360.0 * k / views) % 360.0 for k in range(views)])


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Box filter (H, W, C) by an integer factor."""
    if factor == 1:
        return image
    h, w, c = image.shape
    return image.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))


def shade_flat(caster: RayCaster, camera: Camera, resolution: int, rgb: np.ndarray) -> np.ndarray:
    """Flat CG render, float (H, W, 3) in [0, 1]."""
    maps = caster.render(camera, resolution)
    n = maps.normal
    to_cam = camera.camera_to_world()[:3, 2].astype(np.float32)
    n = np.where((n @ to_cam)[..., None] < 0, -n, n)  # two-sided
    lambert = np.clip(n @ LIGHT_DIR.astype(np.float32), 0, 1)
    shade = 0.45 + 0.55 * lambert
    out = np.full((resolution, resolution, 3), BACKGROUND, np.float32)
    out[maps.mask] = (rgb[None, None, :] * shade[..., None])[maps.mask]
    return out


def render_object(spec: ObjectSpec, cameras: list[Camera], resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (V, H, W, 3) uint8, geometry (V, 7, H, W) float32) of one object."""
    vertices, faces = make_mesh(spec)
    caster = RayCaster(vertices, faces)
    rgb = colour_rgb(spec.colour)
    images = [
        downsample(shade_flat(caster, cam, resolution * SUPERSAMPLE, rgb), SUPERSAMPLE) for cam in cameras
    ]
    geometry = geometry_channels([caster.render(cam, resolution) for cam in cameras])
    return _to_uint8(np.stack(images)), geometry


def make_synthetic_set(count: int, seed: int, resolution: int = 32, views: int = 4) -> SyntheticSet:
    """`count` objects, deterministic from `seed` (same seed -> identical arrays)."""
    rng = np.random.default_rng([seed, 0x5917])
    imgs, geoms, cams, specs, elevations, azimuths = [], [], [], [], [], []
    for _ in range(count):
        spec = random_spec(rng)
        cameras = object_cameras(rng, views)
        image, geometry = render_object(spec, cameras, resolution)
        imgs.append(image)
        geoms.append(geometry.astype(np.float16))
        cams.append(np.stack([c.embedding() for c in cameras]))
        specs.append(spec)
        elevations.append(cameras[0].elevation_deg)
        azimuths.append([c.azimuth_deg for c in cameras])
    return SyntheticSet(
        images=np.stack(imgs),
        geometry=np.stack(geoms),
        cameras=np.stack(cams).astype(np.float32),
        captions=[s.caption for s in specs],
        shapes=[s.shape for s in specs],
        colours=[s.colour for s in specs],
        elevations=np.array(elevations, np.float32),
        azimuths=np.array(azimuths, np.float32),
    )


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
