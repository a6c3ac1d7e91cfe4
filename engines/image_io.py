"""Image conversion and files: tensors in [-1, 1] -> uint8 arrays -> PNGs and contact grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def tensor_to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """(n, 3, H, W) in [-1, 1] -> n arrays (H, W, 3) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [a for a in x.permute(0, 2, 3, 1).cpu().numpy()]


def make_grid(images: list[np.ndarray], columns: int | None = None) -> np.ndarray:
    """Tile same-sized images into one (rows x columns) image; at most 4 per row by default."""
    n = len(images)
    cols = columns or min(n, 4)
    rows = math.ceil(n / cols)
    h, w, c = images[0].shape
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        grid[r * h : (r + 1) * h, k * w : (k + 1) * w] = img
    return grid


def save_png(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
    return path
