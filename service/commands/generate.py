"""`realiz3d generate PROMPT`: text-to-multiview on this machine, no server."""

from __future__ import annotations

import argparse
from pathlib import Path

from engines.runtime.backend_names import BACKENDS, DEFAULT_PRECISION
from service.commands.camera_args import explicit_camera_args
from service.commands.engines import add_engine_cache_arg, engine_cache_dir
from service.commands.progress_bar import progress_bar
from service.commands.schedule_arg import SCHEDULE_HELP, parse_schedule


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate N consistent views of one object from a prompt")
    p.add_argument("prompt")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--views", type=int, default=None, help="number of views (1-8, default 4)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument(
        "--guidance", type=float, default=None, help="classifier-free guidance scale (default: the model's)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--elevation", type=float, default=None, help="camera elevation in degrees (default 15)")
    p.add_argument("--azimuths", default=None, help="comma-separated azimuths in degrees (default: even)")
    p.add_argument(
        "--cameras", type=Path, default=None, help="cameras.json: explicit cameras instead of an orbit"
    )
    p.add_argument(
        "--schedule",
        default=None,
        help=SCHEDULE_HELP,
    )
    p.add_argument(
        "--scheduler",
        choices=["ddim", "dpm++"],
        default=None,
        help="sampler (default: the model's default_scheduler in realiz3d.json)",
    )
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--adapters", choices=["fused", "unfused"], default="fused")
    p.add_argument("--backend", choices=BACKENDS, default="torch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default=None,
        help="default: the backend's (" + ", ".join(f"{b} {p}" for b, p in DEFAULT_PRECISION.items()) + ")",
    )
    p.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CUDA graphs for compile/tensorrt (default: the backend's: compile on CUDA on, tensorrt off)",
    )
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the embedded model)")
    add_engine_cache_arg(p)
    p.add_argument("--out", type=Path, default=Path("out"))
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from engines.errors import UserInputError
    from engines.requests import MultiviewRequest

    schedule = parse_schedule(args.schedule)
    try:
        azimuths = [float(a) for a in args.azimuths.split(",")] if args.azimuths else None
    except ValueError as e:
        raise UserInputError(f"--azimuths: {str(e).splitlines()[0]}") from None
    orbit = {"elevation_deg": args.elevation, "azimuths_deg": azimuths}
    request = MultiviewRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        **explicit_camera_args(args.cameras, args.views, 4),
        **{k: v for k, v in orbit.items() if v is not None},
        steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        schedule=schedule,
        scheduler=args.scheduler,
        resolution=args.resolution,
    )
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
