"""Kernel Inception Distance on the domain classifier's features, with object-level bootstrap intervals.

KID (Binkowski et al. 2018) is the unbiased squared MMD between two feature sets under the cubic
polynomial kernel `k(x, y) = (x.y / d + 1)^3`. Here the features are the penultimate layer of our own
domain classifier (the judge trained to tell renders from photographs), and a generated set is compared
with a held-out photograph set (`kid_real`, lower = more photographic) and a held-out render set.

Why not P(real): the classifier's per-image probability saturates at 1.000 for every trained model on
these images; a set distance keeps its resolution.

Intervals: the generated images come in objects (the views of one object are not independent), so the
bootstrap resamples *objects* with replacement. Pairs of images from the same object are left out of
the within-set kernel mean (in the estimate and in every resample alike), so a resample that draws an
object twice does not pair it with itself. Two conditions evaluated on the same objects and seeds are
compared with a *paired* bootstrap: the same resampled objects for both, giving an interval for the
difference; a difference is called significant when its 95% interval excludes zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a.shape[1]
    return (a @ b.T / d + 1.0) ** 3


@dataclass
class KIDReference:
    """A reference feature set (e.g. held-out photographs) with its within-set kernel mean cached."""

    features: np.ndarray  # (n, d) float64

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float64)
        k = polynomial_kernel(self.features, self.features)
        n = len(k)
        self.yy = float((k.sum() - np.trace(k)) / (n * (n - 1)))


@dataclass
class ObjectKernels:
    """Per-object kernel means of one generated set against a reference: all a bootstrap needs."""

    xx: np.ndarray  # (objects, objects): mean k between the views of object o and of object o'
    xy: np.ndarray  # (objects,): mean k between the views of object o and the reference set
    yy: float

    @classmethod
    def build(cls, features: np.ndarray, views: int, reference: KIDReference) -> ObjectKernels:
        x = np.asarray(features, dtype=np.float64)
        if len(x) % views:
            raise ValueError(f"{len(x)} feature rows are not whole objects of {views} views")
        objects = len(x) // views
        k = polynomial_kernel(x, x).reshape(objects, views, objects, views).mean(axis=(1, 3))
        kxy = polynomial_kernel(x, reference.features).reshape(objects, views, -1).mean(axis=(1, 2))
        return cls(k, kxy, reference.yy)

    def kid(self, weights: np.ndarray | None = None) -> float:
        """Squared MMD with object multiplicities `weights` (None = each object once); pairs within one
        object (and between copies of it) are excluded from the within-set term."""
        n = len(self.xy)
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
        pair = np.outer(w, w)
        np.fill_diagonal(pair, 0.0)
        if pair.sum() == 0:  # a resample of one object only: no pair to compare
            return float("nan")
        xx = float((pair * self.xx).sum() / pair.sum())
        xy = float((w * self.xy).sum() / w.sum())
        return xx - 2.0 * xy + self.yy


def bootstrap_weights(objects: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, objects) multiplicities of objects drawn with replacement (shared by paired runs)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, objects, size=(resamples, objects))
    return np.stack([np.bincount(d, minlength=objects) for d in draws]).astype(np.float64)


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval, ignoring resamples that had no value (see `ObjectKernels.kid`)."""
    lo, hi = np.nanpercentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def kid_with_interval(kernels: ObjectKernels, weights: np.ndarray) -> dict[str, float]:
    boot = np.array([kernels.kid(w) for w in weights])
    lo, hi = interval(boot)
    return {"kid": kernels.kid(), "lo": lo, "hi": hi}


def paired_difference(a: ObjectKernels, b: ObjectKernels, weights: np.ndarray) -> dict[str, float | bool]:
    """KID(a) - KID(b) with a paired bootstrap interval; `significant` when it excludes zero."""
    boot = np.array([a.kid(w) - b.kid(w) for w in weights])
    lo, hi = interval(boot)
    return {"diff": a.kid() - b.kid(), "lo": lo, "hi": hi, "significant": bool(lo > 0 or hi < 0)}


def mean_with_interval(values: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """A per-object metric's mean and its object-bootstrap interval."""
    v = np.asarray(values, dtype=np.float64)
    boot = (weights * v).sum(1) / weights.sum(1)
    lo, hi = interval(boot)
    return {"mean": float(v.mean()), "lo": lo, "hi": hi}


def paired_mean_difference(a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> dict[str, float | bool]:
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    boot = (weights * d).sum(1) / weights.sum(1)
    lo, hi = interval(boot)
    return {"diff": float(d.mean()), "lo": lo, "hi": hi, "significant": bool(lo > 0 or hi < 0)}
