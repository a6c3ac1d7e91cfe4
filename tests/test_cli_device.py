"""`--device cuda` where torch has no CUDA (this project's CPU wheel) is one line and exit 2, like every
other bad flag: for `generate` (the model is never loaded), `serve` (before the model loads in the
background) and `worker`; an unknown device name too (resolve_device)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["generate", "a red cube", "--steps", "1", "--device", "cuda"], "is built without CUDA"),
        (["serve", "--port", "1", "--device", "cuda:1"], "'cuda:1'"),
        (["worker", "--broker", "redis://127.0.0.1:1/0", "--device", "cuda"], "'cuda'"),
    ],
)
def test_unusable_device_is_one_line_exit_2(argv, says, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "service.cli", *argv], capture_output=True, text=True, env=ENV, cwd=tmp_path
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("realiz3d: error: device") and says in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_resolve_device():
    from engines.errors import UserInputError
    from engines.runtime.torch_runner import resolve_device

    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"
    with pytest.raises(UserInputError, match="cpu"):
        resolve_device("cuda")
    with pytest.raises(UserInputError, match="not a device"):
        resolve_device("tpu")
