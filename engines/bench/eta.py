"""How right `estimated_seconds` is (`realiz3d bench eta`): the 202's estimate against the measured time.

Under the throughput benchmark's load (engines/bench/throughput.py): one real service per configuration
(redis-server, one `realiz3d worker` with 2 threads, a gateway), `concurrency` clients in a closed loop
(each submits a job, waits for it to end, submits the next), `jobs` jobs of `views` views x `steps` steps.
Configurations: batched (`REALIZ3D_BATCH_MAX_JOBS=8`), unbatched (`=1`) and batched with every job at
`cache_interval` 3 (full and shallow steps). For each job: the estimate in its 202 and the time from
before its POST to the client seeing it end; the error is (estimate - measured) / measured. Reported
for every job, and for the steady state alone: the jobs submitted after the first one ended (the first
wave's estimates cannot know of the jobs submitted after them, which share their ticks). `busy_cores`:
that many busy-loop processes run beside the service the whole time (engines/bench/background_load.py),
a steady noisy neighbour that every job and every measured step pays for.
"""

from __future__ import annotations

import asyncio
import copy
import json
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from engines.bench.background_load import busy_cores as busy_processes
from engines.bench.gateway_overhead import _free_port, _local_stack
from engines.bench.loadtest import JobSample, LoadTestConfig, percentile, run_load, run_loadtest
from engines.bench.machine import describe, machine
from engines.bench.worker_snapshots import WorkerSnapshots
from service.eta import estimate_new
from service.jobs.records import JobKind

#: (name, REALIZ3D_BATCH_MAX_JOBS, cache_interval of every job)
CONFIGS = (("batched", 8, None), ("unbatched", 1, None), ("batched, cache_interval 3", 8, 3))
GOAL = 0.25  # |error| at p50 under the throughput benchmark's load (issue 28)


def errors(samples: list[JobSample]) -> list[float]:
    """(estimate - measured) / measured of each succeeded job that got an estimate."""
    return [
        (s.estimated_s - s.latency_s) / s.latency_s
        for s in samples
        if s.status == "succeeded" and s.estimated_s is not None and s.latency_s > 0
    ]


def lockstep_estimate(
    workers: list[dict[str, Any]] | None, params: dict[str, Any], live: float | None
) -> float | None:
    """The estimate the one-call tick model (before the workers published `call_mix`) gives a job, from
    the workers' infos before its POST, as read (estimating parses them in place: pass a fresh copy): the
    jobs-ahead count is the one under which those infos give the 202's `live` estimate to 2 ms (None where
    none does: the gateway saw other infos, or no estimate)."""
    if not workers or live is None:
        return None
    lockstep = copy.deepcopy(workers)
    for w in lockstep:
        if isinstance(w.get("step_costs"), dict):
            w["step_costs"].pop("call_mix", None)
    for ahead in range(64):
        again = estimate_new(workers, JobKind.multiview, params, ahead)
        if again is not None and abs(again - live) <= 0.002:  # both rounded to ms: the last digit may differ
            return estimate_new(lockstep, JobKind.multiview, params, ahead)
    return None


def error_summary(samples: list[JobSample]) -> dict[str, Any]:
    errs = errors(samples)
    absolute = [abs(e) for e in errs]

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {
        "jobs": len(errs),
        "abs_error_p50": r(percentile(absolute, 0.5)),
        "abs_error_p90": r(percentile(absolute, 0.9)),
        "signed_error_p50": r(percentile(errs, 0.5)),
        "estimate_p50_s": r(percentile([s.estimated_s for s in samples if s.estimated_s is not None], 0.5)),
        "measured_p50_s": r(percentile([s.latency_s for s in samples if s.status == "succeeded"], 0.5)),
    }


def run(
    concurrency: int = 8,
    jobs: int = 32,
    steps: int = 10,
    views: int = 4,
    out_dir: Path | None = None,
    name: str = "eta",
    busy_cores: int = 0,
) -> dict[str, Any]:
    """Each configuration on its own service, one after another, with `busy_cores` busy-loop processes
    running beside it; writes `<name>.json/.md`."""
    out_dir = out_dir or Path(__file__).resolve().parents[2] / "docs" / "benchmarks"
    results: dict[str, Any] = {}
    for config, max_jobs, interval in CONFIGS:
        with (
            ExitStack() as stack,
            tempfile.TemporaryDirectory(prefix="realiz3d-eta-") as tmp,
            busy_processes(busy_cores),
        ):
            env = {"REALIZ3D_BATCH_MAX_JOBS": str(max_jobs), "OMP_NUM_THREADS": "2"}
            redis_port = _free_port()
            url = _local_stack(stack, Path(tmp), worker_env=env, redis_port=redis_port)
            # warm-up outside the measurement (first-call allocations; the first step costs measured)
            warm = LoadTestConfig(
                url, concurrency=2, duration_s=None, jobs=2, steps=2, cache_interval=interval
            )
            run_loadtest(warm, None)
            cfg = LoadTestConfig(
                url,
                concurrency=concurrency,
                duration_s=None,
                jobs=jobs,
                steps=steps,
                num_views=views,
                cache_interval=interval,
            )
            with WorkerSnapshots(f"redis://127.0.0.1:{redis_port}/0") as snapshots:
                samples, _, elapsed = asyncio.run(run_load(cfg))
                t_start = time.perf_counter() - elapsed
        first_end = min(s.finished for s in samples)
        steady = [s for s in samples if s.submitted > first_end]
        params = {"num_views": views, "steps": steps, "cache_interval": interval or 1}
        pairs = [
            (s, lockstep)
            for s in steady
            if (lockstep := lockstep_estimate(snapshots.before(t_start + s.submitted), params, s.estimated_s))
            is not None
        ]
        results[config] = {
            "all": error_summary(samples),
            "steady": error_summary(steady),
            "models": {
                "jobs": len(pairs),
                "live": error_summary([s for s, _ in pairs]),
                "lockstep": error_summary([replace(s, estimated_s=e) for s, e in pairs]),
            },
            "samples": [
                {
                    "submitted": round(s.submitted, 3),
                    "measured_s": round(s.latency_s, 3),
                    "estimated_s": s.estimated_s,
                }
                for s in samples
            ],
        }
    report = {
        "machine": machine(),
        "workload": {
            "concurrency": concurrency,
            "jobs": jobs,
            "steps": steps,
            "num_views": views,
            "busy_cores": busy_cores,
        },
        "goal": f"|estimate - measured| / measured <= {GOAL} at p50 (steady state)",
        **results,
    }
    write_report(report, out_dir, name)
    return report


def write_report(report: dict[str, Any], out_dir: Path, name: str = "eta") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2))
    w = report["workload"]
    rows, model_rows = [], []
    for config, _, _ in CONFIGS:
        m = report[config].get("models")
        if m:
            model_rows.append(
                f"| {config} | {m['jobs']} | {m['live']['abs_error_p50']} | {m['live']['signed_error_p50']} | "
                f"{m['lockstep']['abs_error_p50']} | {m['lockstep']['signed_error_p50']} |"
            )
        for part in ("steady", "all"):
            r = report[config][part]
            rows.append(
                f"| {config} | {part} | {r['jobs']} | {r['abs_error_p50']} | {r['abs_error_p90']} | "
                f"{r['signed_error_p50']} | {r['estimate_p50_s']} | {r['measured_p50_s']} |"
            )
    text = "\n".join(
        [
            "# ETA: `estimated_seconds` against the measured time (`realiz3d bench eta`)",
            "",
            f"Real service per configuration (redis-server + 1 worker with 2 threads + gateway), embedded "
            f"default model, {w['concurrency']} clients in a closed loop (the throughput benchmark's load), "
            f"{w['jobs']} jobs of {w['num_views']} views x {w['steps']} steps each"
            + (
                f", {w['busy_cores']} busy-loop process(es) running beside the service throughout (a steady "
                "noisy neighbour, `--busy-cores`)"
                if w.get("busy_cores")
                else ""
            )
            + f". Machine: {describe(report['machine'])}.",
            "",
            "Error = (the 202's estimated_seconds - the time from before the POST to the client seeing the job "
            "end) / that time. *steady*: the jobs submitted after the first job ended; *all*: every job, "
            "including the first wave, whose estimates cannot know of the jobs submitted just after them.",
            "",
            "| config | which jobs | n | abs error p50 | abs error p90 | signed error p50 | estimate p50 s | "
            "measured p50 s |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Goal (issue 28): {report['goal']}.",
            "",
            "The same steady-state jobs estimated by two tick models, in this run: *live*, the 202's (a tick's "
            "calls costed as the worker's recent ticks mixed full and shallow calls, `call_mix`), and "
            "*lockstep*, the model before it (every tick one call of all its images), re-computed from the "
            "workers' infos read before each POST (engines/bench/worker_snapshots.py; a job counts where those "
            "infos reproduce its 202 estimate, to 2 ms).",
            "",
            "| config | jobs | live: abs error p50 | signed p50 | lockstep: abs error p50 | signed p50 |",
            "|---|---|---|---|---|---|",
            *model_rows,
            "",
        ]
    )
    (out_dir / f"{name}.md").write_text(text)


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
