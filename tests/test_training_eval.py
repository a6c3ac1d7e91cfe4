"""`realiz3d eval` end to end on tiny models, and the metrics on known inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage", reason="the real-domain photographs come from scikit-image's sample data")

from engines.training.data import DataSpec  # noqa: E402
from engines.training.metrics import colour_mask, cross_view_error, dominant_colour, mask_iou  # noqa: E402
from engines.training.shapes import ObjectSpec  # noqa: E402
from engines.training.synthetic_data import object_cameras, render_object  # noqa: E402
from engines.training.train import TrainConfig, Trainer  # noqa: E402


def test_metrics_on_renders():
    spec = ObjectSpec("cube", "red", 30.0, 0.0, 1.0, 0.65)
    cams = object_cameras(np.random.default_rng(0), 4)
    images, geom = render_object(spec, cams, 32)
    assert all(dominant_colour(im) == "red" for im in images)
    ious = [mask_iou(colour_mask(im, "red"), geom[v, 6] > 0.5) for v, im in enumerate(images)]
    assert min(ious) > 0.8
    consistent = cross_view_error(list(images), geom, cams)
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, im.shape, dtype=np.uint8) for im in images]
    assert consistent < 0.5 * cross_view_error(noise, geom, cams)


def test_eval_end_to_end(tmp_path: Path):
    from engines.training.evaluate import EvalConfig, evaluate
    from service.cli import main

    data = DataSpec(synthetic=4, real=8, seed=2, resolution=16)
    common = dict(steps=2, data=data, resolution=16, channels=(16, 32, 32), batch_objects=1, batch_real=2)
    log = lambda m: None  # noqa: E731
    base = Trainer(TrainConfig(stage="base", **common), tmp_path / "base", log=log).run()
    s1 = Trainer(TrainConfig(stage="1", **common), tmp_path / "s1", init=base, log=log).run()
    s2 = Trainer(TrainConfig(stage="2", **common), tmp_path / "s2", init=s1, log=log).run()
    nv = Trainer(
        TrainConfig(stage="naive", stage1_steps=1, **common), tmp_path / "nv", init=base, log=log
    ).run()
    cfg = EvalConfig(
        objects=3,
        steps=2,
        splits=(0.0, 1.0),
        block_splits=(3,),
        bootstrap=50,
        metric_resolution=16,
        classifier_objects=4,
        classifier_photos=16,
        classifier_steps=5,
        eval_photos=8,
        grid_objects=1,
    )
    out = tmp_path / "eval"
    result = evaluate(s2, out, nv, cfg, log=lambda m: None)
    names = [r["condition"] for r in result["rows"]]
    assert names[0].startswith("naive") and len(names) == 1 + 3 + 3
    assert names[1:4] == ["block-shift, step split 0", "block-shift, step split 1", "block-shift, 0,blocks=3"]
    for r in result["rows"][:4]:
        assert 0.0 <= r["p_real_geo"] <= 1.0 and 0.0 <= r["mask_iou"] <= 1.0
        kid = r["kid_geo_real"]
        assert kid["lo"] <= kid["hi"] and np.isfinite(kid["kid"])
    # each Realiz3D row vs naive, then the other schedules vs the same form run real throughout
    pairs = [(c["a"], c["b"]) for c in result["comparisons"]]
    assert pairs == [(n, names[0]) for n in names[1:4]] + [(n, names[1]) for n in names[2:4]]
    assert json.loads((out / "results.json").read_text())["rows"] == result["rows"]
    md = (out / "results.md").read_text()
    assert "| naive baseline" in md and "Paired differences" in md
    assert (out / "samples_geometry.png").stat().st_size > 0 and (out / "samples_text.png").is_file()
    # the CLI rejects a folder that is not a model
    assert main(["eval", "--model", str(tmp_path), "--out", str(out)]) == 2


def test_kid_is_zero_for_one_distribution_and_grows_with_a_shift():
    from engines.training.kid import KIDReference, ObjectKernels, bootstrap_weights, paired_difference

    rng = np.random.default_rng(0)
    ref = KIDReference(rng.normal(size=(400, 8)))
    same = ObjectKernels.build(rng.normal(size=(48 * 4, 8)), 4, ref)
    shifted = ObjectKernels.build(rng.normal(0.5, 1, size=(48 * 4, 8)), 4, ref)
    assert abs(same.kid()) < 0.05 < shifted.kid()
    w = bootstrap_weights(48, 200, seed=1)
    d = paired_difference(shifted, same, w)
    assert d["significant"] and d["lo"] > 0
    assert not paired_difference(same, same, w)["significant"]
