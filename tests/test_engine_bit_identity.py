"""The engine loop changes no image: the same seeds give byte-identical images to the references that
the code before the engine-loop refactor computed (tests/fixtures/engine_reference.py says how), for
jobs run alone and for a batched mix of jobs admitted together (mixed schedulers, schedules, view
counts, guidance on and off, steps split under an image budget)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.fixtures.engine_reference import capability, compute, references

META = {"torch_version", "cpu_capability"}


@pytest.fixture(scope="module")
def reference_sets():
    """The references this machine can be held to: this torch version, this CPU capability or none named."""
    sets = []
    for path in references():
        ref = np.load(path)
        cap = str(ref["cpu_capability"]) if "cpu_capability" in ref.files else None
        if str(ref["torch_version"]) == torch.__version__ and cap in (None, capability()):
            sets.append((path.name, ref))
    if not sets:
        pytest.skip(f"no reference made with torch {torch.__version__} on a {capability()} CPU")
    return sets


def test_jobs_alone_and_batched_give_the_reference_images_byte_for_byte(reference_sets):
    threads = torch.get_num_threads()
    try:
        got = compute()
    finally:
        torch.set_num_threads(threads)
    report = []
    for name, ref in reference_sets:
        assert set(got) == set(ref.files) - META, name
        diffs = {k: int(np.abs(v.astype(int) - ref[k].astype(int)).max()) for k, v in got.items()}
        if all(np.array_equal(v, ref[k]) for k, v in got.items()):
            return
        report.append(f"{name}: max level difference per image set {diffs}")
    pytest.fail("images differ from every reference for this machine:\n" + "\n".join(report))


def test_references_record_what_they_were_made_on():
    for path in references():
        ref = np.load(path)
        assert "torch_version" in ref.files, path
        if path.name != "engine_reference.npz":  # the first predates the capability field
            assert path.name == f"engine_reference_{ref['cpu_capability']}.npz", path
