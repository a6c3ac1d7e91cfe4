"""The README's sample grid of the embedded default model: prompts x views, one seed.

python -m engines.training.samples [--out docs/samples/generate_default_model.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from engines.image_io import make_grid, save_png

PROMPTS = ("a red cube", "a blue torus", "a yellow sphere")


def sample_grid(
    model_dir: Path | None = None, prompts=PROMPTS, views: int = 4, seed: int = 1, scale: int = 4
):
    """One row per prompt, `views` views each, nearest-neighbour upscaled `scale`x."""
    from engines.pipelines import Realiz3DPipeline
    from engines.requests import MultiviewRequest

    pipe = Realiz3DPipeline.load(model_dir, device="cpu")
    tiles = []
    for prompt in prompts:
        result = pipe.multiview(MultiviewRequest(prompt=prompt, num_views=views, steps=30, seed=seed))
        tiles += [np.kron(im, np.ones((scale, scale, 1), np.uint8)) for im in result.images]
    return make_grid(tiles, views)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.training.samples")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the embedded default)")
    p.add_argument("--out", type=Path, default=Path("docs/samples/generate_default_model.png"))
    args = p.parse_args(argv)
    save_png(sample_grid(args.model), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
