"""`realiz3d generate PROMPT`: text-to-multiview on this machine, no server."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.commands.camera_args import explicit_camera_args
from service.commands.engines import engine_cache_dir
from service.commands.progress_bar import progress_bar
from service.commands.request_args import (
    MULTIVIEW_FLAGS,
    add_request_args,
    add_runtime_args,
    field_help,
    request_from_args,
)


def register(sub: argparse._SubParsersAction) -> None:
    from engines.requests import MultiviewRequest

    p = sub.add_parser(
        "generate",
        help="generate N consistent views of one object from a prompt",
        description="Text to multiview on this machine. The request flags, their bounds and defaults are "
        "POST /v1/multiview's fields (engines.requests.MultiviewRequest).",
    )
    p.add_argument("prompt", help=field_help(MultiviewRequest, "prompt"))
    add_request_args(p, MultiviewRequest, MULTIVIEW_FLAGS)
    p.add_argument(
        "--cameras",
        type=Path,
        default=None,
        metavar="FILE",
        help="cameras.json: explicit cameras instead of an orbit (--views, if given, must agree)",
    )
    add_runtime_args(p)
    p.add_argument("--out", type=Path, default=Path("out"), metavar="DIR", help="output folder (default out)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from engines.errors import UserInputError
    from engines.requests import MultiviewRequest

    cameras = explicit_camera_args(args.cameras, args.num_views, 4) if args.cameras else {}
    request = request_from_args(MultiviewRequest, args, MULTIVIEW_FLAGS, prompt=args.prompt, **cameras)
    if args.out.exists() and not args.out.is_dir():
        raise UserInputError(f"--out {args.out} exists and is not a directory")

    from engines.pipelines import Realiz3DPipeline

    pipe = Realiz3DPipeline.load(
        args.model,
        backend=args.backend,
        adapters=args.adapters,
        device=args.device,
        precision=args.precision,
        engine_cache_dir=engine_cache_dir(args.engine_cache),
        cuda_graphs=args.cuda_graphs,
    )
    with progress_bar(request.steps, "denoise") as update:
        result = pipe.multiview(request, progress=update)
    paths = result.save(args.out)
    t = result.timings
    print(
        f"wrote {len(paths)} files to {args.out} (seed {result.seed}, denoise {t['denoise']:.2f} s, "
        f"total {t['total']:.2f} s)"
    )
    cache_summary = engine_cache_summary(pipe)
    if cache_summary:
        print(cache_summary)
    return 0


def engine_cache_summary(pipe) -> str | None:  # noqa: ANN001 - a Realiz3DPipeline
    """`engine cache DIR: onnx 1 hit, 0 built` for a backend that uses the engine cache, else None."""
    from engines.runtime.engine_cache import STATS

    cache = getattr(pipe.runner, "cache", None)
    counts = STATS.snapshot()
    if cache is None or not counts:
        return None
    parts = [
        f"{backend} {c['hits']} hit{'s' if c['hits'] != 1 else ''}, {c['builds']} built"
        + (f", {c['stale']} stale not loaded" if c["stale"] else "")
        for backend, c in sorted(counts.items())
    ]
    return f"engine cache {cache.root}: " + "; ".join(parts)
