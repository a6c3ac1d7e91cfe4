"""`realiz3d loadtest URL`: closed-loop load test of a running service."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engines.bench import OUT_DIR


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loadtest", help="load-test a running service and write a report")
    p.add_argument("url", help="base URL of the service, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--profile",
        default=None,
        help="a job-mix profile: smoke, steady, burst (deploy/loadtest/NAME.yaml) or a YAML file; it sets "
        "concurrency, duration, ramp-up, mix and the request fields; flags given as well override it",
    )
    p.add_argument("--concurrency", type=int, default=None, help="jobs in flight at once (default 8)")
    p.add_argument("--duration", type=float, default=None, help="seconds to keep submitting (default 60)")
    p.add_argument("--jobs", type=int, default=None, help="stop after this many jobs")
    p.add_argument(
        "--mix", default=None, help="job mix, e.g. multiview:0.8,texture:0.2 (default multiview:1)"
    )
    p.add_argument("--steps", type=int, default=None, help="denoising steps per job (default 10)")
    p.add_argument("--views", type=int, default=None, help="views per job (default 4)")
    p.add_argument("--atlas", type=int, default=None, help="texture jobs' atlas size (default 256)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--name", default="loadtest", help="report file name stem")
    p.add_argument("--out", type=Path, default=OUT_DIR)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from engines.bench.loadtest import LoadTestConfig, load_profile, parse_mix, run_loadtest
    from engines.errors import UserInputError

    fields: dict = {}
    if args.profile:
        try:
            fields = load_profile(args.profile)
        except (ValueError, KeyError, TypeError) as e:
            raise UserInputError(f"--profile {args.profile}: {e}") from None
    for flag, field in (("concurrency", "concurrency"), ("steps", "steps"), ("atlas", "atlas_size")):
        if getattr(args, flag) is not None:
            fields[field] = getattr(args, flag)
    if args.views is not None:
        fields["num_views"] = fields["texture_views"] = args.views
    if args.mix is not None:
        try:
            fields["mix"] = parse_mix(args.mix)
        except ValueError as e:
            raise UserInputError(str(e)) from None
    if args.duration is not None:
        fields["duration_s"] = args.duration
    if args.jobs is not None:
        fields["jobs"] = args.jobs
        if args.duration is None and not args.profile:
            fields["duration_s"] = None  # stop after --jobs
    if fields.get("concurrency", 1) < 1:
        raise UserInputError("--concurrency must be >= 1")
    if args.jobs is not None and args.jobs < 1:
        raise UserInputError("--jobs must be >= 1")
    if args.duration is not None and args.duration <= 0:
        raise UserInputError("--duration must be > 0")
    cfg = LoadTestConfig(url=args.url, api_key=args.api_key, **fields)
    summary = run_loadtest(cfg, args.out, args.name)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return 0 if summary["jobs_succeeded"] else 1
