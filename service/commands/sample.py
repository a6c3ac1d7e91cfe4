"""`realiz3d sample ball.glb`: write a small sample mesh to texture (the README's and the playground's).

The samples ship in the package (`service/static/samples/*.glb`, also served to the playground at
`/static/samples/`), so the command needs no mesh library for a .glb; another format (.obj, .ply) is
converted with trimesh (the engine extra). `python -m service.commands.sample --regenerate` remakes the
shipped files.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "static" / "samples"

#: name -> what it is (shown in --help and by the playground)
SAMPLES = {
    "ball": "an icosphere, radius 0.5 (1280 faces)",
    "box": "a box 1 x 0.6 x 0.8 (12 faces)",
    "torus": "a torus, radii 0.5 and 0.18 (2304 faces)",
}
FORMATS = (".glb", ".obj", ".ply")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="write a small sample mesh to texture (ball, box, torus)",
        description="Write a sample mesh: `realiz3d sample ball.glb`. The shape is --shape, else the file "
        "name's stem when it names one (ball.glb, box.obj), else a ball. Samples: "
        + "; ".join(f"{k}: {v}" for k, v in SAMPLES.items())
        + ".",
    )
    p.add_argument("out", type=Path, help="the file to write: .glb, .obj or .ply")
    p.add_argument(
        "--shape", choices=tuple(SAMPLES), default=None, help="default: from the file name, else ball"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(handler=run)


def shape_for(path: Path, shape: str | None) -> str:
    if shape is not None:
        return shape
    return path.stem.lower() if path.stem.lower() in SAMPLES else "ball"


def run(args: argparse.Namespace) -> int:
    from engines.errors import UserInputError

    out: Path = args.out
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise UserInputError(f"{out}: the sample is written as {', '.join(FORMATS)} (by the file's suffix)")
    shape = shape_for(out, args.shape)
    source = SAMPLES_DIR / f"{shape}.glb"
    if out.exists() and not args.force:
        if suffix == ".glb" and out.read_bytes() == source.read_bytes():
            print(f"{out} is already the {shape} sample")
            return 0
        raise UserInputError(f"{out} exists and is not the {shape} sample (--force overwrites it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".glb":
        shutil.copyfile(source, out)
    else:
        import trimesh

        trimesh.load(source, force="mesh").export(out)
    print(f"wrote {out}: {shape}, {SAMPLES[shape]}")
    return 0


def make_sample(shape: str):  # noqa: ANN201 - a trimesh.Trimesh
    """The sample meshes, made here (their shipped GLBs come from this)."""
    import trimesh

    if shape == "ball":
        return trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    if shape == "box":
        return trimesh.creation.box(extents=(1.0, 0.6, 0.8))
    if shape == "torus":
        return trimesh.creation.torus(
            major_radius=0.5, minor_radius=0.18, major_sections=48, minor_sections=24
        )
    raise ValueError(shape)


def regenerate() -> None:
    SAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    for shape in SAMPLES:
        make_sample(shape).export(SAMPLES_DIR / f"{shape}.glb")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="remake service/static/samples/*.glb")
    parser.add_argument("--regenerate", action="store_true", required=True)
    parser.parse_args()
    regenerate()
