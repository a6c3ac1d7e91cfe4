"""The on-disk training data set (`realiz3d train --data DATA_DIR`): synthetic objects and real images.

    DATA_DIR/dataset.json                  {"format": "realiz3d-dataset", "format_version": 1}
    DATA_DIR/synthetic/metadata.jsonl      one object a line: {"object": "objects/0000", "text": "a red cube"}
    DATA_DIR/synthetic/objects/0000/
        cameras.json                       our cameras.json form (engines/sampling/cameras.py), one entry a view
        view_00.png, view_01.png, ...      the renders, square RGB (RGBA is composited over white)
        normal_00.npy, position_00.npy     optional, both or neither: (H, W, 3) float world normals / positions
                                           of the normalised object, 0 on the background, at the view's size
        mask_00.png                        optional object mask (default: where the normal map is non-zero)
    DATA_DIR/real/metadata.jsonl           one image a line: {"file_name": "images/0000.jpg", "text": "a photo of..."}
    DATA_DIR/real/images/...               any PIL-readable image; cropped to its centre square

`metadata.jsonl` with `file_name` + `text` is the Hugging Face `imagefolder` convention, and an object folder
is what `realiz3d generate --out` writes (view_XX.png + cameras.json). Either part may be missing; the
training stages that need it say so. Images are centre-cropped and resized (Lanczos) to the model's
resolution; geometry maps are area-averaged to the UNet's input resolution (one cell per VAE factor^2
pixels), the mask becoming the covered fraction, as the texturing pipeline does at inference.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.errors import UserInputError
from engines.sampling.cameras import cameras_from_json

DATASET_FORMAT = "realiz3d-dataset"
DATASET_FORMAT_VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_CACHE_ITEMS = 4096  # decoded samples kept in memory per part (a small data set is read from disk once)


def _read_metadata(path: Path, key: str) -> list[tuple[str, str]]:
    """(`key` value, text) per line of a metadata.jsonl; UserInputError naming the line otherwise."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserInputError(f"{path}:{n}: not JSON ({e})") from None
        if (
            not isinstance(row, dict)
            or not isinstance(row.get(key), str)
            or not isinstance(row.get("text"), str)
        ):
            raise UserInputError(f'{path}:{n}: expected {{"{key}": "...", "text": "..."}}')
        rows.append((row[key], row["text"]))
    if not rows:
        raise UserInputError(f"{path}: no entries")
    return rows


def _inside(root: Path, rel: str, where: str) -> Path:
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise UserInputError(f"{where}: {rel!r} points outside {root}")
    return path


def read_rgb(path: Path, resolution: int) -> np.ndarray:
    """(resolution, resolution, 3) uint8: the centre square of the image, resized with Lanczos."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, im)
            im = im.convert("RGB")
    except OSError as e:
        raise UserInputError(f"{path}: cannot read the image ({e})") from None
    w, h = im.size
    side = min(w, h)
    if w != h:
        im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    if side != resolution:
        im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


def area_average(maps: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) -> (C, size, size) by averaging over each output cell (adaptive average pooling)."""
    import torch
    import torch.nn.functional as F

    if maps.shape[-1] == size:
        return maps.astype(np.float32)
    return F.adaptive_avg_pool2d(torch.from_numpy(maps.astype(np.float32)), size).numpy()


@dataclass(frozen=True)
class Layout:
    """What the model needs from the data: its resolution, the UNet input's pixels per cell, its camera
    convention."""

    resolution: int
    geometry_factor: int = 1
    camera_convention: str = "realiz3d"

    @property
    def geometry_size(self) -> int:
        return self.resolution // self.geometry_factor


class SyntheticObjects:
    """The synthetic part: multi-view objects with cameras and optional geometry maps."""

    def __init__(self, root: Path, layout: Layout) -> None:
        self.root, self.layout = root, layout
        meta = root / "metadata.jsonl"
        rows = _read_metadata(meta, "object")
        self.folders = [_inside(root, rel, str(meta)) for rel, _ in rows]
        self.captions = [text for _, text in rows]
        self.cameras: list[np.ndarray] = []
        self.has_geometry: list[bool] = []
        views = None
        for folder in self.folders:
            cams = self._cameras(folder)
            if views is None:
                views = len(cams)
            elif len(cams) != views:
                raise UserInputError(
                    f"{folder / 'cameras.json'}: {len(cams)} views, but the first object has {views} "
                    "(every object of a data set has the same number of views)"
                )
            for i in range(len(cams)):
                self._view_path(folder, i)
            normals = [(folder / f"normal_{i:02d}.npy").is_file() for i in range(len(cams))]
            positions = [(folder / f"position_{i:02d}.npy").is_file() for i in range(len(cams))]
            if (any(normals) or any(positions)) and not (all(normals) and all(positions)):
                raise UserInputError(
                    f"{folder}: geometry maps must be given for every view, normal_XX.npy and "
                    "position_XX.npy both, or not at all"
                )
            self.has_geometry.append(all(normals) and all(positions))
            self.cameras.append(cams)
        self.views = int(views or 0)
        self.load = functools.lru_cache(maxsize=_CACHE_ITEMS)(self._load)

    def __len__(self) -> int:
        return len(self.captions)

    def _cameras(self, folder: Path) -> np.ndarray:
        path = folder / "cameras.json"
        if not path.is_file():
            raise UserInputError(f"{path}: missing (every synthetic object has its cameras.json)")
        try:
            cams, _ = cameras_from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, ValueError) as e:
            raise UserInputError(f"{path}: {e}") from None
        return np.stack([c.embedding(self.layout.camera_convention) for c in cams]).astype(np.float32)

    @staticmethod
    def _view_path(folder: Path, i: int) -> Path:
        for suffix in IMAGE_SUFFIXES:
            path = folder / f"view_{i:02d}{suffix}"
            if path.is_file():
                return path
        raise UserInputError(f"{folder}: view_{i:02d}.png missing (cameras.json lists this view)")

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(images (V, H, W, 3) uint8, geometry (V, 7, h, w) float32 at the UNet input size, or None)."""
        folder, res = self.folders[index], self.layout.resolution
        images = np.stack([read_rgb(self._view_path(folder, i), res) for i in range(self.views)])
        if not self.has_geometry[index]:
            return images, None
        geometry = [self._geometry(folder, i) for i in range(self.views)]
        return images, np.stack(geometry)

    def _geometry(self, folder: Path, i: int) -> np.ndarray:
        normal = self._map(folder / f"normal_{i:02d}.npy")
        position = self._map(folder / f"position_{i:02d}.npy")
        if normal.shape != position.shape:
            raise UserInputError(f"{folder}: normal_{i:02d}.npy and position_{i:02d}.npy differ in shape")
        mask_path = folder / f"mask_{i:02d}.png"
        if mask_path.is_file():
            from PIL import Image

            with Image.open(mask_path) as im:
                mask = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
            if mask.shape != normal.shape[:2]:
                raise UserInputError(f"{mask_path}: {mask.shape} but the normal map is {normal.shape[:2]}")
        else:
            mask = (np.abs(normal).sum(-1) > 0).astype(np.float32)
        maps = np.concatenate([normal.transpose(2, 0, 1), position.transpose(2, 0, 1), mask[None]])
        return area_average(_centre_square(maps), self.layout.geometry_size)

    @staticmethod
    def _map(path: Path) -> np.ndarray:
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserInputError(f"{path}: cannot read ({e})") from None
        if arr.ndim != 3 or arr.shape[2] != 3 or not np.issubdtype(arr.dtype, np.floating):
            raise UserInputError(f"{path}: expected an (H, W, 3) float array, got {arr.dtype} {arr.shape}")
        return arr.astype(np.float32)


def _centre_square(maps: np.ndarray) -> np.ndarray:
    h, w = maps.shape[-2:]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    return maps[:, y : y + side, x : x + side]


class RealImages:
    """The real part: single images with captions, no camera, no geometry."""

    def __init__(self, root: Path, layout: Layout) -> None:
        self.root, self.layout = root, layout
        meta = root / "metadata.jsonl"
        rows = _read_metadata(meta, "file_name")
        self.paths = [_inside(root, rel, str(meta)) for rel, _ in rows]
        self.captions = [text for _, text in rows]
        for path in self.paths:
            if not path.is_file():
                raise UserInputError(f"{meta}: {path.relative_to(root.resolve())} missing")
        self.load = functools.lru_cache(maxsize=_CACHE_ITEMS)(self._load)

    def __len__(self) -> int:
        return len(self.captions)

    def _load(self, index: int) -> np.ndarray:
        return read_rgb(self.paths[index], self.layout.resolution)


@dataclass
class Dataset:
    root: Path
    synthetic: SyntheticObjects | None
    real: RealImages | None

    def describe(self) -> str:
        syn = (
            f"{len(self.synthetic)} synthetic objects x {self.synthetic.views} views"
            if self.synthetic
            else "no synthetic part"
        )
        real = f"{len(self.real)} real images" if self.real else "no real part"
        return f"{self.root}: {syn}, {real}"


def open_dataset(root: str | Path, layout: Layout) -> Dataset:
    """Read and check a DATA_DIR (every file named by the metadata exists, cameras parse, views agree)."""
    root = Path(root)
    marker = root / "dataset.json"
    if not marker.is_file():
        raise UserInputError(
            f"{root}: not a data set (no dataset.json; docs/training.md describes the format)"
        )
    try:
        info = json.loads(marker.read_text())
    except json.JSONDecodeError as e:
        raise UserInputError(f"{marker}: not JSON ({e})") from None
    if not isinstance(info, dict) or info.get("format") != DATASET_FORMAT:
        raise UserInputError(f'{marker}: expected {{"format": "{DATASET_FORMAT}", "format_version": 1}}')
    if info.get("format_version") != DATASET_FORMAT_VERSION:
        raise UserInputError(
            f"{marker}: format_version {info.get('format_version')} (this build reads {DATASET_FORMAT_VERSION})"
        )
    syn = (
        SyntheticObjects(root / "synthetic", layout)
        if (root / "synthetic" / "metadata.jsonl").is_file()
        else None
    )
    real = RealImages(root / "real", layout) if (root / "real" / "metadata.jsonl").is_file() else None
    if syn is None and real is None:
        raise UserInputError(f"{root}: neither synthetic/metadata.jsonl nor real/metadata.jsonl")
    return Dataset(root, syn, real)


def write_marker(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(
        json.dumps({"format": DATASET_FORMAT, "format_version": DATASET_FORMAT_VERSION}, indent=2)
    )
