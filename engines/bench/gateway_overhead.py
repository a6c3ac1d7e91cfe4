"""Gateway + queue overhead: (submit -> result seen by the client) minus the pipeline's own time.

`run()` starts a private redis-server, one `realiz3d worker` and one `realiz3d serve --broker` gateway
(or measures an existing `url`), submits `jobs` tiny multiview jobs one at a time (steps=1, num_views=1),
follows each with Server-Sent Events, and writes docs/benchmarks/gateway_overhead.json and .md.
The overhead covers HTTP, validation, the Redis job record, the Celery hop, artifact writing (PNG
encoding of a tiny image) and the SSE push back; the pipeline's `total` timing is subtracted.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from engines.bench.machine import describe
from service.client import Realiz3DClient

ROOT = Path(__file__).resolve().parents[2]
JOB = {"prompt": "a small red cube", "num_views": 1, "steps": 1, "seed": 0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not come up in {timeout} s")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _local_stack(
    stack: ExitStack,
    workdir: Path,
    worker_env: dict[str, str] | None = None,
    metrics_port: int | None = None,
    redis_port: int | None = None,
) -> str:
    """redis-server (on `redis_port`, else a free one) + worker + gateway as subprocesses; returns the
    gateway URL."""
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise RuntimeError("redis-server is not installed")
    rport, gport, mport = redis_port or _free_port(), _free_port(), metrics_port or _free_port()
    broker = f"redis://127.0.0.1:{rport}/0"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REALIZ3D_ARTIFACT_DIR": str(workdir / "artifacts")}

    def spawn(args: list[str], name: str, extra: dict[str, str] | None = None) -> subprocess.Popen:
        log = (workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            args, cwd=ROOT, env={**env, **(extra or {})}, stdout=log, stderr=subprocess.STDOUT
        )
        stack.callback(lambda: (proc.terminate(), proc.wait(20)))
        return proc

    spawn([redis_bin, "--port", str(rport), "--save", "", "--appendonly", "no"], "redis")
    _wait(lambda: socket.create_connection(("127.0.0.1", rport), 0.2).close() is None, 10, "redis")
    cli = [sys.executable, "-m", "service.cli"]
    spawn([*cli, "worker", "--broker", broker, "--metrics-port", str(mport)], "worker", worker_env)
    spawn([*cli, "serve", "--broker", broker, "--port", str(gport)], "gateway")
    url = f"http://127.0.0.1:{gport}"
    _wait(lambda: httpx.get(url + "/readyz", timeout=1).status_code == 200, 180, "the gateway and worker")
    return url


def measure(url: str, jobs: int, warmup: int = 10) -> dict[str, Any]:
    rows = []
    with Realiz3DClient(url, timeout=60) as client:
        for i in range(warmup + jobs):
            t0 = time.perf_counter()
            accepted = client.submit_multiview(JOB)
            t_accept = time.perf_counter()
            done = client.wait(accepted.id, timeout=60)
            t1 = time.perf_counter()
            if done.status != "succeeded":
                raise RuntimeError(f"job {done.id} {done.status}: {done.error}")
            if i < warmup:
                continue
            pipeline = done.timings["total"]
            worker_span = (done.finished_at - done.started_at).total_seconds()
            rows.append(
                {
                    "end_to_end_ms": (t1 - t0) * 1e3,
                    "pipeline_ms": pipeline * 1e3,
                    "overhead_ms": (t1 - t0 - pipeline) * 1e3,
                    "submit_ms": (t_accept - t0) * 1e3,
                    "queue_wait_ms": done.timings["queue_wait"] * 1e3,
                    "worker_outside_pipeline_ms": (worker_span - pipeline) * 1e3,
                }
            )

    def summary(key: str) -> dict[str, float]:
        values = [r[key] for r in rows]
        return {
            "p50": round(_percentile(values, 0.5), 2),
            "p90": round(_percentile(values, 0.9), 2),
            "p99": round(_percentile(values, 0.99), 2),
            "mean": round(statistics.fmean(values), 2),
        }

    return {
        "jobs": len(rows),
        "request": JOB,
        "overhead_ms": summary("overhead_ms"),
        "breakdown_ms": {k: summary(k) for k in rows[0] if k != "overhead_ms"},
        "goal_ms": {"p50": 20, "p99": 50},
    }


def write_report(result: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gateway_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    o = result["overhead_ms"]
    lines = [
        "# Gateway + queue overhead",
        "",
        f"(submit -> result seen by the client) minus the pipeline's own `total` time, over {result['jobs']}",
        f"sequential tiny jobs (`{json.dumps(result['request'])}`), after 10 warm-up jobs.",
        "Path: HTTP POST -> Redis job record -> Celery (Redis broker) -> worker -> PNG artifacts ->",
        "Redis record + pub/sub -> Server-Sent Events to the client.",
        "",
        f"Machine: {result['machine']}. Command: `{result['command']}`.",
        "",
        "| | p50 ms | p90 ms | p99 ms | mean ms |",
        "|---|---|---|---|---|",
        f"| **overhead** | **{o['p50']}** | {o['p90']} | **{o['p99']}** | {o['mean']} |",
    ]
    for key, s in result["breakdown_ms"].items():
        lines.append(f"| {key} | {s['p50']} | {s['p90']} | {s['p99']} | {s['mean']} |")
    goal = result["goal_ms"]
    met = o["p50"] <= goal["p50"] and o["p99"] <= goal["p99"]
    lines += [
        "",
        f"Goal: p50 <= {goal['p50']} ms, p99 <= {goal['p99']} ms: {'met' if met else 'NOT met'}.",
        "",
    ]
    (out_dir / "gateway_overhead.md").write_text("\n".join(lines))


def run(url: str | None = None, jobs: int = 200, out_dir: Path | None = None) -> dict[str, Any]:
    """Measure and write the report; with no `url`, start a private local stack first."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="realiz3d-bench-")))
        target = url or _local_stack(stack, workdir)
        result = measure(target, jobs)
    result["machine"] = describe()
    result["command"] = (
        f"python -m engines.bench.gateway_overhead --url {url}" if url else "realiz3d bench gateway-overhead"
    )
    write_report(result, out_dir or ROOT / "docs" / "benchmarks")
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="measure a running gateway instead of a local stack")
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(run(args.url, args.jobs)["overhead_ms"]))
