"""`make gpu-check` on a machine without a GPU, and the wheel list it installs from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy"))
from gpu_requirements import requirements  # noqa: E402


def names(reqs: list[str]) -> set[str]:
    return {r.split("[")[0].split(">")[0].split("=")[0].lower() for r in reqs}


def test_the_wheel_list_never_asks_for_the_machines_torch_and_lean_drops_texturing():
    full, lean = (
        names(requirements(ROOT / "pyproject.toml")),
        names(requirements(ROOT / "pyproject.toml", True)),
    )
    assert not {"torch", "onnxruntime", "transformers"} & full  # pip would replace the CUDA torch
    assert {"diffusers", "celery", "fastapi", "pytest"} <= lean
    assert {"scipy", "trimesh", "opencv-python-headless"} <= full - lean


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="a CUDA GPU is here: make gpu-check would run for real"
)
def test_gpu_check_says_there_is_no_gpu_and_fails(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "GPU_VENV": str(tmp_path / "venv")}
    done = subprocess.run(["bash", "deploy/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert "no CUDA GPU" in done.stdout
    assert not (tmp_path / "venv").exists()  # nothing installed on a machine it cannot check
