"""Training data: deterministic from a seed, cached faithfully, sensible labels."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skimage", reason="the real-domain photographs come from scikit-image's sample data")

from engines.training.data import DataSpec, load_datasets, to_model_range  # noqa: E402
from engines.training.real_data import make_real_set  # noqa: E402
from engines.training.shapes import COLOURS, SHAPES  # noqa: E402
from engines.training.synthetic_data import make_synthetic_set  # noqa: E402


def test_synthetic_set_is_deterministic_and_labelled():
    a = make_synthetic_set(3, seed=7, resolution=16)
    b = make_synthetic_set(3, seed=7, resolution=16)
    c = make_synthetic_set(3, seed=8, resolution=16)
    assert a.images.shape == (3, 4, 16, 16, 3) and a.images.dtype == np.uint8
    assert a.geometry.shape == (3, 4, 7, 16, 16)
    assert a.cameras.shape == (3, 4, 16)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.geometry, b.geometry)
    np.testing.assert_array_equal(a.cameras, b.cameras)
    assert a.captions == b.captions
    assert not np.array_equal(a.images, c.images)
    for cap, shape, colour in zip(a.captions, a.shapes, a.colours, strict=True):
        assert cap == f"a {colour} {shape}" and shape in SHAPES and colour in COLOURS
    assert ((a.elevations >= 0) & (a.elevations <= 30)).all()
    # orbit views 90 degrees apart; the mask channel covers the object and nothing else
    np.testing.assert_allclose((np.diff(a.azimuths, axis=1) % 360), 90.0, atol=1e-3)
    mask = a.geometry[:, :, 6].astype(np.float32)
    assert 0.05 < mask.mean() < 0.8
    assert set(np.unique(mask)) <= {0.0, 1.0}


def test_real_set_is_deterministic_and_photographic():
    a = make_real_set(4, seed=3, resolution=16)
    b = make_real_set(4, seed=3, resolution=16)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.captions == b.captions
    assert all(c in cap and s in cap for cap, c, s in zip(a.captions, a.colours, a.shapes, strict=True))
    # photographic statistics: no image is mostly one flat colour (synthetic backgrounds are)
    syn = make_synthetic_set(2, seed=3, resolution=16)
    real_flat = np.mean([np.mean(np.abs(np.diff(im.astype(float), axis=1)) < 1) for im in a.images])
    syn_flat = np.mean(
        [np.mean(np.abs(np.diff(im.astype(float), axis=1)) < 1) for im in syn.images.reshape(-1, 16, 16, 3)]
    )
    assert real_flat < syn_flat


def test_dataset_cache_round_trip():
    spec = DataSpec(synthetic=2, real=3, seed=5, resolution=16)
    fresh = load_datasets(spec)
    cached = load_datasets(spec)
    again = load_datasets(spec, cache=False)
    for x in (cached, again):
        np.testing.assert_array_equal(fresh[0].images, x[0].images)
        np.testing.assert_array_equal(fresh[0].geometry, x[0].geometry)
        np.testing.assert_array_equal(fresh[1].images, x[1].images)
        assert fresh[1].captions == x[1].captions
    x = to_model_range(fresh[1].images)
    assert x.shape == (3, 3, 16, 16) and x.min() >= -1.0 and x.max() <= 1.0


def test_photos_from_a_copied_folder_without_scipy_make_the_same_set(tmp_path, monkeypatch):
    """The GPU machine has neither scikit-image nor scipy: deploy/gpu_train.sh points REALIZ3D_PHOTO_DIR at
    copies of the sample photographs, and the blur falls back to numpy; the photographs are the same."""
    import shutil
    import sys

    from engines.training import real_data

    reference = make_real_set(3, seed=11, resolution=24)
    for name in real_data.BACKGROUND_PHOTOS + real_data.GREY_TEXTURES:
        shutil.copy(real_data.skimage_data_dir() / name, tmp_path / name)
    monkeypatch.setenv(real_data.PHOTO_DIR_ENV, str(tmp_path))
    monkeypatch.setitem(sys.modules, "scipy.ndimage", None)  # `from scipy.ndimage import ...` fails
    monkeypatch.setitem(sys.modules, "skimage", None)
    real_data.load_photo.cache_clear()
    try:
        assert real_data.skimage_data_dir() == tmp_path
        copied = make_real_set(3, seed=11, resolution=24)
    finally:
        real_data.load_photo.cache_clear()
    np.testing.assert_array_equal(copied.images, reference.images)
    assert copied.captions == reference.captions


def test_numpy_gaussian_blur_is_scipys():
    from scipy.ndimage import gaussian_filter

    from engines.training.real_data import gaussian_blur

    rng = np.random.default_rng(0)
    for _ in range(10):
        img = rng.random((int(rng.integers(8, 90)), int(rng.integers(8, 90)), 3)).astype(np.float32)
        sigma = (rng.uniform(0.8, 2.5), rng.uniform(0.8, 2.5), 0)
        np.testing.assert_allclose(gaussian_blur(img, sigma), gaussian_filter(img, sigma=sigma), atol=1e-6)
