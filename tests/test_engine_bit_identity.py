"""The engine loop changes no image: the same seeds give byte-identical images to the references that
the code before the engine-loop refactor computed (tests/fixtures/engine_reference.py says how), for
jobs run alone and for a batched mix of jobs admitted together (mixed schedulers, schedules, view
counts, guidance on and off, steps split under an image budget)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.fixtures.engine_reference import REFERENCE, compute


@pytest.fixture(scope="module")
def reference():
    ref = np.load(REFERENCE)
    if str(ref["torch_version"]) != torch.__version__:
        pytest.skip(f"references made with torch {ref['torch_version']}, this is {torch.__version__}")
    return ref


def test_jobs_alone_and_batched_give_the_reference_images_byte_for_byte(reference):
    threads = torch.get_num_threads()
    try:
        got = compute()
    finally:
        torch.set_num_threads(threads)
    assert set(got) == set(reference.files) - {"torch_version"}
    for name, images in got.items():
        want = reference[name]
        diff = int(np.abs(images.astype(int) - want.astype(int)).max())
        assert np.array_equal(images, want), f"{name}: images differ (max {diff} levels)"
