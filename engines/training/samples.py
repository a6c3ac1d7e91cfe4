"""The README's samples of the embedded default model, each from one seed.

- `generate_default_model.png`: prompts x views of text-to-multiview.
- `texture_red_sphere_render.png`: an icosphere textured from "a red sphere" (what `realiz3d texture
  ball.glb --prompt "a red sphere"` writes), then shaded views of the textured GLB over its normal maps
  (what `realiz3d render` writes).

python -m engines.training.samples [--model DIR] [--out-dir docs/samples]
"""

from __future__ import annotations

import argparse
import tempfile
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


def texture_figure(
    model_dir: Path | None = None,
    prompt: str = "a red sphere",
    seed: int = 1,
    resolution: int = 256,
    steps: int = 30,
) -> np.ndarray:
    """Texture an icosphere (radius 0.7, 1280 faces), save it as a GLB, load that back and render its
    6 texturing cameras: shaded views on the first row, normal maps on the second."""
    import trimesh

    from engines.pipelines import Realiz3DPipeline
    from engines.requests import TextureRequest
    from engines.sampling.cameras import texturing_cameras
    from engines.texturing.mesh_io import load_mesh
    from engines.texturing.rasterize import RayCaster, map_to_u8, render_albedo, render_shaded

    with tempfile.TemporaryDirectory(prefix="realiz3d-sample-") as tmp:
        ball = Path(tmp) / "ball.glb"
        trimesh.creation.icosphere(subdivisions=3, radius=0.7).export(ball)
        pipe = Realiz3DPipeline.load(model_dir, device="cpu")
        result = pipe.texture(TextureRequest(prompt=prompt, num_views=6, seed=seed, steps=steps), ball)
        result.save(Path(tmp) / "out")
        mesh = load_mesh(Path(tmp) / "out" / "textured.glb")
    caster = RayCaster(mesh.normalized_vertices, mesh.faces)
    shaded, normals = [], []
    for cam in texturing_cameras(6):
        maps = caster.render(cam, resolution)
        shaded.append(render_shaded(maps, render_albedo(maps, mesh.faces, mesh.uv, mesh.texture)))
        normals.append(map_to_u8((maps.normal + 1) / 2, maps.mask))
    return make_grid(shaded + normals, 6)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.training.samples")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the embedded default)")
    p.add_argument("--out-dir", type=Path, default=Path("docs/samples"))
    args = p.parse_args(argv)
    for name, image in (
        ("generate_default_model.png", sample_grid(args.model)),
        ("texture_red_sphere_render.png", texture_figure(args.model)),
    ):
        save_png(image, args.out_dir / name)
        print(f"wrote {args.out_dir / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
