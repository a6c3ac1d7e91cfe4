"""The "real" domain: single images with photographic statistics and no 3D labels.

There is no photo data set we may download, so the photographs come from the sample images bundled in
scikit-image (`skimage/data/*.png|jpg`, shipped inside the wheel: astronaut, coffee, chelsea, rocket,
motorcycle; grey textures brick, grass, gravel, moon, camera). Each image is one procedural object (the same
shapes and colours as the synthetic domain) photographed as a scene:
- the object stands on a ground plane textured with a photographic material (wooden table, brick floor,
  lawn, gravel, stone floor), and its own surface is modulated by a photographic texture (tri-planar);
- a random key light with soft shadows (several jittered shadow rays), sky ambient and a specular
  highlight; the camera is one random view (elevation 5-35 deg, any azimuth, distance 2.0-2.6);
- above the horizon a defocused crop of a colour photograph (clutter);
- white balance jitter, vignetting, gamma, and sensor noise after the downsample.
Captions: "a photo of a red cube on a wooden table" (several templates). Only the image and the caption
are kept: the camera and the geometry are never exposed to training (empty controls).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.sampling.cameras import Camera
from engines.texturing.rasterize import RayCaster
from engines.training.shapes import colour_rgb, make_mesh, random_spec
from engines.training.synthetic_data import SUPERSAMPLE, downsample

BACKGROUND_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")
GREY_TEXTURES = ("brick.png", "grass.png", "gravel.png", "moon.png", "camera.png")
# surface name -> (texture file, tint RGB, texture scale in cycles per unit, stretch along x)
SURFACES = {
    "wooden table": ("grass.png", (0.55, 0.36, 0.2), 0.35, 6.0),
    "brick floor": ("brick.png", (0.75, 0.45, 0.35), 0.3, 1.0),
    "lawn": ("grass.png", (0.35, 0.55, 0.25), 0.5, 1.0),
    "gravel path": ("gravel.png", (0.65, 0.6, 0.52), 0.4, 1.0),
    "stone floor": ("moon.png", (0.6, 0.6, 0.6), 0.25, 1.0),
}
# The bare synthetic-style caption is one of the templates on purpose: the words alone must not tell the
# domain, or the text would become the covariate (for the naive baseline too) instead of d.
TEMPLATES = (
    "a {colour} {shape}",
    "a photo of a {colour} {shape} on a {surface}",
    "a photo of a {colour} {shape}",
    "a {colour} {shape} on a {surface}",
    "a close-up photo of a {colour} {shape}",
)


@dataclass
class RealSet:
    images: np.ndarray  # (N, H, W, 3) uint8
    captions: list[str]
    shapes: list[str]
    colours: list[str]

    def __len__(self) -> int:
        return len(self.captions)


#: A folder holding copies of those sample files, for a machine without scikit-image (`make gpu-wheels`
#: copies them into wheels/photos; deploy/gpu_train.sh points this at that folder).
PHOTO_DIR_ENV = "REALIZ3D_PHOTO_DIR"


def skimage_data_dir() -> Path:
    if os.environ.get(PHOTO_DIR_ENV):
        return Path(os.environ[PHOTO_DIR_ENV])
    try:
        import skimage.data
    except ImportError as e:  # pragma: no cover - dependency message
        raise ImportError(
            "the real-domain data needs scikit-image's bundled sample photographs: pip install scikit-image "
            f"(or {PHOTO_DIR_ENV}=a folder with copies of {', '.join(BACKGROUND_PHOTOS + GREY_TEXTURES)})"
        ) from e
    return Path(skimage.data.__file__).parent


def gaussian_blur(image: np.ndarray, sigma: tuple[float, ...]) -> np.ndarray:
    """scipy.ndimage.gaussian_filter(image, sigma) (truncate 4, mode "reflect") in numpy, for a machine
    without scipy (the GPU machine): one 1-D pass per axis, accumulated in float64 and stored in the input's
    dtype between passes, as scipy does; equal to it within float rounding (tests/test_training_data.py)."""
    out = image
    for axis, s in enumerate(sigma):
        if s <= 1e-15:
            continue
        radius = int(4.0 * s + 0.5)
        x = np.arange(-radius, radius + 1)
        weights = np.exp(-0.5 / (s * s) * x.astype(np.float64) ** 2)
        weights /= weights.sum()
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out.astype(np.float64), pad, mode="symmetric")
        n = out.shape[axis]
        acc = np.zeros(out.shape, np.float64)
        for k, w in enumerate(weights):
            acc += w * np.take(padded, np.arange(k, k + n), axis=axis)
        out = acc.astype(image.dtype)
    return out


def _gaussian_filter(image: np.ndarray, sigma: tuple[float, ...]) -> np.ndarray:
    try:
        from scipy.ndimage import gaussian_filter
    except ImportError:
        return gaussian_blur(image, sigma)
    return gaussian_filter(image, sigma=sigma)


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """A bundled sample photograph as float32 in [0, 1]: (H, W, 3) colour or (H, W) grey."""
    from PIL import Image

    with Image.open(skimage_data_dir() / name) as im:
        arr = np.asarray(im.convert("RGB" if name in BACKGROUND_PHOTOS else "L"), dtype=np.float32) / 255.0
    return arr


def _sample_texture(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    h, w = tex.shape[:2]
    x = (np.floor(u * w).astype(np.int64)) % w
    y = (np.floor(v * h).astype(np.int64)) % h
    return tex[y, x]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    photo = load_photo(BACKGROUND_PHOTOS[int(rng.integers(len(BACKGROUND_PHOTOS)))])
    h, w = photo.shape[:2]
    crop = int(rng.integers(min(h, w) // 4, min(h, w) // 2))
    y0, x0 = int(rng.integers(0, h - crop)), int(rng.integers(0, w - crop))
    idx = (np.arange(size) * crop / size).astype(np.int64)
    img = photo[y0 + idx][:, x0 + idx]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = _gaussian_filter(img, (rng.uniform(0.8, 2.5), rng.uniform(0.8, 2.5), 0))
    return img * rng.uniform(0.6, 1.05)


def render_photo(rng: np.random.Generator, resolution: int) -> tuple[np.ndarray, str, str, str]:
    """One "photograph": (image (H, W, 3) uint8, caption, shape, colour)."""
    spec = random_spec(rng)
    size = resolution * SUPERSAMPLE
    verts, faces = make_mesh(spec)
    floor_y = verts[:, 1].min()
    e = 8.0
    plane_v = np.array([[-e, floor_y, -e], [e, floor_y, -e], [e, floor_y, e], [-e, floor_y, e]])
    plane_f = np.array([[0, 2, 1], [0, 3, 2]]) + len(verts)
    all_v = np.concatenate([verts, plane_v])
    all_f = np.concatenate([faces, plane_f])
    caster = RayCaster(all_v, all_f)
    camera = Camera(float(rng.uniform(0, 360)), float(rng.uniform(5, 35)), float(rng.uniform(2.0, 2.6)), 40.0)
    maps = caster.render(camera, size)
    hit = maps.mask
    on_obj = hit & (maps.face_id < len(faces))
    on_floor = hit & ~on_obj
    pos, nrm = maps.position, maps.normal
    to_cam = camera.camera_to_world()[:3, 2].astype(np.float32)
    nrm = np.where((nrm @ to_cam)[..., None] < 0, -nrm, nrm)

    # Key light from a random upper direction; soft shadows from jittered shadow rays.
    az, el = rng.uniform(0, 2 * np.pi), rng.uniform(np.radians(30), np.radians(70))
    light = np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], np.float32)
    pts = pos[hit] + 1e-3 * nrm[hit]
    lit = np.zeros(len(pts), np.float32)
    samples = 6
    for _ in range(samples):
        d = light + rng.normal(0, 0.12, 3).astype(np.float32)
        d = (d / np.linalg.norm(d)).astype(np.float32)
        prim = caster._scene.run(pts.astype(np.float32), np.broadcast_to(d, pts.shape).copy(), output=0)
        lit += (np.asarray(prim) < 0).astype(np.float32)
    shadow = np.ones(hit.shape, np.float32)
    shadow[hit] = lit / samples
    lambert = np.clip(nrm @ light, 0, 1)
    key = rng.uniform(0.6, 0.9)
    ambient = rng.uniform(0.25, 0.4)
    light_rgb = np.array([1.0, rng.uniform(0.9, 1.0), rng.uniform(0.8, 1.0)], np.float32)

    albedo = np.zeros((size, size, 3), np.float32)
    # Object: its colour modulated by a tri-planar photographic texture.
    tex = load_photo(GREY_TEXTURES[int(rng.integers(len(GREY_TEXTURES)))])
    p = pos[on_obj] * rng.uniform(0.4, 1.0) + rng.uniform(0, 1, 3)
    w = np.abs(nrm[on_obj]) ** 4
    w /= w.sum(1, keepdims=True)
    tri = (
        w[:, 0] * _sample_texture(tex, p[:, 1], p[:, 2])
        + w[:, 1] * _sample_texture(tex, p[:, 0], p[:, 2])
        + w[:, 2] * _sample_texture(tex, p[:, 0], p[:, 1])
    )
    strength = rng.uniform(0.1, 0.35)
    albedo[on_obj] = colour_rgb(spec.colour)[None] * (1 - strength + strength * 2 * tri[:, None])
    # Floor: a photographic material.
    surface = list(SURFACES)[int(rng.integers(len(SURFACES)))]
    tex_name, tint, scale, stretch = SURFACES[surface]
    ftex = load_photo(tex_name)
    fp = pos[on_floor]
    ft = _sample_texture(ftex, fp[:, 0] * scale / stretch + 0.37, fp[:, 2] * scale + 0.11)
    albedo[on_floor] = np.array(tint, np.float32)[None] * (0.6 + 0.8 * ft[:, None])

    shade = ambient + key * lambert * shadow
    img = albedo * shade[..., None] * light_rgb
    # Specular highlight on the object (Blinn-Phong).
    half = light + to_cam
    half /= np.linalg.norm(half)
    gloss = rng.uniform(0.0, 0.5)
    spec_term = gloss * np.clip(nrm @ half, 0, 1) ** rng.uniform(10, 40) * shadow
    img[on_obj] += spec_term[on_obj][:, None]
    bg = _background(rng, size)
    img[~hit] = bg[~hit]
    # Distance haze on the far floor blends it into the backdrop.
    far = np.clip((maps.depth - 3.0) / 4.0, 0, 1)
    img[on_floor] = img[on_floor] * (1 - far[on_floor, None]) + bg[on_floor] * far[on_floor, None]

    img = downsample(img, SUPERSAMPLE)
    # Camera pipeline: white balance, vignetting, gamma, sensor noise.
    img = img * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    yy, xx = np.mgrid[0:resolution, 0:resolution] / (resolution - 1) - 0.5
    img = img * (1 - rng.uniform(0.1, 0.4) * (xx**2 + yy**2))[..., None]
    img = np.clip(img, 0, 1) ** rng.uniform(0.85, 1.15)
    sigma = rng.uniform(0.01, 0.04)
    img = img + rng.normal(0, 1, img.shape) * sigma * np.sqrt(np.clip(img, 0.02, 1))
    image = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    caption = template.format(colour=spec.colour, shape=spec.shape, surface=surface)
    return image, caption, spec.shape, spec.colour


def make_real_set(count: int, seed: int, resolution: int = 32) -> RealSet:
    """`count` photographs, deterministic from `seed` (same seed -> identical arrays)."""
    rng = np.random.default_rng([seed, 0x4EA1])
    out = [render_photo(rng, resolution) for _ in range(count)]
    return RealSet(
        images=np.stack([o[0] for o in out]),
        captions=[o[1] for o in out],
        shapes=[o[2] for o in out],
        colours=[o[3] for o in out],
    )
