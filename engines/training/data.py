"""Data sets for training and evaluation: generated deterministically from a seed, cached on disk.

The cache lives under `$REALIZ3D_HOME/datasets` (default `~/.cache/realiz3d/datasets`), never in git; a
cached file is keyed by everything that determines its content (kind, count, seed, resolution, views and
`DATA_VERSION`), so changing the generator code means bumping `DATA_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engines.training.real_data import RealSet, make_real_set
from engines.training.synthetic_data import SyntheticSet, make_synthetic_set

DATA_VERSION = 2
# Seed offsets of the splits: training, the domain classifier's training set, and the evaluation set
# never share objects or photographs.
SPLIT_OFFSETS = {"train": 0, "classifier": 1_000_003, "eval": 2_000_003}


@dataclass(frozen=True)
class DataSpec:
    synthetic: int = 800
    real: int = 3200
    seed: int = 0
    resolution: int = 32
    views: int = 4
    split: str = "train"


def cache_root() -> Path:
    base = os.environ.get("REALIZ3D_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "realiz3d"
    )
    return Path(base) / "datasets"


def data_key(spec: DataSpec) -> str:
    """The cache key of `spec`: everything that determines the data's content."""
    blob = json.dumps({**asdict(spec), "version": DATA_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_datasets(spec: DataSpec, cache: bool = True) -> tuple[SyntheticSet, RealSet]:
    """Both domains for `spec`, from the cache when present (else generated and cached)."""
    path = cache_root() / f"{spec.split}-{data_key(spec)}.npz"
    if cache and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            syn = SyntheticSet(
                images=z["syn_images"],
                geometry=z["syn_geometry"],
                cameras=z["syn_cameras"],
                captions=meta["syn_captions"],
                shapes=meta["syn_shapes"],
                colours=meta["syn_colours"],
                elevations=z["syn_elevations"],
                azimuths=z["syn_azimuths"],
            )
            real = RealSet(
                images=z["real_images"],
                captions=meta["real_captions"],
                shapes=meta["real_shapes"],
                colours=meta["real_colours"],
            )
            return syn, real
    seed = spec.seed + SPLIT_OFFSETS[spec.split]
    syn = make_synthetic_set(spec.synthetic, seed, spec.resolution, spec.views)
    real = make_real_set(spec.real, seed, spec.resolution)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "spec": asdict(spec),
            "syn_captions": syn.captions,
            "syn_shapes": syn.shapes,
            "syn_colours": syn.colours,
            "real_captions": real.captions,
            "real_shapes": real.shapes,
            "real_colours": real.colours,
        }
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(
            tmp,
            meta=np.array(json.dumps(meta)),
            syn_images=syn.images,
            syn_geometry=syn.geometry,
            syn_cameras=syn.cameras,
            syn_elevations=syn.elevations,
            syn_azimuths=syn.azimuths,
            real_images=real.images,
        )
        os.replace(tmp, path)
    return syn, real


def to_model_range(images_uint8: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 in [-1, 1] (the pixel space the model denoises)."""
    x = images_uint8.astype(np.float32) / 127.5 - 1.0
    return np.moveaxis(x, -1, -3)
