"""The training data set format: the toy generator writes it exactly, users' folders are read as documented
(crop, resize, area-averaged geometry, cameras in the model's convention), bad folders fail naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engines.errors import UserInputError
from engines.sampling.cameras import Camera, cameras_to_json, orbit_cameras
from engines.training.dataset import Layout, open_dataset
from tests.fixtures.tiny_dataset import write_tiny_dataset


def test_toy_generator_writes_the_format_exactly(tmp_path: Path):
    pytest.importorskip("skimage", reason="the toy photographs come from scikit-image's sample data")
    from engines.training.data import DataSpec, load_datasets
    from engines.training.toy_dataset import write_toy_dataset

    spec = DataSpec(synthetic=2, real=3, seed=5, resolution=16)  # test_training_data caches these arrays
    syn, real = load_datasets(spec)
    data = open_dataset(write_toy_dataset(spec, tmp_path / "toy"), Layout(16))
    assert len(data.synthetic) == 2 and data.synthetic.views == 4 and len(data.real) == 3
    assert data.synthetic.captions == syn.captions and data.real.captions == real.captions
    for n in range(2):
        images, geometry = data.synthetic.load(n)
        np.testing.assert_array_equal(images, syn.images[n])
        np.testing.assert_array_equal(geometry, syn.geometry[n].astype(np.float32))
        np.testing.assert_array_equal(data.synthetic.cameras[n], syn.cameras[n])
    for n in range(3):
        np.testing.assert_array_equal(data.real.load(n), real.images[n])


def test_users_folder_is_cropped_resized_and_area_averaged(tmp_path: Path):
    root = write_tiny_dataset(tmp_path / "data", resolution=32, objects=1, views=2, real=1)
    # A non-square RGBA real image: centre square, composited over white, resized.
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[:, 10:50, 0] = 255
    rgba[:, 10:50, 3] = 255  # opaque red square in the centre, transparent sides
    Image.fromarray(rgba, "RGBA").save(root / "real" / "images" / "wide.png")
    with (root / "real" / "metadata.jsonl").open("a") as f:
        f.write(json.dumps({"file_name": "images/wide.png", "text": "a red square"}) + "\n")
    data = open_dataset(root, Layout(20, geometry_factor=4, camera_convention="mvdream"))
    wide = data.real.load(1)
    assert wide.shape == (20, 20, 3)
    assert (wide[:, :, 0] > 240).all() and (wide[2:-2, 2:-2, 1] < 10).all()  # the crop is all red
    images, geometry = data.synthetic.load(0)
    assert images.shape == (2, 20, 20, 3) and geometry.shape == (2, 7, 5, 5)
    # the mask (covered fraction) and the maps are the 32 -> 5 area average of the full-size maps
    normal = np.load(root / "synthetic" / "objects" / "000" / "normal_00.npy").astype(np.float32)
    import torch

    full_mask = torch.from_numpy((np.abs(normal).sum(-1) > 0).astype(np.float32))[None]
    want = torch.nn.functional.adaptive_avg_pool2d(full_mask, 5)[0].numpy()
    np.testing.assert_allclose(geometry[0, 6], want, atol=1e-6)
    assert ((geometry[0, 6] > 0) & (geometry[0, 6] < 1)).any()  # partial cells at the edge
    cams = json.loads((root / "synthetic" / "objects" / "000" / "cameras.json").read_text())
    first = Camera(
        **{k: cams["cameras"][0][k] for k in ("azimuth_deg", "elevation_deg", "radius", "fov_deg")}
    )
    np.testing.assert_allclose(data.synthetic.cameras[0][0], first.embedding("mvdream"), atol=1e-6)


def _expect(root: Path, match: str) -> None:
    with pytest.raises(UserInputError, match=match):
        open_dataset(root, Layout(32))


def test_bad_folders_fail_naming_the_file(tmp_path: Path):
    _expect(tmp_path, "no dataset.json")
    root = write_tiny_dataset(tmp_path / "a", resolution=32, objects=2, views=2, real=1)
    obj = root / "synthetic" / "objects" / "001"
    (obj / "position_01.npy").unlink()
    _expect(root, "001: geometry maps must be given for every view")
    (obj / "normal_00.npy").unlink(), (obj / "normal_01.npy").unlink(), (obj / "position_00.npy").unlink()
    assert open_dataset(root, Layout(32)).synthetic.has_geometry == [True, False]  # maps are optional
    cams = orbit_cameras(3)
    (obj / "cameras.json").write_text(json.dumps(cameras_to_json(cams, 32)))
    _expect(root, r"001/cameras.json: 3 views, but the first object has 2")
    (obj / "cameras.json").write_text(json.dumps({"cameras": [{"azimuth_deg": 0}]}))
    _expect(root, r"001/cameras.json: cameras.json: camera 0 is malformed")
    (obj / "cameras.json").write_text(json.dumps(cameras_to_json(orbit_cameras(2), 32)))
    (obj / "view_01.png").unlink()
    _expect(root, "001: view_01.png missing")
    b = write_tiny_dataset(tmp_path / "b", resolution=32, objects=1, views=1, real=1)
    (b / "real" / "metadata.jsonl").write_text(json.dumps({"file_name": "../../x.png", "text": "t"}) + "\n")
    _expect(b, "points outside")
    (b / "real" / "metadata.jsonl").write_text(
        json.dumps({"file_name": "images/none.png", "text": "t"}) + "\n"
    )
    _expect(b, "images/none.png missing")
    (b / "real" / "metadata.jsonl").write_text('{"file_name": "images/000.jpg"}\n')
    _expect(b, r"metadata.jsonl:1: expected")


def test_dataset_cli_writes_and_checks(tmp_path: Path, capsys):
    from service.cli import main

    root = write_tiny_dataset(tmp_path / "d", resolution=32, objects=2, views=2, real=3)
    assert main(["dataset", "check", str(root)]) == 0
    assert "2 synthetic objects x 2 views, 3 real images" in capsys.readouterr().out
    (root / "real" / "images" / "001.jpg").write_bytes(b"not an image")
    assert main(["dataset", "check", str(root)]) != 0
    assert "001.jpg: cannot read the image" in capsys.readouterr().err
