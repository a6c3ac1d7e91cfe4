"""`realiz3d import sd|mvdream`: other projects' checkpoints become Realiz3D model folders."""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="turn a Stable Diffusion folder or an MVDream checkpoint into a model folder",
        description="See docs/bring-your-own-model.md. The imported model computes exactly what the source "
        "model computes for one view without geometry; geometry, camera and Domain Shifter layers start as "
        "identities, to be trained (realiz3d train --init MODEL_DIR).",
    )
    kinds = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    sd = kinds.add_parser(
        "sd", help="a diffusers SD 1.x/2.x folder (unet, vae, text_encoder, tokenizer, scheduler)"
    )
    sd.add_argument("folder", type=Path, help="the diffusers folder")
    _common(sd)
    sd.set_defaults(handler=run_import_sd)

    mv = kinds.add_parser("mvdream", help="MVDream's LDM-format checkpoint (.ckpt/.pt/.safetensors)")
    mv.add_argument("checkpoint", type=Path)
    mv.add_argument(
        "--sd-folder", type=Path, required=True, help="the diffusers SD folder MVDream was tuned from"
    )
    mv.add_argument("--resolution", type=int, default=256, help="native image size (MVDream: 256)")
    _common(mv)
    mv.set_defaults(handler=run_import_mvdream)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="the model folder to write")
    p.add_argument("--name", default=None, help="model name in realiz3d.json (default: the source's name)")
    p.add_argument("--views", type=int, default=4, help="views the model is meant to run with (1-8)")


def _check(args: argparse.Namespace) -> None:
    from engines.errors import UserInputError

    if not 1 <= args.views <= 8:
        raise UserInputError(f"--views must be in [1, 8], got {args.views}")
    if args.out.exists() and not (args.out / "realiz3d.json").is_file():
        raise UserInputError(f"--out {args.out} exists and is not a model folder; not overwriting it")


def _report(out: Path, start: float) -> int:
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    print(f"wrote {out} ({size_mb:.1f} MB) in {time.perf_counter() - start:.1f} s, peak RSS {peak_mb:.0f} MB")
    return 0


def run_import_sd(args: argparse.Namespace) -> int:
    from engines.importers.sd import import_sd

    _check(args)
    start = time.perf_counter()
    import_sd(args.folder, args.out, name=args.name, num_views=args.views)
    return _report(args.out, start)


def run_import_mvdream(args: argparse.Namespace) -> int:
    from engines.importers.mvdream import import_mvdream

    _check(args)
    start = time.perf_counter()
    import_mvdream(
        args.checkpoint,
        args.sd_folder,
        args.out,
        name=args.name,
        num_views=args.views,
        resolution=args.resolution,
    )
    return _report(args.out, start)
