"""The procedural toy data (synthetic_data.py, real_data.py) written as a DATA_DIR (dataset.py's format).

`realiz3d dataset toy --out DATA_DIR` writes one; `realiz3d train` without `--data` trains on the toy data
through the same format, from a folder cached under `$REALIZ3D_HOME/datasets` keyed like data.py's arrays.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engines.atomic_folder import replaced_folder
from engines.sampling.cameras import Camera, cameras_to_json
from engines.training.data import DataSpec, cache_root, data_key, load_datasets
from engines.training.dataset import DATASET_FORMAT_VERSION, write_marker


def _png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, compress_level=1)


def write_toy_dataset(spec: DataSpec, out: str | Path, cache: bool = True) -> Path:
    """Write the toy data set of `spec` to `out` (atomically: a temp folder renamed into place)."""
    out = Path(out)
    syn, real = load_datasets(spec, cache=cache)
    with replaced_folder(out) as tmp:
        write_marker(tmp)
        objects = tmp / "synthetic" / "objects"
        objects.mkdir(parents=True)
        lines = []
        for n in range(len(syn)):
            folder = objects / f"{n:05d}"
            folder.mkdir()
            # Explicit matrices: exactly the float32 embeddings the arrays hold.
            cams = [Camera.from_matrix(m.reshape(4, 4).astype(np.float64)) for m in syn.cameras[n]]
            doc = cameras_to_json(cams, spec.resolution)
            (folder / "cameras.json").write_text(json.dumps(doc))
            for v in range(syn.images.shape[1]):
                _png(folder / f"view_{v:02d}.png", syn.images[n, v])
                g = syn.geometry[n, v]  # (7, H, W) float16: normal, position, mask
                np.save(folder / f"normal_{v:02d}.npy", np.ascontiguousarray(g[0:3].transpose(1, 2, 0)))
                np.save(folder / f"position_{v:02d}.npy", np.ascontiguousarray(g[3:6].transpose(1, 2, 0)))
                _png(folder / f"mask_{v:02d}.png", (g[6] > 0.5).astype(np.uint8) * 255)
            lines.append(json.dumps({"object": f"objects/{n:05d}", "text": syn.captions[n]}))
        (tmp / "synthetic" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
        images = tmp / "real" / "images"
        images.mkdir(parents=True)
        lines = []
        for n in range(len(real)):
            _png(images / f"{n:05d}.png", real.images[n])
            lines.append(json.dumps({"file_name": f"images/{n:05d}.png", "text": real.captions[n]}))
        (tmp / "real" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return out


def toy_data_dir(spec: DataSpec) -> Path:
    """The cached DATA_DIR of `spec` (written on first use)."""
    path = cache_root() / f"{spec.split}-{data_key(spec)}-dir{DATASET_FORMAT_VERSION}"
    if not (path / "dataset.json").is_file():
        write_toy_dataset(spec, path)
    return path
