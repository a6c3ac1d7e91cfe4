"""The gateway's HTTP ceiling: `realiz3d bench gateway --concurrency 50`.

`run()` starts a private redis-server, the gateway (`realiz3d serve --broker`, admission=queue, no worker)
and a **bare FastAPI app** on the same Redis, served the same way (same uvicorn workers, event loop and
HTTP parser), and loads both with `wrk` (C, HTTP/1.1 keep-alive, one thread, a separate process), in
the same run and alternating:
- `GET /v1/jobs/{id}` of one job; the bare app answers the same job hash with one `HGETALL`;
- `POST /v1/multiview` of a tiny job; the bare app validates the same body with a Pydantic model and
  writes one hash (`HSET` + `EXPIRE` in one round trip).
It reports req/s, p50, p99 and error answers per app and route, the gateway/bare ratio of each round, and
the load generator's CPU share (far below one core: it is not the bottleneck), and writes
docs/benchmarks/gateway.json and .md. It is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from engines.bench.gateway_overhead import ROOT, _free_port, _wait
from engines.bench.machine import describe

JOB = {"prompt": "a small red cube", "num_views": 1, "steps": 1, "seed": 0}
GOALS = {"get_ratio": 0.8, "post_ratio": 0.5, "post_p99_ms": 100.0}
REDIS_ENV = "REALIZ3D_BENCH_REDIS_URL"

# wrk prints one JSON line at the end (latencies in microseconds).
_DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


class BareBody(BaseModel):
    """The bare app's request body: the fields of the benchmark's job, validated by Pydantic."""

    prompt: str
    num_views: int = 4
    steps: int = 30
    seed: int | None = None


def bare_app():  # noqa: ANN201 - a FastAPI app (fastapi imported lazily)
    """The baseline: FastAPI + redis.asyncio, one Redis round trip per request, nothing else."""
    import redis.asyncio as aioredis
    from fastapi import FastAPI, HTTPException

    app = FastAPI()
    r = aioredis.Redis.from_url(os.environ[REDIS_ENV], decode_responses=True, max_connections=256)

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str) -> dict:
        h = await r.hgetall("realiz3d:job:" + job_id)
        if not h:
            raise HTTPException(404)
        return h

    @app.post("/v1/multiview", status_code=202)
    async def create(body: BareBody) -> dict:
        job_id = uuid.uuid4().hex
        key = "realiz3d:bare:" + job_id
        async with r.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping={"id": job_id, "params": body.model_dump_json()})
            pipe.expire(key, 600)
            await pipe.execute()
        return {"id": job_id, "status": "queued"}

    return app


def _tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a process and its children (Linux /proc; 0 elsewhere)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        stats[int(entry.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    tree, total = {root}, 0.0
    for _ in range(4):  # the uvicorn supervisor's workers are its children
        tree |= {pid for pid, (ppid, _) in stats.items() if ppid in tree}
    for pid in tree:
        total += stats.get(pid, (0, 0.0))[1]
    return total


def _wrk(url: str, concurrency: int, seconds: float, script: Path, server_pid: int = 0) -> dict[str, Any]:
    """One wrk run; its own CPU time says whether it could have been the bottleneck, the server's CPU
    time per request is the cost figure least moved by other load on the machine."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    args = [
        wrk,
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    cpu0 = _tree_cpu_seconds(server_pid) if server_pid else 0.0
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    server_cpu = _tree_cpu_seconds(server_pid) - cpu0 if server_pid else 0.0
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in out.splitlines() if line.startswith('{"requests"')]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out[-500:]}")
    raw = json.loads(lines[-1])
    seconds_run = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    return {
        "requests": raw["requests"],
        "rps": round(raw["requests"] / seconds_run, 1),
        "p50_ms": round(raw["p50_us"] / 1e3, 2),
        "p90_ms": round(raw["p90_us"] / 1e3, 2),
        "p99_ms": round(raw["p99_us"] / 1e3, 2),
        "max_ms": round(raw["max_us"] / 1e3, 2),
        "errors": errors,
        "wrk_cpu_share": round((usage.ru_utime + usage.ru_stime) / seconds_run, 3),
        "server_cpu_ms_per_request": round(1e3 * server_cpu / max(raw["requests"], 1), 3),
    }


def _scripts(workdir: Path) -> dict[str, Path]:
    get = workdir / "get.lua"
    get.write_text(_DONE_LUA)
    post = workdir / "post.lua"
    post.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(JOB))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n' + _DONE_LUA
    )
    return {"get": get, "post": post}


def _servers(stack: ExitStack, workdir: Path, workers: int) -> tuple[dict[str, tuple[str, int]], str]:
    """redis-server, the gateway and the bare app; returns ({app: (URL, pid)}, a job id)."""
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise RuntimeError("redis-server is not installed")
    rport, gport, bport = _free_port(), _free_port(), _free_port()
    broker = f"redis://127.0.0.1:{rport}/0"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "REALIZ3D_ARTIFACT_DIR": str(workdir / "artifacts"),
        "REALIZ3D_ADMISSION": "queue",
        "REALIZ3D_MAX_QUEUE_DEPTH": str(10**9),
        "REALIZ3D_API_WORKERS": str(workers),
        REDIS_ENV: broker,
    }

    def spawn(args: list[str], name: str) -> int:
        log = (workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        stack.callback(lambda: (proc.terminate(), proc.wait(20)))
        return proc.pid

    import socket

    spawn([redis_bin, "--port", str(rport), "--save", "", "--appendonly", "no"], "redis")
    _wait(lambda: socket.create_connection(("127.0.0.1", rport), 0.2).close() is None, 10, "redis")
    gpid = spawn(
        [sys.executable, "-m", "service.cli", "serve", "--broker", broker, "--port", str(gport)], "gateway"
    )
    server = [sys.executable, "-m", "uvicorn", "engines.bench.gateway:bare_app", "--factory"]
    server += ["--port", str(bport), "--log-level", "warning", "--no-access-log", "--workers", str(workers)]
    bpid = spawn(server, "bare")
    gateway, bare = f"http://127.0.0.1:{gport}", f"http://127.0.0.1:{bport}"
    _wait(lambda: httpx.get(gateway + "/healthz", timeout=1).status_code == 200, 60, "the gateway")
    _wait(lambda: httpx.get(bare + "/v1/jobs/none", timeout=1).status_code == 404, 60, "the bare app")
    accepted = httpx.post(gateway + "/v1/multiview", json=JOB, timeout=10)
    accepted.raise_for_status()
    return {"gateway": (gateway, gpid), "bare": (bare, bpid)}, accepted.json()["id"]


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 2)


def run(
    concurrency: int = 50,
    seconds: float = 10.0,
    rounds: int = 3,
    workers: int | None = None,
    out_dir: Path | None = None,
    warmup_seconds: float = 2.0,
) -> dict[str, Any]:
    """Measure both apps, `rounds` alternating rounds of each route; write the report when `out_dir`."""
    from service.settings import Settings

    workers = workers or Settings().api_workers
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        route: {"bare": [], "gateway": []} for route in ("get", "post")
    }
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="realiz3d-bench-gw-")))
        scripts = _scripts(workdir)
        servers, job_id = _servers(stack, workdir, workers)
        paths = {"get": f"/v1/jobs/{job_id}", "post": "/v1/multiview"}
        urls = {route: {app: servers[app][0] + path for app in servers} for route, path in paths.items()}
        if warmup_seconds > 0:
            for route in urls:
                for app in urls[route]:
                    _wrk(urls[route][app], concurrency, warmup_seconds, scripts[route])
        for i in range(rounds):
            order = ("bare", "gateway") if i % 2 == 0 else ("gateway", "bare")
            for route in ("get", "post"):
                for app in order:
                    row = _wrk(urls[route][app], concurrency, seconds, scripts[route], servers[app][1])
                    results[route][app].append(row)
                    print(f"round {i + 1} {route.upper()} {app}: {json.dumps(row)}", flush=True)
    summary: dict[str, Any] = {}
    for route, apps in results.items():
        per_app = {
            app: {
                k: _median(rows, k)
                for k in ("rps", "p50_ms", "p99_ms", "wrk_cpu_share", "server_cpu_ms_per_request")
            }
            | {"errors": sum(r["errors"] for r in rows), "requests": sum(r["requests"] for r in rows)}
            for app, rows in apps.items()
        }
        ratios = [g["rps"] / b["rps"] for b, g in zip(apps["bare"], apps["gateway"], strict=True)]
        per_app["ratio"] = round(statistics.median(ratios), 3)
        per_app["ratios"] = [round(r, 3) for r in ratios]
        # the same comparison as CPU cost (bare / gateway CPU per request): what 1 core would give
        per_app["cpu_ratio"] = round(
            per_app["bare"]["server_cpu_ms_per_request"]
            / max(per_app["gateway"]["server_cpu_ms_per_request"], 1e-9),
            3,
        )
        summary[route] = per_app
    met = {
        "get_ratio": summary["get"]["ratio"] >= GOALS["get_ratio"],
        "post_ratio": summary["post"]["ratio"] >= GOALS["post_ratio"],
        "post_p99_ms": summary["post"]["gateway"]["p99_ms"] <= GOALS["post_p99_ms"],
        "no_errors": summary["get"]["gateway"]["errors"] + summary["post"]["gateway"]["errors"] == 0,
    }
    report = {
        "summary": summary,
        "goals": GOALS,
        "met": met,
        "rounds": results,
        "concurrency": concurrency,
        "seconds": seconds,
        "api_workers": workers,
        "server": _server_stack(),
        "load_generator": "wrk -t1 (one thread, HTTP/1.1 keep-alive), a separate process",
        "machine": describe(),
        "command": f"realiz3d bench gateway --concurrency {concurrency} --seconds {seconds:g} --rounds {rounds} "
        f"--api-workers {workers}",
    }
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def _server_stack() -> str:
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    try:
        import httptools  # noqa: F401

        http = "httptools"
    except ImportError:
        http = "h11"
    return f"uvicorn ({loop}, {http})"


def markdown(report: dict[str, Any]) -> str:
    s, goals, met = report["summary"], report["goals"], report["met"]
    lines = [
        "# Gateway HTTP ceiling",
        "",
        f"`{report['command']}`: {report['concurrency']} concurrent clients, {report['seconds']:g} s per run,",
        f"{len(s['get']['ratios'])} alternating rounds; medians over rounds. No worker (admission=queue).",
        "Baseline in the same run, same Redis, same server: a bare FastAPI app doing one Redis round trip",
        "(GET: `HGETALL` of the same job hash; POST: Pydantic body + one pipelined `HSET`/`EXPIRE`).",
        "",
        f"Server: {report['server']}, {report['api_workers']} process(es) each. "
        f"Load generator: {report['load_generator']}.",
        f"Machine: {report['machine']} (shared: the load generator, Redis and both apps run on it).",
        "",
        "| route | app | req/s | p50 ms | p99 ms | errors | gateway/bare req/s (per round) | server CPU ms/request "
        "| wrk CPU share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for route, title in (("get", "`GET /v1/jobs/{id}`"), ("post", "`POST /v1/multiview`")):
        for app in ("bare", "gateway"):
            r = s[route][app]
            ratio = (
                f"**{s[route]['ratio']}** ({', '.join(map(str, s[route]['ratios']))})"
                if app == "gateway"
                else ""
            )
            lines.append(
                f"| {title} | {app} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} | {ratio} "
                f"| {r['server_cpu_ms_per_request']} | {r['wrk_cpu_share']} |"
            )
    lines += [
        "",
        "Server CPU ms/request: CPU time of the app's processes over the run / requests answered; "
        f"bare/gateway: GET {s['get']['cpu_ratio']}, POST {s['post']['cpu_ratio']} (the req/s ratio one "
        "free core each would give; less moved by other load on a shared machine than req/s).",
        "",
        f"Goals: GET >= {goals['get_ratio']}x the bare app: {'met' if met['get_ratio'] else 'NOT met'}; "
        f"POST >= {goals['post_ratio']}x: {'met' if met['post_ratio'] else 'NOT met'}; "
        f"POST p99 <= {goals['post_p99_ms']:g} ms: {'met' if met['post_p99_ms'] else 'NOT met'}; "
        f"no error answers: {'met' if met['no_errors'] else 'NOT met'}.",
        "",
    ]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gateway.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "gateway.md").write_text(markdown(report))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    a = parser.parse_args()
    rep = run(a.concurrency, a.seconds, a.rounds, a.workers, a.out)
    print(json.dumps({"summary": rep["summary"], "met": rep["met"]}, indent=2))
