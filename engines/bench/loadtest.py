"""`realiz3d loadtest URL`: closed-loop load against a running service, with a report.

`concurrency` async clients each submit a job (kind drawn from the mix), follow it to the end, and
submit the next, until `duration` seconds have passed or `jobs` jobs were submitted. Reported: jobs/s,
end-to-end latency p50/p95/p99, queue wait (job started - created), errors by kind, 429s; JSON plus PNG
plots (latency histogram, throughput over time). Traffic goes only where URL points (bounded in count
and time: it always stops by itself).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from service.client import AsyncRealiz3DClient, Realiz3DAPIError

# A unit cube as OBJ text: texture jobs need no mesh library on the load-testing machine.
CUBE_OBJ = (
    b"v -0.5 -0.5 -0.5\nv 0.5 -0.5 -0.5\nv 0.5 0.5 -0.5\nv -0.5 0.5 -0.5\n"
    b"v -0.5 -0.5 0.5\nv 0.5 -0.5 0.5\nv 0.5 0.5 0.5\nv -0.5 0.5 0.5\n"
    b"f 1 3 2\nf 1 4 3\nf 5 6 7\nf 5 7 8\nf 1 2 6\nf 1 6 5\nf 4 7 3\nf 4 8 7\nf 1 5 8\nf 1 8 4\nf 2 3 7\nf 2 7 6\n"
)


#: the job-mix profiles shipped in deploy/loadtest/ (`realiz3d loadtest URL --profile smoke`)
PROFILES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "loadtest"


def load_profile(name_or_path: str) -> dict:
    """A profile's LoadTestConfig fields: `{name, concurrency, duration_s, ramp_up_s?, mix, request}` from
    deploy/loadtest/NAME.yaml or a YAML file's path."""
    import yaml

    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))) or "none found"
        raise ValueError(f"no such file (shipped profiles: {shipped})")
    data = yaml.safe_load(path.read_text())
    request = data.get("request") or {}
    mv, tx = request.get("multiview") or {}, request.get("texture") or {}
    total = sum(data["mix"].values())
    fields = {
        "concurrency": int(data["concurrency"]),
        "duration_s": float(data["duration_s"]),
        "ramp_up_s": float(data.get("ramp_up_s") or 0.0),
        "mix": {k: v / total for k, v in data["mix"].items() if v > 0},
        "steps": int(mv.get("steps", tx.get("steps", 10))),
        "num_views": int(mv.get("num_views", 4)),
        "texture_views": int(tx.get("num_views", mv.get("num_views", 4))),
        "atlas_size": int(tx.get("atlas_size", 256)),
        "guidance_scale": mv.get("guidance_scale", tx.get("guidance_scale")),
    }
    if "steps" in tx:
        fields["texture_steps"] = int(tx["steps"])
    return fields


def parse_mix(text: str) -> dict[str, float]:
    """`multiview:0.8,texture:0.2` -> normalised weights; raises ValueError on bad input."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        kind, _, weight = part.strip().partition(":")
        if kind not in ("multiview", "texture"):
            raise ValueError(f"job mix: unknown kind {kind!r} (use multiview, texture)")
        try:
            mix[kind] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"job mix: weight {weight!r} of {kind} is not a number") from None
        if mix[kind] < 0:
            raise ValueError(f"job mix: weight of {kind} must be >= 0")
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("job mix: weights must add up to more than 0")
    return {k: v / total for k, v in mix.items()}


@dataclass
class LoadTestConfig:
    url: str
    concurrency: int = 8
    duration_s: float | None = 60.0
    jobs: int | None = None
    mix: dict[str, float] = field(default_factory=lambda: {"multiview": 1.0})
    steps: int = 10
    num_views: int = 4
    texture_views: int = 4
    atlas_size: int = 256
    guidance_scale: float | None = None  # None: the model's default
    texture_steps: int | None = None  # None: `steps`
    cache_interval: int | None = None  # None: the service's default (1, step caching off)
    ramp_up_s: float = 0.0  # clients start evenly spread over this many seconds
    api_key: str | None = None
    job_timeout_s: float = 600.0
    seed: int = 0


@dataclass
class JobSample:
    kind: str
    submitted: float  # seconds since the test started
    finished: float
    status: str
    queue_wait_s: float | None
    error: str | None = None
    estimated_s: float | None = None  # the 202's estimated_seconds

    @property
    def latency_s(self) -> float:
        return self.finished - self.submitted


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def _one_job(client: AsyncRealiz3DClient, cfg: LoadTestConfig, kind: str, seed: int, t_start: float):
    submitted = time.perf_counter() - t_start
    params = {"prompt": f"a red cube {seed}", "steps": cfg.steps, "seed": seed}
    if cfg.guidance_scale is not None:
        params["guidance_scale"] = cfg.guidance_scale
    if cfg.cache_interval is not None:
        params["cache_interval"] = cfg.cache_interval
    if kind == "texture" and cfg.texture_steps is not None:
        params["steps"] = cfg.texture_steps
    throttled = 0
    while True:
        try:
            if kind == "multiview":
                accepted = await client.submit_multiview({**params, "num_views": cfg.num_views})
            else:
                accepted = await client.submit_texture(
                    CUBE_OBJ,
                    {**params, "num_views": cfg.texture_views, "atlas_size": cfg.atlas_size},
                    "cube.obj",
                )
            break
        except Realiz3DAPIError as e:
            if e.status == 429 and throttled < 20:
                throttled += 1
                await asyncio.sleep(e.retry_after or 1.0)
                continue
            return JobSample(
                kind, submitted, time.perf_counter() - t_start, "rejected", None, f"http_{e.status}"
            ), throttled
    try:
        job = await client.wait(accepted.id, timeout=cfg.job_timeout_s)
    except Exception as e:  # noqa: BLE001 - any transport failure is one error of that kind
        return JobSample(
            kind, submitted, time.perf_counter() - t_start, "lost", None, type(e).__name__
        ), throttled
    finished = time.perf_counter() - t_start
    wait = (job.started_at - job.created_at).total_seconds() if job.started_at else None
    error = job.error.code if job.error else None
    return JobSample(
        kind, submitted, finished, job.status, wait, error, accepted.estimated_seconds
    ), throttled


async def run_load(cfg: LoadTestConfig) -> tuple[list[JobSample], int, float]:
    rng = random.Random(cfg.seed)
    kinds, weights = zip(*cfg.mix.items(), strict=True)
    samples: list[JobSample] = []
    throttled_total = 0
    counter = iter(range(10**9))
    t_start = time.perf_counter()
    deadline = t_start + cfg.duration_s if cfg.duration_s else None

    async def client_loop(client: AsyncRealiz3DClient, index: int) -> None:
        nonlocal throttled_total
        if cfg.ramp_up_s > 0:
            await asyncio.sleep(cfg.ramp_up_s * index / cfg.concurrency)
        while True:
            if deadline is not None and time.perf_counter() >= deadline:
                return
            n = next(counter)
            if cfg.jobs is not None and n >= cfg.jobs:
                return
            sample, throttled = await _one_job(client, cfg, rng.choices(kinds, weights)[0], n, t_start)
            samples.append(sample)
            throttled_total += throttled

    async with AsyncRealiz3DClient(cfg.url, api_key=cfg.api_key, timeout=cfg.job_timeout_s) as client:
        await asyncio.gather(*(client_loop(client, i) for i in range(cfg.concurrency)))
    return samples, throttled_total, time.perf_counter() - t_start


def summarize(cfg: LoadTestConfig, samples: list[JobSample], throttled: int, elapsed: float) -> dict:
    ok = [s for s in samples if s.status == "succeeded"]
    lat = [s.latency_s for s in ok]
    waits = [s.queue_wait_s for s in ok if s.queue_wait_s is not None]

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {
        "config": {k: v for k, v in asdict(cfg).items() if k != "api_key"},
        "elapsed_s": round(elapsed, 2),
        "jobs_submitted": len(samples),
        "jobs_succeeded": len(ok),
        "jobs_per_s": round(len(ok) / elapsed, 4) if elapsed > 0 else 0.0,
        "latency_s": {
            "p50": r(percentile(lat, 0.5)),
            "p95": r(percentile(lat, 0.95)),
            "p99": r(percentile(lat, 0.99)),
            "mean": r(statistics.fmean(lat)) if lat else None,
        },
        "queue_wait_s": {"p50": r(percentile(waits, 0.5)), "p99": r(percentile(waits, 0.99))},
        "errors": dict(Counter(s.error or s.status for s in samples if s.status != "succeeded")),
        "throttled_429": throttled,
        "by_kind": dict(Counter(s.kind for s in ok)),
    }


def write_report(
    summary: dict, samples: list[JobSample], out_dir: Path, name: str = "loadtest"
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json"]
    data = {**summary, "samples": [asdict(s) for s in samples]}
    paths[0].write_text(json.dumps(data, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional on a gateway-only install
        return paths
    ok = [s for s in samples if s.status == "succeeded"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist([s.latency_s for s in ok] or [0], bins=30)
    ax.set(xlabel="end-to-end latency (s)", ylabel="jobs", title=f"{name}: latency")
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}_latency.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ends = sorted(s.finished for s in ok)
    ax.plot(ends, range(1, len(ends) + 1), drawstyle="steps-post")
    ax.set(xlabel="time since start (s)", ylabel="jobs completed", title=f"{name}: throughput")
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}_throughput.png", dpi=100)
    plt.close(fig)
    paths += [out_dir / f"{name}_latency.png", out_dir / f"{name}_throughput.png"]
    return paths


def run_loadtest(cfg: LoadTestConfig, out_dir: Path | None, name: str = "loadtest") -> dict:
    samples, throttled, elapsed = asyncio.run(run_load(cfg))
    summary = summarize(cfg, samples, throttled, elapsed)
    if out_dir is not None:
        write_report(summary, samples, out_dir, name)
    return summary
