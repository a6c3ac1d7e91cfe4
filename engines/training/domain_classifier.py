"""The realism judge: a small CNN trained to tell the real domain (photographs) from synthetic renders.

Trained on the `classifier` data split (objects and photographs neither training nor evaluation uses),
deterministically from a seed; its accuracy is measured on the `eval` split. Realism of generated images
= mean P(real) under this classifier. It is a proxy with the usual caveat: it knows only what separates
*our* two domains (plain backgrounds, flat shading, no noise vs. clutter, texture, soft light, noise), and
images unlike both (an untrained model's noise) land wherever the classifier happens to put them.

Against the cheapest shortcut (renders are noise-free, photographs are not, and an undertrained
generator's output is noisy whatever it depicts) the judge sees images box-filtered 2x, and during
training both classes get random Gaussian noise (sigma up to `TRAIN_NOISE`) and a random per-channel
colour gain and offset: neither noise nor the exact backdrop colour says "real", so the judge has to use
the scene (plain vs cluttered background, texture, light). The reference
row "synthetic renders + noise" in the table checks that it did.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from engines.training.data import to_model_range

TRAIN_NOISE = 0.25  # in the [-1, 1] pixel range
COLOUR_JITTER = 0.4  # per-channel gain and offset: a tinted plain backdrop is still a plain backdrop


class DomainClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(F.avg_pool2d(x, 2))[:, 0]

    @torch.no_grad()
    def features(self, images_uint8: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, 64) penultimate features."""
        self.eval()
        x = torch.from_numpy(to_model_range(images_uint8))
        return self.net[:-1](F.avg_pool2d(x, 2)).numpy()

    @torch.no_grad()
    def p_real(self, images_uint8: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N,) probability of the real domain."""
        self.eval()
        x = torch.from_numpy(to_model_range(images_uint8))
        return torch.sigmoid(self(x)).numpy()


def train_domain_classifier(
    real: np.ndarray, synthetic: np.ndarray, seed: int = 0, steps: int = 300, batch: int = 64
) -> DomainClassifier:
    """Binary classifier, label 1 = real. Inputs (N, H, W, 3) uint8, balanced by sampling."""
    gen = torch.Generator().manual_seed(seed)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = DomainClassifier()
    finally:
        torch.random.set_rng_state(state)
    xr = torch.from_numpy(to_model_range(real))
    xs = torch.from_numpy(to_model_range(synthetic))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    half = batch // 2
    model.train()
    for _ in range(steps):
        ir = torch.randint(len(xr), (half,), generator=gen)
        is_ = torch.randint(len(xs), (half,), generator=gen)
        x = torch.cat([xr[ir], xs[is_]])
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        gain = 1 + (torch.rand(len(x), 3, 1, 1, generator=gen) * 2 - 1) * COLOUR_JITTER
        offset = (torch.rand(len(x), 3, 1, 1, generator=gen) * 2 - 1) * COLOUR_JITTER
        x = x * gain + offset
        sigma = torch.rand(len(x), 1, 1, 1, generator=gen) * TRAIN_NOISE
        x = x + sigma * torch.randn(x.shape, generator=gen)
        y = torch.cat([torch.ones(half), torch.zeros(half)])
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


class FeatureRealism:
    """Where a set of images sits between the two domains in the judge's feature space:
    `d_syn / (d_syn + d_real)` with d = distance of the set's mean feature to each domain's mean feature
    (standardised per dimension). 1 = at the photographs, 0 = at the renders. A set-level score that does
    not saturate the way the per-image P(real) does on images unlike both domains."""

    def __init__(self, clf: DomainClassifier, real: np.ndarray, synthetic: np.ndarray) -> None:
        self.clf = clf
        fr, fs = clf.features(real), clf.features(synthetic)
        self.scale = np.concatenate([fr, fs]).std(0) + 1e-6
        self.mu_r, self.mu_s = fr.mean(0) / self.scale, fs.mean(0) / self.scale

    def __call__(self, images_uint8: np.ndarray) -> float:
        mu = self.clf.features(images_uint8).mean(0) / self.scale
        d_r, d_s = np.linalg.norm(mu - self.mu_r), np.linalg.norm(mu - self.mu_s)
        return float(d_s / (d_s + d_r + 1e-12))


def evaluate_classifier(model: DomainClassifier, real: np.ndarray, synthetic: np.ndarray) -> dict:
    pr, ps = model.p_real(real), model.p_real(synthetic)
    acc = (float((pr > 0.5).sum()) + float((ps <= 0.5).sum())) / (len(pr) + len(ps))
    return {
        "accuracy": round(acc, 4),
        "p_real_on_real": round(float(pr.mean()), 4),
        "p_real_on_synthetic": round(float(ps.mean()), 4),
    }
