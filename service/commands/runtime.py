"""`realiz3d build-engines` (fill the compiled-engine cache ahead of time) and `realiz3d bench TARGET`."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from engines.bench import OUT_DIR
from engines.bench.coverage import SECTIONS as COVERAGE_SECTIONS
from engines.bench.step_cache import INTERVAL_GOAL
from engines.bench.step_cache import SECTIONS as CACHE_SECTIONS
from service.commands.engines import ENGINE_CACHE_HELP, add_engine_cache_arg, engine_cache_dir
from service.commands.schedule_arg import SCHEDULE_HELP, parse_schedule


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


#: `realiz3d bench unet --shape sd` and `bench cache`: minutes a timed loop may run
DEFAULT_MAX_MINUTES = 15.0

#: `realiz3d bench TARGET`: each target and what it measures (its report names are in docs/benchmarks/README.md)
BENCH_TARGETS = {
    "unet": "Domain Shifter cost and the compiled backends' step times",
    "geometry": "texturing's geometry maps on a 100,000-face mesh; asset re-export, fill, bake round trip",
    "unwrap": "UV unwrapping, fast and quality",
    "gateway": "the HTTP ceiling against a bare FastAPI app",
    "gateway-overhead": "queue latency",
    "throughput": "jobs/s with step batching on and off",
    "resolution": "the default model at 32 vs 64 px: training step and generation",
    "memory": "peak RSS per job kind and per hostile upload",
    "loading": "peak RAM while loading an SD-shaped UNet",
    "cache": "step caching's speedups (DeepCache-style cache_interval)",
    "coverage": "surface shares, views and job time of texturing procedural meshes, view planning off and "
    "on; the bake round trip",
    "eta": "estimated_seconds against the measured time, under the throughput load",
    "first-job": "a fresh clone's `make run`: seconds to /healthz and to a finished job (port 8000 free)",
}


@dataclass(frozen=True)
class BenchOption:
    """One `realiz3d bench` option and the targets that take it: each target's parser gets only its own
    options, so an option a target does not use is refused (exit 2), never silently ignored. A keyword
    argument given as a dict (a default, choices, a help) is per target."""

    flags: tuple[str, ...]
    targets: tuple[str, ...]
    kwargs: dict = field(default_factory=dict)

    def add_to(self, parser: argparse.ArgumentParser, target: str) -> None:
        if target not in self.targets:
            return
        kwargs = {k: v[target] if isinstance(v, dict) else v for k, v in self.kwargs.items()}
        if kwargs.get("default") is not None and "(default:" not in kwargs.get("help", ""):
            kwargs["help"] = kwargs.get("help", "") + " (default: %(default)s)"
        parser.add_argument(*self.flags, **kwargs)


def _fraction(text: str) -> float:
    """An interval-width goal: a number strictly between 0 and 1 (0 no interval meets, 1 or more every
    interval meets), else argparse's one-line error, exit 2."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} must lie strictly between 0 and 1")
    return value


def _count(text: str) -> int:
    """A whole number, 0 or more, else argparse's one-line error, exit 2."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def _option(*flags: str, targets: tuple[str, ...], **kwargs) -> BenchOption:
    return BenchOption(flags, targets, kwargs)


#: every `realiz3d bench` option, once; `BenchOption.add_to` derives each target's parser from it
BENCH_OPTIONS = (
    _option(
        "--concurrency",
        targets=("gateway", "throughput", "eta"),
        type=int,
        default={"gateway": 50, "throughput": 8, "eta": 8},
        help="concurrent clients",
    ),
    _option("--seconds", targets=("gateway",), type=float, default=10.0, help="seconds per load run"),
    _option(
        "--api-workers",
        targets=("gateway",),
        type=int,
        default=None,
        help="processes per app (default: REALIZ3D_API_WORKERS)",
    ),
    _option("--jobs", targets=("throughput", "eta"), type=int, default=24, help="jobs per configuration"),
    _option(
        "--job-steps", targets=("throughput", "eta"), type=int, default=10, help="denoising steps per job"
    ),
    _option("--job-views", targets=("throughput", "eta"), type=int, default=4, help="views per job"),
    _option(
        "--busy-cores",
        targets=("eta",),
        type=_count,
        default=0,
        help="run this many busy-loop processes beside the service while it measures: a steady noisy "
        "neighbour (default: 0)",
    ),
    _option(
        "--rounds",
        targets=("gateway", "throughput"),
        type=int,
        default=3,
        help="alternating rounds per configuration",
    ),
    _option(
        "--name",
        targets=("unet", "throughput", "eta"),
        default={"unet": "backends", "throughput": "throughput", "eta": "eta"},
        help="report file name, no extension",
    ),
    _option(
        "--shape",
        targets=("unet",),
        choices=("default", "sd"),
        default="default",
        help="the embedded default model, or a seeded UNet at SD 1.x shapes (64x64 latents)",
    ),
    _option("--gpu-only", targets=("unet",), action="store_true", help="skip the CPU table"),
    _option(
        "--interval-width",
        targets=("unet", "cache"),
        type=_fraction,
        default=None,
        help={
            "unet": "with --shape sd: time the shifter's cost in pairs until its 95%% interval is this narrow "
            "(default: 0.01)",
            "cache": "time each loop until every speedup's 95%% interval is narrower than this fraction of it "
            f"(default: {INTERVAL_GOAL:g})",
        },
    ),
    _option(
        "--resume",
        targets=("unet",),
        action="store_true",
        help="with --shape sd: pool this run's pairs with the report's already in --out (same model and "
        "threading, else an error before anything is timed), so quiet windows add up to one interval",
    ),
    _option(
        "--max-minutes",
        targets=("unet", "cache"),
        type=float,
        default=None,
        help={
            "unet": f"with --shape sd: stop the timed pairs after this long, the interval as wide as it is then "
            f"(default: {DEFAULT_MAX_MINUTES:g})",
            "cache": "stop each section's timed loops (each backend's) after this long, the intervals as wide "
            f"as they are then (default: {DEFAULT_MAX_MINUTES:g})",
        },
    ),
    _option(
        "--width",
        targets=("loading",),
        type=int,
        default=160,
        help="the UNet's first block channels (SD 1.5: 320)",
    ),
    _option(
        "--backend",
        targets=("unet",),
        type=_csv,
        default=["torch", "compile", "onnx"],
        help="comma-separated backends (default: torch,compile,onnx)",
    ),
    _option(
        "--precision",
        targets=("unet",),
        type=_csv,
        default=None,
        help="comma-separated precisions (default: fp32,bf16 on the CPU, fp16,bf16 on a GPU)",
    ),
    _option("--steps", targets=("unet",), type=int, default=20, help="timed repetitions per backend"),
    _option("--engine-cache", targets=("unet", "cache"), type=Path, default=None, help=ENGINE_CACHE_HELP),
    _option("--skip-domain-cost", targets=("unet",), action="store_true", help="only the per-backend table"),
    _option("--shapes", targets=("unwrap",), type=_csv, default=None, help="sphere,torus_knot,blob (all)"),
    _option(
        "--sizes",
        targets=("unwrap",),
        type=_csv,
        default=None,
        help="face counts (10000,50000,100000,300000)",
    ),
    _option("--modes", targets=("unwrap",), type=_csv, default=None, help="fast,quality (both, alternating)"),
    _option(
        "--job-faces", targets=("unwrap",), type=int, default=0, help="also time a whole texture job (0: no)"
    ),
    _option(
        "--assets",
        targets=("coverage",),
        type=Path,
        default=None,
        help="texture every mesh file in this folder instead of the procedural meshes "
        "(coverage_assets.md; its SOURCES.md is quoted)",
    ),
    _option(
        "--section",
        targets=("cache", "coverage"),
        choices={"cache": tuple(CACHE_SECTIONS), "coverage": COVERAGE_SECTIONS},
        default=None,
        help={
            "cache": "measure only this section and merge it into the step_cache.json already in --out "
            "(shipped: eager loops at N=1,2,3,5; onnx: ONNX Runtime loops at N=1,3; batched: jobs/s of mixed "
            "intervals, eager and onnx; sd: the SD-1.x-shaped UNet's speedups)",
            "coverage": "measure only this section and merge it into the coverage.json already in --out "
            "(round-trip: the bake round trip on every procedural mesh, no model, no job timing)",
        },
    ),
    _option("--out", targets=tuple(BENCH_TARGETS), type=Path, default=OUT_DIR, help="report folder"),
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-engines",
        help="export/build the compiled UNet engines the model's schedule needs into the engine cache",
    )
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the embedded model)")
    p.add_argument("--backend", choices=("onnx", "tensorrt"), default="onnx")
    p.add_argument("--num-views", type=int, default=None, help="views per object (default: the model's)")
    p.add_argument(
        "--envelope",
        action="store_true",
        help="build every view count x resolution the model's realiz3d.json `serving` declares",
    )
    p.add_argument(
        "--cfg",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="size the TensorRT profile's optimum for classifier-free guidance (batch = 2 x views)",
    )
    p.add_argument(
        "--schedule",
        default=None,
        help="the schedule whose weight sets to build (lora form): " + SCHEDULE_HELP,
    )
    p.add_argument("--steps", type=int, default=30, help="denoising steps the schedule is split over")
    p.add_argument(
        "--cache-interval",
        type=int,
        default=1,
        metavar="N",
        help="build what jobs with this --cache-interval need: 1 (default) the full graph of each shape, "
        "N > 1 the shallow graph of step caching too (see docs/runtimes.md)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        default=None,
        help="default: the backend's, as the worker's (REALIZ3D_PRECISION, else onnx fp32, tensorrt fp16)",
    )
    p.add_argument(
        "--max-objects",
        type=int,
        default=None,
        help="TensorRT profile max batch = this x views x CFG (default: REALIZ3D_BATCH_MAX_JOBS, as the "
        "worker uses, so the worker finds these engines in the cache)",
    )
    p.add_argument("--device", default="auto")
    add_engine_cache_arg(p)
    p.set_defaults(handler=run_build_engines)

    b = sub.add_parser(
        "bench",
        help="benchmarks, one TARGET each: "
        + "; ".join(f"{name} ({what})" for name, what in BENCH_TARGETS.items())
        + ". `realiz3d bench TARGET --help` lists the target's options",
    )
    targets = b.add_subparsers(dest="target", required=True, metavar="TARGET")
    for name, what in BENCH_TARGETS.items():
        t = targets.add_parser(name, help=what, description=f"realiz3d bench {name}: {what}")
        for option in BENCH_OPTIONS:
            option.add_to(t, name)
        t.set_defaults(handler=run_bench)


def worker_batch_max_jobs() -> int:
    """`REALIZ3D_BATCH_MAX_JOBS` as the worker reads it: engines built with it are the worker's cache hits."""
    from service.settings import get_settings

    return get_settings().batch_max_jobs


def worker_precision(backend: str) -> str:
    """The precision a worker of `backend` runs: `REALIZ3D_PRECISION`, else the backend's default
    (`backend_names.DEFAULT_PRECISION`). Engines built with it are the worker's cache hits."""
    from service.settings import Settings

    return Settings(backend=backend).precision  # type: ignore[return-value]


def run_build_engines(args: argparse.Namespace) -> int:
    from engines.errors import UserInputError

    schedule = parse_schedule(args.schedule)
    if args.steps < 1:
        raise UserInputError("--steps must be at least 1")
    if args.cache_interval < 1:
        raise UserInputError("--cache-interval must be at least 1 (1: step caching off)")
    precision = args.precision or worker_precision(args.backend)
    cache_dir = engine_cache_dir(args.engine_cache)

    from engines.models.default_model import default_model_dir
    from engines.models.model_folder import load_model
    from engines.runtime.torch_runner import resolve_device

    if args.backend == "tensorrt":
        from engines.runtime.tensorrt_runner import tensorrt_available

        if not tensorrt_available():
            from engines.errors import BackendUnavailable

            raise BackendUnavailable(
                "backend tensorrt needs NVIDIA TensorRT and a CUDA GPU; neither is available here"
            )
    model = load_model(args.model if args.model is not None else default_model_dir())
    model.to(resolve_device(args.device)).eval()
    schedule = schedule or model.config.default_schedule
    combos = sorted(set(schedule.combos(args.steps)))
    views = args.num_views or model.config.num_views
    if args.backend == "onnx":
        from engines.runtime.onnx_runner import OnnxRunner

        runner = OnnxRunner(model, cache_dir=cache_dir, precision=precision, num_views=views)
    else:
        from engines.runtime.tensorrt_runner import TensorRTRunner

        runner = TensorRTRunner(
            model,
            cache_dir=cache_dir,
            precision=precision,
            num_views=views,
            max_objects=args.max_objects or worker_batch_max_jobs(),
            cfg=args.cfg,
        )
    from engines.runtime.onnx_runner import weight_set_label

    kinds = ("full",)
    if args.cache_interval > 1:
        if not runner.step_cache:
            raise UserInputError(
                f"--cache-interval {args.cache_interval}: model {model.config.name} does not serve step "
                "caching (its jobs run every step whole); build without it"
            )
        kinds = ("full", "shallow")
    if args.envelope:
        from engines.runtime.onnx_export import envelope_shapes

        shapes = envelope_shapes(model)
        print(
            f"{len(shapes)} shapes in the serving envelope x {len(runner.weight_sets(combos))} weight set(s)"
            f" x {len(kinds)} step kind(s)"
        )
        for shape in shapes:
            for kind in kinds:
                for combo in runner.weight_sets(combos):
                    runner.build_shape(combo, shape, kind)
    else:
        runner.prepare(combos, step_kinds=kinds)
    for combo, shape, kind, entry in runner.entries:
        state = "hit  " if entry.hit else f"built in {entry.build_seconds:.1f} s:"
        print(
            f"{args.backend} {weight_set_label(combo)} views={shape.num_views} {shape.height}x{shape.width} {kind}: "
            f"{state} {entry.path}"
        )
    built = sum(not e.hit for *_, e in runner.entries)
    print(
        f"{len(runner.entries)} entries ({built} built, {len(runner.entries) - built} cache hits) in {runner.cache.root}"
    )
    return 0


def _max_minutes(args: argparse.Namespace) -> float:
    return args.max_minutes if args.max_minutes is not None else DEFAULT_MAX_MINUTES


def run_bench(args: argparse.Namespace) -> int:
    if args.target == "unet":
        return _bench_unet(args)
    if args.target == "geometry":
        from engines.bench.geometry import run_geometry_benchmark
        from engines.bench.texturing_asset import run_asset_benchmark

        run_geometry_benchmark(out_dir=args.out)
        run_asset_benchmark(out_dir=args.out)
    elif args.target == "unwrap":
        from engines.bench.unwrap import run_unwrap_benchmark

        run_unwrap_benchmark(
            args.out,
            shapes=args.shapes,
            sizes=[int(n) for n in args.sizes] if args.sizes else None,
            modes=args.modes,
            job_faces=args.job_faces,
        )
    elif args.target == "memory":
        from engines.bench.job_memory import run_job_memory_bench

        run_job_memory_bench(out_dir=args.out)
    elif args.target == "coverage":
        from engines.bench.coverage import run_coverage_bench

        run_coverage_bench(out_dir=args.out, assets=args.assets, section=args.section)
    elif args.target == "cache":
        from engines.bench.step_cache import run_step_cache_bench

        run_step_cache_bench(
            out_dir=args.out,
            max_seconds=_max_minutes(args) * 60,
            section=args.section,
            engine_cache_dir=engine_cache_dir(args.engine_cache),
            goal=args.interval_width if args.interval_width is not None else INTERVAL_GOAL,
        )
    elif args.target == "loading":
        from engines.bench.loading import run as run_loading

        run_loading(args.width, args.out)
    elif args.target == "resolution":
        from engines.bench.resolution import run_resolution_bench

        run_resolution_bench(out_dir=args.out)
    elif args.target == "gateway":
        from engines.bench.gateway import run as run_load

        report = run_load(
            concurrency=args.concurrency,
            seconds=args.seconds,
            rounds=args.rounds,
            workers=args.api_workers,
            out_dir=args.out,
        )
        print(json.dumps({"summary": report["summary"], "met": report["met"]}, indent=2))
    elif args.target == "gateway-overhead":
        from engines.bench.gateway_overhead import run

        run(out_dir=args.out)
    elif args.target == "first-job":
        from engines.bench.first_job import run as run_first_job

        report = run_first_job(out_dir=args.out)
        print(
            f"fresh clone -> /healthz {report['healthz_s']} s; -> first job succeeded {report['first_job_s']} s"
        )
    elif args.target == "eta":
        from engines.bench.eta import run as run_eta

        report = run_eta(
            concurrency=args.concurrency,
            jobs=args.jobs,
            steps=args.job_steps,
            views=args.job_views,
            out_dir=args.out,
            name=args.name,
            busy_cores=args.busy_cores,
        )
        print(
            json.dumps({k: v["steady"] for k, v in report.items() if isinstance(v, dict) and "steady" in v})
        )
    else:
        from engines.bench.throughput import run

        report = run(
            concurrency=args.concurrency,
            jobs=args.jobs,
            steps=args.job_steps,
            views=args.job_views,
            rounds=args.rounds,
            out_dir=args.out,
            name=args.name,
        )
        print(json.dumps({k: v for k, v in report.items() if k not in ("batched", "unbatched")}, indent=2))
    return 0


def _bench_unet(args: argparse.Namespace) -> int:
    from engines.errors import UserInputError
    from engines.runtime.backend_names import BACKENDS
    from engines.runtime.torch_runner import PRECISIONS

    sd_only = [
        flag
        for flag, value in (
            ("--interval-width", args.interval_width),
            ("--resume", args.resume or None),
            ("--max-minutes", args.max_minutes),
        )
        if value is not None
    ]
    if args.shape != "sd" and sd_only:
        raise UserInputError(
            f"{', '.join(sd_only)}: only with --shape sd (the default model's cost is timed in a fixed number "
            "of steps)"
        )
    precisions = args.precision or []
    bad = [b for b in args.backend if b not in BACKENDS] + [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise UserInputError(
            f"unknown backend/precision {', '.join(bad)} (backends {BACKENDS}, precisions {tuple(PRECISIONS)})"
        )
    if not args.skip_domain_cost:
        try:
            from engines.bench.unet import run_unet_bench
        except ImportError:
            print("bench unet: Domain Shifter cost part skipped (engines.bench.unet not in this build)")
        else:
            if args.shape == "sd":
                from engines.bench.unet import run_sd_shifter_cost

                run_sd_shifter_cost(
                    out_dir=args.out,
                    width=args.interval_width if args.interval_width is not None else 0.01,
                    max_minutes=_max_minutes(args),
                    resume=args.resume,
                )
            else:
                run_unet_bench(out_dir=args.out)
    from engines.bench.backends import run_backend_bench

    run_backend_bench(
        backends=args.backend,
        precisions=args.precision,
        gpu_precisions=args.precision,
        repeats=args.steps,
        out_dir=args.out,
        cache_dir=engine_cache_dir(args.engine_cache),
        shape=args.shape,
        cpu=not args.gpu_only,
        name=args.name,
    )
    return 0
