"""What an inpainting generation holds: per view, a known image and where it is known (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KnownViews:
    """Known pixels of the views to generate: the sampler holds them (see `denoise.KnownRegion`).

    A view whose mask is all True is context only (it comes back as given); all False is generated freely.
    """

    images: np.ndarray  # (V, H, W, 3) uint8
    mask: np.ndarray  # (V, H, W) bool: True where the pixel is known

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"known images must be (V, H, W, 3) uint8, got {self.images.shape} {self.images.dtype}"
            )
        if self.mask.shape != self.images.shape[:3]:
            raise ValueError(f"known mask is {self.mask.shape}, its images {self.images.shape[:3]}")

    @property
    def num_views(self) -> int:
        return int(self.images.shape[0])
