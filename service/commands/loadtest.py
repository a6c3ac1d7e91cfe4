"""`realiz3d loadtest URL`: closed-loop load test of a running service."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loadtest", help="load-test a running service and write a report")
    p.add_argument("url", help="base URL of the service, e.g. http://127.0.0.1:8000")
    p.add_argument("--concurrency", type=int, default=8, help="jobs in flight at once")
    p.add_argument("--duration", type=float, default=None, help="seconds to keep submitting (default 60)")
    p.add_argument("--jobs", type=int, default=None, help="stop after this many jobs")
    p.add_argument("--mix", default="multiview:1", help="job mix, e.g. multiview:0.8,texture:0.2")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--atlas", type=int, default=256)
    p.add_argument("--api-key", default=None)
    p.add_argument("--name", default="loadtest", help="report file name stem")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from engines.errors import UserInputError
    from service.loadtest import LoadTestConfig, parse_mix, run_loadtest

    if args.concurrency < 1:
        raise UserInputError("--concurrency must be >= 1")
    if args.jobs is not None and args.jobs < 1:
        raise UserInputError("--jobs must be >= 1")
    if args.duration is not None and args.duration <= 0:
        raise UserInputError("--duration must be > 0")
    try:
        mix = parse_mix(args.mix)
    except ValueError as e:
        raise UserInputError(str(e)) from None
    duration = args.duration if args.duration is not None else (None if args.jobs else 60.0)
    cfg = LoadTestConfig(
        url=args.url,
        concurrency=args.concurrency,
        duration_s=duration,
        jobs=args.jobs,
        mix=mix,
        steps=args.steps,
        num_views=args.views,
        texture_views=args.views,
        atlas_size=args.atlas,
        api_key=args.api_key,
    )
    summary = run_loadtest(cfg, args.out, args.name)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return 0 if summary["jobs_succeeded"] else 1
