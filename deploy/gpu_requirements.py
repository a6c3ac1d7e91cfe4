"""Print the requirements a GPU machine needs from a wheel folder, one per line (`make gpu-check`).

Our base, engine and gateway dependencies plus the test runner, read from pyproject.toml, without the
packages the GPU machine already brings with its CUDA build of PyTorch (pip must never replace that
torch with our CPU pin).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

BROUGHT_BY_THE_MACHINE = {"torch", "onnx", "onnxruntime", "accelerate", "transformers"}
#: `--lean`: what only texturing and the S3 store import (the GPU tests, the UNet benchmark and the
#: multiview worker do not), left out so the wheel folder fits a 64 MiB transfer
TEXTURING_AND_S3 = {
    *("scipy", "opencv-python-headless", "embreex", "trimesh", "xatlas", "plyfile", "dracopy", "boto3")
}
TEST_RUNNER = ["pytest>=8", "pytest-timeout>=2.3"]


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0].lower()


def requirements(pyproject: Path, lean: bool = False) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *extras["engine"], *extras["gateway"], *TEST_RUNNER]
    skip = BROUGHT_BY_THE_MACHINE | (TEXTURING_AND_S3 if lean else set())
    return [r for r in wanted if _name(r) not in skip]


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    print("\n".join(requirements(root / "pyproject.toml", lean="--lean" in sys.argv[1:])))
